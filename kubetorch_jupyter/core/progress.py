"""Progress bars for long work (pod start, image builds, sync).

An ipywidgets bar in a notebook, a terminal bar on a TTY, and nothing on a pipe or in a
log file, where tqdm's carriage returns would only leave garbage.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a half-initialised IPython: no widgets
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(*, enabled: bool, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar, shown when ``enabled`` and there is a notebook or terminal."""
    from tqdm.auto import tqdm

    show = enabled and (_in_notebook() or _terminal())
    return tqdm(disable=not show, **kwargs)
