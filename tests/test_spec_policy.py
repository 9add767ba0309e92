"""The restart policy: reuse what fits, restart only a pod nobody else uses, else refuse.

Two real client processes share a real pod; the decision itself is also checked on plain
values.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from kt_testing import timeout

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.base import PodInfo, PodStatus
from kubetorch_jupyter.backends.local import backend as local
from kubetorch_jupyter.backends.local.backend import LocalBackend
from kubetorch_jupyter.core import policy
from kubetorch_jupyter.core.spec import ComputeSpec

REPO = Path(__file__).resolve().parents[1]


def record(spec: ComputeSpec) -> PodInfo:
    return PodInfo(name=spec.name, url="ws://127.0.0.1:1", token="t", backend="local",
                   spec=spec.to_json(), spec_hash=spec.spec_hash())


RUNNING = PodStatus("running")


def getenv(name: str) -> str | None:
    import os

    return os.environ.get(name)


def test_decide_on_values() -> None:
    have = ComputeSpec(name="dev", cpus=1, memory=4 * 2**30, env={"A": "1"})
    info = record(have)
    never = lambda: pytest.fail("clients are counted only when a restart is wanted")  # noqa: E731
    assert policy.decide(None, None, have, never) == policy.Start(have)
    assert isinstance(policy.decide(info, PodStatus("failed", "Killed"), have, never),
                      policy.Start)
    # asking for nothing new: defaults, a subset, the same values
    for wanted in (ComputeSpec(name="dev"), ComputeSpec(name="dev", cpus=1),
                   ComputeSpec(name="dev", env={"A": "1"}), have):
        assert policy.decide(info, RUNNING, wanted, never) == policy.Reuse(info, have)
    more = ComputeSpec(name="dev", memory=8 * 2**30, gpus=1)
    restart = policy.decide(info, RUNNING, more, 0)
    assert isinstance(restart, policy.Restart) and restart.spec == more
    assert restart.changes == ["cpus 1 -> default", "memory 4Gi -> 8Gi", "gpus 0 -> 1",
                               "env A removed"]
    refuse = policy.decide(info, RUNNING, more, lambda: 2)
    assert isinstance(refuse, policy.Refuse)
    message = str(refuse.error)
    assert "\n" not in message and "2 other clients use it" in message
    assert "memory 4Gi -> 8Gi" in message and "kt.Compute.from_name('dev')" in message
    assert "`kt teardown dev`" in message and "another name" in message
    assert refuse.error.changes == restart.changes and refuse.error.clients == 2


def test_a_compute_without_flags_reuses_the_running_pod_and_its_spec() -> None:
    first = kt.Compute(name="dev", cpus=1, env={"OWN": "1"})
    try:
        pid = first.up().pod.pid
        plain = kt.Compute(name="dev")  # all defaults: asks for nothing new
        assert plain.up().pod.pid == pid
        assert kt.fn(os.getpid).to(plain)() == pid
        # the pod dies: it comes back as it was started, not with defaults
        os.kill(pid or 0, 9)
        local._CHILDREN[pid or 0].wait(timeout(30))
        with warnings.catch_warnings():  # "starting a new pod", if the bridge saw it first
            warnings.simplefilter("ignore", RuntimeWarning)
            assert kt.fn(getenv).to(plain)("OWN") == "1"
        assert plain.pod.pid != pid
        assert kt.Compute.from_name("dev").cpus == 1
    finally:
        first.teardown()


def test_our_own_connection_does_not_count_as_another_client() -> None:
    first = kt.Compute(name="mine")
    try:
        pid = kt.fn(os.getpid).to(first)()  # this process holds a pooled connection
        bigger = kt.Compute(name="mine", memory="1Gi")
        with pytest.warns(RuntimeWarning,
                          match=r"restarting compute 'mine': its spec changed "
                                r"\(memory default -> 1Gi\)"):
            bigger.up()
        assert bigger.pod.pid != pid
        assert kt.fn(os.getpid).to(bigger)() == bigger.pod.pid
    finally:
        bigger.teardown()


CLIENT_A = """
import os, sys, time
from pathlib import Path
import kubetorch_jupyter as kt

