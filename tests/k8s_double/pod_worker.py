"""One pod on the node: its containers run as real local processes.

A pod scheduled to a node gets a :class:`PodWorker` (the :class:`~.kubelet.Kubelet`
starts and stops them). It gives the pod its own loopback
address (``status.podIP`` = 127.R.S.N: a random /24 of 127/8 per double, N from 2;
Linux routes all of 127/8 to ``lo``, so nothing listens beyond loopback),
sets up its volumes (see :mod:`.containers`), "pulls" each image through the image map,
runs the init containers in order and then every container: ``command`` + ``args`` (or
the image's entrypoint), ``$(VAR)``-expanded, mount paths rewritten, with the image's
``PATH``/``ENV`` and the container's env, in its own session (killed as a group, like a
cgroup). Status moves Pending -> ContainerCreating -> Running; ``Ready`` follows the
readiness probe (``httpGet``, ``tcpSocket`` or ``exec``), a failing liveness probe
restarts the container. An exit records ``lastState.terminated`` (exitCode, reason
``Completed``/``Error``/``OOMKilled``/``StartError``), bumps ``restartCount`` and, as
``restartPolicy`` says, restarts after a doubling back-off shown as ``CrashLoopBackOff``.
stdout and stderr together are the container's log; ``previous`` reads the last
terminated run's (during a back-off, the run that just ended).

Timing is compressed, not real: probes run every :attr:`Kubelet.probe_interval` seconds
(``periodSeconds`` and ``initialDelaySeconds`` are not waited; thresholds count), and the
restart and image-pull back-offs start at :attr:`Kubelet.backoff` seconds (real: 10 s).
Grace periods on deletion are real seconds: SIGTERM, then SIGKILL after
``terminationGracePeriodSeconds`` (or the delete's ``gracePeriodSeconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .containers import (
    ConfigError,
    Image,
    MountError,
    container_env,
    expand,
    mount_volumes,
    mounts_of,
    rewrite,
)
from .events import record_event
from .resources import resource
from .store import ApiError, now

if TYPE_CHECKING:
    from .kubelet import Kubelet

__all__ = ["Kubelet", "LogBuffer", "PodWorker"]

Obj = dict[str, Any]
PODS = resource("", "v1", "pods")


class LogBuffer:
    """One container run's output, readable while it grows."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self._ev = asyncio.Event()

    def _notify(self) -> None:
        ev, self._ev = self._ev, asyncio.Event()
        ev.set()

    def write(self, chunk: bytes) -> None:
        """Append output."""
        self.data += chunk
        self._notify()

    def close(self) -> None:
        """The run ended: followers get what is left, then the end."""
        self.closed = True
        self._notify()

    def text(self, tail: int | None = None) -> bytes:
        """Everything, or the last ``tail`` lines."""
        data = bytes(self.data)
        if tail is None:
            return data
        lines = data.splitlines(keepends=True)
        return b"".join(lines[-tail:]) if tail > 0 else b""

    def size(self) -> int:
        """Bytes so far."""
        return len(self.data)

    async def wait_beyond(self, offset: int) -> bytes | None:
        """The bytes after ``offset`` once there are some; None once the run has ended."""
        while len(self.data) <= offset and not self.closed:
            await self._ev.wait()
        return bytes(self.data[offset:]) if len(self.data) > offset else None


@dataclass
class Container:
    """What the kubelet knows of one container of a pod."""

    spec: Obj
    init: bool = False
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last: Obj = field(default_factory=dict)
    restarts: int = 0
    ready: bool = False
    proc: asyncio.subprocess.Process | None = None
    log: LogBuffer = field(default_factory=LogBuffer)
    previous: LogBuffer | None = None
    oom: bool = False
    cid: str = ""

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self.spec["name"])

    def status(self) -> Obj:
        """Its entry in ``containerStatuses``."""
        image = self.spec.get("image", "")
        out: Obj = {"name": self.name, "image": image,
                    "imageID": f"docker.io/library/{image}@sha256:"
                               + hashlib.sha256(image.encode()).hexdigest(),
                    "ready": self.ready, "restartCount": self.restarts, "state": self.state,
                    "lastState": self.last, "started": "running" in self.state}
        if self.cid:
            out["containerID"] = f"containerd://{self.cid}"
        return out


