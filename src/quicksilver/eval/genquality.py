"""Quality of free generations without a test suite: generative perplexity under a scoring model
(the AR twin) and the unigram entropy of each completion (MDLM/ReMDM's pair: a low perplexity from
repeating one token shows up as a low entropy).

* ``generative_perplexity``: exp of the scorer's mean NLL per completion token, each completion
  scored after its own prompt (exact, one causal pass per completion).
* ``unigram_entropy``: per completion, the entropy in nats of its token frequency distribution;
  averaged over completions.
"""
from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F


@torch.no_grad()
def completion_nll(scorer, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> tuple[float, int]:
    """Summed NLL (nats) of every completion's tokens given its prompt under a causal ``scorer``, and
    how many tokens were scored."""
    if not scorer.config.causal:
        raise ValueError("the scoring model must be causal (the AR twin)")
    device = next(scorer.parameters()).device
    limit = scorer.config.max_position_embeddings
    total, count = 0.0, 0
    for prompt, completion in zip(prompt_ids, completion_ids):
        if not completion:
            continue
        ids = (prompt + completion)[-limit:]
        n = min(len(completion), len(ids) - 1)
        x = torch.tensor([ids], device=device)
        logits = scorer(x[:, :-1]).float()[0, -n:]
        total += float(F.cross_entropy(logits, x[0, -n:], reduction="sum"))
        count += n
    return total, count


def generative_perplexity(scorer, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> float:
    total, count = completion_nll(scorer, prompt_ids, completion_ids)
    return math.exp(total / count) if count else float("nan")


def unigram_entropy(completion_ids: list[list[int]]) -> float:
    """Mean over non-empty completions of the entropy (nats) of their token frequencies."""
    values = []
    for ids in completion_ids:
        if not ids:
            continue
        counts = Counter(ids)
        n = len(ids)
        values.append(-sum(c / n * math.log(c / n) for c in counts.values()))
    return sum(values) / len(values) if values else float("nan")


__all__ = ["completion_nll", "generative_perplexity", "unigram_entropy"]
