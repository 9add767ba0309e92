"""The bridge under concurrency: probes off the reader, calls made during reconnects."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kt_testing import RawPod, fn_call, start_raw_pod, timeout
from tcp_proxy import TcpProxy
from tls_proxy import Proxy

from kernel_bridge import (
    BridgeError,
    CallHandle,
    PodConnection,
    PodDiedError,
    PodOOMError,
    PodUnreachableError,
)
from pod_runtime.protocol import shm


def _call(conn: PodConnection, fn: object, *args: object) -> CallHandle:
    body, buffers = fn_call(fn, *args)
    return conn.call(body, buffers, sink=lambda e: None)



@dataclass(frozen=True)
class Gone:
    """A PodState as a cluster backend reports it."""

    alive: bool
    exit_status: int | None
    reason: str | None
    message: str


def test_a_slow_status_probe_runs_off_the_reader_and_holds_nothing(
    proxied: tuple[RawPod, TcpProxy],
) -> None:
    pod, proxy = proxied
    probing, release = threading.Event(), threading.Event()
    probe_threads: list[threading.Thread] = []

    def status() -> Gone:  # an API round trip that takes as long as the test says
        probe_threads.append(threading.current_thread())
        probing.set()
        release.wait(timeout(30))
        return Gone(True, None, None, "")

    conn = PodConnection(proxy.url, pod.token, name="probed", status=status,
                         reconnect_timeout=timeout(60))
    try:
        readers: set[threading.Thread] = set()
        first = _call(conn, len, "abc")
        first.on_answer.append(lambda: readers.add(threading.current_thread()))
        assert first.result(timeout(30)) == 3
        assert readers  # on_answer runs on the thread that reads the socket

        proxy.cut()
        assert probing.wait(timeout(30))  # the drop is noticed; the probe is running
        proxy.restore()
        # While the probe still waits, calls go through on the remade connection.
        assert _call(conn, len, "abcd").result(timeout(30)) == 4
        assert not release.is_set()
        release.set()
        assert probe_threads
        for thread in probe_threads:
            assert thread not in readers
            assert not thread.name.startswith("kt-wire"), thread.name
    finally:
        release.set()
        conn.close()


def sleep_long() -> None:
    import time

    print("sleeping", flush=True)
    time.sleep(300)


def test_pod_died_error_carries_the_reason(proxied: tuple[RawPod, TcpProxy]) -> None:
    pod, proxy = proxied
    gone = threading.Event()

    def status() -> Gone:
        if gone.is_set():
            return Gone(False, 137, "OOMKilled", "the container used more than its 1Gi limit")
        return Gone(True, None, None, "")

    conn = PodConnection(proxy.url, pod.token, name="dev", status=status,
                         reconnect_timeout=timeout(60))
    try:
        handle = _call(conn, sleep_long)
        next(handle.stream(timeout=timeout(30)))
        gone.set()
        proxy.cut()
        with pytest.raises(PodDiedError) as info:
            handle.result(timeout(30))
        assert info.value.reason == "OOMKilled"
        assert info.value.exit_status == 137
        assert isinstance(info.value, PodOOMError)  # OOMKilled: its own subclass
        assert "pod 'dev' ran out of memory (the container used more than its 1Gi limit)" in str(
            info.value)
    finally:
        conn.close()


# ------------------------------------------------------------------ reconnect races
@pytest.fixture()
def flaky(tmp_path: Path) -> Iterator[tuple[RawPod, Proxy]]:
    pod = start_raw_pod(tmp_path)
    proxy = Proxy(pod.port)
    yield pod, proxy
    proxy.close()
    pod.stop()


def test_a_call_on_a_closed_connection_fails_at_once(raw_pod: RawPod) -> None:
    conn = PodConnection(raw_pod.url, raw_pod.token, name="closed")
    assert _call(conn, len, "ab").result(timeout(30)) == 2
    conn.close()
    with pytest.raises(BridgeError, match="closed"):
        _call(conn, len, "abc").result(timeout(10))


def test_callers_racing_to_reconnect_open_one_connection(flaky: tuple[RawPod, Proxy]) -> None:
    pod, proxy = flaky
    conn = PodConnection(proxy.url, pod.token, name="racing", reconnect_timeout=0.2)
    try:
        proxy.cut()
        with pytest.raises(PodUnreachableError):  # the reconnect gives up: down for good
            _call(conn, len, "x").result(timeout(30))
        proxy.restore()
        before = proxy.accepted
        callers = 8
        start = threading.Barrier(callers)
        results: list[object] = []

        def caller(i: int) -> None:
            start.wait(timeout(10))
            results.append(_call(conn, len, "y" * i).result(timeout(30)))

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout(60))
        assert sorted(results) == list(range(callers))  # type: ignore[type-var]
        assert proxy.accepted - before == 1  # one new connection, not one per caller
        assert proxy.live == 1
    finally:
        conn.close()


def test_calls_made_during_repeated_drops_all_finish(flaky: tuple[RawPod, Proxy]) -> None:
    """Many threads call while the connection drops again and again; none is left hanging.

    Each drop is timed by progress (after some calls finished) and each restore by the
    client's own retries (after the proxy refused one), so the drops land everywhere:
    mid-call, mid-handshake, mid-resume. A fast thread switch interval makes the
    interleavings many.
    """
    import sys
    import time

    pod, proxy = flaky
    conn = PodConnection(proxy.url, pod.token, name="flaky", reconnect_timeout=timeout(60))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    done = threading.Condition()
    finished = 0
    stop = threading.Event()
    problems: list[str] = []

    def caller(i: int) -> None:
        nonlocal finished
        n = 0
        while not stop.is_set():
            n += 1
            handle = _call(conn, len, "z" * (n % 7))
            try:
                value = handle.result(timeout(30))
            except TimeoutError:
                problems.append(f"caller {i}: call {n} neither sent nor failed")
                return
            except BridgeError as exc:
                problems.append(f"caller {i}: call {n} failed: {exc}")
                return
            if value != n % 7:
                problems.append(f"caller {i}: call {n} returned {value!r}")
            with done:
                finished += 1
                done.notify_all()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(6)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout(8)
        drops = 0
        while time.monotonic() < deadline and not problems:
            with done:
                target = finished + 3
                if not done.wait_for(lambda t=target: finished >= t or bool(problems),  # type: ignore[misc]
                                     timeout(30)):
                    problems.append("no progress for 30 s")
                    break
            refused = proxy.refused
            proxy.cut()
            drops += 1
            proxy.wait(lambda r=refused: proxy.refused > r, timeout(30))  # the client retried
            proxy.restore()
        stop.set()
        for t in threads:
            t.join(timeout(60))
        assert not problems, problems[:5]
        assert drops >= 5
        assert _call(conn, len, "end").result(timeout(30)) == 3
        assert proxy.wait(lambda: proxy.live == 1, timeout(10)), proxy.live  # none leaked
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        conn.close()


# ------------------------------------------------------------ a submit nobody awaits
def alternate_streams(n: int) -> str:
    import sys

    for i in range(n):  # alternating streams: each write is an event of its own
        (sys.stdout if i % 2 == 0 else sys.stderr).write(f"line {i}\n")
    return "written"


def test_events_nobody_reads_are_bounded_and_the_result_is_kept(
    raw_pod: RawPod, caplog: pytest.LogCaptureFixture,
) -> None:
    conn = PodConnection(raw_pod.url, raw_pod.token, name="unread", max_pending_events=50)
    try:
        seen: list[dict[str, object]] = []
        body, buffers = fn_call(alternate_streams, 600)
        handle = conn.call(body, buffers, label="spammer", sink=seen.append)
        answered = threading.Event()
        handle.on_answer.append(answered.set)
        with caplog.at_level("WARNING", logger="kubetorch.bridge"):
            assert answered.wait(timeout(30))  # all its events came; nobody read them
        assert handle.result(timeout(30)) == "written"
        marker, *kept = seen
        assert "earlier output events of spammer were dropped" in str(marker["text"])
        assert "max_pending_events=50" in str(marker["text"])
        assert len(kept) == 50
        assert "".join(str(e["text"]) for e in kept).endswith("line 599\n")
        warnings = [r for r in caplog.records if "max_pending_events" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
    finally:
        conn.close()


# ------------------------------------------------------------- shared memory leaks
@pytest.mark.skipif(not hasattr(shm, "sweep_dead_owners"),
                    reason="pod_runtime.protocol.shm.sweep_dead_owners is not there yet")
def test_a_client_that_starts_using_shared_memory_sweeps_dead_owners(raw_pod: RawPod) -> None:
    import secrets
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    leaked = shm.SHM_DIR / f"kt-{int(gone.stdout)}-{secrets.token_hex(12)}"
    leaked.write_bytes(b"left by a process killed with SIGKILL")
    try:
        conn = PodConnection(raw_pod.url, raw_pod.token, name="sweeper")
        try:
            assert conn.shm_active
            assert not leaked.exists()
        finally:
            conn.close()
    finally:
        leaked.unlink(missing_ok=True)
