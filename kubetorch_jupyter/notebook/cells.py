"""The client side of notebook cells: run a cell on a pod, detach it, attach to it later.

These are what the ``%%kt`` / ``%kt`` magics call (see :mod:`.magics`); they work
without IPython too. A cell runs on the pod's main thread, so interrupting the kernel
interrupts the cell there (a real SIGINT); the pod and its namespace survive.

A **detached** run is a separate call on the pod that no connection is subscribed to:
the pod keeps everything it prints and its result until a client attaches (from any
kernel, with the run id ``NAME:HEX``) and collects the result, or for 24 hours. The
result is given once: the attach that receives it acknowledges it.
"""

from __future__ import annotations

import contextlib
import hashlib
import linecache
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from kernel_bridge import (
    CallCancelledError,
    CallHandle,
    CallLostError,
    EventSink,
    PodConnection,
    RemoteError,
)
from kernel_bridge.calls import CANCEL_GRACE, InterruptIgnored, InterruptRepeated
from pod_runtime import protocol
from pod_runtime.protocol import messages

from ..calls import versions as _versions
from ..calls.display import event_sink
from ..calls.serialize import dump_call
from ..core import connections
from ..core.compute import Compute
from ..exceptions import CellTimeoutError, ConfigError, SerializationError
from ..sync import session as _sync

__all__ = ["CellInterrupted", "RunId", "attach", "busy_since", "cancel_run", "cell_filename",
           "forget_stuck", "list_runs", "restart", "run_cell", "start_detached", "vars_call",
           "waiting_note"]

_RUN_ID = re.compile(r"^(?P<name>[a-z]([-a-z0-9]*[a-z0-9])?):(?P<id>[0-9a-f]{1,16})$")


class RunId(str):
    """A detached run's id: ``<compute name>:<call id in hex>``, e.g. ``llm:3f9a0c2e1b7d4a55``."""

    __slots__ = ()

    @classmethod
    def make(cls, name: str, call_id: int) -> RunId:
        """The id of call ``call_id`` on compute ``name``."""
        return cls(f"{name}:{call_id:016x}")

    @classmethod
    def parse(cls, text: str) -> tuple[str, int]:
        """(compute name, call id) of a run id.

        Raises:
            ConfigError: When ``text`` is not a run id.
        """
        m = _RUN_ID.match(text.strip())
        if m is None:
            raise ConfigError(f"{text!r} is not a run id; a run id looks like "
                              "'llm:3f9a0c2e1b7d4a55' (%%kt --detach prints it, %kt runs "
                              "lists them)")
        return m.group("name"), int(m.group("id"), 16)


def cell_filename(source: str, count: int | None, first_line: int = 1) -> str:
    """The file name a cell is compiled under: names the cell, unique per source."""
    digest = hashlib.sha1(f"{first_line}\0{source}".encode(), usedforsecurity=False)
    where = f"In[{count}]" if count is not None else "cell"
    return f"<kt {where} {digest.hexdigest()[:6]}>"


def register_source(filename: str, source: str, first_line: int = 1) -> None:
    """Put the cell in this process's ``linecache`` too (tracebacks format here as well)."""
    text = "\n" * (first_line - 1) + source
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)


def _connect(compute: Compute, source: str | None = None) -> PodConnection:
    """Connect, check versions, and sync the project so the cell sees the code as it is.

    ``source``: the cell's code, which fails here if it uses a module whose edit failed
    to reload on the pod.
    """
    conn = compute.connection()
    _versions.check(conn)
    _sync.ensure(compute, source)
    return conn


def _dump(compute: Compute, msg: messages.CellCall | messages.CellVarsCall, label: str
          ) -> tuple[bytes, list[memoryview]]:
    """Pickle a cell message; its pushed variables travel like call arguments."""
    msg = msg.copy()
    msg["kwargs"] = msg.get("push") or {}
    try:
        with _sync.shipping_to(compute):  # objects of synced modules go by reference
            return dump_call(msg, label)
    except SerializationError as exc:
        what = exc.target.replace("argument", "variable", 1)
        raise SerializationError(
            f"cannot push {what} to the pod: it does not pickle ({exc.__cause__}). Locks, "
            "open files, sockets and live clients cannot cross; create such objects on the "
            "pod", target=what) from exc


def _label(source: str, prefix: str) -> str:
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    return f"{prefix} {first[:60]}".rstrip()


