"""GPUs of this machine, and which local pod holds which.

Discovery asks NVML (the ``pynvml`` module of the optional ``nvidia-ml-py`` package),
then ``nvidia-smi``, and finds none when neither answers. Indices are NVML's (PCI bus
order); the local backend starts GPU pods with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that
``CUDA_VISIBLE_DEVICES`` means the same GPUs to CUDA.

Allocations live in ``<state_dir>/gpus.json`` (``{"0": {"pod": "llm", "pid": 123}}``),
read and written under an ``flock`` on ``<state_dir>/gpus.lock``, so pods started by
different processes never share a GPU. An entry whose process is gone is free again.

For tests without GPUs, ``KT_FAKE_GPUS=N`` makes discovery report N fake GPUs, and every
function here takes the discovery function as a parameter.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import psutil

from ...exceptions import ResourceUnavailableError

__all__ = [
    "GPU",
    "Discover",
    "allocate",
    "assign",
    "discover_gpus",
    "holders",
    "parse_nvidia_smi",
    "release",
]

FAKE_ENV = "KT_FAKE_GPUS"


@dataclass(frozen=True)
class GPU:
    """One GPU as discovery reports it.

    Attributes:
        index: NVML / nvidia-smi index (PCI bus order).
        uuid: ``GPU-...`` identifier.
        name: Model name, e.g. ``NVIDIA H100 80GB HBM3``.
        memory_total: Bytes of GPU memory, if known.
    """

    index: int
    uuid: str
    name: str
    memory_total: int | None = None


Discover = Callable[[], list[GPU]]


class _Holder(TypedDict):
    """An entry of ``gpus.json``: the pod holding a GPU, and the process that counts."""

    pod: str
    pid: int


def _fake_gpus(count: int) -> list[GPU]:
    return [GPU(i, f"GPU-fake-{i:04d}", "Fake GPU (KT_FAKE_GPUS)", 16 * 2**30)
            for i in range(count)]


def _nvml_gpus() -> list[GPU] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            out.append(GPU(
                i,
                uuid.decode() if isinstance(uuid, bytes) else uuid,
                name.decode() if isinstance(name, bytes) else name,
                int(memory),
            ))
        return out
    except (pynvml.NVMLError, OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "b": 1}


def parse_nvidia_smi(text: str) -> list[GPU]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader``."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        memory = None
        m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", parts[3])
        if m:
            memory = int(m.group(1)) * _UNITS.get(m.group(2).lower() or "mib", 2**20)
        out.append(GPU(int(parts[0]), parts[1], parts[2], memory))
    return out


def _nvidia_smi_gpus() -> list[GPU] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _real_gpus() -> tuple[GPU, ...]:
    found = _nvml_gpus()
    if found is None:
        found = _nvidia_smi_gpus()
    return tuple(found or ())


def discover_gpus() -> list[GPU]:
    """The GPUs of this machine: NVML, else ``nvidia-smi``, else none.

    ``KT_FAKE_GPUS=N`` (tests only) reports N fake GPUs instead. The real answer is
    cached for the life of the process.
    """
    fake = os.environ.get(FAKE_ENV, "").strip()
    if fake:
        return _fake_gpus(int(fake))
    return list(_real_gpus())


def _usable(gpus: list[GPU]) -> tuple[list[GPU], str]:
    """The GPUs kt may hand out: those this process's CUDA_VISIBLE_DEVICES allows."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus, ""
    allowed = {v.strip() for v in visible.split(",") if v.strip()}
    usable = [g for g in gpus if str(g.index) in allowed or g.uuid in allowed]
    note = f" (CUDA_VISIBLE_DEVICES={visible!r} in this process limits kt to those)"
    return usable, note if len(usable) != len(gpus) else ""


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def _table(state_dir: Path) -> Iterator[dict[str, _Holder]]:
    """The allocation table, locked; changes made to it are written back atomically."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / "gpus.json"
    with open(state_dir / "gpus.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            table = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            table = {}
        live = {k: v for k, v in table.items() if _pid_alive(int(v.get("pid", 0)))}
        before = json.dumps(table, sort_keys=True)
        yield live
        if json.dumps(live, sort_keys=True) != before:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(live, indent=1, sort_keys=True))
            os.replace(tmp, path)


def _describe_holders(table: dict[str, _Holder]) -> str:
    by_pod: dict[str, list[int]] = {}
    for index, entry in table.items():
        by_pod.setdefault(str(entry["pod"]), []).append(int(index))
    return "; ".join(
        f"pod {pod!r} holds GPU{'s' if len(idx) > 1 else ''} {', '.join(map(str, sorted(idx)))}"
        for pod, idx in sorted(by_pod.items())
    )


def allocate(state_dir: str | Path, pod: str, count: int, *,
             discover: Discover = discover_gpus, pid: int | None = None,
             dry_run: bool = False) -> list[int]:
    """Reserve ``count`` free GPUs for ``pod`` and return their indices.

    Whatever ``pod`` held before is released first. Until :func:`assign` records the
    pod's own pid, the reservation belongs to ``pid`` (default: this process). With
    ``dry_run`` nothing is recorded: it only says whether (and which) GPUs would be
    given, so a pod is not stopped for a restart that cannot happen.

    Raises:
        ResourceUnavailableError: When fewer than ``count`` GPUs are free; the message
            says how many the machine has and which pods hold the busy ones.
    """
    if count <= 0:
        if not dry_run:
            release(state_dir, pod)
        return []
    gpus, note = _usable(discover())
    with _table(Path(state_dir)) as live:
        table = dict(live) if dry_run else live
        for index in [k for k, v in table.items() if v.get("pod") == pod]:
            del table[index]
        free = [g.index for g in gpus if str(g.index) not in table]
        if len(free) < count:
            held = {k: v for k, v in table.items() if int(k) in {g.index for g in gpus}}
            asked = f"asked for {count} GPU{'s' if count != 1 else ''}"
            if not gpus:
                msg = (f"{asked}; this machine has 0 GPUs{note} (neither NVML nor nvidia-smi "
                       "found one); use gpus=0 or the kubernetes backend")
            else:
                msg = f"{asked}; this machine has {len(gpus)}{note} ({len(free)} free"
                msg += f": {_describe_holders(held)})" if held else ")"
                if held:
                    msg += "; free some with `kt teardown NAME`"
            raise ResourceUnavailableError(msg, requested=count, available=len(free))
        chosen = free[:count]
        for gpu in chosen:
            table[str(gpu)] = {"pod": pod, "pid": pid or os.getpid()}
    return chosen


def assign(state_dir: str | Path, pod: str, pid: int) -> None:
    """Hand ``pod``'s reservation to its own process ``pid`` once it runs."""
    with _table(Path(state_dir)) as table:
        for entry in table.values():
            if entry.get("pod") == pod:
                entry["pid"] = pid


def release(state_dir: str | Path, pod: str) -> None:
    """Free every GPU ``pod`` holds (nothing happens when it holds none)."""
    if not (Path(state_dir) / "gpus.json").exists():
        return
    with _table(Path(state_dir)) as table:
        for index in [k for k, v in table.items() if v.get("pod") == pod]:
            del table[index]


def holders(state_dir: str | Path) -> dict[int, str]:
    """``{gpu index: pod name}`` for every GPU held by a live process."""
    if not (Path(state_dir) / "gpus.json").exists():
        return {}
    with _table(Path(state_dir)) as table:
        return {int(k): str(v["pod"]) for k, v in table.items()}
