"""Interrupts and cancels that must say what happened: a cancelled call, a pod stuck in C."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from pathlib import Path

import pytest
from _kernel import Cell, Kernel
from kt_testing import fn_call, start_raw_pod, timeout
from test_detach import ok

import kubetorch_jupyter as kt
from kernel_bridge import PodConnection


def block(tag: str) -> None:
    """Block (interruptibly: Python code) until a cancel stops it."""
    threading.Event().wait()


def block_too(tag: str) -> None:
    """Another function: the first call of each is cancelled before the pod caches it."""
    threading.Event().wait()


def test_cancel_then_result_raises_call_cancelled(compute: kt.Compute) -> None:
    handle = kt.fn(block).to(compute).submit("never")
    handle.cancel()
    with pytest.raises(kt.CallCancelledError, match="was cancelled") as info:
        handle.result(timeout(30))
    assert isinstance(info.value, Exception) and isinstance(info.value, kt.KtError)
    assert not isinstance(info.value, KeyboardInterrupt)
    assert info.value.pod == compute.name
    assert kt.fn(len).to(compute)([1, 2]) == 2  # the pod lives on


def test_cancel_then_await_raises_call_cancelled(compute: kt.Compute) -> None:
    async def main() -> None:
        handle = kt.fn(block_too).to(compute).submit("never")
        handle.cancel()
        with pytest.raises(kt.CallCancelledError):
            await asyncio.wait_for(handle.aresult(), timeout(30))

    asyncio.run(main())


def test_a_cancel_after_the_call_finished_returns_its_value(compute: kt.Compute) -> None:
    handle = kt.fn(len).to(compute).submit([1, 2, 3])
    assert handle.result(timeout(30)) == 3
    handle.cancel()
    assert handle.result(0) == 3


# ---------------------------------------------------------------- a pod stuck in C code
#: One bytecode that runs for hours holding the GIL: nothing else in the pod runs meanwhile
#: (no reader, no writer, no pings, no signal handler), and no interrupt reaches it.
C_FOREVER = "sum(range(10**12))"


def test_a_pod_busy_in_c_code_keeps_its_connection_until_it_dies(tmp_path: Path) -> None:
    pod = start_raw_pod(tmp_path)
    probes: list[bool] = []

    def status() -> tuple[bool, int | None]:
        probes.append(pod.proc.poll() is None)
        return pod.proc.poll() is None, pod.proc.returncode

    # pings far more often than the defaults, so that silence is found quickly
    conn = PodConnection(pod.url, pod.token, name="c-busy", status=status, use_shm=False,
                         ping_interval=0.2, ping_timeout=0.6)
    notes: list[str] = []
    outcome: list[BaseException] = []
    try:
        body, buffers = fn_call(sum, range(10**12))
        stuck = conn.call(body, buffers, label="sum", sink=lambda e: None)
        body, buffers = fn_call(len, [1, 2])
        queued = conn.call(body, buffers, label="len", sink=lambda e: notes.append(e["text"]))

        def wait_queued() -> None:
            try:
                queued.result(timeout(120))
            except BaseException as exc:  # noqa: BLE001 - the test asserts on it
                outcome.append(exc)

        waiter = threading.Thread(target=wait_queued)
        waiter.start()
        # the keepalive finds the pod silent past the ping timeout, asks, and keeps it
        deadline = time.monotonic() + timeout(60)
        while len(probes) < 3 or not notes:
            assert time.monotonic() < deadline, (probes, notes)
            time.sleep(0.05)
        assert all(probes) and conn.connected and conn.dead is None
        assert not stuck.done() and not queued.done()
        assert conn.unanswered_for() > 0
        assert "pod 'c-busy' has not answered for" in notes[0]
        assert "busy in code that does not see interrupts" in notes[0]
        assert "len waits for it" in notes[0] and "kt teardown c-busy" in notes[0]
        # and when it does die, the calls say so (not "unreachable")
        pod.proc.kill()
        pod.proc.wait(timeout(30))
        with pytest.raises(kt.PodDiedError, match="died"):
            stuck.result(timeout(30))
        waiter.join(timeout(30))
        assert len(outcome) == 1 and isinstance(outcome[0], kt.PodDiedError), outcome
    finally:
        conn.close()
        pod.stop()


def test_teardown_of_a_pod_busy_in_c_code_kills_it_at_once(
        compute: kt.Compute, caplog: pytest.LogCaptureFixture) -> None:
    handle = kt.fn(sum).to(compute).submit(range(10**12))
    backend = compute.backend
    info = compute.pod
    deadline = time.monotonic() + timeout(60)
    while backend._answers(info):  # until the call holds the pod's GIL
        assert time.monotonic() < deadline
    with caplog.at_level(logging.INFO, logger="kubetorch_jupyter.backends.local.backend"):
        compute.teardown()
    assert any("cannot handle SIGTERM" in r.getMessage() for r in caplog.records), \
        caplog.records
    assert not any("did not exit" in r.getMessage() for r in caplog.records)
    assert backend.gone(info)
    with pytest.raises(kt.PodDiedError, match="torn down by this process"):
        handle.result(timeout(30))
    assert kt.fn(len).to(compute)([1]) == 1  # the next call starts a fresh pod


def test_teardown_of_an_idle_pod_stays_graceful(
        compute: kt.Compute, caplog: pytest.LogCaptureFixture) -> None:
    assert kt.fn(len).to(compute)([1, 2]) == 2
    info = compute.pod
    assert compute.backend._answers(info)
    with caplog.at_level(logging.INFO, logger="kubetorch_jupyter.backends.local.backend"):
        compute.teardown()
    assert not any("SIGTERM" in r.getMessage() for r in caplog.records), caplog.records
    assert compute.backend.gone(info)
    compute.up()


def c_cell(pod: str, marker: Path) -> str:
    """A %%kt cell that says (through a file: the pod sends nothing meanwhile) it started."""
    return (f"%%kt --name {pod}\nx = 42\nopen({str(marker)!r}, 'w').close()\n"
            f"{C_FOREVER}\n")


def start_stuck(kernel: Kernel, pod: str, marker: Path) -> str:
    """Run a cell stuck in C code and interrupt it once; the cell's msg_id."""
    ok(kernel.run(f"%%kt --name {pod}\n'warm'", timeout=timeout(120)))
    mid = kernel.execute(c_cell(pod, marker))
    deadline = time.monotonic() + timeout(60)
    while not marker.exists():
        assert time.monotonic() < deadline, "the cell never started on the pod"
        time.sleep(0.05)
    kernel.interrupt()
    return mid


