"""The import graph of ``eightys/`` has no cycle.

Every import statement counts: at module level, under ``if TYPE_CHECKING:``, and
inside functions (a lazy import is still a dependency; hiding a cycle in a
function only moves the failure to run time). Modules are read with ``ast``, not
imported, so the test sees what the source says.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "eightys"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (packages by
    their ``__init__.py``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from X import ...`` names (relative forms too)."""
    if node.level == 0:
        return node.module
    base = module.split(".")
    if not is_package:
        base.pop()  # relative to the package holding the module
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else [])) or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            if target is None:
                continue
            # `from eightys import channel` imports the module eightys.channel
            names = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            # `from eightys.worker import Worker` names a module's attribute: the
            # dependency is the longest prefix that is a module
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles (each a path ``a -> b -> ... -> a``): the groups of modules that
    import each other are found with Tarjan's algorithm, then for each module of a
    group its shortest cycle, each distinct cycle once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for group in groups:
        for start in group:
            cycle = _cycle_through(graph, start, set(group))
            # the same cycle found from another of its modules: kept once
            ring = cycle[:-1]
            turn = ring.index(min(ring))
            key = tuple(ring[turn:] + ring[:turn])
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def _cycle_through(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """A shortest cycle from ``start`` back to it within ``group`` (breadth-first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for dep in sorted(graph[node] & group):
                if dep == start:
                    return paths[node] + [start]
                if dep not in paths:
                    paths[dep] = paths[node] + [dep]
                    following.append(dep)
        frontier = following
    raise AssertionError(f"{start} is on no cycle in {sorted(group)}")


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "eightys.worker" in graph and "eightys.protocols.http" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in eightys/:\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import c\n")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.b import B\n")
    (package / "b.py").write_text("def f():\n    from .sub.c import C\n")
    (package / "sub" / "c.py").write_text("import pkg.a\nfrom ..b import f\nimport os\n")
    (package / "d.py").write_text("from pkg import a\n")
    graph = import_graph(package)
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.d": {"pkg", "pkg.a"},
        "pkg.sub": {"pkg.sub.c"},
        "pkg.sub.c": {"pkg.a", "pkg.b"},
    }
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"],
                                  ["pkg.b", "pkg.sub.c", "pkg.b"]]
    assert find_cycles({"x": {"y"}, "y": set()}) == []
