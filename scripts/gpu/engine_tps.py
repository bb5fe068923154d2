"""Tokens/s through the serving engine at batch 1, 8 and 32: N requests submitted at once to an
``Engine`` whose ``max_batch`` is N, timed until the last one is done.

Systems: the diffusion model under the server's default decoding (threshold 0.9, no cache) and under
the dual cache with the same rule, and the AR twin (which the engine serves one request at a time:
its batch-32 number is what a queue of 32 requests gets).  Generated tokens are counted up to end of
text, as the server bills them.  Results go to ``--out`` after each run, so a run cut off by its time
limit keeps what it measured.

    python scripts/gpu/engine_tps.py --model runs/gpu-work/coder-small/best \
        --ar-model runs/gpu-work/coder-small-ar/best --out engine.json --time-limit 45
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch  # noqa: E402

import quicksilver  # noqa: E402
from quicksilver.engine import Done, Engine, EngineConfig, Failed, Request  # noqa: E402
from quicksilver.eval.bench import BUILTIN_PROMPTS  # noqa: E402
from quicksilver.sampling.policy import resolve_policy  # noqa: E402


def serve(lm, policy, batch: int, time_limit_s: float) -> dict:
    engine = Engine(lm, EngineConfig(max_batch=batch, max_queue=batch + 1, time_limit_s=time_limit_s)).start()
    sinks = []
    start = time.perf_counter()
    try:
        for i in range(batch):
            q: queue.Queue = queue.Queue()
            engine.submit(Request(lm.encode(BUILTIN_PROMPTS[i % len(BUILTIN_PROMPTS)]), dataclasses.replace(policy),
                                  sink=q.put))
            sinks.append(q)
        tokens, timed_out = 0, 0
        for q in sinks:
            while True:
                event = q.get(timeout=time_limit_s + 30)
                if isinstance(event, Failed):
                    raise RuntimeError(event.message)
                if isinstance(event, Done):
                    tokens += event.completion_tokens
                    timed_out += event.timed_out
                    break
        wall = time.perf_counter() - start
    finally:
        engine.shutdown(1)
    return {"requests": batch, "generated_tokens": tokens, "seconds": round(wall, 4),
            "tokens_per_s": round(tokens / wall, 1), "forward_passes": engine.forward_passes_total,
            "timed_out_requests": timed_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ar-model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--time-limit", type=float, default=45.0, help="seconds; later runs are skipped past it")
    args = parser.parse_args()
    t0 = time.time()
    if os.environ.get("PHASE_DEADLINE"):  # scripts/train_gpu.sh: the phase's cap ends then (start-up counted)
        args.time_limit = min(args.time_limit, float(os.environ["PHASE_DEADLINE"]) - t0 - 2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    result: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "dtype": str(dtype),
                    "max_new_tokens": args.max_tokens, "prompts": "eval.bench.BUILTIN_PROMPTS, cycled",
                    "runs": [], "skipped": []}

    def save() -> None:
        result["elapsed_s"] = round(time.time() - t0, 1)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.out)

    diffusion = quicksilver.load(args.model, device=device, dtype=dtype)
    twin = quicksilver.load(args.ar_model, device=device, dtype=dtype)
    # Policies derived in the one place that derives them (sampling/policy.py).
    systems = [("diffusion default (threshold 0.9)", diffusion,
                resolve_policy(base=diffusion.default_policy, max_new_tokens=args.max_tokens)),
               ("diffusion dual cache + threshold 0.9", diffusion,
                resolve_policy("dual+thr0.9", max_new_tokens=args.max_tokens, block_length=32)),
               ("AR twin", twin, resolve_policy(base=twin.default_policy, diffusion=False,
                                                max_new_tokens=args.max_tokens))]
    for name, lm, policy in systems:
        if time.time() - t0 < args.time_limit:
            warm = resolve_policy(base=policy, diffusion=lm is diffusion, max_new_tokens=8)
            serve(lm, warm, 1, 60)  # warm-up (kernels, allocator): the same policy, shorter
        for batch in args.batches:
            left = args.time_limit - (time.time() - t0)
            if left <= 1:
                result["skipped"].append(f"{name} at batch {batch}: time limit")
                continue
            try:
                run = serve(lm, policy, batch, left)
            except Exception as e:  # a failed run is recorded; the others still run
                run = {"requests": batch, "error": f"{type(e).__name__}: {e}"[:300]}
            result["runs"].append({"system": name, "policy": {k: v for k, v in dataclasses.asdict(policy).items()
                                                               if v is not None}, **run})
            save()
    save()


if __name__ == "__main__":
    main()
