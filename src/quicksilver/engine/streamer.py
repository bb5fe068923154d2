"""Text streaming of one choice: from the decoder's canvas to append-only text deltas.

Blocks are decoded left to right and committed tokens never change, so the text of a row's positions
before its first mask is final.  Each step ``RowState.update`` decodes that prefix and sends what is
new (``Delta``), holding back a possible stop sequence and an incomplete UTF-8 character, so that the
concatenated deltas equal the final text exactly.  Stop ids and stop sequences are read by the same
functions the evaluation uses (``sampling.stops``).
"""
from __future__ import annotations

from ..backend import Backend
from ..sampling.stops import cut_at_stops, final_prefix, find_stop, settled_at
from .types import Delta, Draft, Finished, Request


class RowState:
    """One choice of one request: what has been streamed and whether it is over."""

    def __init__(self, request: Request, index: int, backend: Backend) -> None:
        self.request, self.index, self.backend = request, index, backend
        self.emitted = ""
        self.finished = False
        self.nfe = 0
        self.handle: int | None = None  # row handle in ``decoder`` (a BlockDecoder)
        self.decoder = None
        self.prefix_ids: list[int] = []  # the committed ids before the first mask (up to end of text)
        self.tokens = 0
        self.stop_text: str | None = None  # final text once a stop sequence settled it
        self._max_stop = max((len(s) for s in request.stops), default=0)
        self._checked = -1

    def update(self, region: list[int], step: int, block: int, stop_ids: frozenset[int]) -> bool:
        """Send what a step made final (and the draft); True when a stop sequence has settled the row."""
        mask_id = self.backend.mask_id
        self.nfe = step
        if self.request.drafts:
            tokens = [None if t == mask_id else token_text(self.backend, t) for t in region]
            self.request.sink(Draft(self.index, step, block, tokens))
        prefix, _ = final_prefix(region, mask_id, stop_ids)
        if len(prefix) == self._checked:
            return False
        self._checked = len(prefix)
        self.prefix_ids = prefix
        text = self.backend.decode(prefix).rstrip("\ufffd")  # an incomplete UTF-8 character waits
        safe = len(text) - max(0, self._max_stop - 1)
        settled = False
        if self.request.stops:
            cut = settled_at(text, self.request.stops)
            if cut is not None:  # no other stop can start before it
                self.stop_text, settled = text[:cut], True
                safe = cut
            else:
                hit = find_stop(text, self.request.stops)
                if hit is not None:
                    safe = min(safe, hit)
        if safe > len(self.emitted):
            self._send(text[:safe])
        return settled

    def _send(self, text: str) -> None:
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            self.request.sink(Delta(self.index, text[len(self.emitted):]))
            self.emitted = text

    def finish(self, ids: list[int], ended_by_eos: bool, nfe: int, text: str | None = None) -> None:
        """The row is over: send the rest of its final text (``text``, else ``ids`` decoded) and ``Finished``."""
        if self.finished:
            return
        self.finished = True
        self.nfe = max(self.nfe, nfe)
        if self.stop_text is not None:
            text, hit = self.stop_text, True
        else:
            whole = self.backend.decode(ids) if text is None else text
            hit = find_stop(whole, self.request.stops) is not None
            text = cut_at_stops(whole, self.request.stops)
        self._send(text)
        reason = "stop" if (hit or ended_by_eos) else "length"
        self.tokens = len(ids)
        self.request.sink(Finished(self.index, text, reason, len(ids), self.nfe, ids=list(ids), eos=ended_by_eos,
                                   cut=hit))

    def finish_early(self) -> None:
        """Out of time, or settled by a stop sequence: the final text is the committed prefix."""
        self.finish(self.prefix_ids, False, self.nfe)


_TOKEN_TEXT: dict[tuple[int, int], str] = {}


def token_text(backend: Backend, token_id: int) -> str:
    """A token's text, cached per backend (drafts show every position of every step)."""
    key = (id(backend), token_id)
    text = _TOKEN_TEXT.get(key)
    if text is None:
        text = backend.token_text(token_id)
        if len(_TOKEN_TEXT) < 1_000_000:
            _TOKEN_TEXT[key] = text
    return text


__all__ = ["RowState", "token_text"]
