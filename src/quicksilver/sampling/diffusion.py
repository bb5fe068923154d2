"""Block-wise diffusion decoding: LLaDA's reference sampler and the fast modes of Fast-dLLM.

The canvas is [prompt | mask * max_new_tokens].  Blocks of ``block_length`` positions are decoded
left to right; within a block each step runs the model, proposes a token for every masked position
of the block, and commits some of them.  Committed tokens never change.

What a step commits is the policy's commit rule (``rules.commit_*``): the reference linear schedule
(``steps`` forward passes in all), or a dynamic rule (threshold, factor, entropy bound) that commits
as many positions as the model is sure of.

What a step runs is the policy's cache mode:

* ``none``: the whole canvas, every step (exact).
* ``prefix``: the first step of a block runs the whole canvas and keeps the keys/values of the prompt
  and the finished blocks; later steps of the block run only the block and everything after it,
  attending to those cached keys/values (Fast-dLLM's prefix cache).
* ``dual``: like ``prefix`` but the keys/values of the masked suffix after the block are kept too,
  and later steps run only the block (Fast-dLLM's DualCache).

Both caches are approximations for a bidirectional model (cached keys/values were computed before
the block's latest commits); they are refreshed once per block.  Positions and padding masks are
those of the full canvas, so a left-padded row computes what it would alone.

Shifted logits (``config.logits_shift``, Dream): the output at position i predicts token i + 1, so
the prediction for canvas position j is read from position j - 1.  Every pass therefore also runs
the position just before the block as a query (the last prompt token for the first block), and the
caches keep context up to that position only.

Stopping: with ``stop_at_eos`` a row leaves the batch after the block in which it committed end of
text; with ``early_stop`` too, it leaves as soon as end of text is committed and every position
before it is, so no forward pass is spent on what would be cut off.  Rows that leave the batch (or
have finished the block while others have not) are not run at all.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..model import KVCache
from . import rules
from .batch import cut_at_eos, left_pad
from .types import DecodePolicy, GenerationError, GenerationResult, StepEvent


def never_sample_ids(cfg) -> list[int]:
    ids = {cfg.mask_token_id, cfg.pad_token_id, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id}
    ids.difference_update(getattr(cfg, "stop_ids", [cfg.eos_token_id]))  # pad may equal end of text
    return sorted(i for i in ids if 0 <= i < cfg.vocab_size)


def stop_tensor(cfg, device) -> torch.Tensor:
    """The ids that end a row (end of text and end of turn) as a tensor for ``torch.isin``."""
    return torch.tensor(getattr(cfg, "stop_ids", [cfg.eos_token_id]), dtype=torch.long, device=device)


def steps_per_block(policy: DecodePolicy, block_sizes: list[int]) -> list[int]:
    total = sum(block_sizes)
    steps = total if policy.steps is None else policy.steps
    return [max(1, min(size, round(steps * size / total))) for size in block_sizes]


class ContextCache(KVCache):
    """Keys/values of a fixed context plus a scratch slot for the tokens being run.

    The context (prompt + finished blocks; for the dual cache also the masked suffix) is laid out
    first, in any order: attention is bidirectional and every key carries its own rotary position.
    Each forward pass writes its tokens' keys/values into the scratch slot in place and attends over
    context + slot; nothing of the pass is kept, so the next step starts from the same context.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor],
                 mask: torch.Tensor | None, slot: int) -> None:
        super().__init__(len(keys))
        b, h, t, d = keys[0].shape
        self._past = t
        self._mask = mask
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

    @property
    def attention_mask(self) -> torch.Tensor | None:  # the context's padding mask, fixed
        return self._mask

    @attention_mask.setter
    def attention_mask(self, value) -> None:  # the model records the mask of each pass: not kept here
        pass

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
        if self._mask is not None:
            self._mask = self._mask.index_select(0, index)


