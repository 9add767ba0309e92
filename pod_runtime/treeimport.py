"""Importing from synced trees: code that names the files as the client knows them.

A synced module lives on the pod under ``<sync home>/trees/<project>/``, but the user
knows it as ``/home/them/project/...``. A path hook gives the tree's directories a
finder whose loader compiles each module under the client's path, and puts the source
into :mod:`linecache` under that name: a traceback (sent back to the client), a
debugger or ``inspect.getsource`` on the pod shows the user's own, clickable path with
the synced source. ``__file__`` stays the real path on the pod, so code that reads
files next to itself finds them.

The loader compiles from source every time and never reads or writes ``.pyc`` files,
whose whole-second timestamps could hide an edit made within the same second.
"""

from __future__ import annotations

import linecache
import os
import sys
from importlib import machinery, util
from typing import Any

__all__ = ["show_tree_as", "shown_name"]

#: Tree directory -> the client's project root.
_SHOWN_AS: dict[str, str] = {}


def shown_name(path: str) -> str:
    """The client's path for a file in a tree (``path`` itself when it is in none)."""
    for tree, root in _SHOWN_AS.items():
        if path.startswith(tree + os.sep):
            return root + path[len(tree):]
    return path


def shown_root(tree: str) -> str | None:
    """The client's root for ``tree``, when one was given."""
    return _SHOWN_AS.get(tree)


class TreeLoader(machinery.SourceFileLoader):
    """Loads a synced module, compiled under the client's name for its file."""

    def get_code(self, fullname: str) -> Any:
        """Compile the module's current source (never a cached ``.pyc``)."""
        path = self.get_filename(fullname)
        source = self.get_data(path)
        shown = shown_name(path)
        code = compile(source, shown, "exec", dont_inherit=True)
        if shown != path:
            text = util.decode_source(source)
            linecache.cache[shown] = (len(text), None, text.splitlines(True), shown)
        return code


def _path_hook(entry: str) -> Any:
    """``sys.path_hooks`` entry: a finder using :class:`TreeLoader` inside synced trees."""
    if not isinstance(entry, str) or shown_name(entry + os.sep) == entry + os.sep:
        raise ImportError("not a synced tree")
    return machinery.FileFinder(
        entry,
        (machinery.ExtensionFileLoader, machinery.EXTENSION_SUFFIXES),
        (TreeLoader, machinery.SOURCE_SUFFIXES),
        (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES),
    )


def show_tree_as(tree: str, root: str | None) -> None:
    """Compile modules of ``tree`` under the client's ``root`` from now on."""
    if _path_hook not in sys.path_hooks:
        sys.path_hooks.insert(0, _path_hook)
    if root and _SHOWN_AS.get(tree) != root:
        _SHOWN_AS[tree] = root.rstrip("/") or "/"
        for entry in list(sys.path_importer_cache):  # finders made before the mapping
            if entry == tree or entry.startswith(tree + os.sep):
                del sys.path_importer_cache[entry]