class PodWorker:
    """Runs one pod's containers and writes its status."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        self.kubelet, self.store = kubelet, kubelet.store
        self.ns, self.name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        spec = pod.get("spec") or {}
        self.policy = spec.get("restartPolicy", "Always")
        self.inits = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec.get("containers") or []]
        self.ip = kubelet.allocate_ip()
        self.started = now()
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.initialized = not self.inits
        self.sandbox = False
        self.stopping = False
        self.conditions: dict[str, Obj] = {}
        self.task: asyncio.Task[None] | None = None
        self.killer: asyncio.Task[None] | None = None

    # --- status ------------------------------------------------------------------------
    def _cond(self, type_: str, ok: bool, reason: str | None = None) -> Obj:
        status = "True" if ok else "False"
        old = self.conditions.get(type_)
        if old and old["status"] == status and old.get("reason") == reason:
            return old
        cond: Obj = {"type": type_, "status": status, "lastProbeTime": None,
                     "lastTransitionTime": now()}
        if reason:
            cond["reason"] = reason
        self.conditions[type_] = cond
        return cond

    def publish(self) -> None:
        """Write the pod's status from what the worker knows (a no-op when unchanged)."""
        pod = self.store.find(PODS, self.ns, self.name)
        if pod is None or pod["metadata"]["uid"] != self.uid:
            return
        ready = bool(self.containers) and all(c.ready for c in self.containers)
        not_ready = None if ready else "ContainersNotReady"
        if self.phase in ("Succeeded", "Failed"):
            not_ready = "PodCompleted"
        conds = [self._cond("PodReadyToStartContainers", self.sandbox),
                 self._cond("Initialized", self.initialized,
                            None if self.initialized else "ContainersNotInitialized"),
                 self._cond("Ready", ready, not_ready),
                 self._cond("ContainersReady", ready, not_ready),
                 self._cond("PodScheduled", True)]
        if self.reason == "Evicted":
            conds.append(self._cond("DisruptionTarget", True, "TerminationByKubelet"))
        status: Obj = {"phase": self.phase, "conditions": conds, "hostIP": "127.0.0.1",
                       "hostIPs": [{"ip": "127.0.0.1"}], "podIP": self.ip,
                       "podIPs": [{"ip": self.ip}], "startTime": self.started,
                       "qosClass": "BestEffort",
                       "containerStatuses": [c.status() for c in self.containers]}
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        if self.reason:
            status["reason"] = self.reason
        if self.message:
            status["message"] = self.message
        new = dict(pod)
        new["status"] = status
        self.store.commit(PODS, new, status_only=True)

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        """Record an event about this pod."""
        pod = self.store.find(PODS, self.ns, self.name)
        if pod is not None:
            record_event(self.store, pod, reason, message, type_)

    # --- running -----------------------------------------------------------------------
    async def run(self) -> None:
        """Bring the pod up and keep its containers running until it stops."""
        self.publish()
        while not self.stopping and self.kubelet.faults.held(self.pod(), "ContainerCreating"):
            await self.kubelet.changed(None)
        volumes = await self._mount()
        if volumes is None:
            return
        self.sandbox = True
        for c in self.inits:
            if not await self._run_init(c, volumes):
                return
        self.initialized = True
        self.publish()
        await asyncio.gather(*(self._keep_running(c, volumes) for c in self.containers))
        if not self.stopping and self.phase == "Running":
            failed = any(c.state.get("terminated", {}).get("exitCode") for c in self.containers)
            self.phase = "Failed" if failed else "Succeeded"
            self.publish()

    def pod(self) -> Obj:
        """The stored pod (an empty shell once it is gone)."""
        return self.store.find(PODS, self.ns, self.name) or {"metadata": {}}

    async def _mount(self) -> dict[str, Path] | None:
        while not self.stopping:
            try:
                return mount_volumes(self.store, self.pod(), self.kubelet.root)
            except MountError as exc:
                self.event("FailedMount", str(exc), "Warning")
            await self.kubelet.changed(1.0)
        return None

    async def _pull(self, c: Container) -> Image | None:
        pull_secrets = [s.get("name") for s in (self.pod().get("spec") or {}).get(
            "imagePullSecrets") or []]
        image, failures = c.spec.get("image", ""), 0
        while not self.stopping:
            try:
                spec = self.kubelet.images.pull(image, pull_secrets)
            except LookupError as exc:
                c.state = {"waiting": {"reason": "ErrImagePull", "message": str(exc)}}
                self.publish()
                self.event("Failed", str(exc), "Warning")
                self.event("Failed", "Error: ErrImagePull", "Warning")
                await self.kubelet.changed(self.kubelet.backoff * 2 ** min(failures, 4))
                if self.stopping:
                    break
                message = f'Back-off pulling image "{image}"'
                c.state = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
                self.publish()
                self.event("BackOff", message)
                self.event("Failed", "Error: ImagePullBackOff", "Warning")
                await self.kubelet.changed(self.kubelet.backoff * 2 ** min(failures, 4))
                failures += 1
                continue
            self.event("Pulled", f'Container image "{image}" already present on machine')
            return spec
        return None

    async def _run_init(self, c: Container, volumes: dict[str, Path]) -> bool:
        while not self.stopping:
            code = await self._run_once(c, volumes)
            if code == 0:
                c.state, c.ready = c.state, False
                return True
            if self.stopping:
                return False
            if self.policy == "Never":
                self.phase = "Failed"
                self.publish()
                return False
            await self._back_off(c)
        return False

    async def _keep_running(self, c: Container, volumes: dict[str, Path]) -> None:
        while not self.stopping:
            code = await self._run_once(c, volumes)
            if self.stopping or code is None:
                return
            if self.policy == "Never" or (self.policy == "OnFailure" and code == 0):
                self.publish()
                return
            await self._back_off(c)

    async def _back_off(self, c: Container) -> None:
        delay = min(self.kubelet.backoff * 2 ** c.restarts, self.kubelet.backoff * 30)
        c.last, c.restarts = c.state, c.restarts + 1
        real = min(10 * 2 ** (c.restarts - 1), 300)
        c.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                               f"back-off {real}s restarting failed container={c.name} "
                               f"pod={self.name}_{self.ns}({self.uid})"}}
        self.publish()
        self.event("BackOff", "Back-off restarting failed container "
                   f"{c.name} in pod {self.name}_{self.ns}({self.uid})", "Warning")
        await self.kubelet.changed(delay, only_stop=True, worker=self)

    def _argv(self, c: Container, image: Image, env: dict[str, str],
              mounts: list[tuple[str, str]]) -> list[str]:
        command = list(c.spec.get("command") or [])
        args = list(c.spec.get("args") or [])
        if not command:
            if image.entrypoint is None:
                raise ConfigError(f'the double does not know image "{c.spec.get("image")}"\'s '
                                  "entrypoint: give the container a command, or the image "
                                  "an entrypoint in the image map")
            command = list(image.entrypoint)
        return [rewrite(expand(str(a), env), mounts, self.ip) for a in command + args]

    def _account_env(self) -> dict[str, str]:
        """The mounted service-account token's variables (see :mod:`.rbac`), if mounted."""
        where = self.kubelet.accounts.mount(
            self.store, self.pod(), self.kubelet.root / "pods" / self.uid / "serviceaccount")
        if where is None:
            return {}
        return {"KT_K8S_SA_DIR": str(where),
                "KT_K8S_API": f"http://127.0.0.1:{self.kubelet.api_port}"}

    async def _run_once(self, c: Container, volumes: dict[str, Path]) -> int | None:
        """Start the container, wait for it to end; its exit code (None: never started)."""
        image = await self._pull(c)
        if image is None:
            return None
        while True:  # a loop, not a recursion per retry (its depth grew without bound)
            try:
                mounts = mounts_of(c.spec, volumes)
                env = container_env(self.store, self.pod(), c.spec)
                argv = self._argv(c, image, env, mounts)
                break
            except (ConfigError, MountError) as exc:
                c.state = {"waiting": {"reason": "CreateContainerConfigError",
                                       "message": str(exc)}}
                self.publish()
                self.event("Failed", f"Error: {exc}", "Warning")
                await self.kubelet.changed(1.0)
                if self.stopping:
                    return None
        full_env = {"PATH": image.path(), "HOSTNAME": self.name,
                    "HOME": str(self.kubelet.root / "pods" / self.uid / "home"),
                    "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": str(self.kubelet.api_port),
                    **self._account_env(),
                    **image.env, **{k: rewrite(v, mounts, self.ip) for k, v in env.items()}}
        Path(full_env["HOME"]).mkdir(parents=True, exist_ok=True)
        cwd = rewrite(c.spec.get("workingDir") or full_env["HOME"], mounts)
        exe = shutil.which(argv[0], path=full_env["PATH"]) if argv else None
        c.log = LogBuffer()
        c.cid = os.urandom(32).hex()
        started = now()
        if exe is None or not os.path.isdir(cwd):
            why = (f'exec: "{argv[0] if argv else ""}": executable file not found in $PATH'
                   if exe is None else f"chdir to cwd (\"{cwd}\"): no such file or directory")
            msg = f"failed to create containerd task: failed to start the container: {why}"
            c.state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": msg,
                                      "startedAt": started, "finishedAt": now(),
                                      "containerID": f"containerd://{c.cid}"}}
            c.log.close()
            c.previous = c.log
            self.event("Failed", f"Error: {msg}", "Warning")
            return 128
        self.event("Created", f"Created container {c.name}")
        proc = await asyncio.create_subprocess_exec(
            exe, *argv[1:], env=full_env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True)
        c.proc, c.oom = proc, False
        self.kubelet.procs[proc.pid] = (self, c)
        c.state = {"running": {"startedAt": started}}
        if not c.init:
            self.phase = "Running"
        c.ready = not c.init and not c.spec.get("readinessProbe") and not (
            self.kubelet.faults.held(self.pod(), "NotReady"))
        self.publish()
        self.event("Started", f"Started container {c.name}")
        reader = asyncio.create_task(self._read(proc, c.log))
        prober = None if c.init else asyncio.create_task(self._probe(c, proc))
        code = await proc.wait()
        await reader
        if prober is not None:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.kubelet.procs.pop(proc.pid, None)
        c.proc, c.ready = None, False
        exit_code = 128 - code if code < 0 else code
        reason = "OOMKilled" if c.oom else ("Completed" if exit_code == 0 else "Error")
        c.state = {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": started,
                                  "finishedAt": now(), "containerID": f"containerd://{c.cid}"}}
        c.log.close()
        c.previous = c.log  # the last terminated run: what ``previous=true`` reads
        self.publish()
        return exit_code

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process, log: LogBuffer) -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            log.write(chunk)

    async def _probe(self, c: Container, proc: asyncio.subprocess.Process) -> None:
        readiness, liveness = c.spec.get("readinessProbe"), c.spec.get("livenessProbe")
        startup = c.spec.get("startupProbe")
        ok_count = fail_count = live_fail = start_fail = 0
        while proc.returncode is None and not self.stopping:
            if startup:  # as the kubelet: no other probe runs until the startup one passes
                if await self.kubelet.probe(startup, self.ip, c):
                    startup = None
                else:
                    start_fail += 1
                    if start_fail >= startup.get("failureThreshold", 3):
                        self.event("Unhealthy", "Startup probe failed", "Warning")
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        return
                    await asyncio.sleep(self.kubelet.probe_interval)
                    continue
            if readiness and not self.kubelet.faults.held(self.pod(), "NotReady"):
                ok = await self.kubelet.probe(readiness, self.ip, c)
                ok_count, fail_count = (ok_count + 1, 0) if ok else (0, fail_count + 1)
                if not c.ready and ok_count >= readiness.get("successThreshold", 1):
                    c.ready = True
                    self.publish()
                elif c.ready and fail_count >= readiness.get("failureThreshold", 3):
                    c.ready = False
                    self.publish()
            if liveness:
                ok = await self.kubelet.probe(liveness, self.ip, c)
                live_fail = 0 if ok else live_fail + 1
                if live_fail >= liveness.get("failureThreshold", 3):
                    self.event("Unhealthy", "Liveness probe failed", "Warning")
                    self.event("Killing", f"Container {c.name} failed liveness probe, will be "
                               "restarted")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    return
            await asyncio.sleep(self.kubelet.probe_interval)

    # --- stopping ----------------------------------------------------------------------
    def running(self) -> list[Container]:
        """Containers with a live process."""
        return [c for c in self.inits + self.containers if c.proc and c.proc.returncode is None]

    async def stop(self, grace: float, remove: bool, forget: bool = True, again: bool = False
                   ) -> None:
        """SIGTERM every container, SIGKILL after ``grace``; then drop the pod if ``remove``.

        Args:
            grace: Seconds between SIGTERM and SIGKILL.
            remove: Remove the pod object once its containers are gone.
            forget: Drop this worker from the kubelet (False keeps its logs readable).
            again: Run even if the worker is already stopping.
        """
        if self.stopping and not again:
            return
        self.stopping = True
        self.kubelet.wake()
        procs = [c.proc for c in self.running() if c.proc]
        for c in self.running():
            self.event("Killing", f"Stopping container {c.name}")
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                         timeout=grace)
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        if remove:
            pod = self.store.find(PODS, self.ns, self.name)
            if pod is not None and pod["metadata"]["uid"] == self.uid:
                with contextlib.suppress(ApiError):
                    self.store.remove(PODS, self.ns, self.name)
        if forget:
            self.kubelet.workers.pop(self.uid, None)
