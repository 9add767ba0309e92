"""Waiting for a compute's pod to be ready: a watch stream, progress, and errors that explain.

:func:`wait_ready` lists the compute's pods (by label selector), then watches them from
that list's ``resourceVersion`` (a ``kubernetes.watch.Watch`` stream, server-side
timeout = what is left of the launch timeout): no sleep loop, every status change is
seen when it happens. Each change moves the progress display through the start phases
(:func:`.podstatus.stage`: scheduling, pulling image, starting runtime); while the runtime
starts, the bootstrap's ``kt-bootstrap:`` log lines (installing runtime, image step i/n)
refine it, read by a log-following thread that ends with the wait.

A failure ends the wait at once with a :class:`~kubetorch_jupyter.PodStartError` whose
first line says what happened and what to do (:func:`start_error`): Unschedulable (what
was asked, the scheduler's message), an image that cannot be pulled (the image, the pull
secrets), a crash loop (the container's last log lines, of the previous run), OOMKilled
(the memory limit), or the launch timeout (the phase it was stuck in).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...exceptions import PodStartError
from . import apply as _apply
from . import podstatus as _pods
from .logs import LOG_TAIL_LINES, abort_stream, read_log

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["BOOTSTRAP_PREFIX", "LOG_TAIL_LINES", "RESTARTABLE", "Target", "abort_stream",
           "bootstrap_error", "read_log", "start_error", "wait_pods_gone", "wait_ready"]

logger = logging.getLogger(__name__)

#: The prefix of the runtime bootstrap's progress lines in a pod's log.
BOOTSTRAP_PREFIX = "kt-bootstrap:"
#: Failures of a container that a fresh pod may not have (a crash, an OOM kill): a pod
#: already failing so when a start begins is replaced, not reported (see wait_ready).
RESTARTABLE = frozenset({"CrashLoopBackOff", "OOMKilled", "Error", "Init:CrashLoopBackOff",
                         "Init:OOMKilled", "Init:Error", "NodeLost"})
_PODS = _apply.Kind("v1", "Pod", "pods")


@dataclass(frozen=True)
class Target:
    """Which pods a wait is about.

    Attributes:
        name: The compute's name (for messages).
        namespace: Their namespace.
        selector: The label selector of the compute's pods.
        spec_hash: When set, a pod whose spec-hash annotation differs is an old one.
        exclude: Uids of pods that were there before a changed spec was applied (old).
        hash_annotation: The annotation holding the spec hash.
        replicas: How many ready pods make the compute ready.
        replaceable: Uids of pods that were there before this start: one of them found
            failing (a crash, an OOM kill, in back-off) is replaced, not reported.
    """

    name: str
    namespace: str
    selector: str
    spec_hash: str | None = None
    exclude: Collection[str] = ()
    hash_annotation: str = ""
    replicas: int = 1
    replaceable: Collection[str] = ()

    def current(self, pod: dict[str, Any]) -> bool:
        """Whether ``pod`` is one of this start's (not an old one going away)."""
        meta = pod.get("metadata") or {}
        if meta.get("uid") in self.exclude:
            return False
        have = (meta.get("annotations") or {}).get(self.hash_annotation)
        return not (self.spec_hash and self.hash_annotation and have
                    and have != self.spec_hash)


def bootstrap_error(log: str) -> str | None:
    """What the start script gave up on: its last ``kt-bootstrap: error:`` line.

    (Or a line of the workload's own wrappers, ``kubetorch-jupyter: ...``, such as a Ray
    pod's "needs an image with Ray installed".)
    """
    found = []
    for line in log.splitlines():
        for marker in (f"{BOOTSTRAP_PREFIX} error:", "kubetorch-jupyter:"):
            if line.startswith(marker):
                found.append(line[len(marker):].strip())
    return found[-1] if found else None


