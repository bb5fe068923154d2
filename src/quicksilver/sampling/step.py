"""The maths of one block-decoding step, from the block's logits to the positions it commits.

Pure functions over tensors and a ``DecodePolicy``: no model, no rows, no caches (``forward.py`` runs
the model, ``rows.py`` keeps the rows, ``diffusion.BlockDecoder`` ties them together).
"""
from __future__ import annotations

import torch

from . import rules
from .types import DecodePolicy


def filter_logits(policy: DecodePolicy, logits: torch.Tensor, banned: list[int],
                  permit: torch.Tensor | None = None) -> torch.Tensor:
    """The logits a proposal is drawn from: never-sample ids and, where ``permit`` (M, V) bool is given,
    the tokens a span does not allow at -inf; then top-k and top-p."""
    logits = rules.suppress(logits, banned)
    if permit is not None:
        logits = logits.masked_fill(~permit, float("-inf"))
    if policy.top_k:
        logits = rules.top_k_filter(logits, policy.top_k)
    if policy.top_p < 1:
        logits = rules.top_p_filter(logits, policy.top_p)
    return logits


def fixed_counts(policy: DecodePolicy, masked: torch.Tensor, step: int, block_steps: list[int],
                 counts: torch.Tensor | None) -> torch.Tensor | None:
    """The fixed rule's number of positions per row for this step (None for the other rules):
    Dream's time grid from the masked count now, or the linear schedule decided at the block's start."""
    if policy.commit != "fixed":
        return None
    if policy.schedule == "dream":
        return torch.cat([rules.dream_transfer_counts(masked[i:i + 1].sum(1), step, n)
                          for i, n in enumerate(block_steps)]).to(masked.device)
    return counts[:, min(step, counts.shape[1] - 1)]


def choose(policy: DecodePolicy, logits: torch.Tensor, proposal: torch.Tensor, masked: torch.Tensor,
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
        return rules.commit_entropy_bound(spread(rules.entropy(logits), float("inf")), masked, policy.entropy_bound)
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
    if policy.commit == "ordered":
        return rules.commit_ordered(scores, masked, policy.threshold)
    return rules.commit_factor(scores, masked, policy.factor)


def block_plan(policy: DecodePolicy, block_sizes: list[int]) -> list[int]:
    """The fixed rule's forward passes for each block: ``steps`` shared out over the blocks in
    proportion to their masked positions (one per position when ``steps`` is None)."""
    total = sum(block_sizes) or 1
    steps = total if policy.steps is None else policy.steps
    return [max(1, min(size, round(steps * size / total))) for size in block_sizes]


__all__ = ["filter_logits", "fixed_counts", "choose", "block_plan"]
