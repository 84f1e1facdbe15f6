"""Imports among the modules of study/ and schedules/ run one way: no module reaches itself through
what it imports (imports inside functions and under ``TYPE_CHECKING`` included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "schedules")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    paths = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    return {module_name(path): path for path in paths}


def imported_modules(source: str, name: str, known: set[str], package: bool = False) -> set[str]:
    """The modules of ``known`` that module ``name``'s source imports anywhere in it; ``from a.b import c``
    imports a.b.c where that is a module, else a.b."""
    here = name if package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from this package, one level up per dot after the first
                parts = here.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {imported for imported in names if imported in known and imported != name}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {
        name: imported_modules(path.read_text(), name, known, package=path.name == "__init__.py")
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules each importing the next, the last being the first, or None.

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    ['a', 'b', 'c', 'a']
    >>> find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    True
    """
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "on the path"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "on the path":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_graph_sees_imports_in_functions_under_type_checking_and_relative():
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.a\n"
        "def f():\n    from x import b\n    from . import c\n    from .d import e\n"
    )
    known = {"x", "x.a", "x.b", "x.c", "x.d", "x.m"}
    assert imported_modules(source, "x.m", known) == {"x.a", "x.b", "x.c", "x.d"}
    graph = import_graph()
    assert "study.trainer" in graph["study.train"]  # imported inside main(), after validation
    assert "study.report.final" in graph["study.report.cli"]  # imported only for --final
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_no_import_cycle_among_study_and_schedules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
