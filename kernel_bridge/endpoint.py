"""Where a pod is and how to get there: the endpoint a connection asks for on every connect.

A :class:`PodConnection <kernel_bridge.PodConnection>` takes an endpoint, or a provider
(a function returning one) that it calls again before every reconnect attempt, so a
pod that moved (rescheduled, a new port-forward) is found where it is now. An endpoint
names a URL and the pod's token, and optionally extra headers (an ingress's own
``Authorization``), a TLS context for ``wss://``, and a dial function that returns an
already-connected socket (how a Kubernetes API-server port-forward or a tunnel plugs
in: the websocket handshake, and TLS for ``wss://``, then run over that socket).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pod_runtime import protocol

__all__ = ["Endpoint", "EndpointProvider"]


@dataclass(frozen=True)
class Endpoint:
    """How to reach one pod.

    Attributes:
        url: The pod's base URL, ``ws://host:port`` or ``wss://host:port[/prefix]``; the
            bridge's path is appended.
        token: The pod's token (never shown by ``repr``).
        headers: Extra headers for the upgrade request (e.g. an ingress's own
            ``Authorization``: the token travels in ``X-KT-Token``, which clashes with
            nothing).
        ssl_context: For ``wss://``; None means ``ssl.create_default_context()``
            (certificate and host name checked against the system's trust store).
        dial: Given a timeout in seconds, returns a connected socket to the pod; the
            URL's host then only names the pod (TLS checks the certificate against it).
    """

    url: str
    token: str
    headers: Mapping[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None
    dial: Callable[[float], socket.socket] | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"an endpoint URL starts with ws:// or wss://, not {self.url!r}")

    def __repr__(self) -> str:
        parts = [repr(self.url), "token=<hidden>"]
        if self.headers:  # values may be credentials too: names only
            parts.append(f"headers=<{', '.join(sorted(self.headers))}>")
        if self.ssl_context is not None:
            parts.append("ssl_context=<custom>")
        if self.dial is not None:
            parts.append(f"dial={getattr(self.dial, '__qualname__', type(self.dial).__name__)}")
        return f"Endpoint({', '.join(parts)})"

    @property
    def secure(self) -> bool:
        """Whether the connection uses TLS (``wss://``)."""
        return self.url.startswith("wss://")

    def request_headers(self) -> dict[str, str]:
        """The upgrade request's headers: the extra ones, and the token in ``X-KT-Token``.

        ``Authorization`` is left to whoever stands between (an ingress, the API
        server's proxy); the pod still accepts ``Authorization: Bearer`` from clients
        that send it.
        """
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() != protocol.POD_TOKEN_HEADER.lower()}
        headers[protocol.POD_TOKEN_HEADER] = self.token
        return headers


#: A function that returns where the pod is now (called before every connect attempt).
EndpointProvider = Callable[[], Endpoint]


def as_provider(endpoint: Endpoint | EndpointProvider | str, token: str | None,
                ) -> EndpointProvider:
    """One way to ask for the endpoint, whatever form it was given in."""
    if isinstance(endpoint, str):
        if token is None:
            raise TypeError("PodConnection(url, token): a URL needs the pod's token")
        fixed = Endpoint(endpoint, token)
        return lambda: fixed
    if token is not None:
        raise TypeError("PodConnection(endpoint): the token goes in the Endpoint")
    if isinstance(endpoint, Endpoint):
        return lambda: endpoint
    return endpoint


def guarded_dial(endpoint: Endpoint) -> Callable[[float], socket.socket] | None:
    """The endpoint's dial function, its failures all reported as connection errors."""
    dial = endpoint.dial
    if dial is None:
        return None

    def connect(timeout: float) -> socket.socket:
        try:
            return dial(timeout)
        except OSError:
            raise
        except Exception as exc:  # whatever the caller's tunnel raises
            raise ConnectionError(f"dialling failed: {type(exc).__name__}: {exc}") from exc

    return connect
