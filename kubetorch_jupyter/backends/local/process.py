"""Process and file helpers of the local backend (no state of their own)."""

from __future__ import annotations

import importlib.util
import os
import select
import site
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import psutil

from ...core.progress import progress_bar

__all__ = ["make_private_dir", "read_line", "source_root", "tail", "wait_gone"]


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) when missing; an existing directory is left as it is."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
    return path


def tail(path: Path, lines: int, offset: int = 0, end: int | None = None) -> str:
    """The last ``lines`` lines of ``path`` between bytes ``offset`` and ``end`` (EOF).

    Returns "" when the file is missing.
    """
    if not path.exists() or lines <= 0:
        return ""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END) if end is None else end
        data, size = b"", 8192
        while pos > offset and data.count(b"\n") <= lines:
            step = min(size, pos - offset)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            size *= 2
    kept = data.decode(errors="replace").splitlines()[-lines:]
    return "".join(line + "\n" for line in kept)


def _poll_in(fd: int, timeout: float) -> bool:
    """Whether ``fd`` became readable (or hung up) within ``timeout`` seconds.

    ``poll`` rather than ``select``: a notebook kernel may hold fds above FD_SETSIZE.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def read_line(fd: int, *, timeout: float, progress: bool = False, desc: str = "") -> bytes:
    """Read from ``fd`` until a newline or EOF; what was read (b"" when nothing was).

    With ``progress`` a spinner-like bar (``desc`` and the time elapsed) shows meanwhile.

    Raises:
        TimeoutError: When neither came within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    data = b""
    bar = progress_bar(enabled=progress, total=None, desc=desc, bar_format="{desc} {elapsed}",
                       leave=False)
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout:g}s")
            # with a bar, wake up now and then only to move its clock
            ready = _poll_in(fd, min(left, 0.5) if progress else left)
            bar.refresh()
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
    finally:
        bar.close()
    return data


def wait_gone(pid: int, timeout: float, child: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until ``pid`` has exited; True if it did within ``timeout`` seconds.

    A child of this process (``child``) is reaped. Any other process counts as gone once
    it has terminated, zombie or not: a pidfd becomes readable then, with no polling.
    """
    if child is not None:
        try:
            child.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfd (old kernel): psutil polls
        try:
            psutil.Process(pid).wait(timeout)
            return True
        except psutil.NoSuchProcess:
            return True
        except psutil.TimeoutExpired:
            return False
    try:
        return _poll_in(fd, timeout)
    finally:
        os.close(fd)


def source_root() -> str | None:
    """The directory holding ``pod_runtime`` when it is not an installed package.

    A pod started from another working directory needs it on ``PYTHONPATH``.
    """
    spec = importlib.util.find_spec("pod_runtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)
    installed = {str(Path(d).resolve()) for d in site.getsitepackages()}
    return None if root in installed else root


def probe(url: str, path: str) -> tuple[int, bytes]:
    """GET one of a pod's probe endpoints (they need no token): (status, body).

    ``url`` is the pod's websocket URL; the request goes to the same host and port.

    Raises:
        OSError: When the pod does not answer.
    """
    http = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback
    try:
        with opener.open(f"{http}{path}", timeout=1) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def follow(path: Path, f: BinaryIO, first: str, stop: threading.Event,
            ended: Callable[[], bool]) -> Iterator[str]:
    """``first``'s lines, then each line appended to ``f``, until ``stop`` or ``ended()``.

    A log the pod rotated (another file at ``path`` now) is followed into the new one,
    once the old one has been read to its end.
    """
    try:
        yield from first.splitlines(keepends=True)
        partial = b""
        while not stop.is_set():
            over = ended()  # before reading: what the pod wrote last is read after
            chunk = f.read(65536)
            if chunk:
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace") + "\n"
                continue
            if over:
                if partial:
                    yield partial.decode(errors="replace") + "\n"
                return
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino != os.fstat(f.fileno()).st_ino
                                   or st.st_size < f.tell()):  # rotated, or truncated
                f.close()
                f = open(path, "rb")  # noqa: SIM115
                continue
            stop.wait(0.25)  # a file has no "appended" event in the stdlib
    finally:
        f.close()
