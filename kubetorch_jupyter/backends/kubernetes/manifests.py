"""A compute as Kubernetes objects: pure functions from a spec to the dicts ``.to()`` applies.

Nothing here calls an API: :func:`render` returns every object in apply order (the
runtime's own objects, then the workload, then its Service), :func:`token_secret_manifest`
the Secret the backend fills with a fresh token, :func:`render_cronjob` an exported
notebook's schedule. Each object carries :func:`.identity.labels` (with a component per
object) and the user's labels and annotations; the workload and its pod template carry the
spec and its hash (:data:`.identity.SPEC_ANNOTATION`, :data:`.identity.SPEC_HASH_ANNOTATION`).

The workload kinds (``mode``), chosen by :attr:`.options.KubernetesOptions.mode`:

- ``deployment`` (the default): a Deployment of one pod and a ClusterIP Service. Its
  strategy is ``Recreate``: a compute is one stateful process, and a rolling update would
  run two of them at once (and need twice the GPUs) while calls could reach either.
- ``knative``: a ``serving.knative.dev/v1`` Service when ``autoscale`` is asked for
  (min/max scale, scale to zero, a concurrency target), cluster-local. A cluster must
  enable Knative's ``kubernetes.podspec-*`` feature flags for the fields it uses
  (node selector, tolerations, priority class, persistent volume claims); Knative's
  ``timeoutSeconds`` bounds a connection, which the bridge re-makes.
- ``distributed``: ranked replicas for distributed PyTorch, as a StatefulSet behind a
  headless Service. Not an indexed Job: these pods are warm servers that must keep
  running (a Job's pods are meant to finish, and a finished index is never started
  again), and a StatefulSet gives each rank a stable name and DNS entry
  (``{name}-0.{name}``, rank 0 is ``MASTER_ADDR``) that survives a restart. Pods start in
  parallel, and learn their rank from the ``apps.kubernetes.io/pod-index`` label
  (Kubernetes >= 1.28) or else from their ordinal (the pod name's last part); see
  :data:`RANK_SCRIPT`.
- ``ray``: a KubeRay ``ray.io/v1`` RayCluster: a head and ``replicas - 1`` workers, each
  starting Ray (KubeRay's generated ``ray start``) and then the runtime; the Service
  reaches the head's runtime.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ...core.names import pod_name
from ...core.spec import ComputeSpec
from ...exceptions import ConfigError
from . import identity
from .container import RuntimeContainer
from .options import MODES, KubernetesOptions
from .pods import (
    container,
    pod_annotations,
    pod_spec,
    resource_name,
    spec_annotations,
)

__all__ = [
    "MASTER_PORT", "MODES", "RANK_SCRIPT", "RAY_SCRIPT", "WORKLOAD_RESOURCES", "Names",
    "check_schedule", "names", "render", "render_cronjob", "scaler_objects",
    "token_secret_manifest", "token_secret_name",
]

#: The port rank 0 listens on for ``torch.distributed`` rendezvous (``MASTER_PORT``).
MASTER_PORT = 29500
#: What a ranked pod runs before the runtime's command: its rank from the pod-index label,
#: else from the ordinal that ends its name (``alice-train-3`` is rank 3).
RANK_SCRIPT = ('RANK="${KT_POD_INDEX:-${KT_POD_NAME##*-}}"; '
               'export RANK NODE_RANK="$RANK" KT_RANK="$RANK"; exec "$0" "$@"')
#: What a Ray pod runs: KubeRay's generated ``ray start`` (in the background, it blocks),
#: then the runtime (``ray.io/overwrite-container-cmd`` leaves the command to us). The
#: image must have Ray (``rayproject/ray:...``); without it the pod stops with that message.
RAY_SCRIPT = ('command -v ray >/dev/null || { echo "kubetorch-jupyter: distributed=\'ray\' '
              'needs an image with Ray installed (e.g. rayproject/ray)" >&2; exit 1; }; '
              '(eval "$KUBERAY_GEN_RAY_START_CMD") & exec "$0" "$@"')
#: Name lengths the controllers leave room for: a StatefulSet's revision label and a
#: CronJob's Job names append 11 characters to the name.
_LIMITS = {"distributed": 52, "cronjob": 52}
#: The workload's API group and plural per mode (``KT_K8S_WORKLOAD`` is ``plural/name``).
WORKLOAD_RESOURCES = {"deployment": ("apps", "deployments"),
                      "distributed": ("apps", "statefulsets"),
                      "knative": ("serving.knative.dev", "services"),
                      "ray": ("ray.io", "rayclusters")}
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-#LW]+$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_TIMEZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")


@dataclass(frozen=True)
class Names:
    """The object names of one compute (all DNS-1123 labels of at most 63 characters).

    Attributes:
        base: ``{username}-{name}`` (:func:`~kubetorch_jupyter.core.names.pod_name`).
        workload: The Deployment / StatefulSet / Knative Service / RayCluster.
        service: The Service that reaches the runtime (headless for ``distributed``).
        token_secret: The Secret holding the pod token (key ``token``).
        scaler: The per-compute ServiceAccount, Role and RoleBinding of
            :func:`scaler_objects`.
    """

    base: str
    workload: str
    service: str
    token_secret: str
    scaler: str


def names(spec: ComputeSpec, *, username: str, mode: str | None = None) -> Names:
    """The names of ``spec``'s objects for ``username`` (in ``mode``, default its own).

    Raises:
        ConfigError: When the compute name or username is not valid.
    """
    base = pod_name(spec.name, username)
    mode = mode or KubernetesOptions.from_spec(spec).mode
    workload = resource_name(base, limit=_LIMITS.get(mode, 63))
    return Names(base=base, workload=workload, service=workload,
                 token_secret=token_secret_name(spec, username=username),
                 scaler=resource_name(base, "-scaler"))


def token_secret_name(spec: ComputeSpec, *, username: str) -> str:
    """The name of the Secret that holds the pod token of ``spec``'s compute."""
    return resource_name(pod_name(spec.name, username), "-token")


