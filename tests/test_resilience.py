"""Failures that lose nothing: dropped connections, dead pods, other processes."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kt_testing import RawPod, fn_call, start_raw_pod, timeout
from tcp_proxy import TcpProxy

import kubetorch_jupyter as kt
from kernel_bridge import PodConnection
from pod_runtime import protocol


def wait_for_file_then_finish(gate: str, done: str, runs: str) -> int:
    import pathlib
    import time

    with open(runs, "a") as f:
        f.write("run\n")
    print("started", flush=True)
    while not pathlib.Path(gate).exists():
        time.sleep(0.01)
    pathlib.Path(done).write_text("finished")
    return 42



def test_result_finished_while_disconnected_is_collected(
    proxied: tuple[RawPod, TcpProxy], tmp_path: Path
) -> None:
    pod, proxy = proxied
    conn = PodConnection(proxy.url, pod.token, name="proxied", reconnect_timeout=timeout(60))
    gate, done, runs = tmp_path / "gate", tmp_path / "done", tmp_path / "runs"
    body, buffers = fn_call(wait_for_file_then_finish, str(gate), str(done), str(runs))
    handle = conn.call(body, buffers, sink=lambda e: None)
    first = next(handle.stream(timeout=timeout(30)))
    assert first["text"].startswith("started")

    proxy.cut()  # the connection drops; the client starts reconnecting (and is refused)
    gate.touch()  # meanwhile the call finishes on the pod
    for _ in range(int(timeout(300))):
        if done.exists():
            break
        import time

        time.sleep(0.1)
    assert done.read_text() == "finished"
    assert not handle.done()  # the result could not reach us yet

    proxy.restore()
    assert handle.result(timeout(60)) == 42
    assert runs.read_text() == "run\n"  # collected, not run again
    assert proxy.accepted >= 2
    conn.close()


def test_call_sent_while_disconnected_runs_once_after_reconnect(
    proxied: tuple[RawPod, TcpProxy], tmp_path: Path
) -> None:
    pod, proxy = proxied
    conn = PodConnection(proxy.url, pod.token, name="proxied", reconnect_timeout=timeout(60))
    proxy.cut()
    runs = tmp_path / "runs"
    gate = tmp_path / "gate"
    gate.touch()
    body, buffers = fn_call(wait_for_file_then_finish, str(gate), str(tmp_path / "d"),
                             str(runs))
    handle = conn.call(body, buffers, sink=lambda e: None)
    proxy.restore()
    assert handle.result(timeout(60)) == 42
    assert runs.read_text() == "run\n"
    conn.close()


def test_connection_lost_for_good_fails_calls_clearly(
    proxied: tuple[RawPod, TcpProxy], tmp_path: Path
) -> None:
    pod, proxy = proxied
    conn = PodConnection(proxy.url, pod.token, name="proxied", reconnect_timeout=0.5)
    gate = tmp_path / "gate"
    body, buffers = fn_call(wait_for_file_then_finish, str(gate), str(tmp_path / "d"),
                             str(tmp_path / "r"))
    handle = conn.call(body, buffers, sink=lambda e: None)
    next(handle.stream(timeout=timeout(30)))
    proxy.cut()
    with pytest.raises(kt.PodUnreachableError, match=r"could not reconnect within 0\.5s"):
        handle.result(timeout(30))
    gate.touch()
    conn.close()


def test_pod_killed_mid_call_raises_pod_died() -> None:
    compute = kt.Compute(name="doomed")
    try:
        def sleepy() -> None:
            import time

            print("sleeping", flush=True)
            time.sleep(300)

        handle = kt.fn(sleepy).to(compute).submit()
        next(handle.stream(timeout=timeout(30)))
        old_pid = compute.pod.pid
        os.kill(old_pid or 0, signal.SIGKILL)
        with pytest.raises(kt.PodDiedError) as info:
            handle.result(timeout(30))
        assert info.value.exit_status == -signal.SIGKILL
        assert info.value.reason == "Killed"
        assert "killed by SIGKILL" in str(info.value)
        assert info.value.pod == "doomed"

        # The next use starts a fresh pod, and says so.
        with pytest.warns(RuntimeWarning, match=r"died \(killed by SIGKILL\); starting a new pod"):
            new_pid = kt.fn(os.getpid).to(compute)()
        assert new_pid not in (old_pid, os.getpid())
    finally:
        compute.teardown()


def test_pod_restarted_under_the_same_address_fails_calls_in_flight(tmp_path: Path) -> None:
    pod = start_raw_pod(tmp_path)
    conn = PodConnection(pod.url, pod.token, name="restarting", reconnect_timeout=timeout(60))
    body, buffers = fn_call(wait_for_file_then_finish, str(tmp_path / "never"),
                             str(tmp_path / "d"), str(tmp_path / "r"))
    handle = conn.call(body, buffers, sink=lambda e: None)
    next(handle.stream(timeout=timeout(30)))
    pod.stop()
    replacement = start_raw_pod(tmp_path, "--port", str(pod.port), token=pod.token)
    try:
        with pytest.raises(kt.PodDiedError, match="restarted"):
            handle.result(timeout(60))
    finally:
        conn.close()
        replacement.stop()


def test_second_process_finds_the_named_pod_warm(tmp_path: Path) -> None:
    compute = kt.Compute(name="shared")
    try:
        def remember(value: int) -> int:
            import builtins
            import os

            builtins.kt_test_value = value  # type: ignore[attr-defined]
            return os.getpid()

        pid = kt.fn(remember).to(compute)(1234)
        script = textwrap.dedent("""
            import builtins, os, pickle, sys
            import kubetorch_jupyter as kt
            compute = kt.Compute.from_name("shared")
            def recall():
                import builtins, os
                return os.getpid(), getattr(builtins, "kt_test_value", None)
            sys.stdout.buffer.write(pickle.dumps(kt.fn(recall).to(compute)()))
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                             timeout=timeout(60), env=os.environ.copy(), check=True)
        assert pickle.loads(out.stdout) == (pid, 1234)
    finally:
        compute.teardown()


