"""Correction while refining: which committed tokens to reopen or replace.  Pure tensor functions.

Two schemes (``DecodePolicy.correct``), both only ever touch positions the decoder itself committed in
the current block; prompt, suffix and template tokens are never candidates.

* **Remasking** (ReMDM's idea, in the equal-pass form of running-confidence remasking): at each step
  the committed tokens of the block are re-scored on the new forward pass (the probability the model
  now gives them).  If a committed token is less sure than a fresh proposal that would otherwise stay
  masked, the two swap: the weak token goes back to mask and the proposal is committed in its place.
  At most a share of the block's committed tokens may be reopened per step, and the share decays
  linearly to zero at the block's last step (the schedule).  The number of committed tokens per step
  is the commit rule's, so the forward passes are exactly those of decoding without correction.
* **Token-to-token editing** (LLaDA 2.1): once a block is full, extra passes (at most ``edit_passes``)
  replace every committed token whose current best token differs with probability above
  ``edit_threshold``; it stops at the first pass that changes nothing.
"""
from __future__ import annotations

import math

import torch

CORRECTIONS = ("none", "remask", "edit", "both")


def reopen_budget(share: float, committed: int, step: int, steps: int) -> int:
    """How many committed tokens step ``step`` (0-based) of ``steps`` may reopen: ``share`` of them at
    the first step, decaying linearly to none at the last."""
    if steps <= 1 or step >= steps - 1 or committed == 0:
        return 0
    return int(math.floor(share * (1 - step / (steps - 1)) * committed))


def swap_weakest(new_scores: torch.Tensor, chosen: torch.Tensor, old_scores: torch.Tensor,
                 budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap weak committed tokens for better proposals.

    new_scores: (N,) confidences of the proposals for masked positions; chosen: (N,) bool, those the
    commit rule takes; old_scores: (M,) current confidences of committed tokens; ``budget``: the most
    that may be reopened.  Returns (chosen', reopen): chosen' adds one proposal per reopened token, so
    the committed count is unchanged; reopen (M,) bool marks the tokens that go back to mask.
    """
    reopen = torch.zeros(old_scores.shape, dtype=torch.bool)
    chosen = chosen.clone()
    if budget <= 0 or old_scores.numel() == 0:
        return chosen, reopen
    spare = (~chosen).nonzero().squeeze(1)
    if spare.numel() == 0:
        return chosen, reopen
    spare = spare[new_scores[spare].argsort(descending=True, stable=True)]
    weakest = old_scores.argsort(stable=True)
    for k in range(min(budget, spare.numel(), weakest.numel())):
        if not bool(new_scores[spare[k]] > old_scores[weakest[k]]):
            break
        chosen[spare[k]] = True
        reopen[weakest[k]] = True
    return chosen, reopen


def edits(current: torch.Tensor, best: torch.Tensor, best_prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) bool: committed tokens ``current`` to replace by ``best`` (the model's top token now, with
    probability ``best_prob`` above ``threshold``)."""
    return (best != current) & (best_prob > threshold)


__all__ = ["CORRECTIONS", "reopen_budget", "swap_weakest", "edits"]
