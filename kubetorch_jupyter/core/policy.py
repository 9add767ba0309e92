"""What to do when a compute is asked for and a pod of that name may already run.

One decision for every backend (:func:`decide`):

- no pod runs (or it died): **start** one;
- the pod runs a spec that gives everything the request asks for: **reuse** it. A
  field the request leaves at its default asks for nothing, so ``kt.Compute(name="dev")``
  reuses whatever "dev" runs, with that pod's own spec;
- the request asks for something the pod does not have: **restart** it with the new
  spec when no other client is connected (with a warning listing the changes), else
  **refuse** with :class:`~kubetorch_jupyter.ComputeInUseError`, which names the
  difference and the ways out. A pod somebody is using is never restarted under them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..backends.base import PodInfo, PodStatus
from ..exceptions import ComputeInUseError
from .spec import ComputeSpec

__all__ = ["Decision", "Refuse", "Restart", "Reuse", "Start", "decide", "requested_changes",
           "running_spec"]


@dataclass(frozen=True)
class Start:
    """No pod runs: start one for ``spec``."""

    spec: ComputeSpec


@dataclass(frozen=True)
class Reuse:
    """Use the running pod as it is; ``spec`` is what it runs."""

    info: PodInfo
    spec: ComputeSpec


@dataclass(frozen=True)
class Restart:
    """Stop the running pod and start one for ``spec``; ``changes`` say what differs."""

    info: PodInfo
    spec: ComputeSpec
    changes: list[str]


@dataclass(frozen=True)
class Refuse:
    """Leave the pod alone: other clients use it. ``error`` says so and what to do."""

    info: PodInfo
    error: ComputeInUseError


Decision = Start | Reuse | Restart | Refuse


def running_spec(info: PodInfo) -> ComputeSpec:
    """The spec a running pod's record holds (only its name, for a record without one)."""
    try:
        return ComputeSpec.from_json(info.spec)
    except (ValueError, TypeError):
        return ComputeSpec(name=info.name, backend=info.backend)


def _asks(wanted: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
    return any(have.get(k) != v for k, v in wanted.items())


def requested_changes(running: ComputeSpec, wanted: ComputeSpec) -> bool:
    """Whether ``wanted`` asks for something ``running`` does not give.

    A field at its default (cpus, memory, ttl None; gpus 0; no image; no env) asks for
    nothing; a set one asks for exactly its value (memory: at least its value); env and
    kubernetes keys ask one by one (the pod may have more).
    """
    for name in ("cpus", "inactivity_ttl"):
        want = getattr(wanted, name)
        if want is not None and want != getattr(running, name):
            return True
    # Memory is a floor: a pod with more (one grown after running out of memory, see
    # calls/retry.py) serves a client that asks for less instead of being shrunk back.
    want_memory, have_memory = wanted.memory, running.memory
    if want_memory is not None and (have_memory is None or want_memory > have_memory):
        return True
    if wanted.gpus and wanted.gpus != running.gpus:
        return True
    empty = ComputeSpec(name=wanted.name).image
    if wanted.image != empty and wanted.image != running.image:
        return True
    return _asks(wanted.env, running.env) or _asks(wanted.kubernetes, running.kubernetes)


def decide(running: PodInfo | None, status: PodStatus | None, wanted: ComputeSpec,
           clients: int | Callable[[], int]) -> Decision:
    """Start, reuse, restart or refuse (see the module docstring).

    Args:
        running: The pod of that name, if one is recorded.
        status: Its status (None: not known, taken as not alive).
        wanted: The spec asked for.
        clients: How many other clients are connected to the running pod, or a function
            that finds out (called only when a restart is wanted: it costs a connection).
    """
    if running is None or status is None or not status.alive:
        return Start(wanted)
    have = running_spec(running)
    if running.spec_hash == wanted.spec_hash() or not requested_changes(have, wanted):
        return Reuse(running, have)
    changes = have.diff(replace(wanted, name=have.name)) or ["its record changed"]
    others = clients() if callable(clients) else clients
    if others <= 0:
        return Restart(running, wanted, changes)
    return Refuse(running, ComputeInUseError(wanted.name, changes, others))
