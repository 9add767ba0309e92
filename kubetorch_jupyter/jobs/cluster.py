"""A Kubernetes job in its cluster: apply its objects, read its CronJob, run it, remove it.

``kt export --backend kubernetes`` calls :func:`apply_job` with the objects of
:func:`.kubernetes.render_job`, in their order, through the Kubernetes backend's client
(:func:`~kubetorch_jupyter.backends.kubernetes.client.load`: ``KT_KUBECONFIG``,
``KT_KUBE_CONTEXT``, ``KT_NAMESPACE``) and its server-side apply (one field manager).
An apply that fails part way deletes what it created before the failure (nothing is
left half-made), except the runtime's ConfigMap, which the user's computes share; an
object that existed before (a ``--replace``) is left as it is now.

Everything a job has in the cluster carries its identity labels and
:data:`~kubetorch_jupyter.backends.kubernetes.identity.JOB_LABEL`
(:func:`.kubernetes.job_selector`): :func:`remove_job_objects` deletes by them (the
runs' claim only when asked), :func:`cronjob_state` reads the CronJob's status and the
latest of its Jobs for ``kt jobs list``, and :func:`run_now` does what
``kubectl create job --from=cronjob/NAME`` does, then follows the pod's log.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ..backends.kubernetes import apply as _apply
from ..backends.kubernetes import podstatus as _pods
from ..backends.kubernetes.apply import ApiFailure
from ..backends.kubernetes.client import Cluster, load
from ..backends.kubernetes.logs import follow_log
from ..exceptions import ConfigError
from .kubernetes import TRIGGER_ANNOTATION, is_shared_runtime, job_selector

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["CRONJOBS", "INSTANTIATE_ANNOTATION", "CronJobState", "age_of", "apply_job",
           "connect", "cronjob_state", "kept_claims", "latest_log", "manual_job",
           "manual_job_name",
           "remove_job_objects", "run_now"]

CRONJOBS = _apply.CRONJOB
JOBS = _apply.Kind("batch/v1", "Job", "jobs")
_PODS = _apply.Kind("v1", "Pod", "pods")
_CONFIGMAPS = _apply.Kind("v1", "ConfigMap", "configmaps")
_CLAIMS = _apply.Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
#: What ``kubectl create job --from=cronjob/...`` marks a Job it made with.
INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"
#: (connect, read) seconds of each plain request.
REQUEST_TIMEOUT = (10.0, 30.0)


def connect(namespace: str | None = None, *, hint: str = "") -> Cluster:
    """The configured cluster (``KT_KUBECONFIG``, ``KT_KUBE_CONTEXT``, ``KT_NAMESPACE``).

    Args:
        namespace: The namespace (default ``KT_NAMESPACE``, else the context's).
        hint: What else the user can do, added to a missing configuration's message.

    Raises:
        ConfigError: One line saying what to install or set.
    """
    try:
        return load(namespace=namespace)
    except ApiFailure:
        raise
    except ConfigError as exc:  # (KT_BACKEND is about computes, not jobs)
        text = str(exc).split("; KT_BACKEND=local")[0]
        raise ConfigError(f"{text}; {hint}" if hint else text) from None


def _kind(obj: dict[str, Any]) -> _apply.Kind:
    return _apply.kind_of(obj)


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _namespace_missing(exc: _apply.ApiFailure, namespace: str, host: str) -> ConfigError:
    if exc.status == 404 and f'namespaces "{namespace}" not found' in str(exc):
        return ConfigError(f"namespace {namespace!r} does not exist in the cluster at {host}: "
                           f"create it (kubectl create namespace {namespace}) or pass "
                           "--namespace")
    return exc


def apply_job(cluster: Cluster, objects: list[dict[str, Any]], namespace: str
              ) -> list[dict[str, Any]]:
    """Server-side apply ``objects`` in order; the objects as the server has them now.

    Raises:
        ConfigError: When one is refused (the API's words, one line, saying what was
            undone); the objects this call created before it are deleted again, except
            the shared runtime ConfigMap.
    """
    api = cluster.api
    created: list[dict[str, Any]] = []
    applied: list[dict[str, Any]] = []
    for obj in objects:
        kind = _kind(obj)
        try:
            existed = _apply.get(api, kind, namespace, _name(obj),
                                 timeout=REQUEST_TIMEOUT) is not None
            applied.append(_apply.apply(api, obj, namespace, timeout=REQUEST_TIMEOUT))
        except _apply.ApiFailure as exc:
            undone = _undo(api, created, namespace)
            error = _namespace_missing(exc, namespace, cluster.host)
            note = (f"; removed again what it had created ({', '.join(undone)})" if undone
                    else "; nothing was created")
            raise ConfigError(f"{error}{note}") from None
        if not existed and not is_shared_runtime(obj):
            created.append(obj)
    return applied


def _undo(api: ApiClient, created: list[dict[str, Any]], namespace: str) -> list[str]:
    """Delete ``created`` (last first); what was deleted, as ``Kind/name``."""
    out = []
    for obj in reversed(created):
        with contextlib.suppress(_apply.ApiFailure):  # the apply's error is the one to show
            if _apply.delete(api, _kind(obj), namespace, _name(obj), timeout=REQUEST_TIMEOUT):
                out.append(f"{obj['kind']}/{_name(obj)}")
    return list(reversed(out))


def remove_job_objects(cluster: Cluster, name: str, namespace: str, *, username: str,
                       purge: bool = False) -> list[str]:
    """Delete job ``name``'s objects (by its labels); what was deleted, as ``Kind/name``.

    The CronJob goes first (no new run starts meanwhile), then its Jobs (their pods with
    them: foreground propagation) and the notebook's ConfigMap; the runs' claim only with
    ``purge``. The shared runtime ConfigMap never carries a job's label.
    """
    api = cluster.api
    selector = job_selector(username, name)
    kinds = [CRONJOBS, JOBS, _CONFIGMAPS, *([_CLAIMS] if purge else [])]
    # (all listed first: deleting the CronJob takes its Jobs with it)
    found = [(kind, _name(item)) for kind in kinds
             for item in _apply.list_objects(api, kind, namespace, selector,
                                             timeout=REQUEST_TIMEOUT)[0]]
    for kind, obj_name in found:
        _apply.delete(api, kind, namespace, obj_name, timeout=REQUEST_TIMEOUT)
    return [f"{kind.kind}/{obj_name}" for kind, obj_name in found]


def kept_claims(cluster: Cluster, name: str, namespace: str, *, username: str) -> list[str]:
    """The names of job ``name``'s runs claims still in the cluster."""
    items, _ = _apply.list_objects(cluster.api, _CLAIMS, namespace,
                                   job_selector(username, name), timeout=REQUEST_TIMEOUT)
    return [_name(i) for i in items]


@dataclass(frozen=True)
class CronJobState:
    """What the cluster says of a job's CronJob (``kt jobs list``).

    Attributes:
        exists: Whether the CronJob is there.
        suspended: ``spec.suspend``.
        last_schedule: ``status.lastScheduleTime`` (RFC 3339), or "".
        last_success: ``status.lastSuccessfulTime``, or "".
        active: Names of its running Jobs.
        latest_job: The newest of its Jobs (scheduled or by hand), or "".
        latest_outcome: ``succeeded``, ``failed``, ``running``, or "" (no Job kept).
        latest_start: When that Job started (RFC 3339), or "".
    """

    exists: bool
    suspended: bool = False
    last_schedule: str = ""
    last_success: str = ""
    active: tuple[str, ...] = ()
    latest_job: str = ""
    latest_outcome: str = ""
    latest_start: str = ""


def _outcome(job: dict[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") == "Complete":
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") == "Failed":
            return "failed"
    return "running"


def cronjob_state(cluster: Cluster, cronjob: str, name: str, namespace: str, *,
                  username: str) -> CronJobState:
    """The CronJob ``cronjob`` of job ``name``: its status and its latest Job."""
    api = cluster.api
    obj = _apply.get(api, CRONJOBS, namespace, cronjob, timeout=REQUEST_TIMEOUT)
    if obj is None:
        return CronJobState(exists=False)
    status = obj.get("status") or {}
    jobs, _ = _apply.list_objects(api, JOBS, namespace, job_selector(username, name),
                                  timeout=REQUEST_TIMEOUT)
    latest = max(jobs, default=None, key=lambda j: str(
        (j.get("status") or {}).get("startTime") or (j.get("metadata") or {}).get(
            "creationTimestamp") or ""))
    return CronJobState(
        exists=True, suspended=bool((obj.get("spec") or {}).get("suspend")),
        last_schedule=str(status.get("lastScheduleTime") or ""),
        last_success=str(status.get("lastSuccessfulTime") or ""),
        active=tuple(str(a.get("name")) for a in status.get("active") or []),
        latest_job=_name(latest) if latest else "",
        latest_outcome=_outcome(latest) if latest else "",
        latest_start=str(((latest or {}).get("status") or {}).get("startTime") or ""))


def manual_job_name(cronjob: str) -> str:
    """A new name for a run by hand of ``cronjob``: ``{cronjob}-manual-{6 hex}``.

    At most 63 characters: a Job's name becomes its pods' ``job-name`` label.
    """
    return f"{cronjob[:63 - 14].rstrip('-')}-manual-{secrets.token_hex(3)}"


def manual_job(cronjob: dict[str, Any], job_name: str) -> dict[str, Any]:
    """The Job ``kubectl create job JOB --from=cronjob/NAME`` makes of ``cronjob``.

    Its metadata and spec are the CronJob's ``jobTemplate``, annotated
    ``cronjob.kubernetes.io/instantiate: manual`` and owned by the CronJob (so deleting
    the CronJob takes it, and the CronJob controller counts it among its Jobs); its pod
    template also gets :data:`.kubernetes.TRIGGER_ANNOTATION` ``manual``, which the
    container reads (``KT_JOB_TRIGGER``) so that the run's record says who started it.
    """
    template = cronjob.get("spec", {}).get("jobTemplate") or {}
    meta = dict(template.get("metadata") or {})
    cj_meta = cronjob.get("metadata") or {}
    meta.update({
        "name": job_name,
        "namespace": cj_meta.get("namespace"),
        "labels": dict(meta.get("labels") or {}),
        "annotations": {**(meta.get("annotations") or {}), INSTANTIATE_ANNOTATION: "manual"},
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
                             "name": cj_meta.get("name"), "uid": cj_meta.get("uid"),
                             "controller": True, "blockOwnerDeletion": True}],
    })
    spec = json.loads(json.dumps(template.get("spec") or {}))
    pod_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}),
                               TRIGGER_ANNOTATION: "manual"}  # (its run.json says so)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


