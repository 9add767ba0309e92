"""GPU readings through NVML: the one module that talks to ``nvidia-ml-py``.

Everything else (the ``/metrics`` GPU series, per-call GPU figures) takes a
:class:`GpuReader`, so that it can be tested with a reader of its own where no GPU is.
:func:`default_reader` gives the pod's: None when ``nvidia-ml-py`` is not installed,
NVML does not load (no driver) or sees no GPU; then there are no GPU series and no
GPU figures, and nothing fails.

The GPUs read are those the pod's code sees: ``CUDA_VISIBLE_DEVICES`` (indices, as the
local backend sets it with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, NVML's order; or ``GPU-``
UUIDs), else every GPU NVML sees (a Kubernetes container sees only its own). A reading's
``index`` is the position in that list: ``cuda:0`` is GPU 0.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["GpuReader", "GpuReading", "NvmlReader", "default_reader"]

log = logging.getLogger("kubetorch.pod")


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one moment; a figure NVML does not give for this GPU is None.

    Attributes:
        index: The GPU's position among those the pod sees (``cuda:<index>``).
        utilization: Percent of the last sample period a kernel ran (0-100).
        memory_used: Bytes of GPU memory in use (by every process on it).
        memory_total: Bytes of GPU memory.
        power_watts: Power draw.
        temperature_c: Core temperature in degrees Celsius.
    """

    index: int
    utilization: float | None
    memory_used: int | None
    memory_total: int | None
    power_watts: float | None
    temperature_c: float | None


class GpuReader(Protocol):
    """Reads every GPU the pod sees (thread-safe; may block for a few milliseconds)."""

    def read(self) -> list[GpuReading]:
        """One reading per GPU."""
        ...


class NvmlReader:
    """:class:`GpuReader` over NVML (``pynvml``, from the ``nvidia-ml-py`` package).

    Args:
        nvml: The initialised ``pynvml`` module.
        handles: NVML device handles, in the order the pod's code numbers them.
    """

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self._lock = threading.Lock()

    def read(self) -> list[GpuReading]:
        """One reading per GPU; a figure that fails to read is None (never raises)."""
        nv = self._nvml
        out = []
        with self._lock:
            for index, handle in enumerate(self._handles):
                util = self._get(lambda h=handle: nv.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = self._get(lambda h=handle: nv.nvmlDeviceGetMemoryInfo(h))
                power = self._get(lambda h=handle: nv.nvmlDeviceGetPowerUsage(h))  # mW
                temp = self._get(lambda h=handle: nv.nvmlDeviceGetTemperature(
                    h, nv.NVML_TEMPERATURE_GPU))
                out.append(GpuReading(
                    index=index,
                    utilization=float(util) if util is not None else None,
                    memory_used=int(mem.used) if mem is not None else None,
                    memory_total=int(mem.total) if mem is not None else None,
                    power_watts=power / 1000.0 if power is not None else None,
                    temperature_c=float(temp) if temp is not None else None))
        return out

    def _get(self, read: Any) -> Any:
        try:
            return read()
        except self._nvml.NVMLError:  # not supported on this GPU, or it fell off the bus
            return None


def _handles(nvml: Any, visible: str | None) -> list[Any]:
    """The handles of the GPUs ``CUDA_VISIBLE_DEVICES`` names (all when unset)."""
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for item in (part.strip() for part in visible.split(",")):
        if not item:
            continue
        try:
            if item.isdigit():
                handles.append(nvml.nvmlDeviceGetHandleByIndex(int(item)))
            else:
                handles.append(nvml.nvmlDeviceGetHandleByUUID(item))
        except nvml.NVMLError:
            break  # CUDA stops at the first device it cannot find; so do we
    return handles


@functools.cache
def default_reader() -> GpuReader | None:
    """The pod's GPU reader (made once), or None where no GPU can be read."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handles = _handles(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
    except (pynvml.NVMLError, OSError) as exc:
        log.debug("no GPU readings: NVML did not start (%s)", exc)  # a CPU pod: as expected
        return None
    if not handles:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
        return None
    return NvmlReader(pynvml, handles)
