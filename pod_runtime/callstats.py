"""What each call cost on the pod: wall time, CPU time, peak RSS, per-GPU figures.

:meth:`CallSampler.begin` at a call's start and :meth:`CallSampler.end` at its end
read the clocks and the process's resident memory (``/proc/self/statm``);
:meth:`~CallSampler.end` returns the
:class:`~pod_runtime.protocol.messages.CallStats` that ride on the call's RESULT.

While calls run, one sampler thread reads the process's resident memory (``statm``)
and, with a GPU, NVML (memory in use, utilisation) every ``KT_POD_STATS_INTERVAL``
seconds and folds each reading into every running call: peak RSS is the largest of
the start, end and sampled values, a GPU's peak memory the largest sampled, its
utilisation the mean of the samples.

A warm call should not pay for reading ``/proc``: two reads of ``statm`` per call
measured as a cost of several percent of a warm no-op call, whether through
``os.pread`` or libc's ``pread`` with the GIL held (the read itself, in a process whose
other threads run; ``_Statm`` uses the latter). So a call reads
``statm`` itself only where that is amortised: at its start when the sampler was
parked (the first call after a quiet spell, which wakes it anyway), else it starts
from the sampler's latest reading (at most one interval old); at its end when it ran
at least :data:`READ_AT_END` seconds (that reading becomes the latest), else it ends
with the latest reading. A call shorter than one interval gets no sample: its peak is
the larger of its start and end values. A GPU is read at a call's end when the call
got no sample and ran at least :data:`READ_AT_END` seconds (a no-op call never pays
for NVML).

The thread never wakes per call: a call only checks a flag, and wakes the thread when
it is parked (no call for :data:`LINGER` seconds, or none yet). So a stream of warm
calls costs two clock reads and a short lock each.

The figures are the process's: CPU time is the process's CPU time during the call, so
concurrent calls each count the others' CPU too; RSS is the process's resident memory;
GPU memory is all that is in use on the GPU (by any process).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import settings
from .gpu import GpuReader, GpuReading
from .protocol import messages

__all__ = ["LINGER", "READ_AT_END", "CallSampler", "Running", "read_rss"]

#: Seconds without a running call after which the sampler thread parks.
LINGER = 2.0
#: A call at least this long reads RSS (and, without a sample, the GPUs) at its end.
READ_AT_END = 0.005


class _Statm:
    """The process's RSS from ``/proc/self/statm`` through one kept descriptor."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:  # not Linux: no RSS figures
            self._fd = None
        self._buf = ctypes.create_string_buffer(128)
        self._pread: Any = None
        with contextlib.suppress(OSError, AttributeError):
            pread = ctypes.PyDLL(None).pread  # the GIL stays held: see the module docstring
            pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
            pread.restype = ctypes.c_ssize_t
            self._pread = pread

    def read(self) -> int | None:
        if self._fd is None:
            return None
        try:
            if self._pread is not None:
                n = self._pread(self._fd, self._buf, 128, 0)
                raw = self._buf.raw[:n] if n > 0 else b""
            else:
                raw = os.pread(self._fd, 128, 0)
            return int(raw.split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None


_statm: _Statm | None = None


def read_rss() -> int | None:
    """The process's resident memory in bytes now (None where /proc is not there)."""
    global _statm
    if _statm is None:
        _statm = _Statm()
    return _statm.read()


@dataclass(eq=False, slots=True)
class Running:
    """One running call's figures so far (updated by the sampler under its lock)."""

    wall0: float
    cpu0: float
    rss0: int | None
    peak: int | None
    samples: int = 0
    #: GPU index -> [peak memory or -1, sum of utilisation, utilisation samples]
    gpus: dict[int, list[float]] | None = None  # made by the first GPU reading

    def fold(self, rss: int | None, gpus: list[GpuReading], *, sample: bool = True) -> None:
        """Fold one reading in (with the sampler's lock held; ``sample``: count it)."""
        self.samples += sample
        if rss is not None and (self.peak is None or rss > self.peak):
            self.peak = rss
        if not gpus:
            return
        if self.gpus is None:
            self.gpus = {}
        for g in gpus:
            acc = self.gpus.setdefault(g.index, [-1.0, 0.0, 0.0])
            if g.memory_used is not None and g.memory_used > acc[0]:
                acc[0] = g.memory_used
            if g.utilization is not None:
                acc[1] += g.utilization
                acc[2] += 1

    def gpu_stats(self) -> list[messages.GpuStats]:
        """The per-GPU figures folded in so far."""
        return [{"index": index, "peak_memory_bytes": int(acc[0]) if acc[0] >= 0 else None,
                 "mean_utilization": acc[1] / acc[2] if acc[2] else None}
                for index, acc in sorted((self.gpus or {}).items())]


class CallSampler:
    """Measures calls (see the module docstring).

    Args:
        gpu: Reads the pod's GPUs; None: no GPU figures.
        interval: Seconds between samples while calls run; default
            ``KT_POD_STATS_INTERVAL``.
        enabled: Measure calls at all; default ``KT_POD_CALL_STATS``. When off,
            :meth:`begin` only reads the wall clock and :meth:`end` returns None.
    """

    def __init__(self, gpu: GpuReader | None, *, interval: float | None = None,
                 enabled: bool | None = None) -> None:
        self.gpu = gpu
        self.enabled = bool(settings.get("KT_POD_CALL_STATS") if enabled is None else enabled)
        self.interval = float(interval if interval is not None
                              else settings.get("KT_POD_STATS_INTERVAL"))
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)  # the parked thread waits on it
        self._running: set[Running] = set()
        self._parked = True  # no thread yet, or it waits for a call
        self._last_rss: int | None = None  # the latest reading (sampler, or a call's)
        self._thread: threading.Thread | None = None
        self._stopped = False

    def begin(self) -> Running:
        """A call starts on this thread: read its starting figures."""
        if not self.enabled:
            return Running(time.perf_counter(), 0.0, None, None)
        rss = self._last_rss
        run = Running(time.perf_counter(), time.process_time(), rss, rss)
        with self._lock:
            self._running.add(run)
            if self._parked and not self._stopped:
                self._parked = False
                run.rss0 = run.peak = self._last_rss = read_rss()  # once per quiet spell
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="kt-stats",
                                                    daemon=True)
                    self._thread.start()
                else:
                    self._cv.notify()
        return run

    def end(self, run: Running) -> messages.CallStats | None:
        """The call has finished: its figures, for its RESULT (None: measuring is off)."""
        if not self.enabled:
            return None
        cpu = time.process_time() - run.cpu0
        wall = time.perf_counter() - run.wall0
        if wall >= READ_AT_END:
            rss = self._last_rss = read_rss()
        else:
            rss = self._last_rss
        with self._lock:
            self._running.discard(run)
        if self.gpu is not None and run.samples == 0 and wall >= READ_AT_END:
            with contextlib.suppress(Exception):
                run.fold(None, self.gpu.read(), sample=False)
        peak = run.peak if rss is None or (run.peak is not None and run.peak > rss) else rss
        return {"wall_s": wall, "cpu_s": max(cpu, 0.0), "rss_start_bytes": run.rss0,
                "rss_end_bytes": rss, "peak_rss_bytes": peak, "samples": run.samples,
                "gpus": run.gpu_stats() if run.gpus else []}

    def close(self) -> None:
        """Stop the sampler thread."""
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _loop(self) -> None:
        idle = 0.0
        while True:
            with self._cv:
                while self._parked and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    return
            time.sleep(self.interval)
            with self._cv:
                busy = bool(self._running)
            if not busy:
                idle += self.interval
                if idle >= LINGER:
                    with self._cv:
                        self._parked = not self._running
                    idle = 0.0
                continue
            idle = 0.0
            rss = self._last_rss = read_rss()
            gpus: list[GpuReading] = []
            if self.gpu is not None:
                with contextlib.suppress(Exception):  # a reader must not end sampling
                    gpus = self.gpu.read()
            with self._cv:
                for run in self._running:
                    run.fold(rss, gpus)
