"""The interface every backend implements: where pods come from.

A backend turns a :class:`~kubetorch_jupyter.core.spec.ComputeSpec` (what a
:class:`~kubetorch_jupyter.Compute` asks for) into a running pod and tells the
bridge how to reach it (``PodInfo.url`` and ``token``). The local backend runs pods as
processes on this machine; the Kubernetes backend as Deployments, Knative services,
RayClusters or CronJobs.
"""

from __future__ import annotations

import abc
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from kernel_bridge import Endpoint
from pod_runtime.protocol import ending

from ..exceptions import KtError

if TYPE_CHECKING:
    from ..core.spec import ComputeSpec

__all__ = ["ANY_POD", "PHASES", "Backend", "Phase", "PodChanged", "PodInfo", "PodStatus"]

#: Where a pod is in its life. pending: accepted, not yet placed or pulling its image;
#: starting: its process runs but is not ready; running: ready for calls; failed: it
#: ended badly (see the reason); gone: it ended normally, or nothing is known of it.
Phase = Literal["pending", "starting", "running", "failed", "gone"]
PHASES: tuple[Phase, ...] = get_args(Phase)
_ALIVE = frozenset({"pending", "starting", "running"})


@dataclass
class PodInfo:
    """How to reach one pod, and what it was started with.

    Attributes:
        name: The compute's name (unique per backend and user).
        url: Websocket base URL of the pod runtime, e.g. ``ws://127.0.0.1:41234``.
        token: The bearer token the pod requires.
        backend: ``"local"`` or ``"kubernetes"``.
        pid: Process id (local backend), else None.
        started_at: Unix time the pod started.
        gpus: GPU indices handed to the pod (``CUDA_VISIBLE_DEVICES``).
        spec: What it was started with: :meth:`ComputeSpec.to_json` of its spec.
        spec_hash: :meth:`ComputeSpec.spec_hash` of that spec.
        log_path: Where the pod's stdout/stderr go (local backend).
    """

    name: str
    url: str
    token: str = field(repr=False)  # never shown
    backend: str
    pid: int | None = None
    started_at: float = 0.0
    gpus: list[int] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    spec_hash: str = ""
    log_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the state file's contents)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodInfo:
        """Inverse of :meth:`to_json`, ignoring unknown keys."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class PodStatus:
    """Where a pod is in its life and, when it ended or is stuck, why.

    Attributes:
        phase: One of :data:`PHASES`.
        reason: A word a program can branch on: ``"OOMKilled"``, ``"Unschedulable"``,
            ``"ImagePullBackOff"``, ``"Evicted"``, ``"Killed"`` (by a signal; the message
            names it), ``"Error"`` (a non-zero exit; the message has the code),
            ``"Completed"`` (exit status 0), ``"TornDown"`` (stopped on purpose: the
            message says by whom), ``"Preempted"`` (it got SIGTERM: a node drain,
            ``kubectl delete``, preemption), ``"Idle"`` (its inactivity TTL stopped it);
            None when there is nothing to say. An ``OOMKilled`` pod's calls fail with
            :class:`~kubetorch_jupyter.PodOOMError`.
        message: A line for people, e.g. ``"killed by SIGKILL"``,
            ``"out of memory: limit 512Mi, peak 530Mi"``.
        exit_status: The process exit status (negative: killed by that signal), when known.
        memory_limit: For ``OOMKilled``: the limit in bytes, where known.
        memory_peak: For ``OOMKilled``: the most memory seen in use, in bytes, where known.
    """

    phase: Phase
    reason: str | None = None
    message: str = ""
    exit_status: int | None = None
    memory_limit: int | None = None
    memory_peak: int | None = None

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown pod phase {self.phase!r}; phases: {', '.join(PHASES)}")

    @property
    def alive(self) -> bool:
        """Whether the pod is (or will be) there to take calls: pending, starting, running."""
        return self.phase in _ALIVE

    def describe(self) -> str:
        """``phase`` with its reason and message, e.g. ``"failed (Killed: killed by SIGKILL)"``."""
        why = ": ".join(p for p in (self.reason or "", self.message) if p)
        return f"{self.phase} ({why})" if why else self.phase

    @classmethod
    def from_exit(cls, exit_status: int | None) -> PodStatus:
        """The status of a pod process that ended with ``exit_status`` (None: unknown)."""
        if exit_status is None:
            return cls("gone", message="the pod's process is gone (its exit status is unknown)")
        if exit_status == 0:
            return cls("gone", "Completed", "exit status 0", 0)
        if exit_status < 0:
            try:
                sig = signal.Signals(-exit_status).name
            except ValueError:
                sig = f"signal {-exit_status}"
            return cls("failed", "Killed", f"killed by {sig}", exit_status)
        return cls("failed", "Error", f"exit status {exit_status}", exit_status)

    @classmethod
    def from_termination_log(cls, text: str, exit_status: int | None = None
                             ) -> PodStatus | None:
        """The status of a pod that said why it stopped (``"Preempted: ..."``, ``"Idle: ..."``).

        ``text`` is what the pod wrote to its termination log (Kubernetes: the container
        status' ``terminated.message``); None when it is not such a line.
        """
        said = ending.parse_termination_log(text)
        if said is None:
            return None
        reason, detail = said
        return cls("failed" if reason == ending.PREEMPTED else "gone", reason, detail,
                   exit_status)


#: ``Backend.up(replacing=ANY_POD)``: replace whatever pod of that name runs.
ANY_POD = "*"


class PodChanged(KtError):
    """The pod of a name changed between a decision about it and acting on it.

    Another process started or replaced it meanwhile; the caller decides again.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"compute {name!r} was started or changed by another client "
                         "meanwhile; try again")
        self.name = name


