"""The bulk-data fast path: out-of-band buffers through shared-memory files.

When client and pod share a host (the local backend), a large buffer is written to a
file in ``/dev/shm`` by the sender (one kernel copy) and mapped by the receiver, which
unlinks it at once and hands the mapping to ``pickle.loads`` (no copy): a numpy array
that arrives this way is backed by the mapping and is writable.

Both ends must agree that this works: the client writes a probe file with a random
payload before connecting and names it in the upgrade; the pod reads it back and says
in WELCOME whether it matched. Containers with separate ``/dev/shm`` simply fall back
to inline buffers.

Files are mode 0600 and named ``kt-<pid>-<random>``; a receiver only opens names of
that shape, so a peer cannot point it at another file.
"""

from __future__ import annotations

import atexit
import mmap
import os
import re
import secrets
import threading
import time
from pathlib import Path

__all__ = [
    "SHM_DIR",
    "ShmWriter",
    "claim",
    "clear_spares",
    "map_claimed",
    "open_buffer",
    "probe_check",
    "probe_create",
    "shm_available",
    "sweep_dead_owners",
]

SHM_DIR = Path("/dev/shm")
_NAME = re.compile(r"^kt-\d+-[0-9a-f]{16,64}$")
_OWNER = re.compile(r"^kt-(\d+)-[0-9a-f]{16,64}$")
#: Seconds of slack when comparing a file's mtime with its owner's start time (the
#: boot time in /proc/stat has whole seconds).
_START_SLACK = 2.0
#: Buffers at least this large go through shared memory when it is available.
SHM_THRESHOLD = 256 * 1024
#: Buffers at least this large get a pre-allocated spare file for the next send.
SPARE_MIN = 8 * 1024 * 1024
#: Seconds an unused spare file is kept.
SPARE_IDLE = 30.0


def shm_available() -> bool:
    """Whether this host has a writable ``/dev/shm``."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def _new_name() -> str:
    return f"kt-{os.getpid()}-{secrets.token_hex(12)}"


class _Spares:
    """Pre-allocated shared-memory files, so that a large send is a plain copy.

    Most of the cost of writing 256 MiB to a new tmpfs file is the kernel allocating and
    zeroing its pages, not the copy. After a large send, a background thread prepares a
    spare file of that size; the next send of that size or smaller copies into it (then
    shrinks it to fit). At most one spare per size class is kept, and spares not used
    for :data:`SPARE_IDLE` seconds are removed, so the memory held idle is bounded.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: list[tuple[str, int, float]] = []  # name, size, created
        self._pending: set[int] = set()
        self._makers: set[threading.Thread] = set()
        self._closed = False
        atexit.register(self.clear)

    def take(self, size: int) -> tuple[str, int] | None:
        """A spare of at least ``size`` bytes, opened: (name, fd); None when there is none."""
        with self._lock:
            fits = [f for f in self._files if f[1] >= size]
            if not fits:
                return None
            best = min(fits, key=lambda f: f[1])
            self._files.remove(best)
        name = best[0]
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR)
        except OSError:
            return None
        if best[1] != size:
            os.ftruncate(fd, size)
        return name, fd

    def prepare(self, size: int) -> None:
        """Make a spare of ``size`` bytes in the background (once per size class)."""
        size_class = size.bit_length()
        with self._lock:
            if self._closed or size_class in self._pending or any(
                f[1].bit_length() == size_class for f in self._files
            ):
                return
            self._pending.add(size_class)
        maker = threading.Thread(target=self._make, args=(size, size_class),
                                 name="kt-shm-spare", daemon=True)
        with self._lock:
            self._makers.add(maker)
        maker.start()

    def _make(self, size: int, size_class: int) -> None:
        try:
            self._make_file(size, size_class)
        finally:
            with self._lock:
                self._makers.discard(threading.current_thread())

    def _make_file(self, size: int, size_class: int) -> None:
        name = _new_name()
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError:  # /dev/shm full: no spare, sends take the slow path
            (SHM_DIR / name).unlink(missing_ok=True)
            with self._lock:
                self._pending.discard(size_class)
            return
        with self._lock:
            self._pending.discard(size_class)
            if self._closed:  # cleared (the process is exiting) while this was made
                (SHM_DIR / name).unlink(missing_ok=True)
                return
            self._files.append((name, size, time.monotonic()))
        timer = threading.Timer(SPARE_IDLE, self._expire, args=(name,))
        timer.daemon = True
        timer.start()

    def _expire(self, name: str) -> None:
        with self._lock:
            before = len(self._files)
            self._files = [f for f in self._files if f[0] != name]
            gone = len(self._files) != before
        if gone:
            (SHM_DIR / name).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every spare, and make no more (at exit)."""
        with self._lock:
            self._closed = True
            files, self._files = self._files, []
            makers = list(self._makers)
        for maker in makers:  # one caught mid-way would leave its file behind an exit
            maker.join(timeout=5)
        for name, _, _ in files:
            (SHM_DIR / name).unlink(missing_ok=True)


_spares = _Spares()


def clear_spares() -> None:
    """Remove this process's spare files (before an exit that skips ``atexit``)."""
    _spares.clear()


