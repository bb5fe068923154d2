"""The forward passes of the block decoder under its cache modes (Fast-dLLM's prefix and dual caches).

``BlockForward.run`` returns the hidden states of the queries ``[q_lo, hi)`` (the active block, and
the column before it when logits are shifted) for the rows of the block, running one of three passes:

* a **full** pass over the canvas ``[0, end)``: every step without a cache, and the first step of a
  block with one (``refresh="full"``); it keeps the context keys/values for the block's later steps;
* an **incremental** first pass (``refresh="incremental"``): only ``[prefix_end, end)`` (the block just
  finished, the new block and the rest of the canvas) against the keys/values of the columns before
  the previous block, kept from that block's first pass, so the prompt is encoded once per generation;
* a **cached** pass: the block (``dual``) or the block and everything after it (``prefix``) against the
  kept context.

Both caches are approximations for a bidirectional model (cached keys/values were computed before
the block's latest commits); they are refreshed once per block.  Positions and padding masks are
those of the full canvas, so a left-padded row computes what it would alone.  Fixed tokens after the
block (an infill's suffix) are context like masked ones: the dual cache keeps them too.
"""
from __future__ import annotations

import torch

from ..model import KVCache


class ContextCache(KVCache):
    """Keys/values of a fixed context plus a scratch slot for the tokens being run.

    The context (prompt + finished blocks; for the dual cache also the canvas after the block) is laid
    out first, in any order: attention is bidirectional and every key carries its own rotary position.
    Each forward pass writes its tokens' keys/values into the scratch slot in place and attends over
    context + slot; nothing of the pass is kept, so the next step starts from the same context.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor],
                 mask: torch.Tensor | None, slot: int) -> None:
        super().__init__(len(keys))
        b, h, t, d = keys[0].shape
        self._past = t
        self.attention_mask = mask  # the context's padding mask, fixed
        for i, (k, v) in enumerate(zip(keys, values)):
            kb = k.new_empty(b, h, t + slot, d)
            vb = v.new_empty(b, h, t + slot, d)
            kb[:, :, :t] = k
            vb[:, :, :t] = v
            self.keys[i], self.values[i] = kb, vb

    @classmethod
    def from_pass(cls, keys: list[torch.Tensor], values: list[torch.Tensor], mask: torch.Tensor | None,
                  lo: int, hi: int, mode: str) -> "ContextCache":
        """Context from the keys/values of canvas positions [0, end) (a refresh pass): positions < lo
        (prefix), plus [hi, end) for the dual cache.  ``mask`` covers [0, end) or is None."""
        end = keys[0].shape[2]
        if mode == "prefix":
            ctx_k = [k[:, :, :lo] for k in keys]
            ctx_v = [v[:, :, :lo] for v in values]
            ctx_mask = None if mask is None else mask[:, :lo]
            slot = end - lo
        else:
            ctx_k = [torch.cat([k[:, :, :lo], k[:, :, hi:]], dim=2) for k in keys]
            ctx_v = [torch.cat([v[:, :, :lo], v[:, :, hi:]], dim=2) for v in values]
            ctx_mask = None if mask is None else torch.cat([mask[:, :lo], mask[:, hi:end]], dim=1)
            slot = hi - lo
        return cls(ctx_k, ctx_v, ctx_mask, slot)

    @classmethod
    def from_full(cls, full: KVCache, mask: torch.Tensor | None, lo: int, hi: int, mode: str) -> "ContextCache":
        """Context from a full-canvas pass that filled ``full``."""
        return cls.from_pass(full.keys, full.values, mask, lo, hi, mode)

    def filled(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys/values of context + the tokens of the last pass (views, in that order)."""
        end = self.keys[0].shape[2]
        return [k[:, :, :end] for k in self.keys], [v[:, :, :end] for v in self.values]

    @property
    def length(self) -> int:
        return self._past

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._past + k.shape[2]
        self.keys[layer][:, :, self._past:end] = k
        self.values[layer][:, :, self._past:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def crop(self, length: int) -> None:
        raise NotImplementedError("a context cache is rebuilt, not cropped")

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the batch rows in ``index`` (rows that left the batch are dropped)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask.index_select(0, index)


class BlockForward:
    """Runs the model for the active block and keeps the caches of the policy's cache mode."""

    def __init__(self, model, cache: str, refresh: str) -> None:
        self.model, self.cache, self.refresh = model, cache, refresh
        self.context: ContextCache | None = None  # the block's kept context, after its first pass
        # incremental refresh: keys, values and padding mask of the columns [0, prefix_end) of the rows
        # ``prefix_rows`` (canvas row indices), from the last block's first pass
        self.prefix: tuple | None = None
        self.prefix_rows: list[int] = []
        self.prefix_end = 0

    def new_block(self) -> None:
        self.context = None

    def forget_prefix(self) -> None:
        """The canvas rows or columns changed (rows joined or were compacted): refresh in full."""
        self.prefix = None

    def keep_rows(self, index: torch.Tensor) -> None:
        """Rows of the block left it: keep the context of the others (``index`` into the block's rows)."""
        if self.context is not None and index.numel():
            self.context.select_rows(index)

    def run(self, x: torch.Tensor, pos: torch.Tensor, am: torch.Tensor | None, rows: list[int],
            q_lo: int, hi: int, end: int) -> torch.Tensor:
        """Hidden states (R, hi - q_lo, D) of the queries [q_lo, hi) of canvas rows ``x`` (R, T) with
        positions ``pos`` and padding mask ``am`` (R, end) or None; the model sees columns [0, end)."""
        model = self.model
        if self.context is not None:  # a later step of the block: run against the kept context
            q_hi = end if self.cache == "prefix" else hi
            # The queries' own padding (rows of different lengths are right-padded) joins the context's.
            return model.hidden_states(x[:, q_lo:q_hi], positions=pos[:, q_lo:q_hi],
                                       attention_mask=None if am is None else am[:, q_lo:q_hi],
                                       cache=self.context)[:, :hi - q_lo]
        prefix_index = self._prefix_index(rows)
        if prefix_index is not None:
            keys, values, mask = self.prefix
            index = torch.tensor(prefix_index, dtype=torch.long, device=x.device)
            scratch = ContextCache([k.index_select(0, index) for k in keys],
                                   [v.index_select(0, index) for v in values],
                                   None if mask is None else mask.index_select(0, index), end - self.prefix_end)
            start = self.prefix_end
            hidden = model.hidden_states(x[:, start:end], positions=pos[:, start:end],
                                         attention_mask=None if am is None else am[:, start:end],
                                         cache=scratch)[:, q_lo - start:hi - start]
            keys, values = scratch.filled()
        else:
            full = KVCache(model.config.num_hidden_layers) if self.cache != "none" else None
            hidden = model.hidden_states(x[:, :end], positions=pos[:, :end], attention_mask=am,
                                         cache=full)[:, q_lo:hi]
            if full is None:
                return hidden
            keys, values = full.keys, full.values
        self.context = ContextCache.from_pass(keys, values, am, q_lo, hi, self.cache)
        if self.refresh == "incremental":
            self.prefix = ([k[:, :, :q_lo] for k in keys], [v[:, :, :q_lo] for v in values],
                           None if am is None else am[:, :q_lo])
            self.prefix_rows, self.prefix_end = list(rows), q_lo
        return hidden

    def _prefix_index(self, rows: list[int]) -> list[int] | None:
        """Where each of ``rows`` sits among the rows of the kept prefix; None: refresh in full."""
        if self.cache == "none" or self.prefix is None:
            return None
        where = {r: i for i, r in enumerate(self.prefix_rows)}
        if any(r not in where for r in rows):
            return None
        return [where[r] for r in rows]


__all__ = ["ContextCache", "BlockForward"]
