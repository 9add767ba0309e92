"""``Compute``: where code runs (resources, image, name), and the way to reach it.

A ``Compute`` is a description until it is used: ``kt.fn(f).to(compute)`` (or
``compute.up()``) asks the backend for a warm pod of that name, starting one when
there is none. ``Compute.from_name("dev")`` finds a running one from any process.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from kernel_bridge import PodConnection, PodUnreachableError
from kernel_bridge.status import died_error

from .. import config
from ..backends import get_backend
from ..backends.base import Backend, PodChanged, PodInfo, PodStatus
from ..backends.kubernetes.options import KubernetesOptions
from ..exceptions import ComputeNotFoundError, ConfigError
from ..warn import user_stacklevel
from . import connections, policy
from .image import Image
from .names import check_name
from .resources import format_bytes, parse_cpus, parse_duration, parse_memory
from .spec import ComputeSpec

__all__ = ["Compute"]

#: Seconds a failed connection waits for the pod's exit to show before calling it unreachable.
EXIT_WAIT = 5.0
#: Looks at a pod of this name (and decisions) before giving up when others keep changing it.
DECIDE_ATTEMPTS = 3


class Compute:
    """Where code runs: resources, environment and a name to find it again.

    The arguments from ``gpu_type`` on are keyword-only cluster fields: the Kubernetes
    backend uses them, the local one ignores them; each is checked at once (see
    :mod:`~kubetorch_jupyter.backends.kubernetes.options`).

    Args:
        cpus: CPU cores ("2", "500m", 0.5). The local backend pins the pod to that many.
        memory: Memory as Kubernetes writes it ("512Mi", "16Gi").
        gpus: Number of GPUs. Locally they are handed out with CUDA_VISIBLE_DEVICES.
        image: What to install (:class:`Image`); default: this machine's environment.
        env: Environment variables of the pod.
        name: The name to reach the pod by (default ``"default"``).
        inactivity_ttl: Stop the pod after this long without calls ("30m", "2h", 600).
        backend: ``"local"``, ``"kubernetes"`` (default: ``KT_BACKEND``, else local), the
            name of another registered backend, or a :class:`Backend` instance.
        gpu_type: GPU model as a node label value ("NVIDIA-A100-SXM4-80GB", matched
            against ``nvidia.com/gpu.product``), or "label=value" for another label.
        node_selector: Node labels the pod must run on ({"pool": "a100"}).
        tolerations: Taints the pod tolerates ([{"key": ..., "operator": "Exists",
            "effect": "NoSchedule"}]); the ``nvidia.com/gpu`` taint is tolerated with gpus.
        priority_class_name: The pod's PriorityClass.
        namespace: The namespace of the compute's objects (default: the backend's).
        service_account: The pod's ServiceAccount.
        labels: Extra labels of every object ({"team": "ml"}); not ``kubetorch.dev/...``.
        annotations: Extra annotations of every object.
        secrets: Environment from Secrets: a Secret name (all its keys), {"ENV":
            "secret/key"}, or a list of both.
        volumes: PersistentVolumeClaims to mount: {"claim": "/mnt/data"} or {"claim":
            {"path": "/mnt/data", "read_only": True}}.
        shm_size: Size of /dev/shm ("16Gi"); default 8Gi with gpus (at most half the
            memory limit), none without; 0 for none.
        memory_limit: Memory limit ("32Gi"); default: ``memory`` (the request).
        image_pull_secrets: Secrets to pull the image with (["regcred"]).
        launch_timeout: How long the container may take to answer, install included
            ("10m"; default 10 minutes).
        replicas: Number of pods (default 1); more than one gives ranked replicas.
        distributed: "pytorch" (ranked replicas with RANK/WORLD_SIZE/MASTER_ADDR) or
            "ray" (a KubeRay RayCluster: a head and replicas - 1 workers).
        autoscale: True or {"min_scale": 0, "max_scale": 4, "concurrency": 8,
            "scale_to_zero_after": "10m"}: a Knative Service (min_scale 0 scales to zero).

    Example:
        >>> compute = kt.Compute(cpus="2", memory="4Gi", name="dev")
        >>> kt.fn(train).to(compute)(10)
        >>> kt.Compute(gpus=1, gpu_type="NVIDIA-H100-80GB-HBM3", backend="kubernetes",
        ...            volumes={"datasets": "/mnt/data"}, secrets=["hf-token"])
    """

    def __init__(
        self,
        cpus: str | float | None = None,
        memory: str | int | None = None,
        gpus: int = 0,
        image: Image | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        inactivity_ttl: str | float | None = None,
        backend: str | Backend | None = None,
        *,
        gpu_type: str | None = None,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] | None = None,
        priority_class_name: str | None = None,
        namespace: str | None = None,
        service_account: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        secrets: str | Sequence[str | Mapping[str, str]] | Mapping[str, str] | None = None,
        volumes: Mapping[str, str | Mapping[str, Any]] | None = None,
        shm_size: str | int | None = None,
        memory_limit: str | int | None = None,
        image_pull_secrets: str | Sequence[str] | None = None,
        launch_timeout: str | float | None = None,
        replicas: int | None = None,
        distributed: str | None = None,
        autoscale: bool | Mapping[str, Any] | None = None,
    ) -> None:
        self.cpus = parse_cpus(cpus)
        self.memory = parse_memory(memory)
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
            raise ConfigError(f"gpus must be a whole number >= 0, got {gpus!r}")
        self.gpus = gpus
        if image is not None and not isinstance(image, Image):
            raise ConfigError(f"image must be a kt.Image, got {type(image).__name__}")
        self.image = image or Image()
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.name = check_name(name or "default")
        self.inactivity_ttl = parse_duration(inactivity_ttl)
        self.kubernetes = KubernetesOptions.parse(
            gpu_type=gpu_type, node_selector=node_selector, tolerations=tolerations,
            priority_class_name=priority_class_name, namespace=namespace,
            service_account=service_account, labels=labels, annotations=annotations,
            secrets=secrets, volumes=volumes, shm_size=shm_size, memory_limit=memory_limit,
            image_pull_secrets=image_pull_secrets, launch_timeout=launch_timeout,
            replicas=replicas, distributed=distributed, autoscale=autoscale)
        self.kubernetes.check_spec(memory=self.memory, gpus=self.gpus)
        if backend is not None and not isinstance(backend, str | Backend):
            raise ConfigError(f"backend must be a name or a Backend, got {type(backend).__name__}")
        self._backend: Backend | None = backend if isinstance(backend, Backend) else None
        self._backend_name = (backend.name if isinstance(backend, Backend)
                              else str(backend or config.get("backend")).strip().lower())
        self._info: PodInfo | None = None
        self._adopted: ComputeSpec | None = None  # the spec of the pod it reuses
        self._from_name = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}"]
        if self.cpus is not None:
            parts.append(f"cpus={self.cpus:g}")
        if self.memory is not None:
            parts.append(f"memory={format_bytes(self.memory)!r}")
        if self.gpus:
            parts.append(f"gpus={self.gpus}")
        if self.image.steps or self.image.base:
            parts.append(f"image={self.image!r}")
        if self.kubernetes.mode != "deployment":
            parts.append(f"mode={self.kubernetes.mode!r}")
        state = "up" if self._info is not None else "not started"
        return f"Compute({', '.join(parts)}) [{state}]"

    @property
    def backend_name(self) -> str:
        """The name of the backend that runs this compute's pod."""
        return self._backend_name

    @property
    def backend(self) -> Backend:
        """The backend that runs this compute's pod."""
        if self._backend is None:
            self._backend = get_backend(self._backend_name)
        return self._backend

    @property
    def spec(self) -> ComputeSpec:
        """What this compute asks a backend for (see :class:`ComputeSpec`)."""
        return ComputeSpec(name=self.name, cpus=self.cpus, memory=self.memory, gpus=self.gpus,
                           image=self.image.to_json(), env=self.env,
                           inactivity_ttl=self.inactivity_ttl, backend=self.backend_name,
                           kubernetes=self.kubernetes.to_json())

    # --------------------------------------------------------------- lifecycle
    @classmethod
    def from_spec(cls, spec: ComputeSpec, backend: str | Backend | None = None) -> Compute:
        """The compute ``spec`` describes (on ``backend``, default the spec's own)."""
        return cls(cpus=spec.cpus, memory=spec.memory, gpus=spec.gpus,
                   image=spec.build_image(), env=dict(spec.env), name=spec.name,
                   inactivity_ttl=spec.inactivity_ttl, backend=backend or spec.backend,
                   **KubernetesOptions.from_json(spec.kubernetes).compute_kwargs())

    @classmethod
    def from_name(cls, name: str, backend: str | Backend | None = None) -> Compute:
        """Find a running compute by name (from any process on this machine or cluster).

        The compute is rebuilt from the spec the pod was started with, so a restart
        (after the pod died) keeps its definition.

        Raises:
            ConfigError: When ``name`` is not a valid compute name (the one rule of
                :func:`.names.check_name`, whatever the backend).
            ComputeNotFoundError: When no compute of that name is running.
        """
        be = get_backend(backend)
        info = be.get(check_name(name))
        try:
            spec = ComputeSpec.from_json(info.spec)
        except (ValueError, TypeError):  # a record without a spec: only its name is known
            spec = ComputeSpec(name=name, backend=be.name)
        compute = cls.from_spec(spec, backend=be)
        compute._info = info
        compute._from_name = True  # reuse the pod as is; a restart keeps its definition
        return compute

    def up(self, *, progress: bool | None = None) -> Compute:
        """Make sure a warm pod runs for this compute (start one if needed).

        A pod of this name that runs another spec is reused when this compute asks for
        nothing it lacks, restarted (with a warning) when it does and no other client is
        connected, and left alone otherwise (see :mod:`.policy`).

        Raises:
            ComputeInUseError: When it would restart a pod other clients are using.
            ResourceUnavailableError, ImageBuildError, PodStartError: When the pod
                cannot start (a running one is left running).
        """
        backend = self.backend
        if self._from_name and self._info is not None and backend.status(self._info).alive:
            return self
        show = bool(config.get("progress") if progress is None else progress)
        with self._lock:
            for attempt in range(DECIDE_ATTEMPTS):
                try:
                    self._decide_and_start(backend, show)
                    break
                except PodChanged:  # another process acted between our look and our start
                    if attempt == DECIDE_ATTEMPTS - 1:
                        raise
        return self

    def _decide_and_start(self, backend: Backend, show: bool) -> None:
        """Look at the pod of this name, decide (see :mod:`.policy`) and act on it."""
        wanted = self._wanted()
        try:
            running: PodInfo | None = backend.get(self.name)
        except ComputeNotFoundError:
            running = None
        status = backend.status(running) if running is not None else None

        def others() -> int:
            assert running is not None
            return connections.other_clients(backend, running)

        decision = policy.decide(running, status, wanted, others)
        if isinstance(decision, policy.Refuse):
            raise decision.error
        if isinstance(decision, policy.Reuse):
            self._info, self._adopted = decision.info, decision.spec
            return
        replacing = None  # Start: only if no pod runs by the time we start
        if isinstance(decision, policy.Restart):
            backend.check(decision.spec, progress=show)  # a restart that cannot happen
            warnings.warn(f"restarting compute {self.name!r}: its spec changed "
                          f"({'; '.join(decision.changes)}); no other client was "
                          "connected", RuntimeWarning, stacklevel=user_stacklevel())
            connections.drop(self.name, backend.name)
            replacing = decision.info.spec_hash
        self._info = backend.up(decision.spec, progress=show, replacing=replacing)
        self._adopted = decision.spec

    def _wanted(self) -> ComputeSpec:
        """What to ask for: the spec of the pod this compute reuses, while it still fits.

        So a compute that reused a pod started with more (``Compute(name="dev")`` after
        ``Compute(name="dev", cpus=1)``) brings that pod back as it was if it dies.
        """
        own = self.spec
        adopted = self._adopted
        if adopted is not None and not policy.requested_changes(adopted, own):
            return adopted
        return own

    @property
    def pod(self) -> PodInfo:
        """How to reach this compute's pod (starting it if needed)."""
        if self._info is None:
            self.up()
        assert self._info is not None
        return self._info

    def connection(self) -> PodConnection:
        """The process-wide connection to this compute's pod (connecting if needed).

        A pod that died is started again (once), with a warning.
        """
        info = self.pod
        backend = self.backend
        conn = connections.live(backend, info)
        if conn is not None and not backend.gone(info):
            return conn  # warm: a dict lookup and, locally, one waitpid
        died = connections.take_dead(backend, info)
        status = None if died is not None else backend.status(info)
        if died is not None or (status is not None and not status.alive):
            why = (_first_clause(str(died)) if died is not None else
                   _ended(info.name, status) if status is not None else
                   f"pod {info.name!r} ended (gone)")
            _warn_restart(why, info.name)
            connections.drop(info.name, backend.name)  # the old pod's, not yet marked dead
            info = self._start_again()
        try:
            return connections.pooled(backend, info)
        except PodUnreachableError as exc:
            # A SIGKILLed pod resets its sockets before its exit can be seen: wait for the
            # exit (an event, bounded) before calling a dead pod unreachable.
            wait = min(float(config.get("connect_timeout")), EXIT_WAIT)
            settled = backend.settle(info, wait)
            if settled.alive:
                if "timed out" in str(exc) or "did not greet" in str(exc):
                    raise _busy_error(info.name, exc) from None
                raise
            # It died just now: start it again, once, and say so as above (which of the
            # two ways a dead pod is noticed depends only on timing).
            _warn_restart(_ended(info.name, settled), info.name)
            connections.drop(info.name, backend.name)
            info = self._start_again()
            return connections.pooled(backend, info)

    def _start_again(self) -> PodInfo:
        self._info = None
        return self.pod

    def teardown(self) -> None:
        """Stop this compute's pod; the next use starts a fresh one."""
        connections.drop(self.name, self.backend_name, torn_down=True)
        self.backend.down(self.name)
        self._info = None

    def logs(self, tail: int = 200) -> str:
        """The last ``tail`` lines the pod printed."""
        return self.backend.logs(self.name, tail)

    def is_up(self) -> bool:
        """Whether this compute's pod is running now (without starting it)."""
        try:
            info = self.backend.get(self.name)
        except LookupError:
            return False
        return self.backend.status(info).alive


