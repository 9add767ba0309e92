"""Which modules a call's code needs: a failed reload blocks only the calls that use it.

When an edit fails to import on a pod, the pod keeps the previous code of the failed
module and of the modules importing it (its ``blocked`` set, see
:mod:`pod_runtime.reload`). A call that uses one of them fails with the
:class:`ReloadError`; any other call runs, with one warning naming the file.

What a call uses is found from the code about to be sent, without running it: a
function's module, the modules, functions and classes its code names through its
globals and closure, and what it imports; for a class, the same over its methods; for
a notebook cell, the modules its source imports or names by their dotted path. Given
the project's root, what those modules import in turn, from their files in the project:
a module the pod has not imported yet is not among those it holds back, yet importing
it there would bind the held-back module's old code.
"""

from __future__ import annotations

import ast
import dis
import os
import sys
import warnings
from collections.abc import Iterable
from types import CodeType, FunctionType, ModuleType
from typing import Any

__all__ = ["needed_modules", "uses", "warn_at_user"]

#: Our own packages: a warning is attributed to the first frame outside them.
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN = (_PKG + os.sep, os.path.join(os.path.dirname(_PKG), "kernel_bridge") + os.sep)


def _codes(code: CodeType) -> Iterable[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def _module_of(value: Any) -> str | None:
    if isinstance(value, ModuleType):
        return value.__name__
    if isinstance(value, FunctionType | type):
        return getattr(value, "__module__", None)
    return None


def _of_function(func: FunctionType, out: set[str], seen: set[int]) -> None:
    if id(func) in seen:
        return
    seen.add(id(func))
    if func.__module__:
        out.add(func.__module__)
    space = func.__globals__
    for code in _codes(func.__code__):
        last = ""
        for ins in dis.get_instructions(code):
            if ins.opname == "IMPORT_NAME" and isinstance(ins.argval, str):
                last = ins.argval
                out.add(last)
            elif ins.opname == "IMPORT_FROM" and last:
                out.add(f"{last}.{ins.argval}")
        for name in code.co_names:
            value = space.get(name)
            found = _module_of(value)
            if found:
                out.add(found)
            if isinstance(value, FunctionType):
                _of_function(value, out, seen)
    for cell in func.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        found = _module_of(value)
        if found:
            out.add(found)


def _of_source(source: str, out: set[str]) -> None:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Attribute):
            parts: list[str] = [node.attr]
            base: ast.expr = node.value
            while isinstance(base, ast.Attribute):
                parts.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name):
                parts.append(base.id)
                dotted = list(reversed(parts))
                out.update(".".join(dotted[:i]) for i in range(2, len(dotted) + 1))


def needed_modules(obj: Any) -> set[str]:
    """The modules the code of ``obj`` (a function, a class, a cell's source) may use."""
    out: set[str] = set()
    seen: set[int] = set()
    if isinstance(obj, str):
        _of_source(obj, out)
    elif isinstance(obj, type):
        for klass in obj.__mro__:
            if klass.__module__ != "builtins":
                out.add(klass.__module__)
            for value in vars(klass).values():
                func = getattr(value, "__func__", value)
                if isinstance(value, property):
                    func = value.fget
                if isinstance(func, FunctionType):
                    _of_function(func, out, seen)
    else:
        func = getattr(obj, "__func__", obj)
        if isinstance(func, FunctionType):
            _of_function(func, out, seen)
        else:
            found = _module_of(func) or getattr(type(func), "__module__", None)
            if found:
                out.add(found)
    return out


def uses(obj: Any, blocked: Iterable[str], root: str | None = None) -> list[str]:
    """The modules of ``blocked`` that the code of ``obj`` may use (sorted).

    With ``root`` (the project's root), the project modules it needs are followed
    through their files to what they import.
    """
    needed = needed_modules(obj)
    if root is not None:
        needed = _through_project(needed, root)
    return sorted(set(blocked) & needed)


def _module_file(name: str, root: str) -> str | None:
    """The file of module ``name`` in the project at ``root``, if it is one of its own."""
    for top in (root, os.path.join(root, "src")):  # (a src/ layout too)
        base = os.path.join(top, *name.split("."))
        for path in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(path):
                return path
    return None


def _through_project(needed: set[str], root: str) -> set[str]:
    """``needed`` and what its project modules import, transitively (static, every import)."""
    out = set(needed)
    todo = list(needed)
    while todo:
        name = todo.pop()
        path = _module_file(name, root)
        if path is None:
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                tree = ast.parse(f.read(), filename=path)
        except (SyntaxError, ValueError, OSError):
            continue
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pieces = package.split(".") if package else []
                    if node.level - 1 > len(pieces):
                        continue
                    head = ".".join(pieces[: len(pieces) - (node.level - 1)])
                    base = f"{head}.{base}" if base and head else (base or head)
                if base:
                    found.add(base)
                    found.update(f"{base}.{alias.name}" for alias in node.names)
        for dep in found:
            parts = dep.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix not in out:
                    out.add(prefix)
                    todo.append(prefix)
    return out


def warn_at_user(message: str, category: type[Warning]) -> None:
    """Warn, attributed to the first frame outside our packages (the user's line)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_OWN):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level + 1)
