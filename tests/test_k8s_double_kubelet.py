"""The Kubernetes double's kubelet and scripted faults, through the official client.

What a real kubelet shows: env and volumes as a container sees them, CrashLoopBackOff,
ImagePullBackOff, Unschedulable with the scheduler's message, OOMKilled, eviction,
graceful deletion, held launches, StatefulSet ordinals and claims, Jobs and CronJobs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from k8s_double import K8sDouble
from k8s_testing import (
    HTTP,
    HTTP_PROBE,
    POD_IP,
    PY,
    deployment,
    first_line,
    namespace,
    pods_of,
    ready,
    status_of,
    wait_for,
    wait_gone,
)
from kubernetes import client
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
    # Both replicas bind 0.0.0.0:8000, as containers do: each gets its own pod IP.
    apps.create_namespaced_deployment(ns, deployment(
        "sc", [PY, "-m", "http.server", "8000", "--bind", "0.0.0.0"], probe=HTTP_PROBE))
    scale = apps.patch_namespaced_deployment_scale("sc", ns, {"spec": {"replicas": 2}})
    assert scale.spec.replicas == 2
    wait_for(apps.list_namespaced_deployment, lambda d: d.status.ready_replicas == 2, ns)
    assert len({p.status.pod_ip for p in pods_of(api, ns, "sc")}) == 2
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
