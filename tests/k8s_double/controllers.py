"""The apps/v1 controllers (and what every controller shares): workloads become pods.

The reconcile pass (:mod:`.reconcile`) calls these after every change:

- **Deployment** -> a ReplicaSet ``<deploy>-<pod-template-hash>`` per template ->
  pods ``<rs>-<5 chars>`` (``pod-template-hash`` label, ownerReferences). A new template
  scales the old ReplicaSet to 0 once the new one is fully ready (a rolling update with
  100% surge; ``Recreate`` removes the old pods first). Status: ``replicas``,
  ``updatedReplicas``, ``readyReplicas``, ``availableReplicas``, ``unavailableReplicas``,
  ``observedGeneration``, conditions ``Available`` and ``Progressing``.
- **StatefulSet** -> pods ``<sts>-<ordinal>`` (labels ``apps.kubernetes.io/pod-index``,
  ``statefulset.kubernetes.io/pod-name``, ``controller-revision-hash``; ``hostname`` and
  ``subdomain``), one at a time in order (``OrderedReady``) or all at once (``Parallel``);
  a PVC per ``volumeClaimTemplates`` entry and ordinal; failed pods are replaced.
- Jobs, CronJobs, Knative Services and RayClusters: :mod:`.workloads`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

from .events import record_event
from .resources import ResourceType, resource
from .store import Store, now

__all__ = ["deployment", "make_pod", "owned", "replicaset", "statefulset"]

Obj = dict[str, Any]


def _rt(group: str, plural: str) -> ResourceType:
    return resource(group, "v1", plural)


PODS, NODES, NAMESPACES, PVCS = (_rt("", "pods"), _rt("", "nodes"), _rt("", "namespaces"),
                                 _rt("", "persistentvolumeclaims"))
DEPLOY, RS, STS = _rt("apps", "deployments"), _rt("apps", "replicasets"), _rt("apps",
                                                                            "statefulsets")
JOBS, CRONJOBS = _rt("batch", "jobs"), _rt("batch", "cronjobs")
KSVC, RAY = _rt("serving.knative.dev", "services"), _rt("ray.io", "rayclusters")
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(obj: Any, n: int = 10) -> str:
    num = int(hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest(), 16)
    out = ""
    while len(out) < n:
        num, r = divmod(num, len(_ALPHABET))
        out += _ALPHABET[r]
    return out


def random_suffix() -> str:
    return "".join(random.choice(_ALPHABET) for _ in range(5))


def owner_ref(owner: Obj) -> Obj:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}


def owned(store: Store, rt: ResourceType, owner: Obj) -> list[Obj]:
    """Objects of ``rt`` controlled by ``owner``."""
    uid, ns = owner["metadata"]["uid"], owner["metadata"].get("namespace")
    return [o for o in store.items(rt, ns)
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]


def is_active(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get(
        "phase") not in ("Succeeded", "Failed")


def is_ready(pod: Obj) -> bool:
    return is_active(pod) and any(c.get("type") == "Ready" and c.get("status") == "True"
                                for c in (pod.get("status") or {}).get("conditions") or [])


def make_pod(store: Store, owner: Obj, template: Obj, name: str, labels: dict[str, str],
             env: dict[str, str] | None = None) -> Obj:
    """Create a pod from a pod template, owned by ``owner``."""
    tmeta = template.get("metadata") or {}
    spec = copy.deepcopy(template.get("spec") or {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    for c in spec.get("containers") or []:
        c.setdefault("imagePullPolicy", "IfNotPresent")
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        if env:
            c["env"] = [{"name": k, "value": v} for k, v in env.items()] + (c.get("env") or [])
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {**(tmeta.get("labels") or {}), **labels},
                        "annotations": dict(tmeta.get("annotations") or {}),
                        "ownerReferences": [owner_ref(owner)]},
           "spec": spec}
    created = store.create(PODS, owner["metadata"]["namespace"], pod)
    record_event(store, owner, "SuccessfulCreate", f"Created pod: {name}",
                 component=f"{owner['kind'].lower()}-controller")
    return created


def set_status(store: Store, rt: ResourceType, obj: Obj, status: Obj) -> None:
    old = obj.get("status") or {}
    conds = {c["type"]: c for c in old.get("conditions") or []}
    for c in status.get("conditions") or []:
        prev = conds.get(c["type"])
        if prev and prev.get("status") == c["status"]:
            c["lastTransitionTime"] = prev.get("lastTransitionTime", now())
            same = prev.get("reason") == c.get("reason") and prev.get("message") == c.get(
                "message")
            c["lastUpdateTime"] = prev.get("lastUpdateTime", now()) if same else now()
        else:
            c["lastTransitionTime"] = c["lastUpdateTime"] = now()
        if rt not in (DEPLOY,):
            c.pop("lastUpdateTime", None)
    if status != old:
        store.commit(rt, {**obj, "status": status}, status_only=True)


def condition(type_: str, ok: bool | None, reason: str, message: str) -> Obj:
    return {"type": type_, "status": "Unknown" if ok is None else ("True" if ok else "False"),
            "reason": reason, "message": message}


def _scale_pods(store: Store, owner: Obj, pods: list[Obj], want: int, template: Obj,
                labels: dict[str, str], prefix: str, env: dict[str, str] | None = None) -> None:
    active = [p for p in pods if is_active(p)]
    for _ in range(want - len(active)):
        make_pod(store, owner, template, f"{prefix}{random_suffix()}", labels, env)
    if len(active) > want:
        victims = sorted(active, key=lambda p: (is_ready(p), p["metadata"]["creationTimestamp"]))
        for p in victims[: len(active) - want]:
            store.delete(PODS, p["metadata"]["namespace"], p["metadata"]["name"])


def replicaset(store: Store, rs: Obj) -> None:
    spec = rs.get("spec") or {}
    pods = owned(store, PODS, rs)
    template = spec.get("template") or {}
    labels = {"pod-template-hash": (rs["metadata"].get("labels") or {}).get(
        "pod-template-hash", "")}
    if not rs["metadata"].get("deletionTimestamp"):
        _scale_pods(store, rs, pods, spec.get("replicas", 1), template, labels,
                    f"{rs['metadata']['name']}-")
    pods = [p for p in owned(store, PODS, rs) if is_active(p)]
    ready = sum(is_ready(p) for p in pods)
    set_status(store, RS, rs, {"replicas": len(pods), "fullyLabeledReplicas": len(pods),
                                "readyReplicas": ready, "availableReplicas": ready,
                                "observedGeneration": rs["metadata"].get("generation", 1)})


def deployment(store: Store, d: Obj) -> None:
    meta, spec = d["metadata"], d.get("spec") or {}
    if meta.get("deletionTimestamp"):
        return
    want = spec.get("replicas", 1)
    template = spec.get("template") or {}
    h = template_hash(template)
    name = f"{meta['name']}-{h}"
    sets = owned(store, RS, d)
    new = next((r for r in sets if r["metadata"]["name"] == name), None)
    old = [r for r in sets if r["metadata"]["name"] != name]
    recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
    old_pods = sum((r.get("status") or {}).get("replicas", 0) for r in old)
    if new is None and not (recreate and old_pods):
        revision = 1 + max([int((r["metadata"].get("annotations") or {}).get(
            "deployment.kubernetes.io/revision", 0)) for r in sets] or [0])
        tmpl = copy.deepcopy(template)
        tmpl.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = h
        new = store.create(RS, meta["namespace"], {
            "metadata": {"name": name, "labels": tmpl["metadata"]["labels"],
                         "annotations": {"deployment.kubernetes.io/revision": str(revision),
                                         "deployment.kubernetes.io/desired-replicas":
                                             str(want)},
                         "ownerReferences": [owner_ref(d)]},
            "spec": {"replicas": want, "selector": selector, "template": tmpl}})
        record_event(store, d, "ScalingReplicaSet",
                     f"Scaled up replica set {name} from 0 to {want}",
                     component="deployment-controller")
    elif new is not None and (new.get("spec") or {}).get("replicas") != want:
        store.commit(RS, {**new, "spec": {**new["spec"], "replicas": want}})
    new_status = (new or {}).get("status") or {}
    done = new is not None and new_status.get("readyReplicas", 0) >= want
    for r in old:
        if (recreate or done) and (r.get("spec") or {}).get("replicas", 0) != 0:
            store.commit(RS, {**r, "spec": {**r["spec"], "replicas": 0}})
    total = sum((r.get("status") or {}).get("replicas", 0) for r in owned(store, RS, d))
    ready = sum((r.get("status") or {}).get("readyReplicas", 0) for r in owned(store, RS, d))
    surge = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    max_unavailable = _percent(surge.get("maxUnavailable", "25%"), want)
    available = ready >= want - max_unavailable
    rs_name = name
    progressing = (condition("Progressing", True, "NewReplicaSetAvailable",
                         f'ReplicaSet "{rs_name}" has successfully progressed.')
                   if done and not any((r.get("status") or {}).get("replicas") for r in old)
                   else condition("Progressing", True, "ReplicaSetUpdated",
                              f'ReplicaSet "{rs_name}" is progressing.'))
    status = {"observedGeneration": meta.get("generation", 1), "replicas": total,
              "updatedReplicas": new_status.get("replicas", 0), "readyReplicas": ready,
              "availableReplicas": ready, "conditions": [
                  condition("Available", available, "MinimumReplicasAvailable" if available
                        else "MinimumReplicasUnavailable", "Deployment has minimum availability."
                        if available else "Deployment does not have minimum availability."),
                  progressing]}
    if want - ready > 0:
        status["unavailableReplicas"] = want - ready
    set_status(store, DEPLOY, d, status)


def _percent(value: Any, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return int(total * int(value[:-1]) / 100)
    return int(value)


def statefulset(store: Store, s: Obj) -> None:
    meta, spec = s["metadata"], s.get("spec") or {}
    want, name = spec.get("replicas", 1), meta["name"]
    template = spec.get("template") or {}
    revision = f"{name}-{template_hash(template)}"
    pods = {p["metadata"]["name"]: p for p in owned(store, PODS, s)}
    parallel = spec.get("podManagementPolicy") == "Parallel"
    if not meta.get("deletionTimestamp"):
        for i in range(want):
            pname = f"{name}-{i}"
            pod = pods.get(pname)
            if pod is not None and (pod.get("status") or {}).get("phase") == "Failed" and (
                    not pod["metadata"].get("deletionTimestamp")):
                store.delete(PODS, meta["namespace"], pname)
                break
            if pod is None:
                tmpl = copy.deepcopy(template)
                tspec = tmpl.setdefault("spec", {})
                tspec.setdefault("hostname", pname)
                if spec.get("serviceName"):
                    tspec.setdefault("subdomain", spec["serviceName"])
                for claim in spec.get("volumeClaimTemplates") or []:
                    cname = f"{claim['metadata']['name']}-{pname}"
                    if store.find(PVCS, meta["namespace"], cname) is None:
                        pvc = store.create(PVCS, meta["namespace"], {
                            "metadata": {"name": cname, "labels": dict(
                                (tmpl.get("metadata") or {}).get("labels") or {})},
                            "spec": claim.get("spec") or {}})
                        store.commit(PVCS, {**pvc, "status": {"phase": "Bound"}},
                                     status_only=True)
                    vols = tspec.setdefault("volumes", [])
                    if not any(v["name"] == claim["metadata"]["name"] for v in vols):
                        vols.append({"name": claim["metadata"]["name"],
                                     "persistentVolumeClaim": {"claimName": cname}})
                make_pod(store, s, tmpl, pname, {
                    "apps.kubernetes.io/pod-index": str(i),
                    "statefulset.kubernetes.io/pod-name": pname,
                    "controller-revision-hash": revision})
                if not parallel:
                    break
            elif not parallel and not is_ready(pod):
                break
        for pname, pod in pods.items():
            index = int(pod["metadata"]["labels"].get("apps.kubernetes.io/pod-index", 0))
            if index >= want and is_active(pod):
                store.delete(PODS, meta["namespace"], pname)
        stale = [p for p in pods.values() if is_active(p) and p["metadata"]["labels"].get(
            "controller-revision-hash") != revision]
        if stale and all(is_ready(p) for p in pods.values() if is_active(p)):
            victim = max(stale, key=lambda p: int(p["metadata"]["labels"].get(
                "apps.kubernetes.io/pod-index", 0)))
            store.delete(PODS, meta["namespace"], victim["metadata"]["name"])
    live = [p for p in owned(store, PODS, s) if is_active(p)]
    ready = sum(is_ready(p) for p in live)
    updated = sum(p["metadata"]["labels"].get("controller-revision-hash") == revision
                  for p in live)
    set_status(store, STS, s, {
        "observedGeneration": meta.get("generation", 1), "replicas": len(live),
        "readyReplicas": ready, "availableReplicas": ready, "currentReplicas": updated,
        "updatedReplicas": updated, "currentRevision": revision, "updateRevision": revision,
        "collisionCount": 0})
