"""The local backend: pods are processes on this machine (see :mod:`.backend`)."""

from .backend import LocalBackend

__all__ = ["LocalBackend"]
