"""A LLaDA-style reference sampler, written as plainly as possible: the oracle the fast decoder is
checked against (tests/test_canvas.py).

One canvas row, no cache, greedy, the fixed rule (low-confidence remasking with the linear schedule):
the masked positions are decoded in blocks of ``block_length`` columns from the first masked column;
each block gets ``steps`` shared out in proportion to its masked positions; each step runs the whole
canvas, proposes the most likely token at every masked position of the block and commits the
``count`` most confident of them.  Every masked position is decoded (no early stop).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def reference_fill(model, tokens: list[int], masked: list[bool], block_length: int, steps: int | None = None,
                   banned: tuple[int, ...] = ()) -> list[int]:
    """The canvas ``tokens`` with its ``masked`` positions filled; returns the whole canvas."""
    mask_id = model.config.mask_token_id
    x = torch.tensor([tokens])
    columns = [i for i, m in enumerate(masked) if m]
    first, end = columns[0], columns[-1] + 1
    blocks = [(lo, min(lo + block_length, end)) for lo in range(first, end, block_length)]
    sizes = [sum(lo <= c < hi for c in columns) for lo, hi in blocks]
    total = sum(sizes)
    steps = total if steps is None else steps
    for (lo, hi), size in zip(blocks, sizes):
        if size == 0:
            continue
        n = max(1, min(size, round(steps * size / total)))
        per_step = [size // n + (1 if i < size % n else 0) for i in range(n)]  # the linear schedule
        for count in per_step:
            logits = model(x)[0, lo:hi].float()
            logits[:, list(banned)] = float("-inf")
            confidence, proposal = logits.softmax(-1).max(-1)
            open_ = x[0, lo:hi] == mask_id
            confidence = torch.where(open_, confidence, torch.tensor(float("-inf")))
            order = torch.sort(confidence, descending=True, stable=True).indices
            chosen = [int(i) for i in order[:count] if open_[i]]
            for i in chosen:
                x[0, lo + i] = proposal[i]
    return x[0].tolist()
