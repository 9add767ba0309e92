"""Hostile peers cannot starve or crash a pod: floods, slow senders, garbage, huge frames.

Against real pod processes: 200 idle unauthenticated connections and 50 that send
their upgrade a byte at a time, held open while an authenticated client completes its
calls (no latency threshold: it completes them, and a new client gets in); random
bytes before and after authentication (property-based, with hypothesis) close that
connection and leave the pod serving; a message over ``KT_POD_MAX_MESSAGE_BYTES``
closes with 1009, a malformed frame with 1002.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kt_testing import RawPod, fn_call, start_raw_pod, timeout

from kernel_bridge import PodConnection
from pod_runtime import protocol


def echo(x: object) -> object:
    return x


def _healthz(pod: RawPod) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{pod.port}/healthz", timeout=timeout(30)) as r:
        return str(r.read().decode())


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _upgrade(pod: RawPod, token: str | None) -> socket.socket:
    """A socket past the websocket upgrade (101) with ``token``; raises if refused."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {protocol.BRIDGE_PATH} HTTP/1.1", f"Host: 127.0.0.1:{pod.port}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             "Sec-WebSocket-Version: 13"]
    if token is not None:
        lines.append(f"X-KT-Token: {token}")
    sock = socket.create_connection(("127.0.0.1", pod.port), timeout=timeout(30))
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise ConnectionRefusedError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock


def _frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    head = bytearray([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else (
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big"))
        .to_bytes(n, "big"))
    return bytes(head) + mask + body


def _close_code(sock: socket.socket) -> int | None:
    """Read until EOF; the code of the close frame the pod sent, if it sent one."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    sock.close()
    at = data.find(b"\x88")
    if at < 0 or len(data) < at + 4:
        return None
    return int(struct.unpack("!H", data[at + 2:at + 4])[0])


@pytest.fixture(scope="module")
def small_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawPod]:
    """A pod that takes messages of at most 1 MiB and handshakes of at most 1 s."""
    old = {k: os.environ.get(k) for k in ("KT_POD_MAX_MESSAGE_BYTES", "KT_POD_HANDSHAKE_TIMEOUT")}
    os.environ.update(KT_POD_MAX_MESSAGE_BYTES="1Mi", KT_POD_HANDSHAKE_TIMEOUT="1")
    try:
        pod = start_raw_pod(tmp_path_factory.mktemp("small"))
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield pod
    pod.stop()


# ------------------------------------------------------------------ flood
def test_a_flood_of_unauthenticated_and_slow_connections_does_not_starve_a_client(
        raw_pod: RawPod) -> None:
    client = PodConnection(raw_pod.url, raw_pod.token, name="flooded")
    stop = threading.Event()
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []

    def trickle(sock: socket.socket) -> None:  # an upgrade request, one byte at a time
        request = b"GET /bridge HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 10_000
        with contextlib.suppress(OSError):
            for byte in request:
                if stop.wait(0.05):
                    return
                sock.send(bytes([byte]))

    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", raw_pod.port)))
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", raw_pod.port))
            slow.append(sock)
            threading.Thread(target=trickle, args=(sock,), daemon=True).start()

        # While all 250 are held open: the connected client completes its calls ...
        for i in range(50):
            body, buffers = fn_call(echo, i)
            assert client.call(body, buffers, sink=lambda e: None).result(timeout(60)) == i
        # ... a new client with the token gets in and is served ...
        fresh = PodConnection(raw_pod.url, raw_pod.token, name="newcomer")
        body, buffers = fn_call(echo, "in")
        assert fresh.call(body, buffers, sink=lambda e: None).result(timeout(60)) == "in"
        fresh.close()
        # ... probes answer, and the pod holds a bounded number of threads for them.
        assert _healthz(raw_pod) == "ok\n"
        assert _threads(raw_pod.proc.pid) < 64 + 60  # KT_POD_MAX_PENDING_CONNECTIONS + own
        assert raw_pod.proc.poll() is None
    finally:
        stop.set()
        for sock in idle + slow:
            sock.close()
        client.close()


def test_a_slow_sender_is_dropped_at_the_handshake_deadline(small_pod: RawPod) -> None:
    sock = socket.create_connection(("127.0.0.1", small_pod.port), timeout=timeout(60))
    sock.settimeout(0.1)
    dropped = False
    for byte in b"GET /bridge HTTP/1.1\r\n" + b"X: " + b"a" * 100_000:
        try:
            sock.send(bytes([byte]))  # a byte now and then: never a whole request
            if sock.recv(1) == b"":
                dropped = True
                break
        except TimeoutError:
            continue
        except OSError:  # reset: the pod closed it
            dropped = True
            break
    sock.close()
    assert dropped
    assert _healthz(small_pod) == "ok\n"


def test_an_oversized_upgrade_request_is_dropped(raw_pod: RawPod) -> None:
    sock = socket.create_connection(("127.0.0.1", raw_pod.port), timeout=timeout(30))
    request = (b"GET /bridge HTTP/1.1\r\nHost: x\r\n"
               + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 4000) for i in range(40)) + b"\r\n")
    with contextlib.suppress(OSError):
        sock.sendall(request)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    assert not answer.startswith(b"HTTP/1.1 101")
    assert _healthz(raw_pod) == "ok\n"


# ------------------------------------------------------- frames after auth
def test_a_message_over_the_size_limit_closes_with_1009(small_pod: RawPod) -> None:
    sock = _upgrade(small_pod, small_pod.token)
    with contextlib.suppress(OSError):
        sock.sendall(_frame(b"\0" * (2 * 2**20)))
    assert _close_code(sock) == 1009
    conn = PodConnection(small_pod.url, small_pod.token, name="after")
    body, buffers = fn_call(echo, 1)
    assert conn.call(body, buffers, sink=lambda e: None).result(timeout(60)) == 1
    conn.close()


def test_a_malformed_frame_closes_with_a_protocol_error(small_pod: RawPod) -> None:
    sock = _upgrade(small_pod, small_pod.token)
    sock.sendall(_frame(b"not a kt frame at all"))
    assert _close_code(sock) == 1002
    assert _healthz(small_pod) == "ok\n"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=4096))
def test_garbage_before_authentication_never_crashes_the_pod(
        small_pod: RawPod, garbage: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", small_pod.port), timeout=timeout(30))
    with contextlib.suppress(OSError):
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    assert not answer.startswith(b"HTTP/1.1 101")  # never upgraded without the token
    assert small_pod.proc.poll() is None


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=4096),
       framed=st.booleans())
def test_garbage_after_authentication_closes_that_connection_only(
        small_pod: RawPod, garbage: bytes, framed: bool) -> None:
    sock = _upgrade(small_pod, small_pod.token)
    with contextlib.suppress(OSError):
        sock.sendall(_frame(garbage) if framed else garbage)
        sock.shutdown(socket.SHUT_WR)
    code = _close_code(sock)
    assert code in (None, 1000, 1002, 1003, 1007, 1009), code
    assert small_pod.proc.poll() is None
    assert _healthz(small_pod) == "ok\n"
