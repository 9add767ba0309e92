"""What a pod object says about a compute: its phase, why, and where its start is.

Pure functions of a pod as the API returns it (a JSON dict, or a typed ``V1Pod``), no
I/O, so every failure class is unit-tested on real-shaped objects:

- :func:`pod_status` maps a pod to a :class:`~kubetorch_jupyter.backends.base.PodStatus`
  (``pending`` / ``starting`` / ``running`` / ``failed`` / ``gone``) with a reason a
  program can branch on (``Unschedulable``, ``ImagePullBackOff``, ``CrashLoopBackOff``,
  ``OOMKilled``, ``Evicted``, ``Deleted``...) and the line Kubernetes gave;
- :func:`stage` names the start phase the progress display shows (scheduling, pulling
  image, starting runtime);
- :func:`asked` and :func:`memory_limit` say what the pod requested, for messages.

The watch that uses them, and the errors they become, are in :mod:`.readiness`.
"""

from __future__ import annotations

from typing import Any

from ...core.resources import parse_memory
from ..base import PodStatus

__all__ = ["IMAGE_FAILURES", "as_dict", "asked", "container_restarts", "exit_status",
           "images", "is_ready", "main_container", "memory_limit", "pod_name", "pod_status",
           "pull_secrets", "stage"]

#: Waiting reasons that mean the image cannot be pulled (ErrImagePull only when definitive).
IMAGE_FAILURES = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                            "ErrImageNeverPull", "RegistryUnavailable"})
#: Waiting reasons that mean the container cannot be created as it is asked for.
_CONFIG_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError",
                              "RunContainerError", "PreCreateHookError", "PostStartHookError"})
#: Words of an ErrImagePull message that no retry will change.
_DEFINITIVE_PULL = ("not found", "manifest unknown", "unauthorized", "denied", "forbidden",
                    "no such host", "does not exist", "invalid reference")


def as_dict(pod: Any) -> dict[str, Any]:
    """The pod as the API's JSON (camelCase keys), from a dict or a typed ``V1Pod``."""
    if isinstance(pod, dict):
        return pod
    from kubernetes.client import ApiClient

    out = ApiClient().sanitize_for_serialization(pod)
    return out if isinstance(out, dict) else {}


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def pod_name(pod: dict[str, Any]) -> str:
    """The pod's name (``""`` when the object has none)."""
    return str(_get(pod, "metadata", "name") or "")


def main_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod's first container (the runtime's), or an empty dict."""
    containers = _get(pod, "spec", "containers") or []
    return containers[0] if containers else {}


def images(pod: dict[str, Any]) -> list[str]:
    """The images of the pod's containers (init containers first)."""
    spec = pod.get("spec") or {}
    return [str(c.get("image")) for c in [*(spec.get("initContainers") or []),
                                          *(spec.get("containers") or [])] if c.get("image")]


def pull_secrets(pod: dict[str, Any]) -> list[str]:
    """The names of the pod's ``imagePullSecrets``."""
    return [str(s.get("name")) for s in _get(pod, "spec", "imagePullSecrets") or []
            if s.get("name")]


def memory_limit(pod: dict[str, Any], container: str | None = None) -> str | None:
    """The memory limit of ``container`` (default: the main one), as written, or None."""
    for c in _get(pod, "spec", "containers") or []:
        if container is None or c.get("name") == container:
            res = c.get("resources") or {}
            return (res.get("limits") or {}).get("memory") or (res.get("requests")
                                                               or {}).get("memory")
    return None


def oom_status(pod: dict[str, Any], what: str, code: int | None) -> PodStatus:
    """An ``OOMKilled`` status naming the memory limit (the peak is not known here)."""
    limit = memory_limit(pod)
    try:
        limit_bytes = parse_memory(limit) if limit else None
    except ValueError:  # a quantity we do not read: the text still names it
        limit_bytes = None
    return PodStatus("failed", "OOMKilled", f"{what}: limit {limit or 'none set'}", code,
                     memory_limit=limit_bytes)


def asked(pod: dict[str, Any]) -> str:
    """What the pod's containers request, e.g. ``"1 nvidia.com/gpu, cpu 4, memory 16Gi"``."""
    total: dict[str, list[str]] = {}
    for c in _get(pod, "spec", "containers") or []:
        res = c.get("resources") or {}
        for key, value in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
            total.setdefault(key, []).append(str(value))
    parts = []
    for key in sorted(total, key=lambda k: (k in ("cpu", "memory"), k)):
        value = "+".join(total[key])
        parts.append(f"{value} {key}" if "/" in key else f"{key} {value}")
    selector = _get(pod, "spec", "nodeSelector") or {}
    if selector:
        parts.append("node selector " + ", ".join(f"{k}={v}" for k, v in selector.items()))
    return ", ".join(parts) or "no resources"