def _events(api: ApiClient, namespace: str, pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The events about ``pod``, oldest first (empty when they cannot be read)."""
    uid = (pod.get("metadata") or {}).get("uid")
    kind = _apply.Kind("v1", "Event", "events")
    try:
        data = _apply.request(api, "GET", kind.path(namespace), timeout=10.0,
                              query=[("fieldSelector", f"involvedObject.uid={uid}")])
    except _apply.ApiFailure:
        return []
    items = [e for e in data.get("items") or []
             if (e.get("involvedObject") or {}).get("uid") in (uid, None)]
    return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def start_error(api: ApiClient, target: Target, pod: dict[str, Any],
                status: Any) -> PodStartError:
    """The error for a pod that failed to start, saying what to do.

    Args:
        api: For the crashed container's log and the scheduler's events.
        target: The compute.
        pod: The pod object.
        status: Its :func:`.podstatus.pod_status`.
    """
    name, ns, pod_name = target.name, target.namespace, _pods.pod_name(pod)
    reason = str(status.reason or "Error")
    base = reason.removeprefix("Init:")
    where = f"(pod {pod_name} in namespace {ns})"
    if base == "Unschedulable":
        message = status.message
        if not message:
            failed = [e for e in _events(api, ns, pod) if e.get("reason") == "FailedScheduling"]
            message = str(failed[-1].get("message") or "") if failed else "no node fits"
        gpus = "nvidia.com/gpu" in _pods.asked(pod) and ("gpu" in message.lower()
                                                          or "Insufficient" in message)
        what = "not enough GPUs" if gpus else "no node can take it"
        return PodStartError(
            f"compute {name!r} cannot be scheduled, {what}: it asks for {_pods.asked(pod)}; "
            f"the scheduler says: {message.strip()} {where}. Ask for less, or for nodes that "
            "have it (gpu_type, node_selector, tolerations)", pod=name, reason="Unschedulable")
    if base in _pods.IMAGE_FAILURES:
        secrets = _pods.pull_secrets(pod)
        return PodStartError(
            f"compute {name!r} cannot pull its image: {status.message} {where}. Check the "
            "image name and tag, and that the registry lets the pull secrets "
            f"({', '.join(secrets) if secrets else 'none: image_pull_secrets=[...]'}) "
            "read it", pod=name, reason=reason)
    container = str(_pods.main_container(pod).get("name") or "") or None
    if base == "OOMKilled":
        limit = _pods.memory_limit(pod)
        return PodStartError(
            f"compute {name!r} ran out of memory while starting (limit {limit or 'none'}) "
            f"{where}: ask for more memory (memory='...')", pod=name, reason="OOMKilled",
            log_tail=read_log(api, ns, pod_name, previous=True, container=container))
    if base in ("CrashLoopBackOff", "Error"):
        restarted = _pods.container_restarts(pod) > 0
        tail = read_log(api, ns, pod_name, previous=restarted, container=container)
        if not tail and restarted:
            tail = read_log(api, ns, pod_name, container=container)
        said = bootstrap_error(tail)
        why = (f": {said}" if said else "; its last log lines are below (fix what they "
               "show; the image needs Python >= 3.11)")
        return PodStartError(f"compute {name!r}: {status.message} {where}{why}",
                             pod=name, reason=reason, log_tail=tail)
    return PodStartError(f"compute {name!r} did not start: {reason}: {status.message} {where}",
                         pod=name, reason=reason)


class _BootstrapLog:
    """Follows a starting pod's log for ``kt-bootstrap:`` lines, on a thread of its own."""

    def __init__(self, api: ApiClient, namespace: str, pod: str,
                 on_line: Callable[[str], None]) -> None:
        self._response: Any = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api, namespace, pod, on_line),
                                        name=f"kt-bootstrap-log-{pod}", daemon=True)
        self._thread.start()

    def _run(self, api: ApiClient, namespace: str, pod: str,
             on_line: Callable[[str], None]) -> None:
        params = api.param_serialize(method="GET",
                                     resource_path=_PODS.path(namespace, pod) + "/log",
                                     query_params=[("follow", "true")],
                                     header_params={"Accept": "text/plain"},
                                     auth_settings=["BearerToken"])
        response: Any = None
        try:
            response = api.call_api(*params, _request_timeout=None).response
            self._response = response
            if self._stopped.is_set() or not 200 <= int(response.status) <= 299:
                return
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(BOOTSTRAP_PREFIX):
                    on_line(line[len(BOOTSTRAP_PREFIX):].strip())
                if self._stopped.is_set():
                    return
        except Exception as exc:  # noqa: BLE001 - the log only refines the progress display
            logger.debug("following %s's log stopped: %s", pod, exc)
        finally:
            if response is not None:
                with contextlib.suppress(Exception):
                    response.close()

    def stop(self) -> None:
        self._stopped.set()
        if self._response is not None:
            abort_stream(self._response)
        self._thread.join(timeout=5.0)


