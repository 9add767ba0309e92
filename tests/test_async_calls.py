"""``async def`` functions and methods run on the pod as they would locally under ``await``."""

from __future__ import annotations

import asyncio

import pytest

import kubetorch_jupyter as kt


async def fetch(x: int) -> int:
    await asyncio.sleep(0)
    print("fetched", x, flush=True)
    return x * 2


async def fails() -> None:
    await asyncio.sleep(0)
    raise ValueError("async boom")


class Client:
    def __init__(self) -> None:
        self.loop_ids: list[int] = []
        self.n = 0

    async def get(self, k: int) -> int:
        await asyncio.sleep(0)
        self.loop_ids.append(id(asyncio.get_running_loop()))
        self.n += k
        return self.n

    def loops(self) -> int:
        return len(set(self.loop_ids))


def test_an_async_function_is_awaited_on_the_pod(compute: kt.Compute) -> None:
    remote = kt.fn(fetch).to(compute)
    assert asyncio.run(remote(21)) == 42  # awaitable, as fetch(21) is
    assert remote.submit(5).result() == 10
    with pytest.raises(ValueError, match="async boom"):
        asyncio.run(kt.fn(fails).to(compute)())


def test_async_methods_are_awaited_and_keep_the_instances_state(compute: kt.Compute) -> None:
    client = kt.cls(Client).to(compute)

    async def twice() -> tuple[int, int]:
        return await client.get(1), await client.get(2)

    assert asyncio.run(twice()) == (1, 3)
    assert client.loops() >= 1  # a sync method of the same class: a plain value
