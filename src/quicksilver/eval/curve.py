"""The speed-quality curve: HumanEval pass@1 and single-line infill pass rate of the diffusion model
at several decoding settings (tokens per forward from 1 up to a whole block per step), with its AR
twin (one token per forward) as the reference point."""
from __future__ import annotations

from collections.abc import Callable

from .humaneval import load_problems, run_humaneval
from .infill import run_infill
from .sandbox import SandboxLimits
from .completion import Usage

DEFAULT_SETTINGS = ("fixed:1", "fixed:2", "fixed:4", "fixed:8", "fixed:32", "threshold:0.9", "threshold:0.7",
                    "threshold:0.5")


def _point(system, setting: str | None, problems: dict, infill_limit: int, max_new_tokens: int,
           sandbox: SandboxLimits, workers: int, progress) -> dict:
    if setting is not None:
        system.setting = setting
    system.usage = Usage()
    he = run_humaneval(system, problems=problems, max_new_tokens=max_new_tokens, sandbox=sandbox, workers=workers,
                       progress=progress)
    he_usage = system.usage.to_dict()
    system.usage = Usage()
    inf = run_infill(system, "single-line", limit=infill_limit, problems=problems if infill_limit is None else None,
                     sandbox=sandbox, workers=workers, progress=progress)
    inf_usage = system.usage.to_dict()
    return {"setting": system.describe(max_new_tokens), "setting_short": setting or "AR",
            "kind": system.kind,
            "humaneval": {"pass@1": he["pass@1"], "solved": he["solved"], **he_usage},
            "infill": {"pass_rate": inf["pass_rate"], "passed": inf["passed"], "tasks": inf["tasks"], **inf_usage}}


def run_curve(diffusion, twin=None, settings: tuple[str, ...] = DEFAULT_SETTINGS, problems: int = 20,
              infill_tasks: int = 100, max_new_tokens: int = 128, sandbox: SandboxLimits | None = None,
              workers: int = 2, log: Callable[[str], None] = print, progress=None) -> dict:
    """Points of the curve for the diffusion system at each setting, and one for the twin."""
    sandbox = sandbox or SandboxLimits(timeout_s=5.0)
    chosen = load_problems(problems)
    points: dict[str, list[dict]] = {diffusion.name: []}
    for setting in settings:
        p = _point(diffusion, setting, chosen, infill_tasks, max_new_tokens, sandbox, workers, progress)
        points[diffusion.name].append(p)
        log(f"{diffusion.name} {setting}: HumanEval pass@1 {100 * p['humaneval']['pass@1']:.1f}% at "
            f"{p['humaneval']['tokens_per_forward']} tokens/forward; infill {100 * p['infill']['pass_rate']:.1f}% at "
            f"{p['infill']['tokens_per_forward']} tokens/forward")
    if twin is not None:
        p = _point(twin, None, chosen, infill_tasks, max_new_tokens, sandbox, workers, progress)
        points[twin.name] = [p]
        log(f"{twin.name}: HumanEval pass@1 {100 * p['humaneval']['pass@1']:.1f}%; infill "
            f"{100 * p['infill']['pass_rate']:.1f}%")
    return {"eval": "curve", "points": points, "max_new_tokens": max_new_tokens,
            "scope": {"humaneval": f"{len(chosen)} HumanEval problems evenly spread, n=1, {max_new_tokens} new tokens",
                      "infill": f"{infill_tasks} single-line tasks evenly spread"}}


__all__ = ["DEFAULT_SETTINGS", "run_curve"]
