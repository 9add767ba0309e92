"""Backends: where pods come from (see :mod:`.base` for the interface), by a registry.

A backend is registered by name with a factory (``register_backend("local", LocalBackend)``);
``get_backend("local")`` makes it once and keeps it, so pods a process started are
remembered across calls. ``get_backend()`` with no name uses the ``backend`` setting
(``KT_BACKEND``); a :class:`~.base.Backend` instance is returned as it is, which is how a
test or an embedding application plugs in a backend of its own::

    kt.Compute(name="dev", backend=MyBackend(client=fake_api))
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .. import config
from ..exceptions import ConfigError
from .base import PHASES, Backend, Phase, PodInfo, PodStatus

__all__ = ["PHASES", "Backend", "Phase", "PodInfo", "PodStatus", "backend_names",
           "get_backend", "register_backend"]

#: A factory makes a backend; it raises ConfigError when the backend cannot work here.
Factory = Callable[[], Backend]

_factories: dict[str, Factory] = {}
_instances: dict[str, Backend] = {}
_lock = threading.Lock()


def register_backend(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``factory`` the maker of the backend called ``name``.

    Args:
        name: The name ``Compute(backend=...)`` and ``KT_BACKEND`` use (lowercase).
        factory: Called once, on first use; raises ConfigError when unavailable.
        replace: Allow replacing a registered factory (the instance made is dropped).

    Raises:
        ConfigError: When ``name`` is taken and ``replace`` is false.
    """
    key = name.strip().lower()
    with _lock:
        if key in _factories and not replace:
            raise ConfigError(f"a backend named {key!r} is registered already")
        _factories[key] = factory
        _instances.pop(key, None)


def backend_names() -> list[str]:
    """The names of the registered backends, in registration order."""
    with _lock:
        return list(_factories)


def get_backend(backend: str | Backend | None = None) -> Backend:
    """The backend ``backend`` names (default: the ``backend`` setting, ``KT_BACKEND``).

    A :class:`Backend` instance is returned as it is.

    Raises:
        ConfigError: For an unknown name, or a backend that is not available.
    """
    if isinstance(backend, Backend):
        return backend
    key = (backend or config.get("backend")).strip().lower()
    with _lock:
        found = _instances.get(key)
        factory = _factories.get(key)
    if found is not None:
        return found
    if factory is None:
        raise ConfigError(f"unknown backend {key!r}; valid backends: {', '.join(backend_names())}")
    made = factory()  # outside the lock: a factory may be slow (a cluster's config)
    with _lock:
        return _instances.setdefault(key, made)


def _local() -> Backend:
    from .local.backend import LocalBackend

    return LocalBackend()


def _kubernetes() -> Backend:
    """The Kubernetes backend of this machine's kubeconfig (or the pod's service account).

    Raises ConfigError (one line: what to install or set) when the ``kubernetes`` package
    or a cluster configuration is missing.
    """
    from .kubernetes.backend import KubernetesBackend

    return KubernetesBackend.from_environment()


register_backend("local", _local)
register_backend("kubernetes", _kubernetes)
