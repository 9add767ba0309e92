"""%%kt through a real ipykernel: every output lands in the cell that produced it.

A notebook frontend puts an output in the cell whose request is the output's
``parent_header``; these tests read the kernel's IOPub exactly as a frontend does.
"""

from __future__ import annotations

import base64
import re
import secrets
from pathlib import Path

import pytest
from _kernel import Kernel
from kt_testing import timeout


@pytest.fixture(scope="module")
def pods() -> tuple[str, str]:
    suffix = secrets.token_hex(2)
    return f"ka-{suffix}", f"kb-{suffix}"


def test_stream_display_and_result_carry_the_cells_parent(kernel: Kernel, pods: tuple[str, str]
                                                          ) -> None:
    code = (f"%%kt --name {pods[0]}\n"
            "import sys\n"
            "from IPython.display import HTML, display\n"
            "print('out 1')\n"
            "print('err 1', file=sys.stderr)\n"
            "display(HTML('<b>shown</b>'))\n"
            "print('out 2')\n"
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3])\n"
            "class Rich:\n"
            "    def _repr_html_(self): return '<i>rich</i>'\n"
            "    def __repr__(self): return 'Rich()'\n"
            "Rich()\n")
    mid = kernel.execute(code)
    cell = kernel.collect(mid, timeout=timeout(60))[mid]
    assert cell.reply is not None and cell.reply["status"] == "ok", cell.error
    types = [m["msg_type"] for m in cell.messages]
    assert cell.stdout == "out 1\nout 2\n"
    assert cell.stream("stderr") == "err 1\n"
    # order as the cell ran: print, display, print, then Out (result), then the figure
    # (as ipykernel's inline backend sends figures: when the cell is done)
    result_at = types.index("execute_result")
    assert types.index("display_data") < result_at < len(types) - 1
    assert types[-1] == "display_data"
    result = cell.of_type("execute_result")[0]["content"]
    assert result["data"]["text/html"] == "<i>rich</i>"
    assert result["data"]["text/plain"] == "Rich()"
    assert result["execution_count"] == cell.reply["execution_count"]
    displays = cell.of_type("display_data")
    assert displays[0]["content"]["data"]["text/html"] == "<b>shown</b>"
    png = base64.b64decode(displays[-1]["content"]["data"]["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert displays[-1]["content"]["data"]["text/plain"].startswith("<Figure size")


def test_two_cells_in_flight_keep_their_own_output(kernel: Kernel, pods: tuple[str, str],
                                                   tmp_path: Path) -> None:
    """Cell A (main shell, pod a) and cell B (a subshell, pod b) run at the same time."""
    gate = str(tmp_path / "gate-")
    slow = ("import os, time\n"
            "for i in range(5):\n"
            "    print('{tag}', i, flush=True)\n"
            "    deadline = time.monotonic() + 30\n"
            "    while not os.path.exists('{gate}' + str(i)) and time.monotonic() < deadline:\n"
            "        time.sleep(0.01)\n"
            "'{tag} done'\n")
    sub = kernel.subshell()
    a = kernel.execute(f"%%kt --name {pods[0]}\n" + slow.format(tag="A", gate=gate + "a"))
    b = kernel.execute(f"%%kt --name {pods[1]}\n" + slow.format(tag="B", gate=gate + "b"),
                       subshell=sub)
    # the pods only go on once *both* cells have printed: they are interleaved for sure
    opened: set[str] = set()

    def step(cells: dict) -> bool:
        for i in range(5):
            if f"A {i}\n" in cells[a].stdout and f"B {i}\n" in cells[b].stdout:
                for tag in "ab":
                    name = f"{gate}{tag}{i}"
                    if name not in opened:
                        Path(name).touch()
                        opened.add(name)
        return False

    cells = kernel.collect(a, b, timeout=timeout(90), until=step)
    assert cells[a].stdout == "".join(f"A {i}\n" for i in range(5))
    assert cells[b].stdout == "".join(f"B {i}\n" for i in range(5))
    assert cells[a].of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'A done'"
    assert cells[b].of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'B done'"
    assert len(opened) == 10


def test_a_queued_cell_gets_its_own_output(kernel: Kernel, pods: tuple[str, str]) -> None:
    first = kernel.execute(f"%%kt --name {pods[0]}\nimport time\ntime.sleep(0.3)\nprint('one')")
    second = kernel.execute(f"%%kt --name {pods[0]}\nprint('two')")
    cells = kernel.collect(first, second, timeout=timeout(60))
    assert cells[first].stdout == "one\n"
    assert cells[second].stdout == "two\n"


def test_traceback_points_at_the_cells_line(kernel: Kernel, pods: tuple[str, str]) -> None:
    cell = kernel.run(f"%%kt --name {pods[0]}\n"
                      "def inner(x):\n"
                      "    return x / 0\n"
                      "inner(1)\n", timeout=timeout(60))
    error = cell.error
    assert error is not None and error["ename"] == "ZeroDivisionError"
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))  # IPython's colours
    assert re.search(r"<kt In\[\d+\] \w+>:4\n", text) and "----> 4 inner(1)" in text, text
    assert re.search(r"<kt In\[\d+\] \w+>:3, in inner", text), text
    assert re.search(r"----> 3\s+return x / 0", text), text


def test_interrupt_stops_the_remote_cell_and_the_pod_survives(kernel: Kernel,
                                                              pods: tuple[str, str]) -> None:
    mid = kernel.execute(f"%%kt --name {pods[0]}\n"
                         "import time\n"
                         "survivor = 'still here'\n"
                         "print('sleeping', flush=True)\n"
                         "time.sleep(60)\n")
    kernel.collect(mid, timeout=timeout(30), until=lambda c: "sleeping" in c[mid].stdout)
    kernel.interrupt()
    cell = kernel.collect(mid, timeout=timeout(30))[mid]
    assert cell.error is not None and cell.error["ename"] == "KeyboardInterrupt"
    assert "time.sleep(60)" in re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(
        cell.error["traceback"]))  # where it stopped
    after = kernel.run(f"%%kt --name {pods[0]}\nprint(survivor)", timeout=timeout(30))
    assert after.stdout == "still here\n"


def test_the_namespace_survives_a_kernel_restart(kernel: Kernel, pods: tuple[str, str]) -> None:
    kernel.run(f"%%kt --name {pods[1]}\nkept = [1, 2, 3]")
    kernel.restart()
    assert kernel.run("%load_ext kubetorch_jupyter").reply["status"] == "ok"
    cell = kernel.run(f"%%kt --name {pods[1]}\nsum(kept)", timeout=timeout(30))
    assert cell.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "6"
