"""The shape of the library: no import circles (imports inside functions included), the review package's layers
(a module imports only from layers below its own), and no module far over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "auditor"

#: auditor.review's layers, lowest first (its __init__ lists what each module is for).
REVIEW_LAYERS = [
    {"choice"},
    {"state"},
    {"leases", "verdicts", "context", "orders", "background"},
    {"cache", "io"},
    {"snapshots"},
    {"queue"},
    {"refit", "worklist"},
]

MAX_LINES = 520  # "about 500"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the auditor modules it imports anywhere in its text (``from pkg import sub`` counts as the
    submodule only)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = [f"{target}.{alias.name}" for alias in node.names]
                found = [s for s in subs if s in mods]
                if len(found) < len(subs) and target in mods:
                    found.append(target)
            elif isinstance(node, ast.Import):
                found = [alias.name for alias in node.names if alias.name in mods]
            else:
                continue
            graph[name].update(f for f in found if f != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_review_modules_import_only_from_lower_layers():
    layer = {f"auditor.review.{m}": i for i, names in enumerate(REVIEW_LAYERS) for m in names}
    graph = import_graph()
    assert set(layer) == {m for m in graph if m.startswith("auditor.review.")}  # every module has a layer
    upward = [(m, dep) for m in layer for dep in graph[m] if dep in layer and layer[dep] >= layer[m]]
    assert upward == []


def test_no_module_is_far_over_five_hundred_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
