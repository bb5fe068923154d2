"""Speed and quality of diffusion models against their AR twin (issue 13: block diffusion).

For each model given with --model, in one process, on the same HumanEval prompts (greedy, one
thread):

* speed: tokens/s, tokens per forward and x AR at each batch size, for the confidence threshold at
  each --threshold (block models: the exact block-causal cache; the bundled bidirectional model:
  DualCache with incremental refresh, its fastest confidence-driven setting).  The twin is timed
  again right before each model, and x AR is against that adjacent measurement, so a machine whose
  load drifts over the run compares like with like;
* quality of the batch-1 completions: generative perplexity under the twin and unigram entropy
  (``eval/genquality.py``), the share whose body (cut at the HumanEval stop sequences) equals the
  twin's, and the HumanEval parse rate;
* bits per byte on the validation split (``eval/likelihood.py``; an upper bound for diffusion);
* single-line infilling exact match (``eval/infill.py``) at --infill-threshold.

Writes block.json, block.md and block.png (speed vs generative perplexity, the twin marked) to --out;
with --resume, models already in block.json are kept (a long run can be continued).

    python benchmarks/block_diffusion.py --model coder-tiny --model runs/coder-tiny-block/best \
        --model runs/coder-tiny-distill/best --out benchmarks/results/block
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from quicksilver.eval.bench import _summarise, ar_runner, diffusion_runner, humaneval_prompts, measure, truncate_completion
from quicksilver.eval.bench_report import machine_info
from quicksilver.loading.checkpoint import load_model
from quicksilver.eval.genquality import generative_perplexity, unigram_entropy
from quicksilver.sampling import DecodePolicy


def policy_for(model, threshold: float, max_new_tokens: int, rule: str = "threshold") -> DecodePolicy:
    """Block models: the exact block-causal cache with ``rule`` (threshold, or ordered: left to right);
    the bidirectional model: its fastest confidence-driven setting."""
    if getattr(model.config, "block_size", 0):
        return DecodePolicy(max_new_tokens=max_new_tokens, block_length=model.config.block_size, commit=rule,
                            threshold=threshold, cache="prefix",
                            early_stop=True)
    return DecodePolicy(max_new_tokens=max_new_tokens, block_length=32, commit="threshold", threshold=threshold,
                        cache="dual", refresh="incremental", early_stop=True)


def speed_rows(name, runner, prompt_ids, prompts, tokenizer, batches, repeats, dtype, setting, log):
    rows = []
    for batch in batches:
        seconds, calls = measure(runner, prompt_ids, batch, repeats, 1)
        row = _summarise(name, name, batch, dtype, setting, seconds, calls, prompts, tokenizer)
        log(f"  {name} batch {batch} {setting}: {row.tokens_per_second:.1f} tok/s, "
            f"{row.tokens_per_forward:.2f} tok/fwd, parse {row.parse_share:.0%}")
        rows.append(row)
    return rows


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def quality(row, twin_row, twin, prompt_ids) -> dict:
    """Quality of a batch-1 run's completions.  The body (cut at the HumanEval stop sequences) is
    often empty for these small models (they start a new ``def``), so agreement with the twin is also
    given as the share with the same first line and the mean common prefix in characters."""
    pairs = list(zip(row.completions, twin_row.completions))
    n = len(pairs)
    return {"gen_ppl": generative_perplexity(twin, prompt_ids, row.ids), "unigram_entropy": unigram_entropy(row.ids),
            "same_body_as_twin": sum(truncate_completion(a) == truncate_completion(b) for a, b in pairs) / n,
            "identical_to_twin": sum(a == b for a, b in pairs) / n,
            "same_first_line_as_twin": sum(_first_line(a) == _first_line(b) for a, b in pairs) / n,
            "common_prefix_chars": sum(_common_prefix(a, b) for a, b in pairs) / n,
            "parse": row.parse_share, "mean_tokens": sum(map(len, row.ids)) / n}


def bits_per_byte(model, data, windows, samples) -> dict:
    from quicksilver.eval.likelihood import run_ppl

    class _System:
        pass
    system = _System()
    system.model = model
    return run_ppl(system, data, seq_len=256, windows=windows, samples=samples, batch_size=16)


def infill(name, model, tokenizer, threshold, limit, rule="threshold") -> dict:
    from quicksilver.eval.infill import run_infill
    from quicksilver.eval.systems import LocalSystem

    cache = "prefix" if getattr(model.config, "block_size", 0) else "dual"
    setting = f"ord{threshold}" if rule == "ordered" and cache == "prefix" else f"thr{threshold}"
    system = LocalSystem(name, model, tokenizer, setting, 32, cache, batch_size=1)
    result = run_infill(system, "single-line", limit=limit, workers=1)
    return {k: result[k] for k in ("tasks", "exact_match", "pass_rate", "budget")} | {
        "tokens_per_forward": system.usage.tokens_per_forward}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="diffusion model (bundled name or folder)")
    ap.add_argument("--ar-model", default="coder-tiny-ar")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threshold", type=float, action="append", default=None)
    ap.add_argument("--batch-threshold", type=float, action="append", default=None,
                    help="thresholds also run at batch sizes > 1 (default: all)")
    ap.add_argument("-b", "--batch-size", type=int, action="append", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data", default="data/stdlib-8k")
    ap.add_argument("--ppl-windows", type=int, default=32)
    ap.add_argument("--ppl-samples", type=int, default=4)
    ap.add_argument("--infill-limit", type=int, default=None, help="single-line tasks (default: all 1,033)")
    ap.add_argument("--infill-threshold", type=float, default=0.9)
    ap.add_argument("--rule", choices=["threshold", "ordered"], default="threshold",
                    help="block models' commit rule (ordered: left to right while above the threshold); "
                         "the entry is named 'MODEL [ordered]'")
    ap.add_argument("--skip", action="append", default=[], choices=["speed", "ppl", "infill"],
                    help="leave out a part (e.g. run speed and ppl/infill as two processes)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/block"))
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    thresholds = args.threshold or [0.5, 0.7, 0.9, 0.95]
    batches = args.batch_size or [1, 8]
    batch_thresholds = args.batch_threshold or thresholds
    torch.set_num_threads(1)
    log = lambda m: print(m, flush=True)  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "block.json"
    result = json.loads(path.read_text()) if args.resume and path.is_file() else {"models": {}}
    command = "python benchmarks/block_diffusion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result.update(command=command, machine=machine_info(), prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                  dtype="fp32")
    result["commands"] = result.get("commands", []) + [command]  # a resumed run keeps the earlier commands

    twin, tokenizer = load_model(args.ar_model, dtype=torch.float32)
    prompts = humaneval_prompts(args.prompts)
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    twin_run = ar_runner(twin, args.max_new_tokens)

    def save():
        path.write_text(json.dumps(result, indent=1))

    if "twin" not in result:
        log(f"{args.ar_model}: quality")
        rows = speed_rows(args.ar_model, twin_run, prompt_ids, prompts, tokenizer, [1], 1, "fp32", "KV cache", log)
        twin_q = quality(rows[0], rows[0], twin, prompt_ids)
        twin_q["completions"] = rows[0].completions
        if "ppl" not in args.skip:
            twin_q["ppl"] = bits_per_byte(twin, args.data, args.ppl_windows, 1)
        if "infill" not in args.skip:
            twin_q["infill"] = infill(args.ar_model, twin, tokenizer, args.infill_threshold, args.infill_limit)
            log(f"  infill: {twin_q['infill']}")
        result["twin"] = twin_q
        save()

    if "ppl" not in args.skip and "ppl" not in result["twin"]:  # e.g. a resumed run on another data folder
        result["twin"]["ppl"] = bits_per_byte(twin, args.data, args.ppl_windows, 1)
        save()

    class _TwinRow:
        completions = result["twin"]["completions"]

    for path_name in args.model:
        model, _ = load_model(path_name, dtype=torch.float32)
        block = getattr(model.config, "block_size", 0)
        name = f"{path_name} [ordered]" if block and args.rule == "ordered" else path_name
        if name in result["models"]:
            log(f"{name}: already measured (--resume)")
            continue
        entry = {"block_size": getattr(model.config, "block_size", 0), "settings": []}
        thresholds_here = [] if "speed" in args.skip else thresholds
        for tau in thresholds_here:
            policy = policy_for(model, tau, args.max_new_tokens, args.rule)
            use = [b for b in batches if b == 1 or tau in batch_thresholds]
            # The twin is timed right before each setting, at the same batch sizes: x AR compares two
            # adjacent measurements, so load drifting over a long run does not enter the ratio.
            twin_rows = speed_rows(args.ar_model, twin_run, prompt_ids, prompts, tokenizer, use, args.repeats,
                                   "fp32", "KV cache", log)
            twin_speed = {r.batch: r.tokens_per_second for r in twin_rows}
            rows = speed_rows(name, diffusion_runner(model, policy), prompt_ids, prompts, tokenizer, use,
                              args.repeats, "fp32", policy.describe(), log)
            setting = {"threshold": tau, "policy": policy.describe(), "speed": {}, "twin_speed": twin_speed}
            for r in rows:
                setting["speed"][r.batch] = {"tokens_per_second": r.tokens_per_second,
                                             "x_ar": r.tokens_per_second / twin_speed[r.batch],
                                             "tokens_per_forward": r.tokens_per_forward,
                                             "ms_per_forward": r.ms_per_forward, "seconds_all": r.seconds_all}
            setting["quality"] = quality(rows[0], _TwinRow, twin, prompt_ids)
            setting["completions"] = rows[0].completions
            log(f"  quality at {tau}: {setting['quality']}")
            entry["settings"].append(setting)
            result["models"][name] = entry
            save()
        if "ppl" not in args.skip:
            entry["ppl"] = bits_per_byte(model, args.data, args.ppl_windows, args.ppl_samples)
            log(f"  bits/byte {entry['ppl']['bits_per_byte']:.3f}")
        if "infill" not in args.skip:
            entry["infill"] = infill(name, model, tokenizer, args.infill_threshold, args.infill_limit, args.rule)
            log(f"  infill: {entry['infill']}")
        result["models"][name] = entry
        save()
    write_report(result, args.out)
    return 0


def _pct(x) -> str:
    return "—" if x is None else f"{x:.0%}"


def _num(x) -> str:
    return "—" if x is None else f"{x:.0f}"


def write_report(result: dict, out: Path) -> None:
    twin = result["twin"]
    commands = result.get("commands") or [result["command"]]
    lines = ["Commands:", ""] + [f"- `{c}`" for c in commands] + ["",
             f"Machine: {result['machine'].get('cpu', '')}; {result['prompts']} HumanEval prompts, "
             f"{result['max_new_tokens']} new tokens, greedy, fp32, one thread.", "",
             "| model | threshold | tok/fwd b1 | tok/s b1 | x AR b1 | tok/fwd b8 | tok/s b8 | x AR b8 | gen PPL (twin) | "
             "unigram H | same body as twin | same first line as twin | common prefix (chars) | parse |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    tq = twin
    lines.append(f"| twin (AR) | — | 1.00 | — | 1.00 | 1.00 | — | 1.00 | {tq['gen_ppl']:.2f} | "
                 f"{tq['unigram_entropy']:.2f} | 100% | 100% | all | {tq['parse']:.0%} |")
    for name, entry in result["models"].items():
        for s in entry["settings"]:
            b1, b8 = s["speed"].get("1") or s["speed"].get(1), s["speed"].get("8") or s["speed"].get(8)
            q = s["quality"]
            cell8 = (f"{b8['tokens_per_forward']:.2f} | {b8['tokens_per_second']:.0f} | {b8['x_ar']:.2f}"
                     if b8 else "— | — | —")
            lines.append(f"| {name} | {s['threshold']:g} | {b1['tokens_per_forward']:.2f} | "
                         f"{b1['tokens_per_second']:.0f} | {b1['x_ar']:.2f} | {cell8} | {q['gen_ppl']:.2f} | "
                         f"{q['unigram_entropy']:.2f} | {_pct(q.get('same_body_as_twin'))} | "
                         f"{_pct(q.get('same_first_line_as_twin'))} | "
                         f"{_num(q.get('common_prefix_chars'))} | {q['parse']:.0%} |")
    lines += ["", "| model | bits/byte (val; diffusion: NELBO bound) | nats/token | bits/byte left to right (exact) | "
              "single-line infill exact match | infill pass | tasks |", "|---|---|---|---|---|---|---|"]
    for name, entry in [("twin (AR)", twin)] + list(result["models"].items()):
        p, f = entry.get("ppl"), entry.get("infill")
        if not p and not f:
            continue  # a speed-only entry (e.g. the same model under another commit rule)
        left = (p or {}).get("left_to_right") or ({"bits_per_byte": p["bits_per_byte"]} if p and name == "twin (AR)"
                                                  else None)
        lines.append(f"| {name} | {p['bits_per_byte']:.3f} | {p['nats_per_token']:.3f} | " if p else f"| {name} | — | — | ")
        lines[-1] += f"{left['bits_per_byte']:.3f} | " if left else "— | "
        lines[-1] += (f"{f['exact_match']:.1%} | {f['pass_rate']:.1%} | {f['tasks']} |" if f else "— | — | — |")
    (out / "block.md").write_text("\n".join(lines) + "\n")
    plot(result, out / "block.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    twin = result["twin"]
    ax.scatter([1.0], [twin["gen_ppl"]], color="tab:red", marker="*", s=160, label="AR twin", zorder=3)
    colours = plt.get_cmap("tab10").colors
    for i, (name, entry) in enumerate(result["models"].items()):
        colour = colours[(i + 1) % len(colours)]
        xs, ys = [], []
        for s in entry["settings"]:
            b1 = s["speed"].get("1") or s["speed"].get(1)
            xs.append(b1["x_ar"])
            ys.append(s["quality"]["gen_ppl"])
            ax.annotate(f"{s['threshold']:g}", (xs[-1], ys[-1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.plot(xs, ys, "o-", color=colour, label=name.replace("runs/", "").replace("/best", ""))
    ax.axvline(2.0, color="grey", ls=":", lw=1)
    ax.axhline(twin["gen_ppl"] * 1.05, color="grey", ls="--", lw=1, label="twin + 5%")
    ax.set_xlabel("tokens/s relative to the AR twin, batch 1 (labels: confidence threshold)")
    ax.set_ylabel("generative perplexity under the twin (lower is better)")
    ax.set_yscale("log")
    ax.set_title("Speed vs quality on HumanEval prompts (one thread, greedy)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
