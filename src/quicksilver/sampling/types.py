"""What a caller asks of a decoder (``DecodePolicy``) and what it gets back."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class GenerationError(ValueError):
    """A generation request that cannot be served as asked (one clear sentence)."""


@dataclass
class DecodePolicy:
    max_new_tokens: int = 128
    block_length: int = 32  # diffusion: positions decoded together, blocks run left to right
    steps: int | None = None  # diffusion: total forward passes over all blocks; None = one token per step
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True

    def validate(self) -> None:
        if self.max_new_tokens <= 0:
            raise GenerationError("max_new_tokens must be a positive integer")
        if self.block_length <= 0:
            raise GenerationError("block_length must be a positive integer")
        if self.steps is not None and self.steps <= 0:
            raise GenerationError("steps must be a positive integer")
        if self.temperature < 0:
            raise GenerationError("temperature must be zero or positive")
        if not 0 < self.top_p <= 1:
            raise GenerationError("top_p must be in (0, 1]")


@dataclass
class StepEvent:
    """Emitted after every forward pass: the generated region of the canvas of each row."""
    step: int  # forward passes so far (NFE)
    block: int
    canvas: torch.Tensor  # (B, gen_len) token ids, mask id at positions not yet committed
    committed: torch.Tensor  # (B, gen_len) bool: positions committed by this step
    mask_id: int


@dataclass
class GenerationResult:
    ids: list[list[int]]  # per row: generated ids up to (not including) end of text
    texts: list[str]
    nfe: int  # forward passes of the model (prefill included for AR)
    generated_tokens: int  # sum over rows of len(ids[row])
    seconds: float
    finished: list[bool] = field(default_factory=list)  # per row: ended with end of text
    history: list[torch.Tensor] | None = None

    @property
    def tokens_per_forward(self) -> float:
        rows = max(1, len(self.ids))
        return self.generated_tokens / rows / max(1, self.nfe)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.seconds, 1e-9)

    @property
    def text(self) -> str:
        return self.texts[0]

    def stats_line(self) -> str:
        return (f"{self.generated_tokens} tokens · {self.nfe} forward passes · "
                f"{self.tokens_per_forward:.2f} tokens/forward · {self.seconds:.2f} s · "
                f"{self.tokens_per_second:.1f} tokens/s")