def _metadata(name: str, namespace: str, spec: ComputeSpec, options: KubernetesOptions,
              username: str, component: str, *, annotations: dict[str, str] | None = None,
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace,
        "labels": {**(labels or {}), **options.labels,
                   **identity.labels(spec.name, username, component)},
    }
    notes = {**options.annotations, **(annotations or {})}
    if notes:
        meta["annotations"] = notes
    return meta


def _pod_labels(spec: ComputeSpec, options: KubernetesOptions, username: str,
                component: str = "pod") -> dict[str, str]:
    return {**options.labels, **identity.labels(spec.name, username, component)}


def token_secret_manifest(spec: ComputeSpec, *, username: str, namespace: str,
                          token: str) -> dict[str, Any]:
    """The Secret holding ``token`` (key ``token``, as ``stringData``) for ``spec``'s pod.

    The backend makes the token (random, per compute) and applies this before the
    workload; nothing here keeps or prints it.
    """
    options = KubernetesOptions.from_spec(spec)
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": _metadata(token_secret_name(spec, username=username), namespace, spec,
                              options, username, "token"),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def _check_namespace(options: KubernetesOptions, namespace: str) -> None:
    if options.namespace is not None and namespace != options.namespace:
        raise ValueError(f"the compute asks for namespace {options.namespace!r}, not "
                         f"{namespace!r}: render it where it asks")


