"""Block-wise diffusion decoding of canvases: LLaDA's reference sampler and the fast modes of Fast-dLLM.

A canvas (``canvas.Canvas``) is fixed tokens and masked spans: ``[prompt | mask * n]`` for a
completion, ``[prefix | mask * n | suffix]`` for an infill, any mix for a template or an edit.  The
masked positions are decoded in blocks of ``block_length`` columns from the first masked column, left
to right; within a block each step runs the model, proposes a token for every masked position of the
block, and commits some of them.  Committed tokens never change; fixed tokens on either side of the
block are context.

What a step commits is the policy's commit rule (``step.choose``, over ``rules.commit_*``): the
reference linear schedule (``steps`` forward passes in all), or a dynamic rule (threshold, factor,
entropy bound) that commits as many positions as the model is sure of.  What a step runs is the
policy's cache mode (``forward.BlockForward``: none, prefix, dual; full or incremental refresh).
Which rows share the canvas, where their spans are and how they join and leave is ``rows.RowBook``.

Shifted logits (``config.logits_shift``, Dream): the output at position i predicts token i + 1, so
the prediction for canvas position j is read from position j - 1.  Every pass therefore also runs
the position just before the block as a query, and the caches keep context up to that position only.
A span at the very start of a row (an infill with an empty prefix) reads its first position's own
output, as there is nothing before it.

Stopping: with ``stop_at_eos`` a span that may end early ends after the block in which it committed a
stop id; with ``early_stop`` too, as soon as the stop is committed and every position of the span
before it is.  A row whose spans are all filled or ended leaves the batch, so no forward pass is
spent on what would be cut off.  Rows that leave the batch (or have no masked position in the
current block while others do) are not run at all.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import rules
from .block_causal import BlockCausalForward, block_aligned_positions
from .canvas import Canvas, Span, completions
from .forward import BlockForward, ContextCache
from .rows import RowBook
from . import correction
from .step import block_plan, choose, filter_logits, fixed_counts
from .stops import never_sample_ids, stop_tensor
from .types import DecodePolicy, GenerationError, GenerationResult, StepEvent


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
    """Resumable block-wise diffusion decoding of a changing set of canvas rows that share one policy.

    Blocks are decoded in lockstep: the active block of every row sits at the same columns [lo, hi),
    so one forward pass serves them all.  Rows join (``admit`` a list of prompts, ``admit_canvases``
    any canvases) only between blocks, laid out so that their first masked column is ``lo``
    (``rows.RowBook``); ``step()`` runs one forward pass of the current block; a row leaves at the
    step in which it finishes (its spans filled or ended by a stop id) or is cancelled.

    ``fill`` and ``generate_diffusion`` drive one over a fixed batch; the engine drives one per cohort.
    """

    def __init__(self, model, policy: DecodePolicy) -> None:
        policy.validate()
        # Block-diffusion models decode their own blocks, with an exact cache (block_causal.py).
        exact = BlockCausalForward.for_model(model, policy)
        if getattr(model.config, "block_size", 0):
            policy = dataclasses.replace(policy, block_length=model.config.block_size)
        self.model, self.policy = model, policy
        cfg = self.cfg = model.config
        self.device = next(model.parameters()).device
        self.generator = None
        if policy.temperature > 0:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(policy.seed if policy.seed is not None else torch.seed())
        self.banned = never_sample_ids(cfg)
        self.mask_id, self.eos_id = cfg.mask_token_id, cfg.eos_token_id
        self.stops = stop_tensor(cfg, self.device)  # end of text and end of turn
        self.shift = 1 if cfg.logits_shift else 0
        self.book = RowBook(self.device, cfg.pad_token_id, self.mask_id, list(cfg.stop_ids), cfg.vocab_size,
                            min_lo=self.shift)
        self.forward = exact or BlockForward(model, policy.cache, policy.refresh)
        self.padded = False
        self.rows: torch.Tensor | None = None  # rows of the block being decoded; None between blocks
        self.hi = 0
        self.step_in_block = 0
        self.counts: torch.Tensor | None = None  # fixed rule: (R, max steps) tokens per step of the block
        self.block_steps: list[int] = []  # per row of the block: its steps (Dream's schedule needs them)
        # Token-to-token editing (policy.correct "edit"/"both"): per row of the block, the edit passes it
        # may still take once its block is full (0: none left, or the last one changed nothing).
        self.edit_left: torch.Tensor | None = None
        self.nfe = 0
        self.row_forwards = 0

    # -- rows ----------------------------------------------------------------------------------------
    @property
    def canvas(self) -> torch.Tensor | None:
        return self.book.canvas

    @property
    def lo(self) -> int:
        """First column of the current (or next) block."""
        return self.book.lo

    @property
    def at_boundary(self) -> bool:
        """Rows may join: between blocks, or when every row has left (mid-block, by cancellation)."""
        return self.rows is None or not bool(self.book.alive.any())

    @property
    def active(self) -> int:
        return int(self.book.alive.sum())

    def has(self, handle: int) -> bool:
        return handle in self.book.row_of and handle not in self.book.released

    def admit(self, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
        """Add completion rows ``[prompt | mask * max_new_tokens]`` (only between blocks); returns handles."""
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
        return self.admit_canvases(completions(prompts, max_new_tokens))

    def admit_canvases(self, canvases: list[Canvas]) -> list[int]:
        """Add one row per canvas (only between blocks); returns their handles."""
        if not self.at_boundary:
            raise RuntimeError("rows join a BlockDecoder only between blocks")
        if not canvases:
            raise GenerationError("no prompt given")
        for c in canvases:
            c.check_fits(self.cfg.max_position_embeddings)
            if self.policy.window is not None and not isinstance(c.parts[-1], Span):
                raise GenerationError("window needs a canvas that ends with its masked span (no suffix)")
        if self.rows is not None:  # every row left mid-block: that block is over, the canvas starts afresh
            self.rows, self.counts = None, None
            self.forward.new_block()
        handles = self.book.admit(canvases, self.policy.block_length, lambda sizes: block_plan(self.policy, sizes))
        self.forward.forget_prefix()  # the kept prefix does not cover the new rows: refresh in full
        if getattr(self.cfg, "block_size", 0):  # blocks fall where training put them
            self.book.positions = block_aligned_positions(self.book.attention, self.book.gen_start,
                                                          self.cfg.block_size)
        self.padded = not bool(self.book.attention.all())
        return handles

    def cancel(self, handle: int) -> None:
        """The row leaves the batch at the next step (its result stays readable until released)."""
        if handle in self.book.row_of:
            self.book.alive[self.book.row_of[handle]] = False

    def release(self, handle: int) -> None:
        """Forget a finished or cancelled row; its canvas row is dropped when new rows join."""
        self.book.release(handle)

    def region(self, handle: int) -> list[int]:
        """The row's span positions: token ids, the mask id where not yet committed."""
        return self.book.region(handle)

    def result(self, handle: int) -> tuple[list[int], bool]:
        """The row's generated ids (each span up to its stop id), and whether it ended with a stop id."""
        return self.book.result(handle)

    def span_ids(self, handle: int) -> list[tuple[list[int], bool]]:
        return self.book.span_ids(handle)

    def forwards(self, handle: int) -> int:
        return self.book.forward_counts[self.book.row_of[handle]]

    def block(self, handle: int) -> int:
        b = self.book
        r = b.row_of[handle]
        return max(0, min(b.lo - b.gen_start[r], b.gen_end[r] - b.gen_start[r] - 1)) // self.policy.block_length

    # -- blocks --------------------------------------------------------------------------------------
    def _start_block(self) -> list[int]:
        """Pick the rows with masked positions in the block at ``lo`` (skipping blocks that no row has
        masks in); returns handles of rows that are done."""
        book, bl = self.book, self.policy.block_length
        finished = []
        while True:
            alive = book.alive.nonzero().squeeze(1)
            if alive.numel() == 0:
                return finished
            lo = book.lo
            masks = book.canvas[alive, lo:] == self.mask_id
            window = masks[:, :bl]
            width = window.shape[1]
            last = torch.where(window, torch.arange(1, width + 1, device=self.device), 0).amax(1) if width else \
                torch.zeros(alive.numel(), dtype=torch.long, device=self.device)
            any_left = masks.any(1)
            rows, sizes, ends = [], [], []
            for r, left, count, end in zip(alive.tolist(), any_left.tolist(), window.sum(1).tolist(), last.tolist()):
                if not left:  # nothing left to decode: the row is done
                    book.alive[r] = False
                    finished.append(book.handles[r])
                elif count:
                    rows.append(r)
                    sizes.append(count)
                    ends.append(end)
            if rows:
                break
            if bool(book.alive.any()):
                book.lo = lo + bl  # no row has a masked position in this block: the next one
        self.rows = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.hi = lo + max(ends)
        self.forward.new_block()
        self.step_in_block = 0
        self.counts = None
        self.block_steps = [book.plans[r][(lo - book.gen_start[r]) // bl] for r in rows]
        passes = self.policy.edit_passes if self.policy.correct in ("edit", "both") else 0
        self.edit_left = torch.full((len(rows),), passes, dtype=torch.long, device=self.device)
        if self.policy.commit == "fixed":
            schedules = [rules.transfer_counts(size, n) for size, n in zip(sizes, self.block_steps)]
            longest = max(len(s) for s in schedules)
            self.counts = torch.tensor([s + [s[-1]] * (longest - len(s)) for s in schedules], dtype=torch.long,
                                       device=self.device)
        return finished

    def _end_block(self) -> list[int]:
        """After the block's last step: spans that committed a stop id end; rows with nothing left finish."""
        book = self.book
        was = book.alive.nonzero().squeeze(1).tolist()
        if self.policy.stop_at_eos:
            for r in book.end_spans(was, self.hi, early=False):
                book.alive[r] = False
        nxt = book.lo + self.policy.block_length
        if was:
            index = torch.tensor(was, dtype=torch.long, device=self.device)
            left = (book.canvas[index, nxt:] == self.mask_id).any(1).tolist()
            for r, more in zip(was, left):
                if not more:
                    book.alive[r] = False
        finished = [book.handles[r] for r in was if not bool(book.alive[r])]
        book.lo = nxt
        self.rows = None
        self.forward.new_block()
        return finished

    def _keep(self, keep: torch.Tensor) -> None:
        """Only the rows of the block where ``keep`` (over ``self.rows``) stay in it."""
        if bool(keep.all()):
            return
        index = keep.nonzero().squeeze(1)
        self.rows = self.rows[index]
        self.forward.keep_rows(index)
        if self.counts is not None:
            self.counts = self.counts[index]
        if self.edit_left is not None:
            self.edit_left = self.edit_left[index]
        self.block_steps = [self.block_steps[i] for i in index.tolist()]

    # -- one step ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> StepReport:
        """One forward pass over the active rows of the current block (starting it when between blocks)."""
        book, policy = self.book, self.policy
        finished: list[int] = []
        if self.rows is None:
            finished += self._start_block()
            if self.rows is None:
                return StepReport(False, [], torch.zeros(0, dtype=torch.long), None, book.lo, book.lo, finished)
        self._keep(book.alive[self.rows])  # rows cancelled since the last step leave
        if self.rows.numel() == 0:
            finished += self._end_block()
            return StepReport(False, [], self.rows if self.rows is not None else torch.zeros(0, dtype=torch.long),
                              None, book.lo, book.lo, finished)
        rows = self.rows
        lo, hi = book.lo, self.hi
        x = book.canvas[rows]
        chosen = self._commit_step(rows, x, lo, hi)
        self.step_in_block += 1
        row_list = rows.tolist()
        ran = [book.handles[r] for r in row_list]
        if policy.stop_at_eos and policy.early_stop:
            for r in book.end_spans(row_list, hi, early=True):
                book.alive[r] = False
                finished.append(book.handles[r])
        more = (book.canvas[rows, lo:hi] == self.mask_id).any(1)
        if self.edit_left is not None:
            more = more | (self.edit_left > 0)  # a full block stays for its token-editing passes
        self._keep(book.alive[rows] & more)
        if self.rows.numel() == 0:
            finished += self._end_block()
        return StepReport(True, ran, rows, chosen, lo, hi, finished)

    def _commit_step(self, rows: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Run the model on the block, propose tokens for its masked positions, commit some; returns
        the (R, hi - lo) positions committed."""
        book, policy = self.book, self.policy
        size = hi - lo
        q_lo = lo - self.shift  # the first query whose output is read (the block's first prediction)
        total = x.shape[1]
        end = total if policy.window is None else min(total, hi + policy.window)
        am = book.attention[rows, :end] if self.padded else None
        hidden = self.forward.run(x, book.positions[rows], am, rows.tolist(), q_lo, hi, end)
        if self.shift:
            # A row whose span starts its canvas (nothing real before lo) reads its own first output.
            own = book.attention[rows, q_lo] == 0
            block_hidden = hidden[:, :size]
            if bool(own.any()):
                block_hidden = block_hidden.clone()
                block_hidden[own, 0] = hidden[own, 1]
        else:
            block_hidden = hidden
        self.nfe += 1
        self.row_forwards += rows.numel()
        for r in rows.tolist():
            book.forward_counts[r] += 1
        block_tokens = x[:, lo:hi]
        masked = block_tokens == self.mask_id
        logits = filter_logits(policy, self.model.head(block_hidden[masked]).float(), self.banned,
                               self._permit(rows, lo, hi, masked))
        proposal = rules.sample_tokens(logits, policy.temperature, self.generator)
        counts = fixed_counts(policy, masked, self.step_in_block, self.block_steps, self.counts)
        chosen = choose(policy, logits, proposal, masked, counts)
        reopen = None
        if policy.correct in ("remask", "both"):
            chosen, reopen = self._remask(rows, block_tokens, block_hidden, masked, logits, proposal, chosen, lo, hi)
        proposed = block_tokens.clone()
        proposed[masked] = proposal
        book.canvas[rows, lo:hi] = torch.where(chosen, proposed, block_tokens)
        if reopen is not None:
            book.canvas[rows, lo:hi] = book.canvas[rows, lo:hi].masked_fill(reopen, self.mask_id)
            chosen = chosen | reopen  # drafts show the reopened positions as changed
        if self.edit_left is not None and bool((self.edit_left > 0).any()):
            chosen = chosen | self._edit(rows, block_hidden, masked, lo, hi)
        return chosen

    # -- correction while refining (``correction.py``) ----------------------------------------------
    def _generated(self, rows: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, lo: int, hi: int):
        """(R, S) bool: committed span positions of the block that correction may touch (no stop ids)."""
        return (self.book.span[rows, lo:hi] >= 0) & ~masked & ~torch.isin(tokens, self.stops)

    def _remask(self, rows, tokens, hidden, masked, logits, proposal, chosen, lo, hi):
        """Swap the weakest committed tokens of each row for surer proposals (same count, same passes)."""
        policy = self.policy
        old = self._generated(rows, tokens, masked, lo, hi)
        if not bool(old.any()):
            return chosen, None
        old_logits = filter_logits(policy, self.model.head(hidden[old]).float(), self.banned,
                                   self._permit(rows, lo, hi, old))
        old_scores = torch.full(masked.shape, float("-inf"), device=self.device)
        old_scores[old] = old_logits.softmax(-1).gather(-1, tokens[old][:, None]).squeeze(-1)
        new_scores = torch.full(masked.shape, float("-inf"), device=self.device)
        new_scores[masked] = logits.softmax(-1).gather(-1, proposal[:, None]).squeeze(-1)
        chosen = chosen.clone()
        reopen = torch.zeros_like(masked)
        for i in range(rows.numel()):
            m, o = masked[i], old[i]
            if policy.commit == "fixed":
                budget = correction.reopen_budget(policy.remask_share, int(o.sum()), self.step_in_block,
                                                  self.block_steps[i])
            elif int(chosen[i].sum()) >= int(m.sum()):
                budget = 0  # this step fills the block
            else:
                budget = int(policy.remask_share * int(m.sum()) / max(1, m.numel()) * int(o.sum()))
            row_chosen, row_reopen = correction.swap_weakest(new_scores[i][m].cpu(), chosen[i][m].cpu(),
                                                             old_scores[i][o].cpu(), budget)
            chosen[i, m] = row_chosen.to(self.device)
            reopen[i, o] = row_reopen.to(self.device)
        return chosen, reopen

    def _edit(self, rows, hidden, masked, lo, hi) -> torch.Tensor:
        """Token-to-token editing pass for the rows whose block is full: replace committed tokens whose
        best token now differs with probability above ``edit_threshold``; returns the (R, S) changes."""
        book, policy = self.book, self.policy
        tokens = book.canvas[rows, lo:hi]
        full = ~masked.any(1) & (self.edit_left > 0)
        target = self._generated(rows, tokens, masked, lo, hi) & full[:, None]
        changed = torch.zeros_like(masked)
        if bool(target.any()):
            edit_logits = filter_logits(policy, self.model.head(hidden[target]).float(), self.banned + self.stops.tolist(),
                                        self._permit(rows, lo, hi, target))
            probs = edit_logits.softmax(-1)
            best_prob, best = probs.max(-1)
            replace = correction.edits(tokens[target], best, best_prob, policy.edit_threshold)
            new = tokens[target].clone()
            new[replace] = best[replace]
            updated = tokens.clone()
            updated[target] = new
            book.canvas[rows, lo:hi] = updated
            changed[target] = replace
        spent = full.long()
        self.edit_left = torch.where(full & ~changed.any(1), torch.zeros_like(self.edit_left), self.edit_left - spent)
        return changed

    def _permit(self, rows: torch.Tensor, lo: int, hi: int, masked: torch.Tensor) -> torch.Tensor | None:
        """(M, V) bool: the tokens each masked position's span allows; None when no span restricts."""
        if not self.book.rules:
            return None
        rule = self.book.rule[rows, lo:hi][masked]
        restricted = rule >= 0
        if not bool(restricted.any()):
            return None
        table = torch.stack(self.book.rules)
        permit = torch.ones(rule.shape[0], table.shape[1], dtype=torch.bool, device=self.device)
        permit[restricted] = table[rule[restricted]]
        return permit


@torch.no_grad()
def fill(model, canvases: list[Canvas], policy: DecodePolicy, on_step: Callable[[StepEvent], None] | None = None,
         keep_history: bool = False) -> GenerationResult:
    """Fill a fixed batch of canvases: a ``BlockDecoder`` admits every row at once and steps until
    all are done.  ``StepEvent.canvas`` holds each row's span positions (right-padded with the pad id
    when rows differ); ``result.spans`` each row's spans."""
    decoder = BlockDecoder(model, policy)
    handles = decoder.admit_canvases(canvases)
    return _drive(decoder, handles, on_step, keep_history)


@torch.no_grad()
def generate_diffusion(model, prompts: list[list[int]], policy: DecodePolicy,
                       on_step: Callable[[StepEvent], None] | None = None,
                       keep_history: bool = False) -> GenerationResult:
    """Complete ``prompts``: ``fill`` of completion canvases ``[prompt | mask * max_new_tokens]``."""
    decoder = BlockDecoder(model, policy)
    handles = decoder.admit(prompts, policy.max_new_tokens)
    return _drive(decoder, handles, on_step, keep_history)


def _region_index(decoder: BlockDecoder, handles: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas columns of each row's span positions (B, G), and which entries are real (B, G)."""
    book = decoder.book
    columns = []
    for h in handles:
        r = book.row_of[h]
        cols: list[int] = []
        for sid in book.row_spans[r]:
            s = book.spans[sid]
            cols += range(s.start, s.start + s.length)
        columns.append(cols)
    width = max(map(len, columns))
    index = torch.tensor([c + [0] * (width - len(c)) for c in columns], dtype=torch.long, device=decoder.device)
    valid = torch.tensor([[True] * len(c) + [False] * (width - len(c)) for c in columns], device=decoder.device)
    return index, valid


def _drive(decoder: BlockDecoder, handles: list[int], on_step, keep_history: bool) -> GenerationResult:
    book = decoder.book
    index, valid = _region_index(decoder, handles)  # the columns stay put: no row joins later
    mask_id, pad_id = decoder.mask_id, decoder.cfg.pad_token_id
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
        region = book.canvas.gather(1, index).masked_fill(~valid, pad_id)
        if first_token_seconds is None and bool((region[:, 0] != mask_id).all()):
            first_token_seconds = time.perf_counter() - start_time
        if on_step is not None or history is not None:
            if history is not None:
                history.append(region)
            if on_step is not None:
                committed = torch.zeros_like(book.canvas, dtype=torch.bool)
                committed[report.rows, report.lo:report.hi] = report.chosen
                committed = committed.gather(1, index) & valid
                on_step(StepEvent(decoder.nfe, block, region, committed, mask_id))
    seconds = time.perf_counter() - start_time
    ids, finished, spans = [], [], []
    for handle in handles:
        kept, done = decoder.result(handle)
        ids.append(kept)
        finished.append(done)
        spans.append([s for s, _ in decoder.span_ids(handle)])
    return GenerationResult(ids=ids, nfe=decoder.nfe, generated_tokens=sum(map(len, ids)), seconds=seconds,
                            finished=finished, history=history, first_token_seconds=first_token_seconds,
                            row_forwards=decoder.row_forwards, forwards=[decoder.forwards(h) for h in handles],
                            spans=spans)


__all__ = ["fill", "generate_diffusion", "BlockDecoder", "StepReport", "ContextCache"]
