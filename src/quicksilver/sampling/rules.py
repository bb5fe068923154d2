"""Pure functions used by the samplers: logit filters, Gumbel-max sampling, confidence scores and
commit schedules.  No model calls and no state: each takes tensors and returns tensors."""
from __future__ import annotations

import torch


def suppress(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """Set the logits of tokens that must never be produced (mask, padding) to -inf."""
    if not token_ids:
        return logits
    logits = logits.clone()
    logits[..., token_ids] = float("-inf")
    return logits


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability sums to at least p (nucleus sampling)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= p  # the top token is always kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy at temperature 0; otherwise Gumbel-max, i.e. a draw from softmax(logits / T).

    The noise is drawn in float64: low-precision Gumbel noise is known to distort samples
    (LLaDA's generate.py does the same).
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel).argmax(dim=-1)


def confidence(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Probability of the chosen token under the untempered softmax (LLaDA's low-confidence score)."""
    probs = logits.float().softmax(dim=-1)
    return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def transfer_counts(masked: int, steps: int) -> list[int]:
    """How many tokens to commit at each of ``steps`` steps so that ``masked`` are all committed:
    equal shares (the linear schedule), the first ``masked % steps`` steps one more."""
    steps = max(1, min(steps, masked)) if masked else 1
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def dream_transfer_counts(masked: torch.Tensor, step: int, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """Dream's per-step commit count for rows with ``masked`` masked positions at step ``step`` of
    ``steps``: floor(masked * (1 - s/t)) on the grid t_i = linspace(1, eps, steps + 1), all on the last step.

    (Dream's own sampler uses the batch's average masked count for every row; per row, a padded batch
    decodes each row as it would alone.)
    """
    if step >= steps - 1:
        return masked.long()
    grid = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    t, s = float(grid[step]), float(grid[step + 1])
    return (masked.double() * (1 - s / t)).floor().long()


def commit_top(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, choose the ``counts[row]`` highest-scoring positions among ``candidates``.

    scores: (B, N) float; candidates: (B, N) bool; counts: (B,) int.  Returns a (B, N) bool mask.
    """
    scores = scores.masked_fill(~candidates, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (rank < counts[:, None]) & candidates


# -- scores and parallel commit rules (Fast-dLLM and relatives) ------------------------------------
def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) over the last axis (positions with -inf logits count 0)."""
    logp = logits.float().log_softmax(dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)


def score_positions(logits: torch.Tensor, tokens: torch.Tensor, kind: str = "probability") -> torch.Tensor:
    """How sure the model is of each position, higher = surer.

    "probability": p(chosen token) (LLaDA's low-confidence score); "margin": top-1 minus top-2
    probability; "entropy": minus the entropy of the position's distribution.
    """
    if kind == "probability":
        return confidence(logits, tokens)
    if kind == "margin":
        top2 = logits.float().softmax(dim=-1).topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if kind == "entropy":
        return -entropy(logits)
    raise ValueError(f"unknown score '{kind}'")


def _rank(scores: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates sorted by score, best first: (sorted scores with -inf for non-candidates, order, rank)."""
    scores = scores.masked_fill(~candidates, float("-inf"))
    sorted_scores, order = scores.sort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return sorted_scores, order, rank


def _at_least_one(counts: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Every row with a candidate commits at least one position; rows without commit none."""
    has = candidates.any(dim=-1)
    return torch.where(has, counts.clamp(min=1), torch.zeros_like(counts))


def commit_threshold(scores: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """The best candidate plus every candidate whose score is strictly above ``threshold``.

    Strictly: with probabilities, ``threshold=1.0`` admits nothing beyond the best, so it reproduces
    the one-token-per-step order of the reference.
    """
    above = (scores > threshold) & candidates
    counts = _at_least_one(above.sum(-1), candidates)
    return commit_top(scores, candidates, counts)


def commit_ordered(scores: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """Left to right: the leftmost candidate, then each following candidate while every candidate up to
    it scores strictly above ``threshold`` (positions already committed do not break the run).

    For a block model with token shift the leftmost masked position is predicted from clean text only,
    exactly as the AR twin would predict it, so this rule keeps the twin's order and commits more than
    one token only where the model is sure of a whole run (semi-autoregressive acceptance).
    """
    ok = (scores > threshold) | ~candidates
    first = torch.where(candidates.any(-1), candidates.float().argmax(-1), torch.full_like(candidates[:, 0], -1,
                                                                                           dtype=torch.long))
    rows = torch.nonzero(first >= 0).flatten()
    ok[rows, first[rows]] = True
    return ok.long().cumprod(dim=-1).bool() & candidates


def commit_factor(probs: torch.Tensor, candidates: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule on confidences ``probs`` (in [0, 1]): with candidates sorted by
    confidence, c_1 >= c_2 >= ..., commit the longest prefix n such that (k + 1)(1 - c_k) <= factor
    for every rank k <= n; rank 1 is always committed."""
    sorted_p, _, _ = _rank(probs, candidates)
    k = torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=torch.float32)
    ok = ((k + 1) * (1 - sorted_p.float()) <= factor) & torch.isfinite(sorted_p)
    run = ok.long().cumprod(dim=-1).sum(-1)  # length of the leading run of accepted ranks
    counts = _at_least_one(run, candidates)
    return commit_top(probs, candidates, counts)


def commit_entropy_bound(entropies: torch.Tensor, candidates: torch.Tensor, bound: float) -> torch.Tensor:
    """Commit the lowest-entropy candidates while their summed entropy stays <= ``bound`` (at least one)."""
    neg = -entropies.float()
    sorted_neg, _, _ = _rank(neg, candidates)
    cumulative = (-sorted_neg).masked_fill(~torch.isfinite(sorted_neg), float("inf")).cumsum(-1)
    counts = _at_least_one((cumulative <= bound).sum(-1), candidates)
    return commit_top(neg, candidates, counts)
