"""Output capture: route ``print`` and friends to the call that produced them.

``sys.stdout`` and ``sys.stderr`` are replaced at pod start by :class:`RoutingStream`.
A write looks up the call bound to the current thread and appends a ``stream`` event to
it; every write is also teed to the pod's own log (the original stream) so that
``kt logs`` and a cluster's log shipper see it.

The tee is buffered here and written out at most :data:`TEE_DELAY` seconds later (or
once :data:`TEE_MAX` characters wait), in the order of the writes across stdout and
stderr: a pod's streams are unbuffered (``PYTHONUNBUFFERED``, so that its log is
prompt), and a write system call per ``print`` was most of what a flood of output
cost on the pod (200,000 lines: 400,000 writes to the log file).

When the pod's stdout is a file (the local backend's log), the pod keeps it under
``KT_POD_LOG_MAX_BYTES``: once the bytes teed since the last check pass a step, a file
over the cap is renamed to ``<log>.1`` (replacing the previous one) and a fresh file is
put on descriptors 1 and 2 (``dup2``), so no line is lost and whatever writes to the
descriptors directly (C code, subprocesses) follows at the next rotation. Rotating in
the pod rather than in the backend at start bounds a flood within one run too; a pipe
(a cluster's container log) is left to its runtime.

Each write also goes to the pod's log history (:mod:`.podlog`), which with
``KT_POD_LOG_FORMAT=json`` tees JSON lines to stdout in place of the raw text.

Threads the user starts inside a call are not bound to it. Their output goes to the only
call in flight when there is exactly one, and otherwise only to the pod's log, rather
than to a call that did not produce it.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from . import podlog

__all__ = ["RoutingStream", "bind", "current", "flush_tee", "install"]

#: Seconds teed output may wait before it is written to the pod's log.
TEE_DELAY = 0.05
#: Characters of teed output that are written at once, without waiting.
TEE_MAX = 64 * 1024

_local = threading.local()
#: Calls in flight, in start order; maintained by the executor.
_in_flight: dict[int, Any] = {}
_in_flight_lock = threading.Lock()
#: The process's pod log, once :func:`install` ran.
_plog: podlog.PodLog | None = None


def bind(record: Any | None) -> None:
    """Bind ``record`` (or nothing) to the current thread."""
    _local.record = record
    with _in_flight_lock:
        if record is not None:
            _in_flight[record.call_id] = record


def unbind(record: Any) -> None:
    """Forget ``record`` for the current thread and the in-flight table.

    What the call printed is in the pod's log once it returns (before its result is
    sent): the log's buffer is written out here.
    """
    _local.record = None
    with _in_flight_lock:
        _in_flight.pop(record.call_id, None)
    if _plog is not None:
        _plog.flush_call(record.call_id)  # a last line without its newline
    if _tee.waiting():
        _tee.flush()


def current() -> Any | None:
    """The call bound to this thread; else the only call in flight; else None."""
    rec = getattr(_local, "record", None)
    if rec is not None:
        return rec
    with _in_flight_lock:
        if len(_in_flight) == 1:
            return next(iter(_in_flight.values()))
    return None


class _LogCap:
    """Rotates the pod's log file when it passes its cap (see the module docstring)."""

    #: Teed characters between two size checks (an fstat).
    STEP = 256 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = 0
        self._cap: int | None = None

    def wrote(self, tee: TextIO, n: int) -> None:
        self._since += n  # unlocked: a lost increment only delays a check
        if self._since < self.STEP:
            return
        with self._lock:
            if self._since < self.STEP:
                return
            self._since = 0
            with contextlib.suppress(OSError, ValueError):
                self._rotate(tee)

    def _rotate(self, tee: TextIO) -> None:
        if self._cap is None:
            from . import settings

            self._cap = int(settings.get("KT_POD_LOG_MAX_BYTES"))
        fd = tee.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= self._cap:
            return
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not os.path.isabs(path) or os.stat(path).st_ino != st.st_ino:
            return  # not a file we can name (deleted, or another system)
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        fresh = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                        stat.S_IMODE(st.st_mode))
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".1.new")
            os.link(path, path + ".1.new")  # the path never goes missing for readers
            os.replace(path + ".1.new", path + ".1")
            os.replace(path + ".new", path)
            for target in {fd, 1, 2}:
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.fstat(target), st):
                        os.dup2(fresh, target)
        finally:
            os.close(fresh)


