"""Step-level batching in the engine: the same requests one after another vs all at once.

    python benchmarks/engine_batching.py [--model coder-tiny] [--requests 8] [--max-tokens 64]

Prints wall time, generated tokens and forward passes of both runs, and whether the texts agree
(they must at temperature 0: a row decodes what it would alone).
"""
from __future__ import annotations

import argparse
import dataclasses
import queue
import time

import torch

import quicksilver
from quicksilver.engine import Done, Engine, EngineConfig, Finished, Request


def run(lm, prompts: list[str], max_tokens: int, together: bool) -> tuple[float, int, int, list[str]]:
    policy = dataclasses.replace(lm.default_policy, max_new_tokens=max_tokens)
    engine = Engine(lm, EngineConfig(max_batch=len(prompts))).start()
    texts, tokens, sinks = [], 0, []

    def drain(q: queue.Queue) -> None:
        nonlocal tokens
        while True:
            event = q.get()
            if isinstance(event, Finished):
                texts.append(event.text)
            if isinstance(event, Done):
                tokens += event.completion_tokens
                return

    start = time.perf_counter()
    for prompt in prompts:
        q: queue.Queue = queue.Queue()
        engine.submit(Request(lm.encode(prompt), dataclasses.replace(policy), sink=q.put))
        if together:
            sinks.append(q)
        else:
            drain(q)
    for q in sinks:
        drain(q)
    wall = time.perf_counter() - start
    engine.shutdown(1)
    return wall, tokens, engine.forward_passes_total, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="coder-tiny")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = quicksilver.load(args.model)
    prompts = [f"def function_{i}(x):" for i in range(args.requests)]
    results = {}
    for name, together in (("one after another", False), ("all at once", True)):
        wall, tokens, passes, texts = results[name] = run(lm, prompts, args.max_tokens, together)
        print(f"{name:>17}: {wall:6.2f} s  {tokens} tokens  {passes} forward passes  {tokens / wall:6.1f} tokens/s")
    print("same texts:", results["one after another"][3] == results["all at once"][3])


if __name__ == "__main__":
    main()
