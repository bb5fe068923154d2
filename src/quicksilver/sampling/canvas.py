"""What a diffusion decoder is asked to fill: a canvas of fixed tokens and masked spans.

Every generation request is a ``Canvas``: a left-to-right sequence of parts, each either *fixed*
tokens (a tuple of ids the decoder never changes: a prompt, the suffix of an infill, the unchanged
lines of a file being edited, the punctuation of a JSON template) or a masked ``Span`` (``length``
positions the decoder fills).  One decoder (``sampling.diffusion.BlockDecoder``) fills any canvas:

* ``Canvas.completion(prompt, n)``: ``[prompt | n masks]``, the ordinary completion;
* ``Canvas.infill(prefix, n, suffix)``: ``[prefix | n masks | suffix]``, fill in the middle;
* ``Canvas.of(fixed, Span(...), fixed, Span(...), ...)``: any number of spans between fixed parts.

How a span is filled
  The masked positions of all spans are decoded in blocks of ``DecodePolicy.block_length`` canvas
  columns, left to right, from the first masked column of the canvas; a block may hold the end of
  one span, fixed tokens and the start of the next (fixed columns are context, never candidates).
  Within a block the policy's commit rule decides, step by step, which masked positions to commit;
  committed tokens never change.  Fixed tokens anywhere on the canvas (before *and after* the
  active block) are seen by the model as context.

``Span.length``
  The span's budget: at most this many tokens.

``Span.may_end_early`` (default True)
  The span may be shorter than its budget: a stop id (end of text, end of turn) committed in it ends
  it.  With ``DecodePolicy.stop_at_eos`` the span stops being decoded once it has ended (at the end
  of the block, or at once with ``early_stop`` when every position before the stop is committed);
  its positions after the stop are *end of span*: dropped from the result, and, when the row still
  has spans to decode, written as the stop id so that the model sees a closed span.  When False the
  span is filled to exactly ``length`` tokens: stop ids are never sampled in it (a template slot of
  fixed size).

``Span.allowed`` (default None: any token the model may produce)
  The token ids the span may hold (sorted tuple).  The decoder applies it as a logit mask on the
  span's positions (plus the stop ids when the span may end early).  JSON-schema templates put a
  per-slot vocabulary here (digits for a number, a closed set of ids for an enum).

Results
  The decoder returns, per span, its committed ids up to its first stop id (``span_ids``), and per
  row those spans joined (``ids``): for a completion or an infill, the one span's fill.

Building on it (what comes next)
  * Correction / remasking: a ``Span`` is the unit the decoder may reopen; an edit request is a
    ``Canvas.of`` with the unchanged parts of a file as fixed tokens and the lines to rewrite as spans
    (what an ``lm.edit`` would build; ``LM.fill_ids`` decodes any canvas today).
  * Templates: ``Canvas.of("{\\"name\\": \\"", Span(12, allowed=...), "\\", \\"age\\": ", Span(3, allowed=digits,
    may_end_early=...), "}")`` with the fixed parts tokenized by the caller.
  Canvases are immutable values (hashable, comparable), so a caller can build one per request and
  the engine can batch rows of any mix of canvases under one policy.

The fill-in-the-middle *prompt format* of an autoregressive twin (which cannot fill a canvas) is
here too, in one place: ``fim_prompt`` and ``FIM_FRAME_TOKENS``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .types import GenerationError

# <fim_prefix>, <fim_suffix> and <fim_middle>: the tokens the prefix-suffix-middle format adds to a
# prompt.  Context limits count them for every infill request, whichever model serves it, so that a
# request's room does not depend on the model kind.
FIM_FRAME_TOKENS = 3


@dataclass(frozen=True)
class Span:
    """``length`` masked positions to fill (see the module docstring for the fields)."""
    length: int
    allowed: tuple[int, ...] | None = None
    may_end_early: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length <= 0:
            raise GenerationError("a masked span's length (max_new_tokens) must be a positive integer")
        if self.allowed is not None:
            allowed = tuple(sorted({int(i) for i in self.allowed}))
            if not allowed:
                raise GenerationError("a span's set of allowed tokens is empty")
            object.__setattr__(self, "allowed", allowed)


Part = tuple[int, ...] | Span


@dataclass(frozen=True)
class Canvas:
    """Fixed parts (tuples of token ids) and masked ``Span``s, left to right; at least one span."""
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        parts: list[Part] = []
        for part in self.parts:
            if isinstance(part, Span):
                parts.append(part)
            else:
                ids = tuple(int(i) for i in part)
                if not ids:
                    continue  # an empty fixed part is no part
                if parts and not isinstance(parts[-1], Span):
                    ids = parts.pop() + ids  # adjacent fixed parts are one part
                parts.append(ids)
        if not any(isinstance(p, Span) for p in parts):
            raise GenerationError("a canvas needs at least one masked span")
        object.__setattr__(self, "parts", tuple(parts))

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def of(cls, *parts: Sequence[int] | Span) -> "Canvas":
        return cls(tuple(p if isinstance(p, Span) else tuple(p) for p in parts))

    @classmethod
    def completion(cls, prompt: Sequence[int], max_new_tokens: int) -> "Canvas":
        """``[prompt | mask * max_new_tokens]``; the prompt must not be empty."""
        if not prompt:
            raise GenerationError("the prompt is empty")
        return cls.of(prompt, Span(max_new_tokens))

    @classmethod
    def infill(cls, prefix: Sequence[int], max_new_tokens: int, suffix: Sequence[int]) -> "Canvas":
        """``[prefix | mask * max_new_tokens | suffix]``; prefix or suffix may be empty, not both."""
        if not prefix and not suffix:
            raise GenerationError("the prompt is empty")
        return cls.of(prefix, Span(max_new_tokens), suffix)

    # -- reading -----------------------------------------------------------------------------------
    @property
    def spans(self) -> list[Span]:
        return [p for p in self.parts if isinstance(p, Span)]

    @property
    def prompt(self) -> tuple[int, ...]:
        """The fixed tokens before the first span (may be empty for an infill)."""
        first = self.parts[0]
        return () if isinstance(first, Span) else first

    @property
    def fixed_tokens(self) -> int:
        return sum(len(p) for p in self.parts if not isinstance(p, Span))

    @property
    def masked_tokens(self) -> int:
        return sum(s.length for s in self.spans)

    def __len__(self) -> int:
        return self.fixed_tokens + self.masked_tokens

    @property
    def after_prompt(self) -> int:
        """Columns from the first span to the end of the canvas."""
        return len(self) - len(self.prompt)

    def layout(self, mask_id: int) -> tuple[list[int], list[int]]:
        """The canvas as token ids (``mask_id`` at masked positions) and, per position, the index of
        its span (-1 at fixed positions)."""
        ids: list[int] = []
        span_of: list[int] = []
        index = 0
        for part in self.parts:
            if isinstance(part, Span):
                ids += [mask_id] * part.length
                span_of += [index] * part.length
                index += 1
            else:
                ids += part
                span_of += [-1] * len(part)
        return ids, span_of

    def check_fits(self, context_length: int) -> None:
        if len(self) > context_length:
            raise GenerationError(f"the canvas ({self.fixed_tokens} fixed tokens and {self.masked_tokens} to generate) "
                                  f"exceeds the model's context of {context_length} tokens")


def completions(prompts: Iterable[Sequence[int]], max_new_tokens: int) -> list[Canvas]:
    return [Canvas.completion(p, max_new_tokens) for p in prompts]


def fim_prompt(prefix: Sequence[int], suffix: Sequence[int], fim_prefix_id: int, fim_suffix_id: int,
               fim_middle_id: int) -> list[int]:
    """The prefix-suffix-middle prompt with which an autoregressive model fills in the middle:
    ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle>`` (its completion is the middle)."""
    return [fim_prefix_id, *prefix, fim_suffix_id, *suffix, fim_middle_id]


def fixed_length(prompt: Sequence[int], suffix: Sequence[int] | None) -> int:
    """Context a request's fixed tokens take: prompt, suffix and, for an infill, the FIM frame."""
    return len(prompt) + (0 if suffix is None else len(suffix) + FIM_FRAME_TOKENS)


__all__ = ["Canvas", "Span", "FIM_FRAME_TOKENS", "completions", "fim_prompt", "fixed_length"]
