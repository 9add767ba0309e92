"""The matplotlib backend of pods: ``MPLBACKEND=module://pod_runtime.mpl_backend``.

Rendering is Agg's. ``plt.show()`` sends the open figures to the call that is running,
as PNG display data, and closes them, like ipykernel's inline backend; figures still
open when a notebook cell ends are sent the same way (see :mod:`pod_runtime.cells`).
"""

from __future__ import annotations

from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

__all__ = ["FigureCanvas", "FigureManager", "show"]

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(*args: Any, **kwargs: Any) -> None:
    """Send every open figure to the running call as a PNG, then close them."""
    from . import cells

    cells.show_figures()
