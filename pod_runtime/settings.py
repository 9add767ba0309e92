"""The variables a pod reads from its environment: one table, read when used.

The client side has its own table (``kubetorch_jupyter.config``); this one is separate
because the pod runtime imports nothing of the client. The README's "Pod variables"
table is generated from :data:`POD_SETTINGS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["POD_SETTINGS", "PodSetting", "byte_size", "get"]


def _flag(text: str) -> bool:
    return text.strip().lower() not in {"0", "false", "no", "off"}


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("plain", "json"):
        raise ValueError("must be 'plain' or 'json'")
    return value


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2,
          "gi": 1024**3}


def byte_size(text: str) -> int:
    """A positive size in bytes: ``1048576``, ``64Mi``, ``2Gi``, ``500M``."""
    raw = text.strip()
    digits = raw.rstrip("kKmMgGiI")
    unit = raw[len(digits):].lower()
    if unit not in _UNITS or not digits:
        raise ValueError("must be a size in bytes such as 1048576, 64Mi or 2Gi")
    value = int(float(digits) * _UNITS[unit])
    if value <= 0:
        raise ValueError("must be positive")
    return value


@dataclass(frozen=True)
class PodSetting:
    """One variable of the pod's environment: its name, default, parser and meaning."""

    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str


POD_SETTINGS: dict[str, PodSetting] = {
    s.env: s
    for s in [
        PodSetting("KT_POD_TOKEN", "", str,
                   "The token clients must present (required; removed from the environment "
                   "once read, so code on the pod never sees it)."),
        PodSetting("KT_POD_NAME", "pod", str,
                   "The pod's name in messages; the `compute` label of its metrics and logs."),
        PodSetting("KT_POD_INSTANCE", "", str,
                   "The `pod` label of its metrics and logs: the Kubernetes pod's own name "
                   "(the manifests set it from the downward API); empty: KT_POD_NAME."),
        PodSetting("KT_STATE_DIR", "", str,
                   "State directory; synced trees go under <KT_STATE_DIR>/sync/<pod>."),
        PodSetting("KT_SYNC_DIR", "", str,
                   "Where synced project trees are written (overrides KT_STATE_DIR)."),
        PodSetting("KT_POD_IPYTHON", True, _flag,
                   "Run notebook cells through IPython when it is installed (0: plain exec)."),
        PodSetting("KT_POD_MAX_EVENTS", 20_000, _positive_int,
                   "Output events (stream chunks, displays) kept per call; older ones are "
                   "dropped and the client is told how many lines it missed."),
        PodSetting("KT_POD_MAX_EVENT_BYTES", 64 * 1024**2, byte_size,
                   "Bytes of output kept per call (same treatment as KT_POD_MAX_EVENTS)."),
        PodSetting("KT_POD_RESULT_TTL", 24 * 3600.0, _positive_float,
                   "Seconds a finished result waits to be collected by its client before "
                   "the pod drops it."),
        PodSetting("KT_POD_MAX_RETAINED_BYTES", 2 * 1024**3, byte_size,
                   "Bytes of finished, uncollected results a pod keeps; past this the "
                   "oldest are dropped (collecting one then raises CallLostError)."),
        PodSetting("KT_POD_MAX_OUTBOUND_BYTES", 512 * 1024**2, byte_size,
                   "Bytes of results queued for one client that is not reading them; past "
                   "this the pod closes that client's connection (it reconnects and "
                   "collects: results are kept)."),
        PodSetting("KT_POD_TERM_GRACE", 25.0, _non_negative_float,
                   "Seconds a pod that got SIGTERM (a node drain, kubectl delete, "
                   "preemption) lets running calls finish; /ready answers 503 meanwhile "
                   "and new calls are refused; what still runs then fails as preempted. "
                   "Keep it under the pod's terminationGracePeriodSeconds (30 s)."),
        PodSetting("KT_POD_TERMINATION_LOG", "/dev/termination-log", str,
                   "File the pod writes why it stopped to (\"Preempted: ...\", "
                   "\"Idle: ...\"), as Kubernetes' terminationMessagePath. The default "
                   "is written only where it exists (Kubernetes mounts it); a path set "
                   "here is created."),
        PodSetting("KT_POD_INACTIVITY_TTL", None, _positive_float,
                   "Seconds without calls after which the pod stops (the compute's "
                   "inactivity_ttl; --inactivity-ttl wins); in a cluster it first scales "
                   "its own workload to 0 replicas."),
        PodSetting("KT_K8S_WORKLOAD", "", str,
                   "Set by the Kubernetes manifests: the pod's own workload as "
                   "`<plural>/<name>`; a pod idle past its inactivity_ttl scales it to 0."),
        PodSetting("KT_K8S_NAMESPACE", "", str,
                   "Set by the Kubernetes manifests: the namespace of KT_K8S_WORKLOAD."),
        PodSetting("KT_K8S_API", "", str,
                   "The API server's base URL for that scale (a test double's http:// "
                   "one); empty: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT "
                   "with the mounted CA."),
        PodSetting("KT_K8S_SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount", str,
                   "Where the service-account `token` and `ca.crt` are mounted."),
        PodSetting("KT_POD_HANDSHAKE_TIMEOUT", 10.0, _positive_float,
                   "Seconds a new connection has to send its whole upgrade request; a "
                   "slower one is dropped before it is authenticated."),
        PodSetting("KT_POD_MAX_PENDING_CONNECTIONS", 64, _positive_int,
                   "Connections still in their handshake (not authenticated) held at "
                   "once; past this the oldest is dropped, so a flood cannot starve "
                   "clients that hold the token."),
        PodSetting("KT_POD_MAX_MESSAGE_BYTES", 4 * 1024**3, byte_size,
                   "Largest message an authenticated client may send (arguments that "
                   "do not go through shared memory); a larger one closes its "
                   "connection with code 1009."),
        PodSetting("KT_POD_LOG_MAX_BYTES", 10 * 1024**2, byte_size,
                   "Size at which the pod's log file (its stdout, when that is a file) is "
                   "rotated to <log>.1; one rotated file is kept."),
        PodSetting("KT_POD_LOG_FORMAT", "plain", _log_format,
                   "What the pod writes to its stdout: `plain` text as printed (the local "
                   "backend's log), or `json` lines with time, compute, pod, call, stream, "
                   "level and text (set by the Kubernetes manifests, for a log shipper)."),
        PodSetting("KT_POD_LOG_HISTORY", 10_000, _positive_int,
                   "Lines of recent output and logging the pod keeps for `kt logs --call` "
                   "and the notebook's log view."),
        PodSetting("KT_POD_CALL_STATS", True, _flag,
                   "Measure what each call costs (wall and CPU time, peak memory, GPUs) and "
                   "send it with the result (0: off; the call metrics stay)."),
        PodSetting("KT_POD_STATS_INTERVAL", 0.05, _positive_float,
                   "Seconds between the samples of memory (and GPU) taken while calls run, "
                   "for each call's peak figures."),
    ]
}


def get(env: str) -> Any:
    """The value of a pod variable now: parsed from the environment, else its default.

    Raises:
        ValueError: When the variable is set to something its parser rejects (the
            message names the variable).
    """
    setting = POD_SETTINGS[env]
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return setting.default
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ValueError(f"{env}={raw!r}: {exc}") from None
