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


def commit_top(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, choose the ``counts[row]`` highest-scoring positions among ``candidates``.

    scores: (B, N) float; candidates: (B, N) bool; counts: (B,) int.  Returns a (B, N) bool mask.
    """
    scores = scores.masked_fill(~candidates, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (rank < counts[:, None]) & candidates
