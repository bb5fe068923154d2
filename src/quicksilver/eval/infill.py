"""Infilling: HumanEval-Infilling-style tasks built from HumanEval's canonical solutions.

Tasks (as Bavarian et al. 2022 built HumanEval-Infilling; our own construction from the 164 problems):

* ``single-line``: each non-blank line of each canonical solution is masked in turn;
* ``multi-line``: every contiguous span of 2 or more lines whose first and last lines are non-blank;
* ``random-span``: ``spans_per_problem`` random character spans per solution (seeded).

A task passes when prompt + prefix + fill + suffix passes the problem's tests in the sandbox.

Where the cuts fall matters to a BPE tokenizer: a newline and the next line's indentation are one
token, so a prefix that ends with a bare newline shows the model a token sequence it never saw in
training.  In the line modes the newline before the hole is therefore moved into the hole and the
newline that ends the hole's last line into the suffix (``boundary``): both cuts then fall where the
tokenizer splits by itself, and the expected fill is "\n" + the masked lines without their last newline.

The diffusion model infills natively: the canvas is [prefix | mask * budget | suffix]
(``sampling.canvas.Canvas.infill``), filled by the same block decoder as a completion.  The
length of the hole is unknown, so the hole has a length budget and the span's end is found in the
fill: at an end-of-text token, at the start of text that repeats the suffix, and for single-line tasks
at the end of the first non-blank line.  The AR twin infills through its prefix-suffix-middle format
and its fill is trimmed by the same rules, so both systems are judged alike.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .humaneval import build_program, load_problems
from .sandbox import SandboxLimits, run_many

MODES = ("single-line", "multi-line", "random-span")
DEFAULT_BUDGET = {"single-line": 24, "multi-line": 64, "random-span": 48}


@dataclass
class InfillTask:
    task_id: str  # e.g. "HumanEval/0/single-line/3"
    problem_id: str
    mode: str
    prefix: str  # prompt + solution text before the hole
    middle: str  # the reference fill
    suffix: str


def _lines(solution: str) -> list[str]:
    return solution.splitlines(keepends=True)


def build_tasks(problems: dict[str, dict], mode: str, spans_per_problem: int = 10, seed: int = 0) -> list[InfillTask]:
    """Infilling tasks of one mode, in problem order."""
    if mode not in MODES:
        raise ValueError(f"unknown infilling mode '{mode}': choose from {', '.join(MODES)}")
    tasks: list[InfillTask] = []
    rng = random.Random(seed)
    for pid, problem in problems.items():
        prompt, solution = problem["prompt"], problem["canonical_solution"]
        lines = _lines(solution)
        if mode == "single-line":
            for i, line in enumerate(lines):
                if line.strip():
                    tasks.append(InfillTask(f"{pid}/{mode}/{i}", pid, mode, prompt + "".join(lines[:i]), line,
                                            "".join(lines[i + 1:])))
        elif mode == "multi-line":
            for i in range(len(lines)):
                for j in range(i + 2, len(lines) + 1):
                    if lines[i].strip() and lines[j - 1].strip():
                        tasks.append(InfillTask(f"{pid}/{mode}/{i}-{j}", pid, mode, prompt + "".join(lines[:i]),
                                                "".join(lines[i:j]), "".join(lines[j:])))
        else:
            for n in range(spans_per_problem):
                a, b = sorted(rng.sample(range(len(solution) + 1), 2))
                tasks.append(InfillTask(f"{pid}/{mode}/{n}", pid, mode, prompt + solution[:a], solution[a:b],
                                        solution[b:]))
    return tasks


def select(tasks: list[InfillTask], limit: int | None) -> list[InfillTask]:
    """``limit`` tasks evenly spread over the list (all when None)."""
    if limit is None or limit >= len(tasks):
        return tasks
    step = len(tasks) / limit
    return [tasks[int(i * step)] for i in range(limit)]


def boundary(task: InfillTask) -> tuple[str, str]:
    """The (prefix, suffix) a system is shown.  Line modes: the newline before the hole moves into it
    and the newline after its last line moves into the suffix, so the cuts fall on token boundaries."""
    if task.mode in ("single-line", "multi-line") and task.prefix.endswith("\n"):
        return task.prefix.rstrip("\n"), "\n" + task.suffix  # blank lines before the hole go into it too
    return task.prefix, task.suffix


def reference_fill(task: InfillTask) -> str:
    """What a perfect system writes into the hole between ``boundary(task)``."""
    prefix, suffix = boundary(task)
    whole = task.prefix + task.middle + task.suffix
    return whole[len(prefix):len(whole) - len(suffix)] if whole.endswith(suffix) else task.middle


# -- the end of the span ----------------------------------------------------------------------------
def trim_fill(fill: str, suffix: str, mode: str) -> str:
    """Where the filled span ends (the fill goes between the ``boundary`` prefix and suffix).

    Single-line holes: the first non-blank line, on a line of its own.  Otherwise: just before the
    fill starts repeating the suffix (its first non-blank line, or for a suffix that starts mid-line,
    that partial line when it is long enough not to match by chance); in multi-line holes the fill
    starts a new line and its trailing newlines go (the suffix brings one).
    """
    if mode == "single-line":
        for line in fill.splitlines():
            if line.strip():
                return "\n" + line
        return "\n"
    if mode == "multi-line":
        cut = _before_suffix(fill, suffix).rstrip("\n")
        return cut if cut.startswith("\n") else "\n" + cut
    return _before_suffix(fill, suffix)


def _before_suffix(fill: str, suffix: str) -> str:
    head = ""
    if suffix[:1] not in ("", "\n") and not suffix[:1].isspace():
        head = suffix.split("\n", 1)[0]  # the hole ends mid-line
        if len(head.strip()) < 6:
            head = ""
        if head and head in fill:
            return fill[:fill.index(head)]
    for line in suffix.splitlines():
        if line.strip():
            head = line
            break
    if head.strip():
        lines = fill.splitlines(keepends=True)
        pos = 0
        for line in lines:
            if line.rstrip("\n") == head.rstrip("\n") and pos > 0:
                return fill[:pos]
            pos += len(line)
    return fill


# -- the evaluation ---------------------------------------------------------------------------------
def run_infill(system, mode: str = "single-line", limit: int | None = None, budget: int | None = None,
               problems: dict[str, dict] | None = None, sandbox: SandboxLimits | None = None, workers: int = 2,
               spans_per_problem: int = 10, seed: int = 0,
               progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Fill every task of ``mode`` with ``system`` and run the results against the tests."""
    problems = problems if problems is not None else load_problems()
    tasks = select(build_tasks(problems, mode, spans_per_problem, seed), limit)
    budget = budget or DEFAULT_BUDGET[mode]
    sandbox = sandbox or SandboxLimits(timeout_s=5.0)
    done = [0]

    def tick(stage: str, n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(stage, n, len(tasks))

    shown = [boundary(t) for t in tasks]
    fills = system.infill(shown, budget, on_batch=lambda n: tick("infill", n))
    middles = [trim_fill(f.text, suffix, mode) for f, (_, suffix) in zip(fills, shown)]
    programs = [build_program(problems[t.problem_id], prefix + m + suffix, prompt="")
                for t, m, (prefix, suffix) in zip(tasks, middles, shown)]
    results = run_many(programs, sandbox, workers=workers,
                       on_done=lambda i, r: progress("test", 1, len(tasks)) if progress else None)
    per_task = [{"task_id": t.task_id, "passed": r.passed, "status": r.status, "reason": r.reason(),
                 "fill": m, "reference": t.middle} for t, m, r in zip(tasks, middles, results)]
    passed = sum(r.passed for r in results)
    exact = sum(m.strip() == t.middle.strip() for m, t in zip(middles, tasks))
    return {"eval": "infill", "mode": mode, "tasks": len(tasks), "passed": passed,
            "pass_rate": passed / len(tasks) if tasks else 0.0, "exact_match": exact / len(tasks) if tasks else 0.0,
            "budget": budget, "limit": limit, "per_task": per_task,
            "isolation": results[0].isolation if results else []}


__all__ = ["MODES", "InfillTask", "build_tasks", "select", "boundary", "reference_fill", "trim_fill", "run_infill"]