class Backend(abc.ABC):
    """Creates, finds and removes pods."""

    name: str = "abstract"

    @abc.abstractmethod
    def up(self, spec: ComputeSpec, *, progress: bool = True,
           replacing: str | None = ANY_POD) -> PodInfo:
        """Return a warm pod running ``spec``: the one running it, else a new one.

        A pod of that name running another spec is stopped and replaced; whether that
        may happen is decided before, by :func:`kubetorch_jupyter.core.policy.decide`,
        which passes what it decided on, checked atomically with the start:

        Args:
            spec: What to run.
            progress: Show progress while it starts.
            replacing: The spec hash of the live pod the decision allows to stop, None
                when it found none running, :data:`ANY_POD` to replace whatever runs.

        Raises:
            PodChanged: When the live pod is not the one the decision was made on
                (another process started or replaced it meanwhile): decide again.
        """

    def check(self, spec: ComputeSpec, *, progress: bool = True) -> None:
        """Everything that can fail before a running pod is replaced by one for ``spec``.

        (No such GPUs, an image that does not build.) Called before a restart so that
        one that cannot happen leaves the warm pod running. The default checks nothing.
        """
        return None

    @abc.abstractmethod
    def get(self, name: str) -> PodInfo:
        """The running pod called ``name``.

        Raises:
            ComputeNotFoundError: When there is none.
        """

    @abc.abstractmethod
    def list(self) -> list[PodInfo]:
        """All running pods of this user."""

    @abc.abstractmethod
    def down(self, name: str) -> None:
        """Stop the pod called ``name`` and forget it.

        Raises:
            ComputeNotFoundError: When there is none.
        """

    @abc.abstractmethod
    def status(self, info: PodInfo) -> PodStatus:
        """The pod's phase, and why it ended when it did (cheap; called when a connection drops)."""

    def gone(self, info: PodInfo) -> bool:
        """Whether the pod is known to have ended, from what costs next to nothing here.

        Asked before every call that reuses a warm connection, so it must not do I/O
        beyond a syscall (the local backend: ``waitpid`` of its child, or a signal-0
        probe). The default knows nothing (False): the connection's drop tells.
        """
        return False

    def endpoint(self, info: PodInfo) -> Endpoint:
        """Where the bridge reaches ``info``'s pod now (asked again on every reconnect).

        The default is the recorded URL and token; a backend whose pods move or sit
        behind a tunnel (a Kubernetes port-forward: a dial function; an ingress: extra
        headers and TLS) returns that instead.
        """
        return Endpoint(info.url, info.token)

    def settle(self, info: PodInfo, timeout: float) -> PodStatus:
        """The pod's status once a failed connection's cause can be seen.

        A pod that is dying closes its sockets before its exit is visible; this waits up to
        ``timeout`` seconds for the exit (on an event, not a poll) before answering, so a
        dead pod is not taken for an unreachable one. The default does not wait.
        """
        return self.status(info)

    @abc.abstractmethod
    def logs(self, name: str, tail: int = 200) -> str:
        """The last ``tail`` lines the pod printed."""

    def ready(self, info: PodInfo) -> Literal["ready", "starting", "unresponsive"] | None:
        """What the pod's readiness check answers: ready, starting, or nothing (unresponsive).

        None when this backend cannot ask (the default).
        """
        return None

    def idle_since(self, info: PodInfo) -> float | None:
        """Unix time of the pod's last activity (a call, a connection), if it says.

        None when this backend cannot ask (the default) or the pod does not answer.
        """
        return None

    def follow_logs(self, name: str, tail: int = 10,
                    stop: threading.Event | None = None) -> Iterator[str]:
        """The last ``tail`` lines of the pod's log, then each new line, until ``stop`` is set.

        Raises:
            ConfigError: When this backend cannot follow logs (the default).
        """
        from ..exceptions import ConfigError

        raise ConfigError(f"following logs is not supported by the {self.name} backend")