def _runtime_objects(runtime: RuntimeContainer, spec: ComputeSpec, options: KubernetesOptions,
                     username: str, namespace: str) -> list[dict[str, Any]]:
    """The bootstrap's objects, in its order, with the namespace and the user's labels.

    They carry no compute label: the runtime ConfigMap is one per user and client
    version, mounted by every compute of that user (see :mod:`.bootstrap`), so tearing
    one compute down (which deletes by the compute's label) leaves it to the others, and
    no compute owns it.
    """
    out = []
    for obj in runtime.objects:
        obj = {**obj, "metadata": dict(obj.get("metadata", {}))}
        meta = obj["metadata"]
        meta.setdefault("namespace", namespace)
        given = dict(meta.get("labels", {}))
        given.pop(identity.COMPUTE_LABEL, None)
        component = given.get(identity.COMPONENT_LABEL, "runtime")
        mine = identity.labels(spec.name, username, component)
        del mine[identity.COMPUTE_LABEL]
        meta["labels"] = {**options.labels, **given, **mine}
        out.append(obj)
    return out


def _service(name: str, namespace: str, spec: ComputeSpec, options: KubernetesOptions,
             runtime: RuntimeContainer, username: str, *, headless: bool = False,
             selector: dict[str, str] | None = None) -> dict[str, Any]:
    ports = [{"name": "runtime", "port": runtime.port, "targetPort": runtime.port,
              "protocol": "TCP"}]
    body: dict[str, Any] = {"type": "ClusterIP",
                            "selector": {**identity.labels(spec.name, username, "pod"),
                                         **(selector or {})},
                            "ports": ports}
    if headless:
        body["clusterIP"] = "None"
        body["publishNotReadyAddresses"] = True  # ranks find each other before ready
        ports.append({"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT,
                      "protocol": "TCP"})
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(name, namespace, spec, options, username, "service"),
            "spec": body}


def _template(spec: ComputeSpec, options: KubernetesOptions, runtime: RuntimeContainer,
              username: str, main: dict[str, Any], *, extra_annotations: dict[str, str]
              | None = None, knative: bool = False, restart_policy: str | None = None,
              component: str = "pod") -> dict[str, Any]:
    annotations = pod_annotations(spec, options, runtime)
    annotations.update(extra_annotations or {})
    return {"metadata": {"labels": _pod_labels(spec, options, username, component),
                         "annotations": annotations},
            "spec": pod_spec(spec, options, runtime, main, knative=knative,
                             restart_policy=restart_policy)}


def _where(mode: str, n: Names, namespace: str) -> list[dict[str, Any]]:
    """What tells a pod which workload it belongs to (for idle eviction)."""
    return [{"name": "KT_K8S_NAMESPACE", "value": namespace},
            {"name": "KT_K8S_WORKLOAD", "value": f"{WORKLOAD_RESOURCES[mode][1]}/{n.workload}"}]


def _deployment(spec: ComputeSpec, options: KubernetesOptions, runtime: RuntimeContainer,
                username: str, namespace: str, token_secret: str,
                n: Names) -> list[dict[str, Any]]:
    main = container(spec, options, runtime, token_secret=token_secret,
                     extra_env=_where("deployment", n, namespace))
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(n.workload, namespace, spec, options, username, "pod",
                              annotations=spec_annotations(spec)),
        "spec": {
            "replicas": options.replicas,
            "revisionHistoryLimit": 2,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": identity.labels(spec.name, username, "pod")},
            "template": _template(spec, options, runtime, username, main),
        },
    }
    return [deployment, _service(n.service, namespace, spec, options, runtime, username)]


