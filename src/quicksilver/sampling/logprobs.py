"""Exact per-token log-probabilities of a given token sequence under an autoregressive model: what the
server's ``echo``/``logprobs`` report (``api.LM.score_ids``).

Scoring, not decoding, but like the decoders a function over a loaded model and ids, so it sits with
them, below the Python API; the evaluation's bits per byte (``eval.likelihood``) is the same
teacher-forced pass summed over windows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenScores:
    """Per-position scores of a token sequence under an AR model: for every token after the first,
    its log-probability given the tokens before it, and the ``top`` most likely tokens there."""
    token_logprobs: list[float]  # len(ids) - 1 entries: token i + 1 given tokens 0..i
    top_ids: list[list[int]]  # per entry, the top token ids, most likely first
    top_logprobs: list[list[float]]


@torch.no_grad()
def ar_token_scores(model, ids: list[int], top: int = 0) -> TokenScores:
    """Exact per-token log-probabilities of ``ids`` under a causal model (one forward pass, the same
    teacher-forced scoring as ``eval.likelihood.ar_nll``): what a server's ``logprobs``/``echo`` report."""
    if not model.config.causal:
        raise ValueError("per-token log-probabilities need an autoregressive (causal) model")
    if len(ids) < 2:
        return TokenScores([], [], [])
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    logprobs = torch.log_softmax(model(x[:, :-1]).float()[0], dim=-1)  # (L-1, V)
    chosen = logprobs.gather(1, x[0, 1:, None])[:, 0]
    if top > 0:
        values, indices = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
        top_ids, top_lp = indices.tolist(), values.tolist()
    else:
        top_ids, top_lp = [[] for _ in range(len(ids) - 1)], [[] for _ in range(len(ids) - 1)]
    return TokenScores(chosen.tolist(), top_ids, top_lp)


__all__ = ["TokenScores", "ar_token_scores"]
