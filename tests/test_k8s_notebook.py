"""The notebook flows on ``backend='kubernetes'``, as a user runs them, against the double.

A real ipykernel with ``KT_BACKEND=kubernetes`` pointed at the double's kubeconfig: a
``%%kt`` cell interrupted mid-run (the pod survives with its state), a detached run
attached to from the same kernel and from a second one; and code sync with hot reload
through ``kt.fn`` on a :class:`KubernetesBackend` (an edit runs at the next call, on the
same pod, with no container restart).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_sync
from _kernel import Kernel
from kt_testing import timeout
from test_detach import gated, lines, ok, run_id

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.kubernetes import apply, identity
from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend

USER = "nbuser"
PODS = apply.Kind("v1", "Pod", "pods")
project, write = test_sync.project, test_sync.write


def fresh(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def live_pods(be: KubernetesBackend, name: str) -> list[dict[str, Any]]:
    pods, _ = apply.list_objects(be.api, PODS, "default", identity.selector(USER, name, "pod"))
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def restarts(pod: dict[str, Any]) -> int:
    return sum(int(cs.get("restartCount") or 0)
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])


@pytest.fixture(scope="module")
def backend(k8s_cluster_module: Any) -> Iterator[KubernetesBackend]:
    be = KubernetesBackend(k8s_cluster_module.configuration(), username=USER)
    yield be
    be.close()


def k8s_kernel(cluster: Any, state: Path) -> Kernel:
    """A kernel whose ``%%kt`` cells run on the double, the extension loaded."""
    k = Kernel({"KT_BACKEND": "kubernetes", "KT_PROGRESS": "0", "KT_USERNAME": USER,
                "KT_KUBECONFIG": str(cluster.kubeconfig_path), "KT_STATE_DIR": str(state)})
    try:
        ok(k.run("%load_ext kubetorch_jupyter", timeout=timeout(60)))
    except BaseException:
        k.shutdown()
        raise
    return k


@pytest.fixture(scope="module")
def nb(k8s_cluster_module: Any, tmp_path_factory: pytest.TempPathFactory,
       backend: KubernetesBackend) -> Iterator[tuple[Kernel, str, Path]]:
    """One kernel and one compute of the module's, torn down (and checked gone) after."""
    state = tmp_path_factory.mktemp("k8s-nb-state")
    name = fresh("nb")
    kernel = k8s_kernel(k8s_cluster_module, state)
    try:
        ok(kernel.run(f"%%kt --name {name} --cpus 0.5\nkept = [1, 2, 3]", timeout=timeout(120)))
        yield kernel, name, state
        ok(kernel.run(f"%kt teardown {name}", timeout=timeout(120)))
    finally:
        kernel.shutdown()
    assert live_pods(backend, name) == []


def test_an_interrupted_cell_stops_on_the_pod_and_the_pod_keeps_its_state(
        nb: tuple[Kernel, str, Path], backend: KubernetesBackend) -> None:
    kernel, name, _ = nb
    before = live_pods(backend, name)
    assert len(before) == 1
    mid = kernel.execute(f"%%kt --name {name}\n"
                         "import time\n"
                         "survivor = 'still here'\n"
                         "print('sleeping', flush=True)\n"
                         "time.sleep(600)\n")
    kernel.collect(mid, timeout=timeout(60), until=lambda c: "sleeping" in c[mid].stdout)
    kernel.interrupt()
    cell = kernel.collect(mid, timeout=timeout(60))[mid]
    assert cell.error is not None and cell.error["ename"] == "KeyboardInterrupt", cell.messages
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(cell.error["traceback"]))
    assert "time.sleep(600)" in text, text  # where it stopped, on the pod
    after = ok(kernel.run(f"%%kt --name {name}\nprint(survivor, sum(kept))",
                          timeout=timeout(60)))
    assert after.stdout == "still here 6\n"
    now = live_pods(backend, name)
    assert [p["metadata"]["uid"] for p in now] == [p["metadata"]["uid"] for p in before]
    assert restarts(now[0]) == restarts(before[0])  # the same container, never restarted


def test_a_detached_run_is_attached_to_from_this_kernel_and_a_new_one(
        nb: tuple[Kernel, str, Path], k8s_cluster_module: Any, tmp_path: Path) -> None:
    kernel, name, state = nb
    # attached from the kernel that started it, once it finished
    rid = run_id(kernel.run(f"%%kt --name {name} --detach\nfor i in range(3):\n"
                            "    print('D', i, flush=True)\n'D done'", timeout=timeout(60)))
    cell = ok(kernel.run(f"%kt attach {rid}", timeout=timeout(60)))
    assert cell.stdout == lines("D", 3)
    assert cell.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'D done'"

    # attached from a kernel that never saw it, while it runs: replayed, then streamed
    gate = tmp_path / "gate"
    rid = run_id(kernel.run(f"%%kt --name {name} --detach\n" + gated("T", gate),
                            timeout=timeout(60)))
    other = k8s_kernel(k8s_cluster_module, state)
    try:
        mid = other.execute(f"%kt attach {rid}")
        other.collect(mid, timeout=timeout(60), until=lambda c: "T 2\n" in c[mid].stdout)
        gate.touch()
        cell = ok(other.collect(mid, timeout=timeout(60))[mid])
        assert cell.stdout == lines("T")
        assert cell.of_type("execute_result")[0]["content"]["data"]["text/plain"] \
            == "'T finished'"
        again = other.run(f"%kt attach {rid}", timeout=timeout(60))
        assert again.error is not None  # given once
        assert "Traceback" not in "".join(again.error["traceback"])
    finally:
        other.shutdown()


# ---- code sync and hot reload -----------------------------------------------------------

MODEL = "VALUE = {v}\n\n\ndef predict():\n    return 'v{v}'\n"
TRAIN = ("from mypkg import model, state\n\n\ndef train():\n    state.calls += 1\n"
         "    return model.predict(), state.calls\n")


def test_an_edited_module_runs_at_the_next_call_on_the_same_pod(
        project: Path, backend: KubernetesBackend) -> None:
    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/state.py", "calls = 0\n")
    write(project, "mypkg/model.py", MODEL.format(v=1))
    write(project, "mypkg/train.py", TRAIN)
    from mypkg.train import train  # type: ignore[import-not-found]

    name = fresh("sy")
    compute = kt.Compute(name=name, cpus="0.5", backend=backend)
    try:
        remote = kt.fn(train).to(compute)
        assert remote() == ("v1", 1)  # the project went to the pod: train is imported there
        before = live_pods(backend, name)
        write(project, "mypkg/model.py", MODEL.format(v=2))
        assert remote() == ("v2", 2)  # new code; the unchanged state module kept its count
        write(project, "mypkg/model.py", MODEL.format(v=3))
        assert remote() == ("v3", 3)
        now = live_pods(backend, name)
        assert [p["metadata"]["uid"] for p in now] == [p["metadata"]["uid"] for p in before]
        assert restarts(now[0]) == restarts(before[0])
    finally:
        with contextlib.suppress(kt.KtError):
            compute.teardown()
    assert live_pods(backend, name) == []
