"""The library's layers import one way: methods/ never reaches up into runs, reports, bench, the app or the CLI, and
no modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what backend/methods may not import (directly, at any point in a module: lazy imports count too)
ABOVE_METHODS = ("backend.runs", "backend.reports", "backend.bench", "backend.__main__", "app")


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


def test_methods_import_nothing_above_them():
    offenders = []
    for name, path in sources("backend/methods").items():
        for imported in imports(path, top_level_only=False):
            if any(imported == up or imported.startswith(up + ".") for up in ABOVE_METHODS):
                offenders.append(f"{name} imports {imported}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycle_between_modules():
    """Module-level imports of backend/ and app/ form no cycle (a cycle makes import order matter)."""
    mods = sources("backend", "app")
    graph = {name: {m for m in imports(path, top_level_only=True) if m in mods and m != name}
             for name, path in mods.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle of layers
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
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
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The scan is not vacuous: a lazy import of backend.runs inside a function is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from backend.runs.build import build_pipeline\n    return build_pipeline\n")
    assert "backend.runs.build" in imports(bad, top_level_only=False)
    assert "backend.runs.build" not in imports(bad, top_level_only=True)
