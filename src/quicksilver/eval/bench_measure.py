"""Timing for the speed benchmark: one call's result (``CallStats``) and the wall-clock loops that time
a system over all prompts, alone (``measure``) or several systems prompt group by prompt group in turn
(``measure_interleaved``, for a machine whose load changes during the run)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class CallStats:
    ids: list[list[int]]
    nfe: int
    row_forwards: int
    first_token_seconds: float
    verified: object | None = None  # sampling.verified.RoundStats of a verified call


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(run: Callable[[list[list[int]]], CallStats], prompt_ids: list[list[int]], batch: int,
            repeats: int, warmup: int) -> tuple[list[float], list[CallStats]]:
    """Wall-clock seconds of each repeat over all prompts, and the calls of the first timed repeat."""
    groups = _batches(prompt_ids, batch)
    for _ in range(warmup):
        run(groups[0])
    seconds, first = [], None
    for _ in range(max(1, repeats)):
        calls, total = [], 0.0
        for g in groups:
            t0 = time.perf_counter()
            calls.append(run(g))
            total += time.perf_counter() - t0
        seconds.append(total)
        first = first or calls
    return seconds, first


def measure_interleaved(runs: dict[str, Callable[[list[list[int]]], CallStats]], prompt_ids: list[list[int]],
                        batch: int, repeats: int, warmup: int) -> dict[str, tuple[list[float], list[CallStats]]]:
    """Like ``measure`` for several systems at once: each prompt group runs under every system in turn
    (the order rotating), so a machine whose load changes over the run slows all systems alike."""
    groups = _batches(prompt_ids, batch)
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name](groups[0])
    seconds: dict[str, list[float]] = {n: [] for n in names}
    first: dict[str, list[CallStats]] = {}
    for r in range(max(1, repeats)):
        totals, calls = dict.fromkeys(names, 0.0), {n: [] for n in names}
        for i, g in enumerate(groups):
            shift = (i + r) % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                calls[name].append(runs[name](g))
                totals[name] += time.perf_counter() - t0
        for n in names:
            seconds[n].append(totals[n])
            first.setdefault(n, calls[n])
    return {n: (seconds[n], first[n]) for n in names}
