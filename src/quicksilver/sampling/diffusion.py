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

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model import KVCache
from . import rules
from .block_causal import BlockCausalCache, block_aligned_positions
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
            counts: torch.Tensor | int | None) -> torch.Tensor:
    """Which masked positions of the block to commit.  ``logits``/``proposal`` hold only the masked
    positions (M, V) / (M,), in ``masked`` (R, S) order; ``counts`` (R,) is the fixed rule's number per
    row; returns an (R, S) bool mask."""
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
        if not isinstance(counts, torch.Tensor):  # one count for every row
            counts = torch.full((masked.shape[0],), int(counts), dtype=torch.long, device=masked.device)
        return rules.commit_top(scores, masked, counts)
    if policy.commit == "threshold":
        return rules.commit_threshold(scores, masked, policy.threshold)
    return rules.commit_factor(scores, masked, policy.factor)


@dataclass
class StepReport:
    """What one ``BlockDecoder.step`` did."""
    forward: bool  # a forward pass ran
    ran: list[int]  # handles of the rows it ran
    rows: torch.Tensor  # their row indices in the canvas
    chosen: torch.Tensor | None  # (len(ran), hi - lo) positions committed in the block
    lo: int  # canvas columns of the block
    hi: int
    finished: list[int]  # handles of rows that finished in this step (results ready)


