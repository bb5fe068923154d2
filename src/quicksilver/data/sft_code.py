"""A first instruction set made from Python source: write the body of a documented function.

For every function (or method) with a docstring, the prompt is an instruction line plus the
function's signature and docstring, and the response is the rest of its body, as written.  The
split of each example follows its file's split in the pre-training corpus (``split_of``), so SFT
validation examples come from files no model was pre-trained on.
"""
from __future__ import annotations

import ast
import json
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .corpus import Document, split_of

INSTRUCTION = "Complete the body of this Python function so that it does what its docstring says."
MIN_BODY_LINES = 2  # one-liners (``return self._x``, ``pass``) teach little
MAX_BODY_CHARS = 2_000  # long bodies would not fit a small model's sequence length anyway
MAX_DOC_CHARS = 1_500


@dataclass(frozen=True)
class CodeExample:
    prompt: str
    response: str
    where: str  # source/path:qualified_name
    split: str

    def to_json(self) -> str:
        return json.dumps({"prompt": self.prompt, "response": self.response, "source": self.where,
                           "split": self.split}, ensure_ascii=False)


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def examples_from_source(text: str, counts: Counter | None = None) -> Iterator[tuple[str, str, str]]:
    """(qualified name, prompt, response) for each documented function of one Python file."""
    counts = counts if counts is not None else Counter()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        counts["files_unparsable"] += 1
        return
    lines = text.splitlines(keepends=True)
    for name, fn in _functions(tree):
        doc = ast.get_docstring(fn, clean=False)
        if doc is None:
            counts["no_docstring"] += 1
            continue
        doc_node, rest = fn.body[0], fn.body[1:]
        if not rest:
            counts["no_body"] += 1
            continue
        # The header: decorators, signature and docstring exactly as written (get_source_segment
        # would drop the first line's indentation, which the body's indentation depends on).
        start = (fn.decorator_list[0].lineno if fn.decorator_list else fn.lineno) - 1
        header = "".join(lines[start:doc_node.end_lineno])
        body = "".join(lines[doc_node.end_lineno:fn.end_lineno])
        if ast.get_source_segment(text, doc_node) is None or not body.strip():
            counts["no_body"] += 1
            continue
        if len([ln for ln in body.splitlines() if ln.strip()]) < MIN_BODY_LINES:
            counts["trivial_body"] += 1
            continue
        if len(body) > MAX_BODY_CHARS or len(doc) > MAX_DOC_CHARS:
            counts["too_long"] += 1
            continue
        header, body = _dedent_together(header, body)
        counts["examples"] += 1
        yield name, f"{INSTRUCTION}\n\n```python\n{header}", f"{body}```"


def _dedent_together(header: str, body: str) -> tuple[str, str]:
    """Remove the common indentation of a method so that it reads as top-level code."""
    joined = textwrap.dedent(header + body)
    n = len(header.splitlines())
    parts = joined.splitlines(keepends=True)
    return "".join(parts[:n]), "".join(parts[n:])


def build_sft_jsonl(documents: Iterable[Document], out: str | Path, val_percent: float = 2.0) -> dict:
    """Write one JSON line per example (sorted by source and path: deterministic); return counts."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in sorted(documents, key=lambda d: (d.source, d.path)):
            if not doc.path.endswith(".py"):
                continue
            counts["files"] += 1
            split = split_of(f"{doc.source}/{doc.path}", val_percent)
            for name, prompt, response in examples_from_source(doc.text, counts):
                if (prompt, response) in seen:
                    counts["duplicates"] += 1
                    counts["examples"] -= 1
                    continue
                seen.add((prompt, response))
                f.write(CodeExample(prompt, response, f"{doc.source}/{doc.path}:{name}", split).to_json() + "\n")
                counts[f"{split}_examples"] += 1
    tmp.replace(out)
    return dict(sorted(counts.items()))
