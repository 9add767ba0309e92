"""What a connection asks when its pod stops answering: is the process still there?

The probe is the caller's (a backend: a ``waitpid`` locally, an API round trip in a
cluster). The connection runs it on a worker thread of its own, never on the thread
that reads the socket, and turns a "not alive" answer into :class:`PodDiedError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pod_runtime.protocol import ending

from .errors import PodDiedError, PodOOMError

__all__ = ["PodState", "StatusProbe", "died_error", "read_probe"]

log = logging.getLogger("kubetorch.bridge")


class PodState(Protocol):
    """What a status probe returns (the core's ``PodStatus`` is one).

    Attributes:
        alive: Whether the pod process is running.
        exit_status: Its exit status when it ended (negative: killed by that signal),
            None when unknown.
        reason: Why it ended, in a word where known ("OOMKilled", "Evicted", "Killed",
            "Error"), else None.
        message: A human sentence about it, or "".
    """

    @property
    def alive(self) -> bool: ...  # noqa: D102

    @property
    def exit_status(self) -> int | None: ...  # noqa: D102

    @property
    def reason(self) -> str | None: ...  # noqa: D102

    @property
    def message(self) -> str: ...  # noqa: D102


#: Tells whether the pod is alive. An ``(alive, exit_status)`` tuple is accepted too.
StatusProbe = Callable[[], "PodState | tuple[bool, int | None]"]


@dataclass(frozen=True)
class _State:
    alive: bool
    exit_status: int | None = None
    reason: str | None = None
    message: str = ""


def read_probe(probe: StatusProbe, pod: str) -> PodState | None:
    """Run ``probe``; None when it fails (a broken probe must not break the bridge)."""
    try:
        answer = probe()
    except Exception as exc:  # noqa: BLE001 - any failure of the caller's probe
        log.debug("status probe of pod %s failed: %s", pod, exc)
        return None
    if isinstance(answer, tuple):
        alive, exit_status = answer
        return _State(bool(alive), exit_status)
    return answer


#: What to tell of a pod that ended: the calls' state is lost, the next call starts one.
_AFTER = "its state is lost. The next .to() or %%kt starts a fresh pod"


def died_error(pod: str, state: PodState,
               said: tuple[str, float | None] | None = None) -> PodDiedError:
    """The error for calls in flight on a pod that ``state`` says has ended.

    ``said``: the ending the pod announced when it closed the connection (see
    :mod:`pod_runtime.protocol.ending`), used when ``state`` knows no reason.
    An ``OOMKilled`` state gives a :class:`PodOOMError` (``memory_limit`` and
    ``memory_peak`` attributes of the state, where it has them, become its figures).
    """
    status = state.exit_status
    if status is None:
        how = "exit status unknown"
    elif status < 0:
        how = f"killed by signal {-status}"
    else:
        how = f"exit status {status}"
    reason = getattr(state, "reason", None)
    detail = getattr(state, "message", "") or how
    if reason == "TornDown":  # stopped on purpose: no crash to report
        return PodDiedError(
            f"pod {pod!r} was {detail if detail.startswith('torn down') else 'torn down'} "
            "while calls were in flight; its state is lost. The next .to() or %%kt starts "
            "a fresh pod", pod=pod, exit_status=status, reason=reason)
    if reason == "OOMKilled":
        detail = detail.removeprefix("out of memory: ")
        return PodOOMError(
            f"pod {pod!r} ran out of memory ({detail}) and was killed while calls were in "
            f"flight; {_AFTER}. Ask for more memory, or retry with more: "
            "remote_fn.with_retry(on_oom=kt.grow(memory=2.0)) (%%kt --retry-oom)",
            pod=pod, exit_status=status, limit=getattr(state, "memory_limit", None),
            peak=getattr(state, "memory_peak", None))
    if reason is None and said is not None:
        reason, detail = said[0], ending.describe(*said)
    if reason in ending.REASONS:
        what = (f"was preempted: {detail}" if reason == ending.PREEMPTED
                else f"was stopped for idleness ({detail})")
        return PodDiedError(f"pod {pod!r} {what}; {_AFTER}", pod=pod, exit_status=status,
                            reason=reason)
    if reason and reason.lower() not in detail.lower():
        detail = f"{reason}: {detail}"
    return PodDiedError(
        f"pod {pod!r} died ({detail}) while calls were in flight; its state is lost. The "
        "next .to() or %%kt starts a fresh pod", pod=pod, exit_status=status, reason=reason)
