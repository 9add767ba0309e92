"""The ``kt`` command, run as a real subprocess against real local pods."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetorch_jupyter.backends.local import backend as local
from kubetorch_jupyter.backends.local.backend import LocalBackend
from kubetorch_jupyter.cli import main as cli_main
from kubetorch_jupyter.core.spec import ComputeSpec

REPO = Path(__file__).resolve().parents[1]


def compute(name: str, **kwargs):
    return ComputeSpec(name=name, **kwargs)


def kt(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "kubetorch_jupyter.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=60, cwd="/")


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setenv("KT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KT_PROGRESS", "0")
    monkeypatch.delenv("KT_PYTHON", raising=False)
    monkeypatch.delenv("KT_BACKEND", raising=False)
    started = set(local._CHILDREN)
    backend = LocalBackend()
    yield backend
    for info in backend.list():
        backend.down(info.name)
    for pid, proc in list(local._CHILDREN.items()):  # nothing outlives its test
        if pid not in started and proc.poll() is None:
            os.killpg(pid, signal.SIGKILL)
            proc.wait()


def read_until(stream, needle: str, timeout: float = 30) -> str:
    """Read ``stream`` until ``needle`` shows up (select: no fixed sleeps)."""
    seen, deadline = "", time.monotonic() + timeout
    while needle not in seen:
        ready, _, _ = select.select([stream], [], [], max(0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"{needle!r} did not appear; got {seen!r}")
        chunk = os.read(stream.fileno(), 4096).decode()
        if not chunk:
            raise AssertionError(f"stream closed before {needle!r}; got {seen!r}")
        seen += chunk
    return seen


def test_list_logs_teardown(backend):
    assert kt("list").stdout.strip() == "no running pods"
    dev = backend.up(compute("dev", cpus=1, memory=512 * 2**20))

    listing = kt("list")
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["NAME", "BACKEND", "PHASE", "REASON", "PID", "URL", "GPUS", "CPUS",
                              "MEMORY", "AGE", "IDLE"]
    assert row.split()[:9] == ["dev", "local", "running", "-", str(dev.pid), dev.url, "-", "1",
                               "512Mi"]

    logs = kt("logs", "dev", "-n", "1")
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 1
    assert "listening" in logs.stdout

    torn = kt("teardown", "dev")
    assert (torn.returncode, torn.stdout.strip()) == (0, "torn down 'dev'")
    assert backend.list() == []
    assert not backend.status(dev).alive  # torn down by another process: we reap it


def test_logs_follow_until_ctrl_c(backend):
    backend.up(compute("dev"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # a shell's background job inherits SIGINT ignored: give the child Ctrl-C back
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "from kubetorch_jupyter.cli import main; raise SystemExit(main())")
    proc = subprocess.Popen([sys.executable, "-c", code, "logs", "dev", "-f", "-n", "5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        read_until(proc.stdout, "listening")
        with open(backend.log_path("dev"), "a") as log:
            log.write("a line written later\n")
        read_until(proc.stdout, "a line written later")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_teardown_all(backend):
    backend.up(compute("a"))
    backend.up(compute("b"))
    torn = kt("teardown", "--all")
    assert torn.returncode == 0
    assert torn.stdout.splitlines() == ["torn down 'a'", "torn down 'b'"]
    assert backend.list() == []
    assert all(p.poll() is not None for p in local._CHILDREN.values())


def test_unknown_names_exit_1_with_a_message(backend):
    for args in (("teardown", "nope"), ("logs", "nope")):
        result = kt(*args)
        assert result.returncode == 1
        assert "kt: no compute named 'nope'" in result.stderr
        assert "Traceback" not in result.stderr


def test_bad_settings_exit_1(backend, tmp_path, monkeypatch):
    for var in ("KUBECONFIG", "KT_KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(var, raising=False)
    result = kt("list", KT_BACKEND="kubernetes", HOME=str(tmp_path))  # no ~/.kube/config
    assert result.returncode == 1
    assert "the kubernetes backend found no cluster: set KT_KUBECONFIG" in result.stderr
    assert "Traceback" not in result.stderr


def test_in_process_main(backend, capsys, monkeypatch):
    assert cli_main(["config"]) == 0
    out = capsys.readouterr().out
    assert "KT_STATE_DIR" in out and os.environ["KT_STATE_DIR"] in out
    monkeypatch.setenv("KT_BACKEND", "slurm")
    assert cli_main(["list"]) == 1
    assert "valid backends: local, kubernetes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["teardown"])  # neither names nor --all
    assert exit_.value.code == 2