def _cell_message(source: str, filename: str | None, first_line: int,
                  push: dict[str, Any] | None, pull: Iterable[str], *, detach: bool,
                  ) -> tuple[messages.CellCall, str]:
    """The CALL message of a cell (its source registered for tracebacks), and its label."""
    filename = filename or cell_filename(source, None, first_line)
    register_source(filename, source, first_line)
    label = _label(source, "%%kt --detach" if detach else "%%kt")
    msg: messages.CellCall = {"kind": "cell", "source": source, "filename": filename,
                              "first_line": first_line, "push": push or {},
                              "pull": list(pull), "label": label}
    if detach:
        msg["detach"] = True
    return msg, label


def run_cell(
    compute: Compute,
    source: str,
    *,
    filename: str | None = None,
    first_line: int = 1,
    push: dict[str, Any] | None = None,
    pull: Iterable[str] = (),
    timeout: float | None = None,
    sink: EventSink = event_sink,
    stats: bool = False,
) -> dict[str, Any]:
    """Run ``source`` on ``compute``'s pod as a notebook cell; return the pulled variables.

    ``stats``: print what the cell cost on the pod (:meth:`CallStats.line`) after its
    output, also when it failed.

    Output, display data and the cell's result go to ``sink`` on this thread while the
    cell runs. Ctrl-C (a kernel interrupt) interrupts the cell on the pod and raises a
    ``KeyboardInterrupt`` carrying the remote traceback (where the cell stopped). A cell
    that waits behind another run on the pod says which (on stderr), and ``timeout``
    counts from when it starts.

    Raises:
        RemoteError: The cell raised (also an instance of the original type).
        CellTimeoutError: ``timeout`` seconds passed; the cell was interrupted on the pod
            (a TimeoutError too).
        CellInterrupted: Ctrl-C, and the cell had not started, or the pod did not act
            on the interrupt (it is busy in C code).
    """
    msg, label = _cell_message(source, filename, first_line, push, pull, detach=False)
    stuck = compute.name in _stuck
    try:
        _wait_for_stuck(compute.name)
        conn = _connect(compute, source)
        body, buffers = _dump(compute, msg, label)
    except CellInterrupted:
        raise
    except KeyboardInterrupt:  # Ctrl-C before the cell was sent: nothing ran anywhere
        hint = (f"; pod {compute.name!r} was busy in code that does not see interrupts: "
                "wait for it, or restart the pod and lose its state: "
                f"%kt restart {compute.name}") if stuck else ""
        raise CellInterrupted(f"interrupted before it was sent: this cell did not run{hint}"
                              ) from None

    def show(event: dict[str, Any]) -> None:
        if event.get("kind") == "queued":
            sys.stderr.write(waiting_note(compute.name, event) + "\n")
            sys.stderr.flush()
        else:
            sink(event)

    handle = conn.call(body, buffers, flags=protocol.FLAG_MAIN_THREAD, label=label, sink=show)
    handle.restart_hint = "%kt restart {pod}"
    handle.second_interrupt = " and restart the pod (a fresh process: its state is lost)"
    try:
        value = handle.result(timeout)
    except TimeoutError as exc:
        if isinstance(exc, RemoteError):
            raise
        handle.cancel()
        _finish_quietly(handle)
        raise CellTimeoutError(
            f"the cell ran longer than its timeout ({timeout:g}s) and was interrupted on pod "
            f"{conn.name!r}; the pod and its variables are intact") from None
    except InterruptRepeated:
        _stuck[compute.name] = (handle, time.monotonic())
        raise CellInterrupted(_restart_on_second_interrupt(compute, handle)) from None
    except InterruptIgnored:
        _stuck[compute.name] = (handle, time.monotonic())
        raise CellInterrupted(
            f"pod {compute.name!r} is busy in code that does not see interrupts (a long C "
            "call, such as sum(range(10**10)), holds it), so the cell goes on running there. "
            f"Wait for it (the next %%kt cell on {compute.name!r} waits), or restart the pod "
            f"and lose its state: %kt restart {compute.name}") from None
    except KeyboardInterrupt:
        if handle.queued is not None and handle.started is None:
            rid = RunId.make(compute.name, int(handle.queued["behind"]["run"]))
            raise CellInterrupted(
                f"the cell was interrupted before it started: it was waiting for run {rid}, "
                f"which goes on running; %kt cancel {rid} stops it") from None
        remote = _remote_interrupt(handle)
        if remote is not None:
            raise remote from None
        raise
    finally:
        if stats:
            show_stats(handle)
    return (value or {}).get("pulled") or {}


def show_stats(handle: CallHandle) -> None:
    """Print the ``kt: ... wall · ... CPU · peak ...`` line of a finished call, if it has one."""
    if handle.stats is not None:
        print(handle.stats.line(), flush=True)


