"""The project on this side: its root, its id, and where its modules are imported from.

The root is the nearest directory upward from the working directory holding one of
:data:`ROOT_MARKERS` (the working directory when there is none). The pods put the
synced tree's *import roots* on ``sys.path``: the directories inside the project from
which this process imports the project's modules (``src/`` in a src layout, the
notebook's own directory, the root itself).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from .watch import getcwd

__all__ = [
    "ROOT_MARKERS",
    "find_project",
    "find_project_root",
    "has_marker",
    "import_paths",
    "module_base",
    "project_id",
    "real",
    "relative",
]

ROOT_MARKERS = (".git", "pyproject.toml", "setup.py")


def find_project_root(start: str | Path | None = None) -> Path:
    """The nearest directory upward from ``start`` (the cwd) with a project marker.

    Markers are :data:`ROOT_MARKERS`; without any, ``start`` itself. Remembered per
    directory while the directories looked at are unchanged (it is asked before every
    call; a marker created or removed changes its directory's mtime).
    """
    return _find(start)[0]


def has_marker(root: Path) -> bool:
    """Whether ``root`` holds one of :data:`ROOT_MARKERS` (a project, not just a cwd)."""
    return any(os.path.exists(root / m) for m in ROOT_MARKERS)


#: Seconds a found root is trusted before the directories are looked at again. This
#: runs before every remote call; a stat per directory per call (each one lets other
#: threads take the GIL) cost more than the call itself on a busy machine.
RECHECK = 1.0
_checked: dict[str, float] = {}


def _find(start: str | Path | None) -> tuple[Path, bool]:
    key = os.fspath(start) if start is not None else getcwd()
    cached = _roots.get(key)
    if cached is not None:
        now = time.monotonic()
        if start is None and now - _checked.get(key, 0.0) < RECHECK:
            return cached[0]  # the per-call lookup of the working directory's project
        if _still(cached[1]):
            _checked[key] = now
            return cached[0]
    here = Path(os.path.realpath(key))
    found, seen = (here, False), []
    for directory in (here, *here.parents):
        seen.append(directory)
        if has_marker(directory):
            found = (directory, True)
            break
    _roots[key] = (found, [(str(d), _mtime(d)) for d in seen])
    _checked[key] = time.monotonic()
    return found


def _mtime(directory: Path | str) -> int:
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return -1


def _still(seen: list[tuple[str, int]]) -> bool:
    """Whether no directory looked at has changed (a marker made or removed changes it)."""
    return all(_mtime(d) == m for d, m in seen)


def find_project(start: str | Path | None = None) -> tuple[Path, bool]:
    """The project root, and whether a marker made it one (else it is the cwd)."""
    return _find(start)


_roots: dict[str, tuple[tuple[Path, bool], list[tuple[str, int]]]] = {}


def module_base(name: str, path: str) -> str | None:
    """The sys.path entry a module was imported from, judged by its name and file."""
    parts = name.split(".")
    directory = os.path.dirname(path)
    if not os.path.basename(path).startswith("__init__."):
        parts = parts[:-1]
    for part in reversed(parts):
        if os.path.basename(directory) != part:
            return None
        directory = os.path.dirname(directory)
    return directory


def relative(root: str, path: str) -> str | None:
    """``path`` relative to ``root`` in POSIX form ("." for the root), or None if outside."""
    if path == root:
        return "."
    if path.startswith(root + os.sep):
        return path[len(root) + 1:].replace(os.sep, "/")
    return None


_paths_cache: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {}
_real_cache: dict[str, str] = {}


def real(path: str) -> str:
    """``os.path.realpath``, remembered (checked on every call, for every module)."""
    found = _real_cache.get(path)
    if found is None:
        found = _real_cache[path] = os.path.realpath(path)
    return found


def import_paths(root: str) -> tuple[tuple[str, ...], str]:
    """Import roots inside the project (relative), and the cwd relative to the root.

    Import roots are the entries of ``sys.path`` inside the project, and the directory
    each loaded project module was imported from (an editable install's ``src/``).
    Cached until ``sys.path``, the cwd or the number of loaded modules changes.
    """
    cwd = getcwd()
    key = (len(sys.modules), tuple(sys.path), cwd)
    cached = _paths_cache.get(root)
    cwd_rel = relative(root, real(cwd)) or "."
    if cached is not None and cached[0] == key:
        return cached[1], cwd_rel
    found: dict[str, None] = {}
    for entry in sys.path:
        rel = relative(root, real(entry or cwd)) if isinstance(entry, str) else None
        if rel is not None:
            found[rel] = None
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None) if isinstance(mod, ModuleType) else None
        if not isinstance(path, str) or name == "__main__":
            continue
        path = real(os.path.abspath(path))
        if path.startswith(root + os.sep):
            base = module_base(name, path)
            rel = relative(root, base) if base is not None else None
            if rel is not None:
                found[rel] = None
    paths = tuple(found) or (".",)
    _paths_cache[root] = (key, paths)
    return paths, cwd_rel


def project_id(root: Path) -> str:
    """The project's name on pods: its directory name and a hash of host and path."""
    found = _ids.get(root)
    if found is None:
        digest = hashlib.sha256(f"{socket.gethostname()}:{root}".encode()).hexdigest()[:12]
        slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in root.name)[:40]
        found = _ids[root] = f"{slug.lstrip('.-_') or 'project'}-{digest}"
    return found


_ids: dict[Path, str] = {}
