"""Merge what the phases of scripts/train_gpu.sh wrote into one results.json (called after every
phase, so whatever happened last is on record even if the device command is cut off).

    python scripts/gpu/results.py WORK OUT/results.json --mode gpu --budget-s 530

Reads from WORK: phases.jsonl (one line per phase: name, cap, seconds, exit status), probe.json,
step_times.json, bench-b1/ and bench-b8/bench.json (a digest: one row per system and batch) and engine.json.  The
training summaries themselves are in OUT/summary.json (scripts/gpu_run.py pack).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCH_FIELDS = ("system", "batch", "dtype", "tokens_per_second", "tokens_per_forward", "nfe_per_call",
                "ms_per_forward", "first_token_ms", "parse_share", "identical_share", "generated_tokens")


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def merge(work: Path, mode: str, budget_s: float, wall_s: float) -> dict:
    phases = []
    if (work / "phases.jsonl").is_file():
        phases = [json.loads(line) for line in (work / "phases.jsonl").read_text().splitlines() if line.strip()]
    out: dict = {"mode": mode, "budget_s": budget_s, "phases": phases,
                 "wall_s": wall_s,  # since the script started
                 "compile_probe": _read(work / "probe.json"),
                 "step_times": _read(work / "step_times.json"),
                 "engine": _read(work / "engine.json")}
    runs = [b for b in (_read(work / f"bench-b{n}" / "bench.json") for n in (1, 8)) if b is not None]
    out["bench"] = {"rows": [{k: r.get(k) for k in BENCH_FIELDS} for b in runs for r in b.get("results", [])],
                    "target": [b.get("target") for b in runs], "config": runs[0].get("config") if runs else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mode", default="gpu")
    parser.add_argument("--budget-s", type=float, default=0)
    parser.add_argument("--wall-s", type=float, default=0)
    args = parser.parse_args()
    result = merge(args.work, args.mode, args.budget_s, args.wall_s)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
