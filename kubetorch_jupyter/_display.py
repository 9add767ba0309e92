"""Where the events of a remote call go: this process's streams and display system."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["event_sink"]


def _ipython() -> Any | None:
    mod = sys.modules.get("IPython")
    if mod is None:
        return None
    try:
        return mod.get_ipython()
    except Exception:  # noqa: BLE001
        return None


def event_sink(event: dict[str, Any]) -> None:
    """Write a pod event where a local call would have written it.

    Streams go to ``sys.stdout``/``sys.stderr`` of the calling thread (in a notebook,
    the cell that made the call); display data goes through IPython's display
    publisher when IPython runs, else its text form is printed.
    """
    kind = event.get("kind")
    if kind == "stream":
        stream = sys.stderr if event.get("name") == "stderr" else sys.stdout
        stream.write(event["text"])
        stream.flush()
        return
    if kind in ("display", "result"):
        data = event.get("data") or {}
        shell = _ipython()
        if shell is not None and getattr(shell, "display_pub", None) is not None:
            shell.display_pub.publish(data=data, metadata=event.get("metadata") or {})
        elif "text/plain" in data:
            print(data["text/plain"])
