"""The Python API: ``lm = quicksilver.load("coder-tiny"); lm.generate("def fib(n):")``.

``LM`` is also the ``Backend`` (``backend.py``) that the engine and the server serve."""
from __future__ import annotations

import dataclasses

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .chat import render_chat
from .loading.checkpoint import load_model
from .model import Transformer
from .sampling import Canvas, DecodePolicy, GenerationError, StepEvent, TextResult, fill, generate, resolve_policy
from .sampling.canvas import fim_prompt
from .sampling.policy import FAMILY_DEFAULTS
from .tokenizer import Tokenizer


@dataclass
class LM:
    """A loaded model with its tokenizer; ``generate`` takes text and returns text plus stats."""
    model: Transformer
    tokenizer: Tokenizer
    name: str

    # The chat template; Quicksilver's own models carry none and use ``chat.DEFAULT_CHAT_TEMPLATE``.
    chat_template: str | None = None

    @property
    def is_diffusion(self) -> bool:
        return not self.model.config.causal

    # -- the Backend protocol ------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def mask_id(self) -> int:
        return int(self.model.config.mask_token_id)

    @property
    def eos_id(self) -> int:  # optional for a Backend: lets the engine stream text up to end of text
        return int(self.model.config.eos_token_id)

    @property
    def stop_ids(self) -> list[int]:  # optional for a Backend: end of text and end of turn (LLaDA, Dream)
        return [int(i) for i in self.model.config.stop_ids]

    @property
    def default_policy(self) -> DecodePolicy:
        """What a server request gets when it names no decoding option: for a diffusion model
        ``sampling.policy.DEFAULT_PRESET`` (the threshold rule with early stop), for LLaDA and Dream their
        family's reference sampler (``FAMILY_DEFAULTS``); greedy left-to-right decoding for the AR twin.
        A block-diffusion model (``block_size``) decodes its own blocks with the exact cache."""
        policy = resolve_policy(FAMILY_DEFAULTS.get(self.model.config.family), diffusion=self.is_diffusion)
        if self.is_diffusion and self.model.config.block_size:
            policy = dataclasses.replace(policy, block_length=self.model.config.block_size, cache="prefix")
        return policy

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_literal(self, text: str) -> list[int]:  # optional for a Backend: special tokens as text
        return self.tokenizer.encode_literal(text)

    @property
    def special_texts(self) -> list[str]:
        return self.tokenizer.special_texts

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token_text(token_id)

    def render_chat(self, messages: Sequence[Mapping]) -> str:
        if self.chat_template is None and hasattr(self.tokenizer, "render_chat"):
            return self.tokenizer.render_chat(messages)  # the model's own template (tokenizer_config.json)
        return render_chat(messages, self.chat_template)

    def generate_ids(self, prompts: list[list[int]], policy: DecodePolicy,
                     on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        return TextResult.of(generate(self.model, prompts, policy, on_step=on_step), self.tokenizer.decode)

    def infill_ids(self, prefix: list[int], suffix: list[int], policy: DecodePolicy,
                   on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        """Diffusion: the canvas ``[prefix | mask * max_new_tokens | suffix]`` through the block decoder.
        AR twin: its prefix-suffix-middle prompt (``canvas.fim_prompt``) as a completion; so does a
        block-diffusion model, which cannot see a suffix after its block and was trained on that format."""
        if not self.is_diffusion or self.model.config.block_size:
            return self.generate_ids([self.fim_prompt(prefix, suffix)], policy, on_step)
        return self.fill_ids([Canvas.infill(prefix, policy.max_new_tokens, suffix)], policy, on_step)

    def fim_prompt(self, prefix: list[int], suffix: list[int]) -> list[int]:
        """The AR twin's prefix-suffix-middle prompt for a fill between ``prefix`` and ``suffix``."""
        cfg = self.model.config
        return fim_prompt(prefix, suffix, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id)

    def fill_ids(self, canvases: list[Canvas], policy: DecodePolicy,
                 on_step: Callable[[StepEvent], None] | None = None) -> TextResult:
        """Fill any canvases (``sampling.canvas``); ``result.spans`` holds each row's spans."""
        return TextResult.of(fill(self.model, canvases, policy, on_step=on_step), self.tokenizer.decode)

    def decoder(self, policy: DecodePolicy):
        """Step-level batching (optional capability the engine looks for): a ``BlockDecoder`` that
        rows join at block boundaries.  None for the AR twin, which the engine serves by ``generate_ids``."""
        if not self.is_diffusion:
            return None
        from .sampling.diffusion import BlockDecoder

        return BlockDecoder(self.model, policy)

    def encode_prompt(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise GenerationError("the prompt is empty")
        return self.tokenizer.encode(prompt)

    def generate(self, prompt: str | list[str], max_new_tokens: int = 128, steps: int | None = None,
                 block_length: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, stop_at_eos: bool = True,
                 on_step: Callable[[StepEvent], None] | None = None, **decoding) -> TextResult:
        """Complete one prompt (or a list of prompts, decoded as one batch).

        ``decoding`` takes any other ``DecodePolicy`` field, e.g. ``commit="threshold"``,
        ``threshold=0.9``, ``cache="dual"``.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        policy = resolve_policy("reference", max_new_tokens=max_new_tokens, block_length=block_length, steps=steps,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                stop_at_eos=stop_at_eos, **decoding)
        ids = [self.encode_prompt(p) for p in prompts]
        return TextResult.of(generate(self.model, ids, policy, on_step=on_step), self.tokenizer.decode)


def load(name_or_path: str | os.PathLike = "coder-tiny", device: str | None = None,
         dtype: torch.dtype | None = torch.float32, progress: bool | None = None):
    """Load a bundled model by name, a checkpoint folder or a Hugging Face Hub id; the family comes
    from its config.json.  Quicksilver, LLaDA and Dream give an ``LM`` (Quicksilver's own model
    code); DiffusionGemma, which runs in transformers, gives its ``DiffusionGemmaBackend``."""
    from .loading.checkpoint import resolve_model_path
    from .loading.families import family_of, read_config
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = resolve_model_path(name_or_path)
    if family_of(read_config(folder)) == "diffusion_gemma":
        from .loading.families.diffusion_gemma import DiffusionGemmaBackend
        return DiffusionGemmaBackend.from_folder(folder, name=str(name_or_path), device=device, dtype=dtype)
    model, tokenizer = load_model(folder, device=device, dtype=dtype, progress=progress)
    return LM(model, tokenizer, str(name_or_path))


def load_backend(name_or_path: str | os.PathLike = "coder-tiny", device: str | None = None,
                 dtype: torch.dtype | None = None, progress: bool | None = None):
    """What the engine serves (``backend.Backend``) for any supported folder: Quicksilver's own code
    for Quicksilver, LLaDA and Dream checkpoints; transformers for DiffusionGemma.  ``dtype`` None
    keeps the checkpoint's (float32 for the bundled models' bf16 weights on CPU)."""
    from .loading.checkpoint import resolve_model_path
    from .loading.families import family_of, read_config
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = resolve_model_path(name_or_path)
    family = family_of(read_config(folder))
    if family == "diffusion_gemma":
        from .loading.families.diffusion_gemma import DiffusionGemmaBackend
        return DiffusionGemmaBackend.from_folder(folder, name=str(name_or_path), device=device, dtype=dtype)
    if family == "quicksilver" and dtype is None:
        dtype = torch.float32
    model, tokenizer = load_model(folder, device=device, dtype=dtype, progress=progress)
    return LM(model, tokenizer, str(name_or_path))