def _statefulset(spec: ComputeSpec, options: KubernetesOptions, runtime: RuntimeContainer,
                 username: str, namespace: str, token_secret: str,
                 n: Names) -> list[dict[str, Any]]:
    ranks: list[dict[str, Any]] = [
        {"name": "WORLD_SIZE", "value": str(options.replicas)},
        {"name": "KT_WORLD_SIZE", "value": str(options.replicas)},
        {"name": "LOCAL_RANK", "value": "0"},
        {"name": "MASTER_ADDR", "value": f"{n.workload}-0.{n.service}.{namespace}.svc"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "KT_POD_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}},
        *_where("distributed", n, namespace),
    ]
    ports = [{"name": "runtime", "containerPort": runtime.port, "protocol": "TCP"},
             {"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    main = container(spec, options, runtime, token_secret=token_secret, extra_env=ranks,
                     ports=ports, command=["/bin/sh", "-c", RANK_SCRIPT, *runtime.command])
    statefulset = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _metadata(n.workload, namespace, spec, options, username, "pod",
                              annotations=spec_annotations(spec)),
        "spec": {
            "serviceName": n.service,
            "replicas": options.replicas,
            "podManagementPolicy": "Parallel",  # every rank at once: rendezvous needs all
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": identity.labels(spec.name, username, "pod")},
            "template": _template(spec, options, runtime, username, main),
        },
    }
    service = _service(n.service, namespace, spec, options, runtime, username, headless=True)
    return [statefulset, service]


def _knative(spec: ComputeSpec, options: KubernetesOptions, runtime: RuntimeContainer,
             username: str, namespace: str, token_secret: str,
             n: Names) -> list[dict[str, Any]]:
    scale = options.autoscale or {"min_scale": 0}
    notes = {"autoscaling.knative.dev/min-scale": str(scale["min_scale"])}
    if "max_scale" in scale:
        notes["autoscaling.knative.dev/max-scale"] = str(scale["max_scale"])
    if "concurrency" in scale:
        notes["autoscaling.knative.dev/metric"] = "concurrency"
        notes["autoscaling.knative.dev/target"] = str(scale["concurrency"])
    if "scale_to_zero_after" in scale:
        notes["autoscaling.knative.dev/scale-to-zero-pod-retention-period"] = (
            f"{round(scale['scale_to_zero_after'])}s")
    main = container(spec, options, runtime, token_secret=token_secret, probe_port=False,
                     pod_name_env=False,
                     extra_env=[{"name": "KT_POD_NAME", "value": n.workload},
                                *_where("knative", n, namespace)],
                     ports=[{"name": "http1", "containerPort": runtime.port,
                             "protocol": "TCP"}])
    template = _template(spec, options, runtime, username, main, knative=True,
                         extra_annotations=notes)
    template["spec"]["timeoutSeconds"] = 600  # Knative's default upper bound
    service = {
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": _metadata(n.workload, namespace, spec, options, username, "pod",
                              annotations=spec_annotations(spec),
                              labels={"networking.knative.dev/visibility": "cluster-local"}),
        "spec": {"template": template},
    }
    return [service]


def _ray(spec: ComputeSpec, options: KubernetesOptions, runtime: RuntimeContainer,
         username: str, namespace: str, token_secret: str,
         n: Names) -> list[dict[str, Any]]:
    command = ["/bin/sh", "-c", RAY_SCRIPT, *runtime.command]
    overwrite = {"ray.io/overwrite-container-cmd": "true"}
    head_ports = [{"name": "runtime", "containerPort": runtime.port, "protocol": "TCP"},
                  {"name": "gcs-server", "containerPort": 6379, "protocol": "TCP"},
                  {"name": "dashboard", "containerPort": 8265, "protocol": "TCP"},
                  {"name": "client", "containerPort": 10001, "protocol": "TCP"}]
    where = _where("ray", n, namespace)
    head = container(spec, options, runtime, token_secret=token_secret, command=command,
                     ports=head_ports, extra_env=where)
    body: dict[str, Any] = {
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": _template(spec, options, runtime, username, head,
                                  extra_annotations=overwrite),
        },
    }
    workers = options.replicas - 1
    if workers:
        worker = container(spec, options, runtime, token_secret=token_secret, command=command,
                           extra_env=where)
        body["workerGroupSpecs"] = [{
            "groupName": "workers", "replicas": workers, "minReplicas": workers,
            "maxReplicas": workers, "rayStartParams": {},
            "template": _template(spec, options, runtime, username, worker,
                                  extra_annotations=overwrite),
        }]
    cluster = {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": _metadata(n.workload, namespace, spec, options, username, "pod",
                              annotations=spec_annotations(spec)),
        "spec": body,
    }
    service = _service(n.service, namespace, spec, options, runtime, username,
                       selector={"ray.io/node-type": "head"})
    return [cluster, service]


