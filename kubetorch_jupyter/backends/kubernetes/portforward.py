"""Reaching a pod through the API server's port-forward, as a bridge dial function.

:func:`dial` opens one port-forward websocket to a pod's runtime port (the
``pods/portforward`` subresource, the request ``kubectl port-forward`` makes, with the
official client's URL, authentication and TLS settings: ``param_serialize`` and
``kubernetes.stream.ws_client.create_websocket``) and returns the local end of a socket
pair relayed through it. The bridge then runs its own websocket handshake, with the pod's
token, over that socket. Closing the socket ends the port-forward.

The relay is ours rather than the client's ``portforward()``: that one's relay thread
raises ``BrokenPipeError`` out of the thread (a traceback on the user's stderr) when the
API server closes a forward that still has data to send, which every pod replacement
does. Here two threads move bytes, one each way (websocket-client sends and receives
under separate locks), and any end of either side closes both, quietly.

The port-forward protocol (``v4.channel.k8s.io``): each binary message starts with a
channel byte, 0 for the port's data and 1 for its errors; the first message on each
channel is the port number (2 bytes, little-endian).

Which pod: the backend resolves the compute's current ready pod on every dial (a pod
replaced by a changed spec, or rescheduled, is somewhere else now), so a reconnect
after a drop finds the pod where it is.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["dial"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_DATA, _ERROR = 0, 1


class _Relay:
    """One port-forward websocket and the socket pair end it relays to."""

    def __init__(self, websocket: Any, sock: socket.socket, name: str) -> None:
        self._ws = websocket
        self._sock = sock
        self._closed = threading.Event()
        self.error = ""
        for target, what in ((self._from_pod, "in"), (self._to_pod, "out")):
            threading.Thread(target=target, name=f"kt-portforward-{what}-{name}",
                             daemon=True).start()

    def _close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._ws.close(timeout=1)
        with contextlib.suppress(Exception):
            self._ws.shutdown()  # close() leaves the socket open when its frame fails
        with contextlib.suppress(OSError):
            self._sock.close()

    def _from_pod(self) -> None:
        from websocket import ABNF

        opened = {_DATA: False, _ERROR: False}
        try:
            while not self._closed.is_set():
                opcode, frame = self._ws.recv_data_frame(True)
                if opcode == ABNF.OPCODE_CLOSE:
                    return
                if opcode != ABNF.OPCODE_BINARY or not frame.data:
                    continue
                channel, data = frame.data[0], frame.data[1:]
                if channel not in opened:
                    continue
                if not opened[channel]:  # the port number, once per channel
                    opened[channel] = True
                    continue
                if channel == _ERROR:
                    self.error += data.decode("utf-8", "replace")
                    logger.debug("port-forward error: %s", self.error)
                    return
                self._sock.sendall(data)
        except Exception as exc:  # noqa: BLE001 - the API server or the bridge went away
            logger.debug("port-forward relay (pod to client) ended: %s", exc)
        finally:
            self._close()

    def _to_pod(self) -> None:
        try:
            while not self._closed.is_set():
                data = self._sock.recv(_CHUNK)
                if not data:
                    return
                self._ws.send_binary(bytes((_DATA,)) + data)
        except Exception as exc:  # noqa: BLE001 - the API server or the bridge went away
            logger.debug("port-forward relay (client to pod) ended: %s", exc)
        finally:
            self._close()


def dial(api: ApiClient, namespace: str, pod: str, port: int) -> socket.socket:
    """A connected socket to ``port`` of ``pod``, through the API server.

    Args:
        api: The API client (its host, credentials and TLS settings are used).
        namespace: The pod's namespace.
        pod: The pod's name.
        port: The container port.

    Raises:
        ConnectionError: When the API server refuses the port-forward (no such pod, no
            RBAC for ``pods/portforward``).
    """
    from kubernetes.stream.ws_client import create_websocket, get_websocket_url

    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/portforward"
    _, url, headers, _, _ = api.param_serialize(
        method="GET", resource_path=path, query_params=[("ports", str(port))],
        header_params={}, auth_settings=["BearerToken"])
    try:
        websocket = create_websocket(api.configuration, get_websocket_url(url), headers)
    except Exception as exc:  # noqa: BLE001 - websocket-client's errors, OSError
        status = getattr(exc, "status_code", None)
        raise ConnectionError(f"port-forward to pod {pod} in {namespace} failed"
                              f"{f' (HTTP {status})' if status else ''}: {exc}") from None
    ours, relayed = socket.socketpair()
    _Relay(websocket, relayed, pod)
    return ours
