"""Idle eviction on Kubernetes: an idle pod scales its own workload to zero (issue 13).

Against the double (tests/k8s_double): the compute's pod runs the real pod_runtime, the
double's kubelet mounts its service-account token and the double checks the per-compute
Role (``resourceNames: [the workload]``, ``deployments/scale``) for it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_double import ApiError
from k8s_testing import wait_for, wait_gone
from kubernetes import client

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.kubernetes import apply, identity
from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend
from kubetorch_jupyter.manager import ComputeManager
from pod_runtime import selfscale

USER = "idler"
PODS = apply.Kind("v1", "Pod", "pods")


def add(a: int, b: int) -> int:
    return a + b


def started_then_sleep(flag: str, seconds: float) -> float:
    """Mark that the call started, then hold the pod busy for ``seconds``."""
    Path(flag).write_text("started")
    time.sleep(seconds)
    return seconds


@pytest.fixture()
def backend(k8s_cluster: Any) -> Iterator[KubernetesBackend]:
    be = KubernetesBackend(k8s_cluster.configuration(), username=USER)
    yield be
    be.close()


def _deployment(k8s_cluster: Any, name: str) -> Any:
    apps = client.AppsV1Api(k8s_cluster.api_client())
    found = apps.list_namespaced_deployment(
        "default", label_selector=identity.selector(USER, name)).items
    assert len(found) == 1, found
    return found[0]


def _live_pods(be: KubernetesBackend, name: str) -> list[dict[str, Any]]:
    pods, _ = apply.list_objects(be.api, PODS, "default", identity.selector(USER, name, "pod"))
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _wait_scaled_to_zero(k8s_cluster: Any, name: str) -> None:
    """Watch until the Deployment asks for 0 replicas and its last pod is deleted."""
    apps = client.AppsV1Api(k8s_cluster.api_client())
    core = client.CoreV1Api(k8s_cluster.api_client())
    wait_for(apps.list_namespaced_deployment, lambda d: d.spec.replicas == 0, "default",
             label_selector=identity.selector(USER, name), seconds=120)
    wait_gone(core.list_namespaced_pod, "default",
              label_selector=identity.selector(USER, name, "pod"))


def test_an_idle_pod_scales_its_deployment_to_zero_and_the_next_call_starts_it(
        backend: KubernetesBackend, k8s_cluster: Any) -> None:
    compute = kt.Compute(name="dozy", inactivity_ttl=2, backend=backend)
    try:
        remote = kt.fn(add).to(compute)
        assert remote(1, 2) == 3
        deploy = _deployment(k8s_cluster, "dozy")
        account = deploy.spec.template.spec.service_account_name
        assert account and account.endswith("-scaler")  # its own, allowed only its scale
        role = k8s_cluster.get("roles", account, group="rbac.authorization.k8s.io")
        assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments/scale"],
                                  "resourceNames": [deploy.metadata.name],
                                  "verbs": ["get", "patch", "update"]}]

        _wait_scaled_to_zero(k8s_cluster, "dozy")
        assert not compute.is_up()
        status = backend.status(backend.get("dozy"))
        assert (status.phase, status.reason) == ("gone", "Idle")
        assert status.message == "no calls for 2s, its inactivity_ttl"
        listed = [c for c in ComputeManager([backend]).list() if c.name == "dozy"]
        assert [(c.phase, c.reason) for c in listed] == [("gone", "Idle")]  # kt list

        with pytest.warns(RuntimeWarning, match=r"was stopped for idleness \(no calls for 2s, "
                                                r"its inactivity_ttl\).*state of the old one"):
            assert remote(2, 3) == 5
        assert _deployment(k8s_cluster, "dozy").spec.replicas == 1  # the re-apply's
    finally:
        compute.teardown()
    with pytest.raises(ApiError):  # the workload owned it: gone with it
        k8s_cluster.get("roles", role["metadata"]["name"], group="rbac.authorization.k8s.io")


def test_a_busy_pod_is_not_scaled_down(backend: KubernetesBackend, k8s_cluster: Any,
                                       tmp_path: Path) -> None:
    compute = kt.Compute(name="busy", inactivity_ttl=2, backend=backend)
    try:
        remote = kt.fn(started_then_sleep).to(compute)
        pods = {p["metadata"]["uid"] for p in _live_pods(backend, "busy")}
        assert remote(str(tmp_path / "flag"), 6.0) == 6.0  # three TTLs of one running call
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a restart would warn
            assert kt.fn(add).to(compute)(4, 5) == 9
        assert {p["metadata"]["uid"] for p in _live_pods(backend, "busy")} == pods
        assert _deployment(k8s_cluster, "busy").spec.replicas == 1
    finally:
        compute.teardown()


def test_without_its_role_the_idle_pod_says_why_and_exits_as_before(
        backend: KubernetesBackend, k8s_cluster: Any) -> None:
    compute = kt.Compute(name="norbac", inactivity_ttl=2, backend=backend)
    try:
        assert kt.fn(add).to(compute)(1, 1) == 2
        deploy = _deployment(k8s_cluster, "norbac")
        rbac = client.RbacAuthorizationV1Api(k8s_cluster.api_client())
        rbac.delete_namespaced_role(deploy.spec.template.spec.service_account_name, "default")
        core = client.CoreV1Api(k8s_cluster.api_client())
        pod = wait_for(core.list_namespaced_pod,
                       lambda p: any(cs.restart_count >= 1
                                     for cs in p.status.container_statuses or []),
                       "default", label_selector=identity.selector(USER, "norbac", "pod"),
                       seconds=120)
        log = core.read_namespaced_pod_log(pod.metadata.name, "default", previous=True)
        assert "could not scale itself to 0" in log and "HTTP 403" in log, log
        assert "deployments/scale" in log and "forbidden" in log
        assert _deployment(k8s_cluster, "norbac").spec.replicas == 1
    finally:
        compute.teardown()


def _workload(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "main", "image": "python:3.11",
                                                           "command": ["sleep", "600"]}]}}}}


def test_selfscale_patches_only_the_workload_its_role_names(
        k8s_cluster: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    api = k8s_cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    apps.create_namespaced_deployment("default", _workload("mine"))
    apps.create_namespaced_deployment("default", _workload("theirs"))
    core.create_namespaced_service_account("default", {"metadata": {"name": "scaler"}})
    rbac.create_namespaced_role("default", {
        "metadata": {"name": "scaler"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments/scale"],
                   "resourceNames": ["mine"], "verbs": ["get", "patch", "update"]}]})
    rbac.create_namespaced_role_binding("default", {
        "metadata": {"name": "scaler"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "scaler"},
        "subjects": [{"kind": "ServiceAccount", "name": "scaler", "namespace": "default"}]})
    token = k8s_cluster.call(k8s_cluster.kubelet.accounts.token, "default", "scaler")
    (tmp_path / "token").write_text(token)
    monkeypatch.setenv("KT_K8S_API", k8s_cluster.url)
    monkeypatch.setenv("KT_K8S_SA_DIR", str(tmp_path))
    monkeypatch.setenv("KT_K8S_NAMESPACE", "default")

    monkeypatch.setenv("KT_K8S_WORKLOAD", "deployments/theirs")
    why = selfscale.scale_to_zero()
    assert why is not None and "HTTP 403" in why and "system:serviceaccount:default:scaler" in why
    assert token not in why
    monkeypatch.setenv("KT_K8S_WORKLOAD", "deployments/mine")
    assert selfscale.scale_to_zero() is None
    assert apps.read_namespaced_deployment("mine", "default").spec.replicas == 0
    assert apps.read_namespaced_deployment("theirs", "default").spec.replicas == 1

    (tmp_path / "token").write_text("not-a-token-the-double-issued")
    assert "HTTP 401" in (selfscale.scale_to_zero() or "")
    (tmp_path / "token").unlink()
    assert "no service-account token at" in (selfscale.scale_to_zero() or "")
    monkeypatch.setenv("KT_K8S_WORKLOAD", "rayclusters/mine")
    assert "only deployments, statefulsets" in (selfscale.scale_to_zero() or "")
