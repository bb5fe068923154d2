"""``/metrics`` in the Prometheus text format (version 0.0.4), written out from the engine's counters."""
from __future__ import annotations

from ..engine import Engine

PREFIX = "quicksilver_"


def _line(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    out = [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} {kind}"]
    for labels, value in samples:
        out.append(f"{PREFIX}{name}{labels} {value:g}" if isinstance(value, float) else f"{PREFIX}{name}{labels} {value}")
    return out


def render_metrics(engine: Engine | None) -> str:
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
    h = engine.latency
    counts = h.counts or [0] * len(h.bounds)
    samples = [(f'_bucket{{le="{b:g}"}}', c) for b, c in zip(h.bounds, counts)]
    samples += [('_bucket{le="+Inf"}', h.count), ("_sum", float(h.total)), ("_count", h.count)]
    lines += _line("request_seconds", "histogram", "Seconds from submission to the last token, finished requests.",
                   samples)
    return "\n".join(lines) + "\n"