class BlockDecoder:
    """Resumable block-wise diffusion decoding of a changing set of rows that share one policy.

    All rows share one canvas (B, T).  Row r holds [pad … | prompt | mask × its budget | pad …]; its
    generated region starts at column ``gen_start[r]``.  Blocks are decoded in lockstep: the active
    block of every row sits at the same columns [lo, hi), so one forward pass serves them all.  Rows
    join (``admit``) only between blocks: a joining row is left-padded so that its first block starts
    at ``lo`` (the canvas is shifted right when its prompt is longer than ``lo``, and widened on the
    right for its budget); positions count from each row's first real token and padding keys are
    masked, so a row computes what it would alone.  ``step()`` runs one forward pass of the current
    block; a row leaves at the step in which it finishes (end of text, early stop, budget used) or is
    cancelled.  Rows whose slots were released are dropped, and the all-padding columns on the left
    trimmed, when new rows join.

    ``generate_diffusion`` drives one over a fixed batch, which is the reference sampler unchanged.
    """

    def __init__(self, model, policy: DecodePolicy) -> None:
        policy.validate()
        # Block-diffusion models decode their own blocks with an exact cache (block_causal.py).
        self.exact = BlockCausalCache.for_model(model, policy)
        if self.exact is not None or getattr(model.config, "block_size", 0):
            policy = dataclasses.replace(policy, block_length=model.config.block_size)
        self.model, self.policy = model, policy
        cfg = model.config
        self.cfg = cfg
        self.device = next(model.parameters()).device
        self.generator = None
        if policy.temperature > 0:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(policy.seed if policy.seed is not None else torch.seed())
        self.banned = never_sample_ids(cfg)
        self.mask_id, self.eos_id = cfg.mask_token_id, cfg.eos_token_id
        self.stops = stop_tensor(cfg, self.device)  # end of text and end of turn
        self.shift = 1 if getattr(cfg, "logits_shift", False) else 0  # prompts are never empty: lo - 1 >= 0
        self.canvas: torch.Tensor | None = None
        self.attention = self.positions = None
        self.alive = torch.zeros(0, dtype=torch.bool, device=self.device)
        self.gen_start: list[int] = []
        self.gen_len: list[int] = []
        self.plans: list[list[int]] = []  # per row: steps of each of its blocks
        self.handles: list[int] = []  # row -> handle
        self.row_of: dict[int, int] = {}
        self.released: set[int] = set()
        self.eos: dict[int, bool] = {}  # handle -> ended with end of text (after it finished)
        self.row_forward_counts: list[int] = []
        self._next_handle = 0
        self.lo = 0  # first column of the current (or next) block
        self.hi = 0
        self.padded = False
        self.rows: torch.Tensor | None = None  # rows of the block being decoded; None between blocks
        self.context: ContextCache | None = None
        self.prefix = None  # incremental refresh: keys/values and mask of [0, prefix_end) for prefix_rows
        self.prefix_rows = self.prefix_end = None
        self.step_in_block = 0
        self.counts: torch.Tensor | None = None  # fixed rule: (B, max steps) tokens per step of the block
        self.block_steps: list[int] = []  # per row of the block: its steps (Dream's schedule needs them)
        self.nfe = 0
        self.row_forwards = 0

    # -- rows ----------------------------------------------------------------------------------------
    @property
    def at_boundary(self) -> bool:
        """Rows may join: between blocks, or when every row has left (mid-block, by cancellation)."""
        return self.rows is None or not bool(self.alive.any())

    @property
    def active(self) -> int:
        return int(self.alive.sum())

    def has(self, handle: int) -> bool:
        return handle in self.row_of and handle not in self.released

    def admit(self, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
        """Add rows (only between blocks); returns their handles."""
        if not self.at_boundary:
            raise RuntimeError("rows join a BlockDecoder only between blocks")
        if not prompts:
            raise GenerationError("no prompt given")
        if any(len(p) == 0 for p in prompts):
            raise GenerationError("the prompt is empty")
        if max_new_tokens <= 0:
            raise GenerationError("max_new_tokens must be a positive integer")
        limit = self.cfg.max_position_embeddings
        width = max(len(p) for p in prompts)
        if width + max_new_tokens > limit:
            raise GenerationError(f"prompt ({width} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
                                  f"model's context of {limit} tokens")
        if self.canvas is None or not bool(self.alive.any()):
            self._reset()
            canvas, attention, positions, width = left_pad(prompts, self.cfg.pad_token_id, max_new_tokens,
                                                           self.mask_id, self.device)
            self.canvas, self.attention, self.positions = canvas, attention, positions
            self.lo = width
            start = 0
        else:
            self._compact()
            need = max(len(p) for p in prompts)
            if need > self.lo:  # shift the canvas right so that the new prompts end at lo
                self._pad_columns(left=need - self.lo)
            total = self.lo + max_new_tokens
            if total > self.canvas.shape[1]:
                self._pad_columns(right=total - self.canvas.shape[1])
            b, t = len(prompts), self.canvas.shape[1]
            canvas = torch.full((b, t), self.cfg.pad_token_id, dtype=torch.long)
            attention = torch.zeros((b, t), dtype=torch.long)
            for row, ids in enumerate(prompts):
                canvas[row, self.lo - len(ids):self.lo] = torch.tensor(ids, dtype=torch.long)
                canvas[row, self.lo:self.lo + max_new_tokens] = self.mask_id
                attention[row, self.lo - len(ids):self.lo + max_new_tokens] = 1
            start = self.canvas.shape[0]
            self.canvas = torch.cat([self.canvas, canvas.to(self.device)])
            self.attention = torch.cat([self.attention, attention.to(self.device)])
            self.positions = (self.attention.cumsum(dim=1) - 1).clamp(min=0)
            self.prefix = None  # the cached prefix does not cover the new rows: refresh in full
        handles = []
        for _ in prompts:
            handle = self._next_handle
            self._next_handle += 1
            self.row_of[handle] = start + len(handles)
            handles.append(handle)
            self.handles.append(handle)
            self.gen_start.append(self.lo)
            self.gen_len.append(max_new_tokens)
            sizes = [min(self.policy.block_length, max_new_tokens - s)
                     for s in range(0, max_new_tokens, self.policy.block_length)]
            self.plans.append(steps_per_block(self.policy, sizes))
            self.row_forward_counts.append(0)
        self.alive = torch.cat([self.alive, torch.ones(len(prompts), dtype=torch.bool, device=self.device)])
        self.padded = not bool(self.attention.all())
        if getattr(self.cfg, "block_size", 0):  # blocks fall where training put them
            self.positions = block_aligned_positions(self.attention, self.gen_start, self.cfg.block_size)
            if self.exact is not None:
                self.exact.reset()  # rows and columns may have moved: rebuilt at the next block
        return handles

    def cancel(self, handle: int) -> None:
        """The row leaves the batch at the next step (its result stays readable until released)."""
        if handle in self.row_of:
            self.alive[self.row_of[handle]] = False

    def release(self, handle: int) -> None:
        """Forget a finished or cancelled row; its canvas row is dropped when new rows join."""
        self.cancel(handle)
        self.released.add(handle)

    def region(self, handle: int) -> list[int]:
        """The row's generated region: token ids, the mask id where not yet committed."""
        r = self.row_of[handle]
        return self.canvas[r, self.gen_start[r]:self.gen_start[r] + self.gen_len[r]].tolist()

    def result(self, handle: int) -> tuple[list[int], bool]:
        """The row's generated ids up to end of text, and whether it ended with end of text."""
        kept, done = cut_at_eos(self.region(handle), self.stops.tolist())
        return [t for t in kept if t != self.mask_id], done  # masks only past an early stop

    def forwards(self, handle: int) -> int:
        return self.row_forward_counts[self.row_of[handle]]

    def block(self, handle: int) -> int:
        r = self.row_of[handle]
        return max(0, min(self.lo - self.gen_start[r], self.gen_len[r] - 1)) // self.policy.block_length

    def _reset(self) -> None:
        self.canvas = None
        self.alive = torch.zeros(0, dtype=torch.bool, device=self.device)
        self.gen_start, self.gen_len, self.plans, self.handles, self.row_forward_counts = [], [], [], [], []
        self.row_of = {}
        self.released = set()
        self.prefix = None
        self.rows = self.context = self.counts = None

    def _pad_columns(self, left: int = 0, right: int = 0) -> None:
        b = self.canvas.shape[0]
        pads = [torch.full((b, n), self.cfg.pad_token_id, dtype=torch.long, device=self.device) for n in (left, right)]
        zeros = [torch.zeros((b, n), dtype=torch.long, device=self.device) for n in (left, right)]
        self.canvas = torch.cat([pads[0], self.canvas, pads[1]], dim=1)
        self.attention = torch.cat([zeros[0], self.attention, zeros[1]], dim=1)
        self.positions = (self.attention.cumsum(dim=1) - 1).clamp(min=0)
        self.lo += left
        self.gen_start = [g + left for g in self.gen_start]

    def _compact(self) -> None:
        """Drop released rows and the columns that are padding in every row left."""
        keep = [r for r, h in enumerate(self.handles) if h not in self.released]
        if len(keep) < len(self.handles):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.canvas, self.attention = self.canvas[index], self.attention[index]
            self.alive = self.alive[index]
            for name in ("gen_start", "gen_len", "plans", "handles", "row_forward_counts"):
                values = getattr(self, name)
                setattr(self, name, [values[r] for r in keep])
            self.row_of = {h: r for r, h in enumerate(self.handles)}
            self.released = set()
        first = int(self.attention.argmax(dim=1).min())  # every row has real tokens
        last = max(g + n for g, n in zip(self.gen_start, self.gen_len))
        cut = min(first, self.lo)
        self.canvas = self.canvas[:, cut:last]
        self.attention = self.attention[:, cut:last]
        self.positions = (self.attention.cumsum(dim=1) - 1).clamp(min=0)
        self.lo -= cut
        self.gen_start = [g - cut for g in self.gen_start]
        self.prefix = None

    # -- decoding ------------------------------------------------------------------------------------
    def _start_block(self) -> list[int]:
        """Pick the rows whose next block starts at ``lo``; returns handles of rows that are done."""
        finished = []
        lo, bl = self.lo, self.policy.block_length
        sizes = []
        rows = []
        for r in self.alive.nonzero().squeeze(1).tolist():
            remaining = self.gen_start[r] + self.gen_len[r] - lo
            if remaining <= 0:  # budget used: the row is done
                self.alive[r] = False
                finished.append(self.handles[r])
                continue
            rows.append(r)
            sizes.append(min(bl, remaining))
        if not rows:
            return finished
        self.rows = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.hi = lo + max(sizes)
        self.context = None
        self.step_in_block = 0
        self.counts = None
        self.block_steps = [self.plans[r][(lo - self.gen_start[r]) // bl] for r in rows]
        if self.policy.commit == "fixed":
            schedules = []
            for r, size in zip(rows, sizes):
                index = (lo - self.gen_start[r]) // bl
                schedules.append(rules.transfer_counts(size, self.plans[r][index]))
            longest = max(len(s) for s in schedules)
            self.counts = torch.tensor([s + [s[-1]] * (longest - len(s)) for s in schedules], dtype=torch.long,
                                       device=self.device)
        return finished

    def _end_block(self) -> list[int]:
        """After the block's last step: rows that committed end of text (or used their budget) finish."""
        finished = []
        lo, hi = self.lo, self.hi
        was = self.alive.clone()
        if self.policy.stop_at_eos:
            cols = torch.arange(hi, device=self.device)[None, :]
            start = torch.tensor(self.gen_start, device=self.device)[:, None]
            in_region = cols >= start
            self.alive &= ~(torch.isin(self.canvas[:, :hi], self.stops) & in_region).any(dim=1)
        nxt = lo + self.policy.block_length
        for r in was.nonzero().squeeze(1).tolist():
            if self.alive[r] and self.gen_start[r] + self.gen_len[r] <= nxt:
                self.alive[r] = False
            if not self.alive[r]:
                finished.append(self.handles[r])
        self.lo = nxt
        self.rows = None
        self.context = None
        return finished

    def _block_hidden(self, rows: torch.Tensor, x: torch.Tensor, lo: int, hi: int, end: int) -> torch.Tensor:
        """Hidden states (R, hi - lo, D) that predict the block's positions, from one forward pass of
        the policy's cache mode, or from the exact cache of a block-diffusion model."""
        if self.exact is not None:
            return self.exact.hidden(self.model, rows, x, self.positions[rows],
                                     self.attention[rows] if self.padded else None, lo, hi, self.shift)
        model, cfg, policy = self.model, self.cfg, self.policy
        size = hi - lo
        q_lo = lo - self.shift
        pos = self.positions[rows]
        am = self.attention[rows, :end] if self.padded else None
        context = self.context
        if context is None and policy.cache != "none" and self.prefix is not None:
            # Incremental refresh: the finished block, this block and the suffix against the prefix.
            prefix, prefix_end = self.prefix, self.prefix_end
            index = self.alive[self.prefix_rows].nonzero().squeeze(1)
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
            self.context = ContextCache.from_pass(keys, values, am, q_lo, hi, policy.cache)
            if policy.refresh == "incremental":
                self.prefix = ([k[:, :, :q_lo] for k in keys], [v[:, :, :q_lo] for v in values],
                               None if am is None else am[:, :q_lo])
                self.prefix_rows, self.prefix_end = rows, q_lo
        return hidden

    @torch.no_grad()
    def step(self) -> StepReport:
        """One forward pass over the active rows of the current block (starting it when between blocks)."""
        policy, model, cfg, device = self.policy, self.model, self.cfg, self.device
        finished: list[int] = []
        if self.rows is None:
            finished += self._start_block()
            if self.rows is None:
                return StepReport(False, [], torch.zeros(0, dtype=torch.long), None, self.lo, self.lo, finished)
        rows = self.rows
        if not bool(self.alive[rows].all()):  # cancelled since the last step
            index = self.alive[rows].nonzero().squeeze(1)
            rows = self.rows = rows[index]
            if self.context is not None and rows.numel():
                self.context.select_rows(index)
            if self.counts is not None:
                self.counts = self.counts[index]
            self.block_steps = [self.block_steps[i] for i in index.tolist()]
            if rows.numel() == 0:
                finished += self._end_block()
                return StepReport(False, [], rows, None, self.lo, self.lo, finished)
        lo, hi = self.lo, self.hi
        total = self.canvas.shape[1]
        end = total if policy.window is None else min(total, hi + policy.window)
        x = self.canvas[rows]
        hidden = self._block_hidden(rows, x, lo, hi, end)
        self.nfe += 1
        self.row_forwards += rows.numel()
        for r in rows.tolist():
            self.row_forward_counts[r] += 1
        block_tokens = x[:, lo:hi]
        masked = block_tokens == self.mask_id
        logits = rules.suppress(model.head(hidden[masked]).float(), self.banned)
        if policy.top_k:
            logits = rules.top_k_filter(logits, policy.top_k)
        if policy.top_p < 1:
            logits = rules.top_p_filter(logits, policy.top_p)
        proposal = rules.sample_tokens(logits, policy.temperature, self.generator)
        counts = None
        if policy.commit == "fixed" and policy.schedule == "dream":
            counts = torch.cat([rules.dream_transfer_counts(masked[i:i + 1].sum(1), self.step_in_block, n)
                                for i, n in enumerate(self.block_steps)]).to(device)
        elif self.counts is not None:
            counts = self.counts[:, min(self.step_in_block, self.counts.shape[1] - 1)]
        chosen = _commit(policy, logits, proposal, masked, counts)
        proposed = block_tokens.clone()
        proposed[masked] = proposal
        self.canvas[rows, lo:hi] = torch.where(chosen, proposed, block_tokens)
        self.step_in_block += 1
        ran = [self.handles[r] for r in rows.tolist()]
        if policy.stop_at_eos and policy.early_stop:
            start = min(self.gen_start[r] for r in rows.tolist())
            region = self.canvas[rows, start:hi]
            cols = torch.arange(start, hi, device=device)[None, :]
            in_region = cols >= torch.tensor([self.gen_start[r] for r in rows.tolist()], device=device)[:, None]
            is_eos = torch.isin(region, self.stops) & in_region
            first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(rows, hi - start))
            before = (torch.arange(hi - start, device=device)[None, :] < first_eos[:, None]) & in_region
            done = is_eos.any(1) & ~((region == self.mask_id) & before).any(1)
            for r in rows[done].tolist():
                self.alive[r] = False
                finished.append(self.handles[r])
        keep = self.alive[rows] & (self.canvas[rows, lo:hi] == self.mask_id).any(1)
        if not bool(keep.all()):
            index = keep.nonzero().squeeze(1)
            self.rows = rows[index]
            if self.context is not None and self.rows.numel():
                self.context.select_rows(index)
            if self.counts is not None:
                self.counts = self.counts[index]
            self.block_steps = [self.block_steps[i] for i in index.tolist()]
        if self.rows.numel() == 0:
            finished += self._end_block()
        return StepReport(True, ran, rows, chosen, lo, hi, finished)


@torch.no_grad()
def generate_diffusion(model, prompts: list[list[int]], policy: DecodePolicy,
                       on_step: Callable[[StepEvent], None] | None = None,
                       keep_history: bool = False) -> GenerationResult:
    """Decode a fixed batch: a ``BlockDecoder`` admits every row at once and steps until all are done."""
    decoder = BlockDecoder(model, policy)
    gen_len = policy.max_new_tokens
    decoder.admit(prompts, gen_len)
    width = decoder.lo
    mask_id = decoder.mask_id
    history: list[torch.Tensor] | None = [] if keep_history else None
    first_token_seconds = None
    start_time = time.perf_counter()
    block = -1
    while decoder.active:
        starting = decoder.at_boundary
        report = decoder.step()
        if not report.forward:
            continue
        if starting:
            block += 1
        canvas = decoder.canvas
        if first_token_seconds is None and bool((canvas[:, width] != mask_id).all()):
            first_token_seconds = time.perf_counter() - start_time
        if on_step is not None or history is not None:
            region = canvas[:, width:].clone()
            if history is not None:
                history.append(region)
            if on_step is not None:
                committed = torch.zeros_like(region, dtype=torch.bool)
                committed[report.rows, report.lo - width:report.hi - width] = report.chosen
                on_step(StepEvent(decoder.nfe, block, region, committed, mask_id))
    seconds = time.perf_counter() - start_time
    ids, finished = [], []
    for handle in range(len(prompts)):
        kept, done = decoder.result(handle)
        ids.append(kept)
        finished.append(done)
    return GenerationResult(ids=ids, texts=[], nfe=decoder.nfe, generated_tokens=sum(map(len, ids)),
                            seconds=seconds, finished=finished, history=history,
                            first_token_seconds=first_token_seconds, row_forwards=decoder.row_forwards)


__all__ = ["generate_diffusion", "BlockDecoder", "StepReport", "steps_per_block", "never_sample_ids", "stop_tensor",
           "ContextCache"]
