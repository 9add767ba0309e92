"""The code-sync target: the pod's copy of a user's project, kept equal to a manifest.

A client sends a *manifest* (project path -> SHA-256, size, mode); the pod asks for
the blobs it lacks, writes the files of the tree atomically, removes files the manifest
no longer lists, puts the tree on ``sys.path`` (see :mod:`.treeimport`) and reloads the
changed modules (:mod:`.reload`). The pod never reads the client's files: it gets bytes
only through these calls, locally as in a cluster.

Layout under the pod's sync home (``KT_SYNC_DIR``; else ``<KT_STATE_DIR>/sync/<pod>``;
else ``~/.local/state/kubetorch-jupyter/sync/<pod>``)::

    trees/<project>/...       the materialised project
    trees/<project>.json      its manifest: path -> [sha, size, mode, mtime_ns]
    staging/*.pack            received blobs beyond the in-memory budget, until applied

Blobs are content-addressed: the pod finds a blob by its hash among the packs received
for the sync in progress and the files of its trees that are still as it wrote them
(same size and mtime; code on the pod may have edited one). So each file costs one
write, and a second client, or a pod restarted with the same home, re-sends nothing
the pod already holds.

Call kind ``sync``, by ``op``:

=======  ===================================================  ===========================
op       request                                              reply
=======  ===================================================  ===========================
blobs    ``index`` [[sha, offset, size]], ``data`` (a buffer)  ``{"stored": n, "bad": []}``
apply    ``project``, ``manifest_id``, ``base`` and            ``{"status": "rebase"}``,
         ``changed`` + ``deleted`` (a delta), or ``files``     ``{"status": "need",
         (all); ``paths`` (sys.path entries in the tree),      "missing": [...]}``, or
         ``cwd``, ``root`` (the client's path of the          ``{"status": "ok", ...}``
         project, which code objects show); optional
         ``blobs`` as in op blobs
=======  ===================================================  ===========================
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

from . import reload as _reload
from . import settings, treeimport
from .executor import Executor
from .protocol import messages
from .records import CallRecord
from .registry import register

__all__ = ["SyncTarget", "sync_home", "target"]

_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
#: Received blobs are kept in memory up to this many bytes, then staged on disk.
MEMORY_BUDGET = 256 * 1024 * 1024
#: Seconds between a change and the write of the project's record.
SAVE_DELAY = 0.5


def sync_home(pod_name: str) -> Path:
    """Where this pod keeps synced trees (read from the environment when first needed)."""
    explicit = settings.get("KT_SYNC_DIR")
    if explicit:
        return Path(explicit)
    state = settings.get("KT_STATE_DIR") or str(
        Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        / "kubetorch-jupyter")
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", pod_name) or "pod"
    return Path(state) / "sync" / safe


def _check_rel(path: str) -> str:
    """A manifest path must stay inside the tree: relative, normalised, no '..'."""
    if (not isinstance(path, str) or not path or path.startswith("/") or "\\" in path
            or "\0" in path or any(p in ("", ".", "..") for p in path.split("/"))):
        raise ValueError(f"refusing manifest path {path!r}: not a plain relative path")
    return path


def _file_mode(mode: int) -> int:
    """Executable or not, private to the owner or not; nothing else is taken from a peer."""
    out = 0o755 if mode & 0o111 else 0o644
    return out & 0o700 if not mode & 0o077 else out


def _entry(value: Any) -> list[Any]:
    """A manifest entry [sha, size, mode], checked."""
    sha, size, mode = value
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise ValueError(f"refusing blob name {sha!r}")
    return [sha, int(size), int(mode)]


def _unchanged(path: str, rec: list[Any]) -> bool:
    """Whether a tree file is still what the pod wrote (nobody on the pod edited it)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return len(rec) > 3 and st.st_size == rec[1] and st.st_mtime_ns == rec[3]


class _Project:
    """One project's tree on this pod and the manifest it was last made equal to."""

    def __init__(self, trees: Path, name: str) -> None:
        self.name = name
        self.tree = str(trees / name)
        self.record = trees / f"{name}.json"
        self.files: dict[str, list[Any]] = {}  # path -> [sha, size, mode, mtime_ns]
        self.manifest_id: str | None = None
        self.pending: set[str] = set()  # .py files written but not yet reloaded
        self.sys_paths: list[str] = []
        self.cwd: str | None = None
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(self.record.read_text())
            self.files = {str(k): list(v) for k, v in data["files"].items()}
            self.manifest_id = data.get("manifest_id")

    def save(self, manifest_id: str | None, files: dict[str, list[Any]]) -> None:
        """Write the record (a manifest as applied: never mutated after it is replaced)."""
        tmp = self.record.with_name(f".{self.record.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({"manifest_id": manifest_id, "files": files},
                                  separators=(",", ":")))
        os.replace(tmp, self.record)


