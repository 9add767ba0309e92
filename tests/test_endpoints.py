"""Endpoints: TLS with certificate checking, dialled sockets, providers asked again."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kt_testing import RawPod, start_raw_pod, timeout
from tls_proxy import Proxy, make_certificate

from kernel_bridge import (
    CallHandle,
    Endpoint,
    PodConnection,
    PodUnreachableError,
)
from kubetorch_jupyter.calls.serialize import dump_callable
from pod_runtime import protocol
from pod_runtime.protocol import POD_TOKEN_HEADER


def _call(conn: PodConnection, fn: object, *args: object) -> CallHandle:
    digest, blob = dump_callable(fn)
    body, buffers = protocol.dumps({"kind": "fn", "fn_id": digest, "fn_blob": blob,
                                    "args": args, "kwargs": {}})
    return conn.call(body, buffers, sink=lambda e: None)


def wait_for_gate(gate: str) -> int:
    import pathlib
    import time

    print("started", flush=True)
    while not pathlib.Path(gate).exists():
        time.sleep(0.01)
    return 42


def sha256(data: object) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()  # type: ignore[arg-type]


@pytest.fixture()
def pod(tmp_path: Path) -> Iterator[RawPod]:
    pod = start_raw_pod(tmp_path)
    yield pod
    pod.stop()


@pytest.fixture()
def tls(tmp_path: Path, pod: RawPod) -> Iterator[tuple[Proxy, Path]]:
    """A TLS-terminating proxy in front of the pod, with a certificate made here."""
    cert, key = make_certificate(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    proxy = Proxy(pod.port, tls=server)
    yield proxy, cert
    proxy.close()


def test_wss_with_a_trusted_certificate_carries_calls(pod: RawPod, tls: tuple[Proxy, Path]
                                                     ) -> None:
    import hashlib

    import numpy as np

    proxy, cert = tls
    trusting = ssl.create_default_context(cafile=str(cert))
    conn = PodConnection(Endpoint(proxy.url, pod.token, ssl_context=trusting), name="tls",
                         use_shm=False)
    try:
        assert conn.url.startswith("wss://")
        assert _call(conn, len, "abc").result(timeout(30)) == 3
        big = np.arange(3 * 1024 * 1024, dtype=np.uint8)  # masked, encrypted, in slices
        digest = _call(conn, sha256, big).result(timeout(60))
        assert digest == hashlib.sha256(big.tobytes()).hexdigest()
    finally:
        conn.close()
    # The token went in X-KT-Token; Authorization is left to whoever stands between.
    head = proxy.heads[0].decode("latin-1")
    assert f"{POD_TOKEN_HEADER}: {pod.token}\r\n" in head
    assert "authorization:" not in head.lower()


def test_wss_with_an_untrusted_certificate_says_so(pod: RawPod, tls: tuple[Proxy, Path]
                                                  ) -> None:
    proxy, _ = tls
    with pytest.raises(PodUnreachableError) as info:  # the default context checks it
        PodConnection(Endpoint(proxy.url, pod.token), name="tls", use_shm=False)
    message = str(info.value)
    assert "certificate failed verification" in message and "ssl_context" in message
    assert "\n" not in message
    assert proxy.accepted == 0  # nothing got past TLS


def test_a_dialled_socket_carries_calls_and_the_provider_is_asked_on_reconnect(
    pod: RawPod, tmp_path: Path,
) -> None:
    proxy = Proxy(pod.port)  # the tunnel the dial function goes through
    asked = []

    def dial(seconds: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", proxy.port), timeout=seconds)

    def where() -> Endpoint:
        asked.append(1)  # the URL names the pod; it is never connected to
        return Endpoint("ws://pod-behind-a-tunnel.invalid:1", pod.token, dial=dial)

    conn = PodConnection(where, name="dialled", reconnect_timeout=timeout(60))
    try:
        assert _call(conn, len, "abcd").result(timeout(30)) == 4
        assert len(asked) == 1
        gate = tmp_path / "gate"
        handle = _call(conn, wait_for_gate, str(gate))
        assert next(handle.stream(timeout(30)))["text"].startswith("started")
        proxy.cut()  # the tunnel drops while the call runs
        assert proxy.wait(lambda: proxy.refused >= 1, timeout(30))
        gate.touch()
        proxy.restore()
        assert handle.result(timeout(60)) == 42
        assert len(asked) >= 3  # first connect, a refused retry, the retry that worked
        assert proxy.accepted == 2
    finally:
        conn.close()
        proxy.close()


def test_a_provider_that_fails_is_unreachable_then_retried(pod: RawPod) -> None:
    with pytest.raises(PodUnreachableError, match="cannot find where pod 'moving' is: "
                                                  "LookupError: no pod 'moving' yet"):
        PodConnection(lambda: (_ for _ in ()).throw(LookupError("no pod 'moving' yet")),
                      name="moving")

    proxy = Proxy(pod.port)
    moving = threading.Event()
    asked_while_moving = threading.Event()

    def where() -> Endpoint:
        if moving.is_set():
            asked_while_moving.set()
            raise RuntimeError("the pod is being rescheduled")
        return Endpoint(proxy.url, pod.token)

    conn = PodConnection(where, name="moving", reconnect_timeout=timeout(60))
    try:
        moving.set()
        proxy.cut()
        handle = _call(conn, len, "moved")  # made while the pod cannot be found
        assert asked_while_moving.wait(timeout(30))
        proxy.restore()
        moving.clear()
        assert handle.result(timeout(30)) == 5
    finally:
        conn.close()
        proxy.close()


def test_an_ingress_authorization_header_is_left_alone() -> None:
    endpoint = Endpoint("wss://ingress.example/pods/dev", "s3cret",
                        headers={"authorization": "Basic aW5ncmVzcw=="})
    assert endpoint.request_headers() == {"authorization": "Basic aW5ncmVzcw==",
                                          POD_TOKEN_HEADER: "s3cret"}
    plain = Endpoint("ws://127.0.0.1:1", "s3cret", headers={"X-Route": "dev"})
    assert plain.request_headers() == {"X-Route": "dev", POD_TOKEN_HEADER: "s3cret"}


def test_a_pod_behind_a_proxy_that_uses_authorization_itself(pod: RawPod) -> None:
    # What an ingress or the API server's proxy forwards: its own Authorization beside ours.
    conn = PodConnection(Endpoint(pod.url, pod.token,
                                  headers={"Authorization": "Bearer proxy-credential"}),
                         name="proxied")
    try:
        assert _call(conn, len, "abcd").result(timeout(30)) == 4
    finally:
        conn.close()


def test_no_repr_shows_a_token_or_a_header_value(pod: RawPod) -> None:
    endpoint = Endpoint(pod.url, pod.token, headers={"Authorization": "Basic c2VjcmV0"})
    assert pod.token not in repr(endpoint) and "c2VjcmV0" not in repr(endpoint)
    assert "Authorization" in repr(endpoint) and pod.url in repr(endpoint)
    conn = PodConnection(pod.url, pod.token, name="shown")
    try:
        assert pod.token not in repr(conn)
    finally:
        conn.close()


def test_endpoints_are_checked() -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        Endpoint("http://127.0.0.1:1", "t")
    with pytest.raises(TypeError, match="needs the pod's token"):
        PodConnection("ws://127.0.0.1:1")
    with pytest.raises(TypeError, match="the token goes in the Endpoint"):
        PodConnection(Endpoint("ws://127.0.0.1:1", "t"), "t")


def test_a_large_inline_argument_is_masked_without_a_copy_of_it(pod: RawPod) -> None:
    """Shared memory off (as in a cluster): a 96 MiB argument goes inline, masked in slices."""
    import hashlib
    import tracemalloc

    import numpy as np

    conn = PodConnection(pod.url, pod.token, name="inline", use_shm=False)
    try:
        assert _call(conn, sha256, b"warm").result(timeout(30))
        big = np.random.default_rng(7).integers(0, 256, 96 * 1024 * 1024 + 3, dtype=np.uint8)
        want = hashlib.sha256(big.data).hexdigest()
        tracemalloc.start()
        try:
            got = _call(conn, sha256, big).result(timeout(60))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert got == want  # every slice masked with the right key, none lost
        assert peak < big.nbytes // 2, f"{peak / 2**20:.1f} MiB allocated to send 96 MiB"
    finally:
        conn.close()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes from ``a`` to ``b`` until ``a`` ends, then end ``b``'s writing side."""
    try:
        while data := a.recv(1 << 16):
            b.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


def test_a_dialled_unix_socketpair_carries_calls(pod: RawPod) -> None:
    # What a Kubernetes client's port-forward hands over: a socket that is no TCP socket.
    relays: list[threading.Thread] = []
    held: list[socket.socket] = []

    def dial(seconds: float) -> socket.socket:
        ours, theirs = socket.socketpair()
        upstream = socket.create_connection(("127.0.0.1", pod.port), timeout=seconds)
        upstream.settimeout(None)
        held.extend((theirs, upstream))
        for a, b in ((theirs, upstream), (upstream, theirs)):
            relay = threading.Thread(target=_relay, args=(a, b), daemon=True)
            relay.start()
            relays.append(relay)
        return ours

    conn = PodConnection(Endpoint("ws://pod.invalid:1", pod.token, dial=dial), name="pair",
                         use_shm=False)
    try:
        assert _call(conn, len, "abcde").result(timeout(30)) == 5
    finally:
        conn.close()
    for relay in relays:
        relay.join(timeout(10))
    for sock in held:
        sock.close()
