"""Interrupts and cancels that must say what happened: a cancelled call, a pod stuck in C."""

from __future__ import annotations

import asyncio
import threading

import pytest
from kt_testing import timeout

import kubetorch_jupyter as kt


def block(tag: str) -> None:
    """Block (interruptibly: Python code) until a cancel stops it."""
    threading.Event().wait()


def block_too(tag: str) -> None:
    """Another function: the first call of each is cancelled before the pod caches it."""
    threading.Event().wait()


def test_cancel_then_result_raises_call_cancelled(compute: kt.Compute) -> None:
    handle = kt.fn(block).to(compute).submit("never")
    handle.cancel()
    with pytest.raises(kt.CallCancelledError, match="was cancelled") as info:
        handle.result(timeout(30))
    assert isinstance(info.value, Exception) and isinstance(info.value, kt.KtError)
    assert not isinstance(info.value, KeyboardInterrupt)
    assert info.value.pod == compute.name
    assert kt.fn(len).to(compute)([1, 2]) == 2  # the pod lives on


def test_cancel_then_await_raises_call_cancelled(compute: kt.Compute) -> None:
    async def main() -> None:
        handle = kt.fn(block_too).to(compute).submit("never")
        handle.cancel()
        with pytest.raises(kt.CallCancelledError):
            await asyncio.wait_for(handle.aresult(), timeout(30))

    asyncio.run(main())


def test_a_cancel_after_the_call_finished_returns_its_value(compute: kt.Compute) -> None:
    handle = kt.fn(len).to(compute).submit([1, 2, 3])
    assert handle.result(timeout(30)) == 3
    handle.cancel()
    assert handle.result(0) == 3
