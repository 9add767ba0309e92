"""The Kubernetes double, driven only through the official ``kubernetes`` client.

What a real API server (and kubelet) would answer: status codes and Status bodies,
selectors, watches, server-side apply, garbage collection, pods that are real
processes with logs and port-forwards, and each scripted fault's status.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from k8s_double import K8sDouble
from kt_testing import fn_call, timeout
from kubernetes import client, dynamic, watch
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

PY = sys.executable
NS_LABEL = "k8s-double-test"


@pytest.fixture(scope="module")
def cluster(k8s_cluster_module: K8sDouble) -> K8sDouble:
    return k8s_cluster_module


@pytest.fixture(scope="module")
def api(cluster: K8sDouble) -> client.ApiClient:
    return cluster.api_client()


@pytest.fixture()
def ns(api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test (the double is shared by the module)."""
    name = f"t-{secrets.token_hex(4)}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {NS_LABEL: "1"}}})
    yield name
    core.delete_namespace(name)


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def wait_for(list_fn: Callable[..., Any], predicate: Callable[[Any], bool], *args: Any,
             seconds: float = 30, since: str | None = None, **kwargs: Any) -> Any:
    """List, then watch from the list's resourceVersion, until an item satisfies ``predicate``.

    With ``since``, only watch, from that resourceVersion (every change after it is seen).
    """
    if since is None:
        listed = list_fn(*args, **kwargs)
        for item in listed.items:
            if predicate(item):
                return item
        since = listed.metadata.resource_version
    w = watch.Watch()
    last = None
    for event in w.stream(list_fn, *args, resource_version=since,
                          timeout_seconds=int(timeout(seconds)), **kwargs):
        last = event["object"]
        if event["type"] != "DELETED" and predicate(last):
            w.stop()
            return last
    raise AssertionError(f"timed out; last seen: {last}")


def wait_gone(list_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """List, then watch, until nothing is listed."""
    listed = list_fn(*args, **kwargs)
    left = {o.metadata.name for o in listed.items}
    if left:
        for event in watch.Watch().stream(list_fn, *args,
                                          resource_version=listed.metadata.resource_version,
                                          timeout_seconds=int(timeout(30)), **kwargs):
            if event["type"] == "DELETED":
                left.discard(event["object"].metadata.name)
                if not left:
                    break
    assert list_fn(*args, **kwargs).items == []


def first_line(core: client.CoreV1Api, pod: str, ns: str) -> bytes:
    """The first line the pod's container prints (following its log until then)."""
    stream = core.read_namespaced_pod_log(pod, ns, follow=True, _preload_content=False)
    text = b""
    for chunk in stream.stream(1):
        text += chunk
        if text.endswith(b"\n"):
            break
    stream.close()  # the rest is never read: the connection is not reused
    stream.release_conn()
    return text


def deployment(name: str, command: list[str], *, replicas: int = 1, env: list[Any] | None = None,
               probe: dict[str, Any] | None = None, image: str = "python:3.11",
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "command": command,
                                 "env": env or []}
    if probe:
        container["readinessProbe"] = probe
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [container], **(extra or {})}}}}


POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
HTTP = [PY, "-u", "-m", "http.server", "8000", "--bind", "$(POD_IP)"]
HTTP_PROBE = {"httpGet": {"path": "/", "port": 8000}}


