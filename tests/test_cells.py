"""Cell semantics on a real pod: what a %%kt cell sends back, as a local cell would show it."""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kt_testing import timeout

import kubetorch_jupyter as kt
from kubetorch_jupyter.notebook import cells as _cells


class Events(list):
    """A sink that keeps the events a cell sends."""

    def __bool__(self) -> bool:  # a sink is never "missing", even before its first event
        return True

    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)

    def kinds(self) -> list[str]:
        """Event kinds in order, a run of stream chunks counted once (chunking varies)."""
        out: list[str] = []
        for e in self:
            if not (out and e["kind"] == "stream" and out[-1] == "stream"):
                out.append(e["kind"])
        return out

    def text(self, name: str = "stdout") -> str:
        return "".join(e["text"] for e in self if e["kind"] == "stream" and e["name"] == name)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self if e["kind"] == kind]


def run(compute: kt.Compute, source: str, **kwargs: Any) -> tuple[Events, dict[str, Any]]:
    events = Events()
    pulled = _cells.run_cell(compute, source, sink=events, **kwargs)
    return events, pulled


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kt.Compute]:
    """A pod whose cells run without IPython (KT_POD_IPYTHON=0): plain Python semantics."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KT_STATE_DIR", str(tmp_path_factory.mktemp("plain-state")))
        mp.setenv("KT_TEST_SHARED_STATE", "1")
        c = kt.Compute(name=f"plain-{secrets.token_hex(3)}", env={"KT_POD_IPYTHON": "0"})
        c.up()
        try:
            yield c
        finally:
            c.teardown()


def test_the_last_expression_is_the_result(compute: kt.Compute) -> None:
    events, _ = run(compute, "a = 20\nprint('side effect')\na * 2 + 2\n")
    assert events.kinds() == ["stream", "result"]
    assert events.of("result")[0]["data"] == {"text/plain": "42"}
    events, _ = run(compute, "_ + 1")  # `_` holds the previous result, on the pod
    assert events.of("result")[0]["data"]["text/plain"] == "43"
    events, _ = run(compute, "a * 2  ;  # a trailing semicolon hides it")
    assert events.of("result") == []
    events, _ = run(compute, "a = 5")
    assert events == []


def test_namespace_persists_and_classes_pickle_from_main(compute: kt.Compute) -> None:
    run(compute, "import json\nclass Point:\n    def __init__(self, x): self.x = x\np = Point(3)")
    events, pulled = run(compute, "import pickle\nq = pickle.loads(pickle.dumps(p))\n"
                                  "json.dumps(q.x)", pull=["q"])
    assert events.of("result")[0]["data"]["text/plain"] == "'3'"
    assert pulled["q"].x == 3 and type(pulled["q"]).__name__ == "Point"


def test_display_html_and_rich_result(compute: kt.Compute) -> None:
    events, _ = run(compute, (
        "from IPython.display import HTML, Markdown, display, clear_output\n"
        "display(HTML('<b>bold</b>'), Markdown('*md*'))\n"
        "h = display('first', display_id=True)\n"
        "h.update('second')\n"
        "clear_output(wait=True)\n"
        "class Table:\n"
        "    def _repr_html_(self): return '<table></table>'\n"
        "Table()\n"))
    display = events.of("display")
    assert display[0]["data"]["text/html"] == "<b>bold</b>"
    assert display[1]["data"]["text/markdown"] == "*md*"
    assert display[2]["transient"]["display_id"] == display[3]["transient"]["display_id"]
    assert display[3]["update"] is True and display[3]["data"]["text/plain"] == "'second'"
    assert events.of("clear_output") == [{"kind": "clear_output", "wait": True,
                                          "seq": events.of("clear_output")[0]["seq"]}]
    result = events.of("result")[0]["data"]
    assert result["text/html"] == "<table></table>" and result["text/plain"].startswith("<")


def _png(event: dict[str, Any]) -> bytes:
    raw = base64.b64decode(event["data"]["image/png"])
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return raw


def test_figures_are_sent_as_png(compute: kt.Compute) -> None:
    events, _ = run(compute, (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 3, 2])\n"
        "print('before the end')\n"))
    assert events.kinds() == ["stream", "display"]  # the figure comes when the cell ends
    figure = events.of("display")[0]
    _png(figure)
    assert figure["data"]["text/plain"] == "<Figure size 640x480 with 1 Axes>"
    events, _ = run(compute, (
        "fig, ax = plt.subplots()\n"
        "ax.plot([1, 2])\n"
        "plt.show()\n"                  # shown here, in order with the prints
        "print('after show')\n"
        "fig2 = plt.figure()\n"
        "fig2.gca().bar([1], [2])\n"
        "fig2\n"))                      # the result is the figure: shown once, as Out
    assert events.kinds() == ["display", "stream", "result"]
    _png(events.of("display")[0])
    _png(events.of("result")[0])
    events, _ = run(compute, "%matplotlib inline\nplt.plot([2, 1]);")  # a local habit
    assert events.kinds() == ["display"]
    _png(events[0])
    events, _ = run(compute, "import matplotlib\nplt.get_fignums(), matplotlib.get_backend()")
    assert events.of("result")[0]["data"]["text/plain"] == (
        "([], 'module://pod_runtime.mpl_backend')")


def test_output_streams_live_in_order(compute: kt.Compute, tmp_path: Path) -> None:
    """The cell waits for a file that the test creates only after it has seen the print:
    the print must reach the client while the cell still runs."""
    flag = tmp_path / "seen"
    events = Events()

    def sink(event: dict[str, Any]) -> None:
        events(event)
        if event["kind"] == "stream" and "waiting" in event["text"]:
            flag.touch()

    _cells.run_cell(compute, (
        "import os, sys, time\n"
        "print('one')\n"
        "print('two', file=sys.stderr)\n"
        "print('three')\n"
        "print('waiting', flush=True)\n"
        f"deadline = time.monotonic() + {timeout(30)}\n"
        f"while not os.path.exists({str(flag)!r}):\n"
        "    assert time.monotonic() < deadline, 'the client never saw the output'\n"
        "    time.sleep(0.01)\n"
        "print('done')\n"), sink=sink)
    runs: list[list[str]] = []  # consecutive output of one stream, however it was chunked
    for e in events:
        if runs and runs[-1][0] == e["name"]:
            runs[-1][1] += e["text"]
        else:
            runs.append([e["name"], e["text"]])
    assert runs == [["stdout", "one\n"], ["stderr", "two\n"],
                    ["stdout", "three\nwaiting\ndone\n"]]


def test_traceback_points_at_the_cells_own_lines(compute: kt.Compute) -> None:
    run(compute, "def divide(x):\n    return x / 0\n",
        filename=_cells.cell_filename("defs", 7, 2), first_line=2)
    name = _cells.cell_filename("use", 8, 2)
    with pytest.raises(ZeroDivisionError) as info:
        run(compute, "y = 1\ndivide(y)\n", filename=name, first_line=2)
    err = info.value
    assert isinstance(err, kt.RemoteError)
    rendered = "\n".join(err._render_traceback_())
    assert f'File "{name}", line 3, in <module>' in rendered  # line 1 is the %%kt line
    assert "    divide(y)" in rendered
    assert "line 3, in divide" in rendered and "return x / 0" in rendered
    assert "pod_runtime" not in rendered


def test_syntax_error_shows_the_line(compute: kt.Compute) -> None:
    with pytest.raises(SyntaxError) as info:
        run(compute, "x = 1\ny = = 2\n", filename="<kt In[3] abc>", first_line=2)
    rendered = "\n".join(info.value._render_traceback_())  # type: ignore[attr-defined]
    assert 'File "<kt In[3] abc>", line 3' in rendered and "y = = 2" in rendered


def test_top_level_await_and_ipython_syntax(compute: kt.Compute) -> None:
    events, _ = run(compute, "import asyncio\nawait asyncio.sleep(0)\n'awaited'")
    assert events.of("result")[0]["data"]["text/plain"] == "'awaited'"
    events, _ = run(compute, "!echo from-the-shell\nfiles = !echo a b\n%time z = 1\nfiles")
    out = events.text()
    assert "from-the-shell" in out and "Wall time" in out
    assert "['a b']" in events.of("result")[0]["data"]["text/plain"]


def test_push_and_pull(compute: kt.Compute) -> None:
    _, pulled = run(compute, "total = sum(values)\ntotal", push={"values": [1, 2, 3]},
                    pull=["total", "values"])
    assert pulled == {"total": 6, "values": [1, 2, 3]}
    assert _cells.vars_call(compute, push={"k": 10}, pull=["k", "total"]) == {"k": 10,
                                                                              "total": 6}
    with pytest.raises(NameError, match="'missing' is not defined on pod"):
        _cells.vars_call(compute, pull=["missing"])
    run(compute, "import threading\nlock = threading.Lock()")
    with pytest.raises(TypeError, match=r"lock .*cannot be pulled"):
        _cells.vars_call(compute, pull=["lock"])
    with pytest.raises(kt.SerializationError, match="cannot push variable 'handle'"):
        _cells.vars_call(compute, push={"handle": threading.Lock()})


def test_timeout_interrupts_and_the_pod_survives(compute: kt.Compute) -> None:
    run(compute, "alive = 'yes'")
    with pytest.raises(TimeoutError, match="interrupted on pod"):
        run(compute, "import time\ntime.sleep(60)", timeout=0.5)
    events, _ = run(compute, "alive")
    assert events.of("result")[0]["data"]["text/plain"] == "'yes'"


def test_without_ipython_cells_are_plain_python(plain: kt.Compute) -> None:
    events, _ = run(plain, (
        "class Rich:\n"
        "    def _repr_html_(self): return '<i>r</i>'\n"
        "    def _repr_png_(self): return b'\\x89PNG-ish'\n"
        "    def __repr__(self): return 'Rich()'\n"
        "display(Rich())\n"
        "{'b': 1, 'a': [2] * 3}\n"))
    shown = events.of("display")[0]["data"]
    assert shown["text/html"] == "<i>r</i>" and shown["text/plain"] == "Rich()"
    assert base64.b64decode(shown["image/png"]) == b"\x89PNG-ish"
    assert events.of("result")[0]["data"] == {"text/plain": "{'b': 1, 'a': [2, 2, 2]}"}
    events, _ = run(plain, "import matplotlib.pyplot as plt\nfig = plt.figure()\n"
                           "fig.gca().plot([1])\nfig")
    assert events.kinds() == ["result"]
    _png(events[0])
    with pytest.raises(SyntaxError):
        run(plain, "!ls")
