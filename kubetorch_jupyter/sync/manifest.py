"""The manifest of a project: every file that travels, with its content hash.

A :class:`Scanner` walks the project tree (see :mod:`._ignore` for what is left out)
and hashes files with SHA-256. It remembers each file's hash under the key
(size, mtime_ns, inode) and each directory's ignore decisions under the stat of the
ignore files above it, so that a walk of an unchanged tree costs one ``scandir`` per
directory and one ``stat`` per file, and no reads.

With change notification (:mod:`._watch`) it does better: no event, no walk at all;
events in a few directories, only those directories are listed again (a directory's
whole subtree when it is new or its ignore rules changed).

Timestamps are coarse (a kernel tick, a second on some filesystems): a file written
twice within one tick with the same size keeps its key. As git does with its index,
a hash taken within :data:`RACY_WINDOW_NS` of the file's mtime is not trusted; the
file is hashed again the next time its directory is listed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..warn import user_stacklevel
from .ignore import DEFAULT_RULES, NEVER_DIRS, SECRET_RULES, VENV_MARKERS, Rule, ignored, parse
from .watch import Watcher, trusted_filesystem

__all__ = ["RACY_WINDOW_NS", "Scan", "Scanner"]

#: A hash taken less than this long after the file's mtime is checked again.
RACY_WINDOW_NS = 2_000_000_000
_IGNORE_FILES = (".gitignore", ".ktignore")
_EXCLUDE = "\0exclude"
#: One manifest entry: (sha256 hex, size, mode 0o644, 0o755, 0o600 or 0o700).
Entry = tuple[str, int, int]


@dataclass
class Scan:
    """The result of one scan. Treat as read-only: later scans share unchanged parts.

    Attributes:
        files: Root-relative POSIX path -> (sha256, size, mode). A new dict whenever
            anything changed; the very same dict when nothing did.
        total: Sum of the sizes.
        too_large: (path, size) of files over the size limit (not in ``files``).
        truncated: The walk stopped at ``max_files``; ``files`` is incomplete.
        hashed: Files whose content was read this time (not served from the cache).
        secrets: Paths left out as secrets (``.env``, ``id_rsa``; a directory ends
            with ``/``), by the built-in rules or the project's own.
        links_out: Symbolic links that lead out of the project: never followed.
    """

    files: dict[str, Entry] = field(default_factory=dict)
    total: int = 0
    too_large: list[tuple[str, int]] = field(default_factory=list)
    truncated: bool = False
    hashed: int = 0
    secrets: list[str] = field(default_factory=list)
    links_out: list[str] = field(default_factory=list)


@dataclass
class _Dir:
    """One directory as last listed: its ignore state and what of it travels."""

    sig: tuple[object, ...]
    git: tuple[Rule, ...]
    kt: tuple[Rule, ...]
    rules: tuple[Rule, ...]
    decisions: dict[tuple[str, bool], bool] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)  # names of files listed in the manifest
    large: set[str] = field(default_factory=set)  # names of files over the size limit
    skipped: set[str] = field(default_factory=set)  # names left out as secrets or links out
    dirs: set[str] = field(default_factory=set)  # names of subdirectories walked


def hash_file(path: str) -> str:
    """SHA-256 of a file's content, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_rules(path: str, base: str) -> tuple[Rule, ...]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return tuple(parse(f, base))
    except OSError:
        return ()


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


class _Limit(Exception):
    """More files than ``max_files``."""


_warned_links: set[tuple[str, str]] = set()


def _warn_dir_link(root: str, rel: str) -> None:
    """Say once that a link to a directory is not followed (it would be silently missing)."""
    if (root, rel) in _warned_links:
        return
    _warned_links.add((root, rel))
    warnings.warn(
        f"code sync does not follow {rel!r}, a symbolic link to a directory: its files do "
        "not reach the pod. Make it a real directory of the project, or install what it "
        "holds with kt.Image().pip_install", RuntimeWarning, stacklevel=user_stacklevel())


def _warn_link_out(root: str, rel: str, target: str) -> None:
    """Say once that a link out of the project is not followed."""
    if (root, rel) in _warned_links:
        return
    _warned_links.add((root, rel))
    warnings.warn(
        f"code sync does not follow {rel!r}, a symbolic link out of the project (to "
        f"{target}): it does not reach the pod. Copy the file into the project if the pod "
        "needs it", RuntimeWarning, stacklevel=user_stacklevel())


