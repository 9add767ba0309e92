"""The layout DESIGN.md draws holds: who may import whom, and no import cycles.

Imports are read from the source (``ast``), at module level only: an import inside a
function or under ``if TYPE_CHECKING:`` runs later or never, so it makes no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pod_runtime", "kernel_bridge", "kubetorch_jupyter")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ours that ``name`` imports when it is imported."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                found.add(mod)
                found.update(f"{mod}.{a.name}" for a in node.names)

    visit(tree.body)
    ours = set()
    for mod in found:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            ours.add(mod)
    return ours


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _top_level_imports(name, path, known) for name, path in modules.items()}


def _all_imports(name: str, path: Path) -> set[str]:
    """Every module named in an import anywhere in the file (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module)
    return out


def test_pod_runtime_imports_neither_of_the_others() -> None:
    for name, path in _modules().items():
        if name.startswith("pod_runtime"):
            bad = {m for m in _all_imports(name, path)
                   if m.split(".")[0] in ("kernel_bridge", "kubetorch_jupyter")}
            assert not bad, f"{name} imports {bad}"


def test_kernel_bridge_imports_only_the_protocol_package() -> None:
    for name, path in _modules().items():
        if name.startswith("kernel_bridge"):
            ours = {m for m in _all_imports(name, path) if m.split(".")[0] in PACKAGES}
            bad = {m for m in ours if m.split(".")[0] == "kubetorch_jupyter"
                   or (m.startswith("pod_runtime") and not m.startswith("pod_runtime.protocol")
                       and m != "pod_runtime")}
            assert not bad, f"{name} imports {bad}"


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # Importing a package runs its __init__, so a submodule's import of its own parent
    # package is part of the parent's import and makes no cycle of its own.
    def edges(name: str) -> set[str]:
        return {m for m in graph[name] if not name.startswith(m + ".")}

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges(node)):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_modules_stay_small() -> None:
    """One concept per module: none past 700 lines (DESIGN: rarely past 600)."""
    big = {name: n for name, path in _modules().items()
           if (n := len(path.read_text().splitlines())) > 700}
    assert not big, f"split these modules: {big}"
