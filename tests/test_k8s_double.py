"""The Kubernetes double's API, driven only through the official ``kubernetes`` client.

What a real API server answers: status codes and Status bodies, selectors, watches,
server-side apply, garbage collection, discovery for the dynamic client, and pods that
are real processes reached through port-forward (a real pod runtime among them).
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from k8s_double import K8sDouble
from k8s_testing import (
    HTTP,
    HTTP_PROBE,
    POD_IP,
    PY,
    Forward,
    deployment,
    namespace,
    pods_of,
    read_all,
    ready,
    status_of,
    unused_port,
    wait_for,
)
from kt_testing import fn_call, timeout
from kubernetes import client, dynamic, watch
from kubernetes.client.rest import ApiException


@pytest.fixture(scope="module")
def cluster(k8s_cluster_module: K8sDouble) -> K8sDouble:
    return k8s_cluster_module


@pytest.fixture(scope="module")
def api(cluster: K8sDouble) -> client.ApiClient:
    return cluster.api_client()


@pytest.fixture()
def ns(api: client.ApiClient) -> Iterator[str]:
    with namespace(api) as name:
        yield name


# --- the API -------------------------------------------------------------------------------
def test_no_token_or_a_wrong_one_is_401(cluster: K8sDouble) -> None:
    with urllib3.PoolManager() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = http.request("GET", f"{cluster.url}/api/v1/namespaces", headers=headers)
            assert r.status == 401
            assert json.loads(r.data)["reason"] == "Unauthorized"
        assert http.request("GET", f"{cluster.url}/healthz").status == 200


def test_creates_answer_201_and_errors_are_status_bodies(api: client.ApiClient, ns: str
                                                         ) -> None:
    core = client.CoreV1Api(api)
    cm = {"metadata": {"name": "one"}, "data": {"k": "v"}}
    _, code, _ = core.create_namespaced_config_map_with_http_info(ns, cm)
    assert code == 201
    with pytest.raises(ApiException) as dup:
        core.create_namespaced_config_map(ns, cm)
    assert (dup.value.status, status_of(dup.value)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", ns)
    body = status_of(missing.value)
    assert (body["kind"], body["code"], body["reason"]) == ("Status", 404, "NotFound")
    assert body["message"] == 'configmaps "nope" not found'
    with pytest.raises(ApiException) as invalid:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "Not_Valid"}})
    assert (invalid.value.status, status_of(invalid.value)["reason"]) == (422, "Invalid")
    live = core.read_namespaced_config_map("one", ns)
    live.data = {"k": "w"}
    updated = core.replace_namespaced_config_map("one", ns, live)
    assert int(updated.metadata.resource_version) > int(live.metadata.resource_version)
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("one", ns, live)  # the old resourceVersion
    assert (stale.value.status, status_of(stale.value)["reason"]) == (409, "Conflict")
    with pytest.raises(ApiException) as no_ns:
        core.create_namespaced_config_map("no-such-namespace", cm)
    assert status_of(no_ns.value)["message"] == 'namespaces "no-such-namespace" not found'


def test_label_and_field_selectors_on_list_and_deletecollection(api: client.ApiClient, ns: str
                                                                 ) -> None:
    core = client.CoreV1Api(api)
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}),
                         ("c", {"env": "dev"})):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": labels}})

    def names(**kw: Any) -> list[str]:
        return [c.metadata.name for c in core.list_namespaced_config_map(ns, **kw).items]

    assert names(label_selector="tier=web") == ["a"]
    assert names(label_selector="tier!=web") == ["b", "c"]
    assert names(label_selector="tier in (web,db)") == ["a", "b"]
    assert names(label_selector="tier notin (web)") == ["b", "c"]
    assert names(label_selector="env") == ["a", "c"]
    assert names(label_selector="!env") == ["b"]
    assert names(label_selector="tier,env=prod") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    with pytest.raises(ApiException) as bad:
        names(label_selector="tier in web")
    assert bad.value.status == 400
    listed = core.list_namespaced_config_map(ns)
    assert int(listed.metadata.resource_version) >= max(
        int(c.metadata.resource_version) for c in listed.items)
    core.delete_collection_namespaced_config_map(ns, label_selector="env")
    assert names() == ["b"]


def test_watch_from_a_resource_version_with_selectors(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    start = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, {"metadata": {"name": "w", "labels": {"x": "1"}}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "other"}})
    core.patch_namespaced_config_map("w", ns, {"data": {"k": "v"}})
    core.delete_namespaced_config_map("w", ns)
    seen = []
    for e in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=start,
                                  label_selector="x=1", timeout_seconds=int(timeout(10))):
        seen.append((e["type"], e["object"].metadata.name))
        if e["type"] == "DELETED":
            break
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    by_name = [e["type"] for e in watch.Watch().stream(
        core.list_namespaced_config_map, ns, field_selector="metadata.name=other",
        timeout_seconds=1)]
    assert by_name == ["ADDED"]  # no resourceVersion: the current state first, then changes


def test_server_side_apply_creates_is_idempotent_and_owns_its_fields(api: client.ApiClient,
                                                                     ns: str) -> None:
    apps = client.AppsV1Api(api)
    body = deployment("ssa", [PY, "-c", "import time; time.sleep(1e6)"],
                      env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])

    def apply(b: dict[str, Any], manager: str = "kubetorch-jupyter") -> tuple[Any, int]:
        out, code, _ = apps.patch_namespaced_deployment_with_http_info(
            "ssa", ns, b, field_manager=manager, force=True,
            _content_type="application/apply-patch+yaml")
        return out, code

    created, code = apply(body)
    assert code == 201 and created.metadata.generation == 1
    again, code = apply(body)
    # A no-op apply changes nothing: the generation stays (the controller's status writes
    # move the Deployment's resourceVersion, so that is checked on a ConfigMap below).
    assert code == 200
    assert again.metadata.generation == 1
    core = client.CoreV1Api(api)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"},
          "data": {"k": "v"}}
    first = [core.patch_namespaced_config_map(
        "ssa", ns, cm, field_manager="kubetorch-jupyter", force=True,
        _content_type="application/apply-patch+yaml").metadata.resource_version
             for _ in range(2)]
    assert first[0] == first[1]
    assert [m.manager for m in again.metadata.managed_fields] == ["kubetorch-jupyter"]
    # Another manager adds a sidecar; containers merge by name, so both stay.
    sidecar = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ssa"},
               "spec": {"template": {"spec": {"containers": [
                   {"name": "sidecar", "image": "busybox", "command": ["sleep", "1d"]}]}}}}
    apply(sidecar, manager="other")
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "A", "value": "9"}]
    changed, _ = apply(body)
    spec = changed.spec.template.spec
    assert changed.metadata.generation == 3
    assert [c.name for c in spec.containers] == ["main", "sidecar"]
    # B was ours and we no longer apply it: it is gone; A changed.
    assert [(e.name, e.value) for e in spec.containers[0].env] == [("A", "9")]
    # Without force, a field another manager owns with another value conflicts.
    with pytest.raises(ApiException) as conflict:
        apps.patch_namespaced_deployment("ssa", ns, {**sidecar, "spec": {"template": {
            "spec": {"containers": [{"name": "main", "image": "other:1"}]}}}},
            field_manager="third", _content_type="application/apply-patch+yaml")
    assert (conflict.value.status, status_of(conflict.value)["reason"]) == (409, "Conflict")


def test_the_dynamic_client_discovers_and_applies_custom_resources(api: client.ApiClient,
                                                                  ns: str) -> None:
    dyn = dynamic.DynamicClient(api)
    ksvc = dyn.resources.get(api_version="serving.knative.dev/v1", kind="Service")
    body = {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "kn", "namespace": ns},
            "spec": {"template": {"metadata": {"annotations": {
                "autoscaling.knative.dev/min-scale": "1"}}, "spec": {"containers": [{
                    "image": "python:3.11", "name": "user-container",
                    "command": [PY, "-m", "http.server", "$(PORT)", "--bind", "$(POD_IP)"],
                    "env": [POD_IP], "readinessProbe": {"tcpSocket": {"port": 8080}}}]}}}}
    dyn.server_side_apply(ksvc, body=body, field_manager="kubetorch-jupyter",
                          force_conflicts=True)
    custom = client.CustomObjectsApi(api)

    def is_ready(obj: Any) -> bool:
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    listed = custom.list_namespaced_custom_object("serving.knative.dev", "v1", ns, "services")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["kn"]
    done = None
    for event in watch.Watch().stream(custom.list_namespaced_custom_object,
                                      "serving.knative.dev", "v1", ns, "services",
                                      timeout_seconds=int(timeout(30))):
        if is_ready(event["object"]):
            done = event["object"]
            break
    assert done is not None
    assert done["status"]["url"] == f"http://kn.{ns}.example.com"
    assert done["status"]["latestReadyRevisionName"] == "kn-00001"
    ray = dyn.resources.get(api_version="ray.io/v1", kind="RayCluster")
    ray.create(body={"apiVersion": "ray.io/v1", "kind": "RayCluster",
                     "metadata": {"name": "rc"}, "spec": {"headGroupSpec": {"template": {
                         "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray",
                                                  "command": [PY, "-c", "import time; "
                                                              "time.sleep(1e6)"]}]}}}}},
               namespace=ns)
    rc = wait_for(client.CoreV1Api(api).list_namespaced_pod, ready, ns,
                  label_selector="ray.io/cluster=rc,ray.io/node-type=head")
    assert rc.metadata.name.startswith("rc-head-")


def test_deleting_a_deployment_collects_what_it_owns(api: client.ApiClient, ns: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    dep = apps.create_namespaced_deployment(
        ns, deployment("gc", [PY, "-c", "import time; time.sleep(1e6)"], replicas=2))
    core.create_namespaced_secret(ns, {"metadata": {"name": "gc-token", "ownerReferences": [{
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "gc", "uid": dep.metadata.uid}]},
        "stringData": {"token": "s3cret"}})
    pods = wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running", ns,
                    label_selector="app=gc")
    assert pods.metadata.owner_references[0].kind == "ReplicaSet"
    rs_name = pods.metadata.owner_references[0].name
    assert pods.metadata.name.startswith(rs_name + "-") and len(pods.metadata.name) == len(
        rs_name) + 6
    start = apps.list_namespaced_deployment(ns).metadata.resource_version
    _, code, _ = apps.delete_namespaced_deployment_with_http_info(
        "gc", ns, propagation_policy="Foreground")
    assert code == 202  # going, not gone: it waits for its dependents
    deploy_events = []
    for e in watch.Watch().stream(apps.list_namespaced_deployment, ns, resource_version=start,
                                  timeout_seconds=int(timeout(30))):
        deploy_events.append((e["type"], e["raw_object"]))
        if e["type"] == "DELETED":
            break
    kind, going = deploy_events[0]
    assert kind == "MODIFIED" and going["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in going["metadata"]["finalizers"]
    gone_at = int(deploy_events[-1][1]["metadata"]["resourceVersion"])
    pod_gone = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in watch.Watch().stream(
        core.list_namespaced_pod, ns, resource_version=start, timeout_seconds=1)
        if e["type"] == "DELETED"]
    assert len(pod_gone) == 2 and max(pod_gone) < gone_at  # the pods went first
    assert apps.list_namespaced_deployment(ns).items == []
    assert apps.list_namespaced_replica_set(ns).items == []
    assert core.list_namespaced_pod(ns).items == []
    assert core.list_namespaced_secret(ns).items == []


def test_a_secrets_string_data_is_stored_as_data(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(ns, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    secret = core.read_namespaced_secret("s", ns)
    assert (secret.data, secret.string_data, secret.type) == ({"k": "dg=="}, None, "Opaque")


def test_a_deployment_runs_a_real_process_that_becomes_ready(api: client.ApiClient, ns: str
                                                             ) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, deployment("web", HTTP, env=[POD_IP],
                                                     probe=HTTP_PROBE))
    dep = wait_for(apps.list_namespaced_deployment, lambda d: d.status.ready_replicas == 1, ns)
    assert dep.status.available_replicas == 1 and dep.status.observed_generation == 1
    assert {c.type: c.status for c in dep.status.conditions} == {"Available": "True",
                                                                "Progressing": "True"}
    (pod,) = pods_of(api, ns, "web")
    assert pod.status.pod_ip.startswith("127.") and pod.status.pod_ip != "127.0.0.1"
    assert pod.status.container_statuses[0].state.running is not None
    log = core.read_namespaced_pod_log(pod.metadata.name, ns, tail_lines=1)
    assert "GET / HTTP/1.1" in log and log.count("\n") == 1  # the probe's request
    first = Forward(core, pod.metadata.name, ns, "8000,8001")
    second = Forward(core, pod.metadata.name, ns, "8000")
    pf = first.pf
    try:
        pages = []
        for forward in (first.pf, second.pf):
            sock = forward.socket(8000)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            pages.append(read_all(sock))
            sock.close()
        assert all(p.startswith(b"HTTP/1.0 200 OK") for p in pages)
        # Nothing listens on 8001: the error channel says so and the socket closes.
        assert pf.socket(8001).recv(1) == b""
        assert "connection refused" in (pf.error(8001) or "")
    finally:
        first.close()
        second.close()


def test_pod_runtime_in_a_deployment_answers_through_port_forward(api: client.ApiClient,
                                                                  ns: str) -> None:
    from kernel_bridge import Endpoint, PodConnection

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    token = secrets.token_urlsafe(32)
    core.create_namespaced_secret(ns, {"metadata": {"name": "rt-token"},
                                       "stringData": {"token": token}})
    env = [{"name": "KT_POD_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "KT_POD_TOKEN", "valueFrom": {"secretKeyRef": {"name": "rt-token",
                                                                   "key": "token"}}}]
    port = unused_port()  # a cluster would use 32300; this machine may be running one there
    apps.create_namespaced_deployment(ns, deployment(
        "rt", [PY, "-m", "pod_runtime", "--host", "$(KT_POD_HOST)", "--port", str(port)],
        env=env, probe={"httpGet": {"path": "/ready", "port": port}}))
    pod = wait_for(core.list_namespaced_pod, ready, ns, label_selector="app=rt")
    forwards = []

    def dial(seconds: float) -> socket.socket:
        forward = Forward(core, pod.metadata.name, ns, str(port))
        forwards.append(forward)
        return forward.pf.socket(port)  # type: ignore[no-any-return]

    conn = PodConnection(Endpoint(f"ws://rt.invalid:{port}", token, dial=dial), name="rt",
                         use_shm=False)
    try:
        body, buffers = fn_call(len, "abcd")
        assert conn.call(body, buffers, sink=lambda e: None).result(timeout(30)) == 4
    finally:
        conn.close()
        for forward in forwards:
            forward.close()


