"""``ComputeSummary``: what a listing shows of one compute, and nothing secret."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..backends.base import Backend, Phase, PodInfo, PodStatus
from ..core.spec import ComputeSpec

__all__ = ["ComputeSummary"]


@dataclass(frozen=True)
class ComputeSummary:
    """One compute as a listing shows it. It holds no token, by construction.

    Attributes:
        name: The compute's name.
        backend: The backend's name.
        phase: Its pod's phase (``running``, ``starting``, ``failed``...).
        reason: Why, when the phase needs one (``OOMKilled``, ``Unresponsive``...).
        message: A line for people about the phase, or "".
        cpus: CPU cores it asked for, or None.
        memory: Memory in bytes it asked for, or None.
        gpus: Number of GPUs it holds.
        gpu_ids: Which GPUs (local backend), else empty.
        pid: Process id (local backend), else None.
        started_at: Unix time its pod started.
        idle_since: Unix time of its last call, when the pod reports it; else None.
        url: The pod's address, without any token.
    """

    name: str
    backend: str
    phase: Phase
    reason: str | None
    message: str
    cpus: float | None
    memory: int | None
    gpus: int
    gpu_ids: tuple[int, ...]
    pid: int | None
    started_at: float
    idle_since: float | None
    url: str

    @classmethod
    def of(cls, backend: Backend, info: PodInfo, status: PodStatus, *,
           idle_since: float | None = None) -> ComputeSummary:
        """The summary of ``info``'s pod on ``backend`` with ``status``."""
        try:
            spec = ComputeSpec.from_json(info.spec)
        except (ValueError, TypeError):
            spec = ComputeSpec(name=info.name, backend=backend.name)
        return cls(name=info.name, backend=backend.name, phase=status.phase,
                   reason=status.reason, message=status.message, cpus=spec.cpus,
                   memory=spec.memory, gpus=max(spec.gpus, len(info.gpus)),
                   gpu_ids=tuple(info.gpus), pid=info.pid, started_at=info.started_at,
                   idle_since=idle_since, url=_without_credentials(info.url))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (what the server extension answers)."""
        out = asdict(self)
        out["gpu_ids"] = list(self.gpu_ids)
        return out


def _without_credentials(url: str) -> str:
    """``url`` without user info or a query (where a token could hide)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.split("?", 1)[0]
    host, slash, path = rest.partition("/")
    host = host.rpartition("@")[2]
    return f"{scheme}://{host}{slash}{path}".split("?", 1)[0]
