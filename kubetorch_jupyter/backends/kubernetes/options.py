"""The cluster fields of a compute: what ``kt.Compute(...)`` accepts for Kubernetes.

Users write them as keyword arguments of :class:`~kubetorch_jupyter.Compute`
(``gpu_type="NVIDIA-A100-SXM4-80GB"``, ``tolerations=[...]``, ``volumes={"data":
"/mnt/data"}``...). :meth:`KubernetesOptions.parse` checks each one and says what is wrong
in one line with a valid example; the result lives in the spec's ``kubernetes`` mapping
(:meth:`KubernetesOptions.to_json`), so it is hashed, diffed and stored in the workload's
annotation with the rest of the spec. A field at its default is left out of that mapping:
a plain ``Compute()`` hashes as it did before these fields existed.

:meth:`KubernetesOptions.from_spec` reads them back (checking again: a spec may come from
an annotation someone edited); keys it does not know (a newer client's) are ignored.

Spellings, and what each becomes:

- ``gpu_type``: a node label value that picks the GPU model. A bare value is matched
  against :data:`GPU_PRODUCT_LABEL` (NVIDIA GPU feature discovery's ``nvidia.com/gpu.product``,
  e.g. ``"NVIDIA-H100-80GB-HBM3"``); ``"key=value"`` names another label
  (``"cloud.google.com/gke-accelerator=nvidia-l4"``). Becomes a ``nodeSelector`` entry.
- ``secrets``: a Secret name (each of its keys becomes an environment variable,
  ``envFrom``), a mapping ``{"ENV": "secret/key"}`` (one key of one Secret), or a list
  mixing both: ``secrets=["hf", {"WANDB_API_KEY": "wandb/api-key"}]``.
- ``volumes``: PersistentVolumeClaims by claim name: ``{"data": "/mnt/data"}``, or
  ``{"data": {"path": "/mnt/data", "read_only": True}}``.
- ``shm_size``: the size of ``/dev/shm`` (a memory ``emptyDir``; PyTorch data loaders
  need more than a container's 64 MiB). Default: :data:`DEFAULT_GPU_SHM` when
  ``gpus > 0`` (at most half the memory limit), none otherwise; ``0`` turns it off.
- ``autoscale``: ``True`` or ``{"min_scale": 0, "max_scale": 4, "concurrency": 8,
  "scale_to_zero_after": "10m"}``; runs the compute as a Knative Service (``min_scale``
  0, the default, lets it scale to zero: a warm pod's state is lost when it does).
- ``distributed``: ``"pytorch"`` (ranked replicas, the default when ``replicas > 1``) or
  ``"ray"`` (a KubeRay RayCluster: a head and ``replicas - 1`` workers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ...core.resources import format_bytes, parse_duration, parse_memory
from ...exceptions import ConfigError
from .identity import COMPUTE_LABEL, MANAGED_BY_LABEL

__all__ = [
    "DEFAULT_GPU_SHM", "DEFAULT_LAUNCH_TIMEOUT", "GPU_PRODUCT_LABEL", "MODES", "RESERVED_PREFIX",
    "KubernetesOptions", "check_label_key", "check_label_value", "dns_label", "dns_subdomain",
]

#: The node label GPU feature discovery (NVIDIA's GPU operator) sets to the GPU model.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: ``/dev/shm`` of a GPU pod when ``shm_size`` is not given (capped at half its memory).
DEFAULT_GPU_SHM = 8 * 2**30
#: Seconds a container may take from start to answering (install included) by default.
DEFAULT_LAUNCH_TIMEOUT = 600.0
#: Label and annotation keys under this prefix are the backend's (identity, spec).
RESERVED_PREFIX = COMPUTE_LABEL.partition("/")[0] + "/"
#: The workload kinds a compute can become (see :mod:`.manifests`).
MODES = ("deployment", "knative", "ray", "distributed")
DISTRIBUTED = ("pytorch", "ray")
AUTOSCALE_KEYS = ("min_scale", "max_scale", "concurrency", "scale_to_zero_after")

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
_EXAMPLE_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _suggest(text: str, limit: int) -> str:
    cleaned = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", str(text).lower())).strip("-")
    return cleaned[:limit].rstrip("-") or "name"


def dns_label(value: object, what: str) -> str:
    """``value`` if it is a DNS-1123 label (≤63), else a ConfigError naming ``what``."""
    if isinstance(value, str) and len(value) <= 63 and _LABEL.match(value):
        return value
    raise ConfigError(f"{what} {value!r} is not a valid Kubernetes name: use at most 63 "
                      f"lowercase letters, digits and '-' (e.g. {_suggest(str(value), 63)!r})")


def dns_subdomain(value: object, what: str) -> str:
    """``value`` if it is a DNS-1123 subdomain (≤253), else a ConfigError naming ``what``."""
    if isinstance(value, str) and len(value) <= 253 and _SUBDOMAIN.match(value):
        return value
    raise ConfigError(f"{what} {value!r} is not a valid Kubernetes name: use lowercase "
                      f"letters, digits, '-' and '.' (e.g. {_suggest(str(value), 63)!r})")


def check_label_key(key: object, what: str) -> str:
    """``key`` if it is a label/annotation key (``[prefix/]name``), else a ConfigError."""
    if isinstance(key, str):
        prefix, slash, name = key.rpartition("/")
        if (len(name) <= 63 and _QUALIFIED.match(name)
                and (not slash or (len(prefix) <= 253 and _SUBDOMAIN.match(prefix)))):
            return key
    raise ConfigError(f"{what} key {key!r} is not valid: write it as 'name' or "
                      "'prefix.example.com/name' (letters, digits, '-', '_', '.'; name at "
                      "most 63 characters), e.g. 'team'")


def check_label_value(value: object, what: str, example: str = "ml-platform") -> str:
    """``value`` if it is a label value (≤63, may be empty), else a ConfigError."""
    if isinstance(value, str) and (value == "" or (len(value) <= 63 and _QUALIFIED.match(value))):
        return value
    raise ConfigError(f"{what} value {value!r} is not valid: at most 63 letters, digits, "
                      "'-', '_' or '.', starting and ending with a letter or digit "
                      f"(e.g. {example!r})")


def _mapping(value: object, what: str, example: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}: "
                          f"{what}={example}")
    return value


def _strings(value: object, what: str, example: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{what} must be a name or a list of names, got {value!r}: "
                          f"{what}={example}")
    return list(items)


def _labels(value: object, what: str) -> dict[str, str]:
    out = {}
    for key, val in _mapping(value, what, "{'team': 'ml'}").items():
        key = check_label_key(key, what)
        if key.startswith(RESERVED_PREFIX) or key == MANAGED_BY_LABEL:
            raise ConfigError(f"{what} key {key!r} is kubetorch-jupyter's own (it finds a "
                              f"compute's objects by it): choose another key, e.g. 'team'")
        if not isinstance(val, str):
            raise ConfigError(f"{what} value of {key!r} must be a string, got {val!r} "
                              f"(e.g. {{{key!r}: {str(val)!r}}})")
        out[key] = val if what == "annotations" else check_label_value(val, what)
    return out


def _node_selector(value: object) -> dict[str, str]:
    out = {}
    for key, val in _mapping(value, "node_selector", "{'pool': 'a100'}").items():
        out[check_label_key(key, "node_selector")] = check_label_value(val, "node_selector")
    return out


def _gpu_type(value: object) -> tuple[str, str]:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"gpu_type must be a string like 'NVIDIA-A100-SXM4-80GB' (matched "
                          f"against the {GPU_PRODUCT_LABEL} node label), got {value!r}")
    key, eq, val = value.partition("=")
    if not eq:
        key, val = GPU_PRODUCT_LABEL, value
    return (check_label_key(key, "gpu_type"),
            check_label_value(val, "gpu_type", "NVIDIA-A100-SXM4-80GB"))


def _toleration(item: object) -> dict[str, Any]:
    example = f"tolerations=[{_EXAMPLE_TOLERATION!r}]"
    if not isinstance(item, Mapping):
        raise ConfigError(f"a toleration must be a mapping, got {item!r}: {example}")
    unknown = sorted(set(item) - set(_TOLERATION_KEYS))
    if unknown:
        raise ConfigError(f"toleration {dict(item)!r} has unknown field {unknown[0]!r} (known: "
                          f"{', '.join(_TOLERATION_KEYS)}): {example}")
    out: dict[str, Any] = {}
    operator = item.get("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise ConfigError(f"toleration operator must be 'Equal' or 'Exists', got {operator!r}: "
                          f"{example}")
    if not item.get("key"):
        raise ConfigError(f"toleration {dict(item)!r} needs a key: {example}")
    out["key"] = check_label_key(item["key"], "toleration")
    out["operator"] = operator
    if "value" in item:
        if operator == "Exists" and item["value"]:
            raise ConfigError(f"toleration {dict(item)!r}: operator 'Exists' takes no value "
                              f"(use 'Equal' to match one): {example}")
        if operator == "Equal":
            out["value"] = check_label_value(item["value"], "toleration")
    effect = item.get("effect", "")
    if effect not in _EFFECTS:
        raise ConfigError(f"toleration effect must be one of {', '.join(map(repr, _EFFECTS))}, "
                          f"got {effect!r}: {example}")
    if effect:
        out["effect"] = effect
    if "tolerationSeconds" in item:
        seconds = item["tolerationSeconds"]
        if effect != "NoExecute" or isinstance(seconds, bool) or not isinstance(seconds, int):
            raise ConfigError("toleration tolerationSeconds needs effect 'NoExecute' and a "
                              f"whole number of seconds, got {dict(item)!r}")
        out["tolerationSeconds"] = seconds
    return out


def _secrets(value: object) -> tuple[list[str], dict[str, str]]:
    example = "secrets=['hf-token', {'WANDB_API_KEY': 'wandb/api-key'}]"
    items: list[object]
    if isinstance(value, str | Mapping):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f"secrets must be Secret names and/or {{'ENV': 'secret/key'}}, got "
                          f"{type(value).__name__}: {example}")
    names: list[str] = []
    env: dict[str, str] = {}
    for item in items:
        if isinstance(item, str):
            names.append(dns_subdomain(item, "secret"))
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"secrets entry {item!r} is neither a Secret name nor a mapping: "
                              f"{example}")
        for name, ref in item.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                raise ConfigError(f"secrets: {name!r} is not an environment variable name "
                                  f"(letters, digits, '_', '-', '.'; not starting with a "
                                  f"digit): {example}")
            secret, slash, key = ref.partition("/") if isinstance(ref, str) else ("", "", "")
            if not slash or not key or not re.match(r"^[-._a-zA-Z0-9]+$", key):
                raise ConfigError(f"secrets: {name}={ref!r} must name 'secret/key', e.g. "
                                  f"{{{name!r}: 'my-secret/token'}}")
            dns_subdomain(secret, "secret")
            env[name] = f"{secret}/{key}"
    return list(dict.fromkeys(names)), env


def _volumes(value: object) -> dict[str, dict[str, Any]]:
    example = "volumes={'data': '/mnt/data'}"
    out: dict[str, dict[str, Any]] = {}
    paths: set[str] = set()
    for claim, target in _mapping(value, "volumes", example).items():
        dns_subdomain(claim, "volume claim")
        entry: dict[str, Any]
        if isinstance(target, str):
            entry = {"path": target}
        elif isinstance(target, Mapping) and set(target) <= {"path", "read_only"}:
            entry = {"path": target.get("path")}
            if target.get("read_only"):
                entry["read_only"] = True
        else:
            raise ConfigError(f"volume {claim!r}: give a mount path or {{'path': ..., "
                              f"'read_only': True}}, got {target!r}: {example}")
        path = entry["path"]
        if not isinstance(path, str) or not path.startswith("/") or path.rstrip("/") == "":
            raise ConfigError(f"volume {claim!r}: mount path {path!r} must be an absolute "
                              f"path other than '/': {example}")
        path = path.rstrip("/")
        if path in paths or path == "/dev/shm":
            raise ConfigError(f"volume {claim!r}: mount path {path!r} is already used; give "
                              f"each volume its own path: {example}")
        paths.add(path)
        entry["path"] = path
        out[claim] = entry
    return out


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be a whole number >= {minimum}, got {value!r} "
                          f"(e.g. {what}={max(minimum, 2)})")
    return value


def _autoscale(value: object) -> dict[str, Any]:
    example = "autoscale={'min_scale': 0, 'max_scale': 4, 'concurrency': 8}"
    if value is True:
        return {"min_scale": 0}
    given = _mapping(value, "autoscale", example)
    unknown = sorted(set(given) - set(AUTOSCALE_KEYS))
    if unknown:
        raise ConfigError(f"autoscale has unknown key {unknown[0]!r} (known: "
                          f"{', '.join(AUTOSCALE_KEYS)}): {example}")
    out: dict[str, Any] = {"min_scale": _count(given.get("min_scale", 0), "min_scale", 0)}
    if given.get("max_scale") is not None:
        out["max_scale"] = _count(given["max_scale"], "max_scale", max(1, out["min_scale"]))
    if given.get("concurrency") is not None:
        out["concurrency"] = _count(given["concurrency"], "concurrency", 1)
    if given.get("scale_to_zero_after") is not None:
        out["scale_to_zero_after"] = parse_duration(given["scale_to_zero_after"])
    return out


def _optional_memory(value: object, what: str) -> int:
    try:
        parsed = parse_memory(value)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    assert parsed is not None
    return parsed


@dataclass(frozen=True)
class KubernetesOptions:
    """The Kubernetes fields of a compute, checked; JSON-shaped values, never None lists.

    Attributes:
        gpu_type: ``(label key, value)`` of the node label that picks the GPU, or None.
        node_selector: Node labels the pod must run on.
        tolerations: Tolerations as the API writes them (``key``, ``operator``...).
        priority_class_name: The pod's PriorityClass, or None.
        namespace: Where the compute's objects go, or None (the backend's namespace).
        service_account: The pod's ServiceAccount, or None (the namespace's default).
        labels: Extra labels of every object (never the identity labels).
        annotations: Extra annotations of every object.
        secrets: Secrets whose every key becomes an environment variable.
        secret_env: ``{"ENV": "secret/key"}``: one key of one Secret each.
        volumes: ``{claim: {"path": ..., "read_only"?: True}}``: PVCs to mount.
        shm_size: Bytes of ``/dev/shm``; None: the default; 0: none.
        memory_limit: The memory limit in bytes, or None (the memory request).
        image_pull_secrets: Secrets the kubelet pulls the image with.
        launch_timeout: Seconds from container start to answering, or None (default).
        replicas: Number of pods.
        autoscale: Knative scaling (``min_scale``, ``max_scale``, ``concurrency``,
            ``scale_to_zero_after``), or None (no Knative).
        distributed: ``"pytorch"`` or ``"ray"``, or None.
    """

    gpu_type: tuple[str, str] | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    priority_class_name: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    secret_env: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    shm_size: int | None = None
    memory_limit: int | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    launch_timeout: float | None = None
    replicas: int = 1
    autoscale: dict[str, Any] | None = None
    distributed: str | None = None

    __hash__ = None  # type: ignore[assignment]  # holds dicts; compare, do not hash

    @classmethod
    def parse(cls, **given: Any) -> KubernetesOptions:
        """Check what a user wrote (``Compute``'s keyword arguments; None: the default).

        Raises:
            ConfigError: One line naming the field and showing a valid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ConfigError(f"unknown Kubernetes option {unknown[0]!r} (known: "
                              f"{', '.join(sorted(known))})")
        g = {k: v for k, v in given.items() if v is not None}
        out: dict[str, Any] = {}
        if "gpu_type" in g:
            out["gpu_type"] = _gpu_type(g["gpu_type"])
        if "node_selector" in g:
            out["node_selector"] = _node_selector(g["node_selector"])
        if "tolerations" in g:
            items = g["tolerations"]
            if isinstance(items, Mapping) or not isinstance(items, list | tuple):
                raise ConfigError(f"tolerations must be a list of mappings, got {items!r}: "
                                  f"tolerations=[{_EXAMPLE_TOLERATION!r}]")
            out["tolerations"] = [_toleration(t) for t in items]
        for name in ("priority_class_name", "service_account"):
            if name in g:
                out[name] = dns_subdomain(g[name], name)
        if "namespace" in g:
            out["namespace"] = dns_label(g["namespace"], "namespace")
        for name in ("labels", "annotations"):
            if name in g:
                out[name] = _labels(g[name], name)
        if "secrets" in g:
            out["secrets"], env = _secrets(g["secrets"])
            out["secret_env"] = env
        if "secret_env" in g:  # the stored form
            _, env = _secrets([_mapping(g["secret_env"], "secret_env", "{'ENV': 'secret/key'}")])
            out["secret_env"] = {**out.get("secret_env", {}), **env}
        if "volumes" in g:
            out["volumes"] = _volumes(g["volumes"])
        if "shm_size" in g:
            shm = g["shm_size"]
            out["shm_size"] = 0 if shm in (0, "0", False) else _optional_memory(shm, "shm_size")
        if "memory_limit" in g:
            out["memory_limit"] = _optional_memory(g["memory_limit"], "memory_limit")
        if "image_pull_secrets" in g:
            names = _strings(g["image_pull_secrets"], "image_pull_secrets", "['regcred']")
            out["image_pull_secrets"] = [dns_subdomain(n, "image pull secret") for n in names]
        if "launch_timeout" in g:
            try:
                out["launch_timeout"] = parse_duration(g["launch_timeout"])
            except ConfigError as exc:
                raise ConfigError(f"launch_timeout: {exc}") from None
        if "replicas" in g:
            out["replicas"] = _count(g["replicas"], "replicas", 1)
        if "autoscale" in g and g["autoscale"] is not False:
            out["autoscale"] = _autoscale(g["autoscale"])
        if "distributed" in g:
            if g["distributed"] not in DISTRIBUTED:
                raise ConfigError(f"distributed must be 'pytorch' or 'ray', got "
                                  f"{g['distributed']!r} (e.g. distributed='pytorch', "
                                  "replicas=4)")
            out["distributed"] = g["distributed"]
        options = cls(**out)
        options._check_together()
        return options

    def _check_together(self) -> None:
        if self.autoscale is not None and (self.replicas > 1 or self.distributed):
            raise ConfigError("autoscale runs a Knative Service that sets its own replica "
                              "count: drop replicas/distributed, or use autoscale={'min_scale': "
                              f"{self.replicas}, 'max_scale': {max(self.replicas, 2)}}}")
        if self.gpu_type is not None and self.gpu_type[0] in self.node_selector:
            raise ConfigError(f"gpu_type and node_selector both set {self.gpu_type[0]!r}: "
                              "give it once")

    def check_spec(self, *, memory: int | None, gpus: int) -> None:
        """Check what depends on the spec's own fields (memory, gpus).

        Raises:
            ConfigError: For a memory limit below the request, or a gpu_type without gpus.
        """
        if self.memory_limit is not None and memory is not None and self.memory_limit < memory:
            raise ConfigError(f"memory_limit {format_bytes(self.memory_limit)} is below memory "
                              f"{format_bytes(memory)}: the limit must be at least the request "
                              f"(e.g. memory_limit={format_bytes(memory)!r})")
        if self.gpu_type is not None and gpus < 1:
            raise ConfigError(f"gpu_type={self.gpu_type[1]!r} needs gpus >= 1 "
                              f"(e.g. gpus=1, gpu_type={self.gpu_type[1]!r})")

    # ---- the spec's mapping ----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON form kept in ``ComputeSpec.kubernetes``; fields at their default left out."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default
            if value == default:
                continue
            if f.name == "gpu_type":
                value = f"{value[0]}={value[1]}"
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KubernetesOptions:
        """Inverse of :meth:`to_json` (checked again); unknown keys (a newer client's) ignored.

        Raises:
            ConfigError: When a stored value is not valid.
        """
        known = {f.name for f in fields(cls)}
        return cls.parse(**{k: v for k, v in dict(data).items() if k in known})

    @classmethod
    def from_spec(cls, spec: Any) -> KubernetesOptions:
        """The options of a :class:`~kubetorch_jupyter.core.spec.ComputeSpec`, checked.

        Raises:
            ConfigError: When the spec's ``kubernetes`` mapping holds an invalid value.
        """
        options = cls.from_json(spec.kubernetes)
        options.check_spec(memory=spec.memory, gpus=spec.gpus)
        return options

    # ---- derived ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The workload: ``knative`` (autoscale), ``ray``, ``distributed`` or ``deployment``."""
        if self.autoscale is not None:
            return "knative"
        if self.distributed == "ray":
            return "ray"
        if self.distributed == "pytorch" or self.replicas > 1:
            return "distributed"
        return "deployment"

    def shm_bytes(self, *, memory_limit: int | None, gpus: int) -> int:
        """Bytes of ``/dev/shm`` to mount (0: none), the default applied."""
        if self.shm_size is not None:
            return self.shm_size
        if gpus <= 0:
            return 0
        return min(DEFAULT_GPU_SHM, memory_limit // 2) if memory_limit else DEFAULT_GPU_SHM

    def compute_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``kt.Compute`` that give these options back."""
        out = self.to_json()
        if self.secret_env:
            out["secrets"] = [*self.secrets, dict(self.secret_env)]
            out.pop("secret_env")
        return out