def _watch_until(api: ApiClient, kind: _apply.Kind, namespace: str, selector: str,
                 done: Callable[[list[dict[str, Any]]], Any], stop: threading.Event) -> Any:
    """What ``done`` returns first, given every object of ``kind`` that ``selector`` picks.

    Lists, then watches from the list's version (again after a dropped watch); None
    when ``stop`` is set first.
    """
    from kubernetes import watch as k8s_watch

    if kind.kind == "Pod":
        from kubernetes.client import CoreV1Api

        lister: Any = CoreV1Api(api).list_namespaced_pod
    else:
        from kubernetes.client import BatchV1Api

        lister = BatchV1Api(api).list_namespaced_job
    while not stop.is_set():
        items, version = _apply.list_objects(api, kind, namespace, selector,
                                             timeout=REQUEST_TIMEOUT)
        seen = {str((o.get("metadata") or {}).get("uid")): o for o in items}
        found = done(list(seen.values()))
        if found is not None:
            return found
        stream = k8s_watch.Watch()
        try:
            for event in stream.stream(lister, namespace, label_selector=selector,
                                       resource_version=version, timeout_seconds=60,
                                       _request_timeout=75, deserialize=False):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    break  # (410: too old) list again
                uid = str((obj.get("metadata") or {}).get("uid"))
                if event.get("type") == "DELETED":
                    seen.pop(uid, None)
                else:
                    seen[uid] = obj
                found = done(list(seen.values()))
                if found is not None or stop.is_set():
                    return found
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - a dropped watch: list and watch again
            stop.wait(1.0)  # (not at once: a server that drops every watch is not hammered)
        finally:
            stream.stop()
    return None


