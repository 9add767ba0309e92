"""The Kubernetes backend: a compute is a workload (Deployment + Service by default).

``up(spec)`` renders the compute's objects (:mod:`.manifests`, with the runtime bootstrap
of :mod:`.bootstrap`), server-side applies them with one field manager (:mod:`.apply`)
and watches its pods until one is ready (:mod:`.readiness`), showing the start phases
and explaining failures. The pod token lives in a Secret made once per compute (a
random ``secrets.token_urlsafe``) and owned by the workload, so deleting the workload
takes it too; teardown deletes everything that carries the compute's identity labels
(:mod:`.identity`), and nothing else.

Another process learns what a compute runs from the workload's annotations (the spec,
its hash and when it started), so ``kt list``, ``Compute.from_name`` and the restart
policy work across processes as on the local backend.

Reaching a pod (``KT_K8S_CONNECT``): ``port-forward`` (the default) dials the compute's
current ready pod through the API server on every (re)connect (:mod:`.portforward`);
``url`` connects to ``KT_K8S_URL`` (the Service's cluster DNS name, or an ingress's
``wss://`` base) with ``KT_K8S_HEADERS``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from kernel_bridge import Endpoint
from pod_runtime.protocol import ending

from ... import config
from ...core.names import check_name, pod_name
from ...core.progress import progress_bar
from ...core.spec import ComputeSpec
from ...exceptions import ComputeNotFoundError, KtError
from ..base import ANY_POD, Backend, PodChanged, PodInfo, PodStatus
from . import apply as _apply
from . import identity, readiness
from . import podstatus as _pods
from .bootstrap import runtime_container
from .client import Cluster, load
from .container import RUNTIME_PORT
from .logs import follow_log, read_log
from .manifests import names, render, token_secret_manifest
from .options import DEFAULT_LAUNCH_TIMEOUT, KubernetesOptions
from .portforward import dial as _portforward

if TYPE_CHECKING:
    from kubernetes.client import Configuration

__all__ = ["STARTED_AT_ANNOTATION", "KubernetesBackend"]

logger = logging.getLogger(__name__)

#: Unix time the compute's current spec was applied (a changed spec starts it again).
STARTED_AT_ANNOTATION = "kubetorch.dev/started-at"
#: (connect, read) seconds of each plain API request: an API server that cannot be
#: reached (a VPN down) fails ``kt list`` in seconds, not minutes.
REQUEST_TIMEOUT = (10.0, 30.0)
#: Seconds teardown waits for the compute's pods to be gone.
TEARDOWN_WAIT = 60.0
_PODS = _apply.Kind("v1", "Pod", "pods")
#: Objects as the API answers them (an alias: ``list`` is a method of the backend).
_Objects = list[dict[str, Any]]
_SECRETS = _apply.Kind("v1", "Secret", "secrets")


@dataclass(frozen=True)
class _Attached:
    """The pod a connection was dialled to, and its restart count then."""

    pod: str
    uid: str
    restarts: int


def _timestamp(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _created(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


def _launch_timeout(options: KubernetesOptions) -> float:
    """The compute's ``launch_timeout``, else ``KT_START_TIMEOUT`` when set, else 600 s.

    (A cluster pulls images and installs: the local backend's 120 s default is short.)
    The pod's startup probe gives its container as long (see :mod:`.pods`).
    """
    if options.launch_timeout is not None:
        return float(options.launch_timeout)
    if os.environ.get(config.SETTINGS["start_timeout"].env):
        return float(config.get("start_timeout"))
    return DEFAULT_LAUNCH_TIMEOUT


class KubernetesBackend(Backend):
    """Computes as Kubernetes workloads, reached through the API server or by URL.

    Args:
        configuration: A ``kubernetes.client.Configuration`` (tests pass their test
            server's); default: the kubeconfig or the pod's service account, loaded on
            first use (see :mod:`.client`).
        namespace: The namespace (default ``KT_NAMESPACE``, else the context's).
        username: Prefix of resource names (default ``KT_USERNAME``).
        connect: ``"port-forward"`` or ``"url"`` (default ``KT_K8S_CONNECT``).
    """

    name = "kubernetes"

    def __init__(self, configuration: Configuration | None = None, *,
                 namespace: str | None = None, username: str | None = None,
                 connect: Literal["port-forward", "url"] | None = None) -> None:
        self._configuration = configuration
        self._namespace = namespace
        self._username = username
        self._connect = connect
        self._cluster: Cluster | None = None
        self._lock = threading.Lock()
        # By the PodInfo a connection was opened with (id, the info kept alive with it):
        # which pod its dial reached, and a death a status call saw.
        self._attached: dict[int, tuple[PodInfo, _Attached]] = {}
        self._dead: dict[int, PodStatus] = {}
        self._torn: dict[str, str] = {}
        self._missing_kinds: set[str] = set()

    @classmethod
    def from_environment(cls) -> KubernetesBackend:
        """The backend of ``KT_KUBECONFIG`` / ``KT_KUBE_CONTEXT`` (or the pod's account).

        Raises:
            ConfigError: When the ``kubernetes`` package or a configuration is missing.
        """
        backend = cls()
        backend._load()
        return backend

    def close(self) -> None:
        """Close the API client's connections (a later call opens them again)."""
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.api.close()

    # ---- plumbing -----------------------------------------------------------------------

    def _load(self) -> Cluster:
        with self._lock:
            if self._cluster is None:
                self._cluster = load(self._configuration, namespace=self._namespace)
            return self._cluster

    @property
    def api(self) -> Any:
        """The ``kubernetes.client.ApiClient`` (loaded on first use)."""
        return self._load().api

    @property
    def username(self) -> str:
        """Whose computes these are (``KT_USERNAME`` unless given)."""
        return self._username or str(config.get("username"))

    def namespace_of(self, spec: ComputeSpec | dict[str, Any] | None = None) -> str:
        """The namespace of a compute: its spec's ``kubernetes.namespace``, else the default."""
        k8s = (spec.kubernetes if isinstance(spec, ComputeSpec)
               else (spec or {}).get("kubernetes") or {})
        return str(k8s.get("namespace") or self._load().namespace)

    def _ns(self, info: PodInfo | None = None) -> str:
        return self.namespace_of(info.spec if info is not None else None)

    def _selector(self, name: str | None = None, component: str | None = None) -> str:
        return identity.selector(self.username, name, component)

    def _url(self, name: str, namespace: str, spec: dict[str, Any] | None = None) -> str:
        service = pod_name(name, self.username)
        with contextlib.suppress(ValueError, TypeError, KtError):  # a spec of another client
            if spec:
                service = names(ComputeSpec.from_json(spec), username=self.username).service
        if (self._connect or config.get("k8s_connect")) == "url":
            template = str(config.get("k8s_url"))
        else:  # only the Host header of the upgrade: the dial function picks the pod
            template = "ws://{service}.{namespace}.svc:{port}"
        return template.format(service=service, namespace=namespace, name=name,
                               username=self.username, port=RUNTIME_PORT)

    # ---- what exists ----------------------------------------------------------------------

    def _workloads(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        """The workloads of this user (one compute's when ``name`` is given)."""
        out: list[dict[str, Any]] = []
        for kind in _apply.WORKLOAD_KINDS:
            if kind.plural + kind.api_version in self._missing_kinds:
                continue
            items, version = _apply.list_objects(self.api, kind, namespace,
                                                 self._selector(name), timeout=REQUEST_TIMEOUT)
            if kind.operator and not items and not version:
                self._missing_kinds.add(kind.plural + kind.api_version)  # CRD not installed
            out.extend(items)
            if name is not None and out:
                break
        return out

    def _tokens(self, namespace: str, name: str | None = None) -> dict[str, str]:
        """The pod tokens of this user's computes (one's when ``name`` is given), by name."""
        items, _ = _apply.list_objects(self.api, _SECRETS, namespace,
                                       self._selector(name, "token"), timeout=REQUEST_TIMEOUT)
        out = {}
        for item in items:
            compute = ((item.get("metadata") or {}).get("labels") or {}).get(
                identity.COMPUTE_LABEL)
            raw = (item.get("data") or {}).get("token")
            if compute and raw:
                with contextlib.suppress(ValueError):
                    out[compute] = base64.b64decode(raw).decode()
            elif compute and (item.get("stringData") or {}).get("token"):
                out[compute] = str(item["stringData"]["token"])  # a server that keeps it so
        return out

    def _info(self, workload: dict[str, Any], token: str, namespace: str) -> PodInfo:
        meta = workload.get("metadata") or {}
        notes = meta.get("annotations") or {}
        name = str((meta.get("labels") or {}).get(identity.COMPUTE_LABEL) or meta.get("name"))
        try:
            spec = json.loads(notes.get(identity.SPEC_ANNOTATION) or "{}")
        except ValueError:
            spec = {}
        try:
            started = float(notes.get(STARTED_AT_ANNOTATION) or 0) or _timestamp(_created(workload))
        except ValueError:
            started = _timestamp(_created(workload))
        spec = spec if isinstance(spec, dict) else {}
        return PodInfo(name=name, url=self._url(name, namespace, spec), token=token,
                       backend=self.name, started_at=started, spec=spec, spec_hash=str(notes.get(
                               identity.SPEC_HASH_ANNOTATION) or ""))

    def _pods(self, name: str, namespace: str) -> list[dict[str, Any]]:
        items, _ = _apply.list_objects(self.api, _PODS, namespace, self._selector(name, "pod"),
                                       timeout=REQUEST_TIMEOUT)
        return items

    # ---- Backend: create ------------------------------------------------------------------

    def check(self, spec: ComputeSpec, *, progress: bool = True) -> None:
        """Raise now what rendering ``spec``'s objects would raise (a bad option)."""
        self._render(spec, self.namespace_of(spec), token_secret="check")

    def _render(self, spec: ComputeSpec, namespace: str, *,
                token_secret: str) -> list[dict[str, Any]]:
        runtime = runtime_container(spec, username=self.username, namespace=namespace)
        # An idle pod scales its own workload to 0 (pod_runtime.selfscale): it needs a
        # ServiceAccount whose Role allows that and nothing else.
        return render(spec, runtime=runtime, username=self.username, namespace=namespace,
                      token_secret=token_secret, scaler=bool(spec.inactivity_ttl))

    def up(self, spec: ComputeSpec, *, progress: bool = True,
           replacing: str | None = ANY_POD) -> PodInfo:
        """Apply ``spec``'s objects (creating or updating them) and wait for a ready pod.

        Raises:
            PodChanged: When a live compute of that name runs a spec other than
                ``replacing`` (another process started or changed it meanwhile).
            PodStartError: When its pod cannot start (the message says why and what to do).
            ConfigError: For a bad option, or an API request that fails.
        """
        name = check_name(spec.name, self.username)
        namespace = self.namespace_of(spec)
        spec_hash = spec.spec_hash()
        existing = next(iter(self._workloads(namespace, name)), None)
        old_pods: list[dict[str, Any]] = []  # of another spec: not this start's
        there: list[dict[str, Any]] = []  # of this spec, there before: replaceable
        started_at = time.time()
        if existing is not None:
            notes = (existing.get("metadata") or {}).get("annotations") or {}
            have = notes.get(identity.SPEC_HASH_ANNOTATION)
            if have == spec_hash:
                with contextlib.suppress(ValueError):
                    started_at = float(notes.get(STARTED_AT_ANNOTATION) or started_at)
                there = self._pods(name, namespace)
            else:
                old_pods = self._pods(name, namespace)
                live = any(_pods.pod_status(p).alive for p in old_pods)
                if replacing != ANY_POD and have != replacing and live:
                    raise PodChanged(name)
        token = self._tokens(namespace, name).get(name) or secrets.token_urlsafe(32)
        secret = token_secret_manifest(spec, username=self.username, namespace=namespace,
                                       token=token)
        objects = self._render(spec, namespace, token_secret=secret["metadata"]["name"])
        self._torn.pop(name, None)
        _apply.apply_compute(self.api, secret, objects, namespace, name=name,
                             annotations={STARTED_AT_ANNOTATION: f"{started_at:.3f}"},
                             timeout=REQUEST_TIMEOUT)
        options = KubernetesOptions.from_spec(spec)
        target = readiness.Target(
            name=name, namespace=namespace, selector=self._selector(name, "pod"),
            replicas=1 if options.autoscale is not None else options.replicas,
            replaceable=frozenset(str((p.get("metadata") or {}).get("uid")) for p in there),
            spec_hash=spec_hash, hash_annotation=identity.SPEC_HASH_ANNOTATION,
            exclude=frozenset(str((p.get("metadata") or {}).get("uid")) for p in old_pods))
        show = bool(progress and config.get("progress"))
        bar = progress_bar(enabled=show, total=None, desc=f"starting pod {name!r}: scheduling",
                           bar_format="{desc} {elapsed}")
        try:
            def say(stage: str) -> None:
                bar.set_description_str(f"starting pod {name!r}: {stage}", refresh=True)

            readiness.wait_ready(self.api, target, timeout=_launch_timeout(options),
                                 on_stage=say)
        finally:
            bar.close()
        workload = next(iter(self._workloads(namespace, name)), None)
        if workload is None:  # torn down while it started
            raise ComputeNotFoundError(name, [])
        return self._info(workload, token, namespace)

    # ---- Backend: find ------------------------------------------------------------------

    def get(self, name: str) -> PodInfo:
        """The compute called ``name`` (its workload exists, whatever its pods do).

        Raises:
            ComputeNotFoundError: When there is none in this namespace.
        """
        check_name(name, self.username)
        namespace = self.namespace_of()
        workload = next(iter(self._workloads(namespace, name)), None)
        if workload is None:
            raise ComputeNotFoundError(name, [i.name for i in self.list()])
        return self._info(workload, self._tokens(namespace, name).get(name, ""), namespace)

    def list(self) -> list[PodInfo]:
        """Every compute of this user in the namespace, by name.

        An API server that cannot be reached lists nothing, with a warning in the log
        (``kt list`` still shows the other backends).
        """
        namespace = self.namespace_of()
        try:
            workloads = self._workloads(namespace)
            tokens = self._tokens(namespace)
        except _apply.ApiFailure as exc:
            if exc.status not in (0, 401, 403):
                raise
            logger.warning("kubernetes computes are not listed: %s", exc)
            return []
        infos = [self._info(w, "", namespace) for w in workloads
                 if not (w.get("metadata") or {}).get("deletionTimestamp")]
        for info in infos:
            info.token = tokens.get(info.name, "")
        return sorted(infos, key=lambda i: i.name)

    # ---- Backend: remove ----------------------------------------------------------------

    def down(self, name: str) -> None:
        """Delete every object of the compute (foreground), then wait for its pods to go.

        Raises:
            ComputeNotFoundError: When nothing of that name exists.
        """
        check_name(name, self.username)
        namespace = self.namespace_of()
        api = self.api
        found = False
        # (an exported notebook job on this compute keeps its objects: kt jobs rm's)
        not_jobs = f"{self._selector(name)},{identity.COMPONENT_LABEL}!=job"
        for kind, obj in list(_apply.owned(api, namespace, not_jobs, timeout=REQUEST_TIMEOUT)):
            obj_name = str((obj.get("metadata") or {}).get("name"))
            found = _apply.delete(api, kind, namespace, obj_name, timeout=REQUEST_TIMEOUT) or found
        if not found:
            raise ComputeNotFoundError(name, [i.name for i in self.list()])
        self._torn[name] = f"torn down by process {os.getpid()}"
        readiness.wait_pods_gone(api, namespace, self._selector(name, "pod"),
                                 timeout=TEARDOWN_WAIT, name=name)

    # ---- Backend: status ----------------------------------------------------------------

    def status(self, info: PodInfo) -> PodStatus:
        """The compute's status; for a connected one, whether the pod it talked to lives.

        A pod the connection was dialled to that is deleted, evicted, failed, or whose
        container restarted since (an OOM kill, a crash: its state is lost) is ``failed``
        with that reason, even while a replacement starts. Without a connection: running
        when a pod is ready, else the most advanced pod's status; ``gone`` (reason
        ``TornDown``) when the compute's workload is gone.
        """
        torn = self._torn.get(info.name)
        if torn is not None:
            return PodStatus("gone", "TornDown", torn)
        namespace = self._ns(info)
        idle = self._idle_stopped(info, namespace)
        if idle is not None:
            return idle
        pods = self._pods(info.name, namespace)
        attached = self._attached_to(info)
        if attached is not None:
            status = self._attached_status(info, attached, pods, namespace)
        else:
            status = self._overall(info, pods, namespace)
        if not status.alive:
            self._dead[id(info)] = status
        return status

    def _idle_stopped(self, info: PodInfo, namespace: str) -> PodStatus | None:
        """``gone``/``Idle`` when the compute's pod scaled its workload to 0 for idleness.

        Only the pod does that (``pod_runtime.selfscale``, a compute with an
        ``inactivity_ttl``; the manifests always ask for at least one replica), so a
        Deployment or StatefulSet at 0 replicas of such a compute was stopped for idleness.
        The next ``.to()`` re-applies it, which puts its replicas back.
        """
        ttl = (info.spec or {}).get("inactivity_ttl")
        if not ttl:
            return None
        for workload in self._workloads(namespace, info.name):
            if workload.get("kind") in ("Deployment", "StatefulSet") and (
                    (workload.get("spec") or {}).get("replicas") == 0):
                return PodStatus("gone", ending.IDLE, ending.describe(ending.IDLE, float(ttl)))
        return None

    def _attached_to(self, info: PodInfo) -> _Attached | None:
        found = self._attached.get(id(info))
        return found[1] if found is not None and found[0] is info else None

    def _gone_workload(self, info: PodInfo, namespace: str) -> bool:
        return not self._workloads(namespace, info.name)

    def _attached_status(self, info: PodInfo, attached: _Attached,
                         pods: _Objects, namespace: str) -> PodStatus:
        pod = next((p for p in pods if (p.get("metadata") or {}).get("uid") == attached.uid),
                   None)
        if pod is None:
            if self._gone_workload(info, namespace):
                return PodStatus("gone", "TornDown", "its workload was deleted (kt teardown "
                                 "or kubectl)")
            return PodStatus("failed", "Deleted", f"pod {attached.pod} was deleted")
        status = _pods.pod_status(pod)
        if status.alive and _pods.container_restarts(pod) > attached.restarts:
            last: dict[str, Any] = {}
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                last = (cs.get("lastState") or {}).get("terminated") or last
            reason = str(last.get("reason") or "Restarted")
            if reason == "OOMKilled":
                return _pods.oom_status(pod, f"pod {attached.pod} was OOM-killed and its "
                                        "container restarted", _pods.exit_status(last))
            return PodStatus("failed", reason, f"the container of pod {attached.pod} restarted "
                             f"(exit status {last.get('exitCode')})", _pods.exit_status(last))
        return status

    def _overall(self, info: PodInfo, pods: _Objects, namespace: str) -> PodStatus:
        if not pods:
            if self._gone_workload(info, namespace):
                return PodStatus("gone", "TornDown", "its workload was deleted")
            return PodStatus("pending", message="no pod yet")
        order = {"running": 0, "starting": 1, "pending": 2, "failed": 3, "gone": 4}
        statuses = sorted((_pods.pod_status(p) for p in pods), key=lambda s: order[s.phase])
        return statuses[0]

    def gone(self, info: PodInfo) -> bool:
        """Whether a status call already saw the compute's pod end (no API call)."""
        return id(info) in self._dead or info.name in self._torn

    def settle(self, info: PodInfo, timeout: float) -> PodStatus:
        """The status once a dropped connection's cause shows, waiting up to ``timeout``.

        The kubelet reports a killed container a moment after its sockets close; this
        watches the connected pod (an event stream, bounded) until it is seen to end.
        """
        from kubernetes import watch as k8s_watch
        from kubernetes.client import CoreV1Api

        status = self.status(info)
        attached = self._attached_to(info)
        if not status.alive or attached is None:
            return status
        deadline = time.monotonic() + timeout
        stream = k8s_watch.Watch()
        try:
            for event in stream.stream(
                    CoreV1Api(self.api).list_namespaced_pod, self._ns(info),
                    label_selector=self._selector(info.name, "pod"),
                    timeout_seconds=max(1, int(timeout + 0.999)),
                    _request_timeout=timeout + 10, deserialize=False):
                meta = (event.get("object") or {}).get("metadata") or {}
                if meta.get("uid") == attached.uid or event.get("type") == "DELETED":
                    status = self.status(info)
                    if not status.alive:
                        return status
                if time.monotonic() >= deadline:
                    break
        except Exception as exc:  # noqa: BLE001 - the status as it is then
            logger.debug("settling %s: %s", info.name, exc)
        finally:
            stream.stop()
        return self.status(info)

    def ready(self, info: PodInfo) -> Literal["ready", "starting", "unresponsive"] | None:
        """``ready`` when a pod of the compute is Ready, ``starting`` while one starts."""
        pods = self._pods(info.name, self._ns(info))
        if any(_pods.is_ready(p) for p in pods):
            return "ready"
        if any(_pods.pod_status(p).phase in ("pending", "starting") for p in pods):
            return "starting"
        return "unresponsive" if pods else None

    def idle_since(self, info: PodInfo) -> float | None:
        """The pod's last activity, from its ``/metrics`` (through a port-forward)."""
        try:
            pod = self._ready_pod(info)
            sock = _portforward(self.api, self._ns(info), _pods.pod_name(pod), RUNTIME_PORT)
        except (ConnectionError, _apply.ApiFailure):
            return None
        try:
            sock.settimeout(5.0)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
            response = http.client.HTTPResponse(sock)
            response.begin()
            body = response.read() if response.status == 200 else b""
        except (OSError, http.client.HTTPException):
            return None
        finally:
            sock.close()
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith("kt_last_activity_timestamp_seconds"):
                with contextlib.suppress(ValueError, IndexError):
                    return float(line.rsplit(" ", 1)[1])
        return None

    # ---- Backend: reach -----------------------------------------------------------------

    def _ready_pod(self, info: PodInfo, prefer: str | None = None) -> dict[str, Any]:
        """The pod to dial: ``prefer`` (a uid) while it is ready, else the best ready one.

        The best: of the compute's spec, rank 0 (or the Ray head) first, the newest.
        """
        pods = [p for p in self._pods(info.name, self._ns(info)) if _pods.is_ready(p)]
        kept = [p for p in pods if prefer and (p.get("metadata") or {}).get("uid") == prefer]
        if kept:
            return kept[0]
        if not pods:
            raise ConnectionError(f"compute {info.name!r} has no ready pod now (one that "
                                  "scales to zero is reached with KT_K8S_CONNECT=url)")
        same = [p for p in pods if ((p.get("metadata") or {}).get("annotations") or {}).get(
            identity.SPEC_HASH_ANNOTATION) in (info.spec_hash, None)]

        def rank(pod: dict[str, Any]) -> tuple[bool, str]:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            first = (labels.get("apps.kubernetes.io/pod-index") == "0"
                     or labels.get("ray.io/node-type") == "head")
            return first, _created(pod)

        return max(same or pods, key=rank)

    def _wait_ready_pod(self, info: PodInfo) -> dict[str, Any]:
        """A ready pod of the compute, waiting (a watch) while one starts (a replacement).

        The restart policy reuses a compute whose pod is starting (one replacing a pod
        that died, say): its first connection waits here, up to the launch timeout,
        with the same failure messages as a start.
        """
        try:
            return self._ready_pod(info)
        except ConnectionError:
            pass
        try:
            spec = ComputeSpec.from_json(info.spec)
            options = KubernetesOptions.from_spec(spec)
        except (ValueError, TypeError, KtError):
            options = KubernetesOptions()
        target = readiness.Target(
            name=info.name, namespace=self._ns(info),
            selector=self._selector(info.name, "pod"), spec_hash=info.spec_hash or None,
            hash_annotation=identity.SPEC_HASH_ANNOTATION,
            replicas=1 if options.autoscale is not None else options.replicas,
            replaceable=frozenset(str((p.get("metadata") or {}).get("uid"))
                                  for p in self._pods(info.name, self._ns(info))))
        readiness.wait_ready(self.api, target, timeout=_launch_timeout(options),
                             follow_bootstrap=False)
        return self._ready_pod(info)

    def endpoint(self, info: PodInfo) -> Endpoint:
        """Where the bridge reaches the compute: a port-forward dial, or ``KT_K8S_URL``.

        The dial function finds the compute's ready pod when it is called (each
        reconnect), so a pod that was replaced or rescheduled is found where it is now.
        """
        namespace = self._ns(info)
        if (self._connect or config.get("k8s_connect")) == "url":
            return Endpoint(self._url(info.name, namespace), info.token,
                            headers=dict(config.get("k8s_headers")))

        def dial(timeout: float) -> Any:
            before = self._attached_to(info)
            if before is not None:
                pod = self._ready_pod(info, before.uid)
            else:
                pod = self._wait_ready_pod(info)
            meta = pod.get("metadata") or {}
            now = _Attached(str(meta.get("name")), str(meta.get("uid")),
                            _pods.container_restarts(pod))
            if before is not None and (before.uid, before.restarts) != (now.uid, now.restarts):
                # The process this connection talked to is gone (replaced, restarted): a
                # fresh one knows none of its calls. Refuse, so status() says how it died
                # and the caller starts over, rather than reconnecting to a stranger.
                raise ConnectionError(f"pod {before.pod} of compute {info.name!r} was "
                                      "replaced or restarted")
            self._attached[id(info)] = (info, now)
            return _portforward(self.api, namespace, now.pod, RUNTIME_PORT)

        dial.__qualname__ = "kubernetes_portforward"
        return Endpoint(info.url, info.token, dial=dial)

    # ---- Backend: logs ------------------------------------------------------------------

    def _log_pod(self, name: str) -> tuple[str, dict[str, Any]]:
        namespace = self.namespace_of()
        pods = self._pods(check_name(name, self.username), namespace)
        if not pods:
            raise ComputeNotFoundError(name, [i.name for i in self.list()])
        ready = [p for p in pods if _pods.is_ready(p)]
        return namespace, max(ready or pods, key=_created)

    def logs(self, name: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the compute's pod's log (its newest pod).

        Raises:
            ComputeNotFoundError: When the compute has no pod.
        """
        namespace, pod = self._log_pod(name)
        container = _pods.main_container(pod).get("name")
        return read_log(self.api, namespace, _pods.pod_name(pod), tail=tail,
                                  container=container, timeout=REQUEST_TIMEOUT)

    def follow_logs(self, name: str, tail: int = 10,
                    stop: threading.Event | None = None) -> Iterator[str]:
        """The last ``tail`` lines of the pod's log, then each new one, until ``stop`` is set.

        Ends by itself when the pod's log ends (the pod stopped).

        Raises:
            ComputeNotFoundError: When the compute has no pod.
        """
        namespace, pod = self._log_pod(name)
        return follow_log(self.api, namespace, _pods.pod_name(pod), tail=tail,
                          container=_pods.main_container(pod).get("name"), stop=stop)
