"""The local backend against real ``python -m pod_runtime`` processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kubetorch_jupyter.backends import Backend, get_backend, register_backend
from kubetorch_jupyter.backends.local import backend as local
from kubetorch_jupyter.backends.local import gpus
from kubetorch_jupyter.backends.local.backend import LocalBackend
from kubetorch_jupyter.core.image import Image
from kubetorch_jupyter.core.spec import ComputeSpec
from kubetorch_jupyter.exceptions import (
    ComputeNotFoundError,
    ConfigError,
    PodStartError,
    ResourceUnavailableError,
)

REPO = Path(__file__).resolve().parents[1]


def compute(name="dev", *, cpus=None, memory=None, gpus=0, image=None, env=None, ttl=None):
    return ComputeSpec(name=name, cpus=cpus, memory=memory, gpus=gpus,
                       image=(image or Image()).to_json(), env=env or {}, inactivity_ttl=ttl)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def get_text(info, path: str) -> str:
    url = info.url.replace("ws://", "http://") + path
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return resp.read().decode()


def fake_gpus(count: int):
    return lambda: [gpus.GPU(i, f"GPU-fake-{i}", "Fake GPU", 2**34) for i in range(count)]


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KT_PROGRESS", "0")
    for var in ("KT_PYTHON", "KT_START_TIMEOUT", gpus.FAKE_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    started = set(local._CHILDREN)
    yield tmp_path / "state"
    for pid, proc in list(local._CHILDREN.items()):  # nothing outlives its test
        if pid not in started and proc.poll() is None:
            os.killpg(pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def backend(state):
    backend = LocalBackend()
    yield backend
    for info in backend.list():
        backend.down(info.name)


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, **kwargs)


def test_start_warm_find_from_another_process_and_down(backend, state):
    info = backend.up(compute(env={"MY_VAR": "x"}))
    record = state / "pods" / "dev.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "pods").stat().st_mode) == 0o700
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text())["pid"] == info.pid
    assert info.url.startswith("ws://127.0.0.1:") and len(info.token) >= 40
    assert get_text(info, "/healthz").strip() == "ok"
    assert get_text(info, "/ready").strip() == "ready"

    env = environ(info.pid)
    assert env["MY_VAR"] == "x" and env["KT_POD_NAME"] == "dev"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert info.token not in Path(f"/proc/{info.pid}/cmdline").read_text()

    again = backend.up(compute(env={"MY_VAR": "x"}))
    assert (again.pid, again.token) == (info.pid, info.token)

    out = run_python("from kubetorch_jupyter.backends.local import LocalBackend as B\n"
                     "b = B(); i = b.get('dev'); print(i.pid, i.token, b.status(i).alive)",
                     cwd="/", check=True)
    assert out.stdout.split() == [str(info.pid), info.token, "True"]

    backend.down("dev")
    assert not record.exists()
    by = f"torn down by {os.path.basename(sys.argv[0])}"  # who stopped it, for its clients
    gone = backend.status(info)
    assert (gone.phase, gone.reason, gone.exit_status) == ("gone", "TornDown", 0)
    assert gone.message.startswith(by) and gone.message.endswith(f"(pid {os.getpid()})"), gone
    assert "listening" in backend.logs("dev")  # the log outlives the pod
    with pytest.raises(ComputeNotFoundError):
        backend.get("dev")


def test_dead_pod_and_foreign_pid_records_are_pruned(backend, state):
    info = backend.up(compute())
    os.kill(info.pid, signal.SIGKILL)
    local._CHILDREN[info.pid].wait(timeout=30)
    status = backend.status(info)
    assert (status.phase, status.reason, status.message) == ("failed", "Killed",
                                                             "killed by SIGKILL")
    assert status.exit_status == -signal.SIGKILL and not status.alive
    assert backend.list() == []
    assert not (state / "pods" / "dev.json").exists()

    # a record whose pid now belongs to some other process (pid reuse) is not a pod
    impostor = local.PodInfo(name="old", url="ws://127.0.0.1:1", token="t", backend="local",
                             pid=os.getpid(), started_at=time.time())
    backend._write(impostor)
    with pytest.raises(ComputeNotFoundError, match="no compute named 'old'"):
        backend.get("old")
    assert not (state / "pods" / "old.json").exists()


def test_unknown_and_invalid_names(backend):
    with pytest.raises(ComputeNotFoundError, match=r"no compute named 'nope' \(running: none\)"):
        backend.get("nope")
    with pytest.raises(ComputeNotFoundError) as err:
        backend.down("nope")
    assert err.value.name == "nope" and err.value.available == []
    with pytest.raises(ComputeNotFoundError):
        backend.logs("nope")
    with pytest.raises(ConfigError, match="is not valid"):
        backend.get("../etc")


def test_up_with_another_spec_replaces_the_pod(backend, caplog):
    """Whether it may is the core's decision (test_spec_policy); up does what it is told."""
    first = backend.up(compute(env={"A": "1"}))
    assert ComputeSpec.from_json(first.spec) == compute(env={"A": "1"})
    assert first.spec_hash == compute(env={"A": "1"}).spec_hash()
    with caplog.at_level(logging.INFO, logger="kubetorch_jupyter.backends.local.backend"):
        second = backend.up(compute(env={"A": "2"}, cpus=1, ttl=600.0))
    assert second.pid != first.pid
    assert ("replacing pod 'dev': cpus default -> 1; inactivity_ttl default -> 600s; "
            "env A changed") in caplog.text
    argv = Path(f"/proc/{second.pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--inactivity-ttl") + 1] == b"600.0"
    assert not backend.status(first).alive
    assert environ(second.pid)["A"] == "2"
    assert [p.pid for p in backend.list()] == [second.pid]


