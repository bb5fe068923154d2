"""Quicksilver: open masked-diffusion language models, with an AR twin for honest comparison."""
from .api import LM, load
from .sampling import DecodePolicy, GenerationResult

__version__ = "0.1.0"
__all__ = ["load", "LM", "DecodePolicy", "GenerationResult", "__version__"]
