"""Why a pod stopped on its own: the words both ends agree on, and how they travel.

A pod that stops by itself (a SIGTERM whose grace ran out, its inactivity TTL) says
why in two places, so a client learns it whichever it sees first:

- the close of every websocket: code 1001 with the reason ``"<Reason> <value>"``
  (``"Preempted 25"``: the grace in seconds; ``"Idle 1800"``: the TTL), short enough
  for a close frame's 123 bytes;
- its termination log (``KT_POD_TERMINATION_LOG``, Kubernetes' ``terminationMessagePath``):
  ``"<Reason>: <detail>"``, which a backend turns into a ``PodStatus`` reason and message.

Pure: no sockets, no files except :func:`write_termination_log`.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["IDLE", "PREEMPTED", "REASONS", "close_reason", "describe", "parse_close_reason",
           "parse_termination_log", "termination_log", "write_termination_log"]

#: SIGTERM (a node drain, ``kubectl delete``, preemption): calls past the grace stopped.
PREEMPTED = "Preempted"
#: No calls for the inactivity TTL.
IDLE = "Idle"
REASONS = (PREEMPTED, IDLE)


def _seconds(value: float) -> str:
    if value >= 120 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:g}s"


def describe(reason: str, value: float | None) -> str:
    """The human detail of an ending: what happened, in one clause."""
    if reason == PREEMPTED:
        grace = "" if value is None else f" after the {_seconds(value)} grace"
        return ("the pod got SIGTERM (a node drain, kubectl delete or preemption); calls "
                f"still running{grace} were stopped")
    if reason == IDLE:
        ttl = "" if value is None else f" for {_seconds(value)}, its inactivity_ttl"
        return f"no calls{ttl}"
    return reason


def close_reason(reason: str, value: float) -> str:
    """The websocket close reason of an ending (``"Preempted 25"``)."""
    return f"{reason} {value:g}"


def parse_close_reason(text: str) -> tuple[str, float | None] | None:
    """(reason, value) of a close reason made by :func:`close_reason`; None otherwise."""
    head, _, rest = text.strip().partition(" ")
    if head not in REASONS:
        return None
    try:
        return head, float(rest) if rest else None
    except ValueError:
        return head, None


def termination_log(reason: str, value: float | None) -> str:
    """The termination log's text of an ending (``"Preempted: the pod got SIGTERM ..."``)."""
    return f"{reason}: {describe(reason, value)}"


def parse_termination_log(text: str) -> tuple[str, str] | None:
    """(reason, detail) of a termination log written by a pod; None for anything else."""
    head, sep, detail = text.strip().partition(": ")
    if not sep or head not in REASONS:
        return None
    return head, detail


def write_termination_log(path: str, text: str, *, create: bool) -> bool:
    """Write ``text`` to ``path`` (only if it exists, unless ``create``); whether it did."""
    if not path or (not create and not os.path.exists(path)):
        return False
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a state file
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    return False