def _mode(st_mode: int) -> int:
    """The mode a file travels with: executable or not, private (owner only) or not."""
    mode = 0o755 if st_mode & 0o111 else 0o644
    return mode & 0o700 if not st_mode & 0o077 else mode  # a 0600 .env stays private


class Scanner:
    """Builds manifests of one project tree, cheaply when little changed.

    With ``watch`` (Linux, local filesystems) the directories walked are watched with
    inotify (see :mod:`._watch`). Thread-safe: concurrent scans are serialised.

    Args:
        root: The project root.
        max_file_size: Files larger than this are reported in ``too_large``.
        max_files: The walk stops (``truncated``) after this many files.
        watch: Use change notification where it can be trusted.
        exclude: Project-relative directories that never travel, whatever the rules.
    """

    def __init__(self, root: Path, *, max_file_size: int, max_files: int,
                 watch: bool = True, exclude: frozenset[str] = frozenset()) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        #: Project-relative directories that never travel (kt's own state, say).
        self._exclude = exclude
        self.max_file_size = max_file_size
        self.max_files = max_files
        self._hashes: dict[str, tuple[tuple[int, int, int], str, int]] = {}
        self._dirs: dict[str, _Dir] = {}
        self._lock = threading.Lock()
        self._last: Scan | None = None
        self._large: dict[str, int] = {}
        self._real = os.path.realpath(self._root)
        #: Root-relative path -> "secret" or "link": left out, named in the report.
        self._skipped: dict[str, str] = {}
        self._watcher: Watcher | None = None
        if watch and trusted_filesystem(self._root):
            try:
                self._watcher = Watcher(self._relevant)
            except OSError:
                self._watcher = None
        #: Full walks and directory listings done (for tests and benchmarks).
        self.walks = 0
        self.listings = 0

    @property
    def watching(self) -> bool:
        """Whether scans are answered from change notification."""
        return self._watcher is not None and not self._watcher.broken

    def close(self) -> None:
        """Stop watching the tree; later scans walk it."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self._last = None

    def quiet_since(self, scan: Scan) -> bool:
        """Whether nothing can have changed since ``scan``: watched, no event pending.

        The cheapest check there is (no syscall that gives up the GIL); False whenever
        it cannot be sure, and then :meth:`scan` finds out.
        """
        with self._lock:
            watcher, last = self._watcher, self._last
            return (watcher is not None and not watcher.broken and last is not None
                    and last.files is scan.files and watcher.quiet())

    def scan(self) -> Scan:
        """The manifest now: from events if watching, else by walking the tree."""
        with self._lock:
            watcher, last = self._watcher, self._last
            if watcher is not None and last is not None:
                dirty = watcher.poll()
                if dirty is not None and not dirty:
                    return replace(last, hashed=0)  # the same files dict: nothing moved
                if dirty is not None and not last.truncated:
                    out = self._update(last, dirty)
                    if out is not None:
                        self._last = out if not watcher.broken else None
                        return out
            out = self._full()
            self._last = out if watcher is not None and not watcher.broken else None
            return out

    # ------------------------------------------------------------ ignore state
    def _relevant(self, directory: str, name: str, is_dir: bool) -> bool:
        """Whether an event for ``directory/name`` may change the manifest."""
        if is_dir and name in NEVER_DIRS:
            return False
        rel = self._rel(directory)
        if is_dir and rel is not None and _join(rel, name) in self._exclude:
            return False
        state = self._dirs.get(rel) if rel is not None else None
        return state is None or not state.decisions.get((name, is_dir), False)

    def _rel(self, directory: str) -> str | None:
        if directory == self._root:
            return ""
        if directory.startswith(self._root + os.sep):
            return directory[len(self._root) + 1:].replace(os.sep, "/")
        return None

    def _root_rules(self) -> tuple[tuple[object, ...], tuple[Rule, ...]]:
        info = os.path.join(self._root, ".git", "info")
        if self._watcher is not None and os.path.isdir(info):
            self._watcher.watch(info, whole=True)
        exclude = os.path.join(info, "exclude")
        try:
            st = os.stat(exclude)
        except OSError:
            return (), ()
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._dirs.get(_EXCLUDE)
        if cached is None or cached.sig != sig:
            cached = _Dir(sig, _read_rules(exclude, ""), (), ())
            self._dirs[_EXCLUDE] = cached
        return sig, cached.git

    def _state(self, rel: str, entries: dict[str, os.DirEntry[str]]) -> _Dir:
        """The ignore state of a directory, from its parent's and its own ignore files."""
        if rel:
            parent = self._dirs[rel.rpartition("/")[0]]
            parent_sig: tuple[object, ...] = parent.sig
            git, kt = parent.git, parent.kt
        else:
            root_sig, git = self._root_rules()
            parent_sig, kt = (root_sig,), ()
        own: list[object] = []
        for name in _IGNORE_FILES:
            entry = entries.get(name)
            if entry is not None:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                own.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        sig = (parent_sig, tuple(own))
        cached = self._dirs.get(rel)
        if cached is not None and cached.sig == sig:
            return cached
        if ".gitignore" in entries:
            git = git + _read_rules(entries[".gitignore"].path, rel)
        if ".ktignore" in entries:
            kt = kt + _read_rules(entries[".ktignore"].path, rel)
        return _Dir(sig, git, kt, DEFAULT_RULES + git + kt)

    # ----------------------------------------------------------------- walking
    def _full(self) -> Scan:
        """Walk the whole tree."""
        self.walks += 1
        files: dict[str, Entry] = {}
        self._large, self._skipped = {}, {}
        out = Scan(files)
        old_dirs, self._dirs = self._dirs, {k: v for k, v in self._dirs.items()
                                            if k == _EXCLUDE}
        try:
            self._walk("", files, out, old_dirs)
        except _Limit:
            out.truncated = True
            return out
        self._finish(out)
        if len(self._hashes) > len(files) + 64:
            self._hashes = {k: v for k, v in self._hashes.items() if k in files}
        return out

    def _walk(self, top: str, files: dict[str, Entry], out: Scan,
              old_dirs: dict[str, _Dir] | None = None) -> None:
        """List ``top`` and every directory below it that travels."""
        stack = [top]
        while stack:
            rel = stack.pop()
            state = self._list(rel, files, out, old_dirs)
            if state is not None:
                stack.extend(_join(rel, d) for d in state.dirs)

    def _list(self, rel: str, files: dict[str, Entry], out: Scan,
              old_dirs: dict[str, _Dir] | None = None) -> _Dir | None:
        """List one directory into ``files``; returns its state (None: it does not travel)."""
        self.listings += 1
        path = os.path.join(self._root, rel) if rel else self._root
        if self._watcher is not None:
            self._watcher.watch(path)  # before listing it: no change can slip between
        try:
            with os.scandir(path) as it:
                entries = {e.name: e for e in it}
        except OSError:
            return None  # unreadable or gone: nothing of it travels
        if rel and any(m in entries for m in VENV_MARKERS):
            return None
        if old_dirs is not None and rel in old_dirs:
            self._dirs[rel] = old_dirs[rel]  # reuse cached ignore decisions if still valid
        state = self._state(rel, entries)
        state.files, state.large, state.dirs, state.skipped = set(), set(), set(), set()
        self._dirs[rel] = state
        decisions, rules, hashes = state.decisions, state.rules, self._hashes
        for name, entry in entries.items():
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and name in NEVER_DIRS:
                continue
            child = _join(rel, name)
            if is_dir and child in self._exclude:
                continue
            skip = decisions.get((name, is_dir))
            if skip is None:
                skip = decisions[(name, is_dir)] = ignored(rules, child, name, is_dir)
            if skip:
                if ignored(SECRET_RULES, child, name, is_dir):
                    self._skip(state, rel, name, "secret", is_dir)
                continue
            if is_dir:
                state.dirs.add(name)
                continue
            try:
                st = entry.stat()  # follows a symlink to a file: its content travels
            except OSError:
                continue  # a dangling link, or gone since the listing
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISDIR(st.st_mode):
                    _warn_dir_link(self._root, child)
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                inside = target.startswith(self._real + os.sep)
                if not inside:  # never out of the project: /etc/passwd stays home
                    self._skip(state, rel, name, "link", False)
                    _warn_link_out(self._root, child, target)
                    continue
                # a link inside travels as the file it names, unless that is a secret
                target_rel = target[len(self._real) + 1:].replace(os.sep, "/")
                if ignored(SECRET_RULES, target_rel, os.path.basename(target), False):
                    self._skip(state, rel, name, "secret", False)
                    continue
                if self._watcher is not None:
                    self._watcher.watch(os.path.dirname(target), whole=True)
            size = st.st_size
            if size > self.max_file_size:
                state.large.add(name)
                self._large[child] = size
                continue
            key = (size, st.st_mtime_ns, st.st_ino)
            cached = hashes.get(child)
            if cached is not None and cached[0] == key and (
                    st.st_mtime_ns < cached[2] - RACY_WINDOW_NS):
                sha = cached[1]
            else:
                hashed_at = time.time_ns()
                try:
                    sha = hash_file(entry.path)
                except OSError:
                    continue
                hashes[child] = (key, sha, hashed_at)
                out.hashed += 1
            files[child] = (sha, size, _mode(st.st_mode))
            state.files.add(name)
            if len(files) > self.max_files:
                raise _Limit
        return state

    def _skip(self, state: _Dir, rel: str, name: str, why: str, is_dir: bool) -> None:
        state.skipped.add(name)
        self._skipped[_join(rel, name) + ("/" if is_dir else "")] = why

    def _unskip(self, rel: str, state: _Dir) -> None:
        for name in state.skipped:
            self._skipped.pop(_join(rel, name), None)
            self._skipped.pop(_join(rel, name) + "/", None)

    def _forget(self, rel: str, files: dict[str, Entry]) -> None:
        """Drop a directory and everything below it from ``files`` and the listings."""
        stack = [rel]
        while stack:
            cur = stack.pop()
            state = self._dirs.pop(cur, None)
            if state is None:
                continue
            for name in state.files:
                files.pop(_join(cur, name), None)
            for name in state.large:
                self._large.pop(_join(cur, name), None)
            self._unskip(cur, state)
            stack.extend(_join(cur, d) for d in state.dirs)

    def _update(self, last: Scan, dirty: set[str]) -> Scan | None:
        """List again the directories with events; None when a full walk is needed."""
        rels = set()
        for directory in dirty:
            rel = self._rel(directory)
            if rel is None:
                return None  # a symlink target's directory, .git/info: walk everything
            rels.add(rel)
        files = dict(last.files)
        out = Scan(files)
        done: list[str] = []
        try:
            for rel in sorted(rels, key=lambda r: (r.count("/"), r) if r else (-1, r)):
                if any(rel == d or rel.startswith(d + "/") for d in done):
                    continue  # inside a subtree walked again already
                old = self._dirs.get(rel)
                if old is None:
                    continue  # not part of the manifest (its parent's listing decides)
                before = (set(old.files), set(old.large), set(old.dirs), old.sig)
                for name in old.files:
                    files.pop(_join(rel, name), None)
                for name in old.large:
                    self._large.pop(_join(rel, name), None)
                self._unskip(rel, old)
                state = self._list(rel, files, out)
                if state is None:
                    self._dirs[rel] = old
                    self._forget(rel, files)
                    self._drop_from_parent(rel)
                    done.append(rel)
                    continue
                if state.sig != before[3]:  # its ignore rules changed: all below too
                    for name in before[2]:
                        self._forget(_join(rel, name), files)
                    self._walk_children(rel, state, files, out)
                    done.append(rel)
                    continue
                for name in before[2] - state.dirs:
                    self._forget(_join(rel, name), files)
                for name in state.dirs - before[2]:
                    self._walk(_join(rel, name), files, out)
        except _Limit:
            return None
        self._finish(out)
        if out.files == last.files and out.too_large == last.too_large:
            out.files = last.files  # nothing moved: keep the very same dict
        return out

    def _walk_children(self, rel: str, state: _Dir, files: dict[str, Entry], out: Scan
                       ) -> None:
        for name in state.dirs:
            self._walk(_join(rel, name), files, out)

    def _drop_from_parent(self, rel: str) -> None:
        if not rel:
            return
        parent, _, name = rel.rpartition("/")
        state = self._dirs.get(parent)
        if state is not None:
            state.dirs.discard(name)

    def _finish(self, out: Scan) -> None:
        out.total = sum(e[1] for e in out.files.values())
        out.too_large = sorted(self._large.items())
        out.secrets = sorted(k for k, v in self._skipped.items() if v == "secret")
        out.links_out = sorted(k for k, v in self._skipped.items() if v == "link")
