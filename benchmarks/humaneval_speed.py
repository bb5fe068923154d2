"""The speed benchmark of docs/benchmarks.md: diffusion decoding settings against the AR twin.

    python benchmarks/humaneval_speed.py [options]   # the same as: quicksilver bench [options]

Writes benchmarks/results/bench.json (every number, the completions, machine and command),
bench.md (the table) and bench.png (tokens/s against parse rate).  See `quicksilver bench --help`.
"""
import sys

from quicksilver.cli import app

if __name__ == "__main__":
    sys.argv = ["quicksilver", "bench", *sys.argv[1:]]
    app()
