"""`quicksilver eval ...`: HumanEval, infilling, likelihood, the speed-quality curve, reports."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import UserError, console, err_console, eval_app, threads_option, user_errors

EVAL_OUT = Path("docs/eval")


def _eval_progress(description: str):
    """A rich progress bar and the (stage, n, total) callback the eval functions call."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=False)
    tasks: dict[str, int] = {}

    def update(stage: str, n: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"{description}: {stage}", total=total)
        elif bar.tasks[tasks[stage]].finished:  # the same stage again (the curve's next setting)
            bar.reset(tasks[stage], total=total)
        bar.advance(tasks[stage], n)
    return bar, update


def _eval_system(model: Optional[str], endpoint: Optional[str], setting: str, block_length: int, cache: Optional[str],
                 batch_size: int, device: str, endpoint_model: Optional[str] = None, extra: Optional[str] = None,
                 threads: Optional[int] = None):
    import json

    from ..device import resolve_device
    from ..eval.systems import system_from_options
    from ..threads import apply_threads

    apply_threads(threads)
    device = resolve_device(device)
    if (batch_size is not None and batch_size <= 0) or block_length <= 0:
        raise UserError("--batch-size and --block-length must be positive")
    if extra:
        try:
            if not isinstance(json.loads(extra), dict):
                raise ValueError
        except ValueError:
            raise UserError("--extra must be a JSON object, e.g. '{\"steps\": 64}'") from None
    return system_from_options(model, endpoint, setting, block_length, cache, batch_size, device, endpoint_model, extra)


def _sandbox(timeout: float, memory_mb: int):
    from ..eval.sandbox import SandboxLimits

    if timeout <= 0 or memory_mb <= 0:
        raise UserError("--timeout and --memory-mb must be positive")
    from ..eval.boundary import SandboxUnavailable, require_boundary

    try:  # before any generation: an evaluation that cannot run its tests safely stops at once
        require_boundary()
    except SandboxUnavailable as e:
        raise UserError(f"cannot run generated code safely: {e}") from None
    return SandboxLimits(timeout_s=timeout, memory_mb=memory_mb)


