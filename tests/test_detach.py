"""%%kt --detach and %kt attach across real kernels: the run outlives the kernel that
started it, and a new kernel replays everything it printed, streams the rest and gets
its result, once."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

import pytest
from _kernel import Cell, Kernel, start_kernel
from kt_testing import timeout


@pytest.fixture(scope="module")
def pod() -> str:
    return f"d-{secrets.token_hex(3)}"


def ok(cell: Cell) -> Cell:
    assert cell.reply is not None and cell.reply["status"] == "ok", cell.error or cell.messages
    return cell


def run_id(cell: Cell) -> str:
    m = re.search(r"%kt attach (\S+)", ok(cell).stdout)
    assert m is not None, cell.stdout
    return m.group(1)


def gated(tag: str, gate: Path, n: int = 6, at: int = 3) -> str:
    """A cell that prints n lines, stopping after the first ``at`` until ``gate`` exists."""
    return (f"import os, time\n"
            f"for i in range({n}):\n"
            f"    if i == {at}:\n"
            f"        deadline = time.monotonic() + {timeout(60)}\n"
            f"        while not os.path.exists({str(gate)!r}):\n"
            f"            assert time.monotonic() < deadline, 'never released'\n"
            f"            time.sleep(0.01)\n"
            f"    print('{tag}', i, flush=True)\n"
            f"'{tag} finished'\n")


def lines(tag: str, n: int = 6) -> str:
    return "".join(f"{tag} {i}\n" for i in range(n))


def wait_state(kernel: Kernel, pod: str, rid: str, want: str) -> str:
    """Poll ``%kt runs`` (the pod's own account) until the run reaches ``want``."""
    deadline = time.monotonic() + timeout(60)
    while True:
        out = ok(kernel.run(f"%kt runs {pod}")).stdout
        row = next((ln for ln in out.splitlines() if ln.startswith(rid)), "")
        if want in row.split():
            return row
        assert time.monotonic() < deadline, out
        time.sleep(0.05)


def test_attach_from_a_new_kernel_replays_then_streams(kernels: list[Kernel], pod: str,
                                                       tmp_path: Path, state: Path) -> None:
    starter, _ = kernels
    gate = tmp_path / "release"
    started = starter.run(f"%%kt --name {pod} --detach\n" + gated("T", gate))
    rid = run_id(started)
    assert rid.startswith(f"{pod}:")
    assert started.of_type("execute_result") == []  # it returned at once, without a result
    starter.restart()  # the kernel that started it goes away; the run does not
    ok(starter.run("%load_ext kubetorch_jupyter"))

    attacher = start_kernel(state)  # a kernel that never saw the run
    try:
        mid = attacher.execute(f"%kt attach {rid}")
        # everything printed before the attach is replayed ...
        attacher.collect(mid, timeout=timeout(60), until=lambda c: "T 2\n" in c[mid].stdout)
        gate.touch()  # ... and what follows streams in
        cell = ok(attacher.collect(mid, timeout=timeout(60))[mid])
    finally:
        attacher.shutdown()
    assert cell.stdout == lines("T")  # each line once, in order: nothing lost
    result = cell.of_type("execute_result")[0]["content"]
    assert result["data"]["text/plain"] == "'T finished'"


def test_a_finished_run_waits_for_its_attach_and_is_given_once(kernels: list[Kernel], pod: str,
                                                               tmp_path: Path) -> None:
    starter, other = kernels
    gate = tmp_path / "open"
    gate.touch()
    starter.run("value = 21")
    rid = run_id(starter.run(f"%%kt --name {pod} --detach --push value\n"
                             + gated("F", gate) + "\nvalue * 2\n"))
    wait_state(starter, pod, rid, "ok")  # finished while the starter kernel stays alive
    ok(starter.run(f"%%kt --name {pod}\n'the starter is busy with other cells'"))
    assert "ok" in wait_state(starter, pod, rid, "ok")  # ... and it did not collect the result
    cell = ok(other.run(f"%kt attach {rid}", timeout=timeout(60)))
    assert cell.stdout == lines("F")
    assert cell.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
    again = other.run(f"%kt attach {rid}")
    assert again.error is not None and again.error["ename"] == "CallLostError"
    assert "collected already" in again.error["evalue"]


def test_an_attached_failure_shows_the_remote_traceback(kernels: list[Kernel], pod: str) -> None:
    starter, other = kernels
    rid = run_id(starter.run(f"%%kt --name {pod} --detach\n"
                             "print('about to fail')\n"
                             "raise RuntimeError('detached failure')\n"))
    wait_state(starter, pod, rid, "failed")
    cell = other.run(f"%kt attach {rid}")
    assert cell.stdout == "about to fail\n"
    assert cell.error is not None and cell.error["ename"] == "RuntimeError"
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(cell.error["traceback"]))  # coloured
    assert "----> 3 raise RuntimeError('detached failure')" in text, text


def test_ctrl_c_stops_following_not_the_run(kernels: list[Kernel], pod: str,
                                            tmp_path: Path) -> None:
    starter, other = kernels
    gate = tmp_path / "later"
    rid = run_id(starter.run(f"%%kt --name {pod} --detach\n" + gated("C", gate)))
    mid = other.execute(f"%kt attach {rid}")
    other.collect(mid, timeout=timeout(60), until=lambda c: "C 2\n" in c[mid].stdout)
    other.interrupt()
    cell = ok(other.collect(mid, timeout=timeout(60))[mid])
    assert f"stopped following run {rid}; it keeps running" in cell.stdout
    assert wait_state(starter, pod, rid, "running")
    gate.touch()
    again = ok(other.run(f"%kt attach {rid}", timeout=timeout(60)))
    assert again.stdout == lines("C")  # replayed from the start
    assert again.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'C finished'"


def test_cancel_interrupts_a_detached_run(kernels: list[Kernel], pod: str) -> None:
    starter, other = kernels
    rid = run_id(starter.run(f"%%kt --name {pod} --detach\n"
                             "import time\nprint('working', flush=True)\ntime.sleep(120)\n"))
    wait_state(starter, pod, rid, "running")
    assert f"interrupt sent to run {rid}" in ok(other.run(f"%kt cancel {rid}")).stdout
    cell = other.run(f"%kt attach {rid}", timeout=timeout(60))
    assert cell.stdout == "working\n"
    assert cell.error is not None and cell.error["ename"] == "KeyboardInterrupt"
    assert "time.sleep(120)" in re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(cell.error["traceback"]))
    assert f"no runs on {pod!r}" in ok(starter.run(f"%kt runs {pod}")).stdout
