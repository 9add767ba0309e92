"""What a call cost on its pod, as the client sees it: :class:`CallStats`.

The pod measures every call (``pod_runtime.callstats``) and sends the figures with its
RESULT; ``handle.stats`` holds them once the result is here. ``str(stats)`` is the
compact line ``%%kt --stats`` prints::

    kt: 2.31 s wall · 2.05 s CPU · peak 1.2 GiB RSS · GPU0 peak 10.3 GiB, 87% util
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CallStats", "GpuStats", "format_bytes"]


def format_bytes(n: float) -> str:
    """``1.2 GiB``, ``350 MiB``, ``12 KiB``, ``512 B``."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def _seconds(s: float) -> str:
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 600:
        return f"{s:.2f} s"
    return f"{s / 60:.1f} min"


@dataclass(frozen=True, slots=True)
class GpuStats:
    """One GPU's figures over a call, sampled through NVML on the pod.

    Attributes:
        index: The GPU's position among the pod's (``cuda:<index>``).
        peak_memory_bytes: The most GPU memory in use during the call (by any process
            on that GPU), or None if NVML did not give it.
        mean_utilization: Mean percent of time a kernel ran, over the samples.
    """

    index: int
    peak_memory_bytes: int | None
    mean_utilization: float | None


@dataclass(frozen=True, slots=True)
class CallStats:
    """What one call (or ``%%kt`` cell) cost on the pod.

    The figures are the pod process's, measured while the call ran: ``cpu_s`` is the
    process's CPU time during the call (for calls running at once, each counts the
    others' too), RSS is the process's resident memory, sampled every
    ``KT_POD_STATS_INTERVAL`` seconds (0.05) while calls run. The start value is the
    latest reading when the call started (at most one interval old); the end value is
    read at the end of a call that ran 5 ms or more, else the latest reading too. A
    call shorter than one interval has ``samples == 0``: its peak is the larger of its
    start and end values.

    Attributes:
        wall_s: Seconds from the call's start on the pod to its end.
        cpu_s: CPU seconds the pod process used meanwhile.
        peak_rss_bytes: The largest resident memory seen (None where the pod cannot
            read it: not Linux).
        rss_start_bytes: Resident memory when the call started (see above).
        rss_end_bytes: Resident memory when it ended (see above).
        samples: How many samples the sampler took during the call.
        gpus: Per-GPU figures, when the pod has GPUs that NVML reads.
    """

    wall_s: float
    cpu_s: float
    peak_rss_bytes: int | None
    rss_start_bytes: int | None
    rss_end_bytes: int | None
    samples: int
    gpus: tuple[GpuStats, ...]

    @classmethod
    def from_wire(cls, raw: Any) -> CallStats | None:
        """The figures of a RESULT's ``stats`` (None when it has none: an older pod)."""
        if not isinstance(raw, dict):
            return None
        try:
            gpus = tuple(GpuStats(int(g["index"]), g.get("peak_memory_bytes"),
                                  g.get("mean_utilization")) for g in raw.get("gpus") or ())
            return cls(wall_s=float(raw["wall_s"]), cpu_s=float(raw["cpu_s"]),
                       peak_rss_bytes=raw.get("peak_rss_bytes"),
                       rss_start_bytes=raw.get("rss_start_bytes"),
                       rss_end_bytes=raw.get("rss_end_bytes"),
                       samples=int(raw.get("samples") or 0), gpus=gpus)
        except (KeyError, TypeError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the wire's field names)."""
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s,
                "peak_rss_bytes": self.peak_rss_bytes, "rss_start_bytes": self.rss_start_bytes,
                "rss_end_bytes": self.rss_end_bytes, "samples": self.samples,
                "gpus": [{"index": g.index, "peak_memory_bytes": g.peak_memory_bytes,
                          "mean_utilization": g.mean_utilization} for g in self.gpus]}

    def line(self) -> str:
        """``kt: 2.31 s wall · 2.05 s CPU · peak 1.2 GiB RSS · GPU0 peak 10.3 GiB, 87% util``."""
        parts = [f"{_seconds(self.wall_s)} wall", f"{_seconds(self.cpu_s)} CPU"]
        if self.peak_rss_bytes is not None:
            parts.append(f"peak {format_bytes(self.peak_rss_bytes)} RSS")
        for g in self.gpus:
            bits = []
            if g.peak_memory_bytes is not None:
                bits.append(f"peak {format_bytes(g.peak_memory_bytes)}")
            if g.mean_utilization is not None:
                bits.append(f"{g.mean_utilization:.0f}% util")
            if bits:
                parts.append(f"GPU{g.index} " + ", ".join(bits))
        return "kt: " + " · ".join(parts)

    def __str__(self) -> str:
        return self.line()
