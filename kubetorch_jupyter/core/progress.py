"""Progress bars for long work (pod start, image builds, sync).

An ipywidgets bar in a notebook, a terminal bar on a TTY, and nothing on a pipe or in a
log file, where tqdm's carriage returns would only leave garbage.

A notebook bar leaves nothing dead behind: it is displayed with a ``display_id``, and
when it closes its widget is closed and its output replaced by one plain text line
(what it did and how long it took). A saved notebook otherwise keeps a widget view
whose model is gone, shown as "Error displaying widget: model not found" when reopened.
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


def _notebook_bar(**kwargs: Any) -> Any:
    """A tqdm notebook bar whose output becomes a text line when it closes."""
    from IPython.display import display
    from tqdm.notebook import tqdm as notebook_tqdm

    class Bar(notebook_tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, **kw: Any) -> None:
            super().__init__(display=False, **kw)
            self._handle = (display(self.container, display_id=True)
                            if not self.disable else None)

        def close(self) -> None:
            if self.disable or getattr(self, "_closed_line", False):
                return super().close()
            self._closed_line = True
            super().close()
            handle, self._handle = self._handle, None
            self.container.close()  # the model goes: no view may point at it
            if handle is not None:
                elapsed = self.format_interval(self.format_dict["elapsed"])
                what = "" if not self.total or self.n >= self.total else ", stopped"
                handle.update({"text/plain": f"{self.desc} ({elapsed}{what})"}, raw=True)

    return Bar(**kwargs)


def progress_bar(*, enabled: bool, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar, shown when ``enabled`` and there is a notebook or terminal."""
    if enabled and _in_notebook():
        try:
            return _notebook_bar(**kwargs)
        except ImportError:  # no ipywidgets: tqdm's text bar
            pass
    from tqdm.auto import tqdm

    show = enabled and (_in_notebook() or _terminal())
    return tqdm(disable=not show, **kwargs)
