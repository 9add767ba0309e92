"""The Kubernetes backend end to end: the real client against the Kubernetes double.

Every test drives the official ``kubernetes`` client against the double's API server
(tests/k8s_double), whose kubelet runs each pod as a real ``pod_runtime`` process
started by the real bootstrap command; calls go through the double's port-forward
websocket exactly as through a cluster's API server. Failures come from the double's
scripted faults (the scheduler's message, an unpullable image, an OOM kill, a deletion,
an eviction, a held start).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from kt_testing import timeout
from tcp_proxy import TcpProxy

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.kubernetes import apply, identity
from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend
from kubetorch_jupyter.exceptions import ComputeNotFoundError, PodDiedError, PodStartError
from kubetorch_jupyter.manager import ComputeManager

USER = "alice"
PODS = apply.Kind("v1", "Pod", "pods")


def double(x: int) -> int:
    return 2 * x


class Counter:
    def __init__(self, start: int = 0) -> None:
        import threading

        self.n = start
        self.gate = threading.Event()

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def wait(self) -> int:
        """Block until :meth:`release` (a call in flight the test controls), then answer."""
        self.gate.wait()
        return self.n

    def release(self) -> None:
        self.gate.set()


@pytest.fixture()
def backend(k8s_cluster: Any) -> Iterator[KubernetesBackend]:
    be = KubernetesBackend(k8s_cluster.configuration(), username=USER)
    yield be
    be.close()


def fresh(prefix: str = "c") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def owned(be: KubernetesBackend, name: str | None = None) -> set[tuple[str, str]]:
    """Every object (kind, name) carrying the user's (and compute's) identity labels."""
    sel = identity.selector(USER, name)
    found = {(k.kind, o["metadata"]["name"]) for k, o in apply.owned(be.api, "default", sel)}
    pods, _ = apply.list_objects(be.api, PODS, "default", sel)
    return found | {("Pod", p["metadata"]["name"]) for p in pods
                    if not p["metadata"].get("deletionTimestamp")}


def pods_of(be: KubernetesBackend, name: str) -> list[dict[str, Any]]:
    pods, _ = apply.list_objects(be.api, PODS, "default", identity.selector(USER, name, "pod"))
    return pods


def test_fn_and_cls_run_list_and_teardown_exactly(backend: KubernetesBackend,
                                                  k8s_cluster: Any) -> None:
    name = fresh()
    unrelated = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "someone-elses", "labels": {"app": "other"}},
                 "data": {"k": "v"}}
    apply.apply(backend.api, unrelated, "default")
    compute = kt.Compute(name=name, cpus="0.5", memory="1Gi", backend=backend)
    assert kt.fn(double).to(compute)(21) == 42
    counter = kt.cls(Counter).to(compute, init_args={"start": 5})
    assert counter.add(2) == 7
    assert counter.add(3) == 10  # the state lives on the pod

    made = owned(backend, name)
    kinds = {k for k, _ in made}
    assert {"Deployment", "Service", "Secret", "Pod"} <= kinds, made
    assert all(n.startswith(f"{USER}-{name}") for _, n in made), made
    secret = next(n for k, n in made if k == "Secret")
    stored = k8s_cluster.get("secrets", secret)
    refs = stored["metadata"].get("ownerReferences") or []
    assert [r["kind"] for r in refs] == ["Deployment"]  # the token goes with the workload

    summaries = [s for s in ComputeManager([backend]).list() if s.name == name]
    assert len(summaries) == 1 and summaries[0].phase == "running"
    assert summaries[0].idle_since is not None  # the pod's /metrics, through a port-forward
    assert summaries[0].backend == "kubernetes" and summaries[0].cpus == 0.5
    info = backend.get(name)
    assert info.spec["name"] == name and info.spec_hash == compute.spec.spec_hash()
    assert info.token and "token" not in repr(info)

    compute.teardown()
    assert owned(backend, name) == set()
    assert k8s_cluster.get("configmaps", "someone-elses")["data"] == {"k": "v"}
    with pytest.raises(ComputeNotFoundError):
        backend.get(name)
    with pytest.raises(ComputeNotFoundError):
        backend.down(name)


def test_to_twice_is_idempotent_and_a_changed_spec_updates_in_place(
        backend: KubernetesBackend, k8s_cluster: Any) -> None:
    name = fresh()
    first = kt.Compute(name=name, cpus="0.5", backend=backend)
    assert kt.fn(double).to(first)(1) == 2
    workload = k8s_cluster.get("deployments", f"{USER}-{name}", group="apps")
    pod_uids = {p["metadata"]["uid"] for p in pods_of(backend, name)}
    token = backend.get(name).token

    again = kt.Compute(name=name, cpus="0.5", backend=backend)
    assert kt.fn(double).to(again)(2) == 4
    same = k8s_cluster.get("deployments", f"{USER}-{name}", group="apps")
    assert same["metadata"]["generation"] == workload["metadata"]["generation"]
    assert {p["metadata"]["uid"] for p in pods_of(backend, name)} == pod_uids

    backend.up(again.spec)  # an explicit re-apply of the same spec changes nothing either
    same = k8s_cluster.get("deployments", f"{USER}-{name}", group="apps")
    assert same["metadata"]["generation"] == workload["metadata"]["generation"]

    bigger = kt.Compute(name=name, cpus="1", backend=backend)
    with pytest.warns(RuntimeWarning, match="restarting compute"):
        assert kt.fn(double).to(bigger)(3) == 6
    updated = k8s_cluster.get("deployments", f"{USER}-{name}", group="apps")
    assert updated["metadata"]["uid"] == workload["metadata"]["uid"]  # in place
    assert updated["metadata"]["generation"] > workload["metadata"]["generation"]
    notes = updated["metadata"]["annotations"]
    assert notes[identity.SPEC_HASH_ANNOTATION] == bigger.spec.spec_hash()
    live = [p for p in pods_of(backend, name) if not p["metadata"].get("deletionTimestamp")]
    assert live and not {p["metadata"]["uid"] for p in live} & pod_uids
    assert backend.get(name).token == token  # one token per compute
    bigger.teardown()


def test_kt_list_logs_and_teardown_through_the_cli(backend: KubernetesBackend,
                                                   k8s_cluster: Any) -> None:
    name = fresh()
    compute = kt.Compute(name=name, backend=backend)
    assert kt.fn(double).to(compute)(4) == 8
    env = {"KT_BACKEND": "kubernetes", "KT_KUBECONFIG": str(k8s_cluster.kubeconfig_path),
           "KT_USERNAME": USER, "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}

    def kt_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kubetorch_jupyter.cli", *args],
                              capture_output=True, text=True, env=env,
                              timeout=timeout(120))

    listing = kt_cli("list")
    assert listing.returncode == 0, listing.stderr
    assert name in listing.stdout and "kubernetes" in listing.stdout
    logs = kt_cli("logs", name, "-n", "50")
    assert logs.returncode == 0, logs.stderr
    assert "kt-bootstrap: starting runtime" in logs.stdout
    down = kt_cli("teardown", name)
    assert down.returncode == 0, down.stderr
    assert owned(backend, name) == set()
    missing = kt_cli("teardown", name)
    assert missing.returncode != 0 and name in missing.stderr
    assert "Traceback" not in missing.stderr


# ---- failures at start --------------------------------------------------------------------

def test_not_enough_gpus_names_what_was_asked_and_the_scheduler(
        backend: KubernetesBackend) -> None:
    name = fresh()
    compute = kt.Compute(name=name, gpus=2, memory="2Gi", backend=backend)
    with pytest.raises(PodStartError) as info:
        compute.up()
    text = str(info.value)
    assert info.value.reason == "Unschedulable"
    assert "not enough GPUs" in text and "2 nvidia.com/gpu" in text
    assert "Insufficient nvidia.com/gpu" in text  # the scheduler's own words
    assert "\n" not in text
    backend.down(name)


def test_a_scripted_unschedulable_pod(backend: KubernetesBackend, k8s_cluster: Any) -> None:
    name = fresh()
    k8s_cluster.unschedulable("0/3 nodes are available: 3 node(s) didn't match Pod's node "
                              "affinity/selector.", selector=identity.selector(USER, name))
    with pytest.raises(PodStartError, match="didn't match Pod's node affinity") as info:
        kt.Compute(name=name, node_selector={"pool": "a100"}, backend=backend).up()
    assert info.value.reason == "Unschedulable"
    assert "node selector pool=a100" in str(info.value)
    backend.down(name)


def test_a_missing_image_names_the_image_and_pull_secrets(backend: KubernetesBackend,
                                                          k8s_cluster: Any) -> None:
    name = fresh()
    image = "registry.example.com/team/missing:1"
    k8s_cluster.missing_image(image)
    compute = kt.Compute(name=name, image=kt.Image(base=image), backend=backend,
                         image_pull_secrets=["team-registry"])
    with pytest.raises(PodStartError) as info:
        compute.up()
    text = str(info.value)
    assert info.value.reason in ("ErrImagePull", "ImagePullBackOff")
    assert image in text and "team-registry" in text and "\n" not in text
    backend.down(name)


def test_a_crashing_start_shows_the_bootstrap_error_and_log(backend: KubernetesBackend
                                                             ) -> None:
    name = fresh()
    compute = kt.Compute(name=name, image=kt.Image().run_bash("echo no-such-tool >&2; exit 3"),
                         backend=backend)
    with pytest.raises(PodStartError) as info:
        compute.up()
    err = info.value
    assert err.reason in ("Error", "CrashLoopBackOff")
    first = str(err).splitlines()[0]
    assert "run_bash" in first or "step" in first, first  # the bootstrap's own line
    assert "no-such-tool" in err.log_tail
    backend.down(name)


def test_an_oom_kill_while_starting_names_the_memory_limit(backend: KubernetesBackend,
                                                           k8s_cluster: Any) -> None:
    name = fresh()
    rule = k8s_cluster.hold("NotReady", selector=identity.selector(USER, name))
    compute = kt.Compute(name=name, memory="300Mi", backend=backend)
    errors: list[BaseException] = []
    starter = threading.Thread(target=lambda: _capture(compute.up, errors))
    starter.start()
    pod = _wait_running_pod(backend, name)
    k8s_cluster.oom_kill(pod)
    starter.join(timeout(60))
    k8s_cluster.clear(rule)
    assert errors and isinstance(errors[0], PodStartError), errors
    assert errors[0].reason == "OOMKilled"
    assert "300Mi" in str(errors[0]).splitlines()[0]
    backend.down(name)


def test_a_launch_timeout_names_the_phase_it_was_stuck_in(backend: KubernetesBackend,
                                                          k8s_cluster: Any) -> None:
    name = fresh()
    k8s_cluster.hold("ContainerCreating", selector=identity.selector(USER, name))
    with pytest.raises(PodStartError) as info:
        kt.Compute(name=name, launch_timeout=2, backend=backend).up()
    assert info.value.reason == "StartTimeout"
    assert "within 2s" in str(info.value) and "pulling image" in str(info.value)
    backend.down(name)


# ---- a pod that dies later ------------------------------------------------------------

@pytest.mark.parametrize("how", ["delete", "evict", "oom"])
def test_a_pod_lost_mid_call_is_pod_died_with_the_reason(backend: KubernetesBackend,
                                                         k8s_cluster: Any, how: str,
                                                         tmp_path: Any) -> None:
    name = fresh()
    compute = kt.Compute(name=name, memory="1Gi", backend=backend)
    counter = kt.cls(Counter).to(compute, init_args={"start": 1})
    assert counter.add(1) == 2
    handle = counter.wait.submit()
    pod = next(p["metadata"]["name"] for p in pods_of(backend, name))
    if how == "delete":
        k8s_cluster.delete_pod(pod, grace=0)
    elif how == "evict":
        k8s_cluster.evict(pod)
    else:
        k8s_cluster.oom_kill(pod)
    with pytest.raises(PodDiedError) as info:
        handle.result(timeout=timeout(60))
    expected = {"delete": "Deleted", "evict": "Evicted", "oom": "OOMKilled"}[how]
    assert info.value.reason == expected, info.value
    if how == "oom":  # a PodOOMError, with the limit
        assert isinstance(info.value, kt.PodOOMError) and info.value.limit == 2**30
        assert "ran out of memory" in str(info.value) and "limit 1Gi" in str(info.value)
    else:
        assert expected.lower() in str(info.value).lower()
    # the next call starts again (a new pod, or the restarted container), with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert kt.fn(double).to(compute)(5) == 10
    assert any("starting a new pod" in str(w.message) for w in caught)
    compute.teardown()


def test_a_dropped_port_forward_reconnects_and_loses_nothing(k8s_cluster: Any,
                                                              tmp_path: Any) -> None:
    proxy = TcpProxy(k8s_cluster.port)
    conf = k8s_cluster.configuration()
    conf.host = f"http://127.0.0.1:{proxy.port}"
    be = KubernetesBackend(conf, username=USER)
    name = fresh()
    compute = kt.Compute(name=name, backend=be)
    counter = kt.cls(Counter).to(compute, init_args={"start": 10})
    assert counter.add(1) == 11
    handle = counter.wait.submit()
    proxy.cut()  # every API connection drops, the port-forward websocket with them
    proxy.restore()
    counter.release()  # a call after the drop: the connection was made again
    assert handle.result(timeout=timeout(60)) == 11  # the call in flight survived
    assert counter.add(1) == 12  # the same pod, its state intact
    compute.teardown()
    be.close()
    proxy.close()


# ---- helpers ----------------------------------------------------------------------------

def _capture(fn: Any, into: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        into.append(exc)


def _wait_running_pod(be: KubernetesBackend, name: str) -> str:
    """The compute's pod's name once its container runs (a watch, not a poll)."""
    from kubernetes import watch
    from kubernetes.client import CoreV1Api

    stream = watch.Watch()
    try:
        for event in stream.stream(CoreV1Api(be.api).list_namespaced_pod, "default",
                                   label_selector=identity.selector(USER, name, "pod"),
                                   timeout_seconds=int(timeout(60)), deserialize=False):
            obj = event["object"]
            for cs in (obj.get("status") or {}).get("containerStatuses") or []:
                if (cs.get("state") or {}).get("running"):
                    return str(obj["metadata"]["name"])
    finally:
        stream.stop()
    raise AssertionError(f"no pod of {name} ran")


# ---- a notebook ----------------------------------------------------------------------------

def test_kt_cells_in_a_real_kernel_on_the_kubernetes_backend(k8s_cluster: Any,
                                                             tmp_path: Any) -> None:
    """``%%kt`` with ``KT_BACKEND=kubernetes``: output live in the cell, Out, state kept."""
    from _kernel import Kernel

    name = fresh("nb")
    kernel = Kernel({"KT_BACKEND": "kubernetes", "KT_PROGRESS": "0", "KT_USERNAME": USER,
                     "KT_KUBECONFIG": str(k8s_cluster.kubeconfig_path),
                     "KT_STATE_DIR": str(tmp_path / "state")})
    try:
        assert kernel.run("%load_ext kubetorch_jupyter").reply["status"] == "ok"
        first = kernel.run(f"%%kt --name {name} --cpus 0.5\nimport os\n"
                           "print('on', os.environ['HOSTNAME'])\nx = 20\nx + 1",
                           timeout=timeout(120))
        assert first.reply is not None and first.reply["status"] == "ok", first.error
        assert first.stdout.startswith(f"on {USER}-{name}-")  # the pod's own name
        out = first.of_type("execute_result")[0]["content"]["data"]["text/plain"]
        assert out == "21"
        second = kernel.run(f"%%kt --name {name}\nx * 2", timeout=timeout(60))
        assert second.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "40"
        listing = kernel.run("%kt list", timeout=timeout(60))
        assert name in listing.stdout and "kubernetes" in listing.stdout
        down = kernel.run(f"%kt teardown {name}", timeout=timeout(120))
        assert down.reply is not None and down.reply["status"] == "ok", down.error
    finally:
        kernel.shutdown()
    be = KubernetesBackend(k8s_cluster.configuration(), username=USER)
    try:
        assert owned(be, name) == set()
    finally:
        be.close()


def test_follow_logs_streams_new_lines_until_stopped(backend: KubernetesBackend) -> None:
    name = fresh()
    compute = kt.Compute(name=name, backend=backend)
    shout = kt.fn(print).to(compute)
    shout("before-following", flush=True)
    stop = threading.Event()
    lines = backend.follow_logs(name, tail=50, stop=stop)
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if "before-following" in line:
            break
    shout("while-following", flush=True)
    for line in lines:
        seen.append(line)
        if "while-following" in line:
            stop.set()
            break
    assert any("while-following" in line for line in seen)
    lines.close()  # type: ignore[attr-defined]
    compute.teardown()


def test_url_mode_reaches_the_configured_url_with_its_headers(
        k8s_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetorch_jupyter.backends.base import PodInfo

    monkeypatch.setenv("KT_K8S_URL", "wss://kt.example.com/{namespace}/{service}")
    monkeypatch.setenv("KT_K8S_HEADERS", "Authorization: Bearer ingress-secret")
    be = KubernetesBackend(k8s_cluster.configuration(), username=USER, connect="url")
    try:
        info = PodInfo(name="dev", url="", token="s3cr3t-tok", backend="kubernetes",
                       spec={"name": "dev", "kubernetes": {"namespace": "team"}})
        endpoint = be.endpoint(info)
        assert endpoint.url == f"wss://kt.example.com/team/{USER}-dev"
        assert endpoint.dial is None and endpoint.secure
        assert endpoint.request_headers()["Authorization"] == "Bearer ingress-secret"
        assert "ingress-secret" not in repr(endpoint) and "s3cr3t" not in repr(endpoint)
    finally:
        be.close()