class SyncTarget:
    """The pod's side of code sync: its project trees and the blobs on their way.

    Args:
        home: The directory holding ``trees/`` and ``staging/``.
        memory_budget: Received blobs kept in memory up to this many bytes.
    """

    def __init__(self, home: Path, *, memory_budget: int = MEMORY_BUDGET) -> None:
        self.home = Path(os.path.realpath(home))
        self.trees = self.home / "trees"
        self.staging = self.home / "staging"
        self.trees.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)  # a previous process's leftovers
        self.staging.mkdir(mode=0o700)
        self.memory_budget = memory_budget
        self._staged: dict[str, tuple[Any, int, int]] = {}  # sha -> (view | path, off, size)
        self._in_memory = 0
        self._projects: dict[str, _Project] = {}
        self._lock = threading.Lock()
        self._unsaved: set[_Project] = set()
        self._saver = threading.Condition()
        threading.Thread(target=self._save_loop, name="kt-sync-save", daemon=True).start()
        atexit.register(self.flush)
        for record in self.trees.glob("*.json"):
            if _PROJECT.match(record.stem):
                self.project(record.stem)

    # ------------------------------------------------------------------- blobs
    def store(self, index: list[Any], data: Any) -> dict[str, Any]:
        """Verify and stage the blobs of one pack; returns the count and bad hashes."""
        view = memoryview(data).cast("B") if data is not None else memoryview(b"")
        good, bad = [], []
        for sha, offset, size in index:
            if not isinstance(sha, str) or not _SHA.match(sha):
                raise ValueError(f"refusing blob name {sha!r}")
            chunk = view[offset: offset + size]
            if chunk.nbytes == size and hashlib.sha256(chunk).hexdigest() == sha:
                good.append((sha, offset, size))
            else:
                bad.append(sha)  # the file changed while it was read: the client rescans
        with self._lock:
            source: Any = view
            if self._in_memory + view.nbytes > self.memory_budget:
                path = self.staging / f"{secrets.token_hex(8)}.pack"
                with open(path, "wb") as f:
                    f.write(view)
                source = str(path)
            else:
                self._in_memory += view.nbytes
            for sha, offset, size in good:
                self._staged[sha] = (source, offset, size)
        return {"stored": len(good), "bad": bad}

    # ----------------------------------------------------------------- records
    def _save_loop(self) -> None:
        """Write project records in the background, at most every :data:`SAVE_DELAY`.

        A record only serves a pod restarted with the same home, and every entry is
        checked against the file before it is trusted, so one that lags is safe.
        """
        while True:
            with self._saver:
                while not self._unsaved:
                    self._saver.wait()
            time.sleep(SAVE_DELAY)
            self.flush()

    def flush(self) -> None:
        """Write the records of projects changed since their last save."""
        with self._saver:
            pending, self._unsaved = self._unsaved, set()
        for proj in pending:
            with self._lock:
                snapshot = (proj.manifest_id, proj.files)
            with contextlib.suppress(OSError):
                proj.save(*snapshot)

    def _find(self, proj: _Project, wanted: dict[str, list[Any]], writes: list[str],
              deleted: list[str]) -> tuple[dict[str, str], list[str]]:
        """Where each blob to write comes from: (tree files by hash, hashes missing).

        A blob found in a tree file that this very batch overwrites or deletes (a file
        renamed, two files swapping contents) is read into memory first.
        """
        needed = {wanted[rel][0] for rel in writes} - self._staged.keys()
        if not needed:
            return {}, []
        found: dict[str, str] = {}
        for proj in self._projects.values():
            for rel, rec in proj.files.items():
                sha = rec[0]
                if sha in needed and sha not in found:
                    path = os.path.join(proj.tree, rel)
                    if _unchanged(path, rec):
                        found[sha] = path
        doomed = {os.path.join(proj.tree, r) for r in (*writes, *deleted)}
        for sha, path in list(found.items()):
            if path in doomed:
                with open(path, "rb") as f:
                    self._staged[sha] = (memoryview(f.read()), 0, wanted_size(wanted, sha))
                del found[sha]
        return found, sorted(needed - found.keys() - self._staged.keys())

    def _unstage(self) -> None:
        self._staged.clear()
        self._in_memory = 0
        for pack in self.staging.glob("*.pack"):
            with contextlib.suppress(OSError):
                pack.unlink()

    # ------------------------------------------------------------------- apply
    def project(self, name: str) -> _Project:
        """The named project (loading its record from a previous pod process)."""
        if not _PROJECT.match(name or ""):
            raise ValueError(f"refusing project name {name!r}")
        proj = self._projects.get(name)
        if proj is None:
            proj = self._projects[name] = _Project(self.trees, name)
        return proj

    def apply(self, msg: messages.SyncApplyCall, executor: Executor | None = None
              ) -> dict[str, Any]:
        """Make a project's tree equal to the manifest in ``msg`` and reload what changed."""
        t0 = time.perf_counter()
        if msg.get("blobs"):
            bad = self.store(msg["blobs"]["index"], msg["blobs"]["data"])["bad"]
            if bad:
                return {"status": "need", "missing": [], "bad": bad}
        with self._lock:
            proj = self.project(msg["project"])
            full = msg.get("files") is not None
            if full:
                wanted = {_check_rel(k): _entry(v) for k, v in msg["files"].items()}
            else:
                if msg.get("base") is None or msg["base"] != proj.manifest_id:
                    return {"status": "rebase"}
                wanted = dict(proj.files)
                for rel in msg.get("deleted", ()):
                    wanted.pop(rel, None)
                wanted.update({_check_rel(k): _entry(v) for k, v in msg["changed"].items()})
            # A delta names what changed; a full manifest (a new client, a restarted pod)
            # is checked file by file against what the pod wrote before.
            writes = []
            for rel in wanted if full else msg["changed"]:
                entry, prev = wanted[rel], proj.files.get(rel)
                if prev is not None and prev[0] == entry[0] and prev[2] == entry[2] and (
                        not full or _unchanged(os.path.join(proj.tree, rel), prev)):
                    entry[3:] = prev[3:4]  # keep the mtime recorded when it was written
                else:
                    writes.append(rel)
            deleted = sorted(proj.files.keys() - wanted.keys())
            sources, missing = self._find(proj, wanted, writes, deleted)
            if missing:
                return {"status": "need", "missing": missing}
            # Writes first, so a file renamed on the client is copied before its old name
            # goes; except deletions in the way of a write (a file became a directory, or
            # a directory a file).
            first = _in_the_way(writes, deleted)
            self._delete(proj, first)
            self._write(proj, wanted, writes, sources)
            self._delete(proj, sorted(set(deleted) - set(first)))
            proj.files = wanted
            proj.manifest_id = msg["manifest_id"]
            if full:  # the large one: on disk at once, so a restart re-sends nothing
                with contextlib.suppress(OSError):
                    proj.save(proj.manifest_id, wanted)
            else:  # a delta's few files at worst are sent again after a restart
                with self._saver:
                    self._unsaved.add(proj)
                    self._saver.notify()
            self._unstage()
            treeimport.show_tree_as(proj.tree, msg.get("root"))
            self._place(proj, msg.get("paths") or ["."], msg.get("cwd") or ".")
            py_written = {r for r in writes if r.endswith(".py")} | proj.pending
            py_deleted = {r for r in deleted if r.endswith(".py")}
            outcome = _reload.reload_changed(proj.tree, py_written, py_deleted,
                                             shown=treeimport.shown_root(proj.tree))
            proj.pending = set(outcome.unapplied)  # applied once the failure is fixed
            if outcome.reloaded and executor is not None:
                executor.functions.clear()  # cached functions may hold old code
        return {
            "status": "ok",
            "tree": proj.tree,
            "written": writes,
            "deleted": deleted,
            "reloaded": outcome.reloaded,
            "removed": outcome.removed,
            "error": outcome.error,
            "seconds": time.perf_counter() - t0,
        }

    def _delete(self, proj: _Project, deleted: list[str]) -> None:
        """Remove files, and the directories their removal emptied."""
        for rel in deleted:
            path = os.path.join(proj.tree, rel)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            parent = os.path.dirname(path)
            while parent != proj.tree:
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)

    def _write(self, proj: _Project, wanted: dict[str, list[Any]], writes: list[str],
               sources: dict[str, str]) -> None:
        """Write each file atomically from a staged blob or a tree file with its content."""
        made: set[str] = set()
        packs: dict[str, int] = {}
        try:
            for rel in writes:
                entry = wanted[rel]
                sha, size, mode = entry[0], entry[1], entry[2]
                path = os.path.join(proj.tree, rel)
                parent = os.path.dirname(path)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                tmp = os.path.join(parent, f".{os.path.basename(rel)}.kt-{secrets.token_hex(4)}")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             _file_mode(mode))
                try:
                    staged = self._staged.get(sha)
                    if staged is None:
                        with open(sources[sha], "rb") as src:
                            _copy(src.fileno(), fd, size, 0)
                    elif isinstance(staged[0], str):
                        pack = packs.get(staged[0])
                        if pack is None:
                            pack = packs[staged[0]] = os.open(staged[0], os.O_RDONLY)
                        _copy(pack, fd, size, staged[1])
                    else:
                        view = staged[0][staged[1]: staged[1] + size]
                        while view.nbytes:
                            view = view[os.write(fd, view):]
                    entry[3:] = [os.fstat(fd).st_mtime_ns]
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                sources.setdefault(sha, path)
        finally:
            for pack in packs.values():
                os.close(pack)
        if writes:
            importlib.invalidate_caches()

    def _place(self, proj: _Project, paths: list[str], cwd: str) -> None:
        """Put the tree's import roots first on sys.path; enter the client's cwd."""
        tree = proj.tree
        wanted = [tree if p == "." else os.path.join(tree, _check_rel(p)) for p in paths]
        for entry in proj.sys_paths:
            if entry not in wanted:
                with contextlib.suppress(ValueError):
                    sys.path.remove(entry)
        for entry in reversed(wanted):
            if sys.path[:1] != [entry]:
                with contextlib.suppress(ValueError):
                    sys.path.remove(entry)
                sys.path.insert(0, entry)
        proj.sys_paths = wanted
        if cwd != proj.cwd:
            where = tree if cwd == "." else os.path.join(tree, _check_rel(cwd))
            with contextlib.suppress(OSError):
                os.chdir(where if os.path.isdir(where) else tree)
            proj.cwd = cwd


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _in_the_way(writes: list[str], deleted: list[str]) -> list[str]:
    """Deleted paths that are a directory of a written file, or below a written file."""
    if not writes or not deleted:
        return []
    written = set(writes)
    dirs = {a for rel in writes for a in _ancestors(rel)}
    return [d for d in deleted if d in dirs or any(a in written for a in _ancestors(d))]


