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

``policy.cache = "none"`` keeps the base decoder's uncached passes (the whole canvas every step),
which compute the same thing; every other cache mode is this exact cache.  Commit rules, early stop,
batching and streaming are the base ``BlockDecoder``'s: only the forward pass differs.
"""
from __future__ import annotations

import dataclasses

import torch

from ..model import KVCache
from .diffusion import BlockDecoder
from .types import DecodePolicy


class BlockCausalDecoder(BlockDecoder):
    def __init__(self, model, policy: DecodePolicy) -> None:
        block = model.config.block_size
        if policy.block_length != block:
            policy = dataclasses.replace(policy, block_length=block)
        super().__init__(model, policy)
        self.block_size = block
        self.cache: KVCache | None = None  # keys/values of canvas columns [0, cache_end) of cache_rows
        self.cache_rows: list[int] = []
        self.cache_end = 0
        self.edge: dict[int, torch.Tensor] = {}  # shifted logits: row -> hidden state at lo - 1
        self.reused = 0  # block-starting passes that reused the cache (for tests and stats)

    def admit(self, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
        handles = super().admit(prompts, max_new_tokens)
        self.positions = self._aligned_positions()
        # Rows and columns may have moved: the cache is rebuilt (from the canvas) at the next block.
        self.cache, self.cache_rows, self.cache_end = None, [], 0
        return handles

    def _aligned_positions(self) -> torch.Tensor:
        """Positions from each row's first real token, offset so that its generated region starts at a
        multiple of the block size."""
        pos = (self.attention.cumsum(dim=1) - 1).clamp(min=0)
        start = torch.tensor(self.gen_start, dtype=torch.long, device=self.device)
        first = pos.gather(1, start[:, None])  # the prompt length of each row
        return pos + (-first) % self.block_size

    def _block_hidden(self, rows: torch.Tensor, x: torch.Tensor, lo: int, hi: int, end: int) -> torch.Tensor:
        if self.policy.cache == "none":
            return super()._block_hidden(rows, x, lo, hi, end)
        model, row_list = self.model, rows.tolist()
        pos = self.positions[rows]
        work = KVCache(self.cfg.num_hidden_layers)
        start = 0
        if self.cache is not None and set(row_list) <= set(self.cache_rows):
            index = torch.tensor([self.cache_rows.index(r) for r in row_list], dtype=torch.long, device=self.device)
            same = row_list == self.cache_rows
            work.keys = [k if same else k.index_select(0, index) for k in self.cache.keys]
            work.values = [v if same else v.index_select(0, index) for v in self.cache.values]
            mask = self.cache.attention_mask
            work.attention_mask = None if mask is None else (mask if same else mask.index_select(0, index))
            start = self.cache_end
            self.reused += start < lo
        am = self.attention[rows, start:hi] if self.padded else None
        hidden = model.hidden_states(x[:, start:hi], positions=pos[:, start:hi], attention_mask=am, cache=work)
        if start < lo:  # a block's first pass: keep the finished, clean columns [start, lo)
            work.crop(lo)
            self.cache, self.cache_rows, self.cache_end = work, row_list, lo
            if self.shift:
                self.edge = {r: hidden[i, lo - 1 - start] for i, r in enumerate(row_list)}
        block = hidden[:, lo - start:]
        if self.shift:  # position j is predicted at j - 1; the block's first from the clean edge
            edge = torch.stack([self.edge[r] for r in row_list])[:, None]
            block = torch.cat([edge, block[:, :-1]], dim=1)
        return block
