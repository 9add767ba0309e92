"""A call's record on the pod: its state, its bounded events, its result until acknowledged.

At most ``KT_POD_MAX_EVENTS`` events and ``KT_POD_MAX_EVENT_BYTES`` bytes of them are
kept per call (see :class:`CallRecord`); :mod:`.executor` fills records and keeps them
until the client acknowledges the result.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from . import settings

__all__ = ["CallRecord"]


@functools.cache
def _event_limits() -> tuple[int, int]:
    """(events, bytes) kept per call: KT_POD_MAX_EVENTS, KT_POD_MAX_EVENT_BYTES."""
    return settings.get("KT_POD_MAX_EVENTS"), settings.get("KT_POD_MAX_EVENT_BYTES")


def _event_size(event: dict[str, Any]) -> int:
    """Roughly what an event holds in memory (its text, or its display data)."""
    text = event.get("text")
    if isinstance(text, str):
        return len(text) + 64
    return len(repr(event.get("data"))) + 64


def _lines(event: dict[str, Any]) -> int:
    text = event.get("text")
    return max(1, text.count("\n")) if isinstance(text, str) else 1


class CallRecord:
    """One call: its state, its events and its result.

    At most ``KT_POD_MAX_EVENTS`` events and ``KT_POD_MAX_EVENT_BYTES`` bytes of them
    are kept per call; older ones are dropped, and the client is told how many lines
    it missed and which setting dropped them.
    """

    def __init__(self, call_id: int, owner: Any) -> None:
        self.call_id = call_id
        self.owner = owner  # the connection subscribed to this call's events (or None)
        self.kind = "?"
        self.label = ""
        self.state = "queued"  # queued | running | done
        self.events: list[dict[str, Any]] = []
        self.event_bytes = 0
        self.max_events, self.max_event_bytes = _event_limits()
        self.seq = 0
        self.sent_seq = 0
        self.dropped_lines = 0
        self.dropped_upto = 0
        self.dropped_by = ""
        self.result: tuple[bytes, list[memoryview]] | None = None
        self.result_bytes = 0
        self.stats: Any = None  # the CallStats its RESULT carries, once it finished
        self.created = time.time()
        self.started = 0.0
        self.finished = 0.0
        self.main_thread = False  # queued for the main thread (a notebook cell)
        self.detached = False  # started by %%kt --detach: nobody was meant to follow it
        self.outcome: str | None = None  # a cell's: "ok" or "failed"
        self.waited = False  # it was told it waits behind another run (a QueuedEvent)
        self.thread_id: int | None = None
        self.cancelled = False
        self.in_user_code = False  # a cancel may interrupt only while this is True
        self.result_sent = False
        self.flush_pending = False
        self.lock = threading.Lock()

    def add_event(self, event: dict[str, Any]) -> None:
        """Append an event (thread-safe); merges consecutive text on the same stream."""
        with self.lock:
            self.seq += 1
            last = self.events[-1] if self.events else None
            if (
                last is not None
                and event["kind"] == "stream"
                and last["kind"] == "stream"
                and last["name"] == event["name"]
                and last["seq"] > self.sent_seq
                and len(last["text"]) < 65536
            ):
                last["text"] += event["text"]
                last["seq"] = self.seq
                self.event_bytes += len(event["text"])
            else:
                event["seq"] = self.seq
                self.events.append(event)
                self.event_bytes += _event_size(event)
            self._bound()

    def _bound(self) -> None:
        """Drop the oldest events past either bound (call with ``lock`` held)."""
        while len(self.events) > 1 and (len(self.events) > self.max_events
                                        or self.event_bytes > self.max_event_bytes):
            self.dropped_by = ("KT_POD_MAX_EVENTS" if len(self.events) > self.max_events
                               else "KT_POD_MAX_EVENT_BYTES")
            old = self.events.pop(0)
            self.event_bytes -= _event_size(old)
            if old["seq"] > self.sent_seq:  # the client never got it
                self.dropped_lines += _lines(old)
            self.dropped_upto = old["seq"]
        last = self.events[-1] if self.events else None
        if last is not None and self.event_bytes > self.max_event_bytes and "text" in last:
            # One stream event larger than the bound itself: keep its tail.
            keep = max(0, self.max_event_bytes - 64)
            cut = last["text"][:-keep] if keep else last["text"]
            if last["seq"] > self.sent_seq:
                self.dropped_lines += _lines({"text": cut})
            self.dropped_by = "KT_POD_MAX_EVENT_BYTES"
            self.dropped_upto = max(self.dropped_upto, last["seq"] - 1)
            last["text"] = last["text"][-keep:] if keep else ""
            self.event_bytes = _event_size(last)

    def take_unsent(self) -> list[dict[str, Any]]:
        """Events not yet sent to the owner, marking them sent. Call with ``lock`` held."""
        seq = self.sent_seq
        out = [dict(e) for e in self.events if e["seq"] > seq]
        if self.dropped_lines:
            note = (f"... {self.dropped_lines} earlier lines dropped ({self.dropped_by})\n")
            out.insert(0, {"seq": seq + 1, "kind": "stream", "name": "stderr", "text": note})
            self.dropped_lines = 0
        if out:
            self.sent_seq = max(out[-1]["seq"], seq + 1)
        return out
