"""Verified decoding: a draft head proposes a block in one pass, the causal model checks it in one.

One round, per row of a (left-padded) batch:

1. The draft head (``quicksilver.drafter``) reads the causal model's features of every accepted
   token and the *anchor* (the last token chosen, not yet run through the causal model) and drafts
   ``k = policy.draft_length`` tokens at once (bidirectional over ``[anchor, M * k]``).
2. The causal model runs ``[anchor, d_1 .. d_k]`` in one cached pass, which gives its distribution
   after the anchor and after every draft.
3. Acceptance.  Greedy: keep the longest run of drafts equal to the causal model's argmax, then the
   causal model's own next token (the *bonus*).  Sampling: the speculative-sampling rule (Leviathan et
   al. 2023; Chen et al. 2023): accept d_j with probability min(1, p_j(d_j) / q_j(d_j)); at the first
   rejection draw from norm(max(0, p_j - q_j)); when all are accepted draw the bonus from p_{k+1}.
   p is the causal model's distribution and q the head's, both after the same filters and temperature
   as plain AR decoding (``rules``), so the output is distributed exactly as the causal model's.
4. Roll back: the causal model's cache keeps the anchor and the accepted drafts; the rejected entries
   are cut off (batch 1) or, where another row accepted more, masked out (their columns stay as holes
   that no query attends to).  The head's context keys/values follow the same columns and mask.

So greedy verified output is the causal model's greedy output, token for token, and one round costs a
head pass plus one causal pass over k + 1 tokens while it emits between 1 and k + 1 tokens.

Where the drafts come from (``policy.draft_source``): ``"head"``, the draft head alone; ``"lookup"``,
copying: the tokens that followed the most recent earlier occurrence of the row's last three (else
two) tokens in its prompt and output (prompt-lookup decoding; free, and a small model's greedy output
repeats itself a lot); ``"head+lookup"``, the copy where the row has a match and the head elsewhere
(the head pass is skipped in rounds where every row has a match).  A copied draft is a deterministic
proposal (q one-hot), for which the acceptance rule above is still exact.  Whatever the source, the
causal model decides every token.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..model import KVCache
from . import rules
from .batch import left_pad
from .stops import cut_at_eos, never_sample_ids, stop_tensor
from .types import DecodePolicy, GenerationError, GenerationResult, StepEvent


@dataclass
class RoundStats:
    """What verified decoding did: per-round acceptance and where the time went."""
    draft_length: int
    rounds: int = 0  # rounds of the batch (one head pass and one causal pass each)
    accepted: list[int] = field(default_factory=list)  # per (row, round) of an active row: drafts accepted
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0  # causal passes of the rounds (and the acceptance rule)
    prefill_seconds: float = 0.0
    lookup_rounds: int = 0  # row-rounds whose drafts were copied (draft_source with "lookup")
    head_passes: int = 0  # rounds that ran the draft head

    def histogram(self) -> list[int]:
        """How many row-rounds accepted 0, 1, ..., k drafts."""
        counts = [0] * (self.draft_length + 1)
        for a in self.accepted:
            counts[a] += 1
        return counts

    @property
    def mean_accepted(self) -> float:
        return sum(self.accepted) / max(1, len(self.accepted))

    def as_dict(self) -> dict:
        return {"draft_length": self.draft_length, "rounds": self.rounds, "accepted_mean": self.mean_accepted,
                "tokens_per_round": self.mean_accepted + 1, "accepted_histogram": self.histogram(),
                "draft_ms_per_round": 1000 * self.draft_seconds / max(1, self.rounds),
                "verify_ms_per_round": 1000 * self.verify_seconds / max(1, self.rounds),
                "prefill_ms": 1000 * self.prefill_seconds, "lookup_share": self.lookup_rounds / max(1, len(self.accepted)),
                "head_passes": self.head_passes}


def _filtered(logits: torch.Tensor, policy: DecodePolicy, banned: list[int]) -> torch.Tensor:
    """The logits plain AR decoding samples from (``sampling.ar``): never-sample ids, top-k, top-p."""
    logits = rules.suppress(logits.float(), banned)
    if policy.top_k:
        logits = rules.top_k_filter(logits, policy.top_k)
    if policy.top_p < 1:
        logits = rules.top_p_filter(logits, policy.top_p)
    return logits


def lookup_draft(history: list[int], k: int, ngrams: tuple[int, ...] = (3, 2)) -> list[int] | None:
    """The ``k`` tokens that followed the most recent earlier occurrence of the last n tokens of
    ``history`` (n = 3, else 2), extended periodically when the match is near the end; None without
    a match."""
    for n in ngrams:
        if len(history) <= n:
            continue
        key = history[-n:]
        last = key[-1]
        for j in range(len(history) - 2, n - 2, -1):  # j: where the earlier occurrence ends
            if history[j] == last and history[j - n + 1:j + 1] == key:
                ext = list(history)
                for i in range(k):
                    ext.append(ext[j + 1 + i])  # reads its own appended tokens past the end: a loop repeats
                return ext[len(history):]
    return None


def speculative_accept(p_logits: torch.Tensor, q_logits: torch.Tensor, drafts: torch.Tensor, temperature: float,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted count (B,), next token (B,)) for drafts (B, k) under target logits (B, k + 1, V) and
    draft logits (B, k, V), both already filtered.  Greedy at temperature 0, else the
    speculative-sampling rule; the next token is the bonus after the accepted run."""
    b, k = drafts.shape
    rows = torch.arange(b, device=drafts.device)
    if temperature <= 0:
        target = p_logits.argmax(-1)  # (B, k + 1)
        accepted = (target[:, :k] == drafts).long().cumprod(-1).sum(-1)
        return accepted, target[rows, accepted]
    p = (p_logits.double() / temperature).softmax(-1)
    q = (q_logits.double() / temperature).softmax(-1)
    p_d = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)
    q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
    u = torch.rand((b, k), generator=generator, dtype=torch.float64, device=drafts.device)
    accepted = (u * q_d < p_d).long().cumprod(-1).sum(-1)
    # At the first rejection the residual norm(max(0, p - q)); after a full run, p_{k+1} itself.
    q_pad = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)
    residual = (p[rows, accepted] - q_pad[rows, accepted]).clamp_min(0)
    empty = residual.sum(-1, keepdim=True) <= 0  # p == q there (a rejection had probability 0)
    residual = torch.where(empty, p[rows, accepted], residual)
    bonus = torch.multinomial(residual / residual.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)
    return accepted, bonus


