"""A run's checkpoints, for exact resume: ``checkpoints/step-N`` is written completely (weights,
optimizer tensors, trainer state) and only then named by the ``latest`` pointer, so a crash at any
moment leaves the previous checkpoint whole; older ones are pruned except milestones.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..config import ModelConfig
from ..loading.checkpoint import atomic_save_tensors, atomic_write_text, save_pretrained
from ..model import Transformer
from ..tokenizer import Tokenizer
from .distributed import DistInfo, full_optimizer_state


def save_checkpoint(out_dir: Path, model, opt, state: dict, tokenizer: Tokenizer, keep: int = 2,
                    keep_every: int = 0, weights: dict | None = None,
                    optimizer: dict | None = None) -> Path:
    """Write ``checkpoints/step-N`` completely, then point ``latest`` at it (atomic rename).

    ``weights``/``optimizer`` are full state tensors gathered by the caller (distributed runs);
    without them they are read from ``model`` and ``opt``.  Either way the files hold whole,
    unsharded tensors named as in a plain model, so any world size can load them."""
    ckpt_root = out_dir / "checkpoints"
    final = ckpt_root / f"step-{state['step']:07d}"
    tmp = ckpt_root / f".tmp-step-{state['step']:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if weights is not None:
        model = plain_copy(model.config, weights)
    save_pretrained(model, tokenizer, tmp)
    if optimizer is None:
        optimizer = full_optimizer_state(model, model, opt, DistInfo())
    atomic_save_tensors(optimizer, tmp / "optimizer.safetensors")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(out_dir / "latest", final.name + "\n")
    for old in sorted(ckpt_root.glob("step-*"))[:-keep]:
        if keep_every and int(old.name.split("-")[1]) % keep_every == 0:
            continue  # milestones stay, e.g. to measure decoding speed against training progress
        shutil.rmtree(old, ignore_errors=True)
    return final


def plain_copy(mcfg: ModelConfig, weights: dict[str, torch.Tensor]) -> Transformer:
    """A CPU ``Transformer`` holding ``weights`` (for writing an FSDP run's gathered state)."""
    with torch.device("meta"):
        copy = Transformer(mcfg)
    copy.load_state_dict(weights, assign=True)
    return copy


def read_checkpoint(out_dir: Path) -> tuple[dict, dict, dict] | None:
    """(weights, optimizer tensors, trainer state) of the run's latest checkpoint, or None."""
    from safetensors.torch import load_file
    pointer = out_dir / "latest"
    if not pointer.is_file():
        return None
    folder = out_dir / "checkpoints" / pointer.read_text().strip()
    weights = load_file(str(folder / "model.safetensors"))
    opt_state = load_file(str(folder / "optimizer.safetensors"))
    return weights, opt_state, json.loads((folder / "trainer_state.json").read_text())
