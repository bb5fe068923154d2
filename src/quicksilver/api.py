"""The Python API: ``lm = quicksilver.load("coder-tiny"); lm.generate("def fib(n):")``."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checkpoint import load_model
from .model import Transformer
from .sampling import DecodePolicy, GenerationError, GenerationResult, StepEvent, generate
from .tokenizer import Tokenizer


@dataclass
class LM:
    """A loaded model with its tokenizer; ``generate`` takes text and returns text plus stats."""
    model: Transformer
    tokenizer: Tokenizer
    name: str

    @property
    def is_diffusion(self) -> bool:
        return not self.model.config.causal

    def encode_prompt(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise GenerationError("the prompt is empty")
        return self.tokenizer.encode(prompt)

    def generate(self, prompt: str | list[str], max_new_tokens: int = 128, steps: int | None = None,
                 block_length: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, stop_at_eos: bool = True,
                 on_step: Callable[[StepEvent], None] | None = None, **decoding) -> GenerationResult:
        """Complete one prompt (or a list of prompts, decoded as one batch).

        ``decoding`` takes any other ``DecodePolicy`` field, e.g. ``commit="threshold"``,
        ``threshold=0.9``, ``cache="dual"``.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        known = {f.name for f in dataclasses.fields(DecodePolicy)}
        unknown = sorted(set(decoding) - known)
        if unknown:
            raise GenerationError(f"unknown decoding option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        policy = DecodePolicy(max_new_tokens=max_new_tokens, block_length=block_length, steps=steps,
                              temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                              stop_at_eos=stop_at_eos, **decoding)
        ids = [self.encode_prompt(p) for p in prompts]
        result = generate(self.model, ids, policy, on_step=on_step)
        result.texts = [self.tokenizer.decode(row) for row in result.ids]
        return result


def load(name_or_path: str | os.PathLike = "coder-tiny", device: str | None = None,
         dtype: torch.dtype | None = torch.float32, progress: bool | None = None):
    """Load a bundled model by name, a checkpoint folder or a Hugging Face Hub id; the family comes
    from its config.json.  Quicksilver, LLaDA and Dream give an ``LM`` (Quicksilver's own model
    code); DiffusionGemma, which runs in transformers, gives its ``DiffusionGemmaBackend``."""
    from .checkpoint import resolve_model_path
    from .families import family_of, read_config
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = resolve_model_path(name_or_path)
    if family_of(read_config(folder)) == "diffusion_gemma":
        from .families.diffusion_gemma import DiffusionGemmaBackend
        return DiffusionGemmaBackend.from_folder(folder, name=str(name_or_path), device=device, dtype=dtype)
    model, tokenizer = load_model(folder, device=device, dtype=dtype, progress=progress)
    return LM(model, tokenizer, str(name_or_path))


def load_backend(name_or_path: str | os.PathLike = "coder-tiny", device: str | None = None,
                 dtype: torch.dtype | None = None, progress: bool | None = None):
    """What the engine serves (``backend.Backend``) for any supported folder: Quicksilver's own code
    for Quicksilver, LLaDA and Dream checkpoints; transformers for DiffusionGemma.  ``dtype`` None
    keeps the checkpoint's (float32 for the bundled models' bf16 weights on CPU)."""
    from .checkpoint import resolve_model_path
    from .families import family_of, read_config
    from .families.native import NativeBackend
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = resolve_model_path(name_or_path)
    family = family_of(read_config(folder))
    if family == "diffusion_gemma":
        from .families.diffusion_gemma import DiffusionGemmaBackend
        return DiffusionGemmaBackend.from_folder(folder, name=str(name_or_path), device=device, dtype=dtype)
    if family == "quicksilver" and dtype is None:
        dtype = torch.float32
    model, tokenizer = load_model(folder, device=device, dtype=dtype, progress=progress)
    return NativeBackend(model, tokenizer, str(name_or_path))
