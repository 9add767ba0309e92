"""The HTTP side of a websocket: the client's upgrade, the server's request and answer.

Each function turns a connected socket into a :class:`~.wire.WireConnection` (or
answers a plain HTTP request: the pod's probes). TLS (``wss://``) and a dialled socket
(a port-forward, a tunnel) are the client's choice here, so the connection above
never knows how the bytes travel.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus, ProtocolError
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from .wire import WireConnection

__all__ = [
    "MAX_REQUEST_BYTES",
    "HandshakeRejected",
    "RequestTooLarge",
    "client_handshake",
    "header",
    "is_protocol_error",
    "read_request",
    "respond",
    "server_accept",
]


class HandshakeRejected(ConnectionError):
    """The server answered the upgrade with an HTTP error (``status``, ``body``)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()}")
        self.status = status
        self.body = body


def client_handshake(
    url: str,
    headers: dict[str, str],
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    dial: Callable[[float], socket.socket] | None = None,
    **kwargs: Any,
) -> WireConnection:
    """Connect to ``url`` (``ws://`` or ``wss://host:port/path``) and upgrade to a websocket.

    Args:
        url: Where to connect; for ``wss://``, TLS runs first, checking the server's
            certificate against the URL's host.
        headers: Extra request headers (the token, ...).
        timeout: Seconds for connecting, TLS and the upgrade together.
        ssl_context: For ``wss://`` (None: ``ssl.create_default_context()``, which
            checks the certificate and the host name).
        dial: Given ``timeout``, returns a connected socket to use instead of connecting
            to the URL's host and port (a port-forward, a tunnel).
        **kwargs: Go to :class:`WireConnection` (``on_message``, ``on_close``, ...).

    Raises:
        HandshakeRejected: The server answered with an HTTP error (401: bad token).
        ssl.SSLCertVerificationError: The server's certificate is not trusted.
        OSError: The connection (or TLS) failed.
        TimeoutError: No answer within ``timeout``.
    """
    uri = parse_uri(url)
    if dial is not None:
        sock = dial(timeout)
    else:
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
    try:
        sock.settimeout(timeout)
        if uri.secure:
            context = ssl_context if ssl_context is not None else ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=uri.host)
        proto = ClientProtocol(uri, max_size=None)
        request = proto.connect()
        for key, value in {**headers, "User-Agent": "kubetorch-jupyter"}.items():
            if key in request.headers:  # replaced, not repeated (e.g. Host for an ingress)
                del request.headers[key]
            request.headers[key] = value
        proto.send_request(request)
        for chunk in proto.data_to_send():
            sock.sendall(chunk)
        while proto.state is State.CONNECTING:
            data = sock.recv(65536)
            if not data:
                proto.receive_eof()
                break
            proto.receive_data(data)
        events = proto.events_received()
        response = next((e for e in events if isinstance(e, Response)), None)
        frames = [e for e in events if not isinstance(e, Response)]
        if proto.state is not State.OPEN:
            exc = proto.handshake_exc
            if isinstance(exc, InvalidStatus):
                body = exc.response.body.decode(errors="replace") if exc.response.body else ""
                raise HandshakeRejected(exc.response.status_code, body)
            raise ConnectionError(f"websocket handshake with {url} failed: {exc}")
        assert response is not None
        sock.settimeout(None)
        # Frames that arrived in the same read as the response are handled first.
        return WireConnection(sock, proto, pending=frames, **kwargs)
    except BaseException:
        sock.close()
        raise


#: Bytes an upgrade request may take (request line and headers): websockets' own parser
#: allows 128 headers of 8 KiB each; nobody's bridge request comes near this.
MAX_REQUEST_BYTES = 64 * 1024


class RequestTooLarge(ConnectionError):
    """The peer sent more than :data:`MAX_REQUEST_BYTES` without completing its request."""


def read_request(sock: socket.socket, timeout: float = 10.0, *,
                 max_size: int | None = None) -> tuple[ServerProtocol, Request | None]:
    """Read an HTTP request from a freshly accepted socket (for the server).

    Args:
        sock: The accepted socket.
        timeout: Seconds for the whole request (a deadline, not per read: a peer that
            sends a byte now and then is dropped all the same).
        max_size: Bytes of messages the websocket may receive later (None: no limit).

    Raises:
        TimeoutError: The request was not complete within ``timeout``.
        RequestTooLarge: It passed :data:`MAX_REQUEST_BYTES`.
        OSError: The socket failed.
    """
    deadline = time.monotonic() + timeout
    proto = ServerProtocol(max_size=max_size)
    request = None
    received = 0
    while request is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request within {timeout:g}s")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            proto.receive_eof()
            break
        received += len(data)
        if received > MAX_REQUEST_BYTES:
            raise RequestTooLarge(f"request over {MAX_REQUEST_BYTES} bytes")
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Request):
                request = event
        if proto.parser_exc is not None:
            break
    return proto, request


def respond(sock: socket.socket, proto: ServerProtocol, status: int, text: str,
            headers: dict[str, str] | None = None) -> None:
    """Answer a plain HTTP request (or refuse an upgrade) and close the socket."""
    response = proto.reject(status, text)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    proto.send_response(response)
    with contextlib.suppress(OSError):
        for chunk in proto.data_to_send():
            if chunk:
                sock.sendall(chunk)
        sock.close()


def server_accept(sock: socket.socket, proto: ServerProtocol, request: Request,
                  **kwargs: Any) -> WireConnection | None:
    """Complete the upgrade of an authenticated request; None if it was not a websocket."""
    response = proto.accept(request)
    proto.send_response(response)
    for chunk in proto.data_to_send():
        sock.sendall(chunk)
    if response.status_code != 101:
        sock.close()
        return None
    sock.settimeout(None)
    return WireConnection(sock, proto, **kwargs)


def header(request: Request, name: str) -> str | None:
    """A request header, or None."""
    headers: Headers = request.headers
    return headers.get(name)


def is_protocol_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a websocket protocol violation by the peer."""
    return isinstance(exc, ProtocolError)
