"""Native diffusion infilling: decode masked positions between a prefix and a suffix.

The canvas is [prefix | mask * budget | suffix]; the hole is decoded in blocks of
``policy.block_length`` from left to right, and within a block each step runs the whole canvas,
proposes tokens for its masked positions and commits some of them by the policy's commit rule (the
linear schedule of ``policy.steps`` for ``fixed``; the threshold, factor or entropy-bound rule
otherwise), exactly as the sampler does for a completion.  The evaluation (``eval.infill``) and the
server (``suffix`` on ``/v1/completions``) share this decoder.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from . import rules
from .types import DecodePolicy, GenerationError, StepEvent


def _banned(cfg) -> list[int]:
    ids = {cfg.mask_token_id, cfg.pad_token_id, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id}
    ids.difference_update(getattr(cfg, "stop_ids", [cfg.eos_token_id]))  # end of text is allowed: it ends the span
    return sorted(i for i in ids if 0 <= i < cfg.vocab_size)


def _choose(policy: DecodePolicy, logits: torch.Tensor, proposal: torch.Tensor, candidates: torch.Tensor,
            count: torch.Tensor | None) -> torch.Tensor:
    """Which candidate positions (B, T) to commit; ``logits``/``proposal`` cover the candidates in order."""
    def spread(values: torch.Tensor, fill: float) -> torch.Tensor:
        full = torch.full(candidates.shape, fill, dtype=values.dtype)
        full[candidates] = values
        return full

    if policy.score_tempered and policy.temperature > 0:
        logits = logits / policy.temperature

    if policy.commit == "entropy":
        return rules.commit_entropy_bound(spread(rules.entropy(logits), float("inf")), candidates, policy.entropy_bound)
    kind = "probability" if policy.commit == "factor" and policy.score == "entropy" else policy.score
    scores = spread(rules.score_positions(logits, proposal, kind), float("-inf"))
    if policy.commit == "fixed":
        return rules.commit_top(scores, candidates, count)
    if policy.commit == "threshold":
        return rules.commit_threshold(scores, candidates, policy.threshold)
    return rules.commit_factor(scores, candidates, policy.factor)


@torch.no_grad()
def diffusion_infill(model, prefixes: list[list[int]], suffixes: list[list[int]], budget: int,
                     policy: DecodePolicy, on_step: Callable[[StepEvent], None] | None = None
                     ) -> tuple[list[list[int]], list[int]]:
    """Fill ``budget`` masked positions between each prefix and suffix; returns the fills (cut at the
    first end of text) and the forward passes each row took part in.

    ``on_step`` sees the hole of every row after each forward pass (``StepEvent.canvas`` is (B, budget));
    it may raise to stop decoding.
    """
    cfg = model.config
    if budget <= 0:
        raise GenerationError("the infill budget (max_tokens) must be a positive integer")
    if any(len(p) + budget + len(s) > cfg.max_position_embeddings for p, s in zip(prefixes, suffixes)):
        raise GenerationError(f"prefix, suffix and {budget} new tokens exceed the model's context of "
                              f"{cfg.max_position_embeddings} tokens")
    device = next(model.parameters()).device
    b = len(prefixes)
    width = max(len(p) + budget + len(s) for p, s in zip(prefixes, suffixes))
    canvas = torch.full((b, width), cfg.pad_token_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    starts = []
    for row, (p, s) in enumerate(zip(prefixes, suffixes)):
        ids = list(p) + [cfg.mask_token_id] * budget + list(s)
        canvas[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        starts.append(len(p))
    positions = torch.arange(width).expand(b, width)
    start_t = torch.tensor(starts)[:, None]
    col = torch.arange(width)[None, :]
    hole = (col >= start_t) & (col < start_t + budget)
    padded = not bool(attention.all())
    generator = None
    if policy.temperature > 0:
        generator = torch.Generator().manual_seed(policy.seed if policy.seed is not None else 0)
    banned = _banned(cfg)
    block = max(1, min(policy.block_length, budget))
    total_steps = budget if policy.steps is None else policy.steps
    forwards = torch.zeros(b, dtype=torch.long)
    nfe = 0
    for index, lo in enumerate(range(0, budget, block)):
        size = min(block, budget - lo)
        region = (col >= start_t + lo) & (col < start_t + lo + size)
        n_steps = max(1, min(size, round(total_steps * size / budget)))
        schedule = rules.transfer_counts(size, n_steps)
        step = 0
        while True:
            candidates = region & (canvas == cfg.mask_token_id)
            active = candidates.any(1)
            if not bool(active.any()):
                break
            rows = active.nonzero().squeeze(1)
            x = canvas[rows].to(device)
            hidden = model.hidden_states(x, positions=positions[rows].to(device),
                                         attention_mask=attention[rows].to(device) if padded else None)
            if getattr(cfg, "logits_shift", False):
                # Dream-style: the prediction for position j is the output at j - 1 (position 0, never
                # a hole after a non-empty prefix, keeps its own).
                hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
            forwards[rows] += 1
            nfe += 1
            cand = candidates[rows]
            logits = rules.suppress(model.head(hidden[cand.to(device)]).float().cpu(), banned)
            if policy.top_k:
                logits = rules.top_k_filter(logits, policy.top_k)
            if policy.top_p < 1:
                logits = rules.top_p_filter(logits, policy.top_p)
            proposal = rules.sample_tokens(logits, policy.temperature, generator)
            count = None
            if policy.commit == "fixed" and policy.schedule == "dream":
                count = rules.dream_transfer_counts(cand.sum(1), step, n_steps)
            elif policy.commit == "fixed":
                count = torch.full((rows.numel(),), schedule[min(step, len(schedule) - 1)], dtype=torch.long)
            chosen = _choose(policy, logits, proposal, cand, count)
            proposed = canvas[rows].clone()
            proposed[cand] = proposal
            canvas[rows] = torch.where(chosen, proposed, canvas[rows])
            step += 1
            if on_step is not None:
                committed = torch.zeros_like(canvas, dtype=torch.bool)
                committed[rows] = chosen
                on_step(StepEvent(nfe, index, canvas[hole].view(b, budget).clone(),
                                  committed[hole].view(b, budget), cfg.mask_token_id))
    fills = []
    stops = getattr(cfg, "stop_ids", [cfg.eos_token_id])
    for row, start in enumerate(starts):
        ids = canvas[row, start:start + budget].tolist()
        cut = [i for i, t in enumerate(ids) if t in stops]
        fills.append(ids[:cut[0]] if cut else ids)
    return fills, forwards.tolist()


__all__ = ["diffusion_infill"]
