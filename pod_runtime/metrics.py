"""The pod's Prometheus metrics (``GET /metrics``), through ``prometheus_client``.

Each :class:`PodMetrics` has a registry of its own (several pods may share a process
in tests) holding one collector that reads the pod's state when scraped, so that a call
pays only for :class:`CallMeter`'s counters, never for a metric library's locks.
``prometheus_client`` is imported at the first scrape, not at pod start (its import is
a quarter of the runtime's).

Every series carries the labels ``compute`` (the compute's name: ``KT_POD_NAME``) and
``pod`` (``KT_POD_INSTANCE``, the Kubernetes pod's own name, else the compute's); the
only other labels are bounded: ``kind`` (the registered call kinds, ``?`` for a call
that never named one), ``outcome`` (``ok``, ``error``, ``cancelled``), ``le`` and
``gpu``. No label names a call.

==========================================  =========  ==================================
series                                      type       labels besides compute and pod
==========================================  =========  ==================================
``kt_calls_total``                          counter    ``kind``, ``outcome``
``kt_call_duration_seconds``                histogram  ``kind``
``kt_calls_in_flight``                      gauge
``kt_connections``                          gauge
``kt_retained_results``                     gauge      (finished, not yet collected)
``kt_retained_result_bytes``                gauge
``kt_sync_bytes_total``                     counter    (file contents received by sync)
``kt_uptime_seconds``                       gauge
``kt_last_activity_timestamp_seconds``      gauge      (Unix time of the last call or
                                                       connection change)
``kt_seconds_since_last_activity``          gauge
``process_cpu_seconds_total``,              (from ``prometheus_client``'s process
``process_resident_memory_bytes``, ...      collector: ``/proc``, no psutil)
``kt_gpu_utilization_ratio``                gauge      ``gpu`` (0-1; NVML, when a GPU is
``kt_gpu_memory_used_bytes``,                          there: see :mod:`.gpu`)
``kt_gpu_memory_total_bytes``,
``kt_gpu_power_watts``,
``kt_gpu_temperature_celsius``
==========================================  =========  ==================================
"""

from __future__ import annotations

import bisect
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .callstats import CallSampler, Running
from .gpu import GpuReader
from .protocol import messages

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["DURATION_BUCKETS", "CallMeter", "PodMetrics"]
#: Upper bounds (seconds) of the call duration histogram's buckets (+Inf besides).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)


class CallMeter:
    """Counts calls by kind and outcome, times them, and measures what each cost.

    The executor calls :meth:`begin` when a call starts and :meth:`end` when it ends
    (on the call's thread); the figures :meth:`end` returns ride on the RESULT.

    Args:
        gpu: Reads the pod's GPUs for per-call figures (None: no GPU figures).
    """

    def __init__(self, gpu: GpuReader | None) -> None:
        self.sampler = CallSampler(gpu)
        self._lock = threading.Lock()
        self.calls: dict[tuple[str, str], int] = {}
        #: kind -> [count per bucket (not cumulative; +Inf last), sum of seconds]
        self.durations: dict[str, tuple[list[int], list[float]]] = {}
        self.synced_bytes = 0

    def begin(self) -> Running:
        """A call starts on this thread."""
        return self.sampler.begin()

    def end(self, run: Running, kind: str, outcome: str) -> messages.CallStats | None:
        """The call ended with ``outcome``: count it; its figures (None if they failed)."""
        try:
            stats = self.sampler.end(run)
        except Exception:  # noqa: BLE001 - a figure must never cost a call its result
            stats = None
        seconds = stats["wall_s"] if stats is not None else time.perf_counter() - run.wall0
        slot = bisect.bisect_left(DURATION_BUCKETS, seconds)
        with self._lock:
            key = (kind, outcome)
            self.calls[key] = self.calls.get(key, 0) + 1
            hist = self.durations.get(kind)
            if hist is None:
                hist = self.durations[kind] = ([0] * (len(DURATION_BUCKETS) + 1), [0.0])
            hist[0][slot] += 1
            hist[1][0] += seconds
        return stats

    def synced(self, nbytes: int) -> None:
        """Code sync received ``nbytes`` of file contents."""
        with self._lock:
            self.synced_bytes += nbytes

    def snapshot(self) -> tuple[dict[tuple[str, str], int],
                                dict[str, tuple[list[int], float]], int]:
        """Copies of the counters: calls, durations (bucket counts, sum), synced bytes."""
        with self._lock:
            return (dict(self.calls),
                    {k: (list(v[0]), v[1][0]) for k, v in self.durations.items()},
                    self.synced_bytes)


class _Executor(Protocol):
    """What the collector reads of the executor."""

    records: dict[int, Any]
    retained_bytes: int
    last_activity: float
    meter: CallMeter


