"""Hugging Face Hub ids (``GSAI-ML/LLaDA-8B-Instruct``): fetched through ``huggingface_hub`` when the
network allows, and otherwise one sentence saying how to get the folder onto this machine.

Only safetensors, JSON and tokenizer files are fetched (never pickled ``*.bin`` weights or remote
code).  ``huggingface_hub`` is optional (the ``hf`` extra).
"""
from __future__ import annotations

import re
from pathlib import Path

from .layout import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
ALLOW_PATTERNS = ["*.safetensors", "*.json", "*.jinja", "tokenizer*", "*.model", "*.txt"]


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def _how_to(repo_id: str) -> str:
    return (f"download it with `huggingface-cli download {repo_id} --local-dir PATH` on a machine with network, "
            "copy PATH here, then pass --model PATH")


def download(repo_id: str) -> Path:
    """The local snapshot folder of ``repo_id`` (from the local Hub cache or the network)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"'{repo_id}' looks like a Hugging Face Hub id, and fetching it needs huggingface_hub "
                              f"(pip install 'quicksilver-lm[hf]'); or {_how_to(repo_id)}") from None
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo, no disk space: all need the same advice
        reason = type(e).__name__
        if "offline" in str(e).lower() or "LocalEntryNotFound" in reason or "Connection" in reason:
            why = "the Hub cannot be reached from here (offline)"
        elif "RepositoryNotFound" in reason or "GatedRepo" in reason:
            why = "the Hub has no such (public) model"
        else:
            why = f"fetching it failed ({reason})"
        raise CheckpointError(f"'{repo_id}' is not a local folder, and it cannot be fetched from the Hugging Face "
                              f"Hub: {why}; {_how_to(repo_id)}") from None
