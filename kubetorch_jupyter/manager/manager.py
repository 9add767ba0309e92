"""``ComputeManager``: list, find, start, stop, logs and runs of computes on every backend.

Every method blocks (a backend call, a connection); each has an async twin (``alist``,
``aget``, ``astart``...) that runs it with :func:`asyncio.to_thread`, so an event loop (a
tornado handler, a notebook's asyncio code) never blocks on one::

    manager = ComputeManager()
    for summary in manager.list():
        print(summary.name, summary.phase, summary.reason)
    summaries = await manager.alist()
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kernel_bridge import CallStats
from kernel_bridge.stats import format_bytes
from pod_runtime import protocol
from pod_runtime.protocol import messages

from ..backends import backend_names, get_backend
from ..backends.base import Backend, PodInfo, PodStatus
from ..core import connections
from ..core.compute import Compute
from ..core.names import check_name
from ..core.spec import ComputeSpec
from ..exceptions import ComputeNotFoundError, ConfigError
from .summary import ComputeSummary

__all__ = ["ComputeManager", "RunSummary"]

#: ``progress`` callbacks of :meth:`ComputeManager.start` get one of these, in order.
START_STAGES = ("checking", "starting", "running")


@dataclass(frozen=True)
class RunSummary:
    """One cell run a pod holds: queued, running, or finished and not collected.

    Every ``%%kt`` cell is a run; a detached one (``%%kt --detach``) and an orphan (its
    kernel went away, a restart say) are followed by nobody until ``%kt attach``.

    Attributes:
        id: The run id (``NAME:HEX``), what ``%kt attach`` and ``%kt cancel`` take.
        state: ``queued``, ``running``, ``ok``, ``failed``, ``cancelled``.
        label: The cell's first line.
        created: Unix time it was sent (or detached).
        finished: Unix time it finished, or None.
        events: How many output events it has.
        started: Unix time it began to run, or None.
        client: Who follows it: ``this`` connection, an ``other`` one, nobody because it
            is ``detached``, or nobody because its client is ``gone`` (an orphan).
        stats: What it cost on the pod, once it finished (None before).
    """

    id: str
    state: str
    label: str
    created: float
    finished: float | None
    events: int
    started: float | None = None
    client: str = ""
    stats: CallStats | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        out = asdict(self)
        out["stats"] = self.stats.to_json() if self.stats is not None else None
        return out

    def cost(self) -> str:
        """``2.31 s, peak 1.2 GiB``: its wall time and peak RSS, or ``-`` before it ends."""
        s = self.stats
        if s is None:
            return "-"
        peak = f", peak {format_bytes(s.peak_rss_bytes)}" if s.peak_rss_bytes else ""
        return f"{s.wall_s:.2f} s{peak}"


class ComputeManager:
    """Computes across every configured backend, as :class:`ComputeSummary` records.

    Args:
        backends: The backends to manage (names or instances). Default: every
            registered backend that is available here, the ``KT_BACKEND`` one first.
    """

    def __init__(self, backends: Sequence[str | Backend] | None = None) -> None:
        self._given = list(backends) if backends is not None else None

    def backends(self) -> list[Backend]:
        """The backends this manager looks at: the configured one, then others available.

        Raises:
            ConfigError: When the configured one (``KT_BACKEND``) is unknown or unavailable.
        """
        if self._given is not None:
            return [get_backend(b) for b in self._given]
        out: list[Backend] = [get_backend()]
        for name in backend_names():
            try:
                backend = get_backend(name)
            except ConfigError:  # not available here (no cluster configured)
                continue
            if all(backend is not b for b in out):
                out.append(backend)
        return out

    def _backend(self, name: str, backend: str | Backend | None) -> tuple[Backend, PodInfo]:
        """The backend running compute ``name``, and its pod (ConfigError: not a valid name)."""
        check_name(name)  # the one rule, before any backend is asked
        candidates = [get_backend(backend)] if backend is not None else self.backends()
        for be in candidates:
            try:
                return be, be.get(name)
            except ComputeNotFoundError:
                continue
        raise ComputeNotFoundError(name, [s.name for s in self.list()])

    @staticmethod
    def _summary(backend: Backend, info: PodInfo) -> ComputeSummary:
        status = backend.status(info)
        if status.phase == "running":
            ready = backend.ready(info)
            if ready == "starting":
                status = PodStatus("starting", message="not ready yet")
            elif ready == "unresponsive":
                status = PodStatus("running", "Unresponsive",
                                   "its process runs but it does not answer")
        idle = backend.idle_since(info) if status.alive else None
        return ComputeSummary.of(backend, info, status, idle_since=idle)

    # ---- blocking -------------------------------------------------------------------

    def list(self) -> list[ComputeSummary]:
        """Every running compute on every backend, by backend then name."""
        out: list[ComputeSummary] = []
        for be in self.backends():
            out.extend(self._summary(be, info) for info in be.list())
        return out

    def get(self, name: str, backend: str | Backend | None = None) -> ComputeSummary:
        """The compute called ``name`` (on ``backend``, else the first that has it).

        Raises:
            ComputeNotFoundError: When none runs.
        """
        be, info = self._backend(name, backend)
        return self._summary(be, info)

    def start(self, spec: ComputeSpec, *,
              progress: Callable[[str], None] | None = None) -> ComputeSummary:
        """Make sure a pod runs ``spec`` (the restart policy of :mod:`..core.policy` applies).

        Args:
            spec: What to run; ``spec.backend`` says where.
            progress: Called with each of ``START_STAGES`` as it is reached.

        Raises:
            ComputeInUseError: When it would restart a pod other clients use.
            PodStartError, ResourceUnavailableError, ImageBuildError: When it cannot start.
        """
        say = progress or (lambda stage: None)
        say("checking")
        compute = Compute.from_spec(spec)
        say("starting")
        compute.up(progress=False)
        say("running")
        return self._summary(compute.backend, compute.pod)

    def stop(self, name: str, backend: str | Backend | None = None) -> None:
        """Stop the compute called ``name`` and forget it.

        Raises:
            ComputeNotFoundError: When none runs.
        """
        be, _ = self._backend(name, backend)
        connections.drop(name, be.name, torn_down=True)
        be.down(name)

    def logs(self, name: str, tail: int = 200, backend: str | Backend | None = None) -> str:
        """The last ``tail`` lines the compute's pod printed (kept after it stops).

        Raises:
            ComputeNotFoundError: When it never wrote a log.
        """
        check_name(name)
        be = get_backend(backend) if backend is not None else self._log_backend(name)
        return be.logs(name, tail)

    def _log_backend(self, name: str) -> Backend:
        try:
            return self._backend(name, None)[0]
        except ComputeNotFoundError:  # stopped: its log may still be there
            return self.backends()[0] if self.backends() else get_backend()

    def follow_logs(self, name: str, tail: int = 10, backend: str | Backend | None = None,
                    stop: threading.Event | None = None) -> Iterator[str]:
        """The last ``tail`` lines of the pod's log, then each new one, until ``stop`` is set.

        Raises:
            ComputeNotFoundError: When it never wrote a log.
            ConfigError: When its backend cannot follow logs.
        """
        check_name(name)
        be = get_backend(backend) if backend is not None else self._log_backend(name)
        return be.follow_logs(name, tail, stop)

    def runs(self, name: str, backend: str | Backend | None = None) -> builtins.list[RunSummary]:
        """The cell runs the compute's pod holds (queued, running, or finished and uncollected).

        Raises:
            ComputeNotFoundError: When it does not run.
        """
        from ..notebook.cells import RunId  # the run id's one format

        be, _ = self._backend(name, backend)
        conn = Compute.from_name(name, backend=be).connection()
        body, buffers = protocol.dumps({"kind": "cell_runs"})
        runs: builtins.list[dict[str, Any]] = conn.call(body, buffers, label="runs").result()
        return [RunSummary(id=RunId.make(name, int(r["run"])), state=str(r["state"]),
                           label=str(r.get("label") or ""), created=float(r["created"]),
                           finished=r.get("finished"), events=int(r.get("events") or 0),
                           started=r.get("started"), client=str(r.get("client") or ""),
                           stats=CallStats.from_wire(r.get("stats")))
                for r in runs]

    def pod_logs(self, name: str, *, call: int | None = None, tail: int | None = None,
                 after: int | None = None, backend: str | Backend | None = None,
                 ) -> builtins.list[messages.LogEntry]:
        """The recent log history the compute's pod keeps, over the bridge.

        Lines of one ``call`` (or run) only, past the entry ``after`` (a ``seq``), the
        last ``tail`` of them; each a :class:`~pod_runtime.protocol.messages.LogEntry`
        (time, compute, pod, call, stream, level, text). The pod keeps the last
        ``KT_POD_LOG_HISTORY`` lines.

        Raises:
            ComputeNotFoundError: When it does not run.
        """
        be, _ = self._backend(name, backend)
        conn = Compute.from_name(name, backend=be).connection()
        msg: messages.LogsCall = {"kind": "logs", "call": call, "tail": tail, "after": after}
        body, buffers = protocol.dumps(msg)
        entries: builtins.list[messages.LogEntry] = conn.call(
            body, buffers, label="logs").result()
        return entries

    # ---- async twins ----------------------------------------------------------------

    async def alist(self) -> builtins.list[ComputeSummary]:
        """:meth:`list` off the event loop."""
        return await asyncio.to_thread(self.list)

    async def aget(self, name: str, backend: str | Backend | None = None) -> ComputeSummary:
        """:meth:`get` off the event loop."""
        return await asyncio.to_thread(self.get, name, backend)

    async def astart(self, spec: ComputeSpec, *,
                     progress: Callable[[str], None] | None = None) -> ComputeSummary:
        """:meth:`start` off the event loop (``progress`` is called from a worker thread)."""
        return await asyncio.to_thread(lambda: self.start(spec, progress=progress))

    async def astop(self, name: str, backend: str | Backend | None = None) -> None:
        """:meth:`stop` off the event loop."""
        await asyncio.to_thread(self.stop, name, backend)

    async def alogs(self, name: str, tail: int = 200,
                    backend: str | Backend | None = None) -> str:
        """:meth:`logs` off the event loop."""
        return await asyncio.to_thread(self.logs, name, tail, backend)

    async def aruns(self, name: str, backend: str | Backend | None = None
                    ) -> builtins.list[RunSummary]:
        """:meth:`runs` off the event loop."""
        return await asyncio.to_thread(self.runs, name, backend)

    async def afollow_logs(self, name: str, tail: int = 10,
                           backend: str | Backend | None = None) -> AsyncIterator[str]:
        """:meth:`follow_logs` off the event loop; closing the iterator stops following."""
        stop = threading.Event()
        lines = await asyncio.to_thread(self.follow_logs, name, tail, backend, stop)
        done = object()
        try:
            while True:
                line = await asyncio.to_thread(next, lines, done)
                if line is done:
                    return
                assert isinstance(line, str)
                yield line
        finally:
            stop.set()
            close = getattr(lines, "close", None)
            if close is not None:
                with contextlib.suppress(ValueError):  # still running in its thread
                    await asyncio.to_thread(close)
