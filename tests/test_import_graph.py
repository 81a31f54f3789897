"""No import cycles among the project's modules, and no import against the layers.

The graph is built from the source with `ast`, so it counts every import statement: at
module level, inside functions, under `if TYPE_CHECKING:`. An import inside a function
still means one module needs the other; putting it there only hides a cycle from the
interpreter, not from a reader. `from pkg import name` is an edge to `pkg.name` when that
is a module, else to `pkg`; a package's `__init__` run by importing a submodule is not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mash_core", "mash_runtime", "mash_api", "mash_telemetry")


def project_modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue  # Django loads them by name from the app; nothing imports them
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """`{module: {imported module: line of the first import}}`, project modules only."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                found = _resolve(target, modules)
                if found is not None and found != module:
                    edges.setdefault(found, node.lineno)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as `[a, b, ..., a]`, or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path = ROOT) -> str:
    return "\n".join(f"  {a} -> {b}  ({modules[a].relative_to(root)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_it_finds_no_import_cycle():
    modules = project_modules()
    graph = import_graph(modules)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + describe(cycle, graph, modules)


def test_it_sees_cycles_hidden_in_functions(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from .a import x\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    modules = project_modules(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph["pkg.c"] == {"pkg.a": 1}
    assert graph["pkg"] == {}
    cycle = find_cycle(graph)
    assert cycle == ["pkg.a", "pkg.b", "pkg.a"]
    assert describe(cycle, graph, modules, tmp_path) == "  pkg.a -> pkg.b  (pkg/a.py:1)\n  pkg.b -> pkg.a  (pkg/b.py:2)"


# Arrows point down the layers (CLAUDE.md): a package imports only those listed before it.
# mash_core is the SDK without Django; the runtime shows its records with its own pieces
# (mash_runtime.presentation), which the telemetry pages reuse, not the other way round.
FORBIDDEN = {
    "mash_core": ("mash_runtime", "mash_api", "mash_telemetry", "mash_project", "pilot", "django"),
    "mash_runtime": ("mash_telemetry",),
}


def imported_names(path: Path) -> dict[str, int]:
    """Every absolute module name a file imports (`from x import y` gives `x` and `x.y`)."""
    names: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.setdefault(node.module, node.lineno)
            for alias in node.names:
                names.setdefault(f"{node.module}.{alias.name}", node.lineno)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_it_finds_no_import_against_the_layers(package):
    wrong = []
    for path in project_modules(packages=(package,)).values():
        for name, line in imported_names(path).items():
            if name.split(".")[0] in FORBIDDEN[package]:
                wrong.append(f"  {path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, f"{package} imports what it must not:\n" + "\n".join(sorted(set(wrong)))
