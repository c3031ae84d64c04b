"""The house has floors: no module of components/ or flows/ imports, directly or through others, one that imports it
back, neither module by module nor package by package (components/evaluation/, stores/, recipes/, card/ as one
each). Generic helpers (messages, redaction, processes, digests, settings) sit at the bottom for that reason.
Read with ast from the source: every `import components...` / `from components... import`, at any depth (a lazy
import inside a function is still an arrow)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "flows")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports: `from a.b import c` is a.b.c when that is a module, else a.b."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def _room(module: str) -> str:
    """components.evaluation.runner -> components.evaluation (a package is one room); components.gate stays."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (as the list of its nodes), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _graph(rooms: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        src = _room(name) if rooms else name
        for dst in _imports(path, set(modules)):
            dst = _room(dst) if rooms else dst
            # a package's own __init__ handing on names is not an arrow between rooms
            if dst != src and not dst.startswith(src + "."):
                graph.setdefault(src, set()).add(dst)
    return graph


def test_no_module_imports_one_that_imports_it_back():
    assert _cycle(_graph(rooms=False)) is None, " -> ".join(_cycle(_graph(rooms=False)))


def test_no_package_imports_one_that_imports_it_back():
    assert _cycle(_graph(rooms=True)) is None, " -> ".join(_cycle(_graph(rooms=True)))


def test_the_check_sees_a_cycle_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