def wanted_size(wanted: dict[str, list[Any]], sha: str) -> int:
    """The size of the blob ``sha`` as the manifest gives it."""
    return next(e[1] for e in wanted.values() if e[0] == sha)


def _copy(src: int, dst: int, size: int, offset: int) -> None:
    """Copy ``size`` bytes at ``offset`` of ``src`` to ``dst`` (in the kernel if it can)."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, offset + done)
        except OSError:  # not supported across these filesystems: through user space
            n = os.write(dst, os.pread(src, min(size - done, 1 << 20), offset + done))
        if n == 0:
            raise OSError(f"blob source ended {size - done} bytes early")
        done += n


_TARGETS: dict[str, SyncTarget] = {}
_TARGETS_LOCK = threading.Lock()


def target(pod_name: str) -> SyncTarget:
    """The process's sync target for ``pod_name`` (created on first use)."""
    with _TARGETS_LOCK:
        tgt = _TARGETS.get(pod_name)
        if tgt is None:
            tgt = _TARGETS[pod_name] = SyncTarget(sync_home(pod_name))
        return tgt


@register("sync")
def _run_sync(ex: Executor, body: dict[str, Any], record: CallRecord) -> Any:
    msg = cast(messages.SyncCall, body)
    op = msg.get("op")
    record.label = f"sync {op}"
    tgt = target(ex.pod_name)
    blobs = msg if msg["op"] == "blobs" else msg.get("blobs")
    if blobs and blobs.get("data") is not None:  # kt_sync_bytes_total
        ex.meter.synced(memoryview(blobs["data"]).nbytes)
    if msg["op"] == "blobs":
        return tgt.store(msg["index"], msg["data"])
    if msg["op"] == "apply":
        return tgt.apply(msg, ex)
    raise ValueError(f"unknown sync op {op!r}; is the pod older than the client?")
