"""pod_status / stage / start_error on pod objects shaped as a real API server returns them.

The shapes follow what `kubectl get pod -o json` shows for each case (Kubernetes 1.30):
a GPU pod the scheduler cannot place, a missing image, a crash loop, an OOM kill, an
eviction, a pod being deleted. The readiness watch and the backend turn these statuses
into errors and PodDiedError reasons; here only the pure mapping is tested.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest

from kubetorch_jupyter import config
from kubetorch_jupyter.backends import get_backend
from kubetorch_jupyter.backends.kubernetes import podstatus as pods
from kubetorch_jupyter.backends.kubernetes import readiness
from kubetorch_jupyter.exceptions import ConfigError

T0 = "2026-01-05T10:00:00Z"


def pod(phase: str = "Pending", *, conditions: list[dict[str, Any]] | None = None,
        statuses: list[dict[str, Any]] | None = None, init: list[dict[str, Any]] | None = None,
        gpus: int = 0, memory: str = "4Gi", image: str = "python:3.11-slim",
        pull_secrets: tuple[str, ...] = (), **status: Any) -> dict[str, Any]:
    limits = {"memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    spec: dict[str, Any] = {
        "containers": [{"name": "kt", "image": image,
                        "resources": {"limits": limits, "requests": {"cpu": "2",
                                                                     "memory": memory}}}],
        "restartPolicy": "Always",
    }
    if pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
    body: dict[str, Any] = {"phase": phase, "conditions": conditions or [], **status}
    if statuses is not None:
        body["containerStatuses"] = statuses
    if init is not None:
        body["initContainerStatuses"] = init
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "alice-dev-7d9f8-x2x4q", "namespace": "team",
                         "uid": "6f0c1f4e-0d7e-4d61-9a53-1c0b2f1f9e10",
                         "creationTimestamp": T0,
                         "labels": {"kubetorch.dev/compute": "dev"}},
            "spec": spec, "status": body}


def cond(kind: str, status: str, reason: str | None = None, message: str | None = None
         ) -> dict[str, Any]:
    out = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": T0}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


SCHEDULED = [cond("PodScheduled", "True")]
RUNNING_CONDS = [cond("PodReadyToStartContainers", "True"), cond("Initialized", "True"),
                 cond("Ready", "False", "ContainersNotReady",
                      "containers with unready status: [kt]"),
                 cond("ContainersReady", "False", "ContainersNotReady",
                      "containers with unready status: [kt]"),
                 cond("PodScheduled", "True")]


def cstatus(state: dict[str, Any], *, ready: bool = False, restarts: int = 0,
            last: dict[str, Any] | None = None, image: str = "python:3.11-slim"
            ) -> dict[str, Any]:
    return {"name": "kt", "image": image, "imageID": "", "ready": ready,
            "restartCount": restarts, "started": "running" in state, "state": state,
            "lastState": last or {}}


def test_unschedulable_gpu_pod_is_pending_with_the_schedulers_message() -> None:
    message = ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 "
               "nodes are available: 3 No preemption victims found for incoming pod.")
    p = pod(conditions=[cond("PodScheduled", "False", "Unschedulable", message)], gpus=4)
    status = pods.pod_status(p)
    assert (status.phase, status.reason, status.message) == ("pending", "Unschedulable",
                                                             message)
    assert status.alive
    assert pods.stage(p) == "scheduling"
    assert pods.asked(p) == "4 nvidia.com/gpu, cpu 2, memory 4Gi"
    error = readiness.start_error(None, readiness.Target("dev", "team", "sel"), p, status)  # type: ignore[arg-type]
    text = str(error)
    assert error.reason == "Unschedulable"
    assert "not enough GPUs" in text and "4 nvidia.com/gpu" in text and message in text
    assert "\n" not in text


def test_creating_containers_is_pending_pulling_the_image() -> None:
    p = pod(conditions=SCHEDULED, statuses=[cstatus({"waiting": {"reason":
                                                                 "ContainerCreating"}})])
    status = pods.pod_status(p)
    assert (status.phase, status.reason) == ("pending", None)
    assert pods.stage(p) == "pulling image"


def test_a_transient_pull_error_waits_a_definitive_one_fails() -> None:
    transient = pod(conditions=SCHEDULED, statuses=[cstatus({"waiting": {
        "reason": "ErrImagePull", "message": "rpc error: code = Unknown desc = context "
        "deadline exceeded"}})])
    assert pods.pod_status(transient).phase == "pending"
    missing = pod(conditions=SCHEDULED, image="ghcr.io/acme/nope:1", statuses=[cstatus(
        {"waiting": {"reason": "ErrImagePull", "message": 'failed to pull and unpack image '
                     '"ghcr.io/acme/nope:1": ghcr.io/acme/nope:1: not found'}},
        image="ghcr.io/acme/nope:1")])
    status = pods.pod_status(missing)
    assert (status.phase, status.reason) == ("failed", "ErrImagePull")
    assert "ghcr.io/acme/nope:1" in status.message


def test_image_pull_backoff_names_the_image_and_the_pull_secrets() -> None:
    p = pod(conditions=SCHEDULED, image="registry.acme.io/team/train:v2",
            pull_secrets=("acme-registry",), statuses=[cstatus(
                {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling '
                             'image "registry.acme.io/team/train:v2"'}},
                image="registry.acme.io/team/train:v2")])
    status = pods.pod_status(p)
    assert (status.phase, status.reason) == ("failed", "ImagePullBackOff")
    error = readiness.start_error(None, readiness.Target("dev", "team", "sel"), p, status)  # type: ignore[arg-type]
    text = str(error)
    assert "registry.acme.io/team/train:v2" in text and "acme-registry" in text
    assert error.reason == "ImagePullBackOff" and "\n" not in text


@pytest.mark.parametrize("reason", ["InvalidImageName", "ErrImageNeverPull"])
def test_other_image_failures_fail(reason: str) -> None:
    p = pod(conditions=SCHEDULED, statuses=[cstatus({"waiting": {"reason": reason,
                                                                 "message": "bad"}})])
    assert pods.pod_status(p).reason == reason
    assert pods.pod_status(p).phase == "failed"


def test_a_missing_secret_is_a_config_failure() -> None:
    p = pod(conditions=SCHEDULED, statuses=[cstatus({"waiting": {
        "reason": "CreateContainerConfigError",
        "message": 'secret "alice-dev-token" not found'}})])
    status = pods.pod_status(p)
    assert (status.phase, status.reason) == ("failed", "CreateContainerConfigError")
    assert 'secret "alice-dev-token" not found' in status.message


def test_crash_loop_reports_the_last_exit() -> None:
    last = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": T0,
                           "finishedAt": T0, "containerID": "containerd://abc"}}
    p = pod("Running", conditions=RUNNING_CONDS, statuses=[cstatus(
        {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting "
                     "failed container=kt pod=alice-dev-7d9f8-x2x4q"}},
        restarts=3, last=last)])
    status = pods.pod_status(p)
    assert (status.phase, status.reason, status.exit_status) == ("failed",
                                                                 "CrashLoopBackOff", 1)
    assert "3 restarts" in status.message and "last exit status 1" in status.message


def test_crash_loop_after_an_oom_kill_is_oomkilled_with_the_limit() -> None:
    last = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": T0,
                           "finishedAt": T0}}
    p = pod("Running", conditions=RUNNING_CONDS, memory="512Mi", statuses=[cstatus(
        {"waiting": {"reason": "CrashLoopBackOff"}}, restarts=2, last=last)])
    status = pods.pod_status(p)
    assert (status.phase, status.reason, status.exit_status) == ("failed", "OOMKilled", -9)
    assert "512Mi" in status.message


def test_a_terminated_oom_killed_container_is_oomkilled() -> None:
    p = pod("Running", conditions=RUNNING_CONDS, memory="1Gi", statuses=[cstatus(
        {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": T0,
                        "finishedAt": T0}})])
    status = pods.pod_status(p)
    assert (status.phase, status.reason, status.exit_status) == ("failed", "OOMKilled", -9)
    assert "limit 1Gi" in status.message


def test_running_not_ready_is_starting_and_ready_is_running() -> None:
    starting = pod("Running", conditions=RUNNING_CONDS, podIP="10.1.2.3",
                   statuses=[cstatus({"running": {"startedAt": T0}})])
    assert pods.pod_status(starting).phase == "starting"
    assert pods.stage(starting) == "starting runtime"
    assert not pods.is_ready(starting)
    ready = copy.deepcopy(starting)
    for c in ready["status"]["conditions"]:
        if c["type"] in ("Ready", "ContainersReady"):
            c.update(status="True")
            c.pop("reason"), c.pop("message")
    ready["status"]["containerStatuses"][0]["ready"] = True
    assert pods.pod_status(ready).phase == "running"
    assert pods.is_ready(ready) and pods.stage(ready) == "ready"


def test_a_running_container_that_restarted_is_still_alive() -> None:
    p = pod("Running", conditions=RUNNING_CONDS, statuses=[cstatus(
        {"running": {"startedAt": T0}}, restarts=1,
        last={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})])
    assert pods.pod_status(p).alive
    assert pods.container_restarts(p) == 1


def test_eviction_is_failed_with_the_kubelets_reason() -> None:
    p = pod("Failed", conditions=SCHEDULED, reason="Evicted",
            message="The node was low on resource: memory. Threshold quantity: 100Mi, "
                    "available: 88Mi. Container kt was using 3Gi, request is 2Gi.",
            statuses=[cstatus({"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                              "message": "The container could not be located "
                                              "when the pod was terminated"}})])
    status = pods.pod_status(p)
    assert (status.phase, status.reason) == ("failed", "Evicted")
    evicted = pod("Failed", reason="Evicted", message="The node was low on resource: memory.")
    status = pods.pod_status(evicted)
    assert (status.phase, status.reason) == ("failed", "Evicted")
    assert "low on resource" in status.message


def test_a_pod_being_deleted_is_failed_deleted() -> None:
    p = pod("Running", conditions=RUNNING_CONDS,
            statuses=[cstatus({"running": {"startedAt": T0}}, ready=True)])
    p["metadata"]["deletionTimestamp"] = T0
    p["metadata"]["deletionGracePeriodSeconds"] = 30
    status = pods.pod_status(p)
    assert (status.phase, status.reason) == ("failed", "Deleted")
    assert not pods.is_ready(p)


def test_completed_and_lost_pods() -> None:
    done = pod("Succeeded", statuses=[cstatus({"terminated": {"exitCode": 0,
                                                              "reason": "Completed"}})])
    assert (pods.pod_status(done).phase, pods.pod_status(done).reason) == ("gone", "Completed")
    lost = pod("Unknown")
    assert (pods.pod_status(lost).phase, pods.pod_status(lost).reason) == ("failed", "NodeLost")


def test_an_init_container_crash_is_reported_as_init() -> None:
    p = pod(conditions=[*SCHEDULED, cond("Initialized", "False", "ContainersNotInitialized")],
            init=[{"name": "install", "image": "python:3.11-slim", "ready": False,
                   "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                   "lastState": {"terminated": {"exitCode": 2, "reason": "Error"}}}],
            statuses=[cstatus({"waiting": {"reason": "PodInitializing"}})])
    status = pods.pod_status(p)
    assert (status.phase, status.reason) == ("failed", "Init:CrashLoopBackOff")
    assert "init container 'install'" in status.message


def test_exit_status_of_a_signal() -> None:
    assert pods.exit_status({"exitCode": 137}) == -9
    assert pods.exit_status({"exitCode": 143}) == -15
    assert pods.exit_status({"exitCode": 3}) == 3
    assert pods.exit_status({"exitCode": 0, "signal": 9}) == -9
    assert pods.exit_status(None) is None


def test_a_typed_v1pod_works_as_the_json_does() -> None:
    from kubernetes.client import ApiClient

    p = pod(conditions=[cond("PodScheduled", "False", "Unschedulable", "0/1 nodes")])
    typed = ApiClient().deserialize(__import__("json").dumps(p), "V1Pod", "application/json")
    status = pods.pod_status(typed)
    assert (status.phase, status.reason, status.message) == ("pending", "Unschedulable",
                                                             "0/1 nodes")


# ---- settings and configuration errors -------------------------------------------------

def test_connect_settings_parse_and_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_K8S_HEADERS", "Authorization: Bearer abc; X-Team: ml")
    assert config.get("k8s_headers") == {"Authorization": "Bearer abc", "X-Team": "ml"}
    monkeypatch.setenv("KT_K8S_HEADERS", "no colon here")
    with pytest.raises(ConfigError, match="KT_K8S_HEADERS"):
        config.get("k8s_headers")
    monkeypatch.setenv("KT_K8S_CONNECT", "tunnel")
    with pytest.raises(ConfigError, match="port-forward"):
        config.get("k8s_connect")
    monkeypatch.setenv("KT_K8S_URL", "wss://kt.example.com/{namespace}/{svc}")
    with pytest.raises(ConfigError, match="placeholder"):
        config.get("k8s_url")
    monkeypatch.setenv("KT_NAMESPACE", "Team_A")
    with pytest.raises(ConfigError, match="KT_NAMESPACE"):
        config.get("namespace")


def _no_cluster_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KUBECONFIG", "KT_KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KT_KUBE_CONTEXT"):
        monkeypatch.delenv(var, raising=False)


def test_no_kubeconfig_is_a_one_line_config_error(tmp_path: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetorch_jupyter.backends.kubernetes.backend import KubernetesBackend

    _no_cluster_env(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="KT_KUBECONFIG") as info:
        KubernetesBackend.from_environment()
    assert "\n" not in str(info.value)
    monkeypatch.setenv("KT_KUBECONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        KubernetesBackend.from_environment()
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    monkeypatch.setenv("KT_KUBECONFIG", str(bad))
    with pytest.raises(ConfigError, match="cannot be used") as info:
        KubernetesBackend.from_environment()
    assert "\n" not in str(info.value)


def test_the_registry_says_what_to_set(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cluster_env(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="no cluster"):
        get_backend("kubernetes")


def test_without_the_kubernetes_package_it_says_what_to_install(tmp_path: Any) -> None:
    code = ("import sys; sys.modules['kubernetes'] = None\n"
            "from kubetorch_jupyter.backends import get_backend\n"
            "from kubetorch_jupyter.exceptions import ConfigError\n"
            "try:\n    get_backend('kubernetes')\n"
            "except ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert "pip install" in out and "kubernetes" in out


def test_kt_list_with_a_cluster_out_of_reach_still_lists(tmp_path: Any) -> None:
    """A kubeconfig whose API server is down must not break the local listing."""
    import os
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters: [{{name: gone, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: u}}]\n")
    env = {**os.environ, "KT_KUBECONFIG": str(kubeconfig), "KT_BACKEND": "local",
           "KT_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "kubetorch_jupyter.cli", "list"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot reach the Kubernetes API server" in done.stderr


def test_the_start_scripts_own_error_line_leads() -> None:
    log = ("kt-bootstrap: python /usr/bin/python3 (3.11)\n"
           "kt-bootstrap: image step 1/1 run_bash 'exit 3'\n"
           "kt-bootstrap: error: image step 1/1 run_bash 'exit 3' failed (exit status 3)\n")
    said = readiness.bootstrap_error(log)
    assert said == "image step 1/1 run_bash 'exit 3' failed (exit status 3)"
    ray = "kubetorch-jupyter: distributed='ray' needs an image with Ray installed\n"
    assert readiness.bootstrap_error(ray) == "distributed='ray' needs an image with Ray installed"
    assert readiness.bootstrap_error("Traceback (most recent call last):\n") is None
