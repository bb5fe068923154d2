"""What the engine and the server need from a loaded model, whatever runs it.

Quicksilver's own models (``api.LM``), LLaDA and Dream loaded into Quicksilver's model code, and
DiffusionGemma running in transformers all present this interface, so the engine never asks which
one it serves; the evaluation decodes local models through it too (``eval.systems.LocalSystem``).
Token ids in, token ids and step events out; no HTTP, no threads.

Optional capabilities (looked up with ``getattr``, absent on some backends): ``stop_ids`` / ``eos_id``
(the ids that end a text), ``decoder(policy)`` (a ``sampling.diffusion.BlockDecoder`` for step-level
batching of canvases), ``fill_ids(canvases, policy)`` (any ``sampling.canvas.Canvas``) and
``fim_prompt(prefix, suffix)`` (an AR model's fill-in-the-middle prompt), ``vocab_size`` (token-id
prompts are checked against it) and ``score_ids(ids, top)`` (exact per-token log-probabilities of an
autoregressive model, ``eval.likelihood.TokenScores``: the server's ``echo``/``logprobs``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from .sampling.types import DecodePolicy, GenerationResult, StepEvent


@runtime_checkable
class Backend(Protocol):
    name: str  # shown as the model id (``/v1/models``)
    is_diffusion: bool  # False for an AR twin: no drafts to stream
    context_length: int  # prompt + generated tokens must fit
    mask_id: int  # the id that marks a not-yet-committed position in ``StepEvent.canvas``
    default_policy: DecodePolicy  # the decoding a request gets when it names none

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...

    def render_chat(self, messages: Sequence[Mapping]) -> str:
        """Prompt text for chat ``messages`` through the model's chat template (``chat.render_chat``)."""
        ...

    def generate_ids(self, prompts: list[list[int]], policy: DecodePolicy,
                     on_step: Callable[[StepEvent], None] | None = None) -> GenerationResult:
        """Decode a batch of prompts; ``on_step`` sees every forward pass (it may raise to cancel)."""
        ...

    def infill_ids(self, prefix: list[int], suffix: list[int], policy: DecodePolicy,
                   on_step: Callable[[StepEvent], None] | None = None) -> GenerationResult:
        """Fill the gap between ``prefix`` and ``suffix`` (``max_new_tokens`` is the gap's budget);
        raises ``GenerationError`` where the model cannot infill."""
        ...
