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

The diffusion model infills natively: the canvas is [prefix | mask * budget | suffix] and the masked
positions are decoded with the same low-confidence commit rules as ``sampling`` (``rules``).  The
length of the hole is unknown, so the hole has a length budget and the span's end is found in the
fill: at an end-of-text token, at the start of text that repeats the suffix, and for single-line tasks
at the end of the first non-blank line.  The AR twin infills through its prefix-suffix-middle format
and its fill is trimmed by the same rules, so both systems are judged alike.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..sampling import DecodePolicy, rules
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


# -- native diffusion infilling ---------------------------------------------------------------------
def _banned(cfg) -> list[int]:
    ids = {cfg.mask_token_id, cfg.pad_token_id, cfg.fim_prefix_id, cfg.fim_suffix_id, cfg.fim_middle_id}
    ids.difference_update(getattr(cfg, "stop_ids", [cfg.eos_token_id]))  # end of text is allowed: it ends the span
    return sorted(i for i in ids if 0 <= i < cfg.vocab_size)


def _choose(policy: DecodePolicy, logits: torch.Tensor, proposal: torch.Tensor, candidates: torch.Tensor,
            count: torch.Tensor | None) -> torch.Tensor:
    """Which candidate positions (B, T) to commit; ``logits``/``proposal`` cover the candidates in order."""
    def spread(values: torch.Tensor, fill: float) -> torch.Tensor:
        full = torch.full(candidates.shape, fill, dtype=values.dtype)
        full[candidates] = values
        return full

    if policy.score_tempered and policy.temperature > 0:
        logits = logits / policy.temperature

    if policy.commit == "entropy":
        return rules.commit_entropy_bound(spread(rules.entropy(logits), float("inf")), candidates, policy.entropy_bound)
    kind = "probability" if policy.commit == "factor" and policy.score == "entropy" else policy.score
    scores = spread(rules.score_positions(logits, proposal, kind), float("-inf"))
    if policy.commit == "fixed":
        return rules.commit_top(scores, candidates, count)
    if policy.commit == "threshold":
        return rules.commit_threshold(scores, candidates, policy.threshold)
    return rules.commit_factor(scores, candidates, policy.factor)


@torch.no_grad()
def diffusion_infill(model, prefixes: list[list[int]], suffixes: list[list[int]], budget: int,
                     policy: DecodePolicy) -> tuple[list[list[int]], list[int]]:
    """Fill ``budget`` masked positions between each prefix and suffix; returns the fills (cut at the
    first end of text) and the forward passes each row took part in.

    The hole is decoded in blocks of ``policy.block_length`` from left to right; within a block each
    step runs the whole canvas, proposes tokens for its masked positions and commits some of them by
    the policy's rule (the linear schedule of ``policy.steps`` for ``fixed``; the threshold, factor or
    entropy-bound rule otherwise), exactly as the sampler does for a completion.
    """
    cfg = model.config
    device = next(model.parameters()).device
    b = len(prefixes)
    width = max(len(p) + budget + len(s) for p, s in zip(prefixes, suffixes))
    canvas = torch.full((b, width), cfg.pad_token_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    starts = []
    for row, (p, s) in enumerate(zip(prefixes, suffixes)):
        ids = list(p) + [cfg.mask_token_id] * budget + list(s)
        canvas[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        starts.append(len(p))
    positions = torch.arange(width).expand(b, width)
    start_t = torch.tensor(starts)[:, None]
    col = torch.arange(width)[None, :]
    padded = not bool(attention.all())
    generator = None
    if policy.temperature > 0:
        generator = torch.Generator().manual_seed(policy.seed if policy.seed is not None else 0)
    banned = _banned(cfg)
    block = max(1, min(policy.block_length, budget))
    total_steps = budget if policy.steps is None else policy.steps
    forwards = torch.zeros(b, dtype=torch.long)
    for lo in range(0, budget, block):
        size = min(block, budget - lo)
        region = (col >= start_t + lo) & (col < start_t + lo + size)
        n_steps = max(1, min(size, round(total_steps * size / budget)))
        schedule = rules.transfer_counts(size, n_steps)
        step = 0
        while True:
            candidates = region & (canvas == cfg.mask_token_id)
            active = candidates.any(1)
            if not bool(active.any()):
                break
            rows = active.nonzero().squeeze(1)
            x = canvas[rows].to(device)
            hidden = model.hidden_states(x, positions=positions[rows].to(device),
                                         attention_mask=attention[rows].to(device) if padded else None)
            if getattr(cfg, "logits_shift", False):
                # Dream-style: the prediction for position j is the output at j - 1 (position 0, never
                # a hole after a non-empty prefix, keeps its own).
                hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
            forwards[rows] += 1
            cand = candidates[rows]
            logits = rules.suppress(model.head(hidden[cand.to(device)]).float().cpu(), banned)
            if policy.top_k:
                logits = rules.top_k_filter(logits, policy.top_k)
            if policy.top_p < 1:
                logits = rules.top_p_filter(logits, policy.top_p)
            proposal = rules.sample_tokens(logits, policy.temperature, generator)
            count = None
            if policy.commit == "fixed" and policy.schedule == "dream":
                count = rules.dream_transfer_counts(cand.sum(1), step, n_steps)
            elif policy.commit == "fixed":
                count = torch.full((rows.numel(),), schedule[min(step, len(schedule) - 1)], dtype=torch.long)
            chosen = _choose(policy, logits, proposal, cand, count)
            proposed = canvas[rows].clone()
            proposed[cand] = proposal
            canvas[rows] = torch.where(chosen, proposed, canvas[rows])
            step += 1
    fills = []
    stops = getattr(cfg, "stop_ids", [cfg.eos_token_id])
    for row, start in enumerate(starts):
        ids = canvas[row, start:start + budget].tolist()
        cut = [i for i, t in enumerate(ids) if t in stops]
        fills.append(ids[:cut[0]] if cut else ids)
    return fills, forwards.tolist()


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


__all__ = ["MODES", "InfillTask", "build_tasks", "select", "boundary", "reference_fill", "trim_fill",
           "diffusion_infill", "run_infill"]