def _first_clause(message: str) -> str:
    """What happened, from a PodDiedError's message (without what it means for calls)."""
    return message.split(" while calls")[0].split("; its state is lost")[0]


def _ended(name: str, status: PodStatus) -> str:
    """How a pod ended, as its PodDiedError would say it for the reasons with own words."""
    if status.reason in ("OOMKilled", "Preempted", "Idle"):
        return _first_clause(str(died_error(name, status)))
    return f"pod {name!r} ended ({status.describe()})"


def _warn_restart(why: str, name: str) -> None:
    """The one warning of a pod that died and is started again: its state is lost."""
    warnings.warn(f"{why}; starting a new pod {name!r}: the state of the old one (imports, "
                  "globals, instances) is lost", RuntimeWarning, stacklevel=user_stacklevel())


def _busy_error(name: str, exc: PodUnreachableError) -> PodUnreachableError:
    """A pod whose process runs but does not answer a connection: say it is busy.

    Its Python is held by code that does not let go of the GIL (a long C call such as
    ``sum(range(10**10))``), so it cannot even accept a websocket until that returns.
    """
    return PodUnreachableError(
        f"pod {name!r} runs but does not answer ({exc}): it is busy in code that does not "
        "see interrupts (a long C call holding the GIL) and answers nothing until that "
        f"returns. Wait and try again, or restart it and lose its state: kt teardown {name} "
        f"(in a notebook: %kt restart {name})", pod=name)
