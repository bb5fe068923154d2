"""Decoding: ``generate`` (complete prompts) and ``fill`` (fill any canvas) for diffusion models and
their AR twins; ``resolve_policy`` turns presets, setting names and options into a ``DecodePolicy``.

Public: this package's names and the pure modules ``canvas``, ``policy``, ``stops``, ``rules`` and
``types``.  The decoders' insides (``diffusion``, ``rows``, ``forward``, ``step``, ``ar``, ``batch``) are
for ``sampling`` itself, the engine's step-level batching (``BlockDecoder``) and the tests."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .ar import generate_ar
from .batch import left_pad
from .canvas import Canvas, Span
from .diffusion import fill as fill_diffusion
from .diffusion import generate_diffusion
from .policy import DEFAULT_PRESET, PRESETS, policy_from_setting, preset_policy, resolve_policy
from .types import DecodePolicy, GenerationError, GenerationResult, StepEvent, TextResult


def generate(model, prompts: list[list[int]], policy: DecodePolicy,
             on_step: Callable[[StepEvent], None] | None = None, keep_history: bool = False) -> GenerationResult:
    """Decode ``prompts`` (token id lists) with the sampler that fits the model: block-wise
    diffusion for a bidirectional model, KV-cached autoregression for a causal one."""
    decode = generate_ar if model.config.causal else generate_diffusion
    return decode(model, prompts, policy, on_step=on_step, keep_history=keep_history)


def fill(model, canvases: list[Canvas], policy: DecodePolicy,
         on_step: Callable[[StepEvent], None] | None = None, keep_history: bool = False) -> GenerationResult:
    """Fill ``canvases`` (``canvas.Canvas``: fixed tokens and masked spans).  A causal model fills only
    completion canvases (one span at the end, all of one length); it infills through its
    prefix-suffix-middle prompt (``canvas.fim_prompt``) as a completion."""
    if not model.config.causal:
        return fill_diffusion(model, canvases, policy, on_step=on_step, keep_history=keep_history)
    budgets = {c.parts[-1].length for c in canvases if isinstance(c.parts[-1], Span)}
    if any(len(c.spans) != 1 or not isinstance(c.parts[-1], Span) or c.parts[-1].allowed is not None
           or not c.parts[-1].may_end_early for c in canvases) or len(budgets) != 1:
        raise GenerationError("an autoregressive model fills only completions (one masked span at the end, "
                              "all of one length)")
    policy = dataclasses.replace(policy, max_new_tokens=budgets.pop())
    return generate_ar(model, [list(c.prompt) for c in canvases], policy, on_step=on_step, keep_history=keep_history)


__all__ = ["generate", "fill", "generate_ar", "generate_diffusion", "Canvas", "Span", "DecodePolicy",
           "GenerationError", "GenerationResult", "TextResult", "StepEvent", "PRESETS", "DEFAULT_PRESET",
           "preset_policy", "policy_from_setting", "resolve_policy", "left_pad"]
