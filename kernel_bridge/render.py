"""Remote tracebacks rendered as IPython renders local ones.

A :class:`~kernel_bridge.errors.RemoteError` carries the remote frames as data
(file, line, function, source line). In IPython, :func:`ipython_traceback` turns them
into a real traceback object whose frames carry those file names and line numbers (the
trick Jinja2 uses for template errors), and gives it to the shell's own formatter: the
same colours, the cell's lines with the arrow at the failing one, as a local error.
Source lines come from ``linecache``: the notebook cells are registered there (also
those sent as ``%%kt`` cells), and a file this machine does not have gets the line the
pod read.
"""

from __future__ import annotations

import linecache
import os
import sys
from collections.abc import Sequence
from types import CodeType, TracebackType
from typing import Any

__all__ = ["Frame", "fake_traceback", "ipython_traceback"]

#: One remote frame: (file name, line number, function name, source line or None).
Frame = tuple[str, int, str, "str | None"]


class _Raise(Exception):
    """Raised by the stand-in code of one frame, to capture that frame."""


def _frame_code(filename: str, lineno: int, name: str) -> CodeType:
    code = compile("\n" * (max(lineno, 1) - 1) + "raise __kt_raise__", filename, "exec")
    return code.replace(co_name=name, co_qualname=name)


def _remember_line(filename: str, lineno: int, line: str | None) -> None:
    """Give ``linecache`` the pod's line for a file this machine does not have."""
    if not line or linecache.getline(filename, lineno) or os.path.exists(filename):
        return
    cached = linecache.cache.get(filename)
    lines = list(cached[2]) if cached and len(cached) > 2 else []
    lines += ["\n"] * (lineno - len(lines))
    lines[lineno - 1] = line.rstrip("\n") + "\n"
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def fake_traceback(frames: Sequence[Sequence[Any]]) -> TracebackType | None:
    """A traceback object whose frames are ``frames`` (outermost first)."""
    tb: TracebackType | None = None
    for filename, lineno, name, line in reversed([tuple(f) for f in frames]):
        lineno = int(lineno or 1)
        _remember_line(str(filename), lineno, line)
        try:
            # a bare raise, in a frame named as the remote one
            exec(_frame_code(str(filename), lineno, str(name)),
                 {"__kt_raise__": _Raise, "__name__": "__kt_remote__"})
        except _Raise:
            made = sys.exc_info()[2]
            assert made is not None and made.tb_next is not None
            frame_tb = made.tb_next
            frame_tb.tb_next = tb
            tb = frame_tb
    return tb


def ipython_traceback(exc: BaseException, frames: Sequence[Sequence[Any]]) -> list[str] | None:
    """The running IPython shell's rendering of ``exc`` raised through ``frames``.

    None outside IPython, or when the shell cannot format it.
    """
    shell_mod = sys.modules.get("IPython.core.interactiveshell")
    if shell_mod is None or not shell_mod.InteractiveShell.initialized():
        return None
    shell = shell_mod.InteractiveShell.instance()
    try:
        tb = fake_traceback(frames)
        formatted: list[str] = shell.InteractiveTB.structured_traceback(
            type(exc), exc, tb, tb_offset=0)
        return formatted
    except Exception:  # noqa: BLE001 - never let the rendering hide the error
        return None
