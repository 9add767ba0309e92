"""A compute's pod: its main container and pod spec, shared by every workload kind.

Pure functions from a :class:`~kubetorch_jupyter.core.spec.ComputeSpec`, its
:class:`.options.KubernetesOptions` and the bootstrap's :class:`.container.RuntimeContainer`
to the dicts the Kubernetes API takes. :mod:`.manifests` wraps them in a Deployment, a
StatefulSet, a Knative Service, a RayCluster or a CronJob.

Choices a platform team may look for:

- **Resources**: ``cpus`` is a CPU *request* only (no CPU limit: a limit throttles a
  busy Python process long before it helps a neighbour); ``memory`` is the request and,
  unless ``memory_limit`` says more, the limit; GPUs are ``nvidia.com/gpu`` limits.
- **Probes**: a startup probe on ``/healthz`` gives the container ``launch_timeout``
  (install included) to come up; after it, liveness on ``/healthz`` and readiness on
  the runtime's readiness path.
- **Security**: no privilege escalation and the runtime's default seccomp profile;
  ``runAsNonRoot`` is not forced, since arbitrary images (most GPU images) run as root.
- **GPUs**: the usual ``nvidia.com/gpu:NoSchedule`` taint is tolerated when ``gpus > 0``;
  ``gpu_type`` becomes a node selector; ``/dev/shm`` is a memory ``emptyDir``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from ...core.spec import ComputeSpec
from ...exceptions import ConfigError
from . import identity
from .container import RuntimeContainer
from .options import DEFAULT_LAUNCH_TIMEOUT, KubernetesOptions

__all__ = [
    "CONTAINER_NAME", "DEFAULT_IMAGE", "GPU_RESOURCE", "GPU_TOLERATION", "PROMETHEUS_ANNOTATIONS",
    "TERMINATION_GRACE_SECONDS", "container", "cpu_quantity", "default_image",
    "memory_quantity", "pod_annotations", "pod_spec", "resource_name",
]

#: The main container's name (KubeRay takes the first container as Ray's, which it is).
CONTAINER_NAME = "runtime"
#: The extended resource NVIDIA's device plugin advertises.
GPU_RESOURCE = "nvidia.com/gpu"
#: The taint GPU node pools usually carry (EKS, GKE, the GPU operator's docs).
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: The pod image when ``Image.base`` is not set: a slim Python of the client's own minor
#: version (pickles cross best between equal Pythons). The bootstrap installs the pod
#: runtime into it at start; ``deploy/Dockerfile`` builds an image with it preinstalled.
DEFAULT_IMAGE = "python:{major}.{minor}-slim"
#: Seconds a pod has to stop after SIGTERM before it is killed.
TERMINATION_GRACE_SECONDS = 30
#: Where a Prometheus with the usual ``kubernetes-pods`` scrape config finds the metrics.
PROMETHEUS_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")
#: Seconds between startup probes (``launch_timeout`` divided by this is the threshold).
STARTUP_PERIOD = 5
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def default_image(version: tuple[int, int] | None = None) -> str:
    """The image a compute without ``Image(base=...)`` runs: ``python:3.X-slim``."""
    import sys

    major, minor = version or sys.version_info[:2]
    return DEFAULT_IMAGE.format(major=major, minor=minor)


def resource_name(base: str, suffix: str = "", limit: int = 63) -> str:
    """``base + suffix``, shortened with a hash of the whole to fit ``limit`` characters.

    The result is a DNS-1123 label when ``base`` is one and ``suffix`` is ``-`` and
    letters or digits: ``resource_name("alice-" + "x" * 60, "-token")`` keeps the suffix
    and stays unique.
    """
    name = f"{base}{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    head = base[: limit - len(suffix) - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}{suffix}"


def cpu_quantity(cores: float) -> str:
    """Cores as a Kubernetes quantity: ``2`` -> ``"2"``, ``0.5`` -> ``"500m"``."""
    milli = math.ceil(round(cores * 1000, 6))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity: ``16Gi`` when exact, else the plain number."""
    for unit, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _env(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per name, the later winning (server-side apply rejects duplicate names)."""
    by_name: dict[str, dict[str, Any]] = {}
    for entry in entries:
        by_name.pop(entry["name"], None)
        by_name[entry["name"]] = entry
    return list(by_name.values())


def _volume_name(claim: str) -> str:
    return resource_name("pvc-" + re.sub(r"[^a-z0-9-]", "-", claim).strip("-"))


def _resources(spec: ComputeSpec, options: KubernetesOptions) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.cpus is not None:
        requests["cpu"] = cpu_quantity(spec.cpus)
    if spec.memory is not None:
        requests["memory"] = memory_quantity(spec.memory)
    limit = options.memory_limit or spec.memory
    if limit is not None:
        limits["memory"] = memory_quantity(limit)
    if spec.gpus:
        limits[GPU_RESOURCE] = str(spec.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probe(path: str, port: int | None, *, period: int, failures: int,
           timeout: int = 5) -> dict[str, Any]:
    get: dict[str, Any] = {"path": path}
    if port is not None:
        get["port"] = port
    return {"httpGet": get, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": timeout}


def container(spec: ComputeSpec, options: KubernetesOptions, runtime: RuntimeContainer, *,
              token_secret: str | None, command: list[str] | None = None,
              extra_env: Sequence[dict[str, Any]] = (), pod_name_env: bool = True,
              ports: list[dict[str, Any]] | None = None, probes: bool = True,
              probe_port: bool = True) -> dict[str, Any]:
    """The pod's main container: the runtime's command in the compute's image.

    Args:
        spec: The compute.
        options: Its checked Kubernetes options.
        runtime: What the bootstrap says the runtime needs.
        token_secret: The Secret whose ``token`` key becomes ``KT_POD_TOKEN`` (None: none).
        command: Instead of ``runtime.command`` (a job's, or a wrapper around it).
        extra_env: Entries after everything else (a mode's own: ranks, Ray).
        ports: Instead of the one ``runtime`` port.
        probes: Whether it serves (startup, liveness, readiness probes); a job does not.
        probe_port: Whether probes name their port (Knative infers it, and allows no other).
        pod_name_env: Whether ``KT_POD_NAME`` comes from the downward API (Knative allows
            ``fieldRef`` only behind a feature flag, so its pods get the Service's name).
    """
    env: list[dict[str, Any]] = [dict(e) for e in runtime.env]
    for key, value in spec.pod_env.items():
        if not _ENV_NAME.match(key):
            raise ConfigError(f"environment variable {key!r} cannot be set in a Kubernetes "
                              "pod: use letters, digits, '_', '-' and '.', not starting with "
                              "a digit (e.g. 'MY_VAR')")
        env.append({"name": key, "value": value})
    for name, ref in options.secret_env.items():
        secret, _, key = ref.partition("/")
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    if token_secret is not None:
        env.append({"name": "KT_POD_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "token"}}})
    if pod_name_env:
        env.append({"name": "KT_POD_NAME",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    env += list(extra_env)
    out: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.build_image().base or default_image(),
        "imagePullPolicy": "IfNotPresent",
        "command": list(command if command is not None else runtime.command),
        "env": _env(env),
    }
    if options.secrets:
        out["envFrom"] = [{"secretRef": {"name": name}} for name in options.secrets]
    out["ports"] = ports if ports is not None else [
        {"name": "runtime", "containerPort": runtime.port, "protocol": "TCP"}]
    if not out["ports"]:
        del out["ports"]
    resources = _resources(spec, options)
    if resources:
        out["resources"] = resources
    if probes:
        port = runtime.port if probe_port else None
        launch = options.launch_timeout or DEFAULT_LAUNCH_TIMEOUT
        out["startupProbe"] = _probe("/healthz", port, period=STARTUP_PERIOD,
                                     failures=max(1, math.ceil(launch / STARTUP_PERIOD)))
        out["livenessProbe"] = _probe("/healthz", port, period=10, failures=6)
        out["readinessProbe"] = _probe(runtime.readiness_path, port, period=2, failures=3)
    mounts = [dict(m) for m in runtime.volume_mounts]
    for claim, volume in options.volumes.items():
        mount: dict[str, Any] = {"name": _volume_name(claim), "mountPath": volume["path"]}
        if volume.get("read_only"):
            mount["readOnly"] = True
        mounts.append(mount)
    if options.shm_bytes(memory_limit=options.memory_limit or spec.memory, gpus=spec.gpus):
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if mounts:
        out["volumeMounts"] = mounts
    out["securityContext"] = {"allowPrivilegeEscalation": False,
                              "seccompProfile": {"type": "RuntimeDefault"}}
    return out


def _volumes(spec: ComputeSpec, options: KubernetesOptions,
             runtime: RuntimeContainer) -> list[dict[str, Any]]:
    volumes = [dict(v) for v in runtime.volumes]
    for claim, volume in options.volumes.items():
        pvc: dict[str, Any] = {"claimName": claim}
        if volume.get("read_only"):
            pvc["readOnly"] = True
        volumes.append({"name": _volume_name(claim), "persistentVolumeClaim": pvc})
    shm = options.shm_bytes(memory_limit=options.memory_limit or spec.memory, gpus=spec.gpus)
    if shm:
        volumes.append({"name": "dshm",
                        "emptyDir": {"medium": "Memory", "sizeLimit": memory_quantity(shm)}})
    return volumes


def _tolerations(spec: ComputeSpec, options: KubernetesOptions) -> list[dict[str, Any]]:
    tolerations = [dict(t) for t in options.tolerations]
    if spec.gpus and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        tolerations.append(dict(GPU_TOLERATION))
    return tolerations


def pod_spec(spec: ComputeSpec, options: KubernetesOptions, runtime: RuntimeContainer,
             main: dict[str, Any], *, restart_policy: str | None = None,
             knative: bool = False) -> dict[str, Any]:
    """The pod spec around ``main`` (from :func:`container`): volumes, scheduling, identity.

    ``knative`` leaves out what a Knative Service does not take
    (``terminationGracePeriodSeconds``, ``restartPolicy``, ``enableServiceLinks``).
    """
    out: dict[str, Any] = {"containers": [main]}
    volumes = _volumes(spec, options, runtime)
    if volumes:
        out["volumes"] = volumes
    selector = dict(options.node_selector)
    if options.gpu_type is not None:
        selector[options.gpu_type[0]] = options.gpu_type[1]
    if selector:
        out["nodeSelector"] = selector
    tolerations = _tolerations(spec, options)
    if tolerations:
        out["tolerations"] = tolerations
    if options.priority_class_name:
        out["priorityClassName"] = options.priority_class_name
    if options.service_account:
        out["serviceAccountName"] = options.service_account
    if options.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": n} for n in options.image_pull_secrets]
    if not knative:
        out["terminationGracePeriodSeconds"] = TERMINATION_GRACE_SECONDS
        out["enableServiceLinks"] = False  # no env var per Service in the namespace
        if restart_policy is not None:
            out["restartPolicy"] = restart_policy
    return out


def spec_annotations(spec: ComputeSpec) -> dict[str, str]:
    """The spec and its hash, as the workload and its pod template carry them."""
    return {identity.SPEC_ANNOTATION: json.dumps(spec.to_json(), sort_keys=True,
                                                 separators=(",", ":")),
            identity.SPEC_HASH_ANNOTATION: spec.spec_hash()}


def pod_annotations(spec: ComputeSpec, options: KubernetesOptions,
                    runtime: RuntimeContainer, *, scrape: bool = True) -> dict[str, str]:
    """The pod template's annotations: the user's, the spec, and where its metrics are."""
    out = dict(options.annotations)
    out.update(spec_annotations(spec))
    if scrape:
        out.update(dict(zip(PROMETHEUS_ANNOTATIONS,
                            ("true", str(runtime.port), "/metrics"), strict=True)))
    return out
