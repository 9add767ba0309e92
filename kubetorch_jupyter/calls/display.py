"""Where the events of a remote call go: this process's streams and display system."""

from __future__ import annotations

import sys
import threading
from typing import Any

__all__ = ["RemoteValue", "event_sink"]

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
        if "\n" in text or "\r" in text:  # whole lines (or a progress bar's redraw) now;
            stream.flush()  # a kernel's own timer sends the rest: fewer, fuller messages
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
