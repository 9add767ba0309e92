"""One reconcile pass: namespaces, foreground deletion, every controller, the scheduler.

The double runs a pass after every change until a pass changes nothing, as the real
controllers converge (they only write what differs, so a quiet cluster stays quiet).
"""

from __future__ import annotations

import copy
from typing import Any

from . import scheduler
from .controllers import (
    DEPLOY,
    NAMESPACES,
    NODES,
    PODS,
    RS,
    STS,
    deployment,
    replicaset,
    statefulset,
)
from .events import record_event
from .faults import Faults
from .store import Store, now
from .workloads import CRONJOBS, JOBS, KSVC, RAY, cronjob_status, job, knative, raycluster

__all__ = ["reconcile"]

Obj = dict[str, Any]


def reconcile(store: Store, faults: Faults) -> None:
    """One pass of every controller and the scheduler."""
    _namespaces(store)
    _foreground(store)
    for rt, fn in ((DEPLOY, deployment), (RS, replicaset), (STS, statefulset),
                   (JOBS, job), (KSVC, knative), (RAY, raycluster), (CRONJOBS, cronjob_status)):
        for obj in list(store.items(rt)):
            if store.find(rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"]):
                fn(store, obj)
    _schedule(store, faults)


def _namespaces(store: Store) -> None:
    from .resources import RESOURCES

    for ns in list(store.items(NAMESPACES)):
        name = ns["metadata"]["name"]
        if not ns["metadata"].get("deletionTimestamp"):
            continue
        if (ns.get("status") or {}).get("phase") != "Terminating":
            store.commit(NAMESPACES, {**ns, "status": {"phase": "Terminating"}},
                         status_only=True)
        left = 0
        for rt in RESOURCES:
            if rt.namespaced:
                for o in list(store.items(rt, name)):
                    left += 1
                    if not o["metadata"].get("deletionTimestamp"):
                        store.delete(rt, name, o["metadata"]["name"])
        if not left:
            ns = store.find(NAMESPACES, "", name) or ns
            store.commit(NAMESPACES, {**ns, "metadata": {**ns["metadata"], "finalizers": []}})


def _foreground(store: Store) -> None:
    for (rt, _ns, _name), o in list(store.objects.items()):
        meta = o["metadata"]
        if not meta.get("deletionTimestamp") or "foregroundDeletion" not in (
                meta.get("finalizers") or []):
            continue
        deps = store.dependents(meta["uid"])
        for drt, d in deps:
            if not d["metadata"].get("deletionTimestamp"):
                store.delete(drt, d["metadata"].get("namespace", ""), d["metadata"]["name"],
                             "Foreground")
        if not deps:
            fin = [f for f in meta.get("finalizers") or [] if f != "foregroundDeletion"]
            store.commit(rt, {**o, "metadata": {**meta, "finalizers": fin}})


def _schedule(store: Store, faults: Faults) -> None:
    nodes = list(store.items(NODES))
    bound = [p for p in store.items(PODS) if (p.get("spec") or {}).get("nodeName") and (
        p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    for pod in list(store.items(PODS)):
        spec = pod.get("spec") or {}
        if spec.get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            continue
        if faults.held(pod, "Pending"):
            continue
        message = faults.unschedulable(pod)
        node = None
        if message is None:
            node, message = scheduler.fit(pod, nodes, bound)
        if node is not None:
            new = copy.deepcopy(pod)
            new["spec"]["nodeName"] = node
            store.commit(PODS, new)
            bound.append(new)
            record_event(store, pod, "Scheduled", f"Successfully assigned "
                         f"{pod['metadata']['namespace']}/{pod['metadata']['name']} to {node}",
                         component="default-scheduler")
            continue
        cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastProbeTime": None}
        old = (pod.get("status") or {}).get("conditions") or []
        if old and old[0].get("message") == message:
            continue
        cond["lastTransitionTime"] = now()
        store.commit(PODS, {**pod, "status": {"phase": "Pending", "conditions": [cond]}},
                     status_only=True)
        record_event(store, pod, "FailedScheduling", message, "Warning", "default-scheduler")