def pods_of(api: client.ApiClient, ns: str, app: str) -> list[client.V1Pod]:
    return list(client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={app}").items)


def ready(p: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


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
            pages.append(_read_all(sock))
            sock.close()
        assert all(p.startswith(b"HTTP/1.0 200 OK") for p in pages)
        # Nothing listens on 8001: the error channel says so and the socket closes.
        assert pf.socket(8001).recv(1) == b""
        assert "connection refused" in (pf.error(8001) or "")
    finally:
        first.close()
        second.close()


class Forward:
    """``kubernetes.stream.portforward`` plus the clean-up the client leaves out.

    When the server ends a port-forward (the pod closed its side), the client's proxy
    thread returns without closing its websocket's socket (kubernetes 37, ws_client.py);
    ``close`` waits for that thread and then shuts the socket.
    """

    def __init__(self, core: client.CoreV1Api, pod: str, ns: str, ports: str) -> None:
        import threading

        before = set(threading.enumerate())
        self.pf = portforward(core.connect_get_namespaced_pod_portforward, pod, ns, ports=ports)
        self.threads = [t for t in threading.enumerate() if t not in before
                        and t.name.startswith("Kubernetes port forward proxy")]

    def close(self) -> None:
        self.pf.close()
        for t in self.threads:
            t.join(timeout(30))
        self.pf.websocket.shutdown()


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _read_all(sock: Any) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


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
    port = _unused_port()  # a cluster would use 32300; this machine may be running one there
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


# --- kubelet behaviour and scripted faults ----------------------------------------------
def test_env_volumes_and_var_expansion_as_a_container_sees_them(api: client.ApiClient, ns: str
                                                                ) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"},
                                           "data": {"greeting": "hello", "file.txt": "in a file"}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "sec"}, "stringData": {"pw": "pw1"}})
    script = ("import os; print(os.environ['GREETING'], os.environ['PW'], os.environ['ME'], "
              "os.environ['APP'], os.environ['cfg_greeting'], os.environ['BOTH']); "
              "print(open('/etc/cfg/file.txt').read())")
    container = {"name": "main", "image": "python:3.11", "command": [PY, "-c", script],
                 "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "cfg_"}],
                 "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {
                     "name": "cfg", "key": "greeting"}}},
                         {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec",
                                                                       "key": "pw"}}},
                         {"name": "ME", "valueFrom": {"fieldRef": {
                             "fieldPath": "metadata.name"}}},
                         {"name": "APP", "valueFrom": {"fieldRef": {
                             "fieldPath": "metadata.labels['app']"}}},
                         {"name": "BOTH", "value": "$(GREETING)-$(PW)-$$(PW)"}],
                 "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}
    batch.create_namespaced_job(ns, {"metadata": {"name": "env"}, "spec": {"template": {
        "metadata": {"labels": {"app": "env"}},
        "spec": {"restartPolicy": "Never", "containers": [container],
                 "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}}}})
    job = wait_for(batch.list_namespaced_job, lambda j: j.status.succeeded == 1, ns)
    assert [c.type for c in job.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    (pod,) = pods_of(api, ns, "env")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    log = core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert log == f"hello pw1 {pod.metadata.name} env hello hello-pw1-$(PW)\nin a file\n"


def test_a_missing_secret_is_create_container_config_error(api: client.ApiClient, ns: str
                                                           ) -> None:
    apps = client.AppsV1Api(api)
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "t"}}}]
    apps.create_namespaced_deployment(ns, deployment("cfgerr", [PY, "-c", "pass"], env=env))
    pod = wait_for(client.CoreV1Api(api).list_namespaced_pod,
                   lambda p: p.status.container_statuses and p.status.container_statuses[
                       0].state.waiting and p.status.container_statuses[0].state.waiting.reason
                   == "CreateContainerConfigError", ns)
    assert pod.status.container_statuses[0].state.waiting.message == 'secret "absent" not found'


def test_a_crashing_container_is_crash_loop_back_off_with_its_previous_log(
        api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    client.AppsV1Api(api).create_namespaced_deployment(ns, deployment(
        "crash", [PY, "-c", "import sys; print('boom'); sys.exit(3)"]))

    def looping(p: client.V1Pod) -> bool:
        s = (p.status.container_statuses or [None])[0]
        return bool(s and s.restart_count >= 1 and s.state.waiting
                    and s.state.waiting.reason == "CrashLoopBackOff")

    pod = wait_for(core.list_namespaced_pod, looping, ns)
    s = pod.status.container_statuses[0]
    assert (s.last_state.terminated.exit_code, s.last_state.terminated.reason) == (3, "Error")
    assert "restarting failed container=main" in s.state.waiting.message
    assert pod.status.phase == "Running" and not ready(pod)
    assert core.read_namespaced_pod_log(pod.metadata.name, ns, previous=True) == "boom\n"


def test_a_missing_image_is_err_image_pull_then_image_pull_back_off(
        cluster: K8sDouble, api: client.ApiClient, ns: str) -> None:
    cluster.missing_image("no/such-image:1")
    since = client.CoreV1Api(api).list_namespaced_pod(ns).metadata.resource_version
    client.AppsV1Api(api).create_namespaced_deployment(ns, deployment(
        "img", [PY, "-c", "pass"], image="no/such-image:1"))
    reasons = set()

    def backoff(p: client.V1Pod) -> bool:
        s = (p.status.container_statuses or [None])[0]
        if s and s.state.waiting:
            reasons.add(s.state.waiting.reason)
        return bool(s and s.state.waiting and s.state.waiting.reason == "ImagePullBackOff")

    pod = wait_for(client.CoreV1Api(api).list_namespaced_pod, backoff, ns, since=since)
    assert "ErrImagePull" in reasons
    assert pod.status.container_statuses[0].state.waiting.message == (
        'Back-off pulling image "no/such-image:1"')
    events = client.CoreV1Api(api).list_namespaced_event(
        ns, field_selector=f"involvedObject.name={pod.metadata.name}").items
    assert any("not found" in (e.message or "") and e.reason == "Failed" for e in events)


def test_gpus_the_node_lacks_are_unschedulable_with_the_schedulers_message(
        cluster: K8sDouble, api: client.ApiClient, ns: str) -> None:
    extra = {"containers": [{"name": "main", "image": "python:3.11", "command": [PY],
                             "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    client.AppsV1Api(api).create_namespaced_deployment(ns, deployment("gpu", [PY],
                                                                      extra=extra))
    core = client.CoreV1Api(api)

    def unschedulable(p: client.V1Pod) -> bool:
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable"
                   for c in p.status.conditions or [])

    pod = wait_for(core.list_namespaced_pod, unschedulable, ns)
    assert pod.status.phase == "Pending"
    assert pod.status.conditions[0].message == (
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are "
        "available: 1 No preemption victims found for incoming pod.")
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name="
                                        + pod.metadata.name).items
    assert [e.reason for e in events] == ["FailedScheduling"]
    rule = cluster.unschedulable("0/3 nodes are available: 3 Insufficient memory.",
                                 selector="app=held")
    try:
        client.AppsV1Api(api).create_namespaced_deployment(ns, deployment("held", [PY]))
        held = wait_for(core.list_namespaced_pod, unschedulable, ns, label_selector="app=held")
        assert held.status.conditions[0].message == (
            "0/3 nodes are available: 3 Insufficient memory.")
    finally:
        cluster.clear(rule)


def test_oom_kill_eviction_and_deletion_look_as_in_a_cluster(cluster: K8sDouble,
                                                            api: client.ApiClient, ns: str
                                                            ) -> None:
    core = client.CoreV1Api(api)
    client.AppsV1Api(api).create_namespaced_deployment(ns, deployment(
        "victim", [PY, "-c", "import time; print('up', flush=True); time.sleep(1e6)"]))
    first = wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running", ns)
    cluster.oom_kill(first.metadata.name, ns)
    oomed = wait_for(core.list_namespaced_pod, lambda p: (
        p.status.container_statuses[0].last_state.terminated is not None), ns,
                     field_selector=f"metadata.name={first.metadata.name}")
    last = oomed.status.container_statuses[0].last_state.terminated
    assert (last.exit_code, last.reason) == (137, "OOMKilled")
    assert oomed.status.container_statuses[0].restart_count == 1
    cluster.evict(first.metadata.name, ns)
    evicted = wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Failed", ns)
    assert evicted.status.reason == "Evicted"
    assert evicted.status.message.startswith("The node was low on resource: memory.")
    # The ReplicaSet replaces it; the evicted pod stays listed, as in a cluster.
    second = wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running", ns)
    assert second.metadata.name != first.metadata.name
    assert not [p for p in cluster.processes if p.pod == first.metadata.name]
    cluster.delete_pod(second.metadata.name, ns)
    third = wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running"
                     and p.metadata.name not in (first.metadata.name, second.metadata.name), ns)
    assert third.metadata.owner_references[0].kind == "ReplicaSet"


def test_deletion_is_graceful_sigterm_then_sigkill(api: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(api)
    script = ("import signal, time; signal.signal(signal.SIGTERM, lambda *a: print('TERM', "
              "flush=True)); print('up', flush=True); time.sleep(1e6)")
    core.create_namespaced_pod(ns, {"metadata": {"name": "stubborn"}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "python:3.11", "command": [PY, "-c", script]}]}})
    wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running", ns)
    stream = core.read_namespaced_pod_log("stubborn", ns, follow=True, _preload_content=False)
    chunks = stream.stream(1)
    text = b""
    while text != b"up\n":  # its SIGTERM handler is in place
        text += next(chunks)
    deleted = core.delete_namespaced_pod("stubborn", ns)
    assert deleted.metadata.deletion_timestamp is not None  # 202: going, not gone
    text += b"".join(chunks)
    stream.release_conn()
    assert text == b"up\nTERM\n"  # it ignored SIGTERM, and SIGKILL ended it (and the log)
    wait_gone(core.list_namespaced_pod, ns)


