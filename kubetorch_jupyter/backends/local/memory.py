"""How a local pod's ``memory=`` is enforced, and what is known once it was killed for it.

Where this machine has a writable cgroup v2 hierarchy the kernel could do it (a child
cgroup per pod with ``memory.max``); the machines this runs on so far (containers,
sandboxes: ``/sys/fs/cgroup`` is cgroup v1 or read-only) have none, so a watchdog
process (:mod:`.memwatch`) does, the same way everywhere: it sums the resident memory
of the pod's session every 100 ms and SIGKILLs it past the limit, recording the limit
and the peak in ``<state_dir>/ended/<name>.oom.json`` first. :func:`oom_status` turns
that record into ``PodStatus("failed", "OOMKilled", "out of memory: limit 200Mi, peak
231Mi", ...)``, which the bridge raises as :class:`~kubetorch_jupyter.PodOOMError`.

A pod allocating faster than the watchdog samples can pass the limit by what it
allocates in 100 ms before it is killed: the limit is a limit on what it keeps, as a
container's is not quite. (A cgroup would be exact; see :func:`cgroup_v2_writable`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from ...core.resources import format_bytes, format_measured
from ..base import PodStatus
from .process import make_private_dir

__all__ = ["cgroup_v2_writable", "clear", "oom_status", "record_path", "start_watchdog"]

_SCRIPT = str(Path(__file__).with_name("memwatch.py"))


def cgroup_v2_writable(root: str = "/sys/fs/cgroup") -> bool:
    """Whether ``root`` is a cgroup v2 hierarchy this process may create children in."""
    return (os.path.exists(os.path.join(root, "cgroup.controllers"))
            and "memory" in _read(os.path.join(root, "cgroup.subtree_control"))
            and os.access(root, os.W_OK))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def record_path(state_dir: Path, name: str) -> Path:
    """Where the watchdog of pod ``name`` records that it killed it."""
    return state_dir / "ended" / f"{name}.oom.json"


def clear(state_dir: Path, name: str) -> None:
    """Forget an earlier pod's record (a new pod of that name starts)."""
    with contextlib.suppress(OSError):
        record_path(state_dir, name).unlink()


def start_watchdog(state_dir: Path, name: str, pid: int, limit: int) -> None:
    """Start the watchdog of pod ``pid`` (``limit`` bytes); it exits with the pod.

    It detaches (forks and its first process exits, reaped here), so it is no child of
    this process: it outlives it, as the pod does, and leaves no zombie behind.
    """
    make_private_dir(state_dir / "ended")
    subprocess.run(
        [sys.executable, "-S", _SCRIPT, str(pid), str(limit), str(record_path(state_dir, name))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, check=False)


def oom_status(state_dir: Path, name: str, pid: int | None,
               exit_status: int | None) -> PodStatus | None:
    """``OOMKilled`` when the watchdog killed pod process ``pid``; else None."""
    try:
        body = json.loads(record_path(state_dir, name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or pid is None or body.get("pid") != pid:
        return None
    limit, peak = int(body.get("limit") or 0), int(body.get("peak") or 0)
    return PodStatus("failed", "OOMKilled",
                     f"out of memory: limit {format_bytes(limit)}, peak {format_measured(peak)}",
                     exit_status if exit_status is not None else -9,
                     memory_limit=limit or None, memory_peak=peak or None)
