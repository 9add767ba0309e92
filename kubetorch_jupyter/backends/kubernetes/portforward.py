"""Reaching a pod through the API server's port-forward, as a bridge dial function.

:func:`dial` opens one port-forward websocket (``connect_get_namespaced_pod_portforward``,
through the official client's ``kubernetes.stream.portforward``) to a pod's runtime port
and returns the local end of the socket pair the client relays through it: the bridge
then runs its own websocket handshake, with the pod's token, over that socket. Closing
the socket ends the port-forward (the client's relay thread sees it and closes its
websocket).

Which pod: the backend resolves the compute's current ready pod on every dial (a pod
replaced by a changed spec, or rescheduled, is somewhere else now), so a reconnect
after a drop finds the pod where it is.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["dial"]


def dial(api: ApiClient, namespace: str, pod: str, port: int) -> socket.socket:
    """A connected socket to ``port`` of ``pod``, through the API server.

    Raises:
        ConnectionError: When the API server refuses the port-forward (no such pod, no
            RBAC for ``pods/portforward``), or nothing listens on the port.
    """
    from kubernetes.client import CoreV1Api
    from kubernetes.stream import portforward

    core = CoreV1Api(api)
    try:
        forward: Any = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace,
                                   ports=str(port))
    except Exception as exc:  # noqa: BLE001 - ApiException(status=0) wraps everything
        status = getattr(exc, "status", None)
        why = getattr(exc, "reason", None) or str(exc)
        raise ConnectionError(f"port-forward to pod {pod} in {namespace} failed"
                              f"{f' ({status})' if status else ''}: {why}") from None
    wrapped = forward.socket(port)
    # The client wraps the socket pair's end to swallow TCP options; the bridge wants the
    # plain socket (it sets TCP_NODELAY only where it applies).
    sock = getattr(wrapped, "_socket", wrapped)
    if not isinstance(sock, socket.socket):  # pragma: no cover - a client that changed
        raise ConnectionError("the kubernetes client's port-forward gave no socket")
    return sock
