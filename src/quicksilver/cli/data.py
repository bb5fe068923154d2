"""`quicksilver data build` and `quicksilver data sft-from-code`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import UserError, data_app, console, err_console, user_errors


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

    from ..loading.checkpoint import BUNDLED_DIR
    from ..data import build_dataset, folder_source, stdlib_source
    from ..data.dedupe import MinHashConfig
    from ..data.pypi import load_packages
    from ..data.sdist import PypiSource
    from ..tokenizer import Tokenizer

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

    from ..data import folder_source, stdlib_source
    from ..data.sft_code import build_sft_jsonl

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