def test_unknown_compute_name_is_a_clear_error() -> None:
    with pytest.raises(kt.ComputeNotFoundError, match="no compute named 'nope'"):
        kt.Compute.from_name("nope")


def test_bad_settings_say_what_to_write() -> None:
    with pytest.raises(kt.ConfigError, match=r"did you mean '8Gi'"):
        kt.Compute(memory="8Gb")
    with pytest.raises(kt.ConfigError, match=r"compute name 'My Pod'.*'my-pod'"):
        kt.Compute(name="My Pod")
    with pytest.raises(kt.ConfigError, match="gpus must be a whole number"):
        kt.Compute(gpus=-1)
    with pytest.raises(kt.ConfigError, match="cpus"):
        kt.Compute(cpus="two")
    with pytest.raises(kt.ConfigError, match="30m"):
        kt.Compute(inactivity_ttl="soon")


def test_more_gpus_than_exist_says_how_many_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi here either way
    compute = kt.Compute(name="greedy", gpus=1)
    with pytest.raises(kt.ResourceUnavailableError, match="this machine has 0 GPUs"):
        compute.up()


def spam_output(n: int) -> str:
    import sys

    line = "x" * 60_000 + "\n"
    for _ in range(n):
        sys.stdout.write(line)
    return "spammed"


def hello_then_wait(seconds: float) -> str:
    import time

    print("hello", flush=True)
    time.sleep(seconds)
    return "done"


def test_both_sides_sending_large_messages_at_once_do_not_deadlock(tmp_path: Path) -> None:
    """A call streams output while another sends a big inline argument (no shm)."""
    import numpy as np

    pod = start_raw_pod(tmp_path)
    conn = PodConnection(pod.url, pod.token, name="busy", use_shm=False)
    try:
        received = []
        body, buffers = fn_call(spam_output, 1000)  # ~60 MB of output
        spam = conn.call(body, buffers, sink=lambda e: received.append(len(e["text"])))
        big = np.ones(64 * 1024 * 1024, dtype=np.uint8)  # 64 MiB inline, the other way
        body, buffers = fn_call(len, big)
        sized = conn.call(body, buffers, sink=lambda e: None)
        assert sized.result(timeout(60)) == big.nbytes
        assert spam.result(timeout(60)) == "spammed"
        assert sum(received) == 1000 * 60_001
    finally:
        conn.close()
        pod.stop()


