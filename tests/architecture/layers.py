"""The package's layers, lowest first, and a static import scan (module level and inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import fairsample

ROOT = Path(fairsample.__file__).parent

#: each folder is one layer; a module may import only its own layer and the layers before it
LAYERS: tuple[str, ...] = (
    "core",
    "data",
    "models",
    "export",
    "engines",
    "samplers",
    "generation",
    "evaluation",
    "train",
    "workflows",
    "cli",
)


def layer_of(module: str) -> str | None:
    """``fairsample.data.folder`` → ``data``; the package root and ``_version`` → None (importable by all)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "fairsample" or parts[1] in ("_version", "__main__"):
        return None
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every ``fairsample.*`` module imported anywhere in the file (also inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: list[tuple[str, int]] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("fairsample")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("fairsample"):
                continue
            for alias in node.names:  # `from fairsample.cli import train` may name a submodule
                sub = f"{mod}.{alias.name}"
                target = (
                    sub
                    if (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                    or (ROOT.parent / Path(*sub.split("."))).is_dir()
                    else mod
                )
                out.append((target, node.lineno))
    return out


def violations() -> list[str]:
    """``"path:line: layer a imports layer b (module)"`` for every upward import."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        src_layer = layer_of(module_name(path))
        if src_layer is None:
            continue
        for mod, line in imports_of(path):
            dst = layer_of(mod)
            if dst is None or dst == src_layer:
                continue
            if dst not in rank or src_layer not in rank or rank[dst] > rank[src_layer]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {src_layer} imports {dst} ({mod})")
    return bad


def import_graph() -> dict[str, set[str]]:
    """``{module: {fairsample modules it imports anywhere}}`` (a package import counts as its ``__init__``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        graph[module_name(path)] = {m for m, _ in imports_of(path)}
    return graph


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted; a package importing its own
    submodules to re-export them is not a cycle unless a submodule imports the package back."""
    graph = import_graph()
    nodes = set(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    import sys

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out