def _commit(policy: DecodePolicy, logits: torch.Tensor, proposal: torch.Tensor, masked: torch.Tensor,
            count: int | torch.Tensor | None) -> torch.Tensor:
    """Which masked positions of the block to commit.  ``logits``/``proposal`` hold only the masked
    positions (M, V) / (M,), in ``masked`` (R, S) order; returns an (R, S) bool mask."""
    def spread(values: torch.Tensor, fill: float) -> torch.Tensor:
        full = torch.full(masked.shape, fill, dtype=values.dtype, device=values.device)
        full[masked] = values
        return full

    if policy.score_tempered and policy.temperature > 0:
        logits = logits / policy.temperature

    if policy.commit == "entropy":
        ent = spread(rules.entropy(logits), float("inf"))
        return rules.commit_entropy_bound(ent, masked, policy.entropy_bound)
    kind = policy.score
    if policy.commit == "factor" and kind == "entropy":
        kind = "probability"  # the factor rule needs scores in [0, 1]
    scores = spread(rules.score_positions(logits, proposal, kind), float("-inf"))
    if policy.commit == "fixed":
        if isinstance(count, torch.Tensor):  # per row (the Dream schedule)
            return rules.commit_top(scores, masked, count.to(masked.device))
        counts = torch.full((masked.shape[0],), count, dtype=torch.long, device=masked.device)
        return rules.commit_top(scores, masked, counts)
    if policy.commit == "threshold":
        return rules.commit_threshold(scores, masked, policy.threshold)
    return rules.commit_factor(scores, masked, policy.factor)