class VerifiedDecoder:
    """The state of one verified generation of a batch: the causal model's cache, the head's
    context, the anchors and what each row has emitted.  ``generate_verified`` drives it; tests
    inspect its caches."""

    def __init__(self, model, drafter, prompts: list[list[int]], policy: DecodePolicy) -> None:
        policy.validate()
        cfg = model.config
        if not cfg.causal:
            raise GenerationError("verified decoding needs a causal model (the verifier)")
        self.use_head = policy.draft_source != "lookup"
        self.use_lookup = policy.draft_source != "head"
        if drafter is None and self.use_head:
            raise GenerationError("verified decoding needs a draft head; this model has none "
                                  "(draft_source 'lookup' drafts by copying without one)")
        k = policy.draft_length
        if self.use_head and k > drafter.spec.block_size - 1:
            raise GenerationError(f"draft_length {k} exceeds what the draft head was trained for "
                                  f"({drafter.spec.block_size - 1})")
        self.model, self.drafter, self.policy, self.k = model, drafter, policy, k
        self.device = next(model.parameters()).device
        tokens, attention, positions, width = left_pad(prompts, cfg.pad_token_id, 0, cfg.mask_token_id, self.device)
        if width + policy.max_new_tokens + k > cfg.max_position_embeddings:
            raise GenerationError(f"prompt ({width} tokens) plus max_new_tokens ({policy.max_new_tokens}) plus the "
                                  f"draft length ({k}) exceeds the model's context of {cfg.max_position_embeddings} tokens")
        self.generator = None
        if policy.temperature > 0:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(policy.seed if policy.seed is not None else torch.seed())
        self.banned = never_sample_ids(cfg)
        self.stops = stop_tensor(cfg, self.device)
        self.b = tokens.shape[0]
        self.stats = RoundStats(k)
        self.out: list[list[int]] = [[] for _ in range(self.b)]
        self.prompts = [list(p) for p in prompts]
        self.done = torch.zeros(self.b, dtype=torch.bool, device=self.device)
        self.cache = KVCache(cfg.num_hidden_layers)
        start = time.perf_counter()
        outs: list[torch.Tensor] = []
        hidden = model.hidden_states(tokens, positions=positions, attention_mask=attention, cache=self.cache,
                                     layer_outputs=outs)
        self.cache.attention_mask = attention  # the prompt's padding (the cache's owner keeps its mask)
        self.context = drafter.context_kv(drafter.fuse_features(outs), positions) if self.use_head else None
        first = self._choose(model.head(hidden[:, -1]))
        self.next_pos = positions[:, -1] + 1  # the anchor's position
        self.anchor = first
        self._emit([[t] for t in first.tolist()], torch.ones(self.b, dtype=torch.bool, device=self.device))
        self.stats.prefill_seconds = time.perf_counter() - start
        self.forwards = 1  # causal passes

    # -- helpers -------------------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        return rules.sample_tokens(_filtered(logits, self.policy, self.banned), self.policy.temperature, self.generator)

    def _emit(self, new: list[list[int]], active: torch.Tensor) -> None:
        stops = set(self.stops.tolist())
        for row, tokens in enumerate(new):
            if not bool(active[row]):
                continue
            room = self.policy.max_new_tokens - len(self.out[row])
            self.out[row].extend(tokens[:room])
            if len(self.out[row]) >= self.policy.max_new_tokens or (
                    self.policy.stop_at_eos and any(t in stops for t in self.out[row])):
                self.done[row] = True

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    # -- one round -------------------------------------------------------------------------------------
    @torch.no_grad()
    def round(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft, verify, accept and roll back once.  Returns (drafts (B, k), accepted counts (B,);
        -1 for rows that were already done).  With copied drafts only (``draft_source="lookup"``) and no
        row holding a match, the round drafts nothing (k = 0): one plain AR step."""
        model, head, k, b = self.model, self.drafter, self.k, self.b
        active = ~self.done
        t0 = time.perf_counter()
        copied = [lookup_draft(self.prompts[r] + self.out[r], k) if self.use_lookup and bool(active[r]) else None
                  for r in range(b)]
        if not self.use_head and all(c is None for c in copied):
            k = 0  # nothing to copy and no head: a plain AR step (the anchor alone), not k wasted positions
        block_pos = self.next_pos[:, None] + torch.arange(k + 1, device=self.device)
        past = self.cache.length
        ctx_mask = self.cache.attention_mask
        if ctx_mask is None:
            ctx_mask = torch.ones(b, past, dtype=torch.long, device=self.device)
        if self.use_head and any(c is None for c in copied):
            x = head.block_inputs(model.embed_tokens, self.anchor[:, None], k)[:, 0]
            mask = torch.cat([ctx_mask.bool(), torch.ones(b, k + 1, dtype=torch.bool, device=self.device)], dim=1)
            hidden = head(x, block_pos, self.context, mask[:, None, None, :])[:, 1:].contiguous()
            q_logits = _filtered(model.head(hidden), self.policy, self.banned)
            drafts = rules.sample_tokens(q_logits, self.policy.temperature, self.generator)
            self.stats.head_passes += 1
        else:  # no head (or every row copies): a placeholder the copies overwrite; rows without one repeat the anchor
            drafts = self.anchor[:, None].expand(b, k).clone()
            q_logits = torch.full((b, k, model.config.vocab_size), float("-inf"), device=self.device)
            q_logits.scatter_(-1, drafts[..., None], 0.0)
        for r, c in enumerate(copied):
            if c is not None:  # a deterministic proposal: q is one-hot on the copied token
                drafts[r] = torch.tensor(c, device=self.device)
                q_logits[r] = float("-inf")
                q_logits[r].scatter_(-1, drafts[r][:, None], 0.0)
        self.stats.lookup_rounds += sum(c is not None for c in copied)
        t1 = time.perf_counter()
        outs: list[torch.Tensor] = []
        step_in = torch.cat([self.anchor[:, None], drafts], dim=1)
        hidden = model.hidden_states(step_in, positions=block_pos,
                                     attention_mask=torch.ones(b, k + 1, dtype=torch.long, device=self.device),
                                     cache=self.cache, layer_outputs=outs)
        p_logits = _filtered(model.head(hidden), self.policy, self.banned)
        accepted, bonus = speculative_accept(p_logits, q_logits, drafts, self.policy.temperature, self.generator)
        accepted = torch.where(active, accepted, torch.full_like(accepted, -1))
        # Roll back: keep the anchor and the accepted drafts; cut the columns no row kept, mask the rest.
        keep = int(accepted.max()) + 1
        col = torch.arange(k + 1, device=self.device)[None, :]
        kept = (col <= accepted[:, None]).long()
        self.cache.attention_mask = torch.cat([ctx_mask.to(kept.dtype), kept], dim=1)
        self.cache.crop(past + keep)
        if self.use_head:
            head.context_kv(head.fuse_features(outs)[:, :keep], block_pos[:, :keep], self.context)
        t2 = time.perf_counter()
        self.stats.draft_seconds += t1 - t0
        self.stats.verify_seconds += t2 - t1
        self.stats.rounds += 1
        self.forwards += 1
        self.stats.accepted.extend(int(a) for a in accepted[active].tolist())
        new = [drafts[row, :max(a, 0)].tolist() + [int(bonus[row])] for row, a in enumerate(accepted.tolist())]
        self._emit(new, active)
        self.next_pos = torch.where(active, self.next_pos + accepted + 1, self.next_pos)
        self.anchor = torch.where(active, bonus, self.anchor)
        return drafts, accepted

    def canvas(self) -> torch.Tensor:
        """(B, max_new_tokens): what each row has emitted so far, the mask id after it."""
        cfg = self.model.config
        region = torch.full((self.b, self.policy.max_new_tokens), cfg.mask_token_id, dtype=torch.long)
        for row, ids in enumerate(self.out):
            region[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return region


@torch.no_grad()
def generate_verified(model, drafter, prompts: list[list[int]], policy: DecodePolicy,
                      on_step: Callable[[StepEvent], None] | None = None,
                      keep_history: bool = False) -> GenerationResult:
    """Decode ``prompts`` with ``drafter`` drafting and ``model`` (causal) verifying; the result's
    ``verified`` field holds the round statistics (``RoundStats``)."""
    start = time.perf_counter()
    dec = VerifiedDecoder(model, drafter, prompts, policy)
    first_token_seconds = time.perf_counter() - start
    history: list[torch.Tensor] | None = [] if keep_history else None
    mask_id = model.config.mask_token_id

    def report(before: list[int], drafts: torch.Tensor | None) -> None:
        if on_step is None and history is None:
            return
        region = dec.canvas()
        if history is not None:
            history.append(region)
        if on_step is not None:
            committed = torch.zeros_like(region, dtype=torch.bool)
            draft = torch.full_like(region, mask_id)
            for row, n in enumerate(before):
                committed[row, n:len(dec.out[row])] = True
                if drafts is not None:  # this round's proposal, where it was proposed
                    d = drafts[row, :max(0, region.shape[1] - n)]
                    draft[row, n:n + d.shape[0]] = d
            on_step(StepEvent(dec.forwards, 0, region, committed, mask_id, draft=draft if drafts is not None else None))

    report([0] * dec.b, None)
    while not dec.finished:
        before = [len(o) for o in dec.out]
        drafts, _ = dec.round()
        report(before, drafts.cpu())
    seconds = time.perf_counter() - start
    ids, finished = [], []
    for row in dec.out:
        kept, fin = cut_at_eos(row, dec.stops.tolist())
        ids.append(kept)
        finished.append(fin)
    return GenerationResult(ids=ids, nfe=dec.forwards, generated_tokens=sum(map(len, ids)),
                            seconds=seconds, finished=finished, history=history,
                            first_token_seconds=first_token_seconds, row_forwards=dec.forwards * dec.b,
                            verified=dec.stats)