def run_now(cluster: Cluster, cronjob: str, namespace: str, *, out: IO[str] | None = None,
            stop: threading.Event | None = None) -> int:
    """Start a Job from ``cronjob`` now, follow its pod's log, return the run's exit status.

    0 when the Job completed, the container's exit status (else 1) when it failed, 1
    when its pod cannot start (the reason is printed; the Job is left to the cluster).

    Raises:
        ConfigError: No such CronJob, or the API refused the Job.
    """
    api = cluster.api
    stop = stop or threading.Event()
    out = out or sys.stdout  # (now: not the one at import)
    cj = _apply.get(api, CRONJOBS, namespace, cronjob, timeout=REQUEST_TIMEOUT)
    if cj is None:
        raise ConfigError(f"the CronJob {cronjob!r} is not in namespace {namespace!r} at "
                          f"{cluster.host}: kt export --replace --backend kubernetes puts it "
                          "back")
    job_name = manual_job_name(cronjob)
    created = _apply.request(api, "POST", JOBS.path(namespace), body=manual_job(cj, job_name),
                             content_type="application/json", timeout=REQUEST_TIMEOUT)
    job_name = _name(created) or job_name
    print(f"started job {job_name} from cronjob/{cronjob} in namespace {namespace}", file=out,
          flush=True)
    said: set[str] = set()

    def started(pods: list[dict[str, Any]]) -> Any:
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Running", "Succeeded", "Failed"):
                return pod
            state = _pods.pod_status(pod)
            if state.phase == "failed":
                return state
            note = f"{state.reason or _pods.stage(pod)}: {state.message}".rstrip(": ")
            if state.reason and note not in said:
                said.add(note)
                print(f"waiting for the pod: {note} (Ctrl-C stops waiting; the Job stays)",
                      file=out, flush=True)
        return None

    selector = f"job-name={job_name}"
    found = _watch_until(api, _PODS, namespace, selector, started, stop)
    if found is None:
        return 130
    if not isinstance(found, dict):
        print(f"the job's pod cannot start: {found.describe()} (the Job {job_name} is left; "
              f"kubectl delete job -n {namespace} {job_name} removes it)", file=out, flush=True)
        return 1
    pod = _pods.pod_name(found)
    for line in follow_log(api, namespace, pod, tail=100_000, stop=stop):
        out.write(line)
        out.flush()
    if stop.is_set():
        return 130

    def finished(jobs: list[dict[str, Any]]) -> Any:
        for job in jobs:
            if _name(job) == job_name and _outcome(job) != "running":
                return job
        return None

    job = _watch_until(api, JOBS, namespace, _selector_of(created), finished, stop)
    if job is None:
        return 130
    if _outcome(job) == "succeeded":
        return 0
    code = _exit_code(api, namespace, pod)
    print(f"job {job_name} failed" + (f" (exit {code})" if code is not None else ""),
          file=out, flush=True)
    return code or 1


