"""Render the measured sections of docs/benchmarks.md from a bench.json (no number is typed by hand).

    python benchmarks/render_report.py benchmarks/results/bench.json > /tmp/sections.md
"""
import json
from pathlib import Path

from quicksilver.eval.bench_report import markdown_table, target_lines


def pct(x):
    return "—" if x is None else f"{100 * x:.0f}%"


def main(path: str) -> None:
    result = json.loads(open(path).read())
    m = result["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
          f"Python {m['python']}.  Prompts: {result['prompts']} ({result.get('prompt_source', 'HumanEval')}), "
          f"{result['config']['max_new_tokens']} new tokens, greedy.")
    print()
    print(f"Command: `{result['command']}`")
    print()
    d = result.get("dtype", {})
    t = result.get("dtype_timings_s", {})
    for key, choice in d.items():
        timing = t.get(key)
        extra = f" (fp32 {timing['fp32']:.2f} s vs bf16 {timing['bf16']:.2f} s on the calibration workload)" if timing else ""
        print(f"- dtype for the {key} model: **{choice}**{extra}")
    print()
    print(markdown_table(result))
    print()
    for line in target_lines(result):
        print(f"- {line}")
    target = result.get("target")
    if target:
        needed = target["tokens_per_forward_needed"]
        rows = {r["system"]: r for r in result["results"] if r["batch"] == 1}
        print()
        print("| setting | ms per forward | tokens/forward measured | tokens/forward needed for 3× |")
        print("|---|---|---|---|")
        for name, need in needed.items():
            r = rows[name]
            print(f"| {name} | {r['ms_per_forward']:.1f} | {r['tokens_per_forward']:.2f} | {need:.1f} |")
    if result.get("checkpoints"):
        print()
        print("| checkpoint | setting | tokens/forward | tokens/s | parse |")
        print("|---|---|---|---|---|")
        for c in result["checkpoints"]:
            print(f"| {c['checkpoint']} | {c['system']} | {c['tokens_per_forward']:.2f} | "
                  f"{c['tokens_per_second']:.0f} | {pct(c['parse_share'])} |")
    if result.get("profile"):
        print()
        print("| system | seconds (prompts) | transformer body | LM head | sampler | attention ops | matmul ops | top ops |")
        print("|---|---|---|---|---|---|---|---|")
        for name, p in result["profile"].items():
            top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in p["top_ops"][:4])
            print(f"| {name} | {p['seconds']:.2f} ({p.get('prompts', '?')}) | {pct(p['body_share'])} | {pct(p['head_share'])} | "
                  f"{pct(p['sampler_share'])} | {pct(p['op_attention_share'])} | {pct(p['op_matmul_share'])} | {top} |")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Render the measured sections of docs/benchmarks.md from bench.json.")
    parser.add_argument("bench_json", nargs="?", default="benchmarks/results/bench.json")
    args = parser.parse_args()
    if not Path(args.bench_json).is_file():
        parser.error(f"no file at {args.bench_json}; run `quicksilver bench --out benchmarks/results` first")
    main(args.bench_json)
