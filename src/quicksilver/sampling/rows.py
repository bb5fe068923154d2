"""The row bookkeeping of the block decoder: which canvas row is whose, where its spans are, and how
rows join and leave one shared canvas.  No model calls and no commit maths (``diffusion.py`` does
those); this module only lays canvases out and reads results back.

All rows share one canvas (B, T) of token ids.  Row r holds
``[pad … | prompt | spans and fixed parts … | pad …]`` (``canvas.Canvas``), laid out so that the first
masked column of every row that joined together is the same column (``lo`` when it joined): the
block decoder decodes blocks at the same columns for all rows, so one forward pass serves them all.
A row's *region* runs from its first masked column (``gen_start``) to its last (``gen_end``).

Per column the book keeps the padding mask (``attention``), the rotary positions (counting from the
row's first real token, so a padded row computes what it would alone), the span each masked column
belongs to (``span``: a global span id, -1 at fixed and padding columns) and, for spans that restrict
their tokens, the index of their vocabulary rule (``rule``: -1 = unrestricted).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .canvas import Canvas, Span
from .types import GenerationError


@dataclass
class SpanState:
    row_handle: int
    start: int  # canvas column of its first position (shifted with the canvas)
    length: int
    may_end_early: bool
    ended: bool = False  # a stop id ended it; its later positions are dropped


class RowBook:
    """Canvas rows, their handles and spans; ``admit``/``release``/``compact`` and the readers."""

    def __init__(self, device, pad_id: int, mask_id: int, stop_ids: list[int], vocab_size: int,
                 min_lo: int = 0) -> None:
        self.device, self.pad_id, self.mask_id = device, pad_id, mask_id
        self.stop_ids, self.vocab_size = stop_ids, vocab_size
        self.min_lo = min_lo  # shifted logits read the column before the block: keep one column left of lo
        self.rules: list[torch.Tensor] = []  # (V,) bool: tokens a restricted span may hold
        self._rule_ids: dict[tuple, int] = {}
        self._next_handle = 0
        self.reset()

    def reset(self) -> None:
        self.canvas: torch.Tensor | None = None
        self.attention = self.positions = self.span = self.rule = None
        self.alive = torch.zeros(0, dtype=torch.bool, device=self.device)
        self.handles: list[int] = []  # row -> handle
        self.row_of: dict[int, int] = {}
        self.gen_start: list[int] = []
        self.gen_end: list[int] = []
        self.plans: list[list[int]] = []  # per row: the fixed rule's steps for each of its blocks
        self.forward_counts: list[int] = []
        self.row_spans: list[list[int]] = []  # per row: its global span ids, left to right
        self.spans: dict[int, SpanState] = {}
        self._next_span = 0
        self.released: set[int] = set()
        self.lo = 0

    # -- rows join -----------------------------------------------------------------------------------
    def _rule_for(self, allowed: tuple[int, ...] | None, may_end_early: bool) -> int:
        """The vocabulary rule of a span (-1: unrestricted).  Stop ids are allowed exactly when the span
        may end early."""
        if allowed is None and may_end_early:
            return -1
        key = (allowed, may_end_early)
        if key not in self._rule_ids:
            if allowed is None:
                permit = torch.ones(self.vocab_size, dtype=torch.bool, device=self.device)
            else:
                bad = [i for i in allowed if not 0 <= i < self.vocab_size]
                if bad:
                    raise GenerationError(f"allowed token id {bad[0]} is outside the vocabulary of {self.vocab_size}")
                permit = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
                permit[list(allowed)] = True
            stops = [i for i in self.stop_ids if 0 <= i < self.vocab_size]
            permit[stops] = may_end_early
            self._rule_ids[key] = len(self.rules)
            self.rules.append(permit)
        return self._rule_ids[key]

    def admit(self, canvases: list[Canvas], block_length: int, plan) -> list[int]:
        """Lay ``canvases`` out as new rows whose first masked column is ``lo``; returns handles.
        ``plan(sizes)`` gives the fixed rule's steps per block from the masked positions per block."""
        span_rules = [[self._rule_for(sp.allowed, sp.may_end_early) for sp in c.spans] for c in canvases]  # may refuse
        start_fresh = self.canvas is None or not bool(self.alive.any())
        if start_fresh:
            self.reset()
            self.lo = max(self.min_lo, max(len(c.prompt) for c in canvases))
            width = self.lo + max(c.after_prompt for c in canvases)
            self._new_tensors(0, width)
        else:
            self.compact()
            need = max(max(len(c.prompt) for c in canvases), self.min_lo)
            if need > self.lo:  # shift the canvas right so that the new prompts end at lo
                self.pad_columns(left=need - self.lo)
            total = self.lo + max(c.after_prompt for c in canvases)
            if total > self.canvas.shape[1]:
                self.pad_columns(right=total - self.canvas.shape[1])
        b, t = len(canvases), self.canvas.shape[1]
        tokens = torch.full((b, t), self.pad_id, dtype=torch.long)
        attention = torch.zeros((b, t), dtype=torch.long)
        span = torch.full((b, t), -1, dtype=torch.long)
        rule = torch.full((b, t), -1, dtype=torch.long)
        handles = []
        for row, c in enumerate(canvases):
            handle = self._next_handle
            self._next_handle += 1
            ids, span_of = c.layout(self.mask_id)
            first = self.lo - len(c.prompt)
            tokens[row, first:first + len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, first:first + len(ids)] = 1
            ids_here: list[int] = []
            column = first
            spans = iter(span_rules[row])
            for part in c.parts:
                if isinstance(part, Span):
                    sid = self._next_span
                    self._next_span += 1
                    self.spans[sid] = SpanState(handle, column, part.length, part.may_end_early)
                    span[row, column:column + part.length] = sid
                    rule[row, column:column + part.length] = next(spans)
                    ids_here.append(sid)
                column += len(part) if isinstance(part, tuple) else part.length
            self.row_of[handle] = len(self.handles)
            self.handles.append(handle)
            self.row_spans.append(ids_here)
            g0, g1 = self.lo, max(self.spans[i].start + self.spans[i].length for i in ids_here)
            self.gen_start.append(g0)
            self.gen_end.append(g1)
            # masked positions per block, counted from the first masked column (the fixed rule's plan)
            sizes = [0] * -(-(g1 - g0) // block_length)
            for i, sp in enumerate(span_of[len(c.prompt):]):
                if sp >= 0:
                    sizes[i // block_length] += 1
            self.plans.append(plan(sizes))
            self.forward_counts.append(0)
            handles.append(handle)
        self.canvas = torch.cat([self.canvas, tokens.to(self.device)])
        self.attention = torch.cat([self.attention, attention.to(self.device)])
        self.span = torch.cat([self.span, span.to(self.device)])
        self.rule = torch.cat([self.rule, rule.to(self.device)])
        self.positions = (self.attention.cumsum(dim=1) - 1).clamp(min=0)
        self.alive = torch.cat([self.alive, torch.ones(b, dtype=torch.bool, device=self.device)])
        return handles

    def _new_tensors(self, b: int, t: int) -> None:
        self.canvas = torch.full((b, t), self.pad_id, dtype=torch.long, device=self.device)
        self.attention = torch.zeros((b, t), dtype=torch.long, device=self.device)
        self.span = torch.full((b, t), -1, dtype=torch.long, device=self.device)
        self.rule = torch.full((b, t), -1, dtype=torch.long, device=self.device)

    # -- rows leave ----------------------------------------------------------------------------------
    def release(self, handle: int) -> None:
        if handle in self.row_of:
            self.alive[self.row_of[handle]] = False
        self.released.add(handle)

    def pad_columns(self, left: int = 0, right: int = 0) -> None:
        b = self.canvas.shape[0]

        def widen(x: torch.Tensor, fill: int) -> torch.Tensor:
            parts = [torch.full((b, n), fill, dtype=x.dtype, device=self.device) for n in (left, right)]
            return torch.cat([parts[0], x, parts[1]], dim=1)
        self.canvas = widen(self.canvas, self.pad_id)
        self.attention = widen(self.attention, 0)
        self.span = widen(self.span, -1)
        self.rule = widen(self.rule, -1)
        self.positions = (self.attention.cumsum(dim=1) - 1).clamp(min=0)
        self._move(left)

    def _move(self, by: int) -> None:
        self.lo += by
        self.gen_start = [g + by for g in self.gen_start]
        self.gen_end = [g + by for g in self.gen_end]
        for s in self.spans.values():
            s.start += by

    def compact(self) -> None:
        """Drop released rows and the columns that are padding in every row left."""
        keep = [r for r, h in enumerate(self.handles) if h not in self.released]
        if len(keep) < len(self.handles):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            for name in ("canvas", "attention", "span", "rule", "alive"):
                setattr(self, name, getattr(self, name)[index])
            for h in self.handles:
                if h in self.released:
                    for sid in self.row_spans[self.row_of[h]]:
                        del self.spans[sid]
            for name in ("gen_start", "gen_end", "plans", "handles", "forward_counts", "row_spans"):
                values = getattr(self, name)
                setattr(self, name, [values[r] for r in keep])
            self.row_of = {h: r for r, h in enumerate(self.handles)}
            self.released = set()
        first = int(self.attention.argmax(dim=1).min())  # every row has real tokens
        last = int(torch.nonzero(self.attention.any(0)).max()) + 1
        cut = min(first, self.lo - self.min_lo)
        for name in ("canvas", "attention", "span", "rule"):
            setattr(self, name, getattr(self, name)[:, cut:last])
        self.positions = (self.attention.cumsum(dim=1) - 1).clamp(min=0)
        self._move(-cut)

    # -- spans end -----------------------------------------------------------------------------------
    def end_spans(self, rows: list[int], upto: int, early: bool) -> list[int]:
        """End the spans of ``rows`` that hold a stop id in a column < ``upto`` (with ``early``: only
        those whose every position before the stop is committed).  A row with nothing left to decode
        finishes (returns those rows); a row that goes on gets its ended spans' later positions written
        as the stop id."""
        if not rows:
            return []
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        tokens, span = self.canvas[index, :upto], self.span[index, :upto]
        is_stop = torch.isin(tokens, torch.tensor(self.stop_ids, device=self.device)) & (span >= 0)
        hit = is_stop.any(1)
        if not bool(hit.any()):
            return []
        finished = []
        for i in hit.nonzero().squeeze(1).tolist():
            r = rows[i]
            row_tokens = self.canvas[r].tolist()
            changed = False
            for sid in self.row_spans[r]:
                s = self.spans[sid]
                if s.ended or not s.may_end_early or s.start >= upto:
                    continue
                cols = row_tokens[s.start:s.start + s.length]
                stop_at = next((j for j, t in enumerate(cols) if t in self.stop_ids), None)
                if stop_at is None or s.start + stop_at >= upto:
                    continue
                if early and self.mask_id in cols[:stop_at]:
                    continue
                s.ended = True
                changed = True
            if not changed:
                continue
            if not self._has_open_masks(r):
                finished.append(r)
                continue
            for sid in self.row_spans[r]:  # the row goes on: close its ended spans on the canvas
                s = self.spans[sid]
                if s.ended:
                    cols = self.canvas[r, s.start:s.start + s.length]
                    stop = cols[torch.isin(cols, torch.tensor(self.stop_ids, device=self.device))][0]
                    cols[cols == self.mask_id] = stop
        return finished

    def _has_open_masks(self, r: int) -> bool:
        for sid in self.row_spans[r]:
            s = self.spans[sid]
            if not s.ended and bool((self.canvas[r, s.start:s.start + s.length] == self.mask_id).any()):
                return True
        return False

    def masked_from(self, r: int, column: int) -> bool:
        """Whether row r has a masked position of a span not ended at ``column`` or later."""
        for sid in self.row_spans[r]:
            s = self.spans[sid]
            lo = max(column, s.start)
            if not s.ended and lo < s.start + s.length and \
                    bool((self.canvas[r, lo:s.start + s.length] == self.mask_id).any()):
                return True
        return False

    # -- readers -------------------------------------------------------------------------------------
    def region(self, handle: int) -> list[int]:
        """The row's span positions, left to right: token ids, the mask id where not yet committed."""
        r = self.row_of[handle]
        row = self.canvas[r].tolist()
        out: list[int] = []
        for sid in self.row_spans[r]:
            s = self.spans[sid]
            out += row[s.start:s.start + s.length]
        return out

    def span_ids(self, handle: int) -> list[tuple[list[int], bool]]:
        """Per span: its committed ids up to its first stop id (when it may end early) and whether it
        had one."""
        r = self.row_of[handle]
        row = self.canvas[r].tolist()
        out = []
        for sid in self.row_spans[r]:
            s = self.spans[sid]
            ids = row[s.start:s.start + s.length]
            stopped = False
            if s.may_end_early:
                cut = next((j for j, t in enumerate(ids) if t in self.stop_ids), None)
                if cut is not None:
                    ids, stopped = ids[:cut], True
            out.append(([t for t in ids if t != self.mask_id], stopped))  # masks only past an early stop
        return out

    def result(self, handle: int) -> tuple[list[int], bool]:
        """The spans' ids joined, and whether the last span ended with a stop id."""
        spans = self.span_ids(handle)
        return [t for ids, _ in spans for t in ids], spans[-1][1]


__all__ = ["RowBook", "SpanState"]
