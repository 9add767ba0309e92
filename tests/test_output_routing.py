"""Output of work that outlives its cell lands in the cell that started it.

``h = remote.submit()`` in one cell and ``h.result()`` in a later one: the call's output
belongs to the first cell (a frontend places it by ``parent_header``), never to the cell
that happens to run while it arrives, nor to the one that collects the result. The
bridge's own warnings, logged from its threads, go to the call they concern or to the
kernel process's stderr, never into a cell.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _kernel import Cell, Kernel
from kt_testing import timeout

import kernel_bridge  # noqa: F401 - installs the bridge's log handler
from kubetorch_jupyter.calls.display import cell_sink, event_sink


@pytest.fixture(scope="module")
def kernel(state: Path) -> Iterator[Kernel]:
    k = Kernel({"KT_STATE_DIR": str(state), "KT_PROGRESS": "0", "KT_SYNC": "0"})
    try:
        cell = k.run("import kubetorch_jupyter as kt\n"
                     f"compute = kt.Compute(name='route-{secrets.token_hex(2)}')\n"
                     "compute.up()", timeout=timeout(90))
        assert cell.reply is not None and cell.reply["status"] == "ok", cell.messages
        yield k
    finally:
        k.shutdown()


def _ok(cell: Cell) -> None:
    assert cell.reply is not None and cell.reply["status"] == "ok", cell.error


def _parents(cell: Cell) -> set[str]:
    return {m["parent_header"]["msg_id"] for m in cell.messages}


def test_a_submitted_calls_output_lands_in_the_cell_that_started_it(kernel: Kernel,
                                                                    tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = kernel.run(
        "import os, sys, threading, time\n"
        "def slow_printer(gate):\n"
        "    deadline = time.monotonic() + 60\n"
        "    while not os.path.exists(gate) and time.monotonic() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    print('remote line 1', flush=True)\n"
        "    print('remote warning', file=sys.stderr, flush=True)\n"
        "    print('remote line 2', flush=True)\n"
        "    return 42\n"
        f"h = kt.fn(slow_printer).to(compute).submit({str(gate)!r})\n"
        "print('cell 1 own')\n", timeout=timeout(60))
    _ok(first)
    # cell 2 runs while the call prints and answers
    second = kernel.run(
        "answered = threading.Event()\n"
        "h.on_answer.append(answered.set)\n"
        f"open({str(gate)!r}, 'w').close()\n"
        "print('cell 2 own')\n"
        "assert answered.wait(60)\n", timeout=timeout(90))
    _ok(second)
    third = kernel.run("h.result()", timeout=timeout(60))
    _ok(third)
    kernel.collect(first.msg_id, timeout=timeout(10))  # anything still on its way
    assert first.stdout == "cell 1 own\nremote line 1\nremote line 2\n"
    assert first.stream("stderr") == "remote warning\n"
    assert second.stdout == "cell 2 own\n" and second.stream("stderr") == ""
    assert third.stdout == "" and third.stream("stderr") == ""
    assert third.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
    assert _parents(first) == {first.msg_id}


def test_a_blocking_call_still_prints_in_its_own_cell(kernel: Kernel) -> None:
    cell = kernel.run("def shout(x):\n"
                      "    print('remote', x)\n"
                      "    return x\n"
                      "kt.fn(shout).to(compute)(7)", timeout=timeout(60))
    _ok(cell)
    assert cell.stdout == "remote 7\n"
    assert cell.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "7"


def test_display_data_keeps_its_cell_too(kernel: Kernel) -> None:
    """The sink a call captures republishes display data, not only streams."""
    first = kernel.run("from kubetorch_jupyter.calls.display import cell_sink\n"
                       "sink = cell_sink()\n", timeout=timeout(30))
    later = kernel.run(
        "sink({'kind': 'display', 'data': {'text/plain': 'x', 'text/html': '<b>x</b>'},\n"
        "      'metadata': {}, 'transient': {'display_id': 'd1'}})\n"
        "sink({'kind': 'display', 'data': {'text/plain': 'y'}, 'metadata': {},\n"
        "      'transient': {'display_id': 'd1'}, 'update': True})\n"
        "sink({'kind': 'clear_output', 'wait': True})\n"
        "print('later own')\n", timeout=timeout(30))
    _ok(later)
    kernel.collect(first.msg_id, timeout=timeout(10))
    assert later.stdout == "later own\n" and later.of_type("display_data") == []
    shown = first.of_type("display_data", "update_display_data", "clear_output")
    assert [m["msg_type"] for m in shown] == ["display_data", "update_display_data",
                                              "clear_output"]
    assert shown[0]["content"]["data"]["text/html"] == "<b>x</b>"
    assert shown[0]["content"]["transient"] == {"display_id": "d1"}
    assert shown[1]["content"]["data"] == {"text/plain": "y"}


def test_bridge_warnings_from_threads_stay_out_of_the_running_cell(kernel: Kernel) -> None:
    first = kernel.run("import logging, threading\n"
                       "from kernel_bridge.logs import about\n"
                       "bridge = logging.getLogger('kubetorch.bridge')\n"
                       "def slow(): return 1\n"
                       "h2 = kt.fn(slow).to(compute).submit()\n", timeout=timeout(60))
    _ok(first)
    later = kernel.run(
        "t = threading.Thread(target=lambda: (\n"
        "    bridge.warning('connection to pod x dropped; reconnecting'),\n"
        "    bridge.warning('about that call', extra=about(h2))))\n"
        "t.start(); t.join()\n"
        "print('later own')\n", timeout=timeout(30))
    _ok(later)
    kernel.collect(first.msg_id, timeout=timeout(10))
    assert later.stdout == "later own\n" and later.stream("stderr") == ""
    # the one about a call is shown with that call's output; the other is not in a cell
    assert first.stream("stderr") == "kubetorch WARNING: about that call\n"
    assert first.stdout == ""


def test_outside_a_kernel_a_call_writes_to_this_process(capfd: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert cell_sink() is event_sink
    sink = cell_sink()
    sink({"kind": "stream", "name": "stdout", "text": "plain\n"})
    out, _ = capfd.readouterr()
    assert out == "plain\n"


def test_bridge_records_go_to_the_process_stderr_or_the_call(capfd: pytest.CaptureFixture[str]
                                                             ) -> None:
    from kernel_bridge.logs import about, log

    seen: list[dict[str, object]] = []

    class Call:
        sink = staticmethod(seen.append)

    def warn() -> None:
        log.warning("pod %s is slow", "p1")
        log.warning("this call", extra=about(Call()))

    thread = threading.Thread(target=warn)
    thread.start()
    thread.join()
    _, err = capfd.readouterr()
    assert err == "kubetorch WARNING: pod p1 is slow\n"
    assert seen == [{"kind": "stream", "name": "stderr",
                     "text": "kubetorch WARNING: this call\n"}]
