"""Where the events of a remote call go: this process's streams and display system.

A call's events are written by whoever waits for it (``handle.result()``). In a blocking
call that is the cell that made it, and :func:`event_sink` writes to ``sys.stdout`` and
IPython's display publisher, which a kernel attributes to the running cell. Work that
outlives its cell (``submit()`` in one cell, ``.result()`` in a later one) would land in
the later cell that way, so :func:`cell_sink` captures the kernel's parent header (the
request of the cell running now) when the call starts, and publishes the call's output
under it whenever it is written from another cell: the output appears in the cell that
started the call, where a notebook frontend puts messages of that parent. Outside an
IPython kernel the two sinks are the same.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CellSink", "RemoteValue", "cell_sink", "current_parent", "event_sink"]

#: ipykernel's display hook builds its message in shared state between its start and
#: finish; cells running at once (kernel subshells) must not interleave those calls.
_displayhook_lock = threading.Lock()


def _ipython() -> Any | None:
    mod = sys.modules.get("IPython")
    if mod is None:
        return None
    try:
        return mod.get_ipython()
    except Exception:  # noqa: BLE001
        return None


class RemoteValue:
    """The result of a remote cell (its last expression), shown with the pod's rich repr.

    The value itself stays on the pod, where ``_`` holds it; ``%kt pull NAME`` brings
    a variable here.

    Attributes:
        data: The MIME bundle the pod made (``text/plain``, ``text/html``, ...).
        metadata: Its display metadata.
    """

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        self.data = dict(data)
        self.metadata = dict(metadata or {})

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<remote value>"))


#: Under a flood of output, a kernel stream is flushed (one IOPub message) at most this
#: often; what comes between goes with the next flush or the kernel's own timer.
FLUSH_INTERVAL = 0.1
_last_flush: dict[int, float] = {}


def _flush(stream: Any) -> None:
    """Send whole lines now, without a message per line when they pour in.

    The first line after a quiet spell is flushed at once. In a kernel, lines that come
    sooner than :data:`FLUSH_INTERVAL` after a flush wait in its stream, which its own
    timer (``flush_interval``) sends; another stream (a script's) is flushed each time.
    """
    if not hasattr(stream, "flush_interval"):  # not ipykernel's OutStream: no timer
        stream.flush()
        return
    now = time.monotonic()
    if now - _last_flush.get(id(stream), 0.0) >= FLUSH_INTERVAL:
        _last_flush[id(stream)] = now
        stream.flush()


def event_sink(event: dict[str, Any]) -> None:
    """Write a pod event where a local call would have written it.

    Streams go to ``sys.stdout``/``sys.stderr`` of the calling thread (in a notebook,
    the cell that made the call); display data goes through IPython's display
    publisher when IPython runs, else its text form is printed. A cell's ``result``
    goes through IPython's display hook, so it becomes the cell's ``Out`` (an
    ``execute_result`` in a kernel) as a local cell's value would.
    """
    kind = event.get("kind")
    if kind == "stream":
        stream = sys.stderr if event.get("name") == "stderr" else sys.stdout
        text = event["text"]
        stream.write(text)
        if "\n" in text or "\r" in text:  # whole lines (or a progress bar's redraw)
            _flush(stream)
        return
    shell = _ipython()
    if kind == "clear_output":
        if shell is not None and getattr(shell, "display_pub", None) is not None:
            shell.display_pub.clear_output(wait=bool(event.get("wait")))
        return
    if kind not in ("display", "result"):
        return
    data = event.get("data") or {}
    metadata = event.get("metadata") or {}
    if kind == "result" and shell is not None and getattr(shell, "displayhook", None):
        sys.stdout.flush()
        sys.stderr.flush()
        with _displayhook_lock:
            shell.displayhook(RemoteValue(data, metadata))
    elif shell is not None and getattr(shell, "display_pub", None) is not None:
        extra: dict[str, Any] = {}
        if event.get("transient"):
            extra["transient"] = event["transient"]
        if event.get("update"):
            extra["update"] = True
        shell.display_pub.publish(data=data, metadata=metadata, **extra)
    elif "text/plain" in data:
        print(data["text/plain"])


def _request_id(parent: dict[str, Any] | None) -> str | None:
    """The msg_id of a parent (a whole request message, or its header)."""
    if not parent:
        return None
    header = parent.get("header", parent)
    msg_id = header.get("msg_id") if isinstance(header, dict) else None
    return str(msg_id) if msg_id else None


def current_parent() -> dict[str, Any] | None:
    """The kernel request this thread's output belongs to now; None outside a kernel.

    That is ipykernel's parent header: per thread (and task) where the kernel set one,
    else the request of the cell running now.
    """
    shell = _ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    try:
        get = getattr(shell, "get_parent", None)
        parent = get() if get is not None else getattr(shell, "parent_header", None)
    except Exception:  # noqa: BLE001 - not ipykernel's shell after all
        return None
    return parent if isinstance(parent, dict) and _request_id(parent) else None


class CellSink:
    """An event sink that keeps a call's output in the cell that started the call.

    Written from that same cell (the blocking case) it is :func:`event_sink`. Written
    from any other cell or thread, each event is published on the kernel's IOPub
    socket under the captured parent, as ipykernel's own streams and display publisher
    would have published it while that cell ran.

    Attributes:
        parent: The request message (or its header) the output belongs to.
    """

    def __init__(self, parent: dict[str, Any]) -> None:
        self.parent = parent
        self._msg_id = _request_id(parent)
        self._routed = False

    def __call__(self, event: dict[str, Any]) -> None:
        """Write ``event`` here if this is the call's cell, else publish it under it."""
        if _request_id(current_parent()) == self._msg_id:
            self._routed = False
            event_sink(event)
            return
        shell = _ipython()
        kernel = getattr(shell, "kernel", None)
        if kernel is None:  # the kernel went away: write here rather than lose it
            event_sink(event)
            return
        if not self._routed:
            # what the call wrote in its own cell (still buffered) goes first
            self._routed = True
            sys.stdout.flush()
            sys.stderr.flush()
        message = _iopub_message(event)
        if message is not None:
            msg_type, content = message
            kernel.session.send(kernel.iopub_socket, msg_type, content, parent=self.parent,
                                ident=f"kubetorch.{msg_type}".encode())


def _iopub_message(event: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The IOPub message (type, content) that shows ``event`` in a cell."""
    kind = event.get("kind")
    if kind == "stream":
        name = "stderr" if event.get("name") == "stderr" else "stdout"
        return "stream", {"name": name, "text": event["text"]}
    if kind == "clear_output":
        return "clear_output", {"wait": bool(event.get("wait"))}
    if kind not in ("display", "result"):
        return None
    # a result long after its cell finished is shown, not made the cell's Out
    content: dict[str, Any] = {"data": event.get("data") or {},
                               "metadata": event.get("metadata") or {},
                               "transient": event.get("transient") or {}}
    return ("update_display_data" if event.get("update") else "display_data"), content


def cell_sink() -> Callable[[dict[str, Any]], None]:
    """The sink for a call that starts now, on this thread.

    In an IPython kernel, a :class:`CellSink` bound to the cell running now; elsewhere
    :func:`event_sink`.
    """
    parent = current_parent()
    return event_sink if parent is None else CellSink(parent)