def test_a_client_that_stops_reading_does_not_hold_up_others(tmp_path: Path) -> None:
    from pod_runtime.protocol import handshake

    pod = start_raw_pod(tmp_path)
    stalled = handshake.client_handshake(
        pod.url + protocol.BRIDGE_PATH, {protocol.TOKEN_HEADER: f"Bearer {pod.token}"},
        timeout=timeout(10), on_message=lambda parts: None, on_close=lambda exc: None,
        ping_interval=None)  # never started: nobody reads this socket
    conn = PodConnection(pod.url, pod.token, name="live")
    try:
        body, buffers = fn_call(spam_output, 1000)
        stalled.send(protocol.encode_frame(protocol.FrameType.CALL, 1, body, buffers))
        body, buffers = fn_call(hello_then_wait, 2.0)
        handle = conn.call(body, buffers, sink=lambda e: None)
        first = next(handle.stream(timeout=timeout(30)))
        assert first["text"].startswith("hello")
        assert not handle.done()  # its output came while it ran, not with its result
        assert handle.result(timeout(30)) == "done"
    finally:
        conn.close()
        stalled.abort()
        pod.stop()


def test_a_stopped_pod_leaves_no_shared_memory_behind(tmp_path: Path) -> None:
    import numpy as np

    from pod_runtime.protocol import shm

    pod = start_raw_pod(tmp_path)
    conn = PodConnection(pod.url, pod.token, name="shm")
    try:
        assert conn.shm_active
        body, buffers = fn_call(np.zeros, 16 * 1024 * 1024, np.uint8)  # a spare follows
        assert conn.call(body, buffers, sink=lambda e: None).result(timeout(30)).nbytes
    finally:
        conn.close()
        pod.stop()
    assert not list(shm.SHM_DIR.glob(f"kt-{pod.proc.pid}-*"))


def test_a_pod_found_by_name_keeps_its_definition_when_restarted() -> None:
    image = kt.Image().set_env_vars({"FROM_IMAGE": "yes"})
    compute = kt.Compute(name="defined", cpus="1", image=image, env={"OWN": "1"})
    try:
        compute.up()
        found = kt.Compute.from_name("defined")
        assert found.image == image and found.env == {"OWN": "1"} and found.cpus == 1
        old_pid = found.pod.pid
        os.kill(old_pid or 0, signal.SIGKILL)

        def env() -> tuple[str | None, str | None]:
            import os

            return os.environ.get("FROM_IMAGE"), os.environ.get("OWN")

        # restarted with its definition, saying so however the death was noticed
        with pytest.warns(RuntimeWarning, match="state of the old one .* is lost"):
            assert kt.fn(env).to(found)() == ("yes", "1")
        assert found.pod.pid != old_pid
        assert compute.up().pod.pid == found.pod.pid  # same definition: no restart war
    finally:
        compute.teardown()


def test_a_call_made_while_the_pod_restarts_goes_to_the_new_pod(tmp_path: Path) -> None:
    """Only calls the old pod got are lost with it; one it never got runs on the new one."""
    pod = start_raw_pod(tmp_path)
    proxy = TcpProxy(pod.port)
    conn = PodConnection(proxy.url, pod.token, name="restarting", reconnect_timeout=timeout(60))
    replacement = None
    try:
        proxy.cut()
        pod.stop()
        body, buffers = fn_call(len, "four")
        handle = conn.call(body, buffers, sink=lambda e: None)  # never reaches the old pod
        replacement = start_raw_pod(tmp_path, "--port", str(pod.port), token=pod.token)
        proxy.restore()
        assert handle.result(timeout(60)) == 4
    finally:
        conn.close()
        proxy.close()
        if replacement is not None:
            replacement.stop()
