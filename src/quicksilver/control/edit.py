"""Edit any span: the text with the chosen spans masked, everything else fixed; one decode fills all.

Spans are ``(start, end, max_tokens)`` in characters of the text (``end`` exclusive); the characters
``text[start:end]`` are replaced by at most ``max_tokens`` new tokens, and a span may end early (its
trailing positions are dropped).  Placeholders ``<|mask|>`` (``DEFAULT_BUDGET`` tokens) or
``<|mask:N|>`` in the text mark empty spans to fill.  Lines: ``line_spans`` turns 1-based inclusive
line ranges into character spans (the CLI's ``--span L1:L2``).

Diffusion: the canvas (``sampling.canvas.Canvas``) is ``[instruction prompt | text with masked
spans]``, filled by the block decoder (``sampling.fill``); every span is decoded jointly (one block
over all span columns by default, ``joint_block``), seeing the text on both sides.  AR twin:
spans are filled one at a time, left to right, through its fill-in-the-middle format (the prefix is
the text edited so far, the suffix the original text after the span).  Either way the output is
assembled from the original text outside the spans, so every unselected byte is unchanged.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..sampling.types import DecodePolicy, GenerationError, StepEvent
import torch

DEFAULT_BUDGET = 16
MAX_SPANS = 64
PLACEHOLDER = re.compile(r"<\|mask(?::(\d+))?\|>")


class SpanError(GenerationError):
    """Spans that do not fit the text (one clear sentence)."""


@dataclass
class EditResult:
    text: str
    fills: list[str]  # the new text of each span, in order
    spans: list[tuple[int, int, int]]  # the spans as applied to the input text
    nfe: int
    seconds: float
    fill_tokens: list[int]  # tokens each span was filled with (at most its budget; fewer when it ended early)


def parse_placeholders(text: str, default_budget: int = DEFAULT_BUDGET) -> tuple[str, list[tuple[int, int, int]]]:
    """Remove ``<|mask|>``/``<|mask:N|>`` placeholders; returns the text and one empty span per placeholder."""
    out, spans, last = [], [], 0
    for m in PLACEHOLDER.finditer(text):
        out.append(text[last:m.start()])
        at = sum(map(len, out))
        budget = int(m.group(1)) if m.group(1) else default_budget
        spans.append((at, at, budget))
        last = m.end()
    out.append(text[last:])
    return "".join(out), spans


def line_spans(text: str, ranges: list[tuple[int, int]], budget: int | None = None) -> list[tuple[int, int, int]]:
    """Character spans of 1-based inclusive line ranges (the line break after L2 stays fixed).
    The default budget is twice the range's characters / 3 (about twice its tokens), at least 8."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    spans = []
    for lo, hi in ranges:
        if not 1 <= lo <= hi <= len(lines):
            raise SpanError(f"the line range {lo}:{hi} is outside the file's lines 1 to {len(lines)}")
        end = starts[hi] - (len(lines[hi - 1]) - len(lines[hi - 1].rstrip("\r\n")))
        start = starts[lo - 1]
        spans.append((start, end, budget or max(8, 2 * (end - start) // 3)))
    return spans


def check_spans(text: str, spans) -> list[tuple[int, int, int]]:
    """Spans as sorted int triples; raises ``SpanError`` for overlapping or out-of-range spans."""
    if not spans:
        raise SpanError("no spans to edit: give spans or put <|mask|> placeholders in the text")
    if len(spans) > MAX_SPANS:
        raise SpanError(f"at most {MAX_SPANS} spans can be edited at once, got {len(spans)}")
    clean = []
    for span in spans:
        try:
            start, end, budget = (int(v) for v in span)
        except (TypeError, ValueError):
            raise SpanError("each span must be (start, end, max_tokens) as three integers") from None
        if start > end:
            raise SpanError(f"the span {start}:{end} ends before it starts")
        if not 0 <= start <= end <= len(text):
            raise SpanError(f"the span {start}:{end} is outside the text (0 to {len(text)} characters)")
        if budget < 1:
            raise SpanError(f"the span {start}:{end} needs max_tokens of at least 1, got {budget}")
        clean.append((start, end, budget))
    clean.sort()
    for (a0, a1, _), (b0, b1, _) in zip(clean, clean[1:]):
        if b0 < a1 or a0 == a1 == b0 == b1:
            raise SpanError(f"the spans {a0}:{a1} and {b0}:{b1} overlap")
    return clean


def _pieces(text: str, spans) -> list[str]:
    """The fixed text around the spans: len(spans) + 1 pieces."""
    out, last = [], 0
    for start, end, _ in spans:
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return out


def joint_block(text: str, spans, encode) -> int:
    """Canvas columns from the first span to the end of the last: a block that decodes all spans jointly."""
    inner = _pieces(text, spans)[1:-1]
    return sum(b for _, _, b in spans) + sum(len(encode(p)) for p in inner)


def span_display(fixed: list[list[int]], budgets: list[int], region: list[int], stops) -> list[int]:
    """The whole text as ids from a draft of the spans (``region``: their positions, left to right):
    fixed ids between them, each span cut at its first stop id, masks kept."""
    out, at = list(fixed[0]), 0
    for budget, after in zip(budgets, fixed[1:]):
        chunk = region[at:at + budget]
        cut = next((j for j, t in enumerate(chunk) if t in stops), None)
        out += chunk if cut is None else chunk[:cut]
        out += after
        at += budget
    return out


def edit_ids(model, tokenizer, text: str, spans: list[tuple[int, int, int]], policy: DecodePolicy,
             prompt: list[int] | None = None, on_step: Callable[[StepEvent], None] | None = None,
             whole_text_drafts: bool = False, literal: bool = False) -> EditResult:
    """Fill ``spans`` of ``text`` (already checked) after an optional ``prompt`` (an instruction).
    With ``whole_text_drafts`` the ``on_step`` events hold the whole text's ids (masks where still
    open) instead of the span positions alone; with ``literal`` special-token strings in the text are
    read as text (the server's default)."""
    encode = tokenizer.encode_literal if literal and hasattr(tokenizer, "encode_literal") else tokenizer.encode
    start_time = time.perf_counter()
    cfg = model.config
    if not cfg.causal:
        from ..sampling import Canvas, Span, fill

        pieces = [encode(p) for p in _pieces(text, spans)]
        parts: list = [list(prompt or []) + pieces[0]]
        for (_, _, budget), piece in zip(spans, pieces[1:]):
            parts += [Span(budget), piece]
        relay = on_step
        if on_step is not None and whole_text_drafts:
            stops = set(getattr(cfg, "stop_ids", [cfg.eos_token_id]))
            budgets = [b for _, _, b in spans]

            def relay(event: StepEvent) -> None:
                ids = span_display(pieces, budgets, event.canvas[0].tolist(), stops)
                on_step(StepEvent(event.step, event.block, torch.tensor([ids]),
                                  torch.zeros(1, len(ids), dtype=torch.bool), event.mask_id))
        result = fill(model, [Canvas.of(*parts)], policy, on_step=relay)
        values = result.spans[0]
        fills = [tokenizer.decode(v) for v in values]
        counts = [len(v) for v in values]
        nfe = result.nfe
    else:
        fills, counts, nfe = _edit_ar(model, tokenizer, encode, text, spans, policy, prompt or [], on_step)
    out = []
    for piece, fill_text in zip(_pieces(text, spans), fills + [""]):
        out += [piece, fill_text]
    return EditResult("".join(out), fills, spans, nfe, time.perf_counter() - start_time, counts)


def _edit_ar(model, tokenizer, encode, text, spans, policy, prompt, on_step) -> tuple[list[str], list[int], int]:
    import dataclasses

    from ..sampling import generate

    cfg = model.config
    fills, counts, nfe, done_text, last = [], [], 0, "", 0
    for start, end, budget in spans:
        done_text += text[last:start]
        prefix = list(prompt) + encode(done_text)
        suffix = encode(text[end:])
        ids = [cfg.fim_prefix_id, *prefix, cfg.fim_suffix_id, *suffix, cfg.fim_middle_id]
        result = generate(model, [ids], dataclasses.replace(policy, max_new_tokens=budget), on_step=on_step)
        fill = tokenizer.decode(result.ids[0])
        fills.append(fill)
        counts.append(len(result.ids[0]))
        nfe += result.nfe
        done_text += fill
        last = end
    return fills, counts, nfe


__all__ = ["EditResult", "SpanError", "parse_placeholders", "line_spans", "check_spans", "edit_ids", "joint_block", "span_display", "DEFAULT_BUDGET"]