class _Progress:
    """The stage shown for the compute's start, from pod changes and bootstrap lines."""

    def __init__(self, on_stage: Callable[[str], None]) -> None:
        self._say = on_stage
        self.stage = "scheduling"
        self._detail = ""
        self._lock = threading.Lock()

    def pod(self, stage: str) -> None:
        with self._lock:
            if stage != self.stage:
                self.stage, self._detail = stage, ""
                self._say(stage)

    def bootstrap(self, line: str) -> None:
        with self._lock:
            self._detail = line
            if line.startswith("error:"):  # the crash that follows says it
                return
            self.stage = ("starting runtime" if line.startswith("starting runtime")
                          else "installing")
            self._say(f"installing: {line}" if self.stage == "installing" else self.stage)

    def describe(self) -> str:
        with self._lock:
            return f"{self.stage} ({self._detail})" if self._detail else self.stage


def wait_ready(api: ApiClient, target: Target, *, timeout: float,
               on_stage: Callable[[str], None] = lambda stage: None,
               follow_bootstrap: bool = True) -> dict[str, Any]:
    """Wait until the compute's pod is ready; the ready pod (the newest, with replicas: one).

    A pod of ``target.replaceable`` (there before this start) found failing (a container
    that crashed or was OOM-killed while it served, now in back-off) is deleted, once, so
    that its controller starts a fresh one: a start is a fresh start, and a failure of
    that fresh pod is reported at once.

    Args:
        api: The API client.
        target: Which pods (see :class:`Target`).
        timeout: Seconds in all (the compute's launch timeout).
        on_stage: Called with each start phase as it is reached.
        follow_bootstrap: Read ``kt-bootstrap:`` lines from a starting pod's log.

    Raises:
        PodStartError: When a pod fails to start (classified) or the timeout passes
            (reason ``StartTimeout``, naming the phase it was stuck in).
        ApiFailure: When the API cannot be asked.
    """
    from kubernetes import watch as k8s_watch
    from kubernetes.client import CoreV1Api

    core = CoreV1Api(api)
    deadline = time.monotonic() + timeout
    progress = _Progress(on_stage)
    pods: dict[str, dict[str, Any]] = {}
    follower: _BootstrapLog | None = None
    autoscaling: set[str] = set()
    replaced: set[str] = set()

    def evaluate() -> dict[str, Any] | None:
        nonlocal follower
        current = [p for p in pods.values() if target.current(p)]
        ready = [p for p in current if _pods.is_ready(p)]
        if len(ready) >= max(1, target.replicas):
            return max(ready, key=lambda p: str((p.get("metadata") or {})
                                                .get("creationTimestamp") or ""))
        for pod in current:
            status = _pods.pod_status(pod)
            uid = str((pod.get("metadata") or {}).get("uid"))
            if (status.phase == "failed" and status.reason in RESTARTABLE
                    and uid in target.replaceable and uid not in replaced):
                replaced.add(uid)
                logger.info("compute %s: replacing its failed pod %s (%s)", target.name,
                            _pods.pod_name(pod), status.describe())
                _apply.delete(api, _PODS, target.namespace, _pods.pod_name(pod),
                              timeout=30.0)
                continue
            ended = ((pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")
                     or status.reason == "Deleted")
            if status.phase == "failed" and not ended:
                raise start_error(api, target, pod, status)
            # (a pod that ended as a whole, evicted or deleted, is replaced by its
            # controller: the wait goes on for that one)
            if status.reason == "Unschedulable":
                uid = str((pod.get("metadata") or {}).get("uid"))
                if uid not in autoscaling:
                    events = _events(api, target.namespace, pod)
                    if not any(e.get("reason") == "TriggeredScaleUp" for e in events):
                        raise start_error(api, target, pod, status)
                    autoscaling.add(uid)
                progress.pod("scheduling (the cluster autoscaler is adding a node)")
        if current:
            newest = max(current, key=lambda p: str((p.get("metadata") or {})
                                                    .get("creationTimestamp") or ""))
            step = _pods.stage(newest)
            # (an autoscaler note stays until the pod is placed; a bootstrap line wins
            # over "starting runtime", which is the same phase seen from outside)
            keep = (step.startswith("scheduling") and progress.stage.startswith("scheduling")
                    ) or (progress.stage == "installing" and step == "starting runtime")
            if not keep:
                progress.pod(step)
            if (step == "starting runtime" and follower is None and follow_bootstrap):
                follower = _BootstrapLog(api, target.namespace, _pods.pod_name(newest),
                                         progress.bootstrap)
        return None

    try:
        version = ""
        while True:
            if not version:  # (re)list: the state now, and where the watch starts from
                items, version = _apply.list_objects(api, _PODS, target.namespace,
                                                     target.selector, timeout=30.0)
                pods = {str((p.get("metadata") or {}).get("uid")): p for p in items}
                found = evaluate()
                if found is not None:
                    return found
            left = deadline - time.monotonic()
            if left <= 0:
                break
            stream = k8s_watch.Watch()
            try:
                for event in stream.stream(core.list_namespaced_pod, target.namespace,
                                           label_selector=target.selector,
                                           resource_version=version,
                                           timeout_seconds=max(1, int(left + 0.999)),
                                           _request_timeout=left + 10, deserialize=False):
                    obj = event.get("object") or {}
                    kind = event.get("type")
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # too old: list again
                            version = ""
                            break
                        continue
                    meta = obj.get("metadata") or {}
                    version = str(meta.get("resourceVersion") or version)
                    uid = str(meta.get("uid"))
                    if kind == "DELETED":
                        pods.pop(uid, None)
                    elif kind in ("ADDED", "MODIFIED"):
                        pods[uid] = obj
                    found = evaluate()
                    if found is not None:
                        return found
                    if time.monotonic() >= deadline:
                        break
            except PodStartError:
                raise
            except Exception as exc:  # noqa: BLE001 - a dropped watch: list and watch again
                if time.monotonic() >= deadline:
                    break
                logger.debug("the pod watch of %s ended (%s); listing again", target.name, exc)
                version = ""
            finally:
                stream.stop()
        stuck = progress.describe()
        newest = max(pods.values(), default=None,
                     key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
        detail = _pods.pod_status(newest).message if newest is not None else "no pod was created"
        tail = ""
        if newest is not None and _pods.stage(newest) == "starting runtime":
            tail = read_log(api, target.namespace, _pods.pod_name(newest))
        raise PodStartError(
            f"compute {target.name!r} was not ready within {timeout:g}s, stuck {stuck}"
            f"{': ' + detail if detail and detail != stuck else ''}: raise launch_timeout, or "
            f"look at `kubectl describe pods -n {target.namespace} -l {target.selector}`",
            pod=target.name, reason="StartTimeout", log_tail=tail)
    finally:
        if follower is not None:
            follower.stop()


def wait_pods_gone(api: ApiClient, namespace: str, selector: str, *, timeout: float,
                   name: str) -> bool:
    """Watch until no pod matches ``selector`` (True), or ``timeout`` passes (False)."""
    from kubernetes import watch as k8s_watch
    from kubernetes.client import CoreV1Api

    deadline = time.monotonic() + timeout
    items, version = _apply.list_objects(api, _PODS, namespace, selector, timeout=30.0)
    left = {str((p.get("metadata") or {}).get("uid")) for p in items}
    while left and time.monotonic() < deadline:
        stream = k8s_watch.Watch()
        try:
            for event in stream.stream(
                    CoreV1Api(api).list_namespaced_pod, namespace, label_selector=selector,
                    resource_version=version,
                    timeout_seconds=max(1, int(deadline - time.monotonic() + 0.999)),
                    _request_timeout=timeout + 10, deserialize=False):
                meta = (event.get("object") or {}).get("metadata") or {}
                version = str(meta.get("resourceVersion") or version)
                if event.get("type") == "DELETED":
                    left.discard(str(meta.get("uid")))
                if not left or time.monotonic() >= deadline:
                    break
        except Exception as exc:  # noqa: BLE001 - a dropped watch: look again
            logger.debug("watching %s's pods go failed: %s", name, exc)
            items, version = _apply.list_objects(api, _PODS, namespace, selector,
                                                 timeout=30.0)
            left = {str((p.get("metadata") or {}).get("uid")) for p in items}
        finally:
            stream.stop()
    if left:
        logger.warning("compute %r: %d pod(s) still terminating after %gs", name, len(left),
                       timeout)
    return not left
