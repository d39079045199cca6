"""The import graph of the ``histodrl`` package: no cycles, and only ``histodrl.cli`` at the top.

Every module is read as source (``ast``), never imported, so the test is fast and needs no torch.
An import counts wherever it is written: at the top of a module, inside a function, relative or
absolute. ``from histodrl.a import b`` is an edge to ``histodrl.a.b`` when that is a module, else to
``histodrl.a``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import pkgutil
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

PACKAGE = "histodrl"
TOP = "histodrl.cli"


def _package_root() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # a top-level name: nothing is imported
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: name -> (source file, is a package)."""
    root = _package_root()
    found: dict[str, tuple[Path, bool]] = {PACKAGE: (root / "__init__.py", True)}

    def walk(folder: Path, prefix: str) -> None:
        # pkgutil.walk_packages imports each package to find its subpackages; iter_modules on
        # the folders does not import anything.
        for info in pkgutil.iter_modules([str(folder)]):
            name = f"{prefix}.{info.name}"
            if info.ispkg:
                found[name] = (folder / info.name / "__init__.py", True)
                walk(folder / info.name, name)
            else:
                found[name] = (folder / f"{info.name}.py", False)

    walk(root, PACKAGE)
    return found


def _imports(name: str, path: Path, is_package: bool, modules: set[str]) -> set[str]:
    """The ``histodrl`` modules that module ``name`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
    out = set()
    for target in targets:
        if target != PACKAGE and not target.startswith(PACKAGE + "."):
            continue
        # ``import histodrl.a.b.c`` of something that is not a module: its nearest module.
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        if target != name:
            out.add(target)
    return out


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module name -> the ``histodrl`` modules it imports (built once per test session)."""
    modules = _modules()
    names = set(modules)
    return {
        name: frozenset(_imports(name, path, pkg, names)) for name, (path, pkg) in modules.items()
    }


def _cycles(graph: Mapping[str, AbstractSet[str]]) -> list[tuple[list[str], list[str]]]:
    """Per strongly connected component with a cycle: one of its cycles (``a -> b -> a``, the
    shortest through its first module) and all its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        start = min(component)
        # Shortest way back to ``start`` inside the component (breadth first).
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = previous[start]
        while v != start:
            path.append(v)
            v = previous[v]
        cycles.append(([start, *reversed(path[1:]), start], sorted(component)))
    return cycles


def test_the_graph_finds_the_modules_and_their_imports():
    graph = import_graph()
    assert TOP in graph and "histodrl.experiments.demo" in graph
    assert "histodrl.commands.options" in graph[TOP]
    # An import inside a function counts (cli imports its handlers' modules lazily).
    assert "histodrl.experiments.reproduce" in graph[TOP]


def test_relative_and_function_level_imports_are_edges(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import numpy\n"
        "from . import b\n"
        "from ..c import d\n"
        "def f():\n"
        "    import histodrl.x.y\n"
        "    from histodrl.e import thing\n"
    )
    modules = {"histodrl", "histodrl.a", "histodrl.a.m", "histodrl.a.b", "histodrl.c"}
    modules |= {"histodrl.x", "histodrl.e"}
    assert _imports("histodrl.a.m", source, False, modules) == {
        "histodrl.a.b",
        "histodrl.c",
        "histodrl.x",
        "histodrl.e",
    }


def test_the_cycle_finder_reports_a_cycle_through_a_function_level_import():
    graph = {
        "histodrl.cli": {"histodrl.experiments.demo"},
        "histodrl.experiments.demo": {"histodrl.cli", "histodrl.errors"},
        "histodrl.errors": set(),
    }
    cycle = ["histodrl.cli", "histodrl.experiments.demo", "histodrl.cli"]
    assert _cycles(graph) == [(cycle, sorted(cycle[:2]))]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(
        f"{' -> '.join(cycle)} (modules in the cycle: {', '.join(members)})"
        for cycle, members in cycles
    )


def test_only_the_cli_imports_the_cli():
    graph = import_graph()
    importers = sorted(name for name, targets in graph.items() if TOP in targets)
    assert importers == [], f"modules below {TOP} import it: {', '.join(importers)}"