def exit_status(terminated: dict[str, Any] | None) -> int | None:
    """A container's exit as a process status: negative for a signal (137 -> -9)."""
    if not terminated:
        return None
    if terminated.get("signal"):
        return -int(terminated["signal"])
    code = terminated.get("exitCode")
    if code is None:
        return None
    code = int(code)
    return -(code - 128) if 128 < code < 160 else code


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in _get(pod, "status", "conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def is_ready(pod: dict[str, Any]) -> bool:
    """Whether the pod is Ready (its readiness probe answers) and not being deleted."""
    if _get(pod, "metadata", "deletionTimestamp"):
        return False
    cond = _condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


def container_restarts(pod: dict[str, Any]) -> int:
    """How many times the pod's containers restarted, all together."""
    return sum(int(cs.get("restartCount") or 0)
               for cs in _get(pod, "status", "containerStatuses") or [])


def _terminated(pod: dict[str, Any], term: dict[str, Any], what: str) -> PodStatus:
    reason = str(term.get("reason") or "Error")
    code = exit_status(term)
    if reason == "OOMKilled":
        return oom_status(pod, f"{what} was killed by the kernel's OOM killer", code)
    if reason == "Completed" or code == 0:
        return PodStatus("gone", "Completed", f"{what} exited with status 0", 0)
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    detail = str(term.get("message") or "").strip().splitlines()
    return PodStatus("failed", "Error" if reason in ("Error", "") else reason,
                     f"{what} ended ({how})" + (f": {detail[-1]}" if detail else ""), code)


def _container_failure(pod: dict[str, Any], cs: dict[str, Any], init: bool) -> PodStatus | None:
    """The failure a container's status shows, or None."""
    name = cs.get("name") or "container"
    what = f"init container {name!r}" if init else f"container {name!r}"
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    message = str(waiting.get("message") or "").strip()
    prefix = "Init:" if init else ""
    if reason in IMAGE_FAILURES:
        if reason == "ErrImagePull" and not any(w in message.lower() for w in _DEFINITIVE_PULL):
            return None  # a transient pull error: the kubelet retries
        image = cs.get("image") or ""
        return PodStatus("failed", f"{prefix}{reason}",
                         f"image {image!r}: {message or reason}")
    if reason in _CONFIG_FAILURES:
        return PodStatus("failed", f"{prefix}{reason}", f"{what}: {message or reason}")
    last = (cs.get("lastState") or {}).get("terminated") or {}
    if reason == "CrashLoopBackOff":
        if last.get("reason") == "OOMKilled":
            return _terminated(pod, last, what)
        code = exit_status(last)
        how = (f"last exit: killed by signal {-code}" if code is not None and code < 0
               else f"last exit status {code}" if code is not None else "crashing")
        return PodStatus("failed", f"{prefix}CrashLoopBackOff",
                         f"{what} keeps crashing ({how}; {cs.get('restartCount', 0)} restarts)",
                         code)
    term = state.get("terminated")
    if term and not (init and exit_status(term) == 0):
        status = _terminated(pod, term, what)
        if init and status.reason:
            return PodStatus(status.phase, f"Init:{status.reason}", status.message,
                             status.exit_status)
        return status
    return None


def pod_status(pod: Any) -> PodStatus:
    """The pod's phase, and why, from its object alone.

    Args:
        pod: A pod as the API returns it (a JSON dict or a ``V1Pod``).

    Returns:
        ``failed`` with reason ``Deleted`` (it is being deleted), ``Evicted`` (or
        another reason Kubernetes gave a failed pod), ``OOMKilled``, ``Error``,
        ``CrashLoopBackOff``, ``ImagePullBackOff`` / ``ErrImagePull`` /
        ``InvalidImageName``, ``CreateContainerConfigError``...; ``pending`` (not placed
        yet: reason ``Unschedulable`` when the scheduler said so, else creating its
        containers or pulling the image); ``starting`` (running, not ready);
        ``running`` (Ready); ``gone`` (``Completed``: it exited with status 0).
    """
    p = as_dict(pod)
    meta, status = p.get("metadata") or {}, p.get("status") or {}
    name = meta.get("name") or "pod"
    if meta.get("deletionTimestamp"):
        return PodStatus("failed", "Deleted", f"pod {name} is being deleted")
    phase = status.get("phase") or "Pending"
    if phase == "Failed" and status.get("reason"):  # the kubelet's word: Evicted, Shutdown...
        return PodStatus("failed", str(status["reason"]),
                         str(status.get("message") or f"pod {name} failed"))
    for key, init in (("initContainerStatuses", True), ("containerStatuses", False)):
        for cs in status.get(key) or []:
            failure = _container_failure(p, cs, init)
            if failure is not None and not (phase == "Running" and failure.phase == "gone"):
                return failure
    if phase == "Failed":
        return PodStatus("failed", "Error", str(status.get("message") or f"pod {name} failed"))
    if phase == "Succeeded":
        return PodStatus("gone", "Completed", f"pod {name} ran to completion", 0)
    if phase == "Unknown":
        return PodStatus("failed", "NodeLost", f"the node of pod {name} stopped reporting "
                         f"({status.get('message') or 'status unknown'})")
    scheduled = _condition(p, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        reason = str(scheduled.get("reason") or "Unschedulable")
        return PodStatus("pending", reason, str(scheduled.get("message") or ""))
    if phase == "Pending":
        return PodStatus("pending", message=stage(p))
    if is_ready(p):
        return PodStatus("running")
    return PodStatus("starting", message="its runtime is starting (not ready yet)")


def stage(pod: Any) -> str:
    """The start phase to show: ``scheduling``, ``pulling image``, ``starting runtime``, ``ready``.

    (``installing`` comes from the runtime bootstrap's own log lines, see
    :mod:`.readiness`.)
    """
    p = as_dict(pod)
    if is_ready(p):
        return "ready"
    scheduled = _condition(p, "PodScheduled")
    if scheduled is None or scheduled.get("status") != "True":
        return "scheduling"
    status = p.get("status") or {}
    for cs in status.get("initContainerStatuses") or []:
        if (cs.get("state") or {}).get("running"):
            return f"init container {cs.get('name')}"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = (state.get("waiting") or {}).get("reason")
        if waiting in ("ContainerCreating", "PodInitializing", "ErrImagePull",
                       "ImagePullBackOff") or (not state and status.get("phase") == "Pending"):
            return "pulling image"
        if state.get("running"):
            return "starting runtime"
    return "pulling image" if status.get("phase") == "Pending" else "starting runtime"
