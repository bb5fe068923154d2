"""Quicksilver: open masked-diffusion language models, with an AR twin for honest comparison.

The names below load on first use, so that ``import quicksilver`` (and the ``quicksilver`` command's
``--help``) does not import torch."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "LM", "DecodePolicy", "GenerationResult", "__version__"]

_LAZY = {"load": ".api", "LM": ".api", "DecodePolicy": ".sampling", "GenerationResult": ".sampling"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quicksilver' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