def _eval_command_line(ctx: typer.Context) -> str:
    """The `quicksilver eval ...` command that reproduces the running one (options that differ from
    their defaults, long spelling), for the result files."""
    import shlex

    parts = ["quicksilver", "eval", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        default = param.default
        if isinstance(value, (list, tuple)):
            value, default = list(value), list(default or [])
        if value is None or value == [] or (value == default and param.name != "model"):
            continue
        flag = max(param.opts, key=len)
        for item in value if isinstance(value, list) else [value]:
            parts += [flag, shlex.quote(str(item))]
    return " ".join(parts)


def _finish(ctx: typer.Context, result: dict, system, setting: str, out: Path) -> None:
    from ..eval.report import stamp, summary_line, write_result

    result = stamp(result, system, setting, _eval_command_line(ctx))
    path = write_result(result, out)
    console.print(summary_line(result), highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {path}", highlight=False, markup=False)


_MODEL_HELP = "Bundled model name or checkpoint folder (or the model name sent to --endpoint)."
# The default decoding of every entry point (``eval.systems.DEFAULT_SETTING``, spelled out here so that
# the command's --help does not import torch; tests/test_cli_startup.py checks the two agree).
DEFAULT_SETTING = "fast"
_SETTING_HELP = ("Diffusion decoding: a preset (fast, the default of every entry point; reference, one token per "
                 "pass; quicksilver, llada, ...) or a setting such as dual-inc+thr0.7, fixed:K (K tokens per forward), "
                 "threshold:T, factor:F, entropy:B (docs/serving.md, \"Decoding settings\").")


@eval_app.command("humaneval")
@user_errors
def eval_humaneval(
    ctx: typer.Context,
    model: Optional[str] = typer.Option("coder-tiny", "--model", "-m", help=_MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL to test instead of a local model."),
    extra: Optional[str] = typer.Option(None, help="Extra JSON fields for each --endpoint request."),
    setting: str = typer.Option(DEFAULT_SETTING, help=_SETTING_HELP),
    block_length: int = typer.Option(32, help="Diffusion block length."),
    cache: Optional[str] = typer.Option(None, help="Diffusion KV cache: none, prefix or dual (default: the "
                                                    "setting's own; none for fixed/threshold/factor/entropy)."),
    n: int = typer.Option(1, help="Samples per problem."),
    k: List[int] = typer.Option([1], "--k", help="pass@k to report (repeatable; needs k <= n)."),
    temperature: float = typer.Option(0.0, help="0 is greedy (use n=1)."),
    seed: int = typer.Option(0, help="Seed for sampling at temperature > 0."),
    max_new_tokens: int = typer.Option(128, help="Tokens generated per completion."),
    limit: Optional[int] = typer.Option(None, help="Only this many problems, evenly spread (default all 164)."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts decoded together (default: 1 for a "
                                              "diffusion model on CPU, 8 otherwise)."),
    timeout: float = typer.Option(5.0, help="Wall-clock seconds per test run."),
    memory_mb: int = typer.Option(1024, help="Address-space limit per test run."),
    workers: int = typer.Option(2, help="Test runs at a time."),
    threads: Optional[int] = threads_option(),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for the result JSON."),
):
    """HumanEval pass@k: complete each problem, run its tests in the sandbox."""
    from ..eval.endpoint import EndpointError
    from ..eval.humaneval import run_humaneval

    if n < 1 or max_new_tokens < 1 or (limit is not None and limit < 1):
        raise UserError("--n, --max-new-tokens and --limit must be positive")
    bad = [x for x in k if not 1 <= x <= n]
    if bad:
        raise UserError(f"pass@{bad[0]} needs 1 <= k <= n (n={n})")
    system = _eval_system(model, endpoint, setting, block_length, cache, batch_size, device, extra=extra,
                          threads=threads)
    bar, update = _eval_progress("HumanEval")
    try:
        with bar:
            result = run_humaneval(system, n=n, ks=tuple(k), temperature=temperature, max_new_tokens=max_new_tokens,
                                   limit=limit, seed=seed, sandbox=_sandbox(timeout, memory_mb), workers=workers,
                                   progress=update)
    except (RuntimeError, EndpointError) as e:
        raise UserError(str(e)) from None
    _finish(ctx, result, system, system.describe(max_new_tokens, temperature), out)


@eval_app.command("infill")
@user_errors
def eval_infill(
    ctx: typer.Context,
    model: Optional[str] = typer.Option("coder-tiny", "--model", "-m", help=_MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (infills with the suffix field)."),
    extra: Optional[str] = typer.Option(None, help="Extra JSON fields for each --endpoint request."),
    mode: str = typer.Option("single-line", help="single-line, multi-line or random-span."),
    budget: Optional[int] = typer.Option(None, help="Hole length budget in tokens (default 24 / 64 / 48 by mode)."),
    setting: str = typer.Option(DEFAULT_SETTING, help=_SETTING_HELP),
    block_length: int = typer.Option(32, help="Diffusion block length within the hole."),
    limit: Optional[int] = typer.Option(None, help="Only this many tasks, evenly spread (default all)."),
    batch_size: Optional[int] = typer.Option(None, help="Tasks decoded together (default: 1 for a "
                                              "diffusion model on CPU, 8 otherwise)."),
    timeout: float = typer.Option(5.0, help="Wall-clock seconds per test run."),
    memory_mb: int = typer.Option(1024, help="Address-space limit per test run."),
    workers: int = typer.Option(2, help="Test runs at a time."),
    threads: Optional[int] = threads_option(),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for the result JSON."),
):
    """Infilling tasks from HumanEval's canonical solutions; pass = the filled program passes the tests."""
    from ..eval.endpoint import EndpointError
    from ..eval.infill import DEFAULT_BUDGET, MODES, run_infill

    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}")
    if (budget is not None and budget < 1) or (limit is not None and limit < 1):
        raise UserError("--budget and --limit must be positive")
    system = _eval_system(model, endpoint, setting, block_length, None, batch_size, device, extra=extra,
                          threads=threads)
    bar, update = _eval_progress(f"infill {mode}")
    try:
        with bar:
            result = run_infill(system, mode, limit=limit, budget=budget, sandbox=_sandbox(timeout, memory_mb),
                                workers=workers, progress=update)
    except (RuntimeError, EndpointError) as e:
        raise UserError(str(e)) from None
    how = {"diffusion": "native infilling (masks between prefix and suffix)",
           "autoregressive": "PSM fill-in-the-middle"}.get(system.kind, "the suffix field")
    _finish(ctx, result, system, f"{system.describe(budget or DEFAULT_BUDGET[mode])}; {how}", out)


@eval_app.command("ppl")
@user_errors
def eval_ppl(
    ctx: typer.Context,
    model: str = typer.Option("coder-tiny", "--model", "-m", help="Bundled model name or checkpoint folder."),
    data: Path = typer.Option(Path("data/stdlib-8k"), help="Dataset folder (its validation split is scored)."),
    seq_len: int = typer.Option(256, help="Window length in tokens."),
    windows: int = typer.Option(128, help="Evenly spaced non-overlapping windows."),
    samples: int = typer.Option(16, help="Diffusion: Monte Carlo mask samples per window."),
    batch_size: int = typer.Option(32, help="Sequences per forward pass."),
    seed: int = typer.Option(0, help="Seed of the mask draws."),
    threads: Optional[int] = threads_option(),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for the result JSON."),
):
    """Bits per byte on held-out text: the diffusion NELBO (with its standard error) or the twin's exact NLL."""
    from ..eval.likelihood import run_ppl

    if min(seq_len, windows, samples, batch_size) < 1 or seq_len < 2:
        raise UserError("--seq-len (at least 2), --windows, --samples and --batch-size must be positive")
    if not (data / "meta.json").is_file():
        raise UserError(f"{data} is not a dataset folder (no meta.json); build one with `quicksilver data build`")
    system = _eval_system(model, None, "fixed:1", 32, "none", 1, device, threads=threads)
    bar, update = _eval_progress("likelihood")
    with bar:
        result = run_ppl(system, data, seq_len, windows, samples, batch_size, seed, progress=update)
    _finish(ctx, result, system, "teacher-forced scoring (no decoding)", out)


@eval_app.command("curve")
@user_errors
def eval_curve(
    ctx: typer.Context,
    model: str = typer.Option("coder-tiny", "--model", "-m", help="Diffusion model."),
    ar_model: Optional[str] = typer.Option("coder-tiny-ar", help="Its AR twin ('' to leave out)."),
    setting: List[str] = typer.Option([], "--setting", "-s", help="Decoding settings (repeatable; default: "
                                      "fixed:1,2,4,8,32 and threshold:0.9,0.7,0.5)."),
    problems: int = typer.Option(20, help="HumanEval problems, evenly spread."),
    infill_tasks: int = typer.Option(100, help="Single-line infill tasks, evenly spread."),
    max_new_tokens: int = typer.Option(128, help="Tokens generated per HumanEval completion."),
    block_length: int = typer.Option(32, help="Diffusion block length."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts decoded together (default: 1 for a "
                                              "diffusion model on CPU, 8 otherwise)."),
    workers: int = typer.Option(2, help="Test runs at a time."),
    threads: Optional[int] = threads_option(),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for curve.json and curve.png."),
):
    """Speed-quality curve: pass rates against tokens per forward at several decoding settings (PNG)."""
    import json

    from ..eval.curve import DEFAULT_SETTINGS, run_curve
    from ..eval.report import curve_table, plot_curve

    if min(problems, infill_tasks, max_new_tokens) < 1:
        raise UserError("--problems, --infill-tasks and --max-new-tokens must be positive")
    settings = tuple(setting) or DEFAULT_SETTINGS
    diffusion = _eval_system(model, None, settings[0], block_length, "none", batch_size, device, threads=threads)
    if diffusion.causal:
        raise UserError(f"{model} is an autoregressive model; --model takes the diffusion model")
    from ..eval.systems import policy_from_setting

    for s in settings:
        policy_from_setting(s, max_new_tokens, block_length)  # a bad setting fails now, not after an hour
    twin = _eval_system(ar_model, None, "fixed:1", block_length, "none", batch_size, device) if ar_model else None
    bar, update = _eval_progress("curve")
    try:
        with bar:
            curve = run_curve(diffusion, twin, settings, problems, infill_tasks, max_new_tokens, workers=workers,
                              log=lambda m: bar.console.print(m, highlight=False, markup=False), progress=update)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    curve["command"] = _eval_command_line(ctx)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    plot_curve(curve, out / "curve.png")
    console.print(curve_table(curve), highlight=False, markup=False)
    console.print(f"wrote {out / 'curve.json'} and {out / 'curve.png'}", highlight=False, markup=False)


@eval_app.command("report")
@user_errors
def eval_report(
    results: Path = typer.Option(EVAL_OUT, help="Folder of result JSON files."),
    doc: Optional[Path] = typer.Option(None, help="Also rewrite the eval section (between the eval markers) of "
                                       "this file, e.g. docs/models.md."),
    model: List[str] = typer.Option(["coder-tiny", "coder-tiny-ar"], "--model", "-m", help="Models (columns)."),
):
    """Table of all results; with --doc, regenerate the evaluation section of that document."""
    import json

    from ..eval.report import load_results, markdown_table, models_section, update_doc

    if not results.is_dir():
        raise UserError(f"{results} is not a folder of results")
    found = load_results(results)
    if not found:
        raise UserError(f"{results} holds no result files")
    console.print(markdown_table(found), highlight=False, markup=False)
    if doc is not None:
        curve_file = results / "curve.json"
        curve = json.loads(curve_file.read_text()) if curve_file.is_file() else None
        png = None
        if (results / "curve.png").is_file():
            import os

            png = os.path.relpath(results / "curve.png", doc.parent)
        update_doc(doc, models_section(found, tuple(model), curve, png))
        console.print(f"updated the eval section of {doc}", highlight=False, markup=False)