class CellInterrupted(KeyboardInterrupt):
    """An interrupt of a ``%%kt`` cell that did not stop it as usual; says what to do."""

    def _render_traceback_(self) -> list[str]:
        """IPython hook: one line, no frames of ours."""
        return [f"KeyboardInterrupt: {self}"]


#: Cells whose interrupt the pod never acted on: compute name -> (handle, since).
_stuck: dict[str, tuple[CallHandle, float]] = {}


def _wait_for_stuck(name: str) -> None:
    """Before a cell: wait, saying so, while the previous one is stuck in C code there.

    The cell is not sent meanwhile: a cell sent to a pod that cannot read it would start
    whenever the pod comes back, even after the user gave up on it. Ctrl-C stops the
    wait (the cell did not run).
    """
    entry = _stuck.get(name)
    if entry is None:
        return
    handle, since = entry
    if not handle.done():
        sys.stderr.write(
            f"waiting for the previous cell on {name!r}, still busy in code that does not "
            f"see interrupts (for {_seconds(time.monotonic() - since)}); interrupt to stop "
            f"waiting, or restart the pod and lose its state: %kt restart {name}\n")
        sys.stderr.flush()
        try:
            handle.wait_answered()
        except KeyboardInterrupt:
            raise CellInterrupted(
                f"stopped waiting: this cell did not run (it was not sent). Pod {name!r} is "
                "still busy in code that does not see interrupts (for "
                f"{_seconds(time.monotonic() - since)}); wait for it, or restart the pod and "
                f"lose its state: %kt restart {name}") from None
        sys.stderr.write(f"the previous cell on {name!r} ended after "
                         f"{_seconds(time.monotonic() - since)}; running this one\n")
        sys.stderr.flush()
    _stuck.pop(name, None)


def restart(compute: Compute) -> None:
    """Replace ``compute``'s pod by a fresh process (its state is lost), e.g. one stuck in C."""
    compute.teardown()
    forget_stuck(compute.name)
    _ = compute.pod


def _restart_on_second_interrupt(compute: Compute, handle: CallHandle) -> str:
    """A second interrupt of a cell stuck in C code: restart the pod, unless others use it.

    Returns the line to show. Work this kernel can see on the pod (its other calls in
    flight, other clients connected to the pod when this kernel connected) is not lost
    silently: then the pod is left running and the line says what a restart would end.
    """
    name = compute.name
    others = [h.label for h in handle.conn.in_flight() if h is not handle]
    clients = int(handle.conn.welcome.get("clients", 0) or 0)
    if others or clients:
        what = [f"{len(others)} other call(s) of this kernel ({', '.join(others[:3])})"
                if others else "", f"{clients} other client(s) connected to it" if clients
                else ""]
        return (f"stopped waiting (a second interrupt); pod {name!r} was NOT restarted: it "
                f"is in use by {' and '.join(w for w in what if w)}, whose work a restart "
                f"would lose. The cell goes on running there; %kt restart {name} restarts "
                "the pod anyway")
    restart(compute)
    return (f"restarted pod {name!r} (a second interrupt): the cell was stopped and the pod "
            "is a fresh process; its state (variables, imports, runs it held) is lost")


def forget_stuck(name: str) -> None:
    """The pod ``name`` was restarted: its stuck cell is gone with it."""
    _stuck.pop(name, None)


def busy_since(name: str) -> float | None:
    """Seconds the last interrupted cell on ``name`` has been stuck (None: none is)."""
    entry = _stuck.get(name)
    if entry is None or entry[0].done():
        return None
    return time.monotonic() - entry[1]


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


_CLIENTS = {"this": "by this kernel", "other": "by another kernel", "detached": "detached",
            "gone": "by a kernel that is gone"}


def waiting_note(name: str, event: dict[str, Any]) -> str:
    """The line a cell shows while it waits behind another run (a QueuedEvent)."""
    behind = event["behind"]
    rid = RunId.make(name, int(behind["run"]))
    running = behind["state"] == "running"
    since = behind.get("started") if running else behind.get("created")
    age = f" {_seconds(max(0.0, time.time() - since))} ago" if since else ""
    label = f"{behind['label']}, " if behind.get("label") else ""
    more = event.get("ahead") or 0
    ahead = f", then {more} more queued before this cell" if more else ""
    return (f"waiting for run {rid} ({label}{'started' if running else 'queued'}{age} "
            f"{_CLIENTS.get(behind.get('client'), '')}){ahead} — %kt cancel {rid} to stop it")


def _finish_quietly(handle: CallHandle) -> None:
    """Wait (briefly) for an interrupted call to stop, showing its last output."""
    with contextlib.suppress(KeyboardInterrupt, TimeoutError, RemoteError, CallCancelledError):
        handle.result(CANCEL_GRACE)


