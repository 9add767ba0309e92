"""Resources a machine can never give are refused with the figures; zero never parses."""

from __future__ import annotations

import os
import secrets

import psutil
import pytest

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.local.backend import LocalBackend


@pytest.mark.parametrize("memory", ["0", "0Gi", 0, "0.0000001Ki"])
def test_zero_memory_is_refused_when_parsed(memory: object) -> None:
    with pytest.raises(kt.ConfigError, match="memory must be positive"):
        kt.Compute(name="zero", memory=memory)  # type: ignore[arg-type]


def test_more_memory_or_cores_than_the_machine_has_is_refused_with_the_figures() -> None:
    total = psutil.virtual_memory().total
    cores = len(os.sched_getaffinity(0))
    backend = LocalBackend()
    name = f"big-{secrets.token_hex(3)}"
    too_much = kt.Compute(name=name, memory="100Ti")
    with pytest.raises(kt.ResourceUnavailableError,
                       match=rf"^memory=100Ti: this machine has {total / 2**30:.1f} GiB") as e:
        too_much.up()
    assert (e.value.requested, e.value.available) == (100 * 2**40, total)
    with pytest.raises(kt.ResourceUnavailableError,
                       match=rf"^cpus=1000: this machine has {cores} cores?; ask for at most"):
        kt.Compute(name=name, cpus="1000").up()
    assert backend.list() == []  # nothing was started
    kt.Compute(name=name, cpus=cores, memory=f"{total // 2**20 // 2}Mi").up()  # fits
    kt.Compute.from_name(name).teardown()
