"""Faults injected into real pod processes: out of memory, SIGKILL, SIGTERM, idleness, drops.

Each test starts real pods (the local backend, or ``python -m pod_runtime``) and does to
them what a cluster does: the memory watchdog's SIGKILL past ``memory=``, ``kill -9``,
a SIGTERM with a grace period, the inactivity TTL, a connection cut in the middle of
a result. Waits are for events (a file, a process exit); none asserts a duration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kt_testing import RawPod, fn_call, timeout
from tcp_proxy import TcpProxy

import kubetorch_jupyter as kt
from kernel_bridge import PodConnection
from kubetorch_jupyter.backends.local.process import probe, wait_gone
from pod_runtime.protocol import messages

MB = 10**6


def hog(nbytes: int, hold: float) -> int:
    """Allocate ``nbytes`` and touch every page, keep them ``hold`` seconds, return the size."""
    import time

    block = bytearray(nbytes)
    for i in range(0, nbytes, 4096):
        block[i] = 1
    time.sleep(hold)
    return len(block)


def started_then_sleep(flag: str, seconds: float) -> float:
    """Say it started (a file), then sleep."""
    import pathlib
    import time

    pathlib.Path(flag).write_text("started")
    time.sleep(seconds)
    return seconds


def wait_for(path: Path) -> None:
    """Wait until ``path`` exists (a pod's call wrote it)."""
    import time

    for _ in range(int(timeout(600))):
        if path.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


# ---------------------------------------------------------------- out of memory
def test_out_of_memory_is_pod_oom_error_and_a_retry_with_more_memory_succeeds() -> None:
    compute = kt.Compute(name="hungry", memory="200Mi")
    try:
        remote = kt.fn(hog).to(compute)
        first_pid = compute.pod.pid
        with pytest.raises(kt.PodOOMError) as info:
            remote(400 * MB, timeout(30))
        err = info.value
        assert isinstance(err, kt.PodDiedError) and err.reason == "OOMKilled"
        assert err.limit == 200 * 2**20
        assert err.peak is not None and err.peak > err.limit
        assert "ran out of memory (limit 200Mi, peak " in str(err)
        assert "kt.grow(memory=2.0)" in str(err)  # what to do
        status = compute.backend.status(compute.pod)
        assert (status.phase, status.reason) == ("failed", "OOMKilled")
        assert status.message.startswith("out of memory: limit 200Mi, peak ")
        assert status.memory_limit == 200 * 2**20
        record = compute.backend.state_dir / "ended" / "hungry.oom.json"  # the watchdog's
        assert record.stat().st_mode & 0o777 == 0o600
        assert first_pid is not None and wait_gone(first_pid, timeout(30))
    finally:
        compute.teardown()


def test_with_retry_restarts_with_more_memory_after_oom_and_says_so() -> None:
    compute = kt.Compute(name="growing", memory="200Mi")
    try:
        retried = kt.fn(hog).to(compute).with_retry(on_oom=kt.grow(memory=3.0), max=3)
        first_pid = compute.pod.pid
        with pytest.warns(RuntimeWarning) as caught:
            assert retried(400 * MB, 0.5) == 400 * MB
        said = [str(w.message) for w in caught]
        assert len(said) == 1, said
        assert said[0].startswith("pod 'growing' ran out of memory (limit 200Mi, peak ")
        assert said[0].endswith("restarting with 600Mi (attempt 2/3); its state was lost")
        assert compute.memory == 600 * 2**20
        assert compute.pod.pid != first_pid
        assert kt.Compute.from_name("growing").memory == 600 * 2**20  # the pod's record
    finally:
        compute.teardown()


def test_a_retry_that_runs_out_of_attempts_raises_the_last_pod_oom_error() -> None:
    compute = kt.Compute(name="starved", memory="120Mi")
    try:
        retried = kt.fn(hog).to(compute).with_retry(on_oom=kt.grow(memory=1.1), max=2)
        with pytest.warns(RuntimeWarning, match=r"restarting with 132Mi \(attempt 2/2\)"), \
                pytest.raises(kt.PodOOMError, match=r"limit 132Mi"):
            retried(400 * MB, timeout(30))
    finally:
        compute.teardown()


def test_grow_and_with_retry_refuse_bad_arguments_in_one_line() -> None:
    with pytest.raises(kt.ConfigError, match=r"a factor above 1"):
        kt.grow(memory=0.5)
    with pytest.raises(kt.ConfigError, match=r"max_memory"):
        kt.grow(memory=2.0, max_memory="lots")
    remote = kt.RemoteFn(hog, kt.Compute(name="unused"))
    with pytest.raises(kt.ConfigError, match=r"the number of attempts"):
        remote.with_retry(on_oom=kt.grow(), max=0)
    with pytest.raises(kt.ConfigError, match=r"takes kt.grow"):
        remote.with_retry(on_oom=2.0)


def test_grow_stops_at_max_memory() -> None:
    err = kt.PodOOMError("oom", exit_status=-9, limit=1 * 2**30, peak=None)
    capped = kt.grow(memory=4.0, max_memory="2Gi")
    assert capped.next_memory(2**30, err) == 2 * 2**30
    with pytest.raises(kt.PodOOMError):
        capped.next_memory(2 * 2**30, err)


def test_kill_9_of_a_pod_with_a_memory_limit_is_killed_not_out_of_memory() -> None:
    compute = kt.Compute(name="shot", memory="1Gi")
    try:
        handle = kt.fn(started_then_sleep).to(compute).submit("/dev/null", 300)
        pid = compute.pod.pid
        assert pid is not None
        assert compute.backend.ready(compute.pod) == "ready"
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(kt.PodDiedError) as info:
            handle.result(timeout(60))
        assert not isinstance(info.value, kt.PodOOMError)
        assert info.value.reason == "Killed" and "SIGKILL" in str(info.value)
    finally:
        compute.teardown()


# ---------------------------------------------------------------- SIGTERM grace
def test_sigterm_lets_calls_finish_within_the_grace_and_fails_the_rest_as_preempted(
        tmp_path: Path) -> None:
    compute = kt.Compute(name="drained", env={"KT_POD_TERM_GRACE": "6"})
    try:
        remote = kt.fn(started_then_sleep).to(compute)
        info = compute.pod
        short_flag, long_flag = tmp_path / "short", tmp_path / "long"
        long_call = remote.submit(str(long_flag), 600)
        short_call = remote.submit(str(short_flag), 2.0)
        wait_for(long_flag)
        wait_for(short_flag)
        assert info.pid is not None
        os.kill(info.pid, signal.SIGTERM)  # a node drain, kubectl delete, preemption

        # While it drains: not ready (once the signal is handled), and a new call is
        # refused with a clear reason.
        for _ in range(int(timeout(600))):
            if probe(info.url, "/ready")[0] == 503:
                break
            time.sleep(0.01)
        assert probe(info.url, "/ready")[0] == 503
        with pytest.raises(messages.PodStoppingError, match=r"is stopping \(it got SIGTERM"):
            remote(str(tmp_path / "late"), 0)
        assert short_call.result(timeout(60)) == 2.0  # finished within the grace

        with pytest.raises(kt.PodDiedError) as died:
            long_call.result(timeout(60))
        err = died.value
        assert err.reason == "Preempted"
        assert ("was preempted: the pod got SIGTERM (a node drain, kubectl delete or "
                "preemption); calls still running after the 6s grace were stopped; its state "
                "is lost") in str(err)
        assert wait_gone(info.pid, timeout(30))
        ended = compute.backend.status(info)
        assert (ended.phase, ended.reason) == ("failed", "Preempted")

        with pytest.warns(RuntimeWarning, match=r"was preempted: .*starting a new pod"):
            assert remote(str(tmp_path / "again"), 0) == 0  # the compute starts again
    finally:
        compute.teardown()


def test_an_idle_pod_stops_at_once_on_sigterm() -> None:
    compute = kt.Compute(name="calm", env={"KT_POD_TERM_GRACE": "600"})
    try:
        assert kt.fn(os.getpid).to(compute)() == compute.pod.pid
        pid = compute.pod.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        # nothing runs: no grace to wait out (the wait is far below the 600 s grace)
        assert wait_gone(pid, timeout(60))
    finally:
        compute.teardown()


# ---------------------------------------------------------------- idleness
def test_idle_ttl_stops_a_pod_whose_client_is_connected_but_idle() -> None:
    compute = kt.Compute(name="sleepy", inactivity_ttl=1)
    try:
        remote = kt.fn(os.getpid).to(compute)
        info = compute.pod
        assert remote() == info.pid
        assert compute.connection().connected  # the client stays connected, idle
        assert info.pid is not None and wait_gone(info.pid, timeout(120))
        # the process is gone a moment before its exit is recorded: ask until it says
        deadline = time.monotonic() + timeout(30)
        status = compute.backend.status(info)
        while status.phase != "gone" and time.monotonic() < deadline:
            time.sleep(0.05)
            status = compute.backend.status(info)
        assert (status.phase, status.reason) == ("gone", "Idle")
        assert "no calls for 1s, its inactivity_ttl" in status.message
        said = compute.backend.state_dir / "ended" / "sleepy.term"  # its termination log
        assert said.stat().st_mode & 0o777 == 0o600
        assert said.parent.stat().st_mode & 0o777 == 0o700
        assert compute.backend.list() == []  # its record goes with it

        with pytest.warns(RuntimeWarning, match=r"was stopped for idleness \(no calls for 1s, "
                                                r"its inactivity_ttl\).*state of the old one"):
            new_pid = remote()
        assert new_pid != info.pid
    finally:
        compute.teardown()


def test_idle_ttl_never_stops_a_busy_pod(tmp_path: Path) -> None:
    compute = kt.Compute(name="busy", inactivity_ttl=1)
    try:
        remote = kt.fn(started_then_sleep).to(compute)
        pid = compute.pod.pid
        assert remote(str(tmp_path / "flag"), 5.0) == 5.0  # five TTLs of one running call
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a restart would warn
            assert kt.fn(os.getpid).to(compute)() == pid
    finally:
        compute.teardown()


# ------------------------------------------------------ a drop mid-result
def big_result(nbytes: int, runs: str) -> bytes:
    """Count the run in ``runs``, return ``nbytes`` of a pattern."""
    with open(runs, "a") as f:
        f.write("run\n")
    return bytes(range(256)) * (nbytes // 256)


def test_a_drop_in_the_middle_of_a_result_is_collected_exactly_once(
        proxied: tuple[RawPod, TcpProxy], tmp_path: Path) -> None:
    pod, proxy = proxied
    conn = PodConnection(proxy.url, pod.token, name="proxied", use_shm=False,
                         reconnect_timeout=timeout(60))
    try:
        assert conn.connected
        runs = tmp_path / "runs"
        size = 64 * 2**20
        proxy.cut_after(8 * 2**20)  # an eighth of the result through, then the drop
        body, buffers = fn_call(big_result, size, str(runs))
        handle = conn.call(body, buffers, sink=lambda e: None)
        assert proxy.was_cut.wait(timeout(60))
        proxy.restore()
        value = handle.result(timeout(120))
        assert value == bytes(range(256)) * (size // 256)
        assert runs.read_text() == "run\n"  # collected, not run again
        assert proxy.accepted >= 2
    finally:
        conn.close()


# ---------------------------------------------------------------- %%kt --retry-oom
@pytest.fixture()
def shell() -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kubetorch_jupyter")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "kubetorch_jupyter")
        InteractiveShell.clear_instance()


def test_a_cell_with_retry_oom_runs_again_with_twice_the_memory(shell: Any) -> None:
    from IPython.utils.capture import capture_output

    cell = ("%%kt --name cellhog --memory 200Mi --retry-oom 2\n"
            "import time\n"
            "block = bytearray(300_000_000)\n"
            "for i in range(0, len(block), 4096): block[i] = 1\n"
            "time.sleep(1.0)\n"
            "print('held', len(block))\n")
    try:
        with pytest.warns(RuntimeWarning, match=r"pod 'cellhog' ran out of memory \(limit "
                          r"200Mi, peak .*restarting with 400Mi \(attempt 2/2\); its state "
                          r"was lost"), capture_output() as io:
            res = shell.run_cell(cell)
        assert res.success, res.error_in_exec
        assert "held 300000000" in io.stdout
        assert kt.Compute.from_name("cellhog").memory == 400 * 2**20
    finally:
        with contextlib.suppress(kt.ComputeNotFoundError):
            kt.Compute.from_name("cellhog").teardown()


def test_retry_oom_flags_are_checked(shell: Any) -> None:
    from IPython.core.error import UsageError

    for line, expect in (("--retry-oom 0", r"--retry-oom N: the attempts in all"),
                         ("--retry-oom --detach", r"--detach returns at once, so --retry-oom")):
        with pytest.raises(UsageError, match=expect):
            shell.run_cell_magic("kt", f"--name never {line}", "1\n")
