"""Open checkpoints of other projects: which family a folder holds, and loading it.

LLaDA and Dream load into Quicksilver's own ``model.Transformer`` (``llada.py`` and ``dream.py`` map
their configs and tensor names; ``weights.py`` memory-maps the safetensors); DiffusionGemma runs in
transformers behind the same ``Backend`` interface (``diffusion_gemma.py``).  ``hub.py`` turns a
Hub id into a local folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..layout import CheckpointError
from ...config import read_json_object
from ...model import Transformer
from ...tokenizer import ExternalTokenizer, TokenizerError
from . import dream, llada
from .weights import load_into, tensor_files

NATIVE_FAMILIES = {"llada": llada, "dream": dream}
FAMILIES = ("quicksilver", "llada", "dream", "diffusion_gemma")
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: it has no config.json")
    return read_json_object(path, CheckpointError)


def family_of(raw: dict) -> str:
    """Which loader a ``config.json`` needs, from its ``model_type`` (or ``architectures``)."""
    model_type, archs = raw.get("model_type"), raw.get("architectures")
    if model_type is not None and not isinstance(model_type, str):
        raise CheckpointError(f"config.json: model_type must be a string, got {json.dumps(model_type)[:40]}")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"config.json: architectures must be a list of strings, got {json.dumps(archs)[:40]}")
    model_type, archs = (model_type or "").lower(), archs or []
    if model_type in ("", "quicksilver") and not any(a in archs for a in ("LLaDAModelLM", "DreamModel")):
        return "quicksilver"
    if model_type == "llada" or "LLaDAModelLM" in archs:
        return "llada"
    if model_type == "dream" or "DreamModel" in archs:
        return "dream"
    if model_type == "diffusion_gemma" or "DiffusionGemmaForBlockDiffusion" in archs:
        return "diffusion_gemma"
    raise CheckpointError(f"config.json has model_type '{raw.get('model_type')}', which Quicksilver cannot load "
                          f"(supported: {', '.join(FAMILIES)})")


def checkpoint_dtype(folder: Path) -> torch.dtype:
    """The dtype the weights are stored in (of the first tensor's header), float32 if unknown."""
    from safetensors import safe_open
    files = tensor_files(folder)
    name, path = next(iter(files.items()))
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return _DTYPES.get(f.get_slice(name).get_dtype(), torch.float32)


def _generation_eos(folder: Path) -> list[int]:
    """Extra end ids a ``generation_config.json`` names (an int or a list)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, AttributeError):
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int)]


def load_native_family(folder: Path, raw: dict, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       progress: bool | None = None) -> tuple[Transformer, ExternalTokenizer]:
    """A LLaDA or Dream folder as Quicksilver's ``Transformer`` plus its tokenizer."""
    family = NATIVE_FAMILIES[family_of(raw)]
    try:
        cfg = family.model_config(raw)
    except (TypeError, ValueError) as e:  # int("abc"), a ConfigError of the mapped config
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
        if not 0 <= getattr(cfg, name) < cfg.vocab_size:
            raise CheckpointError(f"{folder}: {name} {getattr(cfg, name)} is outside the vocabulary of {cfg.vocab_size}")
    try:
        tokenizer = ExternalTokenizer.from_folder(folder, cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id,
                                                  stop_tokens=[family.END_OF_TURN], stop_ids=_generation_eos(folder))
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"{folder}: the model's vocabulary ({cfg.vocab_size}) is smaller than its tokenizer's "
                              f"({tokenizer.vocab_size}); the tokenizer would produce ids the model has no row for")
    cfg.stop_token_ids = [i for i in tokenizer.stop_ids[1:] if i < cfg.vocab_size]
    with torch.device("meta"):
        model = Transformer(cfg)
    load_into(model, folder, family.name_map(cfg), device, dtype or checkpoint_dtype(folder), progress,
              ignore=getattr(family, "ignored", None))
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval(), tokenizer


__all__ = ["FAMILIES", "family_of", "read_config", "load_native_family", "checkpoint_dtype"]
