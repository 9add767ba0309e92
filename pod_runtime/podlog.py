"""The pod's log: a bounded history of recent lines, and JSON lines for a log shipper.

Every line the pod's code prints (through :mod:`.capture`) and every ``logging`` record
becomes a :class:`~pod_runtime.protocol.messages.LogEntry` with the compute, the pod,
the call or run it came from, its stream and level. The last ``KT_POD_LOG_HISTORY`` of
them are kept in memory and served by the ``logs`` call kind (``kt logs NAME --call
ID``, and a notebook widget polling with ``after``).

What goes to the container's stdout depends on ``KT_POD_LOG_FORMAT``:

- ``plain`` (the default, and the local backend's): text as it was printed, stdout to
  stdout and stderr to stderr, ``logging`` records as ``time LEVEL logger: message``
  on stderr: the log file ``kt logs`` reads stays what the code printed;
- ``json`` (the Kubernetes manifests set it): one JSON object per line on stdout,
  ``{"time", "compute", "pod", "call", "stream", "level", "text"}`` (and ``logger``
  for a record), ``time`` in RFC 3339 UTC, so that a cluster's log shipper (Promtail,
  Fluent Bit) sends each line to Loki with its labels.

A line is text up to a newline; text printed without one waits (per call and stream)
for the rest of its line, and is written at the call's end at the latest. A line
longer than :data:`MAX_LINE` characters is cut there (the plain log keeps it whole). What C code
or a subprocess writes to the descriptors directly bypasses this module: it reaches the
container's log as it is, in either format.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO, cast

from . import settings
from .protocol import messages
from .registry import register

__all__ = ["PodLog", "configure", "get_log"]

#: The ``logging`` format of ``plain`` records.
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Text kept waiting for its newline, per call and stream, before it is a line anyway.
MAX_PARTIAL = 64 * 1024
#: Characters of one line kept (in the history and the JSON line); the rest is cut.
MAX_LINE = 4096
_LEVELS = {"stdout": "info", "stderr": "error"}


def _call_hex(call_id: int | None) -> str | None:
    return None if call_id is None else f"{call_id:016x}"


def _rfc3339(t: float) -> str:
    stamp = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PodLog:
    """The history and the structured output of one pod process.

    Args:
        compute: The ``compute`` field (the compute's name).
        pod: The ``pod`` field (the pod's own name).
        history: Entries kept (``KT_POD_LOG_HISTORY``).
        json_lines: Write JSON lines to stdout (``KT_POD_LOG_FORMAT=json``).
    """

    def __init__(self, compute: str, pod: str, *, history: int, json_lines: bool) -> None:
        self.compute = compute
        self.pod = pod
        self.json_lines = json_lines
        self._lock = threading.Lock()
        self._history: collections.deque[messages.LogEntry] = collections.deque(maxlen=history)
        self._seq = 0
        self._partial: dict[tuple[int | None, str], str] = {}
        #: Writes (stream, text) of printed lines to the pod's log: the capture's batched
        #: tee once it is installed, else at once. Records are written at once (they are
        #: few, and a warning is often the last thing a pod says before it acts).
        self.write_out: Callable[[TextIO, str], None] = _write_now
        #: Writes out what :attr:`write_out` holds back (before a record, to keep order).
        self.flush_out: Callable[[], None] = _nothing

    # ---------------------------------------------------------------- input
    def printed(self, stream: str, call_id: int | None, text: str) -> None:
        """Code printed ``text`` on ``stream`` (``stdout``/``stderr``) in call ``call_id``."""
        key = (call_id, stream)
        with self._lock:
            pending = self._partial.pop(key, "") + text if self._partial else text
            lines = pending.split("\n")
            rest = lines.pop()
            if rest and len(rest) < MAX_PARTIAL:
                self._partial[key] = rest
            elif rest:
                lines.append(rest)
            entries = [self._add(stream, call_id, line, _LEVELS.get(stream, "info"))
                       for line in lines]
        self._out(entries)

    def flush_call(self, call_id: int | None) -> None:
        """The call ended: what it printed without a final newline is a line now."""
        if not self._partial:
            return
        with self._lock:
            keys = [k for k in self._partial if k[0] == call_id]
            entries = [self._add(k[1], call_id, self._partial.pop(k), _LEVELS.get(k[1], "info"))
                       for k in keys]
        self._out(entries)

    def logged(self, record: logging.LogRecord, text: str, call_id: int | None) -> None:
        """A ``logging`` record (``text``: its formatted message)."""
        with self._lock:
            entry = self._add("log", call_id, text, record.levelname.lower(),
                              when=record.created)
            entry["logger"] = record.name
        self._out([entry], write=self._write_record)

    def _write_record(self, stream: TextIO, text: str) -> None:
        """A record goes out at once, after the printed lines before it."""
        self.flush_out()
        _write_now(stream, text)

    def _add(self, stream: str, call_id: int | None, text: str, level: str, *,
             when: float | None = None) -> messages.LogEntry:
        """Append an entry (with ``_lock`` held)."""
        if len(text) > MAX_LINE:
            text = f"{text[:MAX_LINE]}... [{len(text) - MAX_LINE} more characters cut]"
        self._seq += 1
        entry: messages.LogEntry = {
            "seq": self._seq, "time": when or time.time(), "compute": self.compute,
            "pod": self.pod, "call": _call_hex(call_id),
            "stream": cast(Any, stream), "level": level, "text": text}
        self._history.append(entry)
        return entry

    def _out(self, entries: list[messages.LogEntry],
             write: Callable[[TextIO, str], None] | None = None) -> None:
        out = sys.__stdout__
        if not (self.json_lines and entries) or out is None:
            return
        (write or self.write_out)(out, "".join(json.dumps({"time": _rfc3339(e["time"]), **{
            k: v for k, v in e.items() if k not in ("seq", "time")}}, ensure_ascii=False) + "\n"
            for e in entries))

    # --------------------------------------------------------------- output
    def entries(self, *, call: int | None = None, after: int | None = None,
                tail: int | None = None) -> list[messages.LogEntry]:
        """The kept entries, oldest first: of one ``call``, past ``after``, the last ``tail``."""
        with self._lock:
            found = list(self._history)
        if after is not None:
            found = [e for e in found if e["seq"] > after]
        if call is not None:
            wanted = _call_hex(call)
            found = [e for e in found if e["call"] == wanted]
        if tail is not None:
            found = found[-tail:] if tail > 0 else []
        return found


class _Handler(logging.Handler):
    """The root logger's handler: every record into the pod's log."""

    def __init__(self, podlog: PodLog) -> None:
        super().__init__(logging.INFO)
        self.podlog = podlog
        self.plain = logging.Formatter(PLAIN_FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        from . import capture  # (capture imports this module)

        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + self.plain.formatException(record.exc_info)
            current = capture.current()
            self.podlog.logged(record, text, getattr(current, "call_id", None))
            if not self.podlog.json_lines and sys.__stderr__ is not None:
                self.podlog._write_record(sys.__stderr__, self.plain.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


def _nothing() -> None:
    return None


def _write_now(stream: TextIO, text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.write(text)
        stream.flush()


_log: PodLog | None = None
_log_lock = threading.Lock()


def get_log() -> PodLog:
    """The process's pod log (made on first use from the pod settings)."""
    global _log
    with _log_lock:
        if _log is None:
            name = settings.get("KT_POD_NAME")
            _log = PodLog(name, settings.get("KT_POD_INSTANCE") or name,
                          history=settings.get("KT_POD_LOG_HISTORY"),
                          json_lines=settings.get("KT_POD_LOG_FORMAT") == "json")
        return _log


def configure(name: str) -> PodLog:
    """At pod start: name the log's compute, and route ``logging`` records into it."""
    podlog = get_log()
    podlog.compute = name
    podlog.pod = settings.get("KT_POD_INSTANCE") or name
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(_Handler(podlog))
    root.setLevel(logging.INFO)
    return podlog


@register("logs")
def _run_logs(ex: Any, body: dict[str, Any], record: Any) -> list[messages.LogEntry]:
    msg = cast(messages.LogsCall, body)
    record.label = "kt logs"
    call, after, tail = msg.get("call"), msg.get("after"), msg.get("tail")
    return get_log().entries(call=int(call) if call is not None else None,
                             after=int(after) if after is not None else None,
                             tail=int(tail) if tail is not None else None)