class _PodCollector:
    """Reads the pod's state at scrape time (see the module docstring)."""

    def __init__(self, owner: PodMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        o = self.owner
        names, values = list(o.labels), list(o.labels.values())
        ex = o.executor
        records = list(ex.records.values())
        calls, durations, synced = ex.meter.snapshot()

        def gauge(name: str, doc: str, value: float, unit: str = "") -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names, unit=unit)
            g.add_metric(values, value)
            return g

        total = CounterMetricFamily("kt_calls", "Calls the pod ran, by kind and outcome.",
                                    labels=[*names, "kind", "outcome"])
        for (kind, outcome), n in sorted(calls.items()):
            total.add_metric([*values, kind, outcome], n)
        yield total
        hist = HistogramMetricFamily("kt_call_duration_seconds",
                                     "Wall time of calls on the pod, by kind.",
                                     labels=[*names, "kind"])
        for kind, (counts, seconds) in sorted(durations.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*DURATION_BUCKETS, math.inf), counts, strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            hist.add_metric([*values, kind], buckets, seconds)
        yield hist
        yield gauge("kt_calls_in_flight", "Calls queued or running.",
                    sum(1 for r in records if r.state != "done"))
        yield gauge("kt_connections", "Client connections open.", o.connections())
        yield gauge("kt_retained_results", "Finished results not collected yet.",
                    sum(1 for r in records if r.state == "done"))
        yield gauge("kt_retained_result_bytes", "Bytes of finished results not collected yet.",
                    ex.retained_bytes)
        sync = CounterMetricFamily("kt_sync_bytes", "Bytes of file contents code sync received.",
                                   labels=names)
        sync.add_metric(values, synced)
        yield sync
        now, mono = time.time(), time.monotonic()
        yield gauge("kt_uptime_seconds", "Seconds since the pod started.", now - o.started)
        yield gauge("kt_last_activity_timestamp_seconds",
                    "Unix time of the last call or connection change.",
                    o.wall_offset + ex.last_activity)  # the same value until it changes
        yield gauge("kt_seconds_since_last_activity",
                    "Seconds since the last call or connection change.", mono - ex.last_activity)
        yield from self._gpus(names, values)

    def _gpus(self, names: list[str], values: list[str]) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        reader = self.owner.gpu
        if reader is None:
            return
        readings = []
        with contextlib.suppress(Exception):  # a failing GPU read leaves out its series
            readings = reader.read()
        if not readings:
            return
        rows: list[tuple[str, str, str, Callable[[Any], float | None]]] = [
            ("kt_gpu_utilization_ratio", "GPU busy share of the last sample period (0-1).", "",
             lambda g: g.utilization / 100.0 if g.utilization is not None else None),
            ("kt_gpu_memory_used_bytes", "GPU memory in use (by any process).", "",
             lambda g: g.memory_used),
            ("kt_gpu_memory_total_bytes", "GPU memory.", "", lambda g: g.memory_total),
            ("kt_gpu_power_watts", "GPU power draw.", "", lambda g: g.power_watts),
            ("kt_gpu_temperature_celsius", "GPU core temperature.", "",
             lambda g: g.temperature_c),
        ]
        for name, doc, unit, get in rows:
            family = GaugeMetricFamily(name, doc, labels=[*names, "gpu"], unit=unit)
            for g in readings:
                value = get(g)
                if value is not None:
                    family.add_metric([*values, str(g.index)], float(value))
            if family.samples:
                yield family


class _Labelled:
    """Another collector's metrics with the pod's labels added to every sample."""

    def __init__(self, inner: Any, labels: dict[str, str]) -> None:
        self.inner = inner
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            metric.samples = [s._replace(labels={**self.labels, **s.labels})
                              for s in metric.samples]
            yield metric


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(value)


class PodMetrics:
    """A pod's metrics: a registry of its own, read at scrape time.

    Args:
        compute: The ``compute`` label (the compute's name).
        pod: The ``pod`` label (the pod's own name).
        executor: The pod's executor (its records, retained bytes, meter).
        connections: How many client connections are open now.
        started: Unix time the pod started.
        gpu: Reads the GPUs for the ``kt_gpu_*`` series (None: no GPU series).
    """

    def __init__(self, compute: str, pod: str, *, executor: _Executor,
                 connections: Callable[[], int], started: float,
                 gpu: GpuReader | None) -> None:
        self.labels = {"compute": compute, "pod": pod}
        self.executor = executor
        self.connections = connections
        self.started = started
        self.gpu = gpu
        #: Unix time minus monotonic time, once: activity times (monotonic) as Unix times.
        self.wall_offset = time.time() - time.monotonic()
        self._registry: Any = None
        self._lock = threading.Lock()

    @property
    def registry(self) -> Any:
        """The pod's ``prometheus_client.CollectorRegistry`` (made at first use)."""
        with self._lock:
            if self._registry is None:
                from prometheus_client import CollectorRegistry
                from prometheus_client.process_collector import ProcessCollector

                registry = CollectorRegistry(auto_describe=False)
                registry.register(_PodCollector(self))  # type: ignore[arg-type]
                registry.register(_Labelled(ProcessCollector(registry=None),  # type: ignore[arg-type]
                                            self.labels))
                self._registry = registry
            return self._registry

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` of :meth:`exposition` (Prometheus text format)."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return str(CONTENT_TYPE_LATEST)

    def exposition(self) -> str:
        """The text ``/metrics`` answers (Prometheus text format)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
