"""The API resources the double serves, and the discovery documents that describe them.

One :class:`ResourceType` per resource: its group/version, plural, kind, scope and
subresources. Discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>``)
is generated from the same table, so the official client's dynamic client finds
exactly what the routes serve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RESOURCES", "ResourceType", "api_group_list", "api_resource_list", "by_kind", "find",
           "resource"]


@dataclass(frozen=True)
class ResourceType:
    """One served resource.

    Attributes:
        group: API group ("" for core).
        version: API version.
        plural: The URL segment (``deployments``).
        kind: The object kind (``Deployment``).
        namespaced: Whether objects live in a namespace.
        subresources: Served subresources (``status``, ``scale``, ``log``, ``portforward``).
        builtin: Whether lists merge by the built-in merge keys (custom resources: atomic).
        short_names: kubectl's short names, for discovery.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    builtin: bool = True
    short_names: tuple[str, ...] = field(default=())

    @property
    def api_version(self) -> str:
        """``v1`` or ``group/version``, as objects carry it."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def has_status(self) -> bool:
        """Whether status is a subresource (writes to the main resource leave it alone)."""
        return "status" in self.subresources

    @property
    def singular(self) -> str:
        """The singular name discovery reports."""
        return self.kind.lower()


_S = ("status",)
RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, _S, short_names=("ns",)),
    ResourceType("", "v1", "nodes", "Node", False, _S, short_names=("no",)),
    ResourceType("", "v1", "pods", "Pod", True, ("status", "log", "portforward"),
                 short_names=("po",)),
    ResourceType("", "v1", "services", "Service", True, _S, short_names=("svc",)),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "events", "Event", short_names=("ev",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, _S,
                 short_names=("pvc",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("status", "scale"),
                 short_names=("deploy",)),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, ("status", "scale"),
                 short_names=("rs",)),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, ("status", "scale"),
                 short_names=("sts",)),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ResourceType("batch", "v1", "jobs", "Job", True, _S),
    ResourceType("batch", "v1", "cronjobs", "CronJob", True, _S, short_names=("cj",)),
    ResourceType("serving.knative.dev", "v1", "services", "Service", True, _S, builtin=False,
                 short_names=("ksvc",)),
    ResourceType("ray.io", "v1", "rayclusters", "RayCluster", True, _S, builtin=False),
)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}


def find(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource served at ``group/version/plural``, or None."""
    return _BY_PATH.get((group, version, plural))


def resource(group: str, version: str, plural: str) -> ResourceType:
    """The resource served at ``group/version/plural`` (a KeyError if none is)."""
    return _BY_PATH[(group, version, plural)]


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    """The resource of objects of ``apiVersion``/``kind`` (for ownerReferences)."""
    for r in RESOURCES:
        if r.api_version == api_version and r.kind == kind:
            return r
    return None


_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """The ``APIResourceList`` of one group version, or None when none is served."""
    rows: list[dict[str, Any]] = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        rows.append({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                     "kind": r.kind, "verbs": _VERBS, "shortNames": list(r.short_names)})
        for sub in r.subresources:
            kind = {"scale": "Scale", "log": "Pod", "portforward": "PodPortForwardOptions"}.get(
                sub, r.kind)
            verbs = {"log": ["get"], "portforward": ["create", "get"],
                     }.get(sub, ["get", "patch", "update"])
            rows.append({"name": f"{r.plural}/{sub}", "singularName": "",
                         "namespaced": r.namespaced, "kind": kind, "verbs": verbs})
    if not rows:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": rows}


def api_group_list() -> dict[str, Any]:
    """The ``APIGroupList`` served at ``/apis`` (every group but core)."""
    groups: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in groups.setdefault(r.group, []):
            groups[r.group].append(r.version)
    out = []
    for name, versions in groups.items():
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        out.append({"name": name, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}