class ShmWriter:
    """Writes buffers to shared-memory files and remembers which are not yet claimed.

    The receiver unlinks a file as soon as it opens it; :meth:`cleanup` removes those
    the receiver never opened (the connection dropped first).
    """

    def __init__(self, threshold: int = SHM_THRESHOLD) -> None:
        self.threshold = threshold
        self._pending: list[str] = []

    def place(self, buffers: list[memoryview]) -> list[str | None]:
        """Write each buffer at or above the threshold to a shared file; return the names."""
        names: list[str | None] = []
        for buf in buffers:
            if buf.nbytes < self.threshold:
                names.append(None)
                continue
            view = buf.cast("B") if buf.format != "B" else buf
            spare = _spares.take(view.nbytes) if view.nbytes >= SPARE_MIN else None
            if spare is not None:
                name, fd = spare
            else:
                name = _new_name()
                fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                written = 0
                while written < view.nbytes:
                    written += os.pwrite(fd, view[written:], written)
            except BaseException:
                os.close(fd)
                (SHM_DIR / name).unlink(missing_ok=True)
                raise
            os.close(fd)
            self._pending.append(name)
            names.append(name)
            if view.nbytes >= SPARE_MIN:
                _spares.prepare(view.nbytes)  # for the next send of this size
        if len(self._pending) > 256:
            self._pending = [n for n in self._pending if (SHM_DIR / n).exists()]
        return names

    def cleanup(self) -> None:
        """Remove files written by this writer that no receiver claimed."""
        for name in self._pending:
            (SHM_DIR / name).unlink(missing_ok=True)
        self._pending.clear()


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); None when it does not run.

    Raises:
        OSError: When the start time cannot be read (not Linux): the caller keeps files.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: alive
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 22 (starttime, in clock ticks after boot); the name field may hold spaces.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def sweep_dead_owners() -> int:
    """Remove the shared-memory files of processes that died without cleaning up.

    A client or pod killed with SIGKILL leaves its ``kt-<pid>-*`` files (buffers never
    claimed, spares) in ``/dev/shm``, which is memory. A file is removed when its owner
    pid no longer runs, or runs but started after the file was last written (the pid was
    reused). Files of live owners are never touched; files this user may not remove are
    skipped. Assumes that the processes sharing this ``/dev/shm`` share a pid namespace
    (true of the local backend; a cluster pod has a ``/dev/shm`` of its own).

    Returns:
        How many files were removed.
    """
    if not SHM_DIR.is_dir():
        return 0
    removed = 0
    starts: dict[int, float | None] = {}
    for entry in os.scandir(SHM_DIR):
        match = _OWNER.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            if pid not in starts:
                starts[pid] = _process_start(pid)
            started = starts[pid]
            if started is not None:
                st = entry.stat(follow_symlinks=False)
                if st.st_mtime >= started - _START_SLACK:
                    continue  # written by the process that runs now
            os.unlink(entry.path)
            removed += 1
        except (OSError, ValueError, IndexError, StopIteration):
            continue  # gone meanwhile, not ours to remove, or no /proc: keep it
    return removed


def claim(name: str) -> int:
    """Open a shared-memory file written by the peer and unlink it; returns the fd.

    Claiming is cheap and done as soon as a frame arrives, so that a sender cleaning up
    after a dropped connection cannot remove a buffer the receiver already holds.

    Raises:
        ValueError: When the name is not one this protocol produces.
        FileNotFoundError: When the file is gone (the sender cleaned up).
    """
    if not _NAME.match(name):
        raise ValueError(f"refusing shared-memory name {name!r}")
    path = SHM_DIR / name
    fd = os.open(path, os.O_RDWR)
    os.unlink(path)
    return fd


def map_claimed(fd: int, size: int) -> memoryview:
    """Map a claimed buffer (writable, no copy) and close its fd."""
    try:
        if size == 0:
            return memoryview(bytearray())
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return memoryview(mm)


def open_buffer(name: str, size: int) -> memoryview:
    """Claim and map in one step."""
    return map_claimed(claim(name), size)


def probe_create() -> tuple[str, str]:
    """Write a probe file; returns (name, secret payload) for the upgrade request."""
    name = _new_name()
    payload = secrets.token_hex(16)
    fd = os.open(SHM_DIR / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, payload.encode())
    finally:
        os.close(fd)
    return name, payload


def probe_check(name: str) -> str | None:
    """Read (and remove) a probe file named by the client; None when it is not here."""
    if not _NAME.match(name):
        return None
    path = SHM_DIR / name
    try:
        data = path.read_bytes()[:64]
        path.unlink(missing_ok=True)
    except OSError:
        return None
    return data.decode(errors="replace")