def _remote_interrupt(handle: CallHandle) -> BaseException | None:
    """The pod's KeyboardInterrupt (with its traceback), if the pod has answered."""
    if not handle.done():
        return None
    try:
        handle.result(0)
    except CallCancelledError as exc:
        return exc.remote if isinstance(exc.remote, RemoteError) else None
    except KeyboardInterrupt as exc:
        return exc if isinstance(exc, RemoteError) else None
    except BaseException:  # noqa: BLE001 - the cell ended otherwise; the caller re-raises
        return None
    return None


def start_detached(
    compute: Compute,
    source: str,
    *,
    filename: str | None = None,
    first_line: int = 1,
    push: dict[str, Any] | None = None,
) -> RunId:
    """Start ``source`` on the pod as a detached run and return its id at once."""
    msg, label = _cell_message(source, filename, first_line, push, (), detach=True)
    _wait_for_stuck(compute.name)
    conn = _connect(compute, source)
    body, buffers = _dump(compute, msg, label)
    started = conn.call(body, buffers, label=label, sink=event_sink).result()
    return RunId.make(compute.name, int(started["run"]))


def _private_connection(compute: Compute) -> PodConnection:
    """A connection of our own: closing it unsubscribes from the calls it followed."""
    return connections.open_connection(compute.backend, compute.pod)


class Detached(Exception):
    """Following a run stopped (Ctrl-C); the run goes on. ``run_id`` names it."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"stopped following run {run_id}; it keeps running on the pod. "
                         f"%kt attach {run_id} follows it again, %kt cancel {run_id} stops it")
        self.run_id = run_id


def attach(run_id: str, *, sink: EventSink = event_sink,
           on_start: Callable[[], None] | None = None, stats: bool = False) -> dict[str, Any]:
    """Follow a detached run from here: replay what it printed, stream the rest, get its result.

    Returns the run's value (``{"pulled": ...}``); ``stats``: print what the run cost.

    Raises:
        ComputeNotFoundError: The run's pod is not running (the run is lost with it).
        CallLostError: The pod holds no such run (collected already, expired, restarted).
        Detached: Ctrl-C while following; the run continues on the pod.
        RemoteError: The run raised.
    """
    name, call_id = RunId.parse(run_id)
    compute = Compute.from_name(name)
    conn = _private_connection(compute)
    try:
        _versions.check(conn)
        handle = conn.attach(call_id, label=f"run {run_id}", sink=sink)
        if on_start is not None:
            on_start()
        try:
            for event in handle.stream():
                sink(event)
        except KeyboardInterrupt:
            if not handle.done():
                raise Detached(run_id) from None
        try:
            return handle.result() or {}
        except CallLostError:
            raise CallLostError(
                f"pod {name!r} holds no run {run_id}: its result was collected already (a "
                "run's result is given to the first attach that receives it), it finished "
                "more than 24 hours ago, or the pod restarted", pod=name) from None
        finally:
            if stats:
                show_stats(handle)
    finally:
        conn.close()


def cancel_run(run_id: str) -> None:
    """Interrupt a detached run on its pod (KeyboardInterrupt there; the pod survives)."""
    name, call_id = RunId.parse(run_id)
    Compute.from_name(name).connection().cancel(call_id)


def list_runs(compute: Compute, timeout: float | None = None) -> list[dict[str, Any]]:
    """The cell runs ``compute``'s pod holds (queued, running, or finished and uncollected).

    Raises:
        TimeoutError: The pod did not answer within ``timeout`` seconds (busy in C code).
    """
    conn = compute.connection()
    runs_call: messages.CellRunsCall = {"kind": "cell_runs"}
    body, buffers = protocol.dumps(runs_call)
    runs: list[dict[str, Any]] = conn.call(body, buffers, label="%kt runs").result(timeout)
    for run in runs:
        run["id"] = RunId.make(compute.name, int(run["run"]))
    return runs


def vars_call(compute: Compute, *, push: dict[str, Any] | None = None,
              pull: Iterable[str] = ()) -> dict[str, Any]:
    """Set (``push``) and read (``pull``) variables of the pod's cell namespace.

    Runs beside cells, not after them: it works while a (detached) cell is running.
    """
    conn = _connect(compute)
    msg: messages.CellVarsCall = {"kind": "cell_vars", "push": push or {}, "pull": list(pull)}
    body, buffers = _dump(compute, msg, "%kt push/pull")
    value = conn.call(body, buffers, label="%kt push/pull").result()
    return (value or {}).get("pulled") or {}
