"""``echo`` and ``logprobs`` of ``/v1/completions``: the legacy OpenAI ``logprobs`` object.

``{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...],
"text_offset": [...]}`` over the tokens of the returned text: the prompt's when ``echo`` is set
(its first token has no context, so its entries are null), then the completion's.  The numbers come
from the backend's exact scoring (``score_ids``: one teacher-forced forward pass of an
autoregressive model, ``eval.likelihood.ar_token_scores``), so they are the model's log-probabilities
of exactly these tokens, untempered.  ``top_logprobs`` holds the ``k`` most likely tokens at each
position plus the chosen one (as vLLM does), so a client can tell whether the chosen token was the
greedy one.  A diffusion model has no exact per-token likelihood: the route answers 400 before
any of this runs.

The completion's tokens are the ids the model generated, with end of text when it ended the
choice; when a stop sequence cut the text, the kept text is tokenized again.
"""
from __future__ import annotations

from collections.abc import Sequence


def completion_ids(backend, finished) -> list[int]:
    """The token ids of a finished choice, as scored and reported."""
    if finished is None:
        return []
    if getattr(finished, "cut", False) or (not getattr(finished, "ids", None) and finished.text):
        return backend.encode(finished.text)
    ids = list(finished.ids)
    eos = getattr(backend, "eos_id", None)
    if getattr(finished, "eos", False) and eos is not None:
        ids.append(int(eos))
    return ids


def _offsets(backend, ids: Sequence[int], start: int) -> list[int]:
    """Character offset of each token in the decoded text, starting at ``start``."""
    out, previous = [], ""
    for i in range(len(ids)):
        out.append(start + len(previous))
        previous = backend.decode(ids[:i + 1])
    return out


def logprobs_object(backend, prompt: list[int], completion: list[int], top: int, echo: bool,
                    text_start: int = 0) -> dict:
    """The ``logprobs`` object of one choice.  ``prompt`` is scored as context; its own entries are
    reported only with ``echo``.  ``text_start`` is where the completion's text begins in the
    returned text (the echoed prompt's length)."""
    ids = list(prompt) + list(completion)
    scores = backend.score_ids(ids, top)  # entry i scores ids[i + 1]
    first = 0 if echo else len(prompt)
    tokens, token_lp, top_lp = [], [], []
    for i in range(first, len(ids)):
        tokens.append(backend.token_text(ids[i]))
        if i == 0:
            token_lp.append(None)
            top_lp.append(None)
            continue
        chosen = scores.token_logprobs[i - 1]
        token_lp.append(chosen)
        alternatives = {backend.token_text(t): lp for t, lp in zip(scores.top_ids[i - 1], scores.top_logprobs[i - 1])}
        alternatives.setdefault(backend.token_text(ids[i]), chosen)
        top_lp.append(alternatives)
    offsets = (_offsets(backend, prompt, 0) if echo else []) + _offsets(backend, completion, text_start)
    return {"tokens": tokens, "token_logprobs": token_lp, "top_logprobs": top_lp, "text_offset": offsets}


__all__ = ["completion_ids", "logprobs_object"]
