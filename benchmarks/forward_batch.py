"""How much one forward pass gains from batching rows: the ceiling of the server's step-level batching.

    python benchmarks/forward_batch.py --model coder-tiny --threads 1

Times the model's forward pass (no sampler, no server) for batches of 1, 8 and 32 rows of
``--tokens`` positions each (32: a DualCache step runs the block's 32 positions; 96: a full-canvas
step for a short prompt and 64 new tokens) and prints time per row and rows/s relative to batch 1.
A server that batches perfectly can raise aggregate tokens/s by at most that factor.
"""
from __future__ import annotations

import argparse
import time

import torch

from quicksilver.loading.checkpoint import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="coder-tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, nargs="+", default=[32, 96], help="positions per row")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=7, help="timed passes per point (the median is shown)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device, torch.float32)[0]
    vocab = model.config.vocab_size
    print(f"{args.model} on {args.device}, {args.threads} thread(s)")
    print("| tokens/row | batch | ms/forward | ms/row | rows/s vs batch 1 |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for length in args.tokens:
            base = None
            for batch in args.batch:
                x = torch.randint(10, vocab, (batch, length), device=args.device)
                model(x)  # warm-up
                times = []
                for _ in range(args.repeats):
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    model(x)
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
                dt = sorted(times)[len(times) // 2]
                per_row = dt / batch
                base = base or per_row
                print(f"| {length} | {batch} | {dt * 1000:.1f} | {per_row * 1000:.2f} | {base / per_row:.2f}× |")


if __name__ == "__main__":
    main()
