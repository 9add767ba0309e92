"""The double itself: API server, scheduler, controllers and kubelet on one loopback port.

:class:`K8sDouble` runs everything on its own asyncio loop in a background thread;
its methods are called from the test's thread. ``start()`` serves on an ephemeral
port of 127.0.0.1 and writes a kubeconfig (a bearer token the server checks);
``stop()`` kills every process it started, closes every client it handed out and
removes its files. The fault methods script what a real cluster does to pods
(Unschedulable, ImagePullBackOff, OOMKilled, deletion, eviction, a held launch).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from .containers import Image, Images
from .faults import Faults, Rule
from .kubelet import Kubelet
from .reconcile import reconcile
from .resources import find, resource
from .scheduler import node_object
from .server import Api, Recorded, make_app
from .store import ApiError, Store  # noqa: F401  (raised by get())
from .workloads import trigger_cronjob

__all__ = ["K8sDouble", "PodProcess"]

T = TypeVar("T")
Obj = dict[str, Any]
_NODES, _NAMESPACES, _PODS = (resource("", "v1", "nodes"), resource("", "v1", "namespaces"),
                              resource("", "v1", "pods"))
_SA = resource("", "v1", "serviceaccounts")
DEFAULT_EVICTION = ("The node was low on resource: memory. Threshold quantity: 100Mi, "
                    "available: 51200Ki. ")


def _image_env() -> dict[str, str]:
    """The default image's ENV: this process's PYTHONPATH, so pods import this tree's code.

    (The default image stands for the prebuilt ``deploy/Dockerfile`` image, which has
    the runtime installed; a test of the runtime bootstrap maps its image to a bare venv.)
    """
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": path} if path else {}


@dataclass(frozen=True)
class PodProcess:
    """A live container process: which pod and container, and its pid."""

    namespace: str
    pod: str
    container: str
    pid: int


class K8sDouble:
    """A Kubernetes API server test double whose kubelet runs pods as local processes.

    Args:
        gpus: ``nvidia.com/gpu`` capacity of the node (0: a CPU-only node, as most are).
        cpus: CPU capacity of the node.
        memory: Memory capacity of the node.
        nodes: How many identical nodes.
        images: The image map (default: every image is this interpreter's environment).
        probe_interval: Seconds between probes.
        backoff: First restart / image-pull back-off, seconds.
        stop_grace: Seconds ``stop()`` gives pods between SIGTERM and SIGKILL.
    """

    def __init__(self, *, gpus: int = 0, cpus: str = "16", memory: str = "64Gi",
                 nodes: int = 1, images: Images | None = None, probe_interval: float = 0.2,
                 backoff: float = 0.5, stop_grace: float = 5.0) -> None:
        self.images = images or Images(Image(env=_image_env()))
        self.faults = Faults()
        self.token = secrets.token_urlsafe(24)
        self.stop_grace = stop_grace
        self.errors: list[str] = []
        self._node_spec = (gpus, cpus, memory, nodes)
        self._probe_interval, self._backoff = probe_interval, backoff
        self._root: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[Any] = []
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> K8sDouble:
        """Serve on 127.0.0.1 (an ephemeral port) until :meth:`stop`."""
        self._root = Path(tempfile.mkdtemp(prefix="k8s-double-"))
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._main(started))
            except BaseException as exc:  # noqa: BLE001  (reported to start())
                failure.append(exc)
                started.set()
            finally:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()

        self._thread = threading.Thread(target=run, name="k8s-double", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise RuntimeError(f"the Kubernetes double did not start: {failure[0]}")
        self._write_kubeconfig()
        return self

    async def _main(self, started: threading.Event) -> None:
        assert self._root is not None
        self.store = Store()
        self.kubelet = Kubelet(self.store, self.images, self._root, self.faults,
                               probe_interval=self._probe_interval, backoff=self._backoff,
                               errors=self.errors)
        self.api = Api(self.store, self.kubelet, self.token)
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self.store.on_change.append(lambda *_: self._dirty.set())
        for ns in ("default", "kube-system", "kube-public"):
            self.store.create(_NAMESPACES, "", {"metadata": {"name": ns}})
            self.store.create(_SA, ns, {"metadata": {"name": "default"}})
        gpus, cpus, memory, count = self._node_spec
        for i in range(count):
            cap = {"cpu": cpus, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
            if gpus:
                cap["nvidia.com/gpu"] = str(gpus)
            self.store.create(_NODES, "", node_object(
                f"k8s-double-node-{i + 1}", cap, None, None))
        runner = web.AppRunner(make_app(self.api), handler_cancellation=True,
                               shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = getattr(site, "_server", None)
        self.port = server.sockets[0].getsockname()[1] if server else 0
        self.kubelet.api_port = self.port
        control = asyncio.create_task(self._control())
        started.set()
        await self._stopping.wait()
        control.cancel()
        await asyncio.gather(control, return_exceptions=True)
        await self.kubelet.shutdown(self.stop_grace)
        for w in list(self.store.watchers):
            w.queue.put_nowait(None)
        for task in list(self.api.streams):
            task.cancel()
        await runner.cleanup()

    async def _control(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                reconcile(self.store, self.faults)
                self.kubelet.sync()
            except Exception:  # noqa: BLE001  (a bug in the double: reported at stop)
                self.errors.append(traceback.format_exc())
            await asyncio.sleep(0)

    def stop(self) -> None:
        """Kill every pod process, close handed-out clients, stop serving, remove files."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join()
        self._thread = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> K8sDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the double's loop (awaiting it if it is a coroutine)."""
        assert self._loop is not None

        async def run() -> Any:
            out = fn(*args)
            if inspect.isawaitable(out):
                out = await out
            self._dirty.set()
            return out

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(60)

    # --- clients -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The API server's URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig naming this server, with its bearer token (context ``k8s-double``)."""
        assert self._root is not None, "start() the double first"
        return self._root / "kubeconfig"

    def _write_kubeconfig(self) -> None:
        import yaml

        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "k8s-double",
               "clusters": [{"name": "k8s-double", "cluster": {"server": self.url}}],
               "users": [{"name": "k8s-double", "user": {"token": self.token}}],
               "contexts": [{"name": "k8s-double", "context": {
                   "cluster": "k8s-double", "user": "k8s-double", "namespace": "default"}}]}
        self.kubeconfig_path.write_text(yaml.safe_dump(cfg))
        self.kubeconfig_path.chmod(0o600)

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` loaded from :attr:`kubeconfig_path`."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig_path), client_configuration=cfg)
        return cfg

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server (closed by :meth:`stop`)."""
        from kubernetes import client

        api = client.ApiClient(self.configuration())
        self._clients.append(api)
        return api

    # --- inspection ----------------------------------------------------------------------
    @property
    def requests(self) -> list[Recorded]:
        """Every request answered so far, in order."""
        return self.call(lambda: list(self.api.requests))

    @property
    def processes(self) -> list[PodProcess]:
        """The container processes alive now."""
        def snap() -> list[PodProcess]:
            return [PodProcess(w.ns, w.name, c.name, pid)
                    for pid, (w, c) in self.kubelet.procs.items()
                    if c.proc is not None and c.proc.returncode is None]
        return self.call(snap)

    def get(self, plural: str, name: str, namespace: str = "default", group: str = "",
            version: str = "v1") -> Obj:
        """A stored object (a copy), as the API would return it.

        Raises:
            ApiError: 404 when there is none.
        """
        rt = find(group, version, plural)
        if rt is None:
            raise ValueError(f"the double serves no {group}/{version} {plural}")
        return self.call(self.store.get, rt, namespace if rt.namespaced else "", name)

    def claim_path(self, claim: str, namespace: str = "default") -> Path:
        """Where the kubelet keeps a PersistentVolumeClaim's data (what pods wrote there).

        The directory exists once a pod that mounts the claim has started.
        """
        assert self._root is not None, "the double is not started"
        return self._root / "pvcs" / namespace / claim

    # --- scripted faults ------------------------------------------------------------------
    def unschedulable(self, message: str | None = None, *, selector: str | None = None,
                      name_prefix: str | None = None) -> Rule:
        """Keep matching pods Pending: ``PodScheduled=False``, reason Unschedulable.

        Args:
            message: The scheduler's message (default: every node lacks a GPU).
            selector: Label selector of the pods it applies to (None: all).
            name_prefix: Only pods whose name starts so.
        """
        n = self._node_spec[3]
        message = message or (f"0/{n} nodes are available: {n} Insufficient nvidia.com/gpu. "
                              f"preemption: 0/{n} nodes are available: {n} No preemption "
                              "victims found for incoming pod.")
        return self._add(Rule("unschedulable", selector, name_prefix, message=message))

    def hold(self, stage: str, *, selector: str | None = None, name_prefix: str | None = None
             ) -> Rule:
        """Keep matching pods at ``stage``: Pending, ContainerCreating or NotReady."""
        from .faults import STAGES

        if stage not in STAGES:
            raise ValueError(f"hold(stage): one of {', '.join(STAGES)}, not {stage!r}")
        return self._add(Rule("hold", selector, name_prefix, stage=stage))

    def forbid(self, resource: str, verbs: tuple[str, ...] = ("create", "patch", "update")
               ) -> Rule:
        """Refuse ``verbs`` on ``resource`` (a plural: ``cronjobs``) with 403, as RBAC would."""
        return self._add(Rule("forbid", verbs=tuple(verbs), resource=resource))

    def _add(self, rule: Rule) -> Rule:
        self.call(self.faults.rules.append, rule)
        return rule

    def clear(self, rule: Rule | None = None) -> None:
        """Lift one fault rule (or all): held and unschedulable pods carry on."""
        def drop() -> None:
            if rule is None:
                self.faults.rules.clear()
            elif rule in self.faults.rules:
                self.faults.rules.remove(rule)
            self.kubelet.wake()
        self.call(drop)

    def missing_image(self, image: str) -> None:
        """Make ``image`` unpullable (ErrImagePull, then ImagePullBackOff)."""
        self.call(self.images.missing.add, image)

    def set_image(self, image: str, spec: Image) -> None:
        """Map ``image`` to a local environment (and make it pullable)."""
        self.call(self.images.set, image, spec)

    def oom_kill(self, pod: str, namespace: str = "default", container: str | None = None
                 ) -> None:
        """SIGKILL the container's processes, reported as ``OOMKilled`` (exit code 137)."""
        self.call(self.kubelet.oom_kill, namespace, pod, container)

    def delete_pod(self, pod: str, namespace: str = "default", grace: int | None = None
                   ) -> None:
        """Delete a pod as ``kubectl delete pod`` does (graceful; its controller replaces it)."""
        self.call(self.store.delete, _PODS, namespace, pod, None, grace)

    def evict(self, pod: str, namespace: str = "default", message: str = DEFAULT_EVICTION
              ) -> None:
        """Evict the pod under node pressure: phase Failed, reason Evicted (it stays listed)."""
        self.call(lambda: asyncio.ensure_future(self.kubelet.evict(namespace, pod, message)))

    def set_node(self, name: str, capacity: dict[str, str], *, labels: dict[str, str] | None
                 = None, taints: list[Obj] | None = None) -> None:
        """Add or replace a node (capacity such as ``{"nvidia.com/gpu": "4", ...}``)."""
        nodes = _NODES

        def put() -> None:
            obj = node_object(name, capacity, labels, taints)
            live = self.store.find(nodes, "", name)
            if live is None:
                self.store.create(nodes, "", obj)
            else:
                self.store.commit(nodes, {**live, "metadata": {**live["metadata"],
                                                                "labels": obj["metadata"][
                                                                    "labels"]},
                                          "spec": obj["spec"]})
                fresh = self.store.get(nodes, "", name)
                self.store.commit(nodes, {**fresh, "status": obj["status"]}, status_only=True)
        self.call(put)

    def trigger_cronjob(self, name: str, namespace: str = "default") -> Obj:
        """Run a CronJob's job now; returns the Job."""
        return self.call(trigger_cronjob, self.store, namespace, name)



