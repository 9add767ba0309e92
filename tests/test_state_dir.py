"""The state directory stays small: lock files go with their pods, pod logs rotate,
and following a log ends when its pod does."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from kt_testing import timeout

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.local.backend import LocalBackend
from kubetorch_jupyter.core.spec import ComputeSpec

REPO = Path(kt.__file__).resolve().parents[1]


@pytest.fixture
def backend() -> LocalBackend:
    backend = LocalBackend()
    yield backend
    for info in backend.list():
        backend.down(info.name)


def test_lock_files_go_with_their_pods(backend: LocalBackend) -> None:
    pods = backend.state_dir / "pods"
    backend.up(ComputeSpec(name="keep"))
    backend.up(ComputeSpec(name="gone"))
    with pytest.raises(kt.ComputeNotFoundError):
        backend.down("never-started")  # a name typed once
    backend.down("gone")
    assert sorted(p.name for p in pods.iterdir()) == ["keep.json", "keep.lock"]


def test_a_waiter_on_a_removed_lock_file_still_excludes_the_next(backend: LocalBackend) -> None:
    """The holder removes the file while another waits on it; a third comes after."""
    order: list[str] = []
    inside = threading.Event()
    holding = threading.Lock()  # checks that no two threads are inside at once

    def hold(name: str, then: threading.Event | None = None) -> None:
        with backend._locked("x"):
            assert holding.acquire(blocking=False), "two holders of one pod lock"
            order.append(name)
            inside.set()
            if then is not None:
                then.wait(timeout(10))
            holding.release()

    release = threading.Event()
    first = threading.Thread(target=hold, args=("first", release))
    first.start()
    assert inside.wait(timeout(10))
    others = [threading.Thread(target=hold, args=(n,)) for n in ("second", "third")]
    for t in others:
        t.start()
    release.set()  # first leaves no record: it unlinks the file the others wait on
    for t in (first, *others):
        t.join(timeout(10))
    assert sorted(order) == ["first", "second", "third"]
    assert not (backend.state_dir / "pods" / "x.lock").exists()


def test_pod_logs_rotate_and_kt_logs_still_shows_the_recent_lines(
        backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_POD_LOG_MAX_BYTES", "1Mi")
    c = kt.Compute(name="flood")

    @kt.fn
    def flood() -> None:
        line = "x" * 99
        for i in range(60_000):  # about 6 MB
            print(f"{i:06d} {line}")
        print("the last line")

    flood.to(c)()
    log = backend.log_path("flood")
    older = log.with_name(log.name + ".1")
    assert log.stat().st_size < 2 * 2**20 and older.stat().st_size < 3 * 2**20
    assert sorted(p.name for p in log.parent.iterdir()) == ["flood.log", "flood.log.1"]
    lines = backend.logs("flood", tail=30_000).splitlines()
    assert lines[-1] == "the last line"
    assert len(lines) > log.read_text().count("\n")  # the tail reaches into the rotated file
    c.teardown()


def test_following_a_log_ends_when_the_pod_ends(backend: LocalBackend) -> None:
    backend.up(ComputeSpec(name="dev"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "kubetorch_jupyter.cli", "logs", "dev",
                             "-f"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert "listening" in proc.stdout.readline() + proc.stdout.readline()
        backend.down("dev")
        _, err = proc.communicate(timeout=timeout(30))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert err.strip() == ("kt: pod 'dev' is not running (torn down or exited); "
                           "stopped following")
