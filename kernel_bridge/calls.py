"""A call in flight: its events as they arrive, then its result.

The connection's reader thread delivers items into a thread-safe queue; whoever waits
for the call (the cell's own thread, or a coroutine on the caller's loop) drains it,
writes stream output where that caller writes, and decodes the result there. So output
lands in the cell that made the call, and unpickling (which may import modules) never
blocks the reader.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import linecache
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pod_runtime import protocol
from pod_runtime.protocol import shm

from .errors import BridgeError, CallCancelledError, KtError, SerializationError, as_remote
from .stats import CallStats

if TYPE_CHECKING:
    from .connection import PodConnection

__all__ = ["CallHandle", "EventSink", "InterruptIgnored", "InterruptRepeated", "print_event"]

EventSink = Callable[[dict[str, Any]], None]
#: After a local interrupt, how long to wait for the pod to report the interrupted call.
CANCEL_GRACE = 10.0
#: After an interrupt, seconds before the caller is told that the pod has not acted on
#: it yet (a Python call stops within milliseconds), and that a second interrupt now
#: stops the wait. A second interrupt before that note is not taken as a second choice.
INTERRUPT_NOTE_AFTER = 1.0
#: Seconds a call waits with no news before the pod is pinged; a ping unanswered this
#: long means the pod is busy in code that holds the GIL, and the call says so once.
BUSY_CHECK = 5.0
#: Guards the (rarely used) waker lists of every handle.
_WAKERS_LOCK = threading.Lock()
#: Guards the events every handle holds for its reader (taken briefly, by few threads).
_EVENTS_LOCK = threading.Lock()

log = logging.getLogger("kubetorch.bridge")


def print_event(event: dict[str, Any]) -> None:
    """The default event sink: streams to this process's stdout/stderr, displays as text."""
    kind = event.get("kind")
    if kind == "stream":
        stream = sys.stderr if event.get("name") == "stderr" else sys.stdout
        stream.write(event["text"])
        stream.flush()
    elif kind in ("display", "result"):
        text = event.get("data", {}).get("text/plain")
        if text is not None:
            print(text)


class InterruptIgnored(KeyboardInterrupt):
    """An interrupt the pod did not act on within :data:`CANCEL_GRACE`: the call runs on.

    The usual cause: the call is in C code that holds the GIL and never checks for
    signals (``sum(range(10**10))``, a long numpy or regex operation), so neither the
    interrupt nor anything else the pod does can run until that code returns.
    """

    def __init__(self, message: str, *, pod: str | None = None) -> None:
        super().__init__(message)
        self.pod = pod

    def _render_traceback_(self) -> list[str]:
        """IPython hook: one line that says what happened and what to do."""
        return [f"KeyboardInterrupt: {self}"]


class InterruptRepeated(InterruptIgnored):
    """A second interrupt, after the caller was told the pod has not acted on the first.

    The caller stops waiting; the call goes on running on the pod.
    """


