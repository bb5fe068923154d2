"""How many torch threads to decode with: one against torch's default on a short decode.

Runs the same short generation with each thread count, interleaved (1, default, 1, default, ...) so
that a change in the machine's load hits both alike, and prints the medians and the load average.
The measurement behind ``quicksilver.threads`` (docs/benchmarks.md, "Threads"):

    python benchmarks/thread_count.py --repeats 9
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import quicksilver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="coder-tiny")
    parser.add_argument("--prompt", default="def fibonacci(n):")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to compare (default: 1 and torch's default for this machine)")
    args = parser.parse_args()
    default = torch.get_num_threads()  # torch's own choice, before anything sets it
    counts = args.threads or sorted({1, default})
    lm = quicksilver.load(args.model, device="cpu", threads=counts[0])
    times: dict[int, list[float]] = {c: [] for c in counts}
    lm.generate(args.prompt, max_new_tokens=args.max_new_tokens)  # warm-up
    for _ in range(args.repeats):
        for count in counts:
            torch.set_num_threads(count)
            start = time.perf_counter()
            result = lm.generate(args.prompt, max_new_tokens=args.max_new_tokens)
            times[count].append(time.perf_counter() - start)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, torch's default {default} threads; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.model}, {args.max_new_tokens} tokens "
          f"({result.generated_tokens} generated, {result.nfe} forward passes), default decoding, {args.repeats} "
          f"interleaved repeats")
    base = statistics.median(times[counts[0]])
    for count in counts:
        med = statistics.median(times[count])
        print(f"threads {count}: median {med:.3f} s (min {min(times[count]):.3f}, max {max(times[count]):.3f}); "
              f"{med / base:.2f}x the time of {counts[0]} thread(s)")


if __name__ == "__main__":
    main()
