"""Cells that outlive their kernel: an orphan is a run users can see, attach to, cancel;
a cell queued behind another run says what it waits for; its timeout counts from when it
starts. Real kernels (restarted through the KernelManager), real pods."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

from _kernel import Cell, Kernel
from kt_testing import timeout
from test_detach import gated, ok


def stderr_has(mid: str, text: str) -> object:
    return lambda cells: text in cells[mid].stream("stderr")


def run_of(text: str, pod: str) -> str:
    m = re.search(rf"({re.escape(pod)}:[0-9a-f]+)", text)
    assert m is not None, text
    return m.group(1)


def start_orphan(kernel: Kernel, pod: str, gate: Path) -> None:
    """A cell that blocks on ``gate``, then its kernel dies: the cell is an orphan.

    (A notebook's "Restart kernel" interrupts the kernel before it kills it, and the
    interrupt usually stops the cell on the pod too; whether it does is a race with the
    kill. A kernel that dies outright, as here, leaves the cell running every time.)
    """
    mid = kernel.execute(f"%%kt --name {pod}\n" + gated("O", gate, n=2, at=1))
    kernel.collect(mid, timeout=timeout(90), until=lambda c: "O 0" in c[mid].stdout)
    kernel.die_and_restart()
    ok(kernel.run("%load_ext kubetorch_jupyter"))


def test_an_orphan_is_listed_waited_for_and_cancellable(kernels: list[Kernel],
                                                        tmp_path: Path) -> None:
    first, other = kernels
    pod = f"o-{secrets.token_hex(3)}"
    start_orphan(first, pod, tmp_path / "never")
    # %kt runs with no name, in the fresh kernel: every pod's runs, the orphan among them
    listing = ok(first.run("%kt runs")).stdout
    row = next(ln for ln in listing.splitlines() if ln.startswith(pod + ":"))
    assert "running" in row.split() and "orphaned" in row, listing
    rid = row.split()[0]
    # %kt status in a fresh kernel: no made-up 'default'; the running pods instead
    status = ok(first.run("%kt status")).stdout
    assert "no current compute" in status and pod in status and "'default'" not in status
    assert "busy (running cell" in ok(first.run(f"%kt status {pod}")).stdout
    # a new cell says what it waits for, and its --timeout has not begun
    mid = first.execute(f"%%kt --name {pod} --timeout 3\nprint('second ran')")
    first.collect(mid, timeout=timeout(60), until=stderr_has(mid, "%kt cancel"))
    note = first.cells[mid].stream("stderr")
    assert f"waiting for run {rid}" in note and "by a kernel that is gone" in note, note
    time.sleep(timeout(4))  # longer than the cell's timeout, spent waiting
    assert f"interrupt sent to run {rid}" in ok(other.run(f"%kt cancel {rid}")).stdout
    cell = ok(first.collect(mid, timeout=timeout(60))[mid])
    assert cell.stdout == "second ran\n"
    # the orphan's result waits for whoever attaches (its KeyboardInterrupt)
    row = next(ln for ln in ok(first.run(f"%kt runs {pod}")).stdout.splitlines()
               if ln.startswith(rid))
    assert "failed" in row.split() and "orphaned" in row
    ok(first.run(f"%kt teardown {pod}"))


def test_interrupting_a_waiting_cell_names_the_run_it_waits_for(kernels: list[Kernel],
                                                                tmp_path: Path) -> None:
    first, _ = kernels
    pod = f"o-{secrets.token_hex(3)}"
    gate = tmp_path / "gate"
    start_orphan(first, pod, gate)
    mid = first.execute(f"%%kt --name {pod}\nprint('never')")
    first.collect(mid, timeout=timeout(60), until=stderr_has(mid, "%kt cancel"))
    first.interrupt()
    cell: Cell = first.collect(mid, timeout=timeout(60))[mid]
    assert cell.error is not None and cell.error["ename"] == "CellInterrupted", [
        (m["msg_type"], m["content"]) for m in cell.messages]
    text = "\n".join(cell.error["traceback"])
    assert text.startswith("KeyboardInterrupt: ")
    rid = run_of(text, pod)
    assert "interrupted before it started" in text and f"%kt cancel {rid}" in text
    assert "calls.py" not in text and len(cell.error["traceback"]) == 1, text
    listing = ok(first.run(f"%kt runs {pod}")).stdout  # the orphan is untouched
    assert rid in listing and "running" in listing
    gate.touch()
    attached = ok(first.run(f"%kt attach {rid}", timeout=timeout(60)))
    assert "O 1" in attached.stdout
    ok(first.run(f"%kt teardown {pod}"))


def test_a_cell_behind_a_detached_run_says_so(kernels: list[Kernel], tmp_path: Path) -> None:
    first, _ = kernels
    pod = f"o-{secrets.token_hex(3)}"
    gate = tmp_path / "gate"
    started = ok(first.run(f"%%kt --name {pod} --detach\n" + gated("D", gate, n=2, at=1),
                           timeout=timeout(90))).stdout
    rid = run_of(started, pod)
    mid = first.execute(f"%%kt --name {pod}\nprint('after')")
    first.collect(mid, timeout=timeout(60), until=stderr_has(mid, "%kt cancel"))
    note = first.cells[mid].stream("stderr")
    assert f"waiting for run {rid}" in note and "detached" in note, note
    gate.touch()
    assert ok(first.collect(mid, timeout=timeout(60))[mid]).stdout == "after\n"
    ok(first.run(f"%kt teardown {pod}"))