def test_a_held_launch_stays_container_creating_until_released(cluster: K8sDouble,
                                                               api: client.ApiClient, ns: str
                                                               ) -> None:
    core = client.CoreV1Api(api)
    rule = cluster.hold("ContainerCreating", selector="app=slow")
    client.AppsV1Api(api).create_namespaced_deployment(ns, deployment(
        "slow", [PY, "-c", "import time; time.sleep(1e6)"]))
    pod = wait_for(core.list_namespaced_pod, lambda p: bool(p.status.container_statuses), ns)
    assert pod.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    with pytest.raises(ApiException) as waiting:
        core.read_namespaced_pod_log(pod.metadata.name, ns)
    assert status_of(waiting.value)["message"] == (
        f'container "main" in pod "{pod.metadata.name}" is waiting to start: ContainerCreating')
    cluster.clear(rule)
    wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running", ns)


def test_statefulset_pods_are_ordinals_and_keep_their_claim(cluster: K8sDouble,
                                                            api: client.ApiClient, ns: str
                                                            ) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    script = ("import pathlib, time; p = pathlib.Path('/data/count'); "
              "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
              "print('count', n, flush=True); time.sleep(1e6)")
    apps.create_namespaced_stateful_set(ns, {"metadata": {"name": "db"}, "spec": {
        "replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{
            "name": "main", "image": "python:3.11", "command": [PY, "-c", script],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
    sts = wait_for(apps.list_namespaced_stateful_set, lambda s: s.status.ready_replicas == 2, ns)
    assert sts.status.replicas == 2
    pods = {p.metadata.name: p for p in pods_of(api, ns, "db")}
    assert sorted(pods) == ["db-0", "db-1"]
    assert pods["db-1"].metadata.labels["apps.kubernetes.io/pod-index"] == "1"
    assert pods["db-1"].spec.hostname == "db-1" and pods["db-1"].spec.subdomain == "db"
    assert sorted(c.metadata.name for c in core.list_namespaced_persistent_volume_claim(
        ns).items) == ["data-db-0", "data-db-1"]
    old_uid = pods["db-0"].metadata.uid
    assert first_line(core, "db-0", ns) == b"count 1\n"  # written to its claim
    cluster.delete_pod("db-0", ns)
    again = wait_for(core.list_namespaced_pod, lambda p: p.metadata.uid != old_uid and ready(p),
                     ns, field_selector="metadata.name=db-0")
    assert first_line(core, again.metadata.name, ns) == b"count 2\n"


def test_scale_subresource_and_an_indexed_job(api: client.ApiClient, ns: str) -> None:
    apps, batch = client.AppsV1Api(api), client.BatchV1Api(api)
    apps.create_namespaced_deployment(ns, deployment("sc", [PY, "-c",
                                                            "import time; time.sleep(1e6)"]))
    scale = apps.patch_namespaced_deployment_scale("sc", ns, {"spec": {"replicas": 2}})
    assert scale.spec.replicas == 2
    wait_for(apps.list_namespaced_deployment, lambda d: d.status.ready_replicas == 2, ns)
    batch.create_namespaced_job(ns, {"metadata": {"name": "idx"}, "spec": {
        "completions": 2, "parallelism": 2, "completionMode": "Indexed", "template": {
            "metadata": {"labels": {"app": "idx"}},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "python:3.11", "command": [
                    PY, "-c", "import os; print(os.environ['JOB_COMPLETION_INDEX'])"]}]}}}})
    wait_for(batch.list_namespaced_job, lambda j: j.status.succeeded == 2, ns)
    core = client.CoreV1Api(api)
    logs = sorted(core.read_namespaced_pod_log(p.metadata.name, ns)
                  for p in pods_of(api, ns, "idx"))
    assert logs == ["0\n", "1\n"]


