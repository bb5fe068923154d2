"""The ``Backend`` of a model that runs on Quicksilver's own code (LLaDA, Dream, or a Quicksilver
checkpoint): tokenizer + ``sampling.generate``, so every fast decoding mode applies."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import torch

from ..chat import render_chat
from ..model import Transformer
from ..sampling import DecodePolicy, GenerationError, GenerationResult, StepEvent, generate
from ..sampling.presets import FAMILY_DEFAULTS, preset_policy


class NativeBackend:
    """A loaded ``Transformer`` and its tokenizer (``Tokenizer`` or ``ExternalTokenizer``)."""

    def __init__(self, model: Transformer, tokenizer, name: str, default_policy: DecodePolicy | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        cfg = model.config
        self.is_diffusion = not cfg.causal
        self.context_length = cfg.max_position_embeddings
        self.mask_id = cfg.mask_token_id
        family = FAMILY_DEFAULTS.get(cfg.family)
        self.default_policy = default_policy or (preset_policy(family) if family else DecodePolicy())

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.token_text(token_id)

    def render_chat(self, messages: Sequence[Mapping]) -> str:
        if hasattr(self.tokenizer, "render_chat"):  # the model's own template from tokenizer_config.json
            return self.tokenizer.render_chat(messages)
        return render_chat(messages)

    def generate_ids(self, prompts: list[list[int]], policy: DecodePolicy,
                     on_step: Callable[[StepEvent], None] | None = None) -> GenerationResult:
        result = generate(self.model, prompts, policy, on_step=on_step)
        result.texts = [self.tokenizer.decode(row) for row in result.ids]
        return result

    def infill_ids(self, prefix: list[int], suffix: list[int], policy: DecodePolicy,
                   on_step: Callable[[StepEvent], None] | None = None) -> GenerationResult:
        """Native diffusion infilling: [prefix | mask * max_new_tokens | suffix] (``on_step`` is not
        called: the infilling decoder reports no steps)."""
        if not self.is_diffusion:
            raise GenerationError(f"{self.name} is autoregressive: infill it through its FIM format instead")
        from ..eval.infill import diffusion_infill
        policy.validate()
        if len(prefix) + policy.max_new_tokens + len(suffix) > self.context_length:
            raise GenerationError(f"prefix, gap and suffix exceed the model's context of {self.context_length} tokens")
        start = time.perf_counter()
        fills, forwards = diffusion_infill(self.model, [list(prefix)], [list(suffix)], policy.max_new_tokens, policy)
        seconds = time.perf_counter() - start
        finished = len(fills[0]) < policy.max_new_tokens
        return GenerationResult(ids=fills, texts=[self.tokenizer.decode(fills[0])], nfe=forwards[0],
                                generated_tokens=len(fills[0]), seconds=seconds, finished=[finished],
                                row_forwards=forwards[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
