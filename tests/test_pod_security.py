"""Authentication comes first: nothing is unpickled for a peer without the token."""

from __future__ import annotations

import base64
import os
import pickle
import socket
import struct
import threading
import urllib.request
from pathlib import Path

import pytest
from kt_testing import RawPod, timeout

import kubetorch_jupyter as kt
from kernel_bridge import PodConnection
from pod_runtime import protocol
from pod_runtime.protocol import FrameType


class _Bomb:
    """Unpickling this creates a file: proof that a payload was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.path), "w"))


def _masked_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    head = bytearray([0x82])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + mask + masked


def _upgrade_then_send(pod: RawPod, auth: str | None, payload: bytes,
                       headers: dict[str, str] | None = None) -> bytes:
    """Send an upgrade request and, without waiting, a CALL frame; return the response."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {protocol.BRIDGE_PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{pod.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    lines.extend(f"{key}: {value}" for key, value in (headers or {}).items())
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", pod.port), timeout=timeout(10)) as sock:
        sock.sendall(request + _masked_frame(payload))
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data or b"\r\n\r\n" in b"".join([*chunks, data]):
                chunks.append(data)
                break
            chunks.append(data)
    return b"".join(chunks)


def _bomb_call(marker: Path) -> bytes:
    body = pickle.dumps({"kind": "fn", "fn_id": "x", "fn_blob": None,
                         "args": (_Bomb(marker),), "kwargs": {}}, protocol=5)
    return b"".join(protocol.encode_frame(FrameType.CALL, 1, body))


def _healthz(pod: RawPod) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{pod.port}/healthz", timeout=10) as r:
        return r.read().decode()


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic abc", "Bearer "])
def test_connection_without_the_token_is_refused_before_unpickling(
    raw_pod: RawPod, tmp_path: Path, auth: str | None
) -> None:
    marker = tmp_path / "unpickled"
    response = _upgrade_then_send(raw_pod, auth, _bomb_call(marker))
    assert response.startswith(b"HTTP/1.1 401"), response[:200]
    assert _healthz(raw_pod) == "ok\n"  # the pod has certainly processed our socket by now
    assert not marker.exists()


@pytest.mark.parametrize(("auth", "x_kt_token"), [
    (None, "wrong-token"),
    ("Bearer {token}", "wrong-token"),  # X-KT-Token decides when it is there
    ("Bearer wrong-token", ""),
    (None, ""),
])
def test_a_wrong_x_kt_token_is_refused_before_unpickling(
    raw_pod: RawPod, tmp_path: Path, auth: str | None, x_kt_token: str
) -> None:
    marker = tmp_path / "unpickled"
    response = _upgrade_then_send(
        raw_pod, auth.format(token=raw_pod.token) if auth else None, _bomb_call(marker),
        {protocol.POD_TOKEN_HEADER: x_kt_token})
    assert response.startswith(b"HTTP/1.1 401"), response[:200]
    assert _healthz(raw_pod) == "ok\n"
    assert not marker.exists()


@pytest.mark.parametrize(("auth", "x_kt_token"), [
    (None, "{token}"),
    ("Bearer {token}", None),
    ("Bearer a-proxy-credential", "{token}"),  # Authorization belongs to a proxy then
    ("Basic dXNlcjpwYXNz", "{token}"),
])
def test_the_token_is_accepted_in_x_kt_token_or_authorization(
    raw_pod: RawPod, auth: str | None, x_kt_token: str | None
) -> None:
    headers = {} if x_kt_token is None else {
        protocol.POD_TOKEN_HEADER: x_kt_token.format(token=raw_pod.token)}
    response = _upgrade_then_send(raw_pod, auth.format(token=raw_pod.token) if auth else None,
                                  b"", headers)
    assert response.startswith(b"HTTP/1.1 101"), response[:200]


def test_the_same_payload_with_the_token_is_loaded(raw_pod: RawPod, tmp_path: Path) -> None:
    """Control: the payload above really is a bomb when the token is right."""
    marker = tmp_path / "unpickled"
    conn = PodConnection(raw_pod.url, raw_pod.token, name="raw")
    try:
        body = pickle.dumps({"kind": "fn", "fn_id": "x", "fn_blob": pickle.dumps(len),
                             "args": ("abc",), "kwargs": {"_": _Bomb(marker)}}, protocol=5)
        with pytest.raises(TypeError):  # len() got an unexpected keyword argument
            conn.call(body, []).result(timeout(30))
        assert marker.exists()
    finally:
        conn.close()


def test_client_reports_a_wrong_token_clearly(raw_pod: RawPod) -> None:
    with pytest.raises(kt.AuthenticationError, match="refused our token"):
        PodConnection(raw_pod.url, "not-the-token", name="raw")


def test_client_refuses_a_server_that_cannot_prove_the_token(tmp_path: Path) -> None:
    """An impostor that accepts any token gets no pickles: its WELCOME has no valid proof."""
    from pod_runtime.protocol import handshake

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def impostor() -> None:
        sock, _ = listener.accept()
        proto, request = handshake.read_request(sock)
        assert request is not None
        ws = handshake.server_accept(sock, proto, request, on_message=received.extend,
                                on_close=lambda exc: None, ping_interval=None)
        assert ws is not None
        welcome = {"pod": "x", "boot_id": "b", "proof": "0" * 64, "shm": None, "versions": {}}
        ws.send(protocol.encode_frame(FrameType.WELCOME, 0, protocol.dump_json(welcome)))
        ws.run()

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    with pytest.raises(kt.AuthenticationError, match="could not prove"):
        PodConnection(f"ws://127.0.0.1:{port}", "any-token", name="impostor")
    thread.join(timeout(10))
    listener.close()
    assert received == []  # nothing was sent to it


def test_pod_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KT_POD_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "pod_runtime"], env=env, capture_output=True,
                          text=True, timeout=timeout(30))
    assert proc.returncode == 2
    assert "KT_POD_TOKEN" in proc.stderr


def test_probes_answer_without_a_token_and_unknown_paths_404(raw_pod: RawPod) -> None:
    assert _healthz(raw_pod) == "ok\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{raw_pod.port}/metrics", timeout=10) as r:
        assert "kt_calls_total" in r.read().decode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{raw_pod.port}/nope", timeout=10)
    assert err.value.code == 404
    err.value.close()
