"""The speed benchmark's result, reported: one ``Row`` per system and batch size, the table (stdout and
``bench.md``), the target summary against the AR twin, the JSON file and the PNG of speed against parse rate.

``bench`` measures and builds the rows; this module only reads them, so ``benchmarks/render_report.py``
can redraw the tables from a saved ``bench.json`` without loading a model.
"""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The autoregressive baselines: the twin with its KV cache and transformers' generate() on its weights.
# ``bench`` runs them; the report measures every diffusion setting against them.
AR_SYSTEMS = ("ar-twin", "hf-llama")


@dataclass
class Row:
    system: str
    model: str
    batch: int
    dtype: str
    setting: str
    tokens_per_second: float
    seconds: float
    seconds_all: list[float]
    generated_tokens: int
    nfe_per_call: float
    ms_per_forward: float  # wall time per forward pass, sampler included
    tokens_per_forward: float
    first_token_ms: float
    parse_share: float
    identical_share: float | None
    same_body_share: float | None
    completions: list[str] = field(default_factory=list, repr=False)
    ids: list[list[int]] = field(default_factory=list, repr=False)


def target_summary(results: list[dict], speedup: float = 3.0, parse_gap: float = 0.05) -> dict | None:
    """The issue's target at batch 1: the best diffusion setting whose parse rate is at most 5 points
    below the AR twin's, its speed-up over the twin, and the tokens/forward each setting would need
    for ``speedup`` at its own cost per forward pass."""
    rows = [r for r in results if r["batch"] == 1]
    ar = next((r for r in rows if r["system"] == "ar-twin"), None)
    diffusion = [r for r in rows if r["system"] not in AR_SYSTEMS]
    if ar is None or not diffusion:
        return None
    ar_ms_per_token = 1000 / ar["tokens_per_second"]
    eligible = [r for r in diffusion if r["parse_share"] >= ar["parse_share"] - parse_gap - 1e-9]
    best_any = max(diffusion, key=lambda r: r["tokens_per_second"])
    best = max(eligible, key=lambda r: r["tokens_per_second"]) if eligible else None
    needed = {r["system"]: speedup * r["ms_per_forward"] / ar_ms_per_token for r in diffusion}
    return {
        "ar_tokens_per_second": ar["tokens_per_second"], "ar_parse_share": ar["parse_share"],
        "best_eligible": None if best is None else best["system"],
        "best_eligible_speedup": None if best is None else best["tokens_per_second"] / ar["tokens_per_second"],
        "best_any": best_any["system"], "best_any_speedup": best_any["tokens_per_second"] / ar["tokens_per_second"],
        "best_any_parse_share": best_any["parse_share"],
        "met": bool(best is not None and best["tokens_per_second"] >= speedup * ar["tokens_per_second"]),
        "tokens_per_forward_needed": needed,
    }


def target_lines(result: dict) -> list[str]:
    t = result.get("target")
    if not t:
        return []
    lines = [f"AR twin: {t['ar_tokens_per_second']:.0f} tokens/s, parse {_pct(t['ar_parse_share'])}."]
    if t["best_eligible"]:
        lines.append(f"Fastest diffusion setting within 5 points of the twin's parse rate: {t['best_eligible']} at "
                     f"{t['best_eligible_speedup']:.2f}× the twin's tokens/s (target 3×: "
                     f"{'met' if t['met'] else 'not met'}).")
    else:
        lines.append("No diffusion setting is within 5 points of the twin's parse rate (target 3×: not met).")
    lines.append(f"Fastest diffusion setting regardless of quality: {t['best_any']} at {t['best_any_speedup']:.2f}× "
                 f"(parse {_pct(t['best_any_parse_share'])}).")
    if t["ar_parse_share"] <= 0.05:
        lines.append(f"Caveat: the twin's parse rate is {_pct(t['ar_parse_share'])}, so the 5-point quality gate admits "
                     "every setting and cannot tell good decoding from bad: a 'met' here is not a real pass.")
    return lines


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _ar_speed(row: Row, rows: list[Row]) -> float | None:
    for r in rows:
        if r.system == "ar-twin" and r.batch == row.batch:
            return r.tokens_per_second
    return None


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


HEADER = ("system", "batch", "dtype", "tokens/s", "× AR", "NFE/call", "ms/fwd", "tokens/fwd", "TTFT ms", "parse",
          "identical", "same body")


def format_row(row: Row, rows: list[Row]) -> str:
    ar = _ar_speed(row, rows)
    cells = (row.system, str(row.batch), row.dtype, f"{row.tokens_per_second:.0f}",
             "—" if not ar else f"{row.tokens_per_second / ar:.2f}", f"{row.nfe_per_call:.1f}",
             f"{row.ms_per_forward:.1f}", f"{row.tokens_per_forward:.2f}", f"{row.first_token_ms:.0f}", _pct(row.parse_share),
             _pct(row.identical_share), _pct(row.same_body_share))
    return " | ".join(cells)


def markdown_table(result: dict) -> str:
    rows = [Row(**{**r, "completions": [], "ids": []}) for r in result["results"]]
    lines = ["| " + " | ".join(HEADER) + " | setting |", "|" + "---|" * (len(HEADER) + 1)]
    for r in rows:
        lines.append("| " + format_row(r, rows) + f" | {r.setting} |")
    return "\n".join(lines)


def write_outputs(result: dict, out_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "table": out / "bench.md"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["table"].write_text(markdown_table(result) + "\n\n" + "\n".join(target_lines(result)) + "\n")
    try:
        paths["png"] = plot(result, out / "bench.png")
    except ImportError:
        log("matplotlib is not installed: no PNG (pip install 'quicksilver-lm[bench]')")
    return paths


def plot(result: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    batches = sorted({r["batch"] for r in result["results"]})
    for batch, marker in zip(batches, "os^vD<>p*"):
        pts = [r for r in result["results"] if r["batch"] == batch]
        for r in pts:
            colour = "tab:red" if r["system"] in AR_SYSTEMS else "tab:blue"
            ax.scatter(r["tokens_per_second"], 100 * r["parse_share"], marker=marker, color=colour,
                       alpha=0.8, label=f"batch {batch}" if r is pts[0] else None)
            ax.annotate(f"{r['system']}@{batch}", (r["tokens_per_second"], 100 * r["parse_share"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens/s (log)")
    ax.set_ylabel("completions that parse (%)")
    m = result.get("machine", {})
    ax.set_title(f"Speed vs quality: diffusion (blue) vs AR twin (red); {m.get('cpu', '')}", fontsize=9)
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = ["AR_SYSTEMS", "Row", "target_summary", "target_lines", "machine_info", "format_row", "markdown_table",
           "write_outputs", "plot"]