def test_a_cronjob_run_with_an_init_container_sharing_an_empty_dir(cluster: K8sDouble,
                                                                   api: client.ApiClient,
                                                                   ns: str) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    shared = [{"name": "work", "mountPath": "/work"}]
    batch.create_namespaced_cron_job(ns, {"metadata": {"name": "nightly"}, "spec": {
        "schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {"app": "nightly"}},
            "spec": {"restartPolicy": "OnFailure", "volumes": [{"name": "work", "emptyDir": {}}],
                     "initContainers": [{"name": "prepare", "image": "python:3.11",
                                         "command": [PY, "-c", "open('/work/in', 'w')"
                                                     ".write('prepared')"],
                                         "volumeMounts": shared}],
                     "containers": [{"name": "main", "image": "python:3.11",
                                     "command": [PY, "-c", "print(open('/work/in').read())"],
                                     "volumeMounts": shared}]}}}}}})
    job = cluster.trigger_cronjob("nightly", ns)
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    wait_for(batch.list_namespaced_job, lambda j: j.status.succeeded == 1, ns)
    (pod,) = pods_of(api, ns, "nightly")
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 0
    assert core.read_namespaced_pod_log(pod.metadata.name, ns, container="main") == "prepared\n"
    # One main container: it is the default, init containers or not (as the real server).
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == "prepared\n"
    assert core.read_namespaced_pod_log(pod.metadata.name, ns, container="prepare") == ""
    cron = batch.read_namespaced_cron_job("nightly", ns)
    assert cron.status.last_schedule_time is not None


def test_held_pending_and_not_ready_stages(cluster: K8sDouble, api: client.ApiClient, ns: str
                                          ) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    pending = cluster.hold("Pending", name_prefix="queued-")
    not_ready = cluster.hold("NotReady", selector="app=warm")
    try:
        apps.create_namespaced_deployment(ns, deployment("queued", [PY, "-c", "pass"]))
        apps.create_namespaced_deployment(ns, deployment("warm", HTTP, env=[POD_IP],
                                                         probe=HTTP_PROBE))
        warm = wait_for(core.list_namespaced_pod, lambda p: p.status.phase == "Running", ns,
                        label_selector="app=warm")
        assert not ready(warm)
        (queued,) = pods_of(api, ns, "queued")
        assert queued.status.phase == "Pending" and queued.spec.node_name is None
    finally:
        cluster.clear(pending)
        cluster.clear(not_ready)
    wait_for(core.list_namespaced_pod, ready, ns, label_selector="app=warm")
    wait_for(core.list_namespaced_pod, lambda p: p.spec.node_name is not None, ns,
             label_selector="app=queued")
