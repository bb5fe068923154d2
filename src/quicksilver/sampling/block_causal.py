"""Exact block-by-block decoding of block-diffusion models (``config.block_size``, BD3-LM).

A block-causal model's position sees its own block and the blocks before it, never a later one.  So
once a block is final its keys/values are final too: they are computed once, from the clean block,
and kept in an ordinary KV cache, exactly as training's clean copy computed them (``diffusion.py``,
``block_diffusion_layout``).  Nothing is approximate and nothing after the block is ever run.

Per block [lo, hi):

* its first step runs the finished block that is not cached yet (the prompt, for the first block)
  together with the new masked block, in one pass against the cache: the clean tokens see only
  themselves and the cache (block-causal), the masked block sees them and itself.  The clean part's
  keys/values are then appended to the cache (the masked block's are dropped);
* its later steps run only the block against the cache.

Blocks are aligned as in training, by rotary position: each row's positions are offset (by fewer
than ``block_size``) so that its generated region starts at a multiple of ``block_size``.  Attention
depends only on relative positions, so the offset changes nothing but where blocks fall; the prompt's
first block is merely partly empty.  The decoder's block length is the model's ``block_size``
whatever the policy asks (decoding two model blocks at once would let the second read the first
before it is final, which training never showed).

With shifted logits the block's first position is predicted by the last position of the previous,
clean block; that output is computed by the block's first pass and kept for its later steps.

``policy.cache = "none"`` keeps ``BlockDecoder``'s uncached passes (the whole canvas every step),
which compute the same thing; every other cache mode is this exact cache.  ``BlockDecoder``
(``diffusion.py``) uses this module through three hooks (block length, aligned positions, and
``BlockCausalForward`` in place of ``forward.BlockForward``); its commit rules, early stop, batching
and streaming are unchanged.
"""
from __future__ import annotations

import torch

from ..model import KVCache
from .types import DecodePolicy


def block_aligned_positions(attention: torch.Tensor, gen_start: list[int], block_size: int) -> torch.Tensor:
    """Positions counted from each row's first real token, offset (by fewer than ``block_size``) so
    that the row's generated region, starting at column ``gen_start[row]``, starts a block."""
    pos = (attention.cumsum(dim=1) - 1).clamp(min=0)
    start = torch.tensor(gen_start, dtype=torch.long, device=attention.device)
    first = pos.gather(1, start[:, None])  # each row's prompt length
    return pos + (-first) % block_size


class BlockCausalForward:
    """The block decoder's forward passes for a block-diffusion model (``BlockForward``'s interface):
    keys/values of the finished, clean canvas columns [0, end) of some rows, kept across blocks."""

    def __init__(self, model) -> None:
        self.model = model
        self.shift = 1 if model.config.logits_shift else 0
        self.cache: KVCache | None = None
        self.rows: list[int] = []
        self.end = 0
        self.edge: dict[int, torch.Tensor] = {}  # shifted logits: row -> hidden state at lo - 1
        self.clean_tokens_run = 0  # clean (finished) tokens encoded so far, each exactly once

    @classmethod
    def for_model(cls, model, policy: DecodePolicy) -> "BlockCausalForward | None":
        """The exact forward of a block-diffusion model decoded with any cache mode but "none"."""
        if not getattr(model.config, "block_size", 0) or policy.cache == "none":
            return None
        return cls(model)

    def new_block(self) -> None:  # the cache outlives blocks: finished blocks are final
        pass

    def keep_rows(self, index: torch.Tensor) -> None:  # each pass picks its rows from the cache
        pass

    def forget_prefix(self) -> None:
        """Rows or columns moved (rows joined): the cache is rebuilt at the next block."""
        self.cache, self.rows, self.end, self.edge = None, [], 0, {}

    def _view(self, row_list: list[int], device) -> tuple[KVCache, int]:
        """A cache over the stored columns for ``row_list`` (extending it leaves the stored one as is)."""
        work = KVCache(self.model.config.num_hidden_layers)
        if self.cache is None or not set(row_list) <= set(self.rows):
            return work, 0
        same = row_list == self.rows
        index = None if same else torch.tensor([self.rows.index(r) for r in row_list], dtype=torch.long,
                                               device=device)
        pick = (lambda t: t) if same else (lambda t: t.index_select(0, index))
        work.keys = [pick(k) for k in self.cache.keys]
        work.values = [pick(v) for v in self.cache.values]
        mask = self.cache.attention_mask
        work.attention_mask = None if mask is None else pick(mask)
        return work, self.end

    def run(self, x: torch.Tensor, pos: torch.Tensor, am: torch.Tensor | None, rows: list[int],
            q_lo: int, hi: int, end: int) -> torch.Tensor:
        """Hidden states (R, hi - q_lo, D) of the queries [q_lo, hi) (``BlockForward.run``); nothing
        after ``hi`` is run.  The block's first pass also caches the clean columns [cache end, lo)."""
        lo = q_lo + self.shift
        work, start = self._view(rows, x.device)
        hidden = self.model.hidden_states(x[:, start:hi], positions=pos[:, start:hi],
                                          attention_mask=None if am is None else am[:, start:hi], cache=work)
        if start < lo:  # the block's first pass: keep the finished, clean columns [start, lo)
            work.crop(lo)
            work.attention_mask = None if am is None else am[:, :lo]  # the model never writes it: we keep it
            self.cache, self.rows, self.end = work, list(rows), lo
            self.clean_tokens_run += (lo - start) * len(rows)
            if self.shift:
                self.edge = {r: hidden[i, lo - 1 - start] for i, r in enumerate(rows)}
        block = hidden[:, lo - start:]
        if self.shift:  # the block's first position is predicted by the clean edge before it
            edge = torch.stack([self.edge[r] for r in rows])[:, None]
            block = torch.cat([edge, block], dim=1)
        return block
