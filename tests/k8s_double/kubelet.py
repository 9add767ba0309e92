"""The node agent: starts a :class:`~.pod_worker.PodWorker` per bound pod, and stops it.

Also what the API needs from the node (pods' logs), the probes the workers run, and
the faults a test injects into running pods (OOM kill, eviction).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from .containers import Images
from .faults import Faults
from .pod_worker import PODS, Container, LogBuffer, PodWorker
from .rbac import ServiceAccounts
from .store import ApiError, Store

__all__ = ["Kubelet"]

Obj = dict[str, Any]


class Kubelet:
    """Pod workers, by pod uid, and the processes they run.

    Args:
        store: The object store.
        images: The image map.
        root: Where volumes and pod home directories go.
        faults: The scripted faults in force.
        probe_interval: Seconds between probes (instead of ``periodSeconds``).
        backoff: First restart / image-pull back-off in seconds (doubling, capped at 30x).
        errors: Where a worker's unexpected exception is reported (a bug in the double).
    """

    def __init__(self, store: Store, images: Images, root: Path, faults: Faults, *,
                 probe_interval: float = 0.2, backoff: float = 0.5,
                 errors: list[str] | None = None) -> None:
        self.store, self.images, self.root, self.faults = store, images, root, faults
        self.probe_interval, self.backoff = probe_interval, backoff
        self.workers: dict[str, PodWorker] = {}
        self.errors = errors if errors is not None else []
        self.procs: dict[int, tuple[PodWorker, Container]] = {}
        self.api_port = 0
        self.accounts = ServiceAccounts()
        # A random /24 of 127/8 per double, so two doubles on one machine do not collide.
        self._next_ip = (random.randrange(1, 255) << 16 | random.randrange(0, 256) << 8) + 2
        self._tick = asyncio.Event()

    def allocate_ip(self) -> str:
        """The next loopback address (127.R.S.2, 127.R.S.3, ...; never reused)."""
        n, self._next_ip = self._next_ip, self._next_ip + 1
        return f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"

    def wake(self) -> None:
        """Something changed: wake every worker waiting in :meth:`changed`."""
        ev, self._tick = self._tick, asyncio.Event()
        ev.set()

    async def changed(self, timeout: float | None, only_stop: bool = False,
                      worker: PodWorker | None = None) -> None:
        """Wait for a change (or ``timeout``); with ``only_stop``, sleep until the worker stops."""
        if not only_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), timeout)
            return
        deadline = time.monotonic() + (timeout or 0)
        while worker is not None and not worker.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), left)

    def sync(self) -> None:
        """Start workers for newly bound pods; stop those of deleted pods."""
        seen = set()
        for pod in list(self.store.items(PODS)):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            uid = meta["uid"]
            seen.add(uid)
            w = self.workers.get(uid)
            if meta.get("deletionTimestamp"):
                if w is None:
                    with contextlib.suppress(ApiError, KeyError):
                        self.store.remove(PODS, meta["namespace"], meta["name"])
                elif not w.stopping:
                    grace = float(meta.get("deletionGracePeriodSeconds", 30))
                    w.killer = asyncio.create_task(w.stop(grace, remove=True))
                elif w.killer is None:
                    w.killer = asyncio.create_task(w.stop(0, remove=True, again=True))
                continue
            phase = (pod.get("status") or {}).get("phase")
            if w is None and spec.get("nodeName") and phase not in ("Succeeded", "Failed"):
                w = PodWorker(self, pod)
                self.workers[uid] = w
                w.task = asyncio.create_task(self._guarded(w))
        for uid, w in list(self.workers.items()):
            if uid not in seen:
                if w.stopping:
                    self.workers.pop(uid, None)
                else:
                    w.killer = asyncio.create_task(w.stop(0, remove=False))
        self.wake()

    async def _guarded(self, w: PodWorker) -> None:
        try:
            await w.run()
        except Exception:  # noqa: BLE001  (a bug in the double: reported by the fixture)
            self.errors.append(f"pod {w.ns}/{w.name}: {traceback.format_exc()}")

    def worker(self, ns: str, name: str) -> PodWorker:
        """The worker of a running pod.

        Raises:
            ApiError: 404 when the pod does not exist or runs nowhere.
        """
        pod = self.store.get(PODS, ns, name)
        w = self.workers.get(pod["metadata"]["uid"])
        if w is None:
            raise ApiError(404, "NotFound", f'pod "{name}" is not running on the node')
        return w

    # --- faults --------------------------------------------------------------------------
    def oom_kill(self, ns: str, name: str, container: str | None = None) -> None:
        """SIGKILL a container's processes and report it ``OOMKilled`` (exit 137)."""
        w = self.worker(ns, name)
        for c in w.running():
            if container in (None, c.name) and c.proc is not None:
                c.oom = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                return
        raise ApiError(400, "BadRequest", f"pod {name} has no running container "
                       f"{container or ''}".strip())

    async def evict(self, ns: str, name: str, message: str) -> None:
        """Evict as the kubelet does under node pressure: phase Failed, reason Evicted."""
        w = self.worker(ns, name)
        w.reason, w.message = "Evicted", message
        await w.stop(0, remove=False, forget=False)
        for c in w.containers:
            c.ready = False
        w.phase = "Failed"
        w.publish()
        w.event("Evicted", message, "Warning")

    # --- probes and logs -----------------------------------------------------------------
    async def probe(self, probe: Obj, ip: str, c: Container) -> bool:
        """Run one readiness/liveness probe against the container."""
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe or "tcpSocket" in probe:
                action = probe.get("httpGet") or probe["tcpSocket"]
                port = _port(action.get("port"), c.spec)
                host = action.get("host") or ip
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        timeout)
                try:
                    if "tcpSocket" in probe:
                        return True
                    headers = "".join(f"{h['name']}: {h['value']}\r\n"
                                      for h in action.get("httpHeaders") or [])
                    writer.write(f"GET {action.get('path', '/')} HTTP/1.1\r\nHost: {host}:"
                                 f"{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\n"
                                 f"{headers}Connection: close\r\n\r\n".encode())
                    await writer.drain()
                    line = await asyncio.wait_for(reader.readline(), timeout)
                    parts = line.split()
                    return len(parts) >= 2 and 200 <= int(parts[1]) < 400
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.wait_closed()
            if "exec" in probe:
                proc = await asyncio.create_subprocess_exec(
                    *probe["exec"]["command"], stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
                try:
                    return await asyncio.wait_for(proc.wait(), timeout) == 0
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                    return False
        except (OSError, TimeoutError, ValueError):
            return False
        return False

    def log_source(self, ns: str, name: str, container: str | None, previous: bool
                   ) -> LogBuffer:
        """The log a ``GET .../log`` reads, or the 400 the real server gives.

        Raises:
            ApiError: No such pod or container, or nothing to read yet.
        """
        pod = self.store.get(PODS, ns, name)
        spec = pod.get("spec") or {}
        names = [c["name"] for c in spec.get("containers") or []]
        inits = [c["name"] for c in spec.get("initContainers") or []]
        if container is None:
            if len(names) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for "
                               f"pod {name}, choose one of: [{' '.join(names)}]" +
                               (f" or one of the init containers: [{' '.join(inits)}]"
                                if inits else ""))
            container = names[0]
        if container not in names + inits:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod "
                           f"{name}")
        w = self.workers.get(pod["metadata"]["uid"])
        c = None if w is None else next(x for x in w.inits + w.containers if x.name == container)
        if previous:
            if c is None or c.previous is None:
                raise ApiError(400, "BadRequest", f'previous terminated container '
                               f'"{container}" in pod "{name}" not found')
            return c.previous
        if c is None or not c.cid:
            reason = "ContainerCreating"
            if c is not None:
                reason = (c.state.get("waiting") or {}).get("reason", reason)
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                           f"waiting to start: {reason}")
        return c.log

    async def shutdown(self, grace: float) -> None:
        """Stop every pod's containers (SIGTERM, SIGKILL after ``grace``)."""
        workers = list(self.workers.values())
        await asyncio.gather(*(w.stop(grace, remove=False, again=True) for w in workers),
                             return_exceptions=True)
        for w in workers:
            for task in (w.task, w.killer):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        for pid in list(self.procs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _port(port: Any, container: Obj) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")
