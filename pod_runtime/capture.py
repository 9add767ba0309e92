"""Output capture: route ``print`` and friends to the call that produced them.

``sys.stdout`` and ``sys.stderr`` are replaced at pod start by :class:`RoutingStream`.
A write looks up the call bound to the current thread and appends a ``stream`` event to
it; every write is also teed to the pod's own log (the original stream) so that
``kt logs`` and a cluster's log shipper see it.

Threads the user starts inside a call are not bound to it. Their output goes to the only
call in flight when there is exactly one, and otherwise only to the pod's log, rather
than to a call that did not produce it.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["RoutingStream", "bind", "current", "install"]

_local = threading.local()
#: Calls in flight, in start order; maintained by the executor.
_in_flight: dict[int, Any] = {}
_in_flight_lock = threading.Lock()


def bind(record: Any | None) -> None:
    """Bind ``record`` (or nothing) to the current thread."""
    _local.record = record
    with _in_flight_lock:
        if record is not None:
            _in_flight[record.call_id] = record


def unbind(record: Any) -> None:
    """Forget ``record`` for the current thread and the in-flight table."""
    _local.record = None
    with _in_flight_lock:
        _in_flight.pop(record.call_id, None)


def current() -> Any | None:
    """The call bound to this thread; else the only call in flight; else None."""
    rec = getattr(_local, "record", None)
    if rec is not None:
        return rec
    with _in_flight_lock:
        if len(_in_flight) == 1:
            return next(iter(_in_flight.values()))
    return None


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
        if self._tee is not None:
            with contextlib.suppress(OSError, ValueError):
                self._tee.write(text)
        return len(text)

    def flush(self) -> None:
        """Flush the pod's log (call output is sent as it is written)."""
        if self._tee is not None:
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
    if not isinstance(sys.stdout, RoutingStream):
        sys.stdout = RoutingStream("stdout", sys.__stdout__, emit)
    if not isinstance(sys.stderr, RoutingStream):
        sys.stderr = RoutingStream("stderr", sys.__stderr__, emit)
