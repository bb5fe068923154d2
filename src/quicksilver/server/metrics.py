"""``/metrics`` in the Prometheus text format (version 0.0.4), written out from the engine's counters
and the server's latency histogram (which the engine feeds through its ``on_close`` callback)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..engine import Engine

PREFIX = "quicksilver_"


def _line(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    out = [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}"]
    for labels, value in samples:
        out.append(f"{PREFIX}{name}{labels} {value:g}" if isinstance(value, float) else f"{PREFIX}{name}{labels} {value}")
    return out


@dataclass
class Histogram:
    """Cumulative-bucket latency histogram (Prometheus semantics), written by the engine's worker only."""
    bounds: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def record(self, outcome: str, seconds: float) -> None:
        """The engine's ``on_close``: completed requests (and those that ran out of time) count."""
        self.observe(seconds)


def render_metrics(engine: Engine | None, latency: Histogram | None = None) -> str:
    lines = _line("model_loaded", "gauge", "1 once the model is loaded and the engine runs.",
                  [("", 1 if engine is not None and engine.alive else 0)])
    if engine is None:
        return "\n".join(lines) + "\n"
    lines += _line("requests_active", "gauge", "Requests being decoded.", [("", engine.active)])
    lines += _line("requests_queued", "gauge", "Requests waiting for a slot.", [("", engine.queued)])
    outcomes = dict(engine.requests_total)
    for status in ("ok", "cancelled", "timeout", "error"):
        outcomes.setdefault(status, 0)
    lines += _line("requests_total", "counter", "Requests that ended, by outcome.",
                   [(f'{{status="{k}"}}', v) for k, v in sorted(outcomes.items())])
    lines += _line("generated_tokens_total", "counter", "Tokens generated for finished requests.",
                   [("", engine.generated_tokens_total)])
    lines += _line("forward_passes_total", "counter", "Forward passes of the model (one serves every row of a batch).",
                   [("", engine.forward_passes_total)])
    h = latency or Histogram()
    counts = h.counts or [0] * len(h.bounds)
    samples = [(f'_bucket{{le="{b:g}"}}', c) for b, c in zip(h.bounds, counts)]
    samples += [('_bucket{le="+Inf"}', h.count), ("_sum", float(h.total)), ("_count", h.count)]
    lines += _line("request_seconds", "histogram", "Seconds from submission to the last token, finished requests.",
                   samples)
    return "\n".join(lines) + "\n"
