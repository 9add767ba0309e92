"""The user's flows on a real cluster (opt-in: see this folder's conftest).

The same flows the double's tests run (tests/test_k8s_backend.py, test_k8s_notebook.py),
against whatever cluster the kubeconfig names: ``kt.fn``, ``kt.cls``, a ``%%kt`` cell
(live output, state kept, an interrupt), and a teardown that leaves nothing of the
compute behind.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from _kernel import Kernel
from real_cluster import IMAGE, SLOW, USER, fresh
from test_detach import ok

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.kubernetes import apply, identity
from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend
from kubetorch_jupyter.manager import ComputeManager

pytestmark = pytest.mark.timeout(SLOW)


def double(x: int) -> int:
    return 2 * x


def hostname() -> str:
    import os

    return os.environ["HOSTNAME"]


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def add(self, k: int) -> int:
        self.n += k
        return self.n


def left_of(be: KubernetesBackend, name: str) -> set[tuple[str, str]]:
    """Every live object (kind, name) of the compute: what a teardown must leave none of."""
    namespace = be.namespace_of()
    sel = identity.selector(USER, name)
    found = {(k.kind, o["metadata"]["name"]) for k, o in apply.owned(be.api, namespace, sel)}
    pods, _ = apply.list_objects(be.api, apply.Kind("v1", "Pod", "pods"), namespace, sel)
    return found | {("Pod", p["metadata"]["name"]) for p in pods
                    if not p["metadata"].get("deletionTimestamp")}


@pytest.fixture()
def compute(real_backend: KubernetesBackend) -> Iterator[kt.Compute]:
    c = kt.Compute(name=fresh("rc"), cpus="0.25", memory="512Mi", image=kt.Image(base=IMAGE))
    try:
        yield c
    finally:
        with contextlib.suppress(kt.KtError):
            c.teardown()


def test_fn_and_cls_run_on_the_cluster_and_teardown_leaves_nothing(
        compute: kt.Compute, real_backend: KubernetesBackend) -> None:
    assert isinstance(compute.backend, KubernetesBackend)  # KT_BACKEND=kubernetes
    assert kt.fn(double).to(compute)(21) == 42
    assert kt.fn(hostname).to(compute)().startswith(f"{USER}-{compute.name}-")
    counter = kt.cls(Counter).to(compute, init_args={"start": 5})
    assert counter.add(2) == 7 and counter.add(3) == 10  # state lives on the pod
    made = left_of(real_backend, compute.name)
    assert {"Pod", "Secret", "Service"} <= {k for k, _ in made}, made
    listed = [s for s in ComputeManager([real_backend]).list() if s.name == compute.name]
    assert len(listed) == 1 and listed[0].backend == "kubernetes"
    compute.teardown()
    assert left_of(real_backend, compute.name) == set()


def test_kt_cells_in_a_kernel_output_state_interrupt_and_teardown(
        real_backend: KubernetesBackend, tmp_path: Any) -> None:
    name = fresh("rnb")
    kernel = Kernel({"KT_BACKEND": "kubernetes", "KT_USERNAME": USER, "KT_PROGRESS": "0",
                     "KT_STATE_DIR": str(tmp_path / "state")})
    try:
        ok(kernel.run("%load_ext kubetorch_jupyter\nimport kubetorch_jupyter as kt\n"
                      f"img = kt.Image(base={IMAGE!r})"))
        first = ok(kernel.run(f"%%kt --name {name} --cpus 0.25 --image img\nimport os\n"
                              "print('on', os.environ['HOSTNAME'])\nx = 20\nx + 1",
                              timeout=SLOW))
        assert first.stdout.startswith(f"on {USER}-{name}-"), first.stdout
        assert first.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "21"
        mid = kernel.execute(f"%%kt --name {name}\nimport time\nprint('sleeping', flush=True)\n"
                             "time.sleep(600)\n")
        kernel.collect(mid, timeout=SLOW, until=lambda c: "sleeping" in c[mid].stdout)
        kernel.interrupt()
        cell = kernel.collect(mid, timeout=SLOW)[mid]
        assert cell.error is not None and cell.error["ename"] == "KeyboardInterrupt"
        assert "time.sleep(600)" in re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(
            cell.error["traceback"]))
        after = ok(kernel.run(f"%%kt --name {name}\nx * 2", timeout=SLOW))
        assert after.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "40"
        ok(kernel.run(f"%kt teardown {name}", timeout=SLOW))
    finally:
        kernel.shutdown()
    assert left_of(real_backend, name) == set()
