"""How many torch threads decoding and training use: ``--threads``, else ``QUICKSILVER_THREADS``, else
``OMP_NUM_THREADS`` (torchrun sets it), else a measured default.

Why a default of our own: torch starts one thread per core.  On a small machine that is doing
anything else (a second process, the server's own threads, another user) those threads wait on
each other, and decoding slowed 10-20x in the reports that led here.  The rule, half the CPUs this
process may use and at least one, gives one thread on a 2-CPU machine; ``docs/benchmarks.md``
("Threads") has the measurement behind it (one thread against torch's default on a short decode,
interleaved, medians) and what was not measured (machines with more CPUs).
"""
from __future__ import annotations

import os

ENV = "QUICKSILVER_THREADS"


class ThreadsError(ValueError):
    """A thread count that is not a positive integer (one sentence)."""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    return max(1, available_cpus() // 2)


def resolve_threads(option: int | None = None) -> tuple[int, str]:
    """The thread count and where it came from (for the log line): the option, the environment
    variable or the default."""
    if option is not None:
        if option < 1:
            raise ThreadsError("--threads must be a positive integer")
        return option, "--threads"
    raw = os.environ.get(ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ThreadsError(f"{ENV} must be a positive integer, got '{raw}'")
        return int(raw), ENV
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:  # torchrun sets it per process; so do careful users
        return int(omp), "OMP_NUM_THREADS"
    return default_threads(), f"default: half of {available_cpus()} CPU(s)"


def apply_threads(option: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op thread count by ``resolve_threads``; returns what it picked and why."""
    import torch

    count, source = resolve_threads(option)
    torch.set_num_threads(count)
    return count, source


__all__ = ["ENV", "ThreadsError", "available_cpus", "default_threads", "resolve_threads", "apply_threads"]