def one_line(cell: Cell, ename: str) -> str:
    """The cell's error: of type ``ename``, one line, no frames of our modules."""
    assert cell.error is not None, cell.messages
    assert cell.error["ename"] == ename, cell.error
    shown = "\n".join(cell.error["traceback"])
    assert len(cell.error["traceback"]) == 1, shown
    for ours in ("magics.py", "cells.py", "calls.py", "Traceback"):
        assert ours not in shown, shown
    return shown


def test_interrupting_c_code_says_busy_and_the_pod_recovers_with_kt_restart(
        kernel: Kernel, tmp_path: Path) -> None:
    pod = f"c-{secrets.token_hex(3)}"
    mid = start_stuck(kernel, pod, tmp_path / "started")
    cell = kernel.collect(mid, timeout=timeout(120))[mid]
    shown = one_line(cell, "CellInterrupted")
    assert f"pod '{pod}' is busy in code that does not see interrupts" in shown
    assert "Wait for it" in shown and f"%kt restart {pod}" in shown
    assert "has not stopped yet" in cell.stream("stderr")  # the note, before the error
    assert "Interrupt again" in cell.stream("stderr")
    # status says busy, not "running" as if all were well
    status = ok(kernel.run(f"%kt status {pod}", timeout=timeout(60))).stdout
    assert "busy (in code that does not see interrupts" in status, status
    assert f"%kt restart {pod}" in status
    # the next cell waits for it, saying so; interrupted, it never ran (nor will it)
    mid = kernel.execute(f"%%kt --name {pod}\nprint('second ran')")
    kernel.collect(mid, timeout=timeout(60),
                   until=lambda c: "waiting for the previous cell" in c[mid].stream("stderr"))
    kernel.interrupt()
    waited = kernel.collect(mid, timeout=timeout(60))[mid]
    shown = one_line(waited, "CellInterrupted")
    assert "this cell did not run" in shown and f"%kt restart {pod}" in shown
    assert "PodUnreachableError" not in shown
    # %kt restart: a fresh pod, said to have lost the state
    restarted = ok(kernel.run(f"%kt restart {pod}", timeout=timeout(120))).stdout
    assert f"restarted '{pod}'" in restarted and "gone" in restarted
    after = ok(kernel.run(f"%%kt --name {pod}\nprint('x' in globals())",
                          timeout=timeout(120)))
    assert after.stdout == "False\n"
    assert "busy" not in ok(kernel.run(f"%kt status {pod}", timeout=timeout(60))).stdout
    ok(kernel.run(f"%kt teardown {pod}", timeout=timeout(60)))


