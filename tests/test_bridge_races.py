"""The bridge under concurrency: probes off the reader, calls made during reconnects."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kt_testing import RawPod, start_raw_pod, timeout
from tcp_proxy import TcpProxy

from kernel_bridge import CallHandle, PodConnection, PodDiedError
from kubetorch_jupyter.calls.serialize import dump_callable
from pod_runtime import protocol


def _fn_call(fn: object, *args: object) -> tuple[bytes, list[memoryview]]:
    digest, blob = dump_callable(fn)
    return protocol.dumps({"kind": "fn", "fn_id": digest, "fn_blob": blob, "args": args,
                           "kwargs": {}})


def _call(conn: PodConnection, fn: object, *args: object) -> CallHandle:
    body, buffers = _fn_call(fn, *args)
    return conn.call(body, buffers, sink=lambda e: None)


@pytest.fixture()
def proxied(tmp_path: Path) -> Iterator[tuple[RawPod, TcpProxy]]:
    pod = start_raw_pod(tmp_path)
    proxy = TcpProxy(pod.port)
    yield pod, proxy
    proxy.close()
    pod.stop()


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
        assert "pod 'dev' died (OOMKilled: the container used more than its 1Gi limit)" in str(
            info.value)
    finally:
        conn.close()
