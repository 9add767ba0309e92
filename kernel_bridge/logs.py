"""Where the bridge's own messages go: never into whichever notebook cell runs now.

The bridge logs from its reader and reconnect threads ("connection to pod ... dropped;
reconnecting"). Python's fallback handler writes such records to ``sys.stderr``, which
in a Jupyter kernel belongs to the cell running at that moment: rarely the one the
message is about. So the ``kubetorch.bridge`` logger has a handler of its own:

- a record about one call (logged with ``extra=about(handle)``) is written as stderr
  output of that call, through its sink: it appears where the call's output appears
  (in a kernel, the cell that started the call);
- any other record goes to the process's own stderr (``sys.__stderr__``: the terminal,
  or for a kernel the Jupyter server's log), never into a cell.

Records still propagate, so an application's logging configuration sees them as well.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["about", "log"]

log = logging.getLogger("kubetorch.bridge")


def about(handle: Any) -> dict[str, Any]:
    """``extra=`` for a record about one call: it is shown with that call's output."""
    return {"kt_call": handle}


class _CallOrProcessStderr(logging.Handler):
    """To the call's sink when the record names a call, else to the process's stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("kubetorch %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - a bad format string must not break the bridge
            text = f"kubetorch {record.levelname}: {record.msg!r} {record.args!r}\n"
        sink = getattr(getattr(record, "kt_call", None), "sink", None)
        if sink is not None:
            try:
                sink({"kind": "stream", "name": "stderr", "text": text})
                return
            except Exception:  # noqa: BLE001 - the process's stderr, below
                pass
        stream = sys.__stderr__
        if stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # closed: nowhere left to say it
            pass


if not any(isinstance(h, _CallOrProcessStderr) for h in log.handlers):
    log.addHandler(_CallOrProcessStderr())
