"""What every system under test returns: a ``Completion`` per prompt with the decoder's own accounting,
``Usage`` summed over calls, and the cut of a text at stop sequences.

Local models (``systems``) and endpoints (``endpoint``) both build on these, so neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..sampling.stops import cut_at_stops  # the one cut at stop sequences (the engine's too)


@dataclass
class Completion:
    text: str
    tokens: int = 0  # tokens the decoder generated for this row (before any stop-sequence cut)
    forwards: float = 0.0  # forward passes this row took part in


@dataclass
class Usage:
    """Decoder accounting summed over calls: tokens per forward = tokens / row_forwards."""
    tokens: int = 0
    row_forwards: float = 0.0
    calls: int = 0
    seconds: float = 0.0

    def add(self, completions: list[Completion], seconds: float) -> None:
        self.tokens += sum(c.tokens for c in completions)
        self.row_forwards += sum(c.forwards for c in completions)
        self.calls += 1
        self.seconds += seconds

    @property
    def tokens_per_forward(self) -> float | None:
        return self.tokens / self.row_forwards if self.row_forwards else None

    def to_dict(self) -> dict:
        tpf = self.tokens_per_forward
        return {"generated_tokens": self.tokens, "row_forwards": self.row_forwards,
                "tokens_per_forward": None if tpf is None else round(tpf, 4), "seconds": round(self.seconds, 2)}

