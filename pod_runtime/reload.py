"""Hot reload on a pod: re-run exactly the changed modules and the modules importing them.

After a sync has written new files into a project tree, :func:`reload_changed` finds
the loaded modules whose files changed (or were deleted), adds every module that
imports them, directly or not, and re-executes that set with :func:`importlib.reload`
in dependency order (a module after the modules it imports). Nothing else is touched:
heavy imports (torch, numpy) stay loaded, and an unchanged module keeps its globals.

Who imports whom comes from two sources, so that neither alone can miss an edge: the
module's source (``import`` statements that run at import time, i.e. outside function
bodies) and its namespace (module objects, and functions or classes of tree modules,
bound in it).

A failure holds back only what depends on it. Each module's namespace is copied
before the first reload; if a module fails to execute, every namespace of the batch is
put back (no module is left half-executed), and the batch runs again without the
failed module and the modules importing it, directly or not (``blocked``): their
previous code keeps serving, while the rest of the edit applies. The error names the
file and line inside the tree.

After a successful batch, functions and classes that outlive the reload (held by
class instances, caches or other modules) are updated in place where that is safe:
an old function object gets the new code object when neither version has a closure,
and the methods of an old class are updated the same way. So an instance created
before the edit runs the edited methods.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import FunctionType, ModuleType
from typing import Any

__all__ = ["ReloadResult", "reload_changed", "tree_modules"]

#: (path, mtime_ns, size) -> names imported by the source at import time.
_IMPORTS_CACHE: dict[tuple[str, int, int], frozenset[str]] = {}


@dataclass
class ReloadResult:
    """What a reload did.

    Attributes:
        reloaded: Modules re-executed, in the order they ran.
        removed: Modules dropped from ``sys.modules`` because their file was deleted.
        error: None, or what failed: ``module``, ``path`` (relative to the tree),
            ``line``, ``type``, ``message``, ``traceback`` (text) and ``blocked``.
        blocked: The failed module and the loaded modules importing it: they keep
            their previous code (sorted).
        unapplied: Changed files (relative to the tree) of blocked modules: reload them
            again once the failure is fixed.
    """

    reloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    blocked: list[str] = field(default_factory=list)
    unapplied: list[str] = field(default_factory=list)


def tree_modules(tree: str) -> dict[str, ModuleType]:
    """Loaded modules whose file lies under ``tree`` (an absolute, normalised path)."""
    prefix = tree.rstrip(os.sep) + os.sep
    out = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None) if isinstance(mod, ModuleType) else None
        if isinstance(path, str) and path.startswith(prefix):
            out[name] = mod
    return out


def _rel(tree: str, path: str) -> str:
    return os.path.relpath(path, tree).replace(os.sep, "/")


def _source_imports(name: str, mod: ModuleType) -> frozenset[str]:
    """Module names the source imports when it runs (function bodies excluded)."""
    path = mod.__file__
    assert path is not None
    try:
        st = os.stat(path)
    except OSError:
        return frozenset()
    key = (path, st.st_mtime_ns, st.st_size)
    cached = _IMPORTS_CACHE.get(key)
    if cached is not None:
        return cached
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, OSError):
        return frozenset()  # the reload reports a syntax error itself
    is_pkg = os.path.basename(path).startswith("__init__.")
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pieces = package.split(".") if package else []
                if node.level - 1 > len(pieces):
                    continue
                base = ".".join(pieces[: len(pieces) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module and base else (node.module or base)
            else:
                base = node.module or ""
            if not base:
                continue
            parts = base.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            found.update(f"{base}.{alias.name}" for alias in node.names)
        else:
            stack.extend(c for c in ast.iter_child_nodes(node)
                         if isinstance(c, ast.stmt | ast.excepthandler | ast.match_case))
    result = frozenset(found)
    _IMPORTS_CACHE[key] = result
    return result


def _bound_imports(mod: ModuleType, known: dict[str, ModuleType]) -> set[str]:
    """Tree modules whose objects are bound in ``mod``'s namespace.

    A package's submodules, bound on it by the import system under their own names,
    do not count: the package does not import them unless its source says so.
    """
    out = set()
    own = mod.__name__ + "."
    for key, value in list(vars(mod).items()):
        if isinstance(value, ModuleType):
            name = value.__name__
            if name == own + key:
                continue
        elif isinstance(value, FunctionType | type):
            name = getattr(value, "__module__", None) or ""
        else:
            continue
        if name in known:
            out.add(name)
    return out


def _dependencies(known: dict[str, ModuleType]) -> dict[str, set[str]]:
    """For each tree module, the tree modules it imports."""
    deps: dict[str, set[str]] = {}
    for name, mod in known.items():
        found = set(_source_imports(name, mod) & known.keys()) | _bound_imports(mod, known)
        found.discard(name)
        deps[name] = found
    return deps


def _order(affected: set[str], deps: dict[str, set[str]]) -> list[str]:
    """Dependencies first; a cycle is broken where it is entered (sorted, deterministic)."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done
    for root in sorted(affected):
        if root in state:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(deps.get(root, set()) & affected))]
        state[root] = 1
        while stack:
            name, pending = stack[-1]
            while pending and pending[-1] in state:
                pending.pop()
            if pending:
                nxt = pending.pop()
                state[nxt] = 1
                stack.append((nxt, sorted(deps.get(nxt, set()) & affected)))
            else:
                stack.pop()
                state[name] = 2
                order.append(name)
    return order


