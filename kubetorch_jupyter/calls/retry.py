"""Retry after out-of-memory with more memory: ``remote_fn.with_retry(on_oom=kt.grow(...))``.

::

    safe = kt.fn(train).to(compute).with_retry(on_oom=kt.grow(memory=2.0), max=3)
    safe(data)   # OOM at 512Mi: restart with 1Gi and call again (then 2Gi), saying so

When a call fails with :class:`~kubetorch_jupyter.PodOOMError`, the compute's memory
is grown and its pod started again through the core's restart policy
(:mod:`~kubetorch_jupyter.core.policy`): a pod of that name that came back meanwhile
and that other clients use is not restarted under them (``ComputeInUseError``). Each
step is a warning; the old pod's state (imports, globals, instances) is lost, as it
is with any pod that dies. ``%%kt --retry-oom`` does the same for a cell.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kernel_bridge import PodOOMError

from ..core import connections
from ..core.compute import Compute
from ..core.resources import format_bytes, format_measured, parse_memory
from ..exceptions import ConfigError
from ..warn import user_stacklevel

__all__ = ["Grow", "RetryingFn", "grow", "run_with_oom_retry"]

T = TypeVar("T")
_MI = 2**20


@dataclass(frozen=True)
class Grow:
    """How much more memory the next attempt gets (see :func:`grow`)."""

    factor: float
    max_memory: int | None = None

    def next_memory(self, current: int | None, error: PodOOMError) -> int:
        """The memory of the next attempt, in bytes (rounded up to a MiB).

        Raises:
            PodOOMError: ``error`` again, when the limit is not known (nothing to grow)
                or it is at ``max_memory`` already.
        """
        base = current or error.limit
        if base is None:
            raise error
        grown = math.ceil(base * self.factor / _MI) * _MI
        if self.max_memory is not None:
            if base >= self.max_memory:
                raise error
            grown = min(grown, self.max_memory)
        return grown


def grow(memory: float = 2.0, *, max_memory: str | int | None = None) -> Grow:
    """Grow a compute's memory by ``memory`` times on each out-of-memory retry.

    Args:
        memory: The factor (> 1): 2.0 doubles 512Mi to 1Gi, then 2Gi.
        max_memory: Never ask for more than this ("16Gi"); at it, the error is raised.

    Example:
        >>> kt.fn(train).to(compute).with_retry(on_oom=kt.grow(memory=2.0), max=3)
    """
    if isinstance(memory, bool) or not isinstance(memory, int | float) or not memory > 1:
        raise ConfigError(f"kt.grow(memory=...) is a factor above 1 (2.0 doubles), got "
                          f"{memory!r}")
    try:
        cap = parse_memory(max_memory)
    except ConfigError as exc:
        raise ConfigError(f"kt.grow(max_memory=...): {exc}") from None
    return Grow(float(memory), cap)


def _check_attempts(attempts: int) -> int:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigError(f"with_retry(max=...) is the number of attempts (1 or more), got "
                          f"{attempts!r}")
    return attempts


def restart_with_memory(compute: Compute, memory: int) -> None:
    """Start ``compute``'s pod again with ``memory`` (through the core's policy)."""
    connections.drop(compute.name, compute.backend_name)
    limit = compute.kubernetes.memory_limit
    if limit is not None and limit < memory:  # a cluster limit grows with the request
        compute.kubernetes = dataclasses.replace(compute.kubernetes, memory_limit=memory)
    compute.memory = memory
    compute._info = None
    compute.up()


def run_with_oom_retry(compute: Compute, attempt: Callable[[], T], on_oom: Grow,
                       attempts: int) -> T:
    """Run ``attempt()``; after each :class:`PodOOMError`, grow, restart and run it again.

    Raises:
        PodOOMError: The last attempt's, or when memory cannot grow further.
        ComputeInUseError: When the pod came back running another spec that other
            clients use (it is not restarted under them).
    """
    _check_attempts(attempts)
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except PodOOMError as exc:
            if number == attempts:
                raise
            grown = on_oom.next_memory(compute.memory, exc)
            peak = f", peak {format_measured(exc.peak)}" if exc.peak else ""
            limit = format_bytes(exc.limit or compute.memory)
            warnings.warn(
                f"pod {compute.name!r} ran out of memory (limit {limit}{peak}); restarting "
                f"with {format_bytes(grown)} (attempt {number + 1}/{attempts}); its state "
                "was lost", RuntimeWarning, stacklevel=user_stacklevel())
            restart_with_memory(compute, grown)
    raise AssertionError("unreachable")  # pragma: no cover


class RetryingFn(Generic[T]):
    """A remote function that is called again with more memory after out-of-memory.

    Made by :meth:`RemoteFn.with_retry <kubetorch_jupyter.RemoteFn.with_retry>`.
    """

    def __init__(self, remote: Any, on_oom: Grow, attempts: int) -> None:
        if not isinstance(on_oom, Grow):
            raise ConfigError(f"with_retry(on_oom=...) takes kt.grow(memory=2.0), got "
                              f"{type(on_oom).__name__}")
        self.remote = remote
        self.on_oom = on_oom
        self.attempts = _check_attempts(attempts)

    def __repr__(self) -> str:
        return f"<{self.remote!r} retried on OOM x{self.on_oom.factor:g}, {self.attempts} tries>"

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        """Call the function on the pod; on out-of-memory, grow the compute and call again."""
        result: T = run_with_oom_retry(self.remote.compute,
                                       lambda: self.remote(*args, **kwargs),
                                       self.on_oom, self.attempts)
        return result

    async def acall(self, *args: Any, **kwargs: Any) -> T:
        """:meth:`__call__` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.__call__, *args, **kwargs)
