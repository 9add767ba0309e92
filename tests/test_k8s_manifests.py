"""Every manifest the Kubernetes renderer makes, validated as an API server would, and
what the manifests mean: tolerations, identity labels, spec hashes, ranks, resources.

Built-in kinds are checked with kubernetes-validate (strict: unknown fields are errors)
against the oldest and newest Kubernetes it bundles; Knative Services and RayClusters
against their CRDs' schemas (``tests/crd_validation.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import crd_validation
import kubernetes_validate
import pytest

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.kubernetes import identity, manifests
from kubetorch_jupyter.backends.kubernetes.container import RuntimeContainer
from kubetorch_jupyter.backends.kubernetes.options import DEFAULT_GPU_SHM, KubernetesOptions
from kubetorch_jupyter.backends.kubernetes.pods import GPU_TOLERATION, default_image
from kubetorch_jupyter.core.spec import ComputeSpec

VERSIONS = ("1.25", "1.37")  # the oldest and newest kubernetes-validate 1.37 bundles
USER = "alice"
NS = "ml"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _runtime() -> RuntimeContainer:
    """A runtime container as the bootstrap makes one: a ConfigMap with the runtime."""
    return RuntimeContainer(
        command=["python3", "-m", "pod_runtime", "--host", "0.0.0.0", "--port", "32300"],
        env=[{"name": "PYTHONPATH", "value": "/opt/kt/runtime"},
             {"name": "KT_RUNTIME_HASH", "value": "0123456789abcdef"}],
        volumes=[{"name": "kt-runtime", "configMap": {"name": "alice-dev-runtime"}},
                 {"name": "kt-cache", "emptyDir": {}}],
        volume_mounts=[{"name": "kt-runtime", "mountPath": "/opt/kt/runtime", "readOnly": True},
                       {"name": "kt-cache", "mountPath": "/opt/kt/cache"}],
        objects=[{"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "alice-dev-runtime"},
                  "data": {"pod_runtime.tar.b64": "H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ8HFAAAAAAAAAAA"}}],
    )


EVERYTHING: dict[str, Any] = dict(
    cpus="500m", memory="16Gi", memory_limit="24Gi", gpus=1,
    gpu_type="cloud.google.com/gke-accelerator=nvidia-l4",
    image=kt.Image(base="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime").pip_install("numpy"),
    env={"HF_HOME": "/mnt/data/hf"},
    volumes={"datasets": "/mnt/data", "ckpt.store": {"path": "/ckpt", "read_only": True}},
    tolerations=[{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
                 {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                  "effect": "NoExecute", "tolerationSeconds": 30}],
    node_selector={"pool": "l4"}, priority_class_name="research-high",
    service_account="trainer", labels={"team": "ml", "cost-center": "c42"},
    annotations={"example.com/owner": "alice@example.com"},
    secrets=["hf-token", {"WANDB_API_KEY": "wandb/api-key"}],
    image_pull_secrets=["regcred"], shm_size="2Gi", launch_timeout="20m",
    inactivity_ttl="1h", namespace="ml",
)

CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "plain": ({}, ["Deployment", "Service"]),
    "gpus": ({"gpus": 2, "cpus": 8, "memory": "64Gi", "gpu_type": "NVIDIA-H100-80GB-HBM3"},
             ["Deployment", "Service"]),
    "everything": (EVERYTHING, ["Deployment", "Service"]),
    "replicas": ({"replicas": 4, "gpus": 8, "memory": "200Gi"}, ["StatefulSet", "Service"]),
    "distributed-everything": ({**EVERYTHING, "replicas": 2}, ["StatefulSet", "Service"]),
    "pytorch-one": ({"distributed": "pytorch"}, ["StatefulSet", "Service"]),
    "ray": ({"distributed": "ray", "replicas": 3, "gpus": 1, "memory": "32Gi"},
            ["RayCluster", "Service"]),
    "ray-everything": ({**EVERYTHING, "distributed": "ray", "replicas": 2},
                       ["RayCluster", "Service"]),
    "ray-head-only": ({"distributed": "ray"}, ["RayCluster", "Service"]),
    "autoscale": ({"autoscale": True}, ["Service"]),
    "autoscale-everything": ({**EVERYTHING, "autoscale": {
        "min_scale": 1, "max_scale": 4, "concurrency": 8, "scale_to_zero_after": "10m"}},
        ["Service"]),
}


def _spec(**kwargs: Any) -> ComputeSpec:
    return kt.Compute(name="dev", backend="kubernetes", **kwargs).spec


def _render(spec: ComputeSpec, **kwargs: Any) -> list[dict[str, Any]]:
    return manifests.render(spec, runtime=_runtime(), username=USER, namespace=NS, **kwargs)


def _validate(obj: dict[str, Any]) -> None:
    for version in VERSIONS:
        if crd_validation.known(obj):
            crd_validation.validate(obj, version)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} invalid on {version}: "
                        f"{path}: {exc.message}")


def _workload(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return objs[1]


def _templates(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]
    if workload["kind"] == "RayCluster":
        return [spec["headGroupSpec"]["template"],
                *(g["template"] for g in spec.get("workerGroupSpecs", []))]
    if workload["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    return [spec["template"]]


def _main(template: dict[str, Any]) -> dict[str, Any]:
    return template["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


# ---- every manifest validates ---------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_validates_strictly_on_oldest_and_newest(case: str) -> None:
    kwargs, kinds = CASES[case]
    objs = _render(_spec(**kwargs))
    assert [o["kind"] for o in objs] == ["ConfigMap", *kinds]
    for obj in objs:
        _validate(obj)
    for template in _templates(_workload(objs)):  # pod templates inside custom resources too
        if _workload(objs)["kind"] == "RayCluster":
            _validate({"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": "t", "namespace": NS}, "template": template})


def test_knative_pod_spec_is_a_valid_pod_spec_besides_its_own_fields() -> None:
    """Knative's schema leaves volumes loose; the pod part must still be a real PodSpec."""
    service = _workload(_render(_spec(**CASES["autoscale-everything"][0])))
    template = json.loads(json.dumps(service["spec"]["template"]))
    template["spec"].pop("timeoutSeconds")
    main = _main(template)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):  # Knative's defaulting
        main[probe]["httpGet"]["port"] = main["ports"][0]["containerPort"]
    _validate({"apiVersion": "v1", "kind": "PodTemplate",
               "metadata": {"name": "t", "namespace": NS}, "template": template})