@torch.no_grad()
def generate_diffusion(model, prompts: list[list[int]], policy: DecodePolicy,
                       on_step: Callable[[StepEvent], None] | None = None,
                       keep_history: bool = False) -> GenerationResult:
    policy.validate()
    cfg = model.config
    device = next(model.parameters()).device
    gen_len = policy.max_new_tokens
    canvas, attention, positions, width = left_pad(prompts, cfg.pad_token_id, gen_len, cfg.mask_token_id, device)
    total = canvas.shape[1]
    if total > cfg.max_position_embeddings:
        raise GenerationError(f"prompt ({width} tokens) plus max_new_tokens ({gen_len}) exceeds the model's "
                              f"context of {cfg.max_position_embeddings} tokens")
    generator = None
    if policy.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(policy.seed if policy.seed is not None else torch.seed())
    banned = never_sample_ids(cfg)
    mask_id = cfg.mask_token_id
    stops = stop_tensor(cfg, device)
    shift = 1 if getattr(cfg, "logits_shift", False) else 0  # prompts are never empty, so lo - 1 >= 0
    b = canvas.shape[0]
    padded = not bool(attention.all())  # no padding: run attention without a mask (faster)
    block_starts = list(range(0, gen_len, policy.block_length))
    block_sizes = [min(policy.block_length, gen_len - s) for s in block_starts]
    plan = steps_per_block(policy, block_sizes)
    history: list[torch.Tensor] | None = [] if keep_history else None
    alive = torch.ones(b, dtype=torch.bool, device=device)  # rows still decoding
    nfe = row_forwards = 0
    first_token_seconds = None
    start_time = time.perf_counter()
    prefix = None  # incremental refresh: keys/values and mask of [0, prefix_end) for prefix_rows
    prefix_rows = prefix_end = None
    for block, (start, size, n_steps) in enumerate(zip(block_starts, block_sizes, plan)):
        lo, hi = width + start, width + start + size
        q_lo = lo - shift  # the first query whose output is read (the block's first prediction)
        end = total if policy.window is None else min(total, hi + policy.window)
        rows = alive.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        counts = rules.transfer_counts(size, n_steps) if policy.commit == "fixed" else None
        context: ContextCache | None = None
        step = 0
        while rows.numel():
            x, pos = canvas[rows], positions[rows]
            am = attention[rows, :end] if padded else None
            if context is None and policy.cache != "none" and prefix is not None:
                # Incremental refresh: the finished block, this block and the suffix against the prefix.
                index = alive[prefix_rows].nonzero().squeeze(1)
                p_keys = [k.index_select(0, index) for k in prefix[0]]
                p_values = [v.index_select(0, index) for v in prefix[1]]
                p_mask = None if prefix[2] is None else prefix[2].index_select(0, index)
                scratch = ContextCache(p_keys, p_values, p_mask, end - prefix_end)
                hidden = model.hidden_states(x[:, prefix_end:end], positions=pos[:, prefix_end:end],
                                             cache=scratch)[:, q_lo - prefix_end:q_lo - prefix_end + size]
                keys, values = scratch.filled()
            elif context is None:  # a full pass: every step without a cache, the first of a block with one
                full = KVCache(cfg.num_hidden_layers) if policy.cache != "none" else None
                hidden = model.hidden_states(x[:, :end], positions=pos[:, :end], attention_mask=am,
                                             cache=full)[:, q_lo:q_lo + size]
                if full is not None:
                    keys, values = full.keys, full.values
            else:
                q_hi = end if policy.cache == "prefix" else hi
                hidden = model.hidden_states(x[:, q_lo:q_hi], positions=pos[:, q_lo:q_hi], cache=context)[:, :size]
            if context is None and policy.cache != "none":
                context = ContextCache.from_pass(keys, values, am, q_lo, hi, policy.cache)
                if policy.refresh == "incremental":
                    prefix = ([k[:, :, :q_lo] for k in keys], [v[:, :, :q_lo] for v in values],
                              None if am is None else am[:, :q_lo])
                    prefix_rows, prefix_end = rows, q_lo
            nfe += 1
            row_forwards += rows.numel()
            block_tokens = x[:, lo:hi]
            masked = block_tokens == mask_id
            logits = rules.suppress(model.head(hidden[masked]).float(), banned)
            if policy.top_k:
                logits = rules.top_k_filter(logits, policy.top_k)
            if policy.top_p < 1:
                logits = rules.top_p_filter(logits, policy.top_p)
            proposal = rules.sample_tokens(logits, policy.temperature, generator)
            count = counts[step] if counts else None
            if policy.commit == "fixed" and policy.schedule == "dream":
                count = rules.dream_transfer_counts(masked.sum(1), step, n_steps)
            chosen = _commit(policy, logits, proposal, masked, count)
            proposed = block_tokens.clone()
            proposed[masked] = proposal
            canvas[rows, lo:hi] = torch.where(chosen, proposed, block_tokens)
            step += 1

            if first_token_seconds is None and bool((canvas[:, width] != mask_id).all()):
                first_token_seconds = time.perf_counter() - start_time
            if on_step is not None or history is not None:
                region = canvas[:, width:].clone()
                if history is not None:
                    history.append(region)
                if on_step is not None:
                    committed = torch.zeros_like(region, dtype=torch.bool)
                    committed[rows, start:start + size] = chosen
                    on_step(StepEvent(nfe, block, region, committed, mask_id))
            if policy.stop_at_eos and policy.early_stop:
                region = canvas[rows, width:hi]
                is_eos = torch.isin(region, stops)
                first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(rows, hi))
                before = torch.arange(hi - width, device=device)[None, :] < first_eos[:, None]
                done = is_eos.any(1) & ~((region == mask_id) & before).any(1)
                alive[rows[done]] = False
            keep = alive[rows] & (canvas[rows, lo:hi] == mask_id).any(1)
            if not bool(keep.all()):
                index = keep.nonzero().squeeze(1)
                rows = rows[index]
                if context is not None and rows.numel():
                    context.select_rows(index)
        if policy.stop_at_eos:
            alive &= ~torch.isin(canvas[:, width:hi], stops).any(dim=1)
    seconds = time.perf_counter() - start_time
    ids, finished = [], []
    for row in canvas[:, width:].tolist():
        kept, done = cut_at_eos(row, stops.tolist())
        kept = [t for t in kept if t != mask_id]  # only possible past an early stop
        ids.append(kept)
        finished.append(done)
    return GenerationResult(ids=ids, texts=[], nfe=nfe, generated_tokens=sum(map(len, ids)),
                            seconds=seconds, finished=finished, history=history,
                            first_token_seconds=first_token_seconds, row_forwards=row_forwards)


__all__ = ["generate_diffusion", "steps_per_block", "never_sample_ids", "stop_tensor", "ContextCache"]
