"""Where a generation stops, in one place for the samplers, the engine and the evaluation.

Token level: the *stop ids* (end of text, and end of turn for chat models: ``ModelConfig.stop_ids``)
end a row or a span; ``never_sample_ids`` are the ids no sampler may produce (mask, padding, the
fill-in-the-middle markers).

Text level: *stop sequences* (the OpenAI ``stop`` field, HumanEval's stops) cut the text.  Blocks are
decoded left to right and committed tokens never change, so the text of a row's committed prefix
(``final_prefix``) is final; ``settled_at`` says when a stop sequence in it already decides the cut,
so that decoding can end early with exactly the text a full decode cut at the stops would give.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence

import torch


def never_sample_ids(cfg) -> list[int]:
    ids = {cfg.mask_token_id, cfg.pad_token_id, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id}
    ids.difference_update(cfg.stop_ids)  # pad may equal end of text
    return sorted(i for i in ids if 0 <= i < cfg.vocab_size)


def stop_tensor(cfg, device) -> torch.Tensor:
    """The ids that end a row (end of text and end of turn) as a tensor for ``torch.isin``."""
    return torch.tensor(cfg.stop_ids, dtype=torch.long, device=device)


def cut_at_eos(row: list[int], eos_id: int | Collection[int]) -> tuple[list[int], bool]:
    """The row up to its first stop id (end of text, or any of several: end of turn too) and whether
    it had one."""
    stops = {eos_id} if isinstance(eos_id, int) else set(eos_id)
    for i, token in enumerate(row):
        if token in stops:
            return row[:i], True
    return row, False


def final_prefix(region: Sequence[int], mask_id: int, stop_ids: Collection[int]) -> tuple[list[int], bool]:
    """The committed ids of a generated region before its first mask, cut at the first stop id, and
    whether a stop id ended it (then nothing after it can change the text)."""
    region = list(region)
    prefix = region[:region.index(mask_id)] if mask_id in region else region
    return cut_at_eos(prefix, stop_ids)


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop sequence starts in ``text`` (None when there is none)."""
    found = [i for i in (text.find(s) for s in stops) if i != -1]
    return min(found) if found else None


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest stop sequence."""
    cut = find_stop(text, stops)
    return text if cut is None else text[:cut]


def settled_at(text: str, stops: Sequence[str]) -> int | None:
    """Where a final prefix's text is cut for good: the earliest stop sequence, when no stop sequence
    could still start before it (it starts at least the longest stop's length before the end, so any
    other stop starting earlier would already be whole in ``text``).  None while undecided."""
    cut = find_stop(text, stops)
    longest = max((len(s) for s in stops), default=0)
    return cut if cut is not None and cut <= len(text) - longest else None


__all__ = ["never_sample_ids", "stop_tensor", "cut_at_eos", "final_prefix", "find_stop", "cut_at_stops",
           "settled_at"]
