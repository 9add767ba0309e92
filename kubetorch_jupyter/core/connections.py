"""The process-wide pool of :class:`~kernel_bridge.PodConnection`: one per pod.

Every ``kt.fn``, ``kt.cls``, ``%%kt`` cell and sync of this process that goes to a pod
shares one multiplexed connection to it, keyed by (backend, pod name, url). Two threads
that ask at once get the same one: exactly one is opened (a lock per key), never two of
which one is thrown away.

:func:`open_connection` is the one place a connection is made, so how a pod is reached
(the backend's :meth:`~kubetorch_jupyter.backends.base.Backend.endpoint`, asked again on
every reconnect: a URL and token, TLS, or a dial function for a Kubernetes port-forward)
is decided in one function.
"""

from __future__ import annotations

import threading

from kernel_bridge import BridgeError, PodConnection, PodDiedError

from .. import config
from ..backends.base import Backend, PodInfo

__all__ = ["count", "drop", "live", "open_connection", "other_clients", "pooled", "take_dead"]

Key = tuple[str, str, str]

_pool: dict[Key, PodConnection] = {}
_opening: dict[Key, threading.Lock] = {}
_lock = threading.Lock()


def _key(backend: Backend, info: PodInfo) -> Key:
    return (backend.name, info.name, info.url)


def open_connection(backend: Backend, info: PodInfo) -> PodConnection:
    """Open a new connection to ``info``'s pod (not pooled: the caller closes it).

    Raises:
        PodUnreachableError: When the pod cannot be reached in ``connect_timeout``.
        AuthenticationError: When it refuses the token.
    """
    return PodConnection(
        lambda: backend.endpoint(info),
        name=info.name,
        status=lambda: backend.status(info),  # run off the reader thread by the bridge
        connect_timeout=config.get("connect_timeout"),
        reconnect_timeout=config.get("reconnect_timeout"),
        use_shm=config.get("shm"),
        max_pending_events=config.get("max_pending_events"),
    )


def live(backend: Backend, info: PodInfo) -> PodConnection | None:
    """The pool's live connection to ``info``'s pod, if it holds one (no I/O, no lock).

    The path of every warm call: a dict lookup. A connection whose pod died is marked
    dead by the bridge, so it is not returned.
    """
    conn = _pool.get(_key(backend, info))
    return conn if conn is not None and conn.dead is None else None


def pooled(backend: Backend, info: PodInfo) -> PodConnection:
    """The pool's live connection to ``info``'s pod, opening exactly one if there is none.

    Raises:
        PodUnreachableError: When it has to connect and cannot.
        AuthenticationError: When the pod refuses the token.
    """
    key = _key(backend, info)
    with _lock:
        conn = _pool.get(key)
        if conn is not None and conn.dead is None:
            return conn
        gate = _opening.setdefault(key, threading.Lock())
    with gate:  # one opener per pod; the others wait for its connection
        with _lock:
            conn = _pool.get(key)
            if conn is not None and conn.dead is None:
                return conn
        try:
            new = open_connection(backend, info)
        finally:
            with _lock:
                _opening.pop(key, None)
        with _lock:
            stale = _pool.get(key)
            _pool[key] = new
        if stale is not None:
            stale.close()
        return new


def take_dead(backend: Backend, info: PodInfo) -> BridgeError | None:
    """Forget the pool's connection to ``info``'s pod if the pod died; why it did, if so."""
    key = _key(backend, info)
    with _lock:
        conn = _pool.get(key)
        if conn is None or conn.dead is None:
            return None
        del _pool[key]
    conn.close()
    return conn.dead


def count(url: str) -> int:
    """How many live pool connections of this process go to ``url``."""
    with _lock:
        return sum(1 for (_, _, u), c in _pool.items() if u == url and c.dead is None)


def other_clients(backend: Backend, info: PodInfo) -> int:
    """How many clients other than this process's pool are connected to the pod now.

    Connects once and reads the pod's WELCOME (``clients``: the others connected then),
    less this process's own pool connection. A pod that cannot be reached has none.
    """
    try:
        probe = open_connection(backend, info)
    except BridgeError:
        return 0
    try:
        others = int(probe.welcome.get("clients", 0) or 0)
    finally:
        probe.close()
    return max(0, others - count(info.url))


def drop(name: str, backend_name: str | None = None, *, torn_down: bool = False) -> None:
    """Close and forget the pool's connections to pods called ``name`` (of one backend).

    With ``torn_down`` (the pod is being stopped), calls still in flight on them fail
    with a :class:`~kernel_bridge.PodDiedError` that says so.
    """
    with _lock:
        keys = [k for k in _pool if k[1] == name and backend_name in (None, k[0])]
        conns = [_pool.pop(k) for k in keys]
    for conn in conns:
        conn.close(PodDiedError(
            f"pod {name!r} was torn down by this process while calls were in flight; its "
            "state is lost. The next .to() or %%kt starts a fresh pod", pod=name,
            exit_status=None, reason="TornDown") if torn_down else None)
