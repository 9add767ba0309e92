"""The ``kt`` command (``python -m kubetorch_jupyter.cli``)."""

from .main import main

__all__ = ["main"]
