"""The batch/v1 and custom-resource controllers: Jobs, CronJobs, Knative Services, RayClusters.

See :mod:`.controllers` for what each makes; the shared helpers live there.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from .controllers import (
    CRONJOBS,
    DEPLOY,
    JOBS,
    KSVC,
    PODS,
    RAY,
    condition,
    is_active,
    is_ready,
    make_pod,
    owned,
    owner_ref,
    random_suffix,
    set_status,
    template_hash,
)
from .events import record_event
from .store import Store, now

__all__ = ["CRONJOBS", "JOBS", "KSVC", "RAY", "cronjob_status", "job", "knative", "raycluster",
           "trigger_cronjob"]

Obj = dict[str, Any]


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase", "Pending"))


def job(store: Store, j: Obj) -> None:
    """Run a Job's pods until it completes or fails."""
    meta, spec = j["metadata"], j.get("spec") or {}
    status = copy.deepcopy(j.get("status") or {})
    if any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
           for c in status.get("conditions") or []) or meta.get("deletionTimestamp"):
        return
    completions = spec.get("completions", 1 if spec.get("parallelism") is None else None)
    parallelism = spec.get("parallelism", 1)
    indexed = spec.get("completionMode") == "Indexed"
    pods = owned(store, PODS, j)
    succeeded_idx = {p["metadata"].get("annotations", {}).get(
        "batch.kubernetes.io/job-completion-index") for p in pods if _phase(p) == "Succeeded"}
    succeeded = len(succeeded_idx) if indexed else sum(_phase(p) == "Succeeded" for p in pods)
    failed = sum(_phase(p) == "Failed" for p in pods)
    active = [p for p in pods if is_active(p)]
    uid = meta["uid"]
    labels = {"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
              "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}
    template = spec.get("template") or {}
    status.setdefault("startTime", now())
    if failed > spec.get("backoffLimit", 6):
        for p in active:
            store.delete(PODS, meta["namespace"], p["metadata"]["name"])
        status["conditions"] = [
            condition("FailureTarget", True, "BackoffLimitExceeded",
                  "Job has reached the specified backoff limit"),
            condition("Failed", True, "BackoffLimitExceeded",
                  "Job has reached the specified backoff limit")]
    elif completions is not None and succeeded >= completions:
        status["conditions"] = [
            condition("SuccessCriteriaMet", True, "CompletionsReached", "Reached expected number "
                  "of succeeded pods"),
            condition("Complete", True, "CompletionsReached", "Reached expected number of "
                  "succeeded pods")]
        status["completionTime"] = now()
        record_event(store, j, "Completed", "Job completed", component="job-controller")
    else:
        room = parallelism - len(active)
        if indexed and completions is not None:
            busy = {p["metadata"].get("annotations", {}).get(
                "batch.kubernetes.io/job-completion-index") for p in active}
            todo = [str(i) for i in range(completions) if str(i) not in succeeded_idx | busy]
            for index in todo[:max(room, 0)]:
                tmpl = copy.deepcopy(template)
                tmpl.setdefault("metadata", {}).setdefault("annotations", {})[
                    "batch.kubernetes.io/job-completion-index"] = index
                make_pod(store, j, tmpl, f"{meta['name']}-{index}-{random_suffix()}",
                         {**labels, "batch.kubernetes.io/job-completion-index": index},
                         {"JOB_COMPLETION_INDEX": index})
        else:
            left = (completions - succeeded - len(active)) if completions is not None else (
                0 if succeeded else room)
            for _ in range(max(min(room, left), 0)):
                make_pod(store, j, template, f"{meta['name']}-{random_suffix()}", labels)
    active = [p for p in owned(store, PODS, j) if is_active(p)]
    status.update({"active": len(active), "succeeded": succeeded, "failed": failed,
                   "ready": sum(is_ready(p) for p in active), "terminating": 0})
    for k in ("active", "succeeded", "failed"):
        if not status[k]:
            del status[k]
    set_status(store, JOBS, j, status)


def trigger_cronjob(store: Store, ns: str, name: str) -> Obj:
    """Start the CronJob's job now, as its schedule would (``kubectl create job --from``)."""
    cj = store.get(CRONJOBS, ns, name)
    tmpl = (cj.get("spec") or {}).get("jobTemplate") or {}
    stamp = int(time.time() // 60)
    jmeta = copy.deepcopy(tmpl.get("metadata") or {})
    jname = f"{name}-{stamp}"
    while store.find(JOBS, ns, jname) is not None:
        stamp += 1
        jname = f"{name}-{stamp}"
    jmeta.update({"name": jname, "ownerReferences": [owner_ref(cj)]})
    jmeta.setdefault("annotations", {})["batch.kubernetes.io/cronjob-scheduled-timestamp"] = now()
    created = store.create(JOBS, ns, {"metadata": jmeta,
                                      "spec": copy.deepcopy(tmpl.get("spec") or {})})
    record_event(store, cj, "SuccessfulCreate", f"Created job {jname}",
                 component="cronjob-controller")
    cronjob_status(store, store.get(CRONJOBS, ns, name), scheduled=now())
    return created


def cronjob_status(store: Store, cj: Obj, scheduled: str | None = None) -> None:
    """A CronJob's ``active`` jobs, ``lastSuccessfulTime`` (and ``lastScheduleTime``)."""
    status = copy.deepcopy(cj.get("status") or {})
    jobs = owned(store, JOBS, cj)
    active = [j for j in jobs if not any(c["type"] in ("Complete", "Failed") and c["status"] ==
                                         "True" for c in (j.get("status") or {}).get(
                                             "conditions") or [])]
    status["active"] = [{"kind": "Job", "apiVersion": "batch/v1", "namespace":
                         j["metadata"]["namespace"], "name": j["metadata"]["name"],
                         "uid": j["metadata"]["uid"]} for j in active]
    if not status["active"]:
        del status["active"]
    succeeded = [str((j.get("status") or {}).get("completionTime")) for j in jobs
                 if any(c["type"] == "Complete" and c["status"] == "True"
                        for c in (j.get("status") or {}).get("conditions") or [])
                 and (j.get("status") or {}).get("completionTime")]
    if succeeded:  # the controller's record of the latest job that succeeded
        status["lastSuccessfulTime"] = max([*succeeded, status.get("lastSuccessfulTime", "")])
    if scheduled:
        status["lastScheduleTime"] = scheduled
    set_status(store, CRONJOBS, cj, status)


def knative(store: Store, ks: Obj) -> None:
    """A Knative Service's revision Deployment, and the Service's status."""
    meta, spec = ks["metadata"], ks.get("spec") or {}
    if meta.get("deletionTimestamp"):
        return
    name, ns = meta["name"], meta["namespace"]
    template = copy.deepcopy(spec.get("template") or {})
    h = template_hash(template)
    deps = owned(store, DEPLOY, ks)
    current = next((d for d in deps if (d["metadata"].get("annotations") or {}).get(
        "kubetorch.double/template-hash") == h), None)
    if current is None:
        number = 1 + len(deps)
        revision = f"{name}-{number:05d}"
        tmeta = template.setdefault("metadata", {})
        ann = tmeta.get("annotations") or {}
        # a revision starts at its initial scale (Knative's default: 1), at least its
        # minimum; a min-scale of 0 lets it scale to zero later, which the double never does
        minimum = ann.get("autoscaling.knative.dev/min-scale") or ann.get(
            "autoscaling.knative.dev/minScale") or "0"
        initial = ann.get("autoscaling.knative.dev/initial-scale") or ann.get(
            "autoscaling.knative.dev/initialScale") or "1"
        scale = max(int(minimum), int(initial))
        labels = {**(tmeta.get("labels") or {}), "serving.knative.dev/service": name,
                  "serving.knative.dev/configuration": name,
                  "serving.knative.dev/revision": revision}
        pod_spec = template.get("spec") or {}
        for c in pod_spec.get("containers") or []:
            port = str(((c.get("ports") or [{}])[0]).get("containerPort", 8080))
            env = {"PORT": port, "K_SERVICE": name, "K_CONFIGURATION": name,
                   "K_REVISION": revision}
            c["env"] = [{"name": k, "value": v} for k, v in env.items()] + (c.get("env") or [])
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                # Knative's webhook gives a probe without a port the container's port (its
                # queue-proxy probes the user container there); a kubelet needs one
                action = (c.get(kind) or {}).get("httpGet") or (c.get(kind) or {}).get(
                    "tcpSocket")
                if action is not None and "port" not in action:
                    action["port"] = int(port)
        store.create(DEPLOY, ns, {
            "metadata": {"name": f"{revision}-deployment", "labels": labels,
                         "annotations": {"kubetorch.double/template-hash": h},
                         "ownerReferences": [owner_ref(ks)]},
            "spec": {"replicas": int(scale), "selector": {"matchLabels": {
                "serving.knative.dev/revision": revision}},
                     "template": {"metadata": {"labels": labels,
                                               "annotations": tmeta.get("annotations") or {}},
                                  "spec": pod_spec}}})
        return
    revision = current["metadata"]["labels"]["serving.knative.dev/revision"]
    ready = (current.get("status") or {}).get("readyReplicas", 0) >= 1 or (
        current.get("spec") or {}).get("replicas") == 0
    if ready:
        for d in deps:
            if d is not current:
                store.delete(DEPLOY, ns, d["metadata"]["name"])
    status = copy.deepcopy(ks.get("status") or {})
    status.update({"observedGeneration": meta.get("generation", 1),
                   "latestCreatedRevisionName": revision,
                   "url": f"http://{name}.{ns}.example.com",
                   "address": {"url": f"http://{name}.{ns}.svc.cluster.local"}})
    if ready:
        status["latestReadyRevisionName"] = revision
        status["traffic"] = [{"revisionName": revision, "latestRevision": True, "percent": 100}]
    waiting = f'Configuration "{name}" is waiting for a Revision to become ready.'
    status["conditions"] = [
        condition("ConfigurationsReady", True if ready else None,
              "" if ready else "RevisionMissing", "" if ready else waiting),
        condition("Ready", True if ready else None, "" if ready else "RevisionMissing",
              "" if ready else waiting),
        condition("RoutesReady", True if ready else None, "" if ready else "RevisionMissing",
              "" if ready else waiting)]
    set_status(store, KSVC, ks, status)


def raycluster(store: Store, rc: Obj) -> None:
    """A RayCluster's head and worker pods, and its status."""
    meta, spec = rc["metadata"], rc.get("spec") or {}
    if meta.get("deletionTimestamp"):
        return
    name = meta["name"]
    base = {"ray.io/cluster": name, "ray.io/is-ray-node": "yes",
            "app.kubernetes.io/created-by": "kuberay-operator"}
    groups = [("headgroup", "head", (spec.get("headGroupSpec") or {}).get("template") or {}, 1)]
    for g in spec.get("workerGroupSpecs") or []:
        replicas = g.get("replicas", g.get("minReplicas", 1))
        if g.get("suspend"):
            replicas = 0
        groups.append((g.get("groupName", "workers"), "worker", g.get("template") or {},
                       replicas))
    pods = owned(store, PODS, rc)
    ready_workers = desired_workers = 0
    head = None
    for group, node_type, template, want in groups:
        labels = {**base, "ray.io/group": group, "ray.io/node-type": node_type}
        mine = [p for p in pods if p["metadata"]["labels"].get("ray.io/group") == group
                and is_active(p)]
        for _ in range(want - len(mine)):
            prefix = f"{name}-head-" if node_type == "head" else f"{name}-{group}-worker-"
            make_pod(store, rc, template, prefix + random_suffix(), labels,
                     {"RAY_CLUSTER_NAME": name})
        for p in mine[want:]:
            store.delete(PODS, meta["namespace"], p["metadata"]["name"])
        if node_type == "head":
            head = next((p for p in mine if is_ready(p)), None)
        else:
            desired_workers += want
            ready_workers += sum(is_ready(p) for p in mine)
    ready = head is not None and ready_workers >= desired_workers
    status: Obj = {"state": "ready" if ready else "", "desiredWorkerReplicas": desired_workers,
                   "readyWorkerReplicas": ready_workers, "availableWorkerReplicas":
                       ready_workers, "observedGeneration": meta.get("generation", 1),
                   "conditions": [
                       condition("HeadPodReady", head is not None, "HeadPodRunningAndReady" if head
                             else "HeadPodNotFound", ""),
                       condition("RayClusterProvisioned", ready, "AllPodRunningAndReadyFirstTime"
                             if ready else "RayClusterPodsProvisioning", "")]}
    if not status["state"]:
        del status["state"]
    if head is not None:
        status["head"] = {"podIP": head["status"].get("podIP"),
                          "podName": head["metadata"]["name"]}
    set_status(store, RAY, rc, status)



