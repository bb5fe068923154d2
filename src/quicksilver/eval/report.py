"""Results as JSON files, tables, the speed-quality plot, and the section of ``docs/models.md``.

Every result file is one JSON object with ``eval`` (humaneval | infill | ppl | curve), ``system``
(what was tested), ``setting`` (the decoding setting in words), ``usage`` (generated tokens, forward
passes, tokens per forward) and ``command`` (how to reproduce it), plus the eval's own numbers.
"""
from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"


def stamp(result: dict, system, setting: str, command: str | None = None) -> dict:
    """Add the system, setting, decoder usage and reproduction details to a result."""
    out = {"system": system.info(), "setting": setting, "usage": system.usage.to_dict()}
    out.update(result)
    out["command"] = command or "quicksilver " + " ".join(sys.argv[1:])
    out["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["machine"] = f"{platform.machine()}, Python {platform.python_version()}"
    return out


def result_name(result: dict) -> str:
    model = Path(str(result["system"].get("name", "model"))).name.replace(" ", "_").replace("/", "_")
    kind = result["eval"]
    if kind == "infill":
        kind += "-" + result["mode"]
    if result.get("limit") or (kind == "humaneval" and result.get("problems", 164) < 164):
        kind += "-subset"
    return f"{kind}-{model}.json"


def write_result(result: dict, out_dir: str | Path, name: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (name or result_name(result))
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load_results(folder: str | Path) -> list[dict]:
    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("eval") in ("humaneval", "infill", "ppl") and "system" in data:
            data["_file"] = path.name
            out.append(data)
    return out


def _tpf(result: dict) -> str:
    tpf = (result.get("usage") or {}).get("tokens_per_forward")
    return "—" if tpf is None else f"{tpf:.2f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def summary_line(result: dict) -> str:
    """One line for the terminal."""
    kind = result["eval"]
    if kind == "humaneval":
        scores = ", ".join(f"{k} {_pct(v)}" for k, v in result.items() if k.startswith("pass@"))
        return (f"HumanEval ({result['problems']} problems, n={result['n']}): {scores}; "
                f"{result['solved']} solved; {_tpf(result)} tokens/forward; {result['setting']}")
    if kind == "infill":
        return (f"infill {result['mode']} ({result['tasks']} tasks): {_pct(result['pass_rate'])} pass "
                f"({result['passed']}), exact match {_pct(result['exact_match'])}; {_tpf(result)} tokens/forward; "
                f"{result['setting']}")
    if kind == "ppl":
        se = result.get("se_monte_carlo_bits_per_byte")
        se_text = f" ± {se:.4f} (MC s.e.)" if se is not None else ""
        left = result.get("left_to_right")  # block models: exact when read left to right inside blocks
        left_text = f"; left to right (exact) {left['bits_per_byte']:.4f}" if left else ""
        return (f"bits per byte {result['bits_per_byte']:.4f}{se_text} ({result['nats_per_token']:.4f} nats/token, "
                f"{result['windows']} windows); {result['estimator']}{left_text}")
    return kind


def markdown_table(results: list[dict]) -> str:
    """All results in one table, one row per result."""
    rows = ["| eval | model | number | tokens/forward | decoding setting | scope |", "|---|---|---|---|---|---|"]
    for r in results:
        name = Path(str(r["system"].get("name", "?"))).name
        if r["eval"] == "humaneval":
            number = ", ".join(f"{k} {_pct(v)}" for k, v in r.items() if k.startswith("pass@"))
            scope = f"{r['problems']} problems, n={r['n']}, T={r['temperature']:g}, {r['max_new_tokens']} new tokens"
        elif r["eval"] == "infill":
            number = f"{_pct(r['pass_rate'])} ({r['passed']}/{r['tasks']})"
            scope = f"{r['mode']}, {r['tasks']} tasks, hole budget {r['budget']} tokens"
        elif r["eval"] == "ppl":
            se = r.get("se_monte_carlo_bits_per_byte")
            number = f"{r['bits_per_byte']:.3f} bits/byte" + (f" ± {se:.3f}" if se is not None else "")
            scope = f"{r['windows']} windows × {r['seq_len']} tokens, {r['estimator']}"
        else:
            continue
        rows.append(f"| {r['eval']} | `{name}` | {number} | {_tpf(r)} | {r['setting']} | {scope} |")
    return "\n".join(rows)


# -- speed-quality curve ---------------------------------------------------------------------------
def plot_curve(curve: dict, path: str | Path) -> Path:
    """HumanEval pass@1 and infill pass rate against tokens per forward, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("humaneval", "pass@1", "HumanEval pass@1"), ("infill", "pass_rate", "single-line infill pass rate"))
    for ax, (key, metric, title) in zip(axes, panels):
        for model, points in curve["points"].items():
            pts = sorted((p[key]["tokens_per_forward"], p[key][metric]) for p in points
                         if p.get(key) and p[key].get("tokens_per_forward") is not None)
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = "s--" if any(p.get("kind") == "autoregressive" for p in points) else "o-"
            ax.plot(xs, [100 * y for y in ys], style, label=model)
            for p in points:
                if p.get(key) and p[key].get("tokens_per_forward") is not None:
                    ax.annotate(p["setting_short"], (p[key]["tokens_per_forward"], 100 * p[key][metric]),
                                fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per forward pass")
        ax.set_ylabel("%")
        ax.set_title(f"{title}\n({curve['scope'][key]})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_table(curve: dict) -> str:
    rows = ["| model | setting | HumanEval pass@1 | tokens/forward | single-line infill | tokens/forward |",
            "|---|---|---|---|---|---|"]
    for model, points in curve["points"].items():
        for p in points:
            h, i = p.get("humaneval") or {}, p.get("infill") or {}
            tpf_h = h.get("tokens_per_forward")
            tpf_i = i.get("tokens_per_forward")
            rows.append(f"| `{model}` | {p['setting']} | {_pct(h.get('pass@1'))} | "
                        f"{'—' if tpf_h is None else f'{tpf_h:.2f}'} | {_pct(i.get('pass_rate'))} | "
                        f"{'—' if tpf_i is None else f'{tpf_i:.2f}'} |")
    return "\n".join(rows)


# -- docs/models.md ---------------------------------------------------------------------------------
def _pick(results: list[dict], model: str, kind: str, mode: str | None = None) -> dict | None:
    """The fullest result of one kind for a model (full runs before subsets, then the newest)."""
    found = [r for r in results if r["eval"] == kind and Path(str(r["system"].get("name"))).name == model
             and (mode is None or r.get("mode") == mode)]
    if not found:
        return None
    size = (lambda r: r.get("problems", 0)) if kind == "humaneval" else (
        (lambda r: r.get("tasks", 0)) if kind == "infill" else (lambda r: r.get("windows", 0)))
    return max(found, key=lambda r: (size(r), r.get("created", "")))


WHAT_WOULD_RAISE = (
    "These are measured numbers of ~9M-parameter models trained for about 10M tokens of standard-library code "
    "on two CPU cores, so they sit near the floor of every benchmark. What would raise them, roughly in order of "
    "effect: far more training (tokens and parameters: HumanEval pass rates appear from a few hundred million "
    "parameters and billions of tokens), training data shaped like the tasks (functions with docstrings, tests), "
    "a training context covering prompt plus answer (the models were trained on 256-token windows while a "
    "HumanEval prompt plus its 128 new tokens reaches up to ~570 positions), and, for infilling by the diffusion "
    "model, training holes that end in end-of-text padding so it learns where a span stops instead of relying "
    "on the trimming rules. Sampling n > 1 at a temperature gives pass@k for k > 1. Method details: "
    "`docs/evaluation.md`."
)


def models_section(results: list[dict], models: tuple[str, ...] = ("coder-tiny", "coder-tiny-ar"),
                   curve: dict | None = None, curve_png: str | None = None) -> str:
    """The evaluation section of docs/models.md, generated from result JSON files."""
    lines = ["## Evaluation (generated by `quicksilver eval report` from `docs/eval/*.json`; do not edit by hand)", ""]
    header = "| | " + " | ".join(f"`{m}`" for m in models) + " |"
    lines += [header, "|---" * (len(models) + 1) + "|"]
    cells: dict[str, list[str]] = {"HumanEval pass@1": [], "HumanEval: problems solved": [],
                                   "HumanEval: decoding setting (tokens/forward)": [],
                                   "single-line infill pass rate": [], "single-line infill: setting (tokens/forward)": [],
                                   "bits per byte (validation split)": [], "bits per byte: estimator": []}
    sources: list[str] = []
    for m in models:
        he = _pick(results, m, "humaneval")
        inf = _pick(results, m, "infill", "single-line")
        ppl = _pick(results, m, "ppl")
        if he:
            cells["HumanEval pass@1"].append(f"{_pct(he.get('pass@1'))} ({he['problems']} problems, n={he['n']}, "
                                             f"T={he['temperature']:g})")
            cells["HumanEval: problems solved"].append(f"{he['solved']} / {he['problems']}")
            cells["HumanEval: decoding setting (tokens/forward)"].append(f"{he['setting']}, {he['max_new_tokens']} new "
                                                                        f"tokens ({_tpf(he)})")
            sources.append(f"`{he['command']}`")
        else:
            for k in ("HumanEval pass@1", "HumanEval: problems solved", "HumanEval: decoding setting (tokens/forward)"):
                cells[k].append("not measured")
        if inf:
            cells["single-line infill pass rate"].append(f"{_pct(inf['pass_rate'])} ({inf['passed']} / {inf['tasks']} "
                                                         f"lines; exact match {_pct(inf['exact_match'])})")
            cells["single-line infill: setting (tokens/forward)"].append(f"{inf['setting']}, hole budget "
                                                                         f"{inf['budget']} ({_tpf(inf)})")
            sources.append(f"`{inf['command']}`")
        else:
            cells["single-line infill pass rate"].append("not measured")
            cells["single-line infill: setting (tokens/forward)"].append("—")
        if ppl:
            se = ppl.get("se_monte_carlo_bits_per_byte")
            cells["bits per byte (validation split)"].append(
                f"{ppl['bits_per_byte']:.3f}" + (f" ± {se:.3f}" if se is not None else " (exact)")
                + (" (upper bound)" if se is not None else ""))
            cells["bits per byte: estimator"].append(f"{ppl['estimator']}; {ppl['windows']} windows × {ppl['seq_len']} "
                                                     "tokens")
            sources.append(f"`{ppl['command']}`")
        else:
            cells["bits per byte (validation split)"].append("not measured")
            cells["bits per byte: estimator"].append("—")
    for label, values in cells.items():
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    lines.append("")
    if curve is not None:
        lines += ["### Speed–quality curve", "",
                  f"On a subset ({curve['scope']['humaneval']}; {curve['scope']['infill']}), greedy, "
                  "the diffusion model at several decoding settings and the twin for reference:", "",
                  curve_table(curve), ""]
        if curve_png:
            lines += [f"![speed-quality curve]({curve_png})", ""]
    lines += ["Commands that produced these numbers:", ""] + [f"- {s}" for s in dict.fromkeys(sources)]
    if curve is not None:
        lines.append(f"- `{curve['command']}`")
    lines += ["", WHAT_WOULD_RAISE, ""]
    return "\n".join(lines)


def update_doc(doc: str | Path, section: str) -> Path:
    """Replace the text between the eval markers of ``doc`` (appending the markers when absent)."""
    doc = Path(doc)
    text = doc.read_text() if doc.is_file() else ""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    doc.write_text(text)
    return doc


__all__ = ["stamp", "write_result", "load_results", "summary_line", "markdown_table", "plot_curve", "curve_table",
           "models_section", "update_doc", "BEGIN", "END"]
