"""Shared fixtures: isolated state, real pod processes, a timeout scale for slow machines."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Multiply every wait in the tests by this on slow machines (KT_TEST_TIMEOUT_FACTOR).
TIMEOUT_FACTOR = float(os.environ.get("KT_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    """A wait scaled for this machine."""
    return seconds * TIMEOUT_FACTOR


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                    ) -> None:
    """Every test gets its own local-backend state dir and no progress bars.

    Module-scoped fixtures that start pods set their own state dir (see ``compute``).
    """
    if "KT_STATE_DIR" not in os.environ or not os.environ.get("KT_TEST_SHARED_STATE"):
        monkeypatch.setenv("KT_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    monkeypatch.setenv("KT_PROGRESS", "0")


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


@pytest.fixture(scope="module")
def raw_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawPod]:
    """One pod process per test module."""
    pod = start_raw_pod(tmp_path_factory.mktemp("rawpod"))
    yield pod
    pod.stop()


@pytest.fixture(scope="module")
def compute(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A warm local compute shared by one test module, torn down at its end."""
    import kubetorch_jupyter as kt

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KT_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        mp.setenv("KT_PROGRESS", "0")
        mp.setenv("KT_TEST_SHARED_STATE", "1")
        c = kt.Compute(name=f"t-{secrets.token_hex(3)}")
        c.up()
        try:
            yield c
        finally:
            c.teardown()
