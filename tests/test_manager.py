"""ComputeManager: one listing for `kt list`, `%kt list` and code, from any process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from kt_testing import timeout

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.local.backend import LocalBackend
from kubetorch_jupyter.core.spec import ComputeSpec
from kubetorch_jupyter.manager import ComputeManager, ComputeSummary

REPO = Path(__file__).resolve().parents[1]
STARTER = """
import kubetorch_jupyter as kt
kt.Compute(name="mgr-a", cpus=1, memory="256Mi").up()
kt.Compute(name="mgr-b").up()
"""


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=timeout(60), cwd="/")


@pytest.fixture
def started() -> Iterator[LocalBackend]:
    """Two computes started by another process, which has exited since."""
    done = run("-c", STARTER)
    assert done.returncode == 0, done.stderr
    backend = LocalBackend()
    yield backend
    for info in backend.list():
        backend.down(info.name)


def rows(text: str, skip: int = 0) -> set[tuple[str, ...]]:
    """(name, backend, phase, reason) of each row of a listing (after ``skip`` columns)."""
    lines = text.strip().splitlines()
    header = lines[0].split()
    at = [header.index(c) for c in ("NAME", "BACKEND", "PHASE", "REASON")]
    out = set()
    for line in lines[1:]:
        cells = line.split()
        cells = cells[len(cells) - len(header):]  # the * column may be blank
        out.add(tuple(cells[i] for i in at))
    return out


def test_kt_list_percent_kt_list_and_the_manager_agree(started: LocalBackend) -> None:
    summaries = ComputeManager().list()  # this process started none of them
    mine = {(s.name, s.backend, s.phase, s.reason or "-") for s in summaries}
    assert mine == {("mgr-a", "local", "running", "-"), ("mgr-b", "local", "running", "-")}
    a = next(s for s in summaries if s.name == "mgr-a")
    assert (a.cpus, a.memory, a.gpus, a.pid) == (1.0, 256 * 2**20, 0, started.get("mgr-a").pid)
    assert a.idle_since is not None and a.started_at - 5 <= a.idle_since <= time.time()

    listing = run("-m", "kubetorch_jupyter.cli", "list")
    assert listing.returncode == 0, listing.stderr
    assert rows(listing.stdout) == mine

    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "kubetorch_jupyter")
        with capture_output() as io:
            shell.run_line_magic("kt", "list")
        assert rows(io.stdout) == mine
        with capture_output() as io:
            shell.run_line_magic("kt", "status mgr-a")
        assert "pod       running, pid" in io.stdout
        with capture_output() as io:
            shell.run_line_magic("kt", "teardown mgr-b")
        assert "tore down 'mgr-b'" in io.stdout
        assert [s.name for s in ComputeManager().list()] == ["mgr-a"]
    finally:
        shell.run_line_magic("unload_ext", "kubetorch_jupyter")
        InteractiveShell.clear_instance()


def test_summaries_never_carry_the_token(started: LocalBackend) -> None:
    tokens = [info.token for info in started.list()]
    assert len(tokens) == 2
    summaries = ComputeManager().list()
    for summary in summaries:
        text = repr(summary) + json.dumps(summary.to_json()) + str(summary)
        assert not any(token in text for token in tokens)
    assert all(token not in repr(info) for token, info in zip(tokens, started.list(),
                                                              strict=True))
    assert ComputeSummary.__dataclass_fields__.keys().isdisjoint({"token", "headers"})


def test_start_stop_logs_runs_and_their_async_twins(tmp_path: Path) -> None:
    manager = ComputeManager()
    stages: list[str] = []
    spec = ComputeSpec(name="mgr-c", memory=2**28, env={"HELLO": "1"})
    try:
        summary = manager.start(spec, progress=stages.append)
        assert stages == ["checking", "starting", "running"]
        assert (summary.name, summary.phase, summary.memory) == ("mgr-c", "running", 2**28)
        assert manager.get("mgr-c") == summary
        assert "listening" in manager.logs("mgr-c")

        from kubetorch_jupyter.notebook import cells

        compute = kt.Compute.from_name("mgr-c")
        run_id = cells.start_detached(compute, "print('detached')\n21 * 2")
        assert [r.id for r in manager.runs("mgr-c")] == [run_id]

        async def twins() -> None:
            assert await manager.alist() == manager.list()
            assert (await manager.aget("mgr-c")).pid == summary.pid
            assert [r.id for r in await manager.aruns("mgr-c")] == [run_id]
            assert "listening" in await manager.alogs("mgr-c", 50)
            follow = manager.afollow_logs("mgr-c", tail=1)
            assert await follow.__anext__()  # the last line so far: following has begun
            with open(LocalBackend().log_path("mgr-c"), "a") as log:
                log.write("a line written later\n")

            async def until_written() -> None:
                line = await follow.__anext__()
                while line != "a line written later\n":  # the pod may print meanwhile
                    line = await follow.__anext__()

            await asyncio.wait_for(until_written(), timeout(30))
            await follow.aclose()
            await manager.astop("mgr-c")

        asyncio.run(twins())
        assert manager.list() == []
        with pytest.raises(kt.ComputeNotFoundError, match="no compute named 'mgr-c'"):
            manager.get("mgr-c")
    finally:
        with contextlib.suppress(kt.ComputeNotFoundError):
            manager.stop("mgr-c")


def test_follow_logs_ends_when_told() -> None:
    manager = ComputeManager()
    manager.start(ComputeSpec(name="mgr-f"))
    try:
        stop = threading.Event()
        lines = manager.follow_logs("mgr-f", tail=1, stop=stop)
        assert "listening" in next(lines)
        stop.set()
        assert list(lines) == []  # the wait for new lines ends at once
    finally:
        manager.stop("mgr-f")
