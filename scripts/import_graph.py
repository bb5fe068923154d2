"""The import graph of the ``quicksilver`` package, read from the source with ``ast`` (nothing is imported).

    python scripts/import_graph.py            # layers of the top-level parts, then any import cycle
    python scripts/import_graph.py --modules  # the same, module by module

An edge A -> B means module A imports module B somewhere in its file.  Imports inside functions count
as much as those at the top of a file: a lazy import only moves the moment of the import, and a cycle
through one is still two modules that each need the other (the three cycles this check was written
against all had a lazy import on one side).  Imports under ``if TYPE_CHECKING:`` are left out: they never
run and only name types for annotations.  ``import a.b.c`` is an edge to ``a.b.c`` alone, not to the
``__init__`` of ``a`` and ``a.b``: a package is set up before its submodules, so that path never enters a
half-initialised module; an explicit ``from a import name`` is an edge to ``a`` (or to ``a.name`` when
that is a module).  ``tests/test_import_graph.py`` fails on any cycle.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "quicksilver"


def module_files(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` file under the package."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a file, wherever it sits, except those under ``if TYPE_CHECKING:``."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return sorted(out, key=lambda n: n.lineno)


def import_graph(package_dir: Path = SRC) -> dict[str, dict[str, int]]:
    """Module -> {imported module of the same package: line of the first such import}."""
    modules = module_files(package_dir)
    root = package_dir.name
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in modules.items():
        edges: dict[str, int] = {}
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here[:len(here) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                if target.split(".")[0] == root and target in modules and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def outside_imports(package_dir: Path = SRC) -> dict[str, set[str]]:
    """Module -> top-level names of the other packages it imports (``fastapi``, ``torch`` ...)."""
    out: dict[str, set[str]] = {}
    for name, (path, _) in module_files(package_dir).items():
        found = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif not node.level and node.module:
                found.add(node.module.split(".")[0])
        found.discard(package_dir.name)
        out[name] = found
    return out


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    inside = set(component)
    return "; ".join(f"{a}:{line} -> {b}" for a in component for b, line in graph[a].items() if b in inside)


def part_of(module: str) -> str:
    """The top-level part a module belongs to: ``quicksilver.sampling.rules`` -> ``sampling``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(package __init__)"


def collapse(graph: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    """The graph between top-level parts (``sampling``, ``loading``, ``model`` ...)."""
    parts: dict[str, set[str]] = {}
    for a, edges in graph.items():
        parts.setdefault(part_of(a), set()).update(part_of(b) for b in edges if part_of(b) != part_of(a))
    return parts


def layers(graph: dict[str, set[str]] | dict[str, dict[str, int]]) -> list[list[str]]:
    """Layer 0 imports nothing of the package; layer n imports something of layer n-1 and nothing above.
    Raises ``ValueError`` on a cycle."""
    level: dict[str, int] = {}
    remaining = set(graph)
    while remaining:
        ready = [m for m in remaining if all(d in level for d in graph[m] if d != m)]
        if not ready:
            raise ValueError(f"import cycle among {sorted(remaining)}")
        for m in ready:
            level[m] = 1 + max((level[d] for d in graph[m] if d != m), default=-1)
        remaining.difference_update(ready)
    out: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for m, n in level.items():
        out[n].append(m)
    return [sorted(x) for x in out]


def main(argv: list[str]) -> int:
    graph = import_graph()
    found = cycles(graph)
    view = graph if "--modules" in argv else collapse(graph)
    try:
        for n, members in enumerate(layers(view)):
            print(f"layer {n}: " + ", ".join(members))
    except ValueError as e:
        print(e)
    for component in found:
        print("CYCLE: " + describe_cycle(graph, component))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
