"""What a Hugging Face-layout model folder holds, as every loader here reads it: the weight file names,
the shard index, and the one error a folder that cannot be loaded raises.

It sits below ``checkpoint`` (our own models and the dispatch by family), ``families`` (other projects'
checkpoints) and ``hub`` so that each of them can use it without importing the others.
"""
from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A model folder or name that cannot be loaded; the message says why in one sentence."""


def read_weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file name from a safetensors index (``model.safetensors.index.json``)."""
    try:
        weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{index} is not a valid safetensors index") from None
    for name, file in weight_map.items():  # a shard is a plain file name in the folder, nothing else
        if not isinstance(file, str) or not file or "/" in file or "\\" in file or file in (".", ".."):
            raise CheckpointError(f"{index}: the weight_map entry for '{name}' must name a file in the folder, "
                                  f"got {json.dumps(file)[:40]}")
    return weight_map
