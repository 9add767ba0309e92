"""Warnings attributed to the user's line, not to ours.

``warnings.warn(..., stacklevel=N)`` with a fixed ``N`` points at whichever frame
happens to be ``N`` up: a library line when the call came through another path (a
magic, a thread, a retry), or ``sys:1`` past the top of the stack. :func:`warn` counts
instead: the first frame outside this project's packages (``kubetorch_jupyter``,
``kernel_bridge``, ``pod_runtime``) and outside the machinery between a user and them
(IPython's magics, ``contextlib``, ``functools``, threads), so a warning names the
notebook cell or script line that led to it.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

__all__ = ["user_stacklevel", "warn"]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = tuple(os.path.join(_ROOT, p) + os.sep
              for p in ("kubetorch_jupyter", "kernel_bridge", "pod_runtime"))
#: Modules between the user's code and ours: IPython calling a magic, stdlib plumbing.
_MACHINERY = ("IPython.", "ipykernel.", "decorator", "traitlets.", "contextlib", "functools",
              "threading", "concurrent.futures", "asyncio.", "runpy")


def _internal(frame: FrameType) -> bool:
    filename = frame.f_code.co_filename
    if filename.startswith(_OURS) or filename.startswith("<decorator-gen-"):
        return True
    module = str(frame.f_globals.get("__name__", ""))
    return module.startswith(_MACHINERY) or module in ("contextlib", "functools", "threading",
                                                       "asyncio", "IPython", "ipykernel")


def user_stacklevel(skip: int = 0) -> int:
    """The ``stacklevel`` that makes ``warnings.warn`` point at the user's frame.

    Counted from the caller of this function (its ``stacklevel=1``), plus ``skip``.
    Past the top of the stack (all frames are ours: a thread of ours), the outermost.
    """
    frame: FrameType | None = sys._getframe(1 + skip)
    level = 1 + skip
    while frame is not None and frame.f_back is not None and _internal(frame):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
