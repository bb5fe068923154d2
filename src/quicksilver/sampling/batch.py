"""Left-padding of prompts of unequal length into one batch, with positions that start at 0 at each
row's first real token (so a padded row sees the same rotary positions as it would alone)."""
from __future__ import annotations

import torch

from .types import GenerationError


def left_pad(prompts: list[list[int]], pad_id: int, extra: int, fill_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Canvas (B, P + extra) = [pads | prompt | fill * extra], its attention mask, positions, and P."""
    if not prompts:
        raise GenerationError("no prompt given")
    if any(len(p) == 0 for p in prompts):
        raise GenerationError("the prompt is empty")
    width = max(len(p) for p in prompts)
    b = len(prompts)
    canvas = torch.full((b, width + extra), fill_id, dtype=torch.long)
    attention = torch.ones((b, width + extra), dtype=torch.long)
    for row, ids in enumerate(prompts):
        pad = width - len(ids)
        canvas[row, :pad] = pad_id
        attention[row, :pad] = 0
        canvas[row, pad:width] = torch.tensor(ids, dtype=torch.long)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return canvas.to(device), attention.to(device), positions.to(device), width