def wait_for(path):
    import os, pathlib, time
    while not pathlib.Path(path).exists():  # the pod-side half of the test's gate
        time.sleep(0.02)
    return os.getpid()

compute = kt.Compute(name="shared", memory="256Mi")
handle = kt.fn(wait_for).to(compute).submit(sys.argv[1])
print("A-READY", compute.pod.pid, flush=True)
print("A-DONE", handle.result(), flush=True)
"""

CLIENT_B = """
import warnings
import kubetorch_jupyter as kt
warnings.simplefilter("always")
try:
    pid = kt.Compute(name="shared", memory="512Mi").up().pod.pid
except kt.ComputeInUseError as exc:
    print("B-REFUSED", exc, flush=True)
    raise SystemExit(3)
print("B-UP", pid, flush=True)
"""


def python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # type: ignore[call-overload]


def test_two_clients_a_pod_in_use_is_not_restarted_under_the_other(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = python(CLIENT_A, str(gate))
    try:
        assert a.stdout is not None
        ready = a.stdout.readline().split()
        assert ready[:1] == ["A-READY"], a.stderr.read() if a.stderr else ""
        pod_pid = int(ready[1])

        b = python(CLIENT_B)
        out, err = b.communicate(timeout=timeout(60))
        assert b.returncode == 3, err
        assert out.count("\n") == 1 and out.startswith("B-REFUSED compute 'shared' runs another")
        assert "memory 256Mi -> 512Mi" in out and "another client uses it" in out
        assert "kt.Compute.from_name('shared')" in out and "`kt teardown shared`" in out
        assert LocalBackend().get("shared").pid == pod_pid  # left alone

        gate.touch()
        rest, a_err = a.communicate(timeout=timeout(60))
        assert a.returncode == 0, a_err
        assert rest.split() == ["A-DONE", str(pod_pid)]  # A's call finished unharmed

        b = python(CLIENT_B)  # A is gone: nobody else uses the pod now
        out, err = b.communicate(timeout=timeout(60))
        assert b.returncode == 0, err
        assert ("RuntimeWarning: restarting compute 'shared': its spec changed "
                "(memory 256Mi -> 512Mi)") in err
        new_pid = int(out.split()[1])
        assert new_pid != pod_pid and LocalBackend().get("shared").pid == new_pid
    finally:
        if a.poll() is None:
            a.kill()
            a.communicate()
        with contextlib.suppress(kt.ComputeNotFoundError):
            LocalBackend().down("shared")


class RacedBackend(LocalBackend):
    """A real local backend; just before its first start, another client starts the pod.

    That is what a second notebook does when both ask for "raced" at once: between this
    process's look at the pod and its start, the other one's pod comes up, and that
    other client is connected to it.
    """

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.rival: LocalBackend = LocalBackend(state_dir)
        self.rival_info: PodInfo | None = None
        self.rival_conn: object | None = None

    def up(self, spec, *, progress=True, replacing="*"):  # type: ignore[no-untyped-def]
        if self.rival_info is None:
            from kernel_bridge import PodConnection

            self.rival_info = self.rival.up(ComputeSpec(name=spec.name, memory=256 * 2**20))
            self.rival_conn = PodConnection(self.rival_info.url, self.rival_info.token,
                                            name="rival")
        return super().up(spec, progress=progress, replacing=replacing)


def test_a_pod_started_by_another_client_between_look_and_start_is_not_replaced(
        tmp_path: Path) -> None:
    backend = RacedBackend(tmp_path / "state")
    try:
        with pytest.raises(kt.ComputeInUseError, match="another client uses it"):
            kt.Compute(name="raced", memory="512Mi", backend=backend).up()
        assert backend.rival_info is not None
        survivor = backend.get("raced")
        assert survivor.pid == backend.rival_info.pid  # the rival's pod runs on, unharmed
    finally:
        if backend.rival_conn is not None:
            backend.rival_conn.close()  # type: ignore[attr-defined]
        for info in backend.list():
            backend.down(info.name)
