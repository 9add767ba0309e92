"""GPU discovery and allocation, with fake discovery (this machine has no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kubetorch_jupyter.backends.local import gpus
from kubetorch_jupyter.exceptions import ResourceUnavailableError


def fake(count: int):
    return lambda: [gpus.GPU(i, f"GPU-fake-{i}", "Fake GPU", 2**34) for i in range(count)]


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(gpus.FAKE_ENV, raising=False)


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_allocates_distinct_gpus_and_releases(tmp_path):
    assert gpus.allocate(tmp_path, "a", 1, discover=fake(3)) == [0]
    assert gpus.allocate(tmp_path, "b", 2, discover=fake(3)) == [1, 2]
    assert gpus.holders(tmp_path) == {0: "a", 1: "b", 2: "b"}
    gpus.release(tmp_path, "b")
    assert gpus.holders(tmp_path) == {0: "a"}
    assert gpus.allocate(tmp_path, "c", 2, discover=fake(3)) == [1, 2]


def test_reallocating_a_pod_frees_what_it_held(tmp_path):
    assert gpus.allocate(tmp_path, "a", 2, discover=fake(2)) == [0, 1]
    assert gpus.allocate(tmp_path, "a", 1, discover=fake(2)) == [0]
    assert gpus.allocate(tmp_path, "a", 0, discover=fake(2)) == []
    assert gpus.holders(tmp_path) == {}


def test_over_ask_names_the_holders(tmp_path):
    gpus.allocate(tmp_path, "llm", 1, discover=fake(1))
    with pytest.raises(ResourceUnavailableError) as err:
        gpus.allocate(tmp_path, "dev", 2, discover=fake(1))
    assert "asked for 2 GPUs; this machine has 1 (0 free: pod 'llm' holds GPU 0)" in str(err.value)
    assert "kt teardown" in str(err.value)
    assert (err.value.requested, err.value.available) == (2, 0)
    assert gpus.holders(tmp_path) == {0: "llm"}  # the failed ask reserved nothing


def test_over_ask_lists_every_holder(tmp_path):
    gpus.allocate(tmp_path, "a", 2, discover=fake(4))
    gpus.allocate(tmp_path, "b", 1, discover=fake(4))
    with pytest.raises(ResourceUnavailableError, match=r"this machine has 4 \(1 free: "
                       r"pod 'a' holds GPUs 0, 1; pod 'b' holds GPU 2\)"):
        gpus.allocate(tmp_path, "c", 2, discover=fake(4))


def test_no_gpus_at_all(tmp_path):
    with pytest.raises(ResourceUnavailableError, match="asked for 1 GPU; this machine has 0 GPUs"):
        gpus.allocate(tmp_path, "dev", 1, discover=fake(0))


def test_a_dead_holder_frees_its_gpus(tmp_path, dead_pid):
    gpus.allocate(tmp_path, "gone", 1, discover=fake(1), pid=dead_pid)
    assert gpus.holders(tmp_path) == {}
    assert gpus.allocate(tmp_path, "dev", 1, discover=fake(1)) == [0]


def test_assign_hands_the_reservation_to_the_pod(tmp_path, dead_pid):
    gpus.allocate(tmp_path, "dev", 1, discover=fake(1))
    gpus.assign(tmp_path, "dev", dead_pid)  # the pod's process, here already gone
    assert gpus.holders(tmp_path) == {}
    table = json.loads((tmp_path / "gpus.json").read_text())
    assert table == {}


def test_client_cuda_visible_devices_limits_the_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,GPU-fake-3")
    assert gpus.allocate(tmp_path, "a", 2, discover=fake(4)) == [1, 3]
    with pytest.raises(ResourceUnavailableError, match="CUDA_VISIBLE_DEVICES='1,GPU-fake-3'"):
        gpus.allocate(tmp_path, "b", 1, discover=fake(4))


def test_fake_env_variable(monkeypatch):
    monkeypatch.setenv(gpus.FAKE_ENV, "3")
    found = gpus.discover_gpus()
    assert [g.index for g in found] == [0, 1, 2]
    assert all(g.uuid.startswith("GPU-fake-") for g in found)


def test_parse_nvidia_smi():
    text = ("0, GPU-1c2d, NVIDIA H100 80GB HBM3, 81559 MiB\n"
            "1, GPU-3e4f, NVIDIA A10G, 23028 MiB\n"
            "\n")
    assert gpus.parse_nvidia_smi(text) == [
        gpus.GPU(0, "GPU-1c2d", "NVIDIA H100 80GB HBM3", 81559 * 2**20),
        gpus.GPU(1, "GPU-3e4f", "NVIDIA A10G", 23028 * 2**20),
    ]


def test_falls_back_to_a_fake_nvidia_smi(tmp_path, monkeypatch):
    if gpus._nvml_gpus() is not None:
        pytest.skip("NVML answers on this machine; the nvidia-smi fallback is not reached")
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho '0, GPU-fake-smi, Fake GPU (fake nvidia-smi), 1024 MiB'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    gpus._real_gpus.cache_clear()
    try:
        assert gpus.discover_gpus() == [gpus.GPU(0, "GPU-fake-smi", "Fake GPU (fake nvidia-smi)",
                                                 2**30)]
    finally:
        gpus._real_gpus.cache_clear()
