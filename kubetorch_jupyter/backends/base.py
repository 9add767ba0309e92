"""The interface every backend implements: where pods come from.

A backend turns a :class:`~kubetorch_jupyter.Compute` into a running pod and tells the
bridge how to reach it (``PodInfo.url`` and ``token``). The local backend runs pods as
processes on this machine; the Kubernetes backend as Deployments, Knative services,
RayClusters or CronJobs.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.compute import Compute

__all__ = ["Backend", "PodInfo", "PodStatus"]


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
        spec: What it was started with: cpus, memory, gpus, image hash, env.
        spec_hash: Hash of ``spec``; a compute asking for a different one restarts it.
        log_path: Where the pod's stdout/stderr go (local backend).
    """

    name: str
    url: str
    token: str
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
    """Whether a pod process is alive; when it is not, its exit status if known."""

    alive: bool
    exit_status: int | None = None


class Backend(abc.ABC):
    """Creates, finds and removes pods."""

    name: str = "abstract"

    @abc.abstractmethod
    def up(self, compute: Compute, *, progress: bool = True) -> PodInfo:
        """Return a warm pod for ``compute``, starting one (or restarting a stale one)."""

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
        """Whether the pod is alive (cheap; called when a connection drops)."""

    @abc.abstractmethod
    def logs(self, name: str, tail: int = 200) -> str:
        """The last ``tail`` lines the pod printed."""