_RENDERERS = {"deployment": _deployment, "distributed": _statefulset, "knative": _knative,
              "ray": _ray}


def render(spec: ComputeSpec, *, runtime: RuntimeContainer, username: str, namespace: str,
           token_secret: str | None = None, mode: str | None = None,
           scaler: bool = False) -> list[dict[str, Any]]:
    """Every object ``.to()`` applies for ``spec``, in apply order.

    The runtime's objects first, then (with ``scaler``) :func:`scaler_objects`, then the
    workload, then its Service (none for Knative, which makes its own). The token Secret
    is not among them: the backend applies :func:`token_secret_manifest` with a fresh
    token before these.

    Args:
        spec: The compute.
        runtime: How the runtime starts in the container (from the bootstrap).
        username: ``KT_USERNAME``: the prefix of every name, a label.
        namespace: Where the objects go: the compute's ``namespace`` when it names one
            (another is a ValueError), else the backend's.
        token_secret: The Secret with the pod token (default :func:`token_secret_name`).
        mode: One of :data:`MODES` (default: :attr:`KubernetesOptions.mode`).
        scaler: Give the pods a ServiceAccount of their own that may scale only this
            workload (unless the compute names a ``service_account``).

    Raises:
        ConfigError: For an invalid name, option or mode.
    """
    options = KubernetesOptions.from_spec(spec)
    _check_namespace(options, namespace)
    mode = mode or options.mode
    if mode not in _RENDERERS:
        raise ConfigError(f"unknown Kubernetes mode {mode!r}: use one of {', '.join(MODES)}")
    n = names(spec, username=username, mode=mode)
    objects = _runtime_objects(runtime, spec, options, username, namespace)
    own = scaler_objects(spec, username=username, namespace=namespace, mode=mode) if (
        scaler and options.service_account is None) else []
    if own:
        objects += own
        options = dataclasses.replace(options, service_account=n.scaler)
    objects += _RENDERERS[mode](spec, options, runtime, username, namespace,
                                token_secret or n.token_secret, n)
    return objects


def scaler_objects(spec: ComputeSpec, *, username: str, namespace: str,
                   mode: str | None = None) -> list[dict[str, Any]]:
    """A ServiceAccount, Role and RoleBinding that let a pod scale only its own workload.

    RBAC names objects, never selects them by label, so only a Role made per compute can
    say "its own": ``resourceNames: [the workload]``, on the ``scale`` subresource (which
    changes a replica count and nothing else). A RayCluster has no scale subresource: its
    pods may delete that one RayCluster (never patch it: a patch could change what it runs
    and as whom). Knative scales to zero itself: nothing is made for it.
    """
    options = KubernetesOptions.from_spec(spec)
    mode = mode or options.mode
    n = names(spec, username=username, mode=mode)
    group, plural = WORKLOAD_RESOURCES[mode]
    if mode == "knative":
        return []
    rule: dict[str, Any] = ({"apiGroups": [group], "resources": [plural],
                             "resourceNames": [n.workload], "verbs": ["get", "delete"]}
                            if mode == "ray" else
                            {"apiGroups": [group], "resources": [f"{plural}/scale"],
                             "resourceNames": [n.workload], "verbs": ["get", "patch", "update"]})

    def meta() -> dict[str, Any]:
        return _metadata(n.scaler, namespace, spec, options, username, "scaler")

    return [
        # its token is what the pod scales with: mounted even where the namespace's
        # default ServiceAccount says not to (a pod spec without the field takes this)
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(),
         "automountServiceAccountToken": True},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(),
         "rules": [rule]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": meta(),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": n.scaler},
         "subjects": [{"kind": "ServiceAccount", "name": n.scaler, "namespace": namespace}]},
    ]