_log_cap = _LogCap()


class _Tee:
    """Teed writes waiting for the pod's log, in order across streams (one per process)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pending: list[tuple[TextIO, str]] = []
        self._size = 0
        self._thread: threading.Thread | None = None
        self._out = threading.Lock()  # one writer of the log at a time, in order

    def waiting(self) -> bool:
        """Whether teed output waits (read without the lock: a hint)."""
        return bool(self._pending)

    def add(self, tee: TextIO, text: str) -> None:
        with self._cv:
            self._pending.append((tee, text))
            self._size += len(text)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kt-tee", daemon=True)
                self._thread.start()
            if len(self._pending) == 1:
                self._cv.notify()
            full = self._size >= TEE_MAX
        if full:
            self.flush()

    def flush(self) -> None:
        """Write what waits, in order; then flush each stream written to."""
        with self._out:
            with self._cv:
                pending, self._pending, self._size = self._pending, [], 0
            if not pending:
                return
            written: dict[int, TextIO] = {}
            for tee, text in _joined(pending):
                with contextlib.suppress(OSError, ValueError):
                    tee.write(text)
                _log_cap.wrote(tee, len(text))
                written[id(tee)] = tee
            for tee in written.values():
                with contextlib.suppress(OSError, ValueError):
                    tee.flush()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
            time.sleep(TEE_DELAY)  # (a timer, not a poll: it runs only while output waits)
            self.flush()


def _joined(pending: list[tuple[TextIO, str]]) -> list[tuple[TextIO, str]]:
    """Consecutive writes to the same stream as one."""
    out: list[tuple[TextIO, list[str]]] = []
    for tee, text in pending:
        if out and out[-1][0] is tee:
            out[-1][1].append(text)
        else:
            out.append((tee, [text]))
    return [(tee, "".join(parts)) for tee, parts in out]


_tee = _Tee()


def flush_tee() -> None:
    """Write the teed output that waits to the pod's log now (e.g. before the pod exits)."""
    _tee.flush()


class RoutingStream(io.TextIOBase):
    """A text stream that sends what is written to the current call and the pod's log."""

    def __init__(self, name: str, tee: TextIO | None, emit: Callable[[Any, str, str], None]):
        super().__init__()
        self.name = name
        self._tee = tee
        self._emit = emit

    def writable(self) -> bool:
        """Always writable."""
        return True

    def write(self, text: str) -> int:
        """Send ``text`` to the current call's stream and to the pod's log."""
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        rec = current()
        if rec is not None:
            self._emit(rec, self.name, text)
        if _plog is not None:
            _plog.printed(self.name, rec.call_id if rec is not None else None, text)
            if _plog.json_lines:
                return len(text)  # the log has it as JSON lines instead
        if self._tee is not None:
            _tee.add(self._tee, text)
        return len(text)

    def flush(self) -> None:
        """Flush the pod's log (call output is sent as it is written)."""
        if self._tee is not None:
            _tee.flush()
            with contextlib.suppress(OSError, ValueError):
                self._tee.flush()

    def isatty(self) -> bool:
        """Not a terminal: libraries print plain progress, not escape codes."""
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """Always UTF-8."""
        return "utf-8"

    def fileno(self) -> int:
        """The pod log's descriptor (for libraries that write to the fd directly)."""
        if self._tee is None:
            raise io.UnsupportedOperation("fileno")
        return self._tee.fileno()


def install(emit: Callable[[Any, str, str], None]) -> None:
    """Replace ``sys.stdout``/``sys.stderr`` with routing streams (once, at pod start)."""
    global _plog
    _plog = podlog.get_log()
    _plog.write_out = _tee.add  # its lines join the teed output, in order, batched
    _plog.flush_out = _tee.flush
    if not isinstance(sys.stdout, RoutingStream):
        sys.stdout = RoutingStream("stdout", sys.__stdout__, emit)
    if not isinstance(sys.stderr, RoutingStream):
        sys.stderr = RoutingStream("stderr", sys.__stderr__, emit)
