"""Async functions and methods on a pod: the coroutine a call returns is awaited there.

``kt.fn(async def f)`` and the ``async def`` methods of a ``kt.cls`` instance run on the
pod as they would locally under ``await``: the coroutine runs to its end on an event
loop of the thread that took the call (one loop per thread, kept across its calls), with
the call's output captured as for any call. An interrupt stops it like any call.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

__all__ = ["resolve"]

_local = threading.local()


def resolve(value: Any) -> Any:
    """``value``, or what it returns when awaited if it is a coroutine."""
    if not inspect.iscoroutine(value):
        return value
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop.run_until_complete(value)