def test_a_second_interrupt_restarts_a_pod_stuck_in_c_code(kernel: Kernel,
                                                           tmp_path: Path) -> None:
    pod = f"c-{secrets.token_hex(3)}"
    mid = start_stuck(kernel, pod, tmp_path / "started")
    kernel.collect(mid, timeout=timeout(60),
                   until=lambda c: "Interrupt again" in c[mid].stream("stderr"))
    kernel.interrupt()
    cell = kernel.collect(mid, timeout=timeout(120))[mid]
    shown = one_line(cell, "CellInterrupted")
    assert f"restarted pod '{pod}' (a second interrupt)" in shown
    assert "state" in shown and "lost" in shown
    after = ok(kernel.run(f"%%kt --name {pod}\nprint('x' in globals())",
                          timeout=timeout(120)))
    assert after.stdout == "False\n"
    ok(kernel.run(f"%kt teardown {pod}", timeout=timeout(60)))


def test_a_pod_stuck_in_c_code_seen_from_another_kernel(kernels: list[Kernel],
                                                         tmp_path: Path) -> None:
    first, other = kernels
    pod = f"c-{secrets.token_hex(3)}"
    # the other kernel uses the pod first: a second interrupt in the first must not
    # restart it under that kernel
    ok(other.run(f"%%kt --name {pod}\ny = 'other'", timeout=timeout(120)))
    mid = start_stuck(first, pod, tmp_path / "started")
    first.collect(mid, timeout=timeout(60),
                  until=lambda c: "Interrupt again" in c[mid].stream("stderr"))
    first.interrupt()
    shown = one_line(first.collect(mid, timeout=timeout(120))[mid], "CellInterrupted")
    assert f"pod '{pod}' was NOT restarted" in shown and "1 other client" in shown, shown
    assert "whose work a restart would lose" in shown
    assert f"%kt restart {pod}" in shown
    # the other kernel sees it busy; its cell waits, saying why, and does not fail
    status = ok(other.run(f"%kt status {pod}", timeout=timeout(60))).stdout
    assert "busy (in code that does not see interrupts" in status, status
    mid = other.execute(f"%%kt --name {pod}\nprint(y)")
    other.collect(mid, timeout=timeout(90),
                  until=lambda c: "has not answered for" in c[mid].stream("stderr"))
    assert f"%kt restart {pod}" in other.cells[mid].stream("stderr")
    assert not other.cells[mid].idle
    # a kernel that connects now is told the pod is busy (not merely "unreachable")
    ok(first.run("%env KT_CONNECT_TIMEOUT=1"))
    ok(first.run("import kubetorch_jupyter.core.connections as _c; _c.drop(" + repr(pod) + ")"))
    late = first.run(f"%%kt --name {pod}\n1", timeout=timeout(120))
    shown = one_line(late, "PodUnreachableError")
    assert "runs but does not answer" in shown and "busy in code" in shown, shown
    # the restart ends the waiting cell of the other kernel with the pod, said so
    ok(first.run(f"%kt restart {pod}", timeout=timeout(120)))
    waited = other.collect(mid, timeout=timeout(60))[mid]
    assert waited.error is not None and "its state is lost" in waited.error["evalue"], \
        waited.error
    ok(first.run("%env KT_CONNECT_TIMEOUT=10"))
    ok(first.run(f"%kt teardown {pod}", timeout=timeout(60)))
