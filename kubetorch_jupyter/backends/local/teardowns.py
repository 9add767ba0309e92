"""Who tore a pod down: a marker ``down()`` leaves, read by ``status()`` once the pod is gone.

A pod stopped on purpose (``kt teardown``, ``compute.teardown()``, another notebook's
``%kt teardown``) must not read as a crash ("exit status 0", "killed by SIGKILL") to the
clients whose calls it ends: ``<state_dir>/ended/<name>.json`` says which process stopped
which pod process, and :meth:`LocalBackend.status` reports it as
``PodStatus("gone", "TornDown", "torn down by kt teardown dev (pid 1234)")``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from .process import make_private_dir

__all__ = ["clear", "record", "who_tore_down"]


def _path(state_dir: Path, name: str) -> Path:
    return state_dir / "ended" / f"{name}.json"


def _this_process() -> str:
    """This process, as a person would name it: ``kt teardown dev``, ``a Jupyter kernel``."""
    argv = list(sys.argv) or ["python"]
    head = argv[0].replace(os.sep, "/")
    if head.endswith("kubetorch_jupyter/cli/__main__.py") or os.path.basename(head) == "kt":
        text = " ".join(["kt", *argv[1:]])
    elif "ipykernel" in head:
        return "a Jupyter kernel"
    else:
        text = " ".join([os.path.basename(head) or "python", *argv[1:]])
    return text if len(text) <= 60 else text[:57] + "..."


def record(state_dir: Path, name: str, pod_pid: int | None) -> None:
    """Note that this process is stopping pod process ``pod_pid`` of ``name``."""
    if pod_pid is None:
        return
    body = {"pid": pod_pid, "by": _this_process(), "by_pid": os.getpid()}
    with contextlib.suppress(OSError):
        make_private_dir(state_dir / "ended")
        _path(state_dir, name).write_text(json.dumps(body))


def who_tore_down(state_dir: Path, name: str, pod_pid: int | None) -> str | None:
    """"torn down by ... (pid N)" when pod process ``pod_pid`` was stopped on purpose."""
    try:
        body = json.loads(_path(state_dir, name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("pid") != pod_pid or pod_pid is None:
        return None
    return f"torn down by {body.get('by') or 'another process'} (pid {body.get('by_pid')})"


def clear(state_dir: Path, name: str) -> None:
    """Forget the marker of ``name`` (a new pod of that name starts)."""
    with contextlib.suppress(OSError):
        _path(state_dir, name).unlink()
