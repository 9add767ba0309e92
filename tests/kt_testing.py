"""Helpers shared by the tests: real pod processes and a timeout scale for slow machines.

(Not named conftest: the notebooks folder has a conftest of its own, and test modules
import these by name.)
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: Multiply every wait in the tests by this on slow machines (KT_TEST_TIMEOUT_FACTOR).
TIMEOUT_FACTOR = float(os.environ.get("KT_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    """A wait scaled for this machine."""
    return seconds * TIMEOUT_FACTOR


@dataclass
class RawPod:
    """A pod runtime process started directly (no backend)."""

    proc: subprocess.Popen[bytes]
    port: int
    token: str
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_raw_pod(tmp: Path, *args: str, token: str | None = None) -> RawPod:
    """Start ``python -m pod_runtime`` on an ephemeral loopback port and wait until ready."""
    token = token or secrets.token_urlsafe(32)
    read_fd, write_fd = os.pipe()
    log = tmp / f"pod-{secrets.token_hex(4)}.log"
    env = dict(os.environ, KT_POD_TOKEN=token)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pod_runtime", "--ready-fd", str(write_fd), *args],
            env=env, pass_fds=[write_fd], stdout=out, stderr=subprocess.STDOUT,
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        line = ready.readline()
    if not line:
        proc.wait(timeout(10))
        raise RuntimeError(f"pod did not start: {log.read_text()}")
    return RawPod(proc, json.loads(line)["port"], token, log)


def fn_call(fn: object, *args: object) -> tuple[bytes, list[memoryview]]:
    """The pickled CALL body (and buffers) of ``fn(*args)``, its function included."""
    from kubetorch_jupyter.calls.serialize import dump_callable
    from pod_runtime import protocol

    digest, blob = dump_callable(fn)
    return protocol.dumps({"kind": "fn", "fn_id": digest, "fn_blob": blob, "args": args,
                           "kwargs": {}})
