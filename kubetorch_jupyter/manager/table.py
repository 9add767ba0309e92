"""The one place listings are formatted: ages, columns, plain-text tables."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.resources import format_bytes
from .summary import ComputeSummary

__all__ = ["COLUMNS", "age", "log_text", "parse_call_id", "render", "table"]


def log_text(entries: Sequence[Mapping[str, Any]]) -> str:
    """A pod's log history as text: printed lines as printed, records with their level."""
    out = []
    for e in entries:
        if e.get("stream") == "log":
            out.append(f"{str(e.get('level', '')).upper()} {e.get('logger', '')}: {e['text']}\n")
        else:
            out.append(f"{e['text']}\n")
    return "".join(out)


def parse_call_id(text: str) -> int:
    """A call or run id as ``kt logs --call`` takes it: ``3f9a0c2e1b7d4a55`` or ``NAME:HEX``.

    Raises:
        ValueError: When it is neither (the message says what one looks like).
    """
    raw = text.strip().rpartition(":")[2]
    try:
        value = int(raw, 16)
    except ValueError:
        value = -1
    if value < 0 or not raw:
        raise ValueError(f"{text!r} is not a call id: give the hex id %kt runs shows "
                         "(NAME:3f9a0c2e1b7d4a55, or just 3f9a0c2e1b7d4a55)")
    return value


def age(seconds: float) -> str:
    """A duration the way ``kubectl get`` writes an age: 45s, 3m, 2h, 5d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart (the first row is the header)."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


Cell = Callable[[ComputeSummary, float], str]

#: Every column a listing can show: header -> (summary, now) -> text.
COLUMNS: dict[str, Cell] = {
    "NAME": lambda s, now: s.name,
    "BACKEND": lambda s, now: s.backend,
    "PHASE": lambda s, now: s.phase,
    "REASON": lambda s, now: s.reason or "-",
    "PID": lambda s, now: str(s.pid or "-"),
    "URL": lambda s, now: s.url,
    "GPUS": lambda s, now: ",".join(map(str, s.gpu_ids)) or (str(s.gpus) if s.gpus else "-"),
    "CPUS": lambda s, now: f"{s.cpus:g}" if s.cpus else "-",
    "MEMORY": lambda s, now: format_bytes(s.memory),
    "AGE": lambda s, now: age(now - s.started_at),
    "IDLE": lambda s, now: age(now - s.idle_since) if s.idle_since else "-",
}


def render(summaries: Sequence[ComputeSummary], columns: Sequence[str], *,
           mark: str | None = None, now: float | None = None) -> str:
    """A table of ``summaries`` with ``columns`` (keys of :data:`COLUMNS`).

    With ``mark``, a first unnamed column holds ``*`` on the row of the compute so named.
    """
    now = time.time() if now is None else now
    header = ([""] if mark is not None else []) + list(columns)
    rows = [header]
    for s in summaries:
        row = [COLUMNS[c](s, now) for c in columns]
        rows.append((["*" if s.name == mark else ""] if mark is not None else []) + row)
    return table(rows)
