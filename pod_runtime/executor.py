"""The executor: runs calls, holds their output and results until the client has them.

Threads:

* the **main thread** runs calls that need it (notebook cells: they can be interrupted
  with a real SIGINT, even in ``time.sleep`` or a blocking C call, and libraries that
  insist on the main thread work);
* a **pool of worker threads** runs function and method calls, many at once; a cancel
  raises ``KeyboardInterrupt`` in the worker at its next Python instruction.

Every call has a :class:`CallRecord`: its events (stream output, display data) with
sequence numbers, and, once finished, its pickled result. A record lives until the
client acknowledges the result (or it expires), so a client whose connection dropped
reconnects and collects what it missed.

Call kinds are handlers in :data:`pod_runtime.registry.HANDLERS` (``fn``, ``init``,
``method`` here; notebook cells and code sync register theirs in their own modules,
which the server imports).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import cloudpickle

from . import aio, capture, gpu, protocol, settings
from .metrics import CallMeter
from .protocol import messages, shm
from .records import CallRecord
from .registry import HANDLERS, register

__all__ = ["CallRecord", "Executor"]

log = logging.getLogger("kubetorch.pod")
#: The message of the KeyboardInterrupt of a call cancelled before its code ran.
CANCELLED_BEFORE_START = "cancelled before it started"

class Executor:
    """Runs calls and keeps their records.

    Args:
        pod_name: Shown in errors.
        notify: Called (from any thread) when a record has new events.
        finished: Called on the call's own thread once its result is set.
        max_workers: Size of the worker pool for function and method calls.
    """

    def __init__(
        self,
        pod_name: str,
        notify: Callable[[CallRecord], None],
        finished: Callable[[CallRecord], None],
        *,
        max_workers: int = 64,
    ) -> None:
        self.pod_name = pod_name
        self.notify = notify
        self.on_finished = finished
        self.records: dict[int, CallRecord] = {}
        self.functions: dict[str, Any] = {}
        self.instances: dict[str, Any] = {}
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
        self.max_workers = max_workers
        self._inline = 0
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kt-call")
        self._main_jobs: queue.SimpleQueue[tuple[CallRecord, memoryview, list[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._main_record: CallRecord | None = None
        self._interrupt_target: int | None = None
        self._lock = threading.Lock()
        self.last_activity = time.monotonic()
        self.calls_total = 0
        self.calls_failed = 0
        self.result_ttl: float = settings.get("KT_POD_RESULT_TTL")
        self.max_retained: int = settings.get("KT_POD_MAX_RETAINED_BYTES")
        self.retained_bytes = 0  # results finished and not yet acknowledged
        #: Calls whose results were dropped unacknowledged: id -> the setting that did it.
        self.lost: collections.OrderedDict[int, str] = collections.OrderedDict()
        self.meter = CallMeter(gpu.default_reader())  # counts calls, measures each
        capture.install(self._emit_stream)

    # ----------------------------------------------------------------- events
    def _emit_stream(self, record: CallRecord, name: str, text: str) -> None:
        event: messages.StreamEvent = {"kind": "stream",
                                       "name": "stderr" if name == "stderr" else "stdout",
                                       "text": text}
        record.add_event(dict(event))
        self.notify(record)

    def emit(self, record: CallRecord, event: dict[str, Any]) -> None:
        """Append any event (e.g. display data) to ``record`` and notify."""
        record.add_event(event)
        self.notify(record)

    # --------------------------------------------------------------- submit
    def submit(
        self, record: CallRecord, body: memoryview, buffers: list[Any], *, main_thread: bool
    ) -> None:
        """Queue an admitted call. ``buffers`` are mapped lazily, on the worker.

        ``main_thread`` (the CALL frame's flag) queues it for the main thread.
        """
        with self._lock:
            self.records.setdefault(record.call_id, record)
        self.last_activity = time.monotonic()
        if main_thread:
            record.main_thread = True
            self._tell_queued(record)
            self._main_jobs.put((record, body, buffers))
        else:
            self._pool.submit(self._run, record, body, buffers)

    def admit(self, call_id: int, owner: Any) -> tuple[CallRecord, bool]:
        """The record for a CALL frame: a new one, or (True) the one that already exists.

        Atomic, so a CALL resent after a reconnect while the first copy is still being
        read on the old connection never runs twice.
        """
        with self._lock:
            existing = self.records.get(call_id)
            if existing is not None:
                return existing, True
            record = self.records[call_id] = CallRecord(call_id, owner)
            return record, False

    def _tell_queued(self, record: CallRecord) -> None:
        """If the main thread is taken, tell the new call which run it waits behind."""
        running = self._main_record
        waiting = [r for r in list(self.records.values())
                   if r.main_thread and r.state == "queued" and r is not record]
        behind = running if running is not None and running.state == "running" else (
            min(waiting, key=lambda r: r.created) if waiting else None)
        if behind is None:
            return
        record.waited = True
        ahead = len(waiting) - (0 if behind is running else 1)
        event: messages.QueuedEvent = {"kind": "queued",
                                       "behind": self.run_info(behind, record.owner),
                                       "ahead": ahead}
        self.emit(record, dict(event))

    def run_info(self, record: CallRecord, asker: Any) -> messages.RunInfo:
        """What ``%kt runs`` shows of a main-thread run, as seen by connection ``asker``."""
        client: messages.RunClient
        if record.owner is None:
            client = "detached" if record.detached else "gone"
        else:
            client = "this" if record.owner is asker else "other"
        state = record.state if record.state != "done" else (record.outcome or "done")
        return {"run": record.call_id, "state": state, "label": record.label,
                "created": record.created, "started": record.started or None,
                "finished": record.finished or None, "events": record.seq, "client": client,
                "stats": record.stats}

    def fail(self, record: CallRecord, exc: BaseException) -> None:
        """Finish an admitted call with ``exc`` without running it."""
        with record.lock:
            record.result = _pack_error_safely(exc, self.pod_name)
            record.state = "done"
            record.finished = time.time()
        self._retain(record)  # before anyone can see the result: bounds hold at once
        self.on_finished(record)

    def reserve_inline(self) -> bool:
        """Claim a slot to run a call on the connection's own thread (at most max_workers)."""
        with self._lock:
            if self._inline >= self.max_workers:
                return False
            self._inline += 1
            return True

    def release_inline(self) -> None:
        """Give back a slot taken by :meth:`reserve_inline`."""
        with self._lock:
            self._inline -= 1

    def run_inline(self, record: CallRecord, body: memoryview, buffers: list[Any]) -> None:
        """Run an admitted call on this thread, in a slot taken by :meth:`reserve_inline`."""
        self.last_activity = time.monotonic()
        try:
            self._run(record, body, buffers)
        finally:
            self.release_inline()

    def run_main_loop(self, stop: threading.Event) -> None:
        """Run main-thread calls until ``stop`` is set (call from the main thread)."""
        signal.signal(signal.SIGINT, self._on_sigint)
        while not stop.is_set():
            try:
                job = self._main_jobs.get()
            except KeyboardInterrupt:
                continue
            if job is None:
                break
            try:
                self._run(*job, on_main=True)
            except KeyboardInterrupt:  # an interrupt that arrived just after the call
                continue

    def stop_main_loop(self) -> None:
        """Wake the main loop so that it returns."""
        self._main_jobs.put(None)

    # ----------------------------------------------------------------- cancel
    def cancel(self, call_id: int) -> bool:
        """Interrupt a call: KeyboardInterrupt where it runs; a queued one never starts.

        The interrupt is raised only while the call's own code runs (``in_user_code``,
        checked and acted on under the record's lock): one that arrived as the call
        finished must not land in the runtime's code that sends its result.
        """
        record = self.records.get(call_id)
        if record is None or record.state == "done":
            return False
        with record.lock:
            record.cancelled = True
            if record.state == "queued" and record.main_thread:
                # waiting behind another cell: it ends now, not when its turn comes
                record.result = _pack_error_safely(
                    KeyboardInterrupt(CANCELLED_BEFORE_START), self.pod_name)
                record.state = "done"
                record.finished = time.time()
                record.outcome = "cancelled"
                finished = True
            else:
                finished = False
        if finished:
            self._retain(record)
            self.on_finished(record)
            return True
        with record.lock:
            if not record.in_user_code or record.thread_id is None:
                return True  # queued (it will not start), or finishing anyway
            if self._main_record is record:
                self._interrupt_target = call_id
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            else:
                _set_async_exc(record.thread_id, KeyboardInterrupt)
        return True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        rec = self._main_record
        target = self._interrupt_target
        if target is not None:  # a cancel from a client
            if rec is not None and rec.call_id == target and rec.in_user_code:
                self._interrupt_target = None
                raise KeyboardInterrupt
            return  # it came after that call finished: not for the next one
        if rec is not None and rec.in_user_code:  # a real Ctrl-C in a terminal
            raise KeyboardInterrupt

    # -------------------------------------------------------------------- run
    def _run(self, record: CallRecord, body: memoryview, buffers: list[Any], on_main: bool = False
             ) -> None:
        with record.lock:
            if record.state == "done":  # cancelled while it waited: it has its result
                protocol.release_buffers(buffers)
                return
            record.state = "running"
            record.started = time.time()
            record.thread_id = threading.get_ident()
            cancelled = record.cancelled
        if on_main:
            self._main_record = record
            if record.waited and not cancelled:
                started: messages.StartedEvent = {"kind": "started", "at": record.started}
                self.emit(record, dict(started))
        capture.bind(record)
        self.calls_total += 1
        run, stats = self.meter.begin(), None
        try:
            if cancelled:
                protocol.release_buffers(buffers)
                raise KeyboardInterrupt(CANCELLED_BEFORE_START)
            try:
                msg = protocol.loads(body, protocol.resolve_buffers(buffers, shm.map_claimed))
            except ModuleNotFoundError as exc:
                raise _not_importable(exc) from exc
            finally:
                protocol.release_buffers(buffers)  # whatever was not mapped
            handler = HANDLERS.get(msg.get("kind", "")) if isinstance(msg, dict) else None
            if handler is None:
                raise ValueError(f"unknown call kind {msg.get('kind')!r}; is the pod older "
                                 "than the client? Upgrade kubetorch-jupyter on the pod")
            record.kind = msg["kind"]
            # The pod's own threads block SIGINT and SIGTERM (so that those reach the
            # main thread); user code runs with the empty mask of a normal process, or the
            # processes it starts inherit the block and Popen.terminate() cannot stop them.
            saved_mask = None if on_main else signal.pthread_sigmask(signal.SIG_SETMASK, ())
            with record.lock:
                # a cancel that came while the call was being unpacked: it never starts
                cancelled = record.cancelled
                record.in_user_code = not cancelled
            if cancelled:
                if saved_mask is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
                raise KeyboardInterrupt(CANCELLED_BEFORE_START)
            try:
                value = handler.run(self, msg, record)
            finally:
                with record.lock:
                    record.in_user_code = False
                    if not on_main:
                        _set_async_exc(record.thread_id or 0, None)  # a late one: drop it
                if saved_mask is not None:
                    signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
            stats = self.meter.end(run, record.kind, "ok")
            result = _pack_ok(value, stats)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
            self.calls_failed += 1
            if stats is None:
                stats = self.meter.end(run, record.kind, "cancelled" if record.cancelled and
                                       isinstance(exc, KeyboardInterrupt) else "error")
            result = _pack_error_safely(exc, self.pod_name, stats)
        finally:
            if on_main:
                self._main_record = None
                self._interrupt_target = None
            capture.unbind(record)
        with record.lock:
            record.result = result
            record.stats = stats
            record.state = "done"
            record.finished = time.time()
        self.last_activity = time.monotonic()
        self._retain(record)  # before anyone can see the result: bounds hold at once
        self.on_finished(record)

    # ------------------------------------------------------------ retention
    def _retain(self, record: CallRecord) -> None:
        """Count a finished result; evict the oldest past the cap.

        Past ``KT_POD_MAX_RETAINED_BYTES`` of unacknowledged results, the oldest go
        first; a client that collects one later gets :meth:`lost_result`.
        """
        body, buffers = record.result or (b"", [])
        size = len(body) + sum(b.nbytes for b in buffers)
        evicted = []
        with self._lock:
            if self.records.get(record.call_id) is not record:
                return  # acknowledged already
            record.result_bytes = size
            self.retained_bytes += size
            if self.retained_bytes > self.max_retained:
                for cid, rec in list(self.records.items()):
                    if self.retained_bytes <= self.max_retained:
                        break
                    if rec.state == "done":
                        self._forget(cid, "KT_POD_MAX_RETAINED_BYTES")
                        evicted.append(cid)
        if evicted:
            log.warning("dropped %d unacknowledged results to stay under "
                        "KT_POD_MAX_RETAINED_BYTES=%d", len(evicted), self.max_retained)

    def _forget(self, call_id: int, reason: str | None) -> None:
        """Drop a finished record (with ``_lock`` held); ``reason``: it was not collected."""
        rec = self.records.pop(call_id)
        self.retained_bytes -= rec.result_bytes
        if reason is not None:
            self.lost[call_id] = reason
            while len(self.lost) > 10_000:
                self.lost.popitem(last=False)

    def lost_result(self, call_id: int) -> tuple[bytes, list[memoryview]] | None:
        """The RESULT body for a call whose result was dropped, or None if it was not.

        A result past ``KT_POD_RESULT_TTL`` that the janitor has not dropped yet is
        dropped now. The client raises the answer as ``kernel_bridge.CallLostError``
        naming the setting.
        """
        with self._lock:
            rec = self.records.get(call_id)
            if rec is not None and rec.state == "done" and (
                    time.time() - rec.finished > self.result_ttl):
                self._forget(call_id, "KT_POD_RESULT_TTL")
        reason = self.lost.get(call_id)
        if reason is None:
            return None
        why = ("they were older than" if reason == "KT_POD_RESULT_TTL"
               else "unacknowledged results passed")
        message = (f"pod {self.pod_name!r} dropped the result of call {call_id:x} before "
                   f"it was collected: {why} {reason}. Run the call again, or raise "
                   f"{reason} on the pod")
        blob = protocol.dumps((messages.TypeByName("kernel_bridge.errors", "CallLostError"),
                               (message,), {"pod": self.pod_name}), min_oob=1 << 62)[0]
        error: messages.ErrorInfo = {
            "type": "kernel_bridge.errors.CallLostError", "message": message,
            "traceback": f"CallLostError: {message}\n", "frames": None, "exc": blob,
            "category": messages.ErrorKind.CALL_LOST.value}
        result: messages.Result = {"ok": False, "error": error}
        return protocol.dumps(result)

    def acknowledge(self, call_ids: list[int]) -> None:
        """The client has these results: forget them."""
        with self._lock:
            for cid in call_ids:
                rec = self.records.get(cid)
                if rec is not None and rec.state == "done":
                    self._forget(cid, None)
                self.lost.pop(cid, None)

    def expire(self, now: float | None = None) -> int:
        """Drop finished, unacknowledged results older than ``KT_POD_RESULT_TTL``."""
        now = now or time.time()
        with self._lock:
            old = [c for c, r in self.records.items()
                   if r.state == "done" and now - r.finished > self.result_ttl]
            for cid in old:
                self._forget(cid, "KT_POD_RESULT_TTL")
        return len(old)

    def busy(self) -> bool:
        """Whether any call is queued or running."""
        return any(r.state != "done" for r in list(self.records.values()))

    def shutdown(self) -> None:
        """Stop accepting work (running calls are abandoned with the process)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.stop_main_loop()


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in a thread at its next instruction (None: cancel a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)


def _pack_error_safely(exc: BaseException, pod: str, stats: messages.CallStats | None = None
                       ) -> tuple[bytes, list[memoryview]]:
    """:func:`_pack_error`, which must not fail: a call always gets a result."""
    try:
        return _pack_error(exc, pod, stats=stats)
    except BaseException:  # noqa: BLE001 - e.g. an exception whose __str__ raises
        typ = type(exc)
        error: messages.ErrorInfo = {"type": f"{typ.__module__}.{typ.__qualname__}",
                 "message": "<the exception could not be turned into a message>",
                 "traceback": "".join(traceback.format_exception_only(typ, None)),
                 "frames": None, "exc": None, "category": None}
        return protocol.dumps({"ok": False, "error": error})


def _not_importable(exc: ModuleNotFoundError) -> ModuleNotFoundError:
    """The error for a call naming a module this pod cannot import.

    When the package is installed here (another version than the client's, whose
    objects name modules this one lacks: ``numpy._core``), it says which version, and
    carries ``module`` and ``pod_version`` so the client can name both versions.
    """
    top = (exc.name or "").split(".")[0]
    version = protocol.installed_version(top) if top else None
    if version is not None:
        why = (f"this pod has {top} {version}, which has no such module: the client's "
               f"{top} is probably another version. Install the same version on both")
    else:
        why = ("it is neither installed here (kt.Image().pip_install) nor part of the synced "
               "project (is it ignored by .gitignore/.ktignore, or outside the project "
               "root?). Sync it, install it, or pass plain data instead")
    err = ModuleNotFoundError(f"the call refers to module {exc.name!r}, which this pod "
                              f"cannot import: {why}", name=exc.name)
    err.module = exc.name  # type: ignore[attr-defined]  # travel in the error's state
    err.pod_version = version  # type: ignore[attr-defined]
    return err


def _pack_ok(value: Any, stats: messages.CallStats | None = None
             ) -> tuple[bytes, list[memoryview]]:
    try:
        ok: messages.Result = {"ok": True, "value": value}
        if stats is not None:
            ok["stats"] = stats
        return protocol.dumps(ok)
    except Exception as exc:  # noqa: BLE001
        err = TypeError(
            f"the call's result ({type(value).__module__}.{type(value).__qualname__}) "
            f"cannot be pickled: {exc}. Return plain data (numbers, arrays, dicts) or keep "
            "the object on the pod with kt.cls"
        )
        return _pack_error(err, None, kind=messages.ErrorKind.SERIALIZATION, stats=stats)


_INTERNAL = os.path.dirname(os.path.abspath(__file__))


def _user_frames(tb: Any) -> Any:
    """Skip the pod runtime's own frames at the top of a traceback."""
    while tb is not None and os.path.dirname(
        os.path.abspath(tb.tb_frame.f_code.co_filename)
    ) == _INTERNAL:
        tb = tb.tb_next
    return tb


def _plain(exc: BaseException) -> bool:
    """Whether an exception pickles without dragging big objects along."""
    return sum(len(repr(a)) for a in exc.args) < 100_000


def _pack_error(exc: BaseException, pod: str | None, kind: messages.ErrorKind | None = None,
                stats: messages.CallStats | None = None) -> tuple[bytes, list[memoryview]]:
    exc.__traceback__ = _user_frames(exc.__traceback__)
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    typ = type(exc)
    blob: bytes | None = None
    # The type, args and attributes, not the instance: exceptions whose __init__ takes
    # other arguments than their args (very common) do not survive pickle otherwise.
    for state in (getattr(exc, "__dict__", {}), {}):
        try:
            if _plain(exc):
                blob = protocol.dumps((typ, exc.args, dict(state)), min_oob=1 << 62)[0]
            break
        except Exception:  # noqa: BLE001 - an attribute that cannot be pickled
            continue
    chained = exc.__cause__ is not None or (
        exc.__context__ is not None and not exc.__suppress_context__)
    frames = None if chained else [
        (f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(exc.__traceback__)
    ]
    found = getattr(exc, "kind", None)  # e.g. NotCachedError's
    if kind is None and isinstance(found, messages.ErrorKind):
        kind = found
    error: messages.ErrorInfo = {
        # named as Python's traceback names it: a class of a cell is "BadInput"
        "type": f"{typ.__module__}.{typ.__qualname__}"
        if typ.__module__ not in ("builtins", "__main__") else typ.__qualname__,
        "message": str(exc),
        "traceback": tb_text,
        "frames": frames,
        "exc": blob,
        "category": kind.value if kind is not None else None,
    }
    result: messages.Result = {"ok": False, "error": error}
    if stats is not None:
        result["stats"] = stats
    return protocol.dumps(result)


# ---------------------------------------------------------------- handlers
def _cached(ex: Executor, table: dict[str, Any], key: str, blob: bytes | None) -> Any:
    if blob is not None:
        obj = cloudpickle.loads(blob)
        table[key] = obj
        return obj
    try:
        return table[key]
    except KeyError:
        raise messages.NotCachedError(key) from None


@register("fn")
def _run_fn(ex: Executor, body: dict[str, Any], record: CallRecord) -> Any:
    msg = cast(messages.FnCall, body)
    fn = _cached(ex, ex.functions, msg["fn_id"], msg.get("fn_blob"))
    record.label = getattr(fn, "__qualname__", "function")
    return aio.resolve(fn(*msg.get("args", ()), **msg.get("kwargs", {})))


@register("init")
def _run_init(ex: Executor, body: dict[str, Any], record: CallRecord) -> Any:
    msg = cast(messages.InitCall, body)
    cls = _cached(ex, ex.functions, msg["cls_id"], msg.get("cls_blob"))
    record.label = f"{cls.__qualname__}()"
    ex.instances[msg["instance"]] = cls(*msg.get("args", ()), **msg.get("kwargs", {}))
    return None


@register("method")
def _run_method(ex: Executor, body: dict[str, Any], record: CallRecord) -> Any:
    msg = cast(messages.MethodCall, body)
    name = msg["instance"]
    try:
        obj = ex.instances[name]
    except KeyError:
        raise LookupError(
            f"no instance {name!r} on pod {ex.pod_name!r} (the pod restarted?); "
            "create it again with kt.cls(...).to(compute)"
        ) from None
    method = msg["method"]
    record.label = f"{type(obj).__qualname__}.{method}"
    attr = getattr(obj, method)
    if msg.get("get_attr"):
        return attr
    return aio.resolve(attr(*msg.get("args", ()), **msg.get("kwargs", {})))
