"""The package has no import cycles, and no part imports what the architecture says it must not know
(docs/architecture.md): each module can be understood (and imported) from those below it.

The graph is read with ``ast`` by ``scripts/import_graph.py`` (which says which imports count and why:
imports inside functions count, those under ``if TYPE_CHECKING:`` do not).  The checker is first shown
to find cycles on a small package written here, so that an empty answer on the real one means something.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_a_cycle_through_a_lazy_relative_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from .sub.high import g\n    return g\n",
        "sub/__init__.py": "",
        "sub/high.py": "from ..low import f\n\ndef g():\n    return f\n",
        "other.py": "import pkg.low\n",
    })
    graph = import_graph.import_graph(root)
    assert graph["pkg.low"] == {"pkg.sub.high": 2}
    assert graph["pkg.sub.high"] == {"pkg.low": 1}
    assert graph["pkg.other"] == {"pkg.low": 1}
    assert import_graph.cycles(graph) == [["pkg.low", "pkg.sub.high"]]


def test_type_checking_imports_and_submodule_names_are_read_as_documented(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from . import a\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\nelse:\n    from . import c\n",
        "b.py": "from . import a\n",
        "c.py": "",
    })
    graph = import_graph.import_graph(root)
    assert graph["pkg"] == {"pkg.a": 1}
    assert graph["pkg.a"] == {"pkg.c": 5}  # b only under TYPE_CHECKING: never imported at run time
    assert import_graph.cycles(graph) == []
    assert import_graph.layers(graph) == [["pkg.c"], ["pkg.a"], ["pkg", "pkg.b"]]


def test_quicksilver_has_no_import_cycle():
    graph = import_graph.import_graph(ROOT / "src" / "quicksilver")
    assert "quicksilver.loading.checkpoint" in graph and "quicksilver.eval.systems" in graph
    found = import_graph.cycles(graph)
    assert not found, "import cycles: " + " | ".join(import_graph.describe_cycle(graph, c) for c in found)


# What each part must not import: the promises of docs/architecture.md that an import would break.
# The foundations know nothing built on them; sampling is functions over a model; the engine holds no
# HTTP; loading and training do not reach up into serving or evaluation.
_ABOVE_FOUNDATIONS = {"sampling", "loading", "training", "eval", "engine", "server", "api", "backend", "live", "cli"}
MUST_NOT_IMPORT = {
    "config": _ABOVE_FOUNDATIONS, "model": _ABOVE_FOUNDATIONS, "tokenizer": _ABOVE_FOUNDATIONS,
    "chat": _ABOVE_FOUNDATIONS, "diffusion": _ABOVE_FOUNDATIONS,
    "sampling": {"loading", "training", "eval", "engine", "server", "api", "cli"},
    "loading": {"training", "eval", "engine", "server", "cli"},
    "training": {"eval", "engine", "server", "cli"},
    "engine": {"server", "eval", "training", "cli"},
    "eval": {"server", "training", "cli"},
}
HTTP_PACKAGES = {"fastapi", "starlette", "uvicorn", "pydantic", "httpx"}


def test_each_part_imports_only_what_the_architecture_allows():
    graph = import_graph.import_graph(ROOT / "src" / "quicksilver")
    broken = [f"{a}:{line} imports {b}" for a, edges in graph.items() for b, line in edges.items()
              if import_graph.part_of(b) in MUST_NOT_IMPORT.get(import_graph.part_of(a), ())]
    assert not broken, broken


def test_only_the_server_and_the_cli_speak_http():
    outside = import_graph.outside_imports(ROOT / "src" / "quicksilver")
    speaking = {m for m, names in outside.items() if names & HTTP_PACKAGES}
    assert speaking and all(import_graph.part_of(m) in ("server", "cli") for m in speaking), sorted(speaking)


def test_the_rules_catch_a_forbidden_import(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "model.py": "def f():\n    from .server import app\n",
                               "server.py": "import fastapi\napp = 1\n"})
    graph = import_graph.import_graph(root)
    assert graph["pkg.model"] == {"pkg.server": 2}
    assert import_graph.part_of("pkg.model") == "model" and "server" in MUST_NOT_IMPORT["model"]
    assert import_graph.outside_imports(root)["pkg.server"] == {"fastapi"}
