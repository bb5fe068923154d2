"""`quicksilver train`, `quicksilver trajectories` (data for `objective = "distill"`) and `quicksilver export`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import UserError, app, console, threads_option, user_errors
from .overrides import parse_overrides


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="TOML run config, e.g. configs/coder-tiny.toml."),
    resume: bool = typer.Option(False, help="Continue from the run's latest checkpoint."),
    overwrite: bool = typer.Option(False, help="Delete the run already in train.out_dir and start over (without "
                                               "this or --resume a non-empty out_dir is refused)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    threads: Optional[int] = threads_option("torch threads (default: QUICKSILVER_THREADS, else the config's "
                                            "train.threads, else half the CPUs, at least 1)."),
):
    """Train a diffusion model or its AR twin from a TOML config."""
    import os

    from ..threads import ENV, resolve_threads
    from ..training.train import load_run_config
    from ..training.train import train as run_training

    run = load_run_config(config, parse_overrides(set_))
    if threads is not None or os.environ.get(ENV, "").strip() or run.train.threads <= 0:
        run.train.threads = resolve_threads(threads)[0]
    state = run_training(run, resume=resume, progress=progress, log=console.print, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    console.print(f"done: step {state['step']}, {state['tokens']:,} tokens, best validation loss "
                  f"{state['best_val']:.4f} nats/token at step {state['best_step']}; "
                  f"best checkpoint in {Path(run.train.out_dir) / 'best'}")


@app.command()
@user_errors
def trajectories(
    model: str = typer.Option("coder-tiny-ar", "--model", "-m", help="Source model: the AR twin or the block model itself."),
    data: Path = typer.Option(Path("data/stdlib-8k"), help="Dataset folder; prompts are windows of its training split."),
    out: Path = typer.Option(..., help="Trajectory file to write (.safetensors)."),
    prompts: int = typer.Option(384, help="How many prompts."),
    prompt_len: int = typer.Option(128, help="Prompt tokens (a multiple of the block model's block size)."),
    gen_len: int = typer.Option(128, help="Tokens generated per prompt (prompt_len + gen_len = train.seq_len)."),
    batch_size: int = typer.Option(8, help="Prompts decoded together."),
    seed: int = typer.Option(0, help="Seed of the prompt windows."),
    threads: int = typer.Option(1, help="torch threads."),
):
    """Decode training-split prompts greedily with a model and save them for `objective = "distill"`."""
    import torch

    from ..loading.checkpoint import load_model
    from ..training.distill import make_trajectories

    if min(prompts, prompt_len, gen_len, batch_size, threads) <= 0:
        raise UserError("--prompts, --prompt-len, --gen-len, --batch-size and --threads must be positive")
    torch.set_num_threads(threads)
    net, tokenizer = load_model(model, device="cpu", dtype=torch.float32)
    meta = make_trajectories(net, tokenizer, data, out, prompts, prompt_len, gen_len, batch_size, seed,
                             source=model, log=lambda m: console.print(m, highlight=False))
    console.print(f"wrote {out}: {meta['prompts']} trajectories, {meta['generated_tokens']:,} generated tokens "
                  f"in {meta['seconds']} s")


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

    from ..loading.checkpoint import load_model, save_pretrained

    if dtype not in ("bf16", "fp32"):
        raise UserError("--dtype must be bf16 or fp32")
    if not run_dir.is_dir():
        raise UserError(f"no run folder at {run_dir}")
    source = run_dir / "best" if (run_dir / "best").is_dir() else run_dir
    if _is_drafter(source):  # a draft head run: the head alone, for <model folder>/drafter/
        from ..drafter import export_drafter
        params = export_drafter(source, out, torch.bfloat16 if dtype == "bf16" else torch.float32)
        console.print(f"exported the draft head {source} to {out} ({params:,} parameters, {dtype})")
        return
    model, tokenizer = load_model(source)
    save_pretrained(model, tokenizer, out, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                    max_shard_bytes=shard_mb * 1_000_000 if shard_mb else None)
    summary = source / "train_summary.json"
    if summary.is_file():
        shutil.copy(summary, out / "train_summary.json")
    console.print(f"exported {source} to {out} ({model.num_parameters():,} parameters, {dtype})")


def _is_drafter(folder: Path) -> bool:
    import json
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "quicksilver-drafter"
    except (OSError, ValueError, AttributeError):
        return False
