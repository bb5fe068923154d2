"""Decoding: one entry point, ``generate``, for diffusion models and their AR twins."""
from __future__ import annotations

from collections.abc import Callable

from .ar import generate_ar
from .diffusion import generate_diffusion
from .presets import PRESETS, preset_policy
from .types import DecodePolicy, GenerationError, GenerationResult, StepEvent
from .verified import generate_verified


def generate(model, prompts: list[list[int]], policy: DecodePolicy,
             on_step: Callable[[StepEvent], None] | None = None, keep_history: bool = False,
             drafter=None) -> GenerationResult:
    """Decode ``prompts`` (token id lists) with the sampler that fits the model: block-wise
    diffusion for a bidirectional model, KV-cached autoregression for a causal one; with
    ``policy.decoding == "verified"``, ``drafter`` drafts and the causal model verifies."""
    if policy.decoding == "verified":
        return generate_verified(model, drafter, prompts, policy, on_step=on_step, keep_history=keep_history)
    decode = generate_ar if model.config.causal else generate_diffusion
    return decode(model, prompts, policy, on_step=on_step, keep_history=keep_history)


__all__ = ["generate", "generate_ar", "generate_diffusion", "DecodePolicy", "GenerationError",
           "GenerationResult", "StepEvent", "PRESETS", "preset_policy", "generate_verified"]