def test_more_gpus_than_this_machine_has(backend, state):
    if gpus.discover_gpus():
        pytest.skip("this machine has GPUs")
    with pytest.raises(ResourceUnavailableError, match="asked for 1 GPU; this machine has 0 GPUs"):
        backend.up(compute(gpus=1))
    assert backend.list() == []


def test_gpus_and_cpus_reach_the_pod(state):
    backend = LocalBackend(discover_gpus=fake_gpus(2))
    try:
        a = backend.up(compute("a", gpus=1, cpus=1))
        assert a.gpus == [0]
        env = environ(a.pid)
        assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        if len(os.sched_getaffinity(0)) > 1:
            assert os.sched_getaffinity(a.pid) == {min(os.sched_getaffinity(0))}
            assert env["OMP_NUM_THREADS"] == "1"
        with pytest.raises(ResourceUnavailableError,
                           match=r"asked for 2 GPUs; this machine has 2 \(1 free: pod 'a' holds"):
            backend.up(compute("b", gpus=2))
        backend.down("a")
        b = backend.up(compute("b", gpus=2))
        assert environ(b.pid)["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert gpus.holders(state) == {0: "b", 1: "b"}
    finally:
        for info in backend.list():
            backend.down(info.name)
    assert gpus.holders(state) == {}


def test_pod_that_exits_at_start(backend, state, tmp_path, monkeypatch):
    python = tmp_path / "broken-python"
    python.write_text("#!/bin/sh\necho 'ModuleNotFoundError: no module named torch' >&2\nexit 3\n")
    python.chmod(0o755)
    monkeypatch.setenv("KT_PYTHON", str(python))
    with pytest.raises(PodStartError) as err:
        backend.up(compute())
    assert err.value.pod == "dev" and err.value.reason == "Error"
    assert "exited with status 3 before it was ready" in str(err.value)
    assert "no module named torch" in err.value.log_tail
    assert not (state / "pods" / "dev.json").exists()


def test_pod_that_never_gets_ready(backend, state, tmp_path, monkeypatch):
    python = tmp_path / "silent-python"
    python.write_text("#!/bin/sh\necho 'thinking...'\nexec sleep 60\n")
    python.chmod(0o755)
    monkeypatch.setenv("KT_PYTHON", str(python))
    monkeypatch.setenv("KT_START_TIMEOUT", "0.5")
    with pytest.raises(PodStartError, match=r"did not become ready within 0.5s") as err:
        backend.up(compute())
    assert "thinking..." in err.value.log_tail and err.value.reason == "StartTimeout"
    assert all(p.poll() is not None for p in local._CHILDREN.values())  # it was killed


def test_image_with_build_steps_runs_in_its_environment(backend, state, monkeypatch):
    monkeypatch.setenv("KT_PROGRESS", "1")  # the build's and the start's bars, on stderr
    image = Image().run_bash("true").set_env_vars({"IMG": "1"})
    info = backend.up(compute(image=image), progress=True)
    exe = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert exe.startswith(str(state / "envs"))
    assert get_text(info, "/healthz").strip() == "ok"
    assert environ(info.pid)["IMG"] == "1"


def test_two_processes_asking_at_once_get_one_pod(backend, state):
    code = ("from kubetorch_jupyter.core.spec import ComputeSpec\n"
            "from kubetorch_jupyter.backends.local import LocalBackend\n"
            "print(LocalBackend().up(ComputeSpec(name='shared')).pid)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    pids = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(pids) == 1
    assert [str(p.pid) for p in backend.list()] == list(pids)


def test_get_backend():
    assert get_backend("local") is get_backend("local")
    assert isinstance(get_backend("local"), LocalBackend)
    with pytest.raises(ConfigError, match="not available yet"):
        get_backend("kubernetes")
    with pytest.raises(ConfigError, match="valid backends: local, kubernetes"):
        get_backend("slurm")
    own = LocalBackend("/nonexistent/state")
    assert get_backend(own) is own
    with pytest.raises(ConfigError, match="registered already"):
        register_backend("local", LocalBackend)


class WrappedBackend(Backend):
    """A backend of the test's own: a real LocalBackend on its own state dir, counting ups."""

    name = "wrapped"

    def __init__(self, state_dir: Path) -> None:
        self.inner = LocalBackend(state_dir)
        self.ups: list[str] = []

    def up(self, spec, *, progress=True, replacing="*"):
        self.ups.append(spec.name)
        return self.inner.up(spec, progress=progress, replacing=replacing)

    def check(self, spec, *, progress=True):
        self.inner.check(spec, progress=progress)

    def get(self, name):
        return self.inner.get(name)

    def list(self):
        return self.inner.list()

    def down(self, name):
        self.inner.down(name)

    def status(self, info):
        return self.inner.status(info)

    def settle(self, info, timeout):
        return self.inner.settle(info, timeout)

    def logs(self, name, tail=200):
        return self.inner.logs(name, tail)


def test_a_backend_instance_or_a_registered_one_runs_the_compute(state, tmp_path):
    import kubetorch_jupyter as kt

    own = WrappedBackend(tmp_path / "own-state")
    compute = kt.Compute(name="injected", backend=own)
    try:
        assert compute.backend is own and compute.backend_name == "wrapped"
        pid = kt.fn(os.getpid).to(compute)()
        assert own.ups == ["injected"] and own.inner.get("injected").pid == pid
        assert (tmp_path / "own-state" / "pods" / "injected.json").exists()
        assert not (state / "pods" / "injected.json").exists()  # not the default backend's

        register_backend("wrapped-test", lambda: own)
        by_name = kt.Compute.from_name("injected", backend="wrapped-test")
        assert by_name.backend is own and by_name.pod.pid == pid
    finally:
        compute.teardown()
    assert own.list() == []


def test_a_dead_pods_children_are_ended_when_it_is_forgotten(tmp_path, monkeypatch) -> None:
    import signal as _signal
    import time as _time

    import psutil as _psutil

    import kubetorch_jupyter as kt

    monkeypatch.setenv("KT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KT_PROGRESS", "0")
    compute = kt.Compute(name="parent")
    try:
        def spawn() -> int:
            import subprocess

            return subprocess.Popen(["sleep", "300"]).pid

        child = kt.fn(spawn).to(compute)()
        os.kill(compute.pod.pid or 0, _signal.SIGKILL)
        _time.sleep(0.2)
        assert _psutil.pid_exists(child)
        assert compute.is_up() is False  # the dead record is pruned...
        deadline = _time.monotonic() + 10
        while _psutil.pid_exists(child) and _time.monotonic() < deadline:
            _time.sleep(0.05)
        gone = not _psutil.pid_exists(child) or _psutil.Process(child).status() == "zombie"
        assert gone  # ...and what it started goes with it
    finally:
        with contextlib.suppress(kt.KtError):
            compute.teardown()


def test_pod_status_says_why() -> None:
    assert [local.PodStatus(p).alive for p in ("pending", "starting", "running")] == [True] * 3
    assert not local.PodStatus("failed").alive and not local.PodStatus("gone").alive
    oom = local.PodStatus("failed", "OOMKilled", "used more than 4Gi", 137)
    assert oom.describe() == "failed (OOMKilled: used more than 4Gi)"
    assert local.PodStatus.from_exit(3).describe() == "failed (Error: exit status 3)"
    assert local.PodStatus.from_exit(-signal.SIGTERM).message == "killed by SIGTERM"
    assert local.PodStatus.from_exit(None).phase == "gone"
    with pytest.raises(ValueError, match="unknown pod phase 'dead'"):
        local.PodStatus("dead")  # type: ignore[arg-type]


def test_a_pod_killed_at_start_says_by_what(backend, tmp_path, monkeypatch):
    python = tmp_path / "killed-python"
    python.write_text("#!/bin/sh\nkill -9 $$\n")
    python.chmod(0o755)
    monkeypatch.setenv("KT_PYTHON", str(python))
    with pytest.raises(PodStartError, match="was killed by SIGKILL before it was ready") as err:
        backend.up(compute())
    assert err.value.reason == "Killed"


def close_the_door_then_die(delay: float) -> int:
    """On the pod: stop accepting connections now, die by SIGKILL ``delay`` seconds later.

    What a SIGKILLed pod looks like from outside for a moment: its sockets reset before
    its exit can be seen.
    """
    import os
    import signal
    import socket
    import threading
    import time

    for fd in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.shutdown(socket.SHUT_RDWR)  # new connections are refused from now on
        except OSError:
            pass
        finally:
            sock.close()

    def die() -> None:
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die, daemon=True).start()
    return os.getpid()


def test_a_pod_that_resets_before_its_exit_shows_is_dead_not_unreachable(state):
    """Regression: a refused connection to a dying pod raised PodUnreachableError."""
    import kubetorch_jupyter as kt
    from kubetorch_jupyter.core import connections

    compute = kt.Compute(name="dying")
    try:
        pid = kt.fn(close_the_door_then_die).to(compute)(0.5)
        connections.drop("dying")  # as in a process that has not connected yet
        found = kt.Compute.from_name("dying")
        assert found.pod.pid == pid and found.backend.status(found.pod).alive
        with pytest.warns(RuntimeWarning, match="state of the old one .* is lost"):
            assert kt.fn(os.getpid).to(found)() != pid  # dead, so started again
    finally:
        compute.teardown()


def test_threads_asking_at_once_open_exactly_one_connection(state):
    """Regression: two callers could each open a connection (one of them thrown away)."""
    import sys
    import threading

    import kubetorch_jupyter as kt
    from kernel_bridge import PodConnection

    compute = kt.Compute(name="pooled")
    try:
        compute.up()
        opened: list[int] = []
        init = PodConnection.__init__.__code__

        def count(frame, event, arg):  # a profiler, not a stand-in: the real code runs
            if event == "call" and frame.f_code is init:
                opened.append(1)

        barrier = threading.Barrier(4)
        got: list[object] = []

        def ask() -> None:
            sys.setprofile(count)
            barrier.wait()
            got.append(compute.connection())
            sys.setprofile(None)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(got) == 4 and len({id(c) for c in got}) == 1
        assert len(opened) == 1
    finally:
        compute.teardown()
