"""The import graph keeps the layers of DESIGN.md: deployments/ -> flows/ -> tasks/ -> prefect_adapter/ -> trader/.

Read from the source with ast (every import, those inside functions too), so a lazy import that runs back up
counts as much as one at the top of a module. Each failure names the offending import by file and line.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("trader", "prefect_adapter", "tasks", "flows", "deployments")  # bottom to top: imports point left


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported name, as written (absolute)
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}


def imports(modules: dict[str, Path]) -> list[Import]:
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        relative = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            where = f"{relative}:{node.lineno}"
            if isinstance(node, ast.Import):
                found += [Import(name, alias.name, where) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
                found += [
                    Import(name, f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, where)
                    for alias in node.names
                ]
    return found


@cache
def project() -> tuple[dict[str, Path], list[Import]]:
    """The project's modules and every import they make (parsed once for all tests)."""
    modules = project_modules()
    return modules, imports(modules)


def owning_module(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def graph(depth: int | None = None) -> tuple[dict[str, set[str]], list[Import]]:
    """trader/'s imports between its modules (or, with depth, between names cut to that many parts)."""
    modules, found = project()
    edges: dict[str, set[str]] = defaultdict(set)
    kept = []
    for imp in found:
        target = owning_module(imp.target, modules)
        if target is None or imp.source.split(".")[0] != "trader" or target.split(".")[0] != "trader":
            continue
        source = imp.source
        if depth is not None:
            source, target = ".".join(source.split(".")[:depth]), ".".join(target.split(".")[:depth])
        if source != target:
            edges[source].add(target)
            kept.append(Import(source, target, imp.where))
    return edges, kept


def describe(component: list[str], kept: list[Import]) -> str:
    inside = sorted({str(i) for i in kept if i.source in component and i.target in component})
    return f"cycle {' <-> '.join(component)}:\n  " + "\n  ".join(inside)


def test_imports_point_only_down_the_layers_and_trader_never_imports_prefect() -> None:
    offending = []
    for imp in project()[1]:
        layer, top = imp.source.split(".")[0], imp.target.split(".")[0]
        if top in LAYERS and LAYERS.index(top) > LAYERS.index(layer):
            offending.append(f"{imp} (an import that runs up the layers)")
        if layer == "trader" and top == "prefect":
            offending.append(f"{imp} (trader/ never imports Prefect)")
    assert offending == [], "\n".join(sorted(set(offending)))


def test_no_module_of_trader_imports_itself_back_through_another() -> None:
    edges, kept = graph()

    found = cycles(edges)

    assert found == [], "\n".join(describe(c, kept) for c in found)


def test_no_subpackage_of_trader_imports_itself_back_through_another() -> None:
    """Between trader's subpackages and top-level modules (brokers, market, coinbase, state, bot, runtime, …)."""
    edges, kept = graph(depth=2)

    found = cycles(edges)

    assert found == [], "\n".join(describe(c, kept) for c in found)
