"""A test double of ``pynvml`` (nvidia-ml-py): NVML's calls, answered from a JSON file.

No GPU can be read here. A pod started with this folder first on its ``PYTHONPATH``
imports this module as ``pynvml``, so the pod's real GPU code (``pod_runtime.gpu``:
device selection by ``CUDA_VISIBLE_DEVICES``, the readings, the missing-figure paths)
runs unchanged against it. ``KT_TEST_NVML_DOUBLE`` names a JSON file, read at every
query: ``{"gpus": [{"uuid", "util", "used", "total", "power_mw", "temp"}, ...]}``; a
figure given as null raises ``NVMLError`` (NVML's "not supported"). Without the
variable, ``nvmlInit`` fails as it does on a machine without a driver.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    pass


def _gpus() -> list[dict[str, Any]]:
    path = os.environ.get("KT_TEST_NVML_DOUBLE")
    if not path:
        raise NVMLError("NVML Shared Library Not Found (test double without a file)")
    with open(path) as f:
        return list(json.load(f)["gpus"])


def _field(handle: int, key: str) -> Any:
    value = _gpus()[handle].get(key)
    if value is None:
        raise NVMLError("Not Supported")
    return value


def nvmlInit() -> None:
    _gpus()


def nvmlShutdown() -> None:
    return None


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_gpus()):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetHandleByUUID(uuid: str) -> int:
    for i, gpu in enumerate(_gpus()):
        if gpu.get("uuid") == uuid:
            return i
    raise NVMLError("Not Found")


def nvmlDeviceGetUtilizationRates(handle: int) -> Any:
    return SimpleNamespace(gpu=_field(handle, "util"), memory=0)


def nvmlDeviceGetMemoryInfo(handle: int) -> Any:
    used, total = _field(handle, "used"), _field(handle, "total")
    return SimpleNamespace(used=used, total=total, free=total - used)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return int(_field(handle, "power_mw"))


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    assert sensor == NVML_TEMPERATURE_GPU
    return int(_field(handle, "temp"))
