"""No import cycle among greenmon's modules, counting the imports inside functions.

A cycle through function-level imports loads fine but still ties the modules together: a
change to one can break the other at run time, and neither can be read or tested alone.
Imports under ``if TYPE_CHECKING:`` are left out (they never run).  engines/, probes/ and
tui/ live at the top of the repository and install as greenmon.engines, greenmon.probes
and greenmon.tui (pyproject's package-dir), so they are walked under those names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# (directory, the package it installs as)
PACKAGES = (
    ("greenmon", "greenmon"),
    ("engines", "greenmon.engines"),
    ("probes", "greenmon.probes"),
    ("tui", "greenmon.tui"),
)


def module_files(root: Path, packages: tuple[tuple[str, str], ...]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package's __init__)."""
    nested = {directory for directory, _ in packages[1:]}
    modules: dict[str, tuple[Path, bool]] = {}
    for directory, package in packages:
        base = root / directory
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if package == packages[0][1] and parts[0] in nested:
                continue  # the symlinks under greenmon/: walked under their own names
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([package, *parts])] = (path, is_package)
    return modules


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(node: ast.AST, package: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            yield f"{base}.{alias.name}"  # a submodule, when it is one
            yield base


def import_graph(modules: Mapping[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules it imports anywhere in its body (functions included), but
    under ``if TYPE_CHECKING:``.  ``from a import b`` counts b when b is a module, else a."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
        while stack:
            node = stack.pop()
            for child in ast.iter_child_nodes(node):
                if _type_checking(child):
                    stack.extend(child.orelse)  # type: ignore[attr-defined]
                    continue
                if isinstance(child, ast.ImportFrom):
                    for alias in child.names:
                        submodule = known(next(_imported_names(
                            ast.ImportFrom(child.module, [alias], child.level), package)))
                        if submodule is not None:
                            edges.add(submodule)
                elif isinstance(child, ast.Import):
                    edges.update(m for m in map(known, _imported_names(child, package)) if m)
                stack.append(child)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # iterative, so a long chain cannot reach Python's recursion limit
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
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

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def describe(graph: Mapping[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "\n".join(f"  {m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_greenmon_has_no_import_cycle_counting_imports_inside_functions() -> None:
    graph = import_graph(module_files(REPO, PACKAGES))
    assert len(graph) > 100  # the walk found the modules (and the symlinked packages)
    assert "greenmon.tui.app" in graph and "greenmon.probes.rapl" in graph
    found = cycles(graph)
    assert not found, "import cycles (break each by moving what both need below both):\n" + (
        "\n".join(describe(graph, c) for c in found)
    )


def test_the_check_finds_a_cycle_through_a_function_and_ignores_type_checking(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (package / "b.py").write_text("from . import c\n\ndef g():\n    return 1\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n"
    )
    (package / "e.py").write_text("from pkg.d import x\n")
    graph = import_graph(module_files(tmp_path, (("pkg", "pkg"),)))
    assert graph["pkg.b"] == {"pkg.c"}  # `from . import c` names the submodule
    assert graph["pkg.d"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
