"""The object store: resourceVersions, generations, watches, deletion and garbage collection.

Everything here runs on the double's event loop (one thread), so there are no locks.
Each write bumps one cluster-wide resourceVersion counter, as etcd's revision does;
objects carry ``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation`` (bumped
when anything outside ``metadata`` and ``status`` changes) and ``managedFields``. A write
that changes nothing keeps the resourceVersion and sends no event (a no-op apply).
Watches get ADDED/MODIFIED/DELETED events; the last :data:`HISTORY` events are kept so
a watch can resume from a resourceVersion (older ones get 410 Gone, as after compaction).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .merge import applied_conflicts, apply_merge
from .resources import ResourceType, by_kind, resource

__all__ = ["ApiError", "Store", "Watcher", "now"]

HISTORY = 20000
Obj = dict[str, Any]
Key = tuple[ResourceType, str, str]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAMES = {"namespaces", "services"}
_INITIAL_STATUS: dict[str, Obj] = {
    "StatefulSet": {"replicas": 0, "availableReplicas": 0}, "ReplicaSet": {"replicas": 0},
    "Namespace": {"phase": "Active"}, "PersistentVolumeClaim": {"phase": "Pending"},
    "Pod": {"phase": "Pending", "qosClass": "BestEffort"}}


def now(offset: float = 0) -> str:
    """An RFC 3339 timestamp in UTC, seconds precision, as the API server writes them."""
    t = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error the API answers with a ``kind: Status`` body."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
                 ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        """The ``Status`` object."""
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, rt: ResourceType, name: str) -> ApiError:
        """404 NotFound, worded as the real server words it."""
        what = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
        return cls(404, "NotFound", f'{what} "{name}" not found',
                   {"name": name, "group": rt.group, "kind": rt.plural})

    @classmethod
    def invalid(cls, rt: ResourceType, name: str, causes: list[str]) -> ApiError:
        """422 Invalid with the field errors."""
        return cls(422, "Invalid", f'{rt.kind} "{name}" is invalid: ' + ", ".join(causes),
                   {"name": name, "group": rt.group, "kind": rt.kind,
                    "causes": [{"message": c} for c in causes]})


@dataclass
class Watcher:
    """One open watch: events land in ``queue`` (None ends it)."""

    rt: ResourceType
    namespace: str | None
    match: Callable[[Obj], bool]
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)


def _fields_v1(cfg: Any) -> Any:
    """A ``FieldsV1`` set for an applied configuration (keyed list items by their key)."""
    if isinstance(cfg, dict):
        return {f"f:{k}": _fields_v1(v) for k, v in cfg.items()
                if k not in ("apiVersion", "kind")}
    if isinstance(cfg, list) and cfg and all(isinstance(i, dict) and "name" in i for i in cfg):
        return {f'k:{{"name":"{i["name"]}"}}': _fields_v1(i) for i in cfg}
    return {}


def _normalize(rt: ResourceType, obj: Obj) -> None:
    """What the API server does to a written object: a Secret's stringData becomes data."""
    if rt.kind == "Secret" and rt.group == "":
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj.setdefault("type", "Opaque")


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """Objects by resource, namespace and name, with watches and a change hook."""

    def __init__(self) -> None:
        self.objects: dict[Key, Obj] = {}
        self.applied: dict[Key, dict[str, Obj]] = {}
        self.revision = 0
        self.history: collections.deque[tuple[int, ResourceType, str, Obj]] = (
            collections.deque(maxlen=HISTORY))
        self.watchers: list[Watcher] = []
        self.on_change: list[Callable[[ResourceType, str, Obj], None]] = []

    # --- reading -------------------------------------------------------------------------
    def get(self, rt: ResourceType, ns: str, name: str) -> Obj:
        """A copy of the stored object.

        Raises:
            ApiError: 404 when there is none.
        """
        obj = self.objects.get((rt, ns, name))
        if obj is None:
            raise ApiError.not_found(rt, name)
        return copy.deepcopy(obj)

    def find(self, rt: ResourceType, ns: str, name: str) -> Obj | None:
        """The stored object itself (not a copy), or None."""
        return self.objects.get((rt, ns, name))

    def items(self, rt: ResourceType, ns: str | None = None) -> Iterator[Obj]:
        """The stored objects of one resource (in one namespace, or all), by name."""
        keys = sorted(k for k in self.objects if k[0] == rt and (ns is None or k[1] == ns))
        for k in keys:
            yield self.objects[k]

    def list_objects(self, rt: ResourceType, ns: str | None, match: Callable[[Obj], bool]
                     ) -> Obj:
        """A ``<Kind>List`` of copies, with the list's resourceVersion."""
        items = [copy.deepcopy(o) for o in self.items(rt, ns) if match(o)]
        for o in items:
            o.setdefault("apiVersion", rt.api_version)
            o.setdefault("kind", rt.kind)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.revision)}, "items": items}

    # --- writing -------------------------------------------------------------------------
    def _emit(self, rt: ResourceType, kind: str, obj: Obj) -> None:
        snap = copy.deepcopy(obj)
        self.history.append((self.revision, rt, kind, snap))
        for w in list(self.watchers):
            if w.rt == rt and (w.namespace is None or w.namespace == obj["metadata"].get(
                    "namespace", "")) and w.match(snap):
                w.queue.put_nowait((kind, snap))
        for hook in list(self.on_change):
            hook(rt, kind, snap)

    def _bump(self, obj: Obj) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def _validate(self, rt: ResourceType, ns: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        pattern = _DNS_LABEL if rt.plural in _LABEL_NAMES and rt.builtin else _DNS_SUBDOMAIN
        if not name:
            raise ApiError.invalid(rt, "", ["metadata.name: Required value: name or "
                                                "generateName is required"])
        if len(name) > (63 if pattern is _DNS_LABEL else 253) or not pattern.match(name):
            raise ApiError.invalid(rt, name, [
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 '
                f'{"label" if pattern is _DNS_LABEL else "subdomain"} must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character"])
        if rt.namespaced and self.find(resource("", "v1", "namespaces"), "", ns) is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                           {"name": ns, "kind": "namespaces"})
        if rt.kind in ("Deployment", "StatefulSet", "ReplicaSet") and rt.group == "apps":
            self._validate_workload(rt, name, obj)

    def _validate_workload(self, rt: ResourceType, name: str, obj: Obj) -> None:
        from .selectors import match_label_selector_obj

        spec = obj.get("spec") or {}
        causes = []
        selector = spec.get("selector")
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector:
            causes.append("spec.selector: Required value")
        elif not match_label_selector_obj(selector, labels):
            causes.append(f"spec.template.metadata.labels: Invalid value: {labels}: "
                          "`selector` does not match template `labels`")
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            causes.append("spec.template.spec.containers: Required value")
        for n, c in enumerate(containers):
            if not c.get("image"):
                causes.append(f"spec.template.spec.containers[{n}].image: Required value")
            if not c.get("name"):
                causes.append(f"spec.template.spec.containers[{n}].name: Required value")
        if causes:
            raise ApiError.invalid(rt, name, causes)

    def create(self, rt: ResourceType, ns: str, obj: Obj, manager: str | None = None,
               operation: str = "Update") -> Obj:
        """Store a new object (answering 409 AlreadyExists if its name is taken)."""
        obj = copy.deepcopy(obj)
        _normalize(rt, obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if rt.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
            ns = ""
        self._validate(rt, ns, obj)
        name = meta["name"]
        if (rt, ns, name) in self.objects:
            what = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
            raise ApiError(409, "AlreadyExists", f'{what} "{name}" already exists',
                           {"name": name, "group": rt.group, "kind": rt.plural})
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        for k in ("deletionTimestamp", "resourceVersion", "selfLink"):
            meta.pop(k, None)
        if rt.has_status or rt.kind == "Pod":
            meta["generation"] = 1
        if manager:
            meta["managedFields"] = [self._managed(rt, manager, operation, obj)]
        if rt.has_status:  # what Go's zero values serialize to (non-omitempty fields)
            obj["status"] = obj.get("status") if rt.kind == "Node" else copy.deepcopy(
                _INITIAL_STATUS.get(rt.kind, {}))
        self._bump(obj)
        self.objects[(rt, ns, name)] = obj
        self._emit(rt, "ADDED", obj)
        return copy.deepcopy(obj)

    def _managed(self, rt: ResourceType, manager: str, operation: str, cfg: Obj) -> Obj:
        return {"manager": manager, "operation": operation, "apiVersion": rt.api_version,
                "time": now(), "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(cfg)}

    def commit(self, rt: ResourceType, new: Obj, *, status_only: bool = False,
               manager: str | None = None, operation: str = "Update") -> Obj:
        """Write ``new`` over the stored object with its name; bump only if it changed.

        Args:
            rt: Its resource.
            new: The whole new object.
            status_only: Keep everything but ``status`` as stored (a ``/status`` write).
            manager: Field manager to record.
            operation: ``Apply`` or ``Update`` for managedFields.
        """
        meta = new.get("metadata") or {}
        ns = meta.get("namespace", "") if rt.namespaced else ""
        key = (rt, ns, meta.get("name", ""))
        old = self.objects.get(key)
        if old is None:
            raise ApiError.not_found(rt, meta.get("name", ""))
        new = copy.deepcopy(new)
        _normalize(rt, new)
        if status_only:
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status", {})
            new = merged
        elif rt.has_status:
            new["status"] = copy.deepcopy(old.get("status", {}))
        nm = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "namespace", "name", "generation",
                  "deletionTimestamp", "deletionGracePeriodSeconds"):
            if k in old["metadata"]:
                nm[k] = old["metadata"][k]
            else:
                nm.pop(k, None)
        nm["managedFields"] = old["metadata"].get("managedFields", [])
        nm["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        if new == old:
            return copy.deepcopy(old)
        if "generation" in nm and _spec_part(new) != _spec_part(old):
            nm["generation"] = nm["generation"] + 1
        if manager:
            mf = [m for m in nm["managedFields"]
                  if not (m["manager"] == manager and m["operation"] == operation)]
            cfg = self.applied.get(key, {}).get(manager, new) if operation == "Apply" else new
            nm["managedFields"] = [*mf, self._managed(rt, manager, operation, cfg)]
        self._bump(new)
        self.objects[key] = new
        if nm.get("deletionTimestamp") and not nm.get("finalizers"):
            self.remove(rt, ns, nm["name"])
            return copy.deepcopy(new)
        self._emit(rt, "MODIFIED", new)
        return copy.deepcopy(new)

    def apply(self, rt: ResourceType, ns: str, name: str, cfg: Obj, manager: str, force: bool
              ) -> tuple[Obj, bool]:
        """Server-side apply ``cfg`` as ``manager``; returns (object, created)."""
        if (cfg.get("metadata") or {}).get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object "
                           f"({cfg['metadata']['name']}) does not match the name on the URL "
                           f"({name})")
        cfg = copy.deepcopy(cfg)
        cfg.setdefault("metadata", {})["name"] = name
        if rt.namespaced:
            cfg["metadata"]["namespace"] = ns
        key = (rt, ns if rt.namespaced else "", name)
        if cfg.get("kind") not in (None, rt.kind) or cfg.get("apiVersion") not in (
                None, rt.api_version):
            raise ApiError(400, "BadRequest", f"apply of {cfg.get('apiVersion')}/"
                           f"{cfg.get('kind')} to {rt.api_version}/{rt.kind} is not allowed")
        live = self.objects.get(key)
        if live is None:
            obj = self.create(rt, ns, cfg, manager, "Apply")
            self.applied[key] = {manager: cfg}
            return obj, True
        managers = self.applied.setdefault(key, {})
        others = {m: c for m, c in managers.items() if m != manager}
        if not force and (conflicts := applied_conflicts(live, cfg, others, rt.builtin)):
            raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict"
                           f"{'s' if len(conflicts) > 1 else ''}: " + "; ".join(conflicts))
        if rt.has_status:
            cfg.pop("status", None)
        merged = apply_merge(live, managers.get(manager), cfg, list(others.values()),
                             rt.builtin)
        managers[manager] = cfg
        return self.commit(rt, merged, manager=manager, operation="Apply"), False

    # --- deleting ------------------------------------------------------------------------
    def delete(self, rt: ResourceType, ns: str, name: str, propagation: str | None = None,
               grace: int | None = None) -> tuple[Obj, bool]:
        """Delete as the API does; returns (the object, whether it is gone already).

        Pods that run on a node are deleted gracefully (``deletionTimestamp`` now, the
        kubelet removes them when their containers stopped); ``Foreground`` keeps the
        owner until its dependents are gone; ``Orphan`` leaves them without it.
        """
        obj = self.objects.get((rt, ns, name))
        if obj is None:
            raise ApiError.not_found(rt, name)
        meta = obj["metadata"]
        propagation = propagation or "Background"
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise ApiError(400, "BadRequest",
                           f"propagationPolicy {propagation!r}: supported values: "
                           '"Orphan", "Foreground", "Background"')
        if meta.get("deletionTimestamp"):
            return copy.deepcopy(obj), False
        graceful = rt.kind == "Pod" and (obj.get("spec") or {}).get("nodeName") and (
            (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        if rt.kind == "Pod":
            spec_grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            grace = spec_grace if grace is None else grace
            graceful = graceful and grace > 0
        if propagation == "Orphan":
            self._orphan(meta["uid"])
        if graceful or propagation == "Foreground" or meta.get("finalizers") or (
                rt.kind == "Namespace"):
            new = copy.deepcopy(obj)
            nm = new["metadata"]
            if rt.kind == "Namespace":
                nm["finalizers"] = ["kubernetes"]
            nm["deletionTimestamp"] = now(grace if graceful and grace else 0)
            if graceful:
                nm["deletionGracePeriodSeconds"] = grace
            if propagation == "Foreground":
                nm["finalizers"] = [*nm.get("finalizers", []), "foregroundDeletion"]
            self._bump(new)
            self.objects[(rt, ns, name)] = new
            self._emit(rt, "MODIFIED", new)
            return copy.deepcopy(new), False
        return self.remove(rt, ns, name), True

    def _orphan(self, uid: str) -> None:
        for (rt, _ns, _n), o in list(self.objects.items()):
            refs = o["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                new = copy.deepcopy(o)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                self._bump(new)
                self.objects[(rt, _ns, _n)] = new
                self._emit(rt, "MODIFIED", new)

    def remove(self, rt: ResourceType, ns: str, name: str) -> Obj:
        """Drop the object now (no grace), then collect what it owned."""
        obj = self.objects.pop((rt, ns, name))
        self.applied.pop((rt, ns, name), None)
        self._bump(obj)
        self._emit(rt, "DELETED", obj)
        self.collect(obj["metadata"]["uid"])
        return copy.deepcopy(obj)

    def dependents(self, uid: str) -> list[tuple[ResourceType, Obj]]:
        """Objects with an ownerReference to ``uid``."""
        return [(k[0], o) for k, o in self.objects.items()
                if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]

    def owner_exists(self, ref: dict[str, Any], ns: str) -> bool:
        """Whether the owner an ownerReference names still exists (same uid)."""
        rt = by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
        if rt is None:
            return False
        o = self.objects.get((rt, ns if rt.namespaced else "", ref.get("name", "")))
        return o is not None and o["metadata"]["uid"] == ref.get("uid")

    def collect(self, uid: str) -> None:
        """Background garbage collection: dependents whose owners are all gone go too."""
        for rt, dep in self.dependents(uid):
            meta = dep["metadata"]
            refs = meta.get("ownerReferences") or []
            if any(r.get("uid") != uid and self.owner_exists(r, meta.get("namespace", ""))
                   for r in refs):
                continue
            key = (rt, meta.get("namespace", ""), meta["name"])
            if key in self.objects:
                self.delete(*key)

    # --- watching ------------------------------------------------------------------------
    def watch(self, rt: ResourceType, ns: str | None, match: Callable[[Obj], bool],
              resource_version: str | None) -> Watcher:
        """Open a watch from ``resource_version`` (None or "0": the current state first).

        Raises:
            ApiError: 410 Gone when that version is older than the kept history.
        """
        w = Watcher(rt, ns, match)
        if resource_version in (None, "", "0"):
            for o in self.items(rt, ns):
                if match(o):
                    w.queue.put_nowait(("ADDED", copy.deepcopy(o)))
        else:
            try:
                since = int(resource_version)
            except ValueError as exc:
                raise ApiError(400, "BadRequest",
                               f"invalid resource version {resource_version!r}") from exc
            oldest = self.history[0][0] if self.history else self.revision + 1
            if since < oldest - 1 and since < self.revision:
                raise ApiError(410, "Expired",
                               f"too old resource version: {since} ({oldest - 1})")
            for rev, hrt, kind, o in self.history:
                if rev > since and hrt == rt and (ns is None or o["metadata"].get(
                        "namespace", "") == ns) and match(o):
                    w.queue.put_nowait((kind, copy.deepcopy(o)))
        self.watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        """Close a watch."""
        if w in self.watchers:
            self.watchers.remove(w)