class CallHandle:
    """A call running on a pod (a future with a stream of events).

    ``result()`` blocks until the call finishes, passing events to the sink as they
    arrive; ``await handle`` does the same without blocking the caller's loop.

    Events wait for whoever reads them, at most the connection's ``max_pending_events``
    of them: beyond that (a submit nobody awaits) the oldest are dropped, and the reader
    is told how many by one marker event. The result is never dropped.

    Attributes:
        restart_hint: How a user restarts the pod, for the notes of a call waiting on a
            pod busy in code that does not see interrupts (a caller such as a notebook
            sets its own command).
        second_interrupt: What a second interrupt does, as the interrupt note says it.
    """

    restart_hint = "kt teardown {pod} stops it; the next call starts a fresh pod"
    second_interrupt = " (the call goes on running on the pod)"

    def __init__(
        self,
        conn: PodConnection,
        call_id: int,
        request: tuple[bytes, list[memoryview], int],
        *,
        label: str = "call",
        sink: EventSink | None = None,
    ) -> None:
        self.conn = conn
        self.call_id = call_id
        self.label = label
        self.sink = sink or print_event
        self.request: tuple[bytes, list[memoryview], int] | None = request
        self.last_seq = 0
        self.cancelled = False
        #: The boot id of the pod process this call was sent to (None: not sent yet).
        self.sent_to: str | None = None
        # Results and errors, and a token ("events", None) when events wait in _events.
        self._items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._events: collections.deque[dict[str, Any]] | None = None  # made on first use
        self._dropped = 0  # events dropped since the reader last took them
        # Light on purpose: one handle per call, on the path of every small call.
        self._wakers: list[Callable[[], None]] = []  # guarded by _WAKERS_LOCK
        self._finished = False
        self._warned_drop = False
        self._outcome: tuple[bool, Any] | None = None
        #: The pod's QueuedEvent while the call waits behind another run, else None.
        self.queued: dict[str, Any] | None = None
        #: When (monotonic, here) a call that waited began to run on the pod.
        self.started: float | None = None
        #: Called on the bridge's reader thread when the pod's answer arrives.
        self.on_answer: list[Callable[[], None]] = []
        self._stats: Any = None  # the RESULT's stats, decoded when asked for

    @property
    def stats(self) -> CallStats | None:
        """What the call cost on the pod: wall and CPU time, peak memory, GPUs.

        Set once the result is here (after ``result()``); None before, or from a pod
        that does not measure calls (``KT_POD_CALL_STATS=0``, or an older one).
        """
        raw = self._stats
        if raw is None or isinstance(raw, CallStats):
            return raw
        self._stats = CallStats.from_wire(raw)
        return self._stats

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<CallHandle {self.label} on {self.conn.name!r} {state}>"

    # --------------------------------------------------- from the reader thread
    def _deliver(self, kind: str, payload: Any) -> None:
        if kind == "events":
            self.last_seq = max(self.last_seq, payload[-1]["seq"])
            if not self._hold_events(payload):
                return  # the token that will hand them over is queued already
            payload = None
        elif kind in ("result", "error"):
            self.request = None
            self._finished = True
            if kind == "result":
                for callback in self.on_answer:
                    callback()
        self._items.put((kind, payload))
        if not self._wakers:
            return
        with _WAKERS_LOCK:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def _hold_events(self, events: list[dict[str, Any]]) -> bool:
        """Keep events for the reader, dropping the oldest beyond the bound.

        Returns whether the reader must be handed a token (none is queued).
        """
        limit = max(1, self.conn.max_pending_events)
        with _EVENTS_LOCK:
            if self._events is None:
                self._events = collections.deque(maxlen=limit)
            held = self._events
            token = not held
            over = len(held) + len(events) - limit
            first_drop = over > 0 and self._dropped == 0 and not self._warned_drop
            if over > 0:
                self._dropped += over
            held.extend(events)  # a deque with maxlen drops from the other end
        if first_drop:
            self._warned_drop = True
            log.warning("%s on pod %r: nobody has read its output; dropping the oldest "
                        "events beyond %d (PodConnection(max_pending_events=...))",
                        self.label, self.conn.name, limit)
        return token

    def _take_events(self) -> list[dict[str, Any]]:
        """The events held for the reader, after a marker when some were dropped."""
        with _EVENTS_LOCK:
            if not self._events:
                return []
            events = list(self._events)
            self._events.clear()
            dropped, self._dropped = self._dropped, 0
        if dropped:
            events.insert(0, {
                "kind": "stream", "name": "stderr",
                "text": f"[kt: {dropped} earlier output events of {self.label} were dropped "
                        f"while nobody read them; max_pending_events="
                        f"{self.conn.max_pending_events}]\n"})
        return events

    # -------------------------------------------------------------- consumer
    def done(self) -> bool:
        """Whether the pod has answered (the result may not be decoded yet)."""
        return self._finished

    def wait_answered(self, timeout: float | None = None) -> bool:
        """Wait until the pod answers (:meth:`done`), reading nothing; whether it did.

        For a caller that waits for someone else's call (a cell waiting for the one
        before it); interruptible with Ctrl-C.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        answered = threading.Event()  # set on every delivery (events too): check, wait on
        with _WAKERS_LOCK:
            self._wakers.append(answered.set)
        try:
            while not self._finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                answered.wait(left)
                answered.clear()
        finally:
            with _WAKERS_LOCK, contextlib.suppress(ValueError):
                self._wakers.remove(answered.set)
        return self._finished

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the call, streaming its events to the sink; return or raise its result.

        A ``KeyboardInterrupt`` while waiting interrupts the call on the pod, waits
        briefly for it to stop (so that its last output is shown), then re-raises. A
        pod that does not act on it (busy in C code that holds the GIL) is reported:
        after :data:`INTERRUPT_NOTE_AFTER` s a note says so, a second interrupt then
        raises :class:`InterruptRepeated`, and after :data:`CANCEL_GRACE` s
        :class:`InterruptIgnored` is raised; the call goes on on the pod.

        A call that waits with no news pings the pod every :data:`BUSY_CHECK` s; one
        whose pod does not answer says so once (a stderr note through the sink) and
        waits on.

        A call the pod queued behind another run (a notebook cell waiting for the
        main thread) counts ``timeout`` from when it starts there.

        Raises:
            TimeoutError: ``timeout`` seconds passed (the call keeps running).
            InterruptIgnored: The pod did not act on an interrupt (see above).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interrupted: float | None = None  # when the first interrupt came
        noted = False  # the note that the pod has not acted on it was shown
        busy_noted = False
        while self._outcome is None:
            try:
                if timeout is not None and self.started is not None:
                    deadline = self.started + timeout
                waiting = self.queued is not None and self.started is None  # not begun
                now = time.monotonic()
                if interrupted is not None:
                    wait = interrupted - now + (
                        CANCEL_GRACE if noted else INTERRUPT_NOTE_AFTER)
                else:
                    left = None if deadline is None or waiting else deadline - now
                    wait = BUSY_CHECK if left is None else min(left, BUSY_CHECK)
                try:
                    kind, payload = self._items.get(timeout=max(0.0, wait))
                except queue.Empty:
                    if interrupted is not None:
                        if not noted:
                            noted = True
                            self._note(
                                f"[kt] {self.label} on pod {self.conn.name!r} has not stopped "
                                "yet: it may be busy in code that does not see interrupts (a "
                                "long C call holding the GIL). Interrupt again to stop "
                                f"waiting{self.second_interrupt}.\n")
                            continue
                        raise InterruptIgnored(
                            f"{self.label} on pod {self.conn.name!r} did not stop within "
                            f"{CANCEL_GRACE:g}s of the interrupt: it is busy in code that does "
                            "not see interrupts (a long C call holding the GIL) and goes on "
                            "running there", pod=self.conn.name) from None
                    if deadline is not None and not waiting and time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"{self.label} on {self.conn.name!r} did not finish within "
                            f"{timeout}s (it is still running; call .result() again or "
                            ".cancel() it)") from None
                    busy_noted = self._check_busy(busy_noted)
                    continue
                self._consume(kind, payload)
            except InterruptIgnored:
                raise  # (ours, from above: not the user's second interrupt)
            except KeyboardInterrupt:
                if interrupted is None:
                    interrupted = time.monotonic()
                    self.cancel()
                elif noted:
                    raise InterruptRepeated(
                        f"stopped waiting for {self.label} on pod {self.conn.name!r} (a second "
                        "interrupt): it is busy in code that does not see interrupts and goes "
                        "on running there", pod=self.conn.name) from None
                # else: pressed twice before the pod could act on the first: wait on
        ok, value = self._outcome
        if ok:
            return value
        if interrupted is not None and _is_interrupt(value):
            raise KeyboardInterrupt
        raise self._cancelled(value)

    def _check_busy(self, noted: bool) -> bool:
        """No news for a while: ping the pod; say once that it does not answer."""
        silent = self.conn.unanswered_for()
        if silent >= BUSY_CHECK and not noted and self.conn.connected:
            hint = self.restart_hint.format(pod=self.conn.name)
            self._note(f"[kt] pod {self.conn.name!r} has not answered for {silent:.0f} s: it "
                       "is busy in code that does not see interrupts (a long C call holding "
                       f"the GIL). {self.label} waits for it; or restart the pod and lose its "
                       f"state: {hint}.\n")
            noted = True
        self.conn.ping()
        return noted

    def _note(self, text: str) -> None:
        """A line for the user, through the sink (so it lands where the call's output does)."""
        self.sink({"kind": "stream", "name": "stderr", "text": text})

    def stream(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield the call's events as they arrive (instead of sending them to the sink).

        Ends when the call finishes; then :meth:`result` returns at once.
        """
        while self._outcome is None:
            try:
                kind, payload = self._items.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event from {self.label} within {timeout}s") from None
            if kind == "events":
                yield from self._take_events()
            else:
                self._consume(kind, payload)

    def __await__(self) -> Any:
        return self.aresult().__await__()

    async def aresult(self) -> Any:
        """Await the result without blocking the caller's event loop."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(ready.set)

        with _WAKERS_LOCK:
            self._wakers.append(wake)
        try:
            while self._outcome is None:
                try:
                    kind, payload = self._items.get_nowait()
                except queue.Empty:
                    ready.clear()
                    if self._items.empty():
                        await ready.wait()
                    continue
                self._consume(kind, payload)
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            with _WAKERS_LOCK, contextlib.suppress(ValueError):
                self._wakers.remove(wake)
        ok, value = self._outcome
        if ok:
            return value
        raise self._cancelled(value)

    def _cancelled(self, error: BaseException) -> BaseException:
        """The error to raise: a :class:`CallCancelledError` for an interrupt we asked for."""
        if not (self.cancelled and _is_interrupt(error)):
            return error
        started = "before it started" not in str(error)
        exc = CallCancelledError(
            f"{self.label} on pod {self.conn.name!r} was cancelled "
            f"{'while it ran' if started else 'before it started'} (handle.cancel()); the "
            "pod lives on", pod=self.conn.name, remote=error if started else None)
        exc.__suppress_context__ = True
        return exc

    def cancel(self) -> None:
        """Interrupt the call on the pod (KeyboardInterrupt there); the pod lives on."""
        if not self.done():
            self.cancelled = True
            self.conn.cancel(self.call_id)

    # ---------------------------------------------------------------- decode
    def _consume(self, kind: str, payload: Any) -> None:
        if kind == "events":
            for event in self._take_events():
                if event.get("kind") == "queued":
                    self.queued = event
                elif event.get("kind") == "started":
                    self.started = time.monotonic()
                self.sink(event)
        elif kind == "result":
            self._outcome = self._decode(payload)
        elif kind == "error":
            self._outcome = (False, payload)

    def _decode(self, frame: protocol.Frame) -> tuple[bool, Any]:
        try:
            buffers = protocol.resolve_buffers(frame.buffers, shm.map_claimed)
            msg = protocol.loads(frame.body, buffers)
        except Exception as exc:  # noqa: BLE001
            err = SerializationError(
                f"the result of {self.label} could not be unpickled here: "
                f"{type(exc).__name__}: {exc}. Is the package that defines it installed "
                "locally, in a compatible version?",
                target="result",
            )
            err.__cause__ = exc  # (a module missing here: the client names the versions)
            return False, err
        self._stats = msg.get("stats")
        if msg["ok"]:
            return True, msg["value"]
        err = msg["error"]
        original = None
        if err.get("exc") is not None:
            try:
                original = protocol.loads(err["exc"])  # (type, args, attributes)
            except Exception:  # noqa: BLE001 - the type is not importable here
                original = None
        if err.get("category") == "SerializationError":
            return False, SerializationError(err["message"], target="result")
        text = format_remote_traceback(err) if err.get("frames") else err["traceback"]
        return False, as_remote(original, err["type"], err["message"], text, self.conn.name,
                                err.get("frames"))


def format_remote_traceback(err: dict[str, Any]) -> str:
    """Format a remote traceback, filling in source lines the pod could not read.

    A function sent by value from a notebook cell has its cell as file name; the pod
    has no such file, but this kernel's ``linecache`` does, so the traceback shows the
    cell's own lines.
    """
    lines = ["Traceback (most recent call last):\n"]
    for filename, lineno, name, line in err["frames"]:
        lines.append(f'  File "{filename}", line {lineno}, in {name}\n')
        source = line or (linecache.getline(filename, lineno).strip() if lineno else "")
        if source:
            lines.append(f"    {source}\n")
    message = err["message"]
    lines.append(f"{err['type']}: {message}\n" if message else f"{err['type']}\n")
    return "".join(lines)


def _is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, KtError) and getattr(exc, "remote_type", "") == "KeyboardInterrupt"
    )


def failed(exc: BridgeError) -> tuple[str, BridgeError]:
    """An item that fails a call with a connection-level error."""
    return ("error", exc)
