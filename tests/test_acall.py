"""``acall`` leaves the caller's event loop free while it pickles, connects and sends."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

import kubetorch_jupyter as kt


def nbytes(arrays: list) -> int:
    return sum(int(a.nbytes) for a in arrays)


class Sizer:
    def size(self, arrays: list) -> int:
        return sum(int(a.nbytes) for a in arrays)


async def longest_stall(work: object) -> tuple[object, float, int]:
    """Run ``work`` (a coroutine) beside a ticker; (its result, longest gap, ticks)."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker runs before the work starts
    try:
        result = await work  # type: ignore[misc]
    finally:
        done.set()
        await tick
    return result, max(gaps), len(gaps)


def test_acall_with_a_large_argument_does_not_stall_the_loop(monkeypatch) -> None:
    """Regression: submit (pickle, connect, sendall) ran on the loop: a 2 s stall."""
    np = pytest.importorskip("numpy")
    monkeypatch.setenv("KT_SHM", "0")  # the cluster path: every byte through the socket
    compute = kt.Compute(name=f"a-{secrets.token_hex(3)}")
    try:
        remote = kt.fn(nbytes).to(compute)
        # 256 MiB in 16 buffers: each is masked by one C call that holds the GIL, so
        # bounding each bounds what the worker thread can take from the loop at once
        big = [np.ones(16 * 2**20, dtype=np.uint8) for _ in range(16)]
        total = 256 * 2**20
        assert remote(big) == total  # warm: connected, function cached
        # the same-run baseline: how long a blocking submit holds its caller
        started = time.perf_counter()
        handle = remote.submit(big)
        blocking = time.perf_counter() - started
        assert handle.result() == total

        result, stall, ticks = asyncio.run(longest_stall(remote.acall(big)))
        assert result == total
        assert stall < blocking / 2, (stall, blocking, ticks)

        counter = kt.cls(Sizer).to(compute)
        result, stall, ticks = asyncio.run(longest_stall(counter.size.acall(big)))
        assert result == total
        assert stall < blocking / 2, (stall, blocking, ticks)
    finally:
        compute.teardown()
