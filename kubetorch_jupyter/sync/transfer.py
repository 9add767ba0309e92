"""Moving a project to one pod: what the pod acknowledged, packs of blobs, uploads.

The mechanics under :func:`.sync.sync`: per-connection state (the manifest a pod last
acknowledged, to send deltas against), reading files into packs, and sending packs
with a few in flight, through the bridge's out-of-band buffers (shared memory between
local processes, websocket fragments otherwise).
"""

from __future__ import annotations

import pickle
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_bridge import PodConnection
from pod_runtime import protocol
from pod_runtime.protocol import messages

from ..calls.display import event_sink
from ..core.progress import progress_bar
from .manifest import Scan

__all__ = ["PACK_SIZE", "PACK_WINDOW", "PROGRESS_MIN_BYTES", "Changed", "Job", "PodState",
           "call", "pack", "state_of", "states", "upload"]

#: Blobs are packed into messages of about this size.
PACK_SIZE = 8 * 1024 * 1024
#: Packs in flight at once.
PACK_WINDOW = 4
#: A progress bar shows when at least this much must travel.
PROGRESS_MIN_BYTES = 8 * 1024 * 1024


@dataclass
class PodState:
    """What a pod acknowledged last (per connection)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    boot_id: str | None = None
    project: str = ""
    files: dict[str, Any] | None = None
    shas: set[str] = field(default_factory=set)
    manifest_id: str | None = None
    paths: tuple[str, ...] = ()
    cwd: str = ""
    root: str = ""
    tree: str = ""
    error: Exception | None = None  # the ReloadError of the tree it has, raised again
    blocked: tuple[str, ...] = ()  # the modules that error holds back on the pod
    warned: Exception | None = None  # the error a call that does not need it warned of


_states: weakref.WeakKeyDictionary[PodConnection, PodState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def state_of(conn: PodConnection) -> PodState:
    """The sync state of a connection (made on first use)."""
    with _states_lock:
        state = _states.get(conn)
        if state is None:
            state = _states[conn] = PodState()
        return state


def states(conns: list[PodConnection]) -> list[PodState | None]:
    """The sync states of connections, None for one never synced."""
    with _states_lock:
        return [_states.get(c) for c in conns]


class Changed(Exception):
    """A file changed while it was being sent: scan again."""


@dataclass
class Job:
    """One sync of one project: the manifest and how the pods should place it."""

    root: Path
    project: str
    scan: Scan
    manifest_id: str
    paths: tuple[str, ...]
    cwd: str
    show: bool
    by_sha: dict[str, str] = field(default_factory=dict)

    def source(self, sha: str) -> str:
        """A project path whose content has this hash."""
        if not self.by_sha:
            self.by_sha = {e[0]: rel for rel, e in self.scan.files.items()}
        return self.by_sha[sha]

    def size(self, sha: str) -> int:
        """The size of the blob with this hash."""
        return int(self.scan.files[self.source(sha)][1])


def call(conn: PodConnection, msg: messages.SyncCall) -> Any:
    """Send one sync message to the pod and wait for its reply."""
    body, buffers = protocol.dumps(msg)
    return conn.call(body, buffers, label=f"sync {msg['op']}", sink=event_sink).result()


def pack(root: Path, items: list[tuple[str, str, int]]) -> tuple[list[list[Any]], bytearray]:
    """Read files into one buffer: ``items`` are (sha, path, size); (index, data)."""
    data = bytearray(sum(size for _, _, size in items))
    view = memoryview(data)
    index, offset = [], 0
    for sha, rel, size in items:
        try:
            with open(root / rel, "rb") as f:
                got = f.readinto(view[offset: offset + size])
        except OSError:
            raise Changed from None
        if got != size:
            raise Changed
        index.append([sha, offset, size])
        offset += size
    return index, data


def upload(conn: PodConnection, job: Job, missing: list[str]) -> tuple[int, int]:
    """Send the blobs the pod lacks in packs, a few in flight; returns (count, bytes)."""
    size = {s: job.size(s) for s in missing}
    total = sum(size.values())
    bar = progress_bar(enabled=job.show and total >= PROGRESS_MIN_BYTES, total=total,
                       unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                       desc=f"syncing {job.root.name} to {conn.name}")
    groups: list[list[str]] = [[]]
    filled = 0
    for sha in missing:
        if groups[-1] and filled + size[sha] > PACK_SIZE:
            groups.append([])
            filled = 0
        groups[-1].append(sha)
        filled += size[sha]
    in_flight: deque[tuple[Any, int]] = deque()

    def settle() -> None:
        handle, nbytes = in_flight.popleft()
        if handle.result()["bad"]:
            raise Changed
        bar.update(nbytes)

    try:
        for group in groups:
            index, data = pack(job.root, [(sha, job.source(sha), size[sha]) for sha in group])
            blobs: messages.SyncBlobsCall = {"kind": "sync", "op": "blobs", "index": index,
                                             "data": pickle.PickleBuffer(data)}
            body, buffers = protocol.dumps(blobs)
            in_flight.append((conn.call(body, buffers, label="sync blobs", sink=event_sink),
                              len(data)))
            if len(in_flight) >= PACK_WINDOW:
                settle()
        while in_flight:
            settle()
    finally:
        bar.close()
    return len(missing), total