def check_schedule(schedule: object) -> str:
    """``schedule`` if it is a cron schedule (5 fields or ``@daily``...), else a ConfigError."""
    if isinstance(schedule, str):
        text = schedule.strip()
        fields = text.split()
        if text in _CRON_MACROS or (len(fields) == 5 and all(map(_CRON_FIELD.match, fields))):
            return text
    raise ConfigError(f"schedule {schedule!r} is not a cron schedule: write five fields "
                      "(minute hour day month weekday), e.g. '0 3 * * *', or '@daily'")


def render_cronjob(spec: ComputeSpec, *, runtime: RuntimeContainer, username: str,
                   namespace: str, schedule: str, command: list[str],
                   timezone: str | None = None, name: str | None = None,
                   token_secret: str | None = None, suspend: bool = False,
                   starting_deadline_seconds: int = 300, history_limit: int = 3,
                   backoff_limit: int = 0,
                   active_deadline_seconds: int | None = None) -> list[dict[str, Any]]:
    """The objects of a scheduled run of ``command`` in ``spec``'s pod (a CronJob last).

    A run never overlaps the previous one (``concurrencyPolicy: Forbid``); one that could
    not start within ``starting_deadline_seconds`` of its time is skipped.

    Args:
        spec: The compute whose image, resources and cluster fields the job's pod has.
        runtime: The bootstrap's container (its env, volumes and objects; not its command).
        username: The prefix of the name, a label.
        namespace: Where the objects go.
        schedule: A cron schedule (``"0 3 * * *"``, ``"@hourly"``).
        command: What the job's container runs.
        timezone: An IANA time zone for the schedule (``"Europe/Paris"``); default the
            controller's (UTC on most clusters).
        name: The job's name (default the compute's); the CronJob is ``{username}-{name}``.
        token_secret: A Secret whose ``token`` becomes ``KT_POD_TOKEN`` (default none).
        suspend: Create it suspended.
        starting_deadline_seconds: How late a run may start.
        history_limit: Finished Jobs kept, succeeded and failed each.
        backoff_limit: Retries of a failed run.
        active_deadline_seconds: Longest a run may take (default no limit).

    Raises:
        ConfigError: For an invalid schedule, time zone, command or name.
    """
    schedule = check_schedule(schedule)
    if timezone is not None and (not isinstance(timezone, str) or not _TIMEZONE.match(timezone)):
        raise ConfigError(f"timezone {timezone!r} is not an IANA time zone name "
                          "(e.g. 'Europe/Paris', 'UTC')")
    if (not isinstance(command, list | tuple) or not command
            or not all(isinstance(c, str) for c in command)):
        raise ConfigError(f"command must be a non-empty list of strings, got {command!r} "
                          "(e.g. ['python', 'train.py'])")
    options = KubernetesOptions.from_spec(spec)
    _check_namespace(options, namespace)
    job_name = resource_name(pod_name(name or spec.name, username), limit=_LIMITS["cronjob"])
    main = container(spec, options, runtime, token_secret=token_secret, command=list(command),
                     ports=[], probes=False)
    template = _template(spec, options, runtime, username, main, restart_policy="Never",
                         component="job")
    job: dict[str, Any] = {"backoffLimit": backoff_limit, "template": template}
    if active_deadline_seconds is not None:
        job["activeDeadlineSeconds"] = active_deadline_seconds
    body: dict[str, Any] = {
        "schedule": schedule,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": starting_deadline_seconds,
        "successfulJobsHistoryLimit": history_limit,
        "failedJobsHistoryLimit": history_limit,
        "suspend": suspend,
        "jobTemplate": {"metadata": {"labels": _pod_labels(spec, options, username, "job")},
                        "spec": job},
    }
    if timezone is not None:
        body["timeZone"] = timezone
    cronjob = {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": _metadata(job_name, namespace, spec, options, username, "job",
                              annotations=spec_annotations(spec)),
        "spec": body,
    }
    return [*_runtime_objects(runtime, spec, options, username, namespace), cronjob]
