"""``quicksilver edit`` and ``quicksilver json``: controllable generation on the command line.

Errors a user can cause end as one sentence and exit 2."""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import UserError, app, console, user_errors



@app.command()
@user_errors
def edit(
    file: Path = typer.Argument(..., help="The file to edit."),
    span: List[str] = typer.Option([], "--span", help="Lines to regenerate, L1:L2 (1-based, inclusive); repeat "
                                                      "for several spans (filled jointly)."),
    max_tokens: Optional[int] = typer.Option(None, help="Token budget per span (default: about twice the "
                                                        "span's tokens); a span may end early."),
    instruction: Optional[str] = typer.Option(None, help="Put this instruction before the file through the "
                                                         "chat template."),
    model: str = typer.Option("coder-tiny", "--model", "-m", help="Bundled model name or checkpoint folder."),
    steps: Optional[int] = typer.Option(None, help="Diffusion forward passes in all (default: one per token)."),
    temperature: float = typer.Option(0.0, help="0 is greedy."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling at temperature > 0."),
    write: bool = typer.Option(False, "--write", help="Rewrite FILE instead of printing a unified diff."),
):
    """Regenerate line spans of FILE (or its <|mask|> / <|mask:N|> placeholders) with every other byte
    kept; prints a unified diff, or rewrites the file with --write."""
    from ..api import load
    from ..control.edit import check_spans, line_spans, parse_placeholders

    if not file.is_file():
        raise UserError(f"no file at {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text") from None
    if max_tokens is not None and max_tokens < 1:
        raise UserError("--max-tokens must be a positive integer")
    ranges = []
    for item in span:
        lo, sep, hi = item.partition(":")
        if not sep:
            lo = hi = item
        try:
            ranges.append((int(lo), int(hi)))
        except ValueError:
            raise UserError(f"--span takes L1:L2 (line numbers), got '{item}'") from None
    if ranges:
        spans = line_spans(text, ranges, max_tokens)
    else:
        text, spans = parse_placeholders(text, max_tokens or 16)
    spans = check_spans(text, spans)
    lm = load(model)
    options = {"temperature": temperature, "seed": seed}
    if steps is not None:
        options["steps"] = steps
    result = lm.edit(text, spans=spans, instruction=instruction, **options)
    if write:
        file.write_text(result.text, encoding="utf-8")
        console.print(f"[dim]{file}: {len(spans)} span(s) rewritten · {result.nfe} forward passes · "
                      f"{result.seconds:.2f} s[/]", highlight=False)
        return
    diff = difflib.unified_diff(text.splitlines(keepends=True), result.text.splitlines(keepends=True),
                                fromfile=f"a/{file.name}", tofile=f"b/{file.name}")
    typer.echo("".join(diff), nl=False)

@app.command("json")
@user_errors
def json_command(
    prompt: str = typer.Argument(..., help="The prompt the JSON value follows."),
    schema: Path = typer.Option(..., "--schema", help="A JSON Schema file."),
    model: str = typer.Option("coder-tiny", "--model", "-m", help="Bundled model name or checkpoint folder."),
    string_tokens: int = typer.Option(6, help="Token budget of each string value."),
    temperature: float = typer.Option(0.0, help="0 is greedy."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling at temperature > 0."),
):
    """Generate a JSON value valid against --schema (the schema becomes a canvas template)."""
    from ..api import load
    from ..control import SchemaError

    try:
        spec = json.loads(schema.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise UserError(f"cannot read the schema file {schema}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{schema} is not JSON ({e.msg} at line {e.lineno})") from None
    if string_tokens < 1:
        raise UserError("--string-tokens must be a positive integer")
    lm = load(model)
    try:
        result = lm.generate_json(prompt, spec, string_tokens=string_tokens, temperature=temperature, seed=seed)
    except SchemaError as e:
        raise UserError(str(e)) from None
    typer.echo(result.text)
    console.print(f"[dim]{lm.name}: {result.tokens} tokens ({result.fixed_tokens} fixed by the template) · "
                  f"{result.nfe} forward passes · {result.seconds:.2f} s[/]", highlight=False)