@pytest.mark.parametrize("kwargs", [{}, EVERYTHING])
def test_cronjob_and_token_secret_validate(kwargs: dict[str, Any]) -> None:
    spec = _spec(**kwargs)
    objs = manifests.render_cronjob(spec, runtime=_runtime(), username=USER, namespace=NS,
                                    schedule="0 3 * * 1-5", timezone="Europe/Paris",
                                    command=["python3", "-m", "kubetorch_jupyter.jobs", "nb"],
                                    token_secret="alice-dev-token",
                                    active_deadline_seconds=3600)
    assert [o["kind"] for o in objs] == ["ConfigMap", "CronJob"]
    for obj in [*objs, manifests.token_secret_manifest(spec, username=USER, namespace=NS,
                                                       token="s3cr3t")]:
        _validate(obj)
    body = objs[-1]["spec"]
    assert body["concurrencyPolicy"] == "Forbid"
    assert body["successfulJobsHistoryLimit"] == body["failedJobsHistoryLimit"] == 3
    assert body["startingDeadlineSeconds"] == 300 and body["timeZone"] == "Europe/Paris"
    pod = body["jobTemplate"]["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert _main(pod)["command"] == ["python3", "-m", "kubetorch_jupyter.jobs", "nb"]
    assert "readinessProbe" not in _main(pod) and "ports" not in _main(pod)


@pytest.mark.parametrize("schedule", ["every day", "0 3 * *", "", "0 3 * * * *", 5])
def test_cronjob_bad_schedule_is_one_line(schedule: object) -> None:
    with pytest.raises(kt.ConfigError, match="schedule") as err:
        manifests.render_cronjob(_spec(), runtime=_runtime(), username=USER, namespace=NS,
                                 schedule=schedule, command=["true"])  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "'0 3 * * *'" in str(err.value)


def test_cronjob_bad_timezone_and_command() -> None:
    kw: dict[str, Any] = dict(runtime=_runtime(), username=USER, namespace=NS,
                              schedule="@daily")
    with pytest.raises(kt.ConfigError, match="IANA"):
        manifests.render_cronjob(_spec(), command=["true"], timezone="Paris time", **kw)
    with pytest.raises(kt.ConfigError, match="command"):
        manifests.render_cronjob(_spec(), command="python x.py", **kw)  # type: ignore[arg-type]


# ---- the validators themselves catch what a server would -------------------------------


def test_validators_reject_what_the_server_rejects() -> None:
    deployment = _workload(_render(_spec()))
    _main(deployment["spec"]["template"])["gpu"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpu"):
        kubernetes_validate.validate(deployment, "1.37", strict=True)

    knative = _workload(_render(_spec(autoscale=True)))
    _main(knative["spec"]["template"])["lifecycle"] = {}  # Knative's schema has no lifecycle
    with pytest.raises(crd_validation.CRDValidationError, match="lifecycle"):
        crd_validation.validate(knative)

    ray = _workload(_render(_spec(distributed="ray", replicas=2)))
    del ray["spec"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(crd_validation.CRDValidationError, match="groupName"):
        crd_validation.validate(ray)

    ray = _workload(_render(_spec(distributed="ray", replicas=2)))
    ray["metadata"]["label"] = {"team": "ml"}  # ObjectMeta has no such field
    with pytest.raises(crd_validation.CRDValidationError, match="metadata"):
        crd_validation.validate(ray)

    ray = _workload(_render(_spec(distributed="ray", replicas=2)))
    ray["spec"]["managedBy"] = "ray.io/kuberay-operator"  # a CEL rule we cannot run
    with pytest.raises(crd_validation.CRDValidationError, match="CEL"):
        crd_validation.validate(ray)

    ray = _workload(_render(_spec(distributed="ray", replicas=2)))
    env = _main(ray["spec"]["headGroupSpec"]["template"])["env"]
    env.append(dict(env[0]))  # list-map keyed by name
    with pytest.raises(crd_validation.CRDValidationError, match="duplicate"):
        crd_validation.validate(ray)


def test_crd_validation_reads_defaults_and_preserved_fields_as_the_server() -> None:
    ray = _workload(_render(_spec(distributed="ray", replicas=2)))
    group = ray["spec"]["workerGroupSpecs"][0]
    del group["minReplicas"], group["maxReplicas"]  # required, but defaulted first
    crd_validation.validate(ray)
    knative = _workload(_render(_spec(autoscale=True)))
    knative["spec"]["template"]["metadata"]["generateName"] = "x-"  # preserved there
    crd_validation.validate(knative)
    group["replicas"] = "2"  # an int32, not int-or-string
    with pytest.raises(crd_validation.CRDValidationError, match="replicas"):
        crd_validation.validate(ray)


# ---- what the manifests mean -----------------------------------------------------------


def test_gpu_toleration_added_with_gpus_only_once() -> None:
    with_gpu = _templates(_workload(_render(_spec(gpus=1))))[0]["spec"]
    assert with_gpu["tolerations"] == [GPU_TOLERATION]
    assert "tolerations" not in _templates(_workload(_render(_spec())))[0]["spec"]
    own = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
           "effect": "NoSchedule"}
    given = _templates(_workload(_render(_spec(gpus=1, tolerations=[own]))))[0]["spec"]
    assert given["tolerations"] == [own]


def test_resources_requests_limits_and_gpu_selector() -> None:
    spec = _spec(cpus="500m", memory="16Gi", memory_limit="24Gi", gpus=2,
                 gpu_type="NVIDIA-A100-SXM4-80GB", node_selector={"pool": "a100"})
    pod = _templates(_workload(_render(spec)))[0]["spec"]
    assert _main({"spec": pod})["resources"] == {
        "requests": {"cpu": "500m", "memory": "16Gi"},
        "limits": {"memory": "24Gi", "nvidia.com/gpu": "2"}}
    assert pod["nodeSelector"] == {"pool": "a100",
                                   "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    plain = _main(_templates(_workload(_render(_spec(memory="4Gi"))))[0])
    assert plain["resources"] == {"requests": {"memory": "4Gi"}, "limits": {"memory": "4Gi"}}


def test_shared_memory_defaults() -> None:
    def shm(**kw: Any) -> str | None:
        pod = _templates(_workload(_render(_spec(**kw))))[0]["spec"]
        sizes = [v["emptyDir"]["sizeLimit"] for v in pod.get("volumes", [])
                 if v["name"] == "dshm"]
        mounts = [m for m in _main({"spec": pod}).get("volumeMounts", [])
                  if m["mountPath"] == "/dev/shm"]
        assert len(sizes) == len(mounts)
        return sizes[0] if sizes else None

    assert shm() is None
    assert shm(gpus=1) == f"{DEFAULT_GPU_SHM // 2**30}Gi"
    assert shm(gpus=1, memory="4Gi") == "2Gi"
    assert shm(gpus=1, shm_size=0) is None
    assert shm(shm_size="1Gi") == "1Gi"


def test_env_secrets_token_and_pod_name() -> None:
    spec = _spec(env={"FOO": "1", "KT_POD_TOKEN": "mine"},
                 secrets=["hf-token", {"WANDB_API_KEY": "wandb/api-key"}])
    main = _main(_templates(_workload(_render(spec)))[0])
    env = _env(main)
    assert len(env) == len(main["env"])  # one entry per name
    assert env["FOO"] == {"name": "FOO", "value": "1"}
    assert env["PYTHONPATH"]["value"] == "/opt/kt/runtime"  # the runtime's own
    assert env["WANDB_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert env["KT_POD_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "alice-dev-token", "key": "token"}}
    assert env["KT_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert main["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert main["command"] == _runtime().command
    assert main["image"] == default_image() == "python:{}.{}-slim".format(*sys.version_info)
    other = _main(_templates(_workload(_render(spec, token_secret="given")))[0])
    assert _env(other)["KT_POD_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "given"


def test_probes_ports_volumes_and_security() -> None:
    spec = _spec(volumes={"datasets": "/mnt/data", "ckpt.store": {"path": "/ckpt",
                                                                  "read_only": True}},
                 launch_timeout="20m")
    pod = _templates(_workload(_render(spec)))[0]
    main = _main(pod)
    assert main["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 32300}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 32300}
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 20 * 60
    assert main["ports"] == [{"name": "runtime", "containerPort": 32300, "protocol": "TCP"}]
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert "runAsNonRoot" not in json.dumps(pod)
    claims = {v["persistentVolumeClaim"]["claimName"]: v["name"]
              for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert set(claims) == {"datasets", "ckpt.store"}
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts[claims["datasets"]]["mountPath"] == "/mnt/data"
    assert mounts[claims["ckpt.store"]] == {"name": claims["ckpt.store"], "mountPath": "/ckpt",
                                            "readOnly": True}
    assert mounts["kt-runtime"]["mountPath"] == "/opt/kt/runtime"
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"],
            annotations["prometheus.io/path"]) == ("true", "32300", "/metrics")


@pytest.mark.parametrize("case", sorted(CASES))
def test_identity_labels_and_spec_hash_on_every_object(case: str) -> None:
    spec = _spec(**CASES[case][0])
    objs = _render(spec)
    for obj in objs:
        labels = obj["metadata"]["labels"]
        if labels[identity.COMPONENT_LABEL] == "runtime":  # shared by the user's computes
            assert identity.COMPUTE_LABEL not in labels
            labels = {**labels, identity.COMPUTE_LABEL: "dev"}
        assert identity.labels("dev", USER).items() <= labels.items(), obj["kind"]
        assert labels[identity.COMPONENT_LABEL] in ("runtime", "pod", "service")
        assert obj["metadata"]["namespace"] == NS
        for key, value in KubernetesOptions.from_spec(spec).labels.items():
            assert labels[key] == value
    assert objs[0]["metadata"]["labels"][identity.COMPONENT_LABEL] == "runtime"
    workload = _workload(objs)
    for meta in [workload["metadata"], *(t["metadata"] for t in _templates(workload))]:
        assert meta["annotations"][identity.SPEC_HASH_ANNOTATION] == spec.spec_hash()
        stored = json.loads(meta["annotations"][identity.SPEC_ANNOTATION])
        assert ComputeSpec.from_json(stored) == spec
    for template in _templates(workload):
        assert template["metadata"]["labels"][identity.COMPONENT_LABEL] == "pod"
    if workload["kind"] in ("Deployment", "StatefulSet"):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector == identity.labels("dev", USER, "pod")
        assert selector.items() <= _templates(workload)[0]["metadata"]["labels"].items()


@pytest.mark.parametrize("key", [identity.COMPUTE_LABEL, identity.USER_LABEL,
                                 identity.MANAGED_BY_LABEL, "kubetorch.dev/anything"])
def test_identity_labels_cannot_be_overridden(key: str) -> None:
    with pytest.raises(kt.ConfigError, match="kubetorch-jupyter's own") as err:
        kt.Compute(name="dev", labels={key: "mallory"})
    assert "\n" not in str(err.value)
    with pytest.raises(kt.ConfigError, match="kubetorch-jupyter's own"):
        kt.Compute(name="dev", annotations={identity.SPEC_HASH_ANNOTATION: "0"})
    with pytest.raises(kt.ConfigError, match="kubetorch-jupyter's own"):  # an edited annotation
        _render(ComputeSpec(name="dev", kubernetes={"labels": {key: "mallory"}}))


def test_long_names_stay_dns_labels() -> None:
    user = "a" * 30
    name = "n" * (63 - len(user) - 1)
    spec = kt.Compute(name=name, replicas=3).spec
    for mode in manifests.MODES:
        objs = manifests.render(spec, runtime=_runtime(), username=user, namespace=NS,
                                mode=mode)
        for obj in objs[1:]:
            assert _LABEL.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63
        for template in _templates(objs[1]):
            for volume in template["spec"].get("volumes", []):
                assert _LABEL.match(volume["name"]) and len(volume["name"]) <= 63
    sts = manifests.render(spec, runtime=_runtime(), username=user, namespace=NS)[1]
    assert sts["kind"] == "StatefulSet" and len(sts["metadata"]["name"]) <= 52
    cron = manifests.render_cronjob(spec, runtime=_runtime(), username=user, namespace=NS,
                                    schedule="@hourly", command=["true"])[-1]
    assert len(cron["metadata"]["name"]) <= 52
    token = manifests.token_secret_name(spec, username=user)
    assert len(token) <= 63 and token.endswith("-token") and _LABEL.match(token)
    assert token != manifests.token_secret_name(kt.Compute(name=name[:-1] + "m").spec,
                                                username=user)


def test_deployment_recreates_and_service_targets_the_runtime() -> None:
    objs = _render(_spec())
    deployment, service = objs[1], objs[2]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert service["spec"]["selector"] == identity.labels("dev", USER, "pod")
    assert service["spec"]["ports"][0]["targetPort"] == 32300
    assert service["metadata"]["labels"][identity.COMPONENT_LABEL] == "service"
    forced = _render(_spec(replicas=2), mode="deployment")
    assert forced[1]["kind"] == "Deployment" and forced[1]["spec"]["replicas"] == 2
    with pytest.raises(kt.ConfigError, match="unknown Kubernetes mode"):
        _render(_spec(), mode="daemonset")


def _rank_of(container: dict[str, Any], **env: str) -> str:
    """Run the manifest's rank wrapper as the container would, with the real shell."""
    wrapper = container["command"][:3]
    assert wrapper[:2] == ["/bin/sh", "-c"]
    out = subprocess.run([*wrapper, sys.executable, "-c",
                          "import os; print(os.environ['RANK'], os.environ['NODE_RANK'])"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_distributed_pods_learn_their_rank() -> None:
    objs = _render(_spec(replicas=4))
    sts, service = objs[1], objs[2]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    main = _main(sts["spec"]["template"])
    env = _env(main)
    assert env["WORLD_SIZE"]["value"] == "4"
    assert env["MASTER_ADDR"]["value"] == "alice-dev-0.alice-dev.ml.svc"
    assert env["KT_POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']")
    assert main["command"][3:] == _runtime().command
    assert _rank_of(main, KT_POD_NAME="alice-dev-3", KT_POD_INDEX="") == "3 3"  # k8s < 1.28
    assert _rank_of(main, KT_POD_NAME="alice-dev-3", KT_POD_INDEX="2") == "2 2"


def test_ray_cluster_head_and_workers() -> None:
    objs = _render(_spec(distributed="ray", replicas=3))
    cluster, service = objs[1], objs[2]
    group = cluster["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert service["spec"]["selector"]["ray.io/node-type"] == "head"
    for template in _templates(cluster):
        assert template["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
        assert _main(template)["command"][2] == manifests.RAY_SCRIPT
    assert "workerGroupSpecs" not in _render(_spec(distributed="ray"))[1]["spec"]


def test_knative_autoscaling() -> None:
    service = _render(_spec(autoscale={"min_scale": 1, "max_scale": 4, "concurrency": 8,
                                       "scale_to_zero_after": "10m"}))[1]
    notes = service["spec"]["template"]["metadata"]["annotations"]
    assert notes["autoscaling.knative.dev/min-scale"] == "1"
    assert notes["autoscaling.knative.dev/max-scale"] == "4"
    assert notes["autoscaling.knative.dev/target"] == "8"
    assert notes["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] == "600s"
    assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    main = _main(service["spec"]["template"])
    assert main["ports"] == [{"name": "http1", "containerPort": 32300, "protocol": "TCP"}]
    assert "port" not in main["readinessProbe"]["httpGet"]
    to_zero = _render(_spec(autoscale=True))[1]["spec"]["template"]["metadata"]["annotations"]
    assert to_zero["autoscaling.knative.dev/min-scale"] == "0"


def test_runtime_objects_come_first_with_identity() -> None:
    objs = _render(_spec())
    runtime = objs[0]
    assert runtime["metadata"]["name"] == "alice-dev-runtime"
    assert runtime["metadata"]["namespace"] == NS
    assert _runtime().objects[0]["metadata"] == {"name": "alice-dev-runtime"}  # not mutated


def test_token_secret_manifest() -> None:
    secret = manifests.token_secret_manifest(_spec(labels={"team": "ml"}), username=USER,
                                             namespace=NS, token="t0k3n")
    assert secret["stringData"] == {"token": "t0k3n"} and secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == "alice-dev-token"
    assert secret["metadata"]["labels"][identity.COMPONENT_LABEL] == "token"
    assert secret["metadata"]["labels"]["team"] == "ml"
    assert "t0k3n" not in json.dumps(secret["metadata"])


# ---- options: defaults, round trip, errors ---------------------------------------------


def test_defaults_stay_out_of_the_spec() -> None:
    plain = kt.Compute(name="dev").spec
    assert dict(plain.kubernetes) == {}
    assert plain.spec_hash() == ComputeSpec(name="dev").spec_hash()
    explicit = kt.Compute(name="dev", replicas=1, autoscale=False, tolerations=[],
                          labels={}, volumes={}).spec
    assert explicit.spec_hash() == plain.spec_hash()


def test_options_round_trip_through_the_spec() -> None:
    compute = kt.Compute(name="dev", **EVERYTHING)
    spec = compute.spec
    assert ComputeSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert kt.Compute.from_spec(spec).spec == spec
    assert KubernetesOptions.from_json(KubernetesOptions.from_spec(spec).to_json()) == (
        KubernetesOptions.from_spec(spec))
    changed = kt.Compute(name="dev", **{**EVERYTHING, "tolerations": []}).spec
    assert spec.diff(changed) == ["kubernetes.tolerations changed"]
    newer = ComputeSpec(name="dev", kubernetes={"replicas": 2, "from_the_future": 1})
    assert KubernetesOptions.from_spec(newer).replicas == 2


BAD: list[tuple[dict[str, Any], str]] = [
    ({"tolerations": [{"operator": "Equal", "value": "x"}]}, "needs a key"),
    ({"tolerations": [{"key": "a", "operator": "Is"}]}, "operator"),
    ({"tolerations": [{"key": "a", "effect": "Never"}]}, "effect"),
    ({"tolerations": [{"key": "a", "tolerationSeconds": 5}]}, "NoExecute"),
    ({"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}, "Exists"),
    ({"tolerations": {"key": "a"}}, "list"),
    ({"tolerations": [{"key": "a", "Effect": "NoSchedule"}]}, "unknown field"),
    ({"volumes": {"data": "mnt/data"}}, "absolute"),
    ({"volumes": {"data": "/"}}, "absolute"),
    ({"volumes": {"Data_Set": "/mnt"}}, "volume claim"),
    ({"volumes": {"a": "/mnt", "b": "/mnt/"}}, "already used"),
    ({"volumes": ["/mnt"]}, "volumes"),
    ({"memory_limit": "8Gb"}, "memory_limit"),
    ({"memory": "8Gi", "memory_limit": "4Gi"}, "below memory"),
    ({"shm_size": "lots"}, "shm_size"),
    ({"namespace": "Team_A"}, "namespace"),
    ({"service_account": "my sa"}, "service_account"),
    ({"priority_class_name": "High"}, "priority_class_name"),
    ({"image_pull_secrets": [3]}, "image_pull_secrets"),
    ({"image_pull_secrets": ["Reg Cred"]}, "image pull secret"),
    ({"secrets": {"WANDB": "wandb"}}, "secret/key"),
    ({"secrets": {"1BAD": "a/b"}}, "environment variable"),
    ({"secrets": [3]}, "secrets"),
    ({"labels": {"team": "a b"}}, "labels value"),
    ({"labels": {"bad key": "x"}}, "labels key"),
    ({"labels": {"team": 3}}, "must be a string"),
    ({"node_selector": {"pool": "a/b"}}, "node_selector"),
    ({"gpu_type": "A100"}, "needs gpus"),
    ({"gpus": 1, "gpu_type": "NVIDIA A100"}, "gpu_type"),
    ({"gpus": 1, "gpu_type": "A100", "node_selector": {"nvidia.com/gpu.product": "x"}},
     "both set"),
    ({"replicas": 0}, "replicas"),
    ({"replicas": True}, "replicas"),
    ({"distributed": "mpi"}, "distributed"),
    ({"autoscale": {"min": 1}}, "unknown key"),
    ({"autoscale": {"min_scale": 3, "max_scale": 2}}, "max_scale"),
    ({"autoscale": {"concurrency": 0}}, "concurrency"),
    ({"autoscale": "yes"}, "autoscale"),
    ({"autoscale": True, "replicas": 3}, "Knative"),
    ({"launch_timeout": "soon"}, "launch_timeout"),
]


@pytest.mark.parametrize(("kwargs", "needle"), BAD, ids=[repr(b[0])[:60] for b in BAD])
def test_bad_options_are_one_line_config_errors(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(kt.ConfigError) as err:
        kt.Compute(name="dev", **kwargs)
    message = str(err.value)
    assert needle in message and "\n" not in message, message
    assert any(ch in message for ch in "'={[") , message  # shows a valid spelling


def test_gpu_type_with_its_own_label() -> None:
    spec = _spec(gpus=1, gpu_type="cloud.google.com/gke-accelerator=nvidia-l4")
    pod = _templates(_workload(_render(spec)))[0]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


# ---- a pod may scale only its own workload ---------------------------------------------


@pytest.mark.parametrize(("kwargs", "resource", "verbs"), [
    ({}, "deployments/scale", ["get", "patch", "update"]),
    ({"replicas": 2}, "statefulsets/scale", ["get", "patch", "update"]),
    ({"distributed": "ray"}, "rayclusters", ["get", "delete"]),
])
def test_scaler_role_names_only_its_own_workload(kwargs: dict[str, Any], resource: str,
                                                  verbs: list[str]) -> None:
    objs = _render(_spec(**kwargs), scaler=True)
    kinds = [o["kind"] for o in objs]
    assert kinds[:4] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding"]
    for obj in objs:
        _validate(obj)
    workload = objs[4]
    (rule,) = objs[2]["rules"]
    assert rule["resources"] == [resource] and rule["verbs"] == verbs
    assert rule["resourceNames"] == [workload["metadata"]["name"]]
    assert objs[3]["subjects"][0]["name"] == objs[1]["metadata"]["name"]
    for template in _templates(workload):
        assert template["spec"]["serviceAccountName"] == objs[1]["metadata"]["name"]
        env = _env(_main(template))
        assert env["KT_K8S_WORKLOAD"]["value"] == (
            f"{resource.split('/')[0]}/{workload['metadata']['name']}")
        assert env["KT_K8S_NAMESPACE"]["value"] == NS
    own = _render(_spec(service_account="trainer", **kwargs), scaler=True)
    assert [o["kind"] for o in own][1] not in ("ServiceAccount", "Role")
    assert _render(_spec(autoscale=True), scaler=True)[1]["kind"] == "Service"


def test_env_names_kubernetes_refuses_are_one_line_errors() -> None:
    with pytest.raises(kt.ConfigError, match="MY VAR") as err:
        _render(_spec(env={"MY VAR": "1"}))
    assert "\n" not in str(err.value)
    assert "mode='ray'" in repr(kt.Compute(name="dev", distributed="ray"))


def test_ray_pods_start_ray_then_the_runtime(tmp_path: Any) -> None:
    """The Ray wrapper run by a real shell: KubeRay's command first, then the runtime."""
    from kt_testing import timeout

    main = _main(_templates(_render(_spec(distributed="ray"))[1])[0])
    wrapper = main["command"][:3]
    marker = tmp_path / "ray-started"
    os.mkfifo(marker)  # the runtime's read blocks until Ray's write: no polling
    wait = f"print('runtime after', open({str(marker)!r}).read().strip())"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ray = bin_dir / "ray"  # the image's Ray, as a program that records how it was started
    ray.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\n")
    ray.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin",
           "KUBERAY_GEN_RAY_START_CMD": "ray start --head --block"}
    out = subprocess.run([*wrapper, sys.executable, "-c", wait], env=env,
                         capture_output=True, text=True, timeout=timeout(60))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "runtime after start --head --block"
    missing = subprocess.run([*wrapper, sys.executable, "-c", "print('ran')"],
                             env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                             timeout=timeout(60))
    assert missing.returncode == 1 and "needs an image with Ray" in missing.stderr
    assert "ran" not in missing.stdout


def test_a_compute_renders_only_in_its_own_namespace() -> None:
    spec = _spec(namespace="team-a")
    assert manifests.render(spec, runtime=_runtime(), username=USER,
                            namespace="team-a")[1]["metadata"]["namespace"] == "team-a"
    with pytest.raises(ValueError, match="team-a"):
        manifests.render(spec, runtime=_runtime(), username=USER, namespace="default")
    with pytest.raises(ValueError, match="team-a"):
        manifests.render_cronjob(spec, runtime=_runtime(), username=USER, namespace="default",
                                 schedule="@daily", command=["true"])