def latest_log(cluster: Cluster, name: str, namespace: str, *, username: str,
               follow: bool = False, out: IO[str] | None = None) -> int:
    """Write the pod log of job ``name``'s latest Job to ``out``; 0 unless that Job failed.

    With ``follow``, the log as it grows, until it ends.

    Raises:
        ConfigError: When the job has no Job in the cluster (none ran, or the history
            limit dropped it).
    """
    api = cluster.api
    out = out or sys.stdout
    jobs, _ = _apply.list_objects(api, JOBS, namespace, job_selector(username, name),
                                  timeout=REQUEST_TIMEOUT)
    latest = max(jobs, default=None, key=lambda j: str(
        (j.get("metadata") or {}).get("creationTimestamp") or ""))
    pods = [] if latest is None else _apply.list_objects(
        api, _PODS, namespace, f"job-name={_name(latest)}", timeout=REQUEST_TIMEOUT)[0]
    if latest is None or not pods:
        raise ConfigError(f"job {name!r} has no run in namespace {namespace!r} to show "
                          f"(kt jobs run {name} starts one)")
    pod = _pods.pod_name(max(pods, key=lambda p: str(
        (p.get("metadata") or {}).get("creationTimestamp") or "")))
    if follow:
        for line in follow_log(api, namespace, pod, tail=100_000):
            out.write(line)
            out.flush()
        latest = _apply.get(api, JOBS, namespace, _name(latest), timeout=REQUEST_TIMEOUT) or latest
    else:
        from ..backends.kubernetes.logs import read_log

        out.write(read_log(api, namespace, pod, tail=100_000))
    return 1 if _outcome(latest) == "failed" else 0


def _selector_of(job: dict[str, Any]) -> str:
    labels = (job.get("metadata") or {}).get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _exit_code(api: ApiClient, namespace: str, pod: str) -> int | None:
    got = _apply.get(api, _PODS, namespace, pod, timeout=REQUEST_TIMEOUT) or {}
    for cs in (got.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode") is not None:
            return int(term["exitCode"])
    return None


def age_of(stamp: str) -> float | None:
    """Seconds since an RFC 3339 time (None when there is none)."""
    from datetime import datetime

    if not stamp:
        return None
    try:
        return time.time() - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
