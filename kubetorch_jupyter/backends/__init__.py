"""Backends: where pods come from (see :mod:`.base` for the interface).

``get_backend()`` returns the backend named by ``config.get("backend")``; one instance
per name is kept, so pods a process started are remembered across calls.
"""

from __future__ import annotations

from .. import config
from ..exceptions import ConfigError
from .base import Backend, PodInfo, PodStatus

__all__ = ["BACKENDS", "Backend", "PodInfo", "PodStatus", "get_backend"]

#: Names ``get_backend`` accepts.
BACKENDS = ("local", "kubernetes")

_cache: dict[str, Backend] = {}


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name`` (default: the ``backend`` setting, ``KT_BACKEND``).

    Raises:
        ConfigError: For an unknown name, or a backend that is not available.
    """
    key = (name or config.get("backend")).strip().lower()
    if key not in _cache:
        if key == "local":
            from .local.backend import LocalBackend

            _cache[key] = LocalBackend()
        elif key == "kubernetes":
            raise ConfigError("the kubernetes backend is not available yet")
        else:
            raise ConfigError(
                f"unknown backend {key!r}; valid backends: {', '.join(BACKENDS)}"
            )
    return _cache[key]