def reload_changed(tree: str, changed: Iterable[str], deleted: Iterable[str], *,
                   shown: str | None = None) -> ReloadResult:
    """Reload the loaded modules of ``tree`` whose files changed, and their importers.

    Args:
        tree: The project tree (absolute, normalised).
        changed: Paths relative to the tree of files written since the last reload.
        deleted: Paths relative to the tree of files removed.
        shown: The path the tree's code objects carry as file names, when not the tree
            (the client's copy of the project): errors are located under either.

    Returns:
        What was reloaded, and the first error with what it held back.
    """
    tree = os.path.normpath(tree)
    known = tree_modules(tree)
    by_file: dict[str, list[str]] = {}
    for name, mod in known.items():
        by_file.setdefault(_rel(tree, mod.__file__ or ""), []).append(name)
    changed_mods = {n for rel in changed for n in by_file.get(rel, ())}
    deleted_mods = {n for rel in deleted for n in by_file.get(rel, ())} - changed_mods
    result = ReloadResult()
    if not changed_mods and not deleted_mods:
        return result
    deps = _dependencies(known)
    importers: dict[str, set[str]] = {}
    for name, found in deps.items():
        for dep in found:
            importers.setdefault(dep, set()).add(name)
    affected: set[str] = set()
    todo = list(changed_mods | deleted_mods)
    while todo:
        name = todo.pop()
        for user in importers.get(name, ()):
            if user not in affected:
                affected.add(user)
                todo.append(user)
    affected |= changed_mods
    affected -= deleted_mods
    order = _order(affected, deps)

    blocked: set[str] = set()
    while True:
        failed = _run_batch(tree, known, [n for n in order if n not in blocked],
                            deleted_mods, result, shown)
        if failed is None or failed in blocked or failed not in affected:
            break
        # hold back the failed module and its importers; the rest of the edit applies
        more = {failed}
        todo = [failed]
        while todo:
            for user in importers.get(todo.pop(), ()):
                if user in affected and user not in more:
                    more.add(user)
                    todo.append(user)
        blocked |= more
    if result.error is not None:
        result.blocked = sorted(blocked)
        result.error["blocked"] = result.blocked
        files = {n: _rel(tree, known[n].__file__ or "") for n in blocked}
        result.unapplied = sorted(rel for rel in changed if rel in set(files.values()))
    return result


