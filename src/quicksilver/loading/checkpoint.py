"""Load and save Hugging Face layout folders: ``config.json``, ``*.safetensors``, ``tokenizer.json``.

Safetensors only: nothing here ever unpickles a file.  Bundled models live in the package under
``quicksilver/models/<name>/`` so that ``pip install`` carries them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ConfigError, ModelConfig
from ..model import Transformer
from ..tokenizer import Tokenizer, TokenizerError
from .families import family_of, load_native_family, read_config
from .hub import download, looks_like_hub_id
from .layout import INDEX_NAME, WEIGHTS_NAME, CheckpointError, read_weight_map

from .bundled import BUNDLED_DIR, bundled_models  # noqa: F401  (re-exported: callers import them from here)


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled model name or a local folder, as a folder path."""
    text = str(name_or_path)
    if text in bundled_models():
        return BUNDLED_DIR / text
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; --model takes a bundled model name or a checkpoint folder")
    if looks_like_hub_id(text):  # org/name and no such local folder: the Hugging Face Hub
        return download(text)
    names = ", ".join(bundled_models()) or "none installed"
    raise CheckpointError(f"unknown model '{text}': not a bundled model ({names}) nor an existing folder")


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors creates files owner-only; bundled weights must be readable by all
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_pretrained(model: Transformer, tokenizer: Tokenizer | None, folder: str | Path,
                    dtype: torch.dtype | None = None, max_shard_bytes: int | None = None) -> Path:
    """Write the model (optionally cast, optionally split into shards with an index) and tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for old in folder.glob("model*.safetensors"):
        old.unlink()
    (folder / INDEX_NAME).unlink(missing_ok=True)
    if max_shard_bytes is None:
        atomic_save_tensors(state, folder / WEIGHTS_NAME, {"format": "pt"})
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            atomic_save_tensors(shard, folder / name, {"format": "pt"})
            weight_map.update({k: name for k in shard})
        atomic_write_text(folder / INDEX_NAME, json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    atomic_write_text(folder / "config.json", json.dumps(model.config.to_dict(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer.json")
    return folder


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: one ``model.safetensors`` or shards listed in an index file."""
    index = folder / INDEX_NAME
    if index.is_file():
        files = sorted(set(read_weight_map(index).values()))
    elif (folder / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        if not found:
            pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
            hint = " (pickle files are never loaded; convert them to safetensors)" if pickles else ""
            raise CheckpointError(f"{folder} holds no safetensors weights{hint}")
        files = found
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"weight file {path} listed in the index is missing")
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt: {e})") from None
    return state


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, progress: bool | None = None) -> tuple[Transformer, Tokenizer]:
    """Model and tokenizer from a bundled name, a checkpoint folder or a Hub id.

    The folder's ``config.json`` says the family: Quicksilver's own, or LLaDA / Dream (loaded into
    Quicksilver's model code by ``families``, with their own tokenizer; ``progress`` shows a bar).
    """
    folder = resolve_model_path(name_or_path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: it has no config.json")
    raw = read_config(folder)
    family = family_of(raw)
    if family == "diffusion_gemma":
        raise CheckpointError(f"{folder} is a DiffusionGemma checkpoint, which runs in transformers: load it with "
                              "quicksilver.api.load_backend")
    if family != "quicksilver":
        return load_native_family(folder, raw, device=device, dtype=dtype, progress=progress)
    try:
        cfg = ModelConfig.load(cfg_file)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: {e}") from None
    try:
        tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{cfg_file}: vocab_size {cfg.vocab_size} is smaller than the tokenizer's "
                              f"{tokenizer.vocab_size}; the tokenizer would produce ids the model has no row for")
    state = load_state_dict(folder)
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{folder}: tensor '{missing[0]}' is missing from the checkpoint"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor '{unexpected[0]}' in the checkpoint")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{folder}: tensor '{k}' has shape {tuple(state[k].shape)}, "
                                  f"the config implies {tuple(v.shape)}")
    target = dtype or next(iter(state.values())).dtype
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.to(device=device, dtype=target if v.is_floating_point() else v.dtype)
                           for k, v in state.items()}, strict=not cfg.tie_word_embeddings)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.to(dtype=target)
    model.eval()
    return model, tokenizer
