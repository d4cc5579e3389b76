"""The library's layers import one way (docs/ARCHITECTURE.md): methods/ never reaches up into the Variant, sampling,
runs, reports, bench, the app or the CLI (a method's ``cli.py`` is an entry point, like the CLI); runs/ never reaches
up into reports, bench, the app or the CLI; and no modules import each other in a cycle, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what backend/methods may not import (directly, at any point in a module: lazy imports count too)
ABOVE_RUNS = ("backend.reports", "backend.bench", "backend.__main__", "app")
ABOVE_METHODS = ("backend.variant", "backend.sampling", "backend.runs", *ABOVE_RUNS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def sources(*folders: str) -> dict[str, Path]:
    return {module_name(p): p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))}


def upward_imports(folder: str, above: tuple[str, ...], entry_points: str | None = None) -> list[str]:
    """``module imports name`` for every import (lazy ones too) from ``folder`` into a layer ``above`` it;
    modules whose last name is ``entry_points`` (a method's cli.py) are skipped."""
    offenders = []
    for name, path in sources(folder).items():
        if entry_points and name.rpartition(".")[2] == entry_points:
            continue
        for imported in imports(path, top_level_only=False):
            if any(imported == up or imported.startswith(up + ".") for up in above):
                offenders.append(f"{name} imports {imported}")
    return offenders


def test_methods_import_nothing_above_them():
    offenders = upward_imports("backend/methods", ABOVE_METHODS, entry_points="cli")
    assert not offenders, "\n".join(offenders)


def test_runs_import_nothing_above_them():
    offenders = upward_imports("backend/runs", ABOVE_RUNS)
    assert not offenders, "\n".join(offenders)


def import_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    """Module → the modules of backend/ and app/ it imports (lazy imports inside functions included)."""
    mods = sources("backend", "app")
    graph = {name: {m for m in imports(path, top_level_only) if m in mods and m != name}
             for name, path in mods.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle of layers
    return {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_no_import_cycle_between_modules():
    """No cycle among backend/ and app/ modules, counting imports inside functions too: a lazy import hides a
    cycle from the interpreter, not from the design."""
    assert not cycles(import_graph()), f"import cycles: {cycles(import_graph())}"


def test_the_cycle_finder_sees_a_cycle_through_a_lazy_import(tmp_path):
    lazy = tmp_path / "lazy.py"
    lazy.write_text("import backend.b\n\ndef f():\n    from backend.a import g\n    return g\n")
    assert "backend.a" in imports(lazy, top_level_only=False) and "backend.a" not in imports(lazy, True)
    assert cycles({"backend.a": {"backend.b"}, "backend.b": {"backend.a"}, "backend.c": {"backend.a"}}) == [
        ["backend.a", "backend.b"]]


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The scan is not vacuous: a lazy import of backend.runs inside a function is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from backend.runs.build import build_pipeline\n    return build_pipeline\n")
    assert "backend.runs.build" in imports(bad, top_level_only=False)
    assert "backend.runs.build" not in imports(bad, top_level_only=True)