def _run_batch(tree: str, known: dict[str, ModuleType], order: list[str],
               deleted_mods: set[str], result: ReloadResult, shown: str | None) -> str | None:
    """Reload ``order`` all or nothing; on a failure, roll back and return the module.

    The first failure is recorded in ``result.error``; a success fills ``reloaded`` and
    ``removed``.
    """
    before = set(sys.modules)
    snapshots = {n: dict(vars(known[n])) for n in order}
    unbound: list[tuple[ModuleType, str, ModuleType]] = []
    for name in sorted(deleted_mods):
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        holder = sys.modules.get(parent) if parent else None
        if holder is not None and getattr(holder, child, None) is known[name]:
            delattr(holder, child)  # or "from pkg import gone" would still find it
            unbound.append((holder, child, known[name]))
    current = None
    try:
        for current in order:
            importlib.reload(known[current])
    except BaseException as exc:  # any failure, even an interrupt, rolls the batch back
        for name, snap in snapshots.items():
            space = vars(known[name])
            space.clear()
            space.update(snap)
        for name in deleted_mods:
            sys.modules[name] = known[name]
        for holder, child, module in unbound:
            setattr(holder, child, module)
        for name in set(sys.modules) - before:  # half-imported new modules of the tree
            path = getattr(sys.modules[name], "__file__", None) or ""
            if path.startswith(tree + os.sep):
                del sys.modules[name]
        if not isinstance(exc, Exception):
            raise
        if result.error is None:
            result.error = _describe(exc, (tree, shown or tree), current or "", known)
        return current or ""
    for name in order:
        _update_in_place(name, snapshots[name], vars(known[name]))
    result.reloaded = order
    result.removed = sorted(deleted_mods)
    return None


# ---------------------------------------------------------------- errors
def _describe(exc: Exception, roots: tuple[str, str], module: str,
              known: dict[str, ModuleType]) -> dict[str, Any]:
    """Where in the tree a reload failed: the innermost frame in a tree file.

    ``roots`` are the tree and the path its code objects show (maybe the same).
    """

    def rel(path: str) -> str | None:
        for root in roots:
            if path.startswith(root + os.sep):
                return _rel(root, path)
        return None

    path: str | None = None
    line: int | None = None
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if rel(f.filename)]
    if isinstance(exc, SyntaxError) and rel(exc.filename or ""):
        path, line = rel(exc.filename or ""), exc.lineno
        text = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        if frames:
            path, line = rel(frames[-1].filename), frames[-1].lineno
        elif module in known and known[module].__file__:
            path = rel(known[module].__file__ or "")
        text = "Traceback (most recent call last):\n" + "".join(
            traceback.StackSummary.from_list(frames).format()
        ) + "".join(traceback.format_exception_only(type(exc), exc))
    typ = type(exc)
    return {
        "module": module,
        "path": path,
        "line": line,
        "type": typ.__qualname__ if typ.__module__ == "builtins"
        else f"{typ.__module__}.{typ.__qualname__}",
        "message": str(exc) if not isinstance(exc, SyntaxError) else (exc.msg or str(exc)),
        "traceback": text,
    }


# ------------------------------------------------------ in-place updates
def _update_function(old: FunctionType, new: FunctionType) -> bool:
    """Give ``old`` the code of ``new``; only when neither has a closure (or it fails)."""
    if old.__code__.co_freevars or new.__code__.co_freevars:
        return False
    try:
        old.__code__ = new.__code__
    except ValueError:
        return False
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__
    old.__doc__ = new.__doc__
    old.__annotations__ = new.__annotations__
    return True


def _update_class(old: type, new: type) -> None:
    """Update the methods of ``old`` to those of ``new`` (same name, no closures)."""
    for key, value in list(vars(new).items()):
        current = vars(old).get(key)
        if isinstance(current, FunctionType) and isinstance(value, FunctionType):
            _update_function(current, value)
        elif (isinstance(current, classmethod | staticmethod)
              and type(current) is type(value)
              and isinstance(current.__func__, FunctionType)
              and isinstance(value.__func__, FunctionType)):  # type: ignore[union-attr]
            _update_function(current.__func__, value.__func__)  # type: ignore[union-attr]
        elif (current is None and isinstance(value, FunctionType)
              and not value.__code__.co_freevars):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(old, key, value)  # a method added by the edit


def _update_in_place(module: str, old_space: dict[str, Any], new_space: dict[str, Any]
                     ) -> None:
    """Point surviving old objects defined by ``module`` at the reloaded code."""
    for key, old in old_space.items():
        new = new_space.get(key)
        if new is None or new is old or getattr(old, "__module__", None) != module:
            continue
        try:
            if isinstance(old, FunctionType) and isinstance(new, FunctionType):
                _update_function(old, new)
            elif (isinstance(old, type) and isinstance(new, type)
                  and old.__qualname__ == new.__qualname__):
                _update_class(old, new)
        except Exception:  # noqa: BLE001 - best effort: the reload itself succeeded
            continue
