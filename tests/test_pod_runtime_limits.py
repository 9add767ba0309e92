"""The pod's limits: slow clients, threads per connection, memory bounds, signal masks."""

from __future__ import annotations

import base64
import os
import pickle
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from kt_testing import RawPod, start_raw_pod, timeout
from websockets.utils import apply_mask

from kernel_bridge import PodConnection
from pod_runtime import protocol
from pod_runtime.protocol import FrameType


class RawClient:
    """An authenticated websocket client on a plain socket, which reads only when asked.

    A real client whose reader thread stopped (a suspended laptop, a stuck
    port-forward) looks like this to the pod: its socket buffers fill and stay full.
    """

    def __init__(self, pod: RawPod) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        sock.settimeout(timeout(10))
        sock.connect(("127.0.0.1", pod.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {protocol.BRIDGE_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{pod.port}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Authorization: Bearer {pod.token}\r\n\r\n")
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "the pod closed the upgrade"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.sock = sock

    def send_call(self, call_id: int, msg: dict[str, Any], flags: int = 0) -> None:
        body = pickle.dumps(msg, protocol=5)
        [payload] = protocol.encode_frame(FrameType.CALL, call_id, body, flags=flags)
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x82]) + (bytes([0x80 | 126]) + struct.pack("!H", n) if n >= 126
                                else bytes([0x80 | n]))
        assert n < 65536
        self.sock.sendall(head + mask + apply_mask(bytes(payload), mask))

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the pod closed the connection"
            data += chunk
        return data

    def read_frame(self) -> protocol.Frame:
        """Read one whole message from the pod (unmasked frames) and decode it."""
        parts: list[bytes] = []
        while True:
            head1, head2 = self._exact(2)
            length = head2 & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(length)
            if head1 & 0x0F in (0x9, 0xA):  # ping, pong
                continue
            parts.append(payload)
            if head1 & 0x80:
                return protocol.decode_frame(parts)

    def read_until_closed(self) -> int:
        """Read (and drop) everything until the pod closes the connection; bytes read."""
        total = 0
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return total
            if not data:
                return total
            total += len(data)

    def close(self) -> None:
        self.sock.close()


def _fn_call(func: Any, *args: Any) -> dict[str, Any]:
    """A CALL body of kind fn; ``func`` goes by value (the pod cannot import tests)."""
    module = sys.modules[func.__module__]
    cloudpickle.register_pickle_by_value(module)
    try:
        blob = cloudpickle.dumps(func)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    return {"kind": "fn", "fn_id": f"t-{id(func)}", "fn_blob": blob, "args": args,
            "kwargs": {}}


def _big(n: int) -> bytes:
    print("x" * 2000)  # output too, for the writer to send before the result
    return b"\0" * n


@pytest.fixture
def pod(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[RawPod]:
    """A pod of its own, with the variables of the test's ``pod`` parameter set."""
    for key, value in getattr(request, "param", {}).items():
        monkeypatch.setenv(key, value)
    p = start_raw_pod(tmp_path)
    yield p
    p.stop()


def test_a_client_that_stops_reading_does_not_hold_up_another_clients_cells(
    pod: RawPod,
) -> None:
    stuck = RawClient(pod)
    conn = PodConnection(pod.url, pod.token, name="other", use_shm=False)
    try:
        # Its result is far larger than the socket buffers: the pod cannot write it out.
        stuck.send_call(1, _fn_call(_big, 64 << 20), flags=protocol.FLAG_MAIN_THREAD)
        first = pickle.dumps({"kind": "fn", "fn_id": "len", "fn_blob": pickle.dumps(len),
                              "args": ("abc",), "kwargs": {}}, protocol=5)
        assert conn.call(first, []).result(timeout(30)) == 3
        # A cell runs on the pod's main thread, after the stuck client's call there.
        cell = pickle.dumps({"kind": "cell", "source": "6 * 7"}, protocol=5)
        conn.call(cell, [], flags=protocol.FLAG_MAIN_THREAD).result(timeout(30))
        again = conn.call(first, []).result(timeout(30))
        assert again == 3
    finally:
        conn.close()
        stuck.close()


@pytest.mark.parametrize("pod", [{"KT_POD_MAX_OUTBOUND_BYTES": "1Mi"}], indirect=True)
def test_a_client_past_the_outbound_bound_is_closed_and_collects_later(pod: RawPod) -> None:
    stuck = RawClient(pod)
    size = 8 << 20
    stuck.send_call(11, _fn_call(_big, size))
    stuck.send_call(12, _fn_call(_big, size))
    # The pod closes the connection rather than queue more for a client that reads
    # nothing; it read a few MiB at most (what the socket buffers held).
    assert stuck.read_until_closed() < 2 * size
    stuck.close()
    assert "KT_POD_MAX_OUTBOUND_BYTES" in pod.log.read_text()
    conn = PodConnection(pod.url, pod.token, name="later", use_shm=False)
    try:
        # The results were kept: a new connection collects both.
        for call_id in (11, 12):
            assert conn.attach(call_id).result(timeout(30)) == b"\0" * size
    finally:
        conn.close()


def _connection_threads(own: str, wait: float) -> list[str]:
    """On the pod: wait for other connections' threads to end; the names of those left."""
    import threading
    import time

    deadline = time.monotonic() + wait
    prefixes = ("kt-conn", "kt-send", "kt-ping", "kt-flush", "kt-wire-")
    left = []
    for thread in threading.enumerate():
        name = thread.name
        if (not name.startswith(prefixes) or own in name or name == "kt-wire-watchdog"
                or thread is threading.current_thread()):
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left.append(name)
    return left


def _pod_threads(pod: RawPod) -> int:
    status = Path(f"/proc/{pod.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("Threads:")))


def test_connections_that_close_leave_no_threads_behind(pod: RawPod) -> None:
    def probe() -> tuple[list[str], int]:
        conn = PodConnection(pod.url, pod.token, name="probe", use_shm=False)
        try:
            msg = _fn_call(_connection_threads, conn.client_id[:8], timeout(10))
            left = conn.call(pickle.dumps(msg, protocol=5), []).result(timeout(60))
            return left, _pod_threads(pod)
        finally:
            conn.close()

    def chatty() -> None:
        print("some output")  # output gives the connection something to flush

    msg = pickle.dumps(_fn_call(chatty), protocol=5)
    _, before = probe()
    for _ in range(30):
        conn = PodConnection(pod.url, pod.token, name="brief", use_shm=False)
        conn.call(msg, []).result(timeout(30))
        conn.close()
    left, after = probe()
    assert left == []
    assert after <= before + 2  # the probe's own connection may have a reader more or less


# ------------------------------------------------------------------ signal masks
def _child_signal_state() -> tuple[str, int | str]:
    """On the pod: a child's blocked signals, and how a child ends on terminate()."""
    import subprocess

    status = subprocess.run(["grep", "SigBlk", "/proc/self/status"], capture_output=True,
                            text=True, check=True).stdout.split()[1]
    child = subprocess.Popen(["sleep", "60"])
    child.terminate()
    try:
        code: int | str = child.wait(10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        code = "still running 10 s after terminate()"
    return status, code


def _wait_for_fifo(path: str) -> str:
    """On the pod: hold a call slot until the test writes to the FIFO."""
    with open(path) as fifo:
        return fifo.read()


@pytest.mark.parametrize("pod", [{}], indirect=True)
def test_processes_started_by_calls_get_a_normal_signal_mask(pod: RawPod, tmp_path: Path
                                                             ) -> None:
    import signal

    conn = PodConnection(pod.url, pod.token, name="sig", use_shm=False)
    try:
        check = pickle.dumps(_fn_call(_child_signal_state), protocol=5)
        # Run on the connection's own thread (a short call) ...
        blocked, code = conn.call(check, []).result(timeout(30))
        assert blocked == "0000000000000000"
        assert code == -signal.SIGTERM
        # ... on the pod's main thread ...
        blocked, code = conn.call(check, [], flags=protocol.FLAG_MAIN_THREAD).result(
            timeout(30))
        assert (blocked, code) == ("0000000000000000", -signal.SIGTERM)
        # ... and on another thread while a call holds the connection's first one.
        fifo = tmp_path / "gate"
        os.mkfifo(fifo)
        holder = conn.call(pickle.dumps(_fn_call(_wait_for_fifo, str(fifo)), protocol=5), [])
        for _ in range(4):
            blocked, code = conn.call(check, []).result(timeout(30))
            assert (blocked, code) == ("0000000000000000", -signal.SIGTERM)
        with open(fifo, "w") as gate:
            gate.write("done")
        assert holder.result(timeout(30)) == "done"
    finally:
        conn.close()


# ------------------------------------------------------------------------ metrics
def test_metrics_label_values_are_escaped(tmp_path: Path) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    name = 'we"ird\\name\nwith a newline'
    pod = start_raw_pod(tmp_path, "--name", name)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.port}/metrics",
                                    timeout=timeout(10)) as response:
            text = response.read().decode()
    finally:
        pod.stop()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert {s.name for s in samples} >= {"kt_connections", "kt_calls_in_flight",
                                        "process_resident_memory_bytes"}
    assert all(s.labels == {"compute": name, "pod": name} for s in samples)


# ------------------------------------------------------------------ shared memory
def _leave_shm_file() -> str:
    """On the pod: write a buffer to shared memory that nobody will claim."""
    from pod_runtime.protocol import shm

    [name] = shm.ShmWriter(threshold=0).place([memoryview(b"x" * (1 << 20))])
    assert name is not None
    return name


def test_a_pod_that_starts_removes_shared_memory_of_a_pod_killed_by_sigkill(
    tmp_path: Path,
) -> None:
    import signal

    from pod_runtime.protocol import shm

    first = start_raw_pod(tmp_path)
    conn = PodConnection(first.url, first.token, name="first", use_shm=False)
    try:
        name = conn.call(pickle.dumps(_fn_call(_leave_shm_file), protocol=5), []).result(
            timeout(30))
    finally:
        conn.close()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout(10))
    assert (shm.SHM_DIR / name).exists()  # nobody cleaned up after a SIGKILL
    second = start_raw_pod(tmp_path)  # ready only after its sweep
    try:
        assert not (shm.SHM_DIR / name).exists()
    finally:
        second.stop()


def test_the_sweep_keeps_live_owners_files_and_removes_those_of_a_reused_pid() -> None:
    import secrets
    import subprocess
    import time

    from pod_runtime.protocol import shm

    mine = shm.SHM_DIR / f"kt-{os.getpid()}-{secrets.token_hex(12)}"
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    # A file named after a live process but older than it: left by an earlier owner of
    # that pid, which died.
    stale = shm.SHM_DIR / f"kt-{child.pid}-{secrets.token_hex(12)}"
    try:
        mine.write_bytes(b"live")
        stale.write_bytes(b"stale")
        an_hour_ago = time.time() - 3600
        os.utime(stale, (an_hour_ago, an_hour_ago))
        assert shm.sweep_dead_owners() >= 1
        assert mine.exists()
        assert not stale.exists()
    finally:
        mine.unlink(missing_ok=True)
        stale.unlink(missing_ok=True)
        child.communicate(b"")


# ------------------------------------------------------------------- memory bounds
_ALTERNATING = """
import sys
for i in range(100):
    (sys.stdout if i % 2 else sys.stderr).write(f"{i}\\n")
"""
_LONG = """
for i in range(2000):
    print(f"{i:04d}" + "x" * 96)
"""
_GATE = """
with open({fifo!r}, "w") as gate:
    gate.write("printed")
"""


def _detached_output(pod: RawPod, source: str, fifo: Path) -> list[dict[str, Any]]:
    """Run ``source`` as a detached cell (nobody reads its output), then collect it."""
    os.mkfifo(fifo)
    conn = PodConnection(pod.url, pod.token, name="bounds", use_shm=False)
    try:
        body = pickle.dumps({"kind": "cell", "source": source + _GATE.format(fifo=str(fifo)),
                             "detach": True}, protocol=5)
        run = conn.call(body, [], flags=protocol.FLAG_MAIN_THREAD).result(timeout(30))["run"]
        with open(fifo) as gate:  # the cell has written all its output once this opens
            assert gate.read() == "printed"
        events: list[dict[str, Any]] = []
        conn.attach(run, sink=events.append).result(timeout(30))
        return events
    finally:
        conn.close()


@pytest.mark.parametrize("pod", [{"KT_POD_MAX_EVENTS": "10", "KT_POD_MAX_EVENT_BYTES": "64Ki"}],
                         indirect=True)
def test_events_past_the_count_bound_are_dropped_with_a_marker(pod: RawPod, tmp_path: Path
                                                               ) -> None:
    events = _detached_output(pod, _ALTERNATING, tmp_path / "gate")
    texts = [e["text"] for e in events if e["kind"] == "stream"]
    assert texts[0].startswith("... ") and "earlier lines dropped (KT_POD_MAX_EVENTS)" in texts[0]
    assert int(texts[0].split()[1]) > 80  # about 90 of the 100 lines
    assert texts[-1] == "99\n"
    assert len(events) <= 11


@pytest.mark.parametrize("pod", [{"KT_POD_MAX_EVENT_BYTES": "16Ki"}], indirect=True)
def test_events_past_the_byte_bound_are_dropped_with_a_marker(pod: RawPod, tmp_path: Path
                                                              ) -> None:
    events = _detached_output(pod, _LONG, tmp_path / "gate")
    text = "".join(e["text"] for e in events if e["kind"] == "stream")
    first, _, rest = text.partition("\n")
    assert "earlier lines dropped (KT_POD_MAX_EVENT_BYTES)" in first
    assert rest.endswith("1999" + "x" * 96 + "\n")
    assert len(rest) <= 16 * 1024


def _block(n: int) -> bytes:
    return b"r" * n


@pytest.mark.parametrize("pod", [{"KT_POD_MAX_RETAINED_BYTES": "1Mi"}], indirect=True)
def test_results_past_the_retained_bound_are_lost_with_the_setting_named(pod: RawPod) -> None:
    from kernel_bridge import CallLostError

    stuck = RawClient(pod)  # reads, but never acknowledges
    stuck.send_call(21, _fn_call(_block, 800 << 10))
    stuck.send_call(22, _fn_call(_block, 800 << 10))
    results = set()
    while results != {21, 22}:
        frame = stuck.read_frame()
        if frame.type == FrameType.RESULT:
            results.add(frame.call_id)
    conn = PodConnection(pod.url, pod.token, name="collector", use_shm=False)
    try:
        assert conn.attach(22).result(timeout(30)) == b"r" * (800 << 10)
        with pytest.raises(CallLostError, match="KT_POD_MAX_RETAINED_BYTES"):
            conn.attach(21).result(timeout(30))
    finally:
        conn.close()
        stuck.close()


@pytest.mark.parametrize("pod", [{"KT_POD_RESULT_TTL": "0.3"}], indirect=True)
def test_results_past_their_ttl_are_lost_with_the_setting_named(pod: RawPod) -> None:
    import time

    from kernel_bridge import CallLostError

    conn = PodConnection(pod.url, pod.token, name="collector", use_shm=False)
    try:
        stuck = RawClient(pod)
        stuck.send_call(32, _fn_call(_block, 10))
        while stuck.read_frame().type != FrameType.RESULT:
            pass  # WELCOME, output
        stuck.close()  # before acknowledging: the pod keeps the result a while ...
        time.sleep(0.5)  # ... and lost once older than KT_POD_RESULT_TTL
        with pytest.raises(CallLostError, match="KT_POD_RESULT_TTL"):
            conn.attach(32).result(timeout(30))
    finally:
        conn.close()


def test_a_burst_of_sigterms_still_stops_the_pod(tmp_path: Path) -> None:
    """A second SIGTERM landing inside the first one's handler must not wedge the pod.

    (The handler set an Event; entered again on the same thread it waited forever on the
    Event's own lock, and the pod never exited.)
    """
    import signal
    import subprocess

    for _ in range(5):
        pod = start_raw_pod(tmp_path)
        try:
            for _ in range(2000):  # until it is gone: some land inside the handler
                try:
                    os.kill(pod.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
                if pod.proc.poll() is not None:
                    break
            try:
                code: int | str = pod.proc.wait(timeout(15))
            except subprocess.TimeoutExpired:
                code = "still running 15 s after a burst of SIGTERMs"
            assert code == 0, pod.log.read_text()[-2000:]
        finally:
            if pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()
