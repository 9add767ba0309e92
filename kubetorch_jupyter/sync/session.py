"""Code sync: the project's files reach every pod of a compute, and edits reload there.

::

    from kubetorch_jupyter.sync import sync

    report = sync(compute)  # also done before every kt.fn / kt.cls call; %kt sync
    print(report)  # kt sync: proj -> pod 'dev': 1 file written, 1 blob (38 B) sent;
                   # reloaded mypkg.model, mypkg.train [6 ms]

The project root is the nearest directory upward from the working directory holding
``.git``, ``pyproject.toml`` or ``setup.py`` (the working directory when there is none).
What travels is decided by ``.gitignore`` and ``.ktignore`` (see :mod:`._ignore`);
``.git``, virtual environments and ``__pycache__`` never do, and a file over
:data:`MAX_FILE_SIZE` is refused with a message suggesting ``.ktignore``.

Each sync sends a manifest (path -> SHA-256, size, mode), as a delta against what the
pod acknowledged last time when it can. The pod asks for the blobs it lacks; they
travel packed, out of band (shared memory between local processes). The pod writes the
files, removes deleted ones and reloads the changed modules and their importers
(:mod:`pod_runtime.reload`). A check on an unchanged tree costs microseconds with
change notification, a ``stat`` per file without.

Once synced, a module of the project is pickled by reference (imported on the pod from
the synced tree) instead of by value, inside :func:`shipping_to` for that compute; see
:func:`synced_module`.

Errors::

    KtError
    └── SyncError                  the project could not be synced
        ├── SyncLimitError         a file (or the tree) is over a size or count limit
        └── ReloadError            an edit failed to import on the pod; old code serves
"""

from __future__ import annotations

import os
import pickle
import secrets
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kernel_bridge import PodConnection
from pod_runtime.protocol import messages

from .. import config
from ..exceptions import ReloadError, SyncError, SyncLimitError
from ..warn import user_stacklevel
from . import needs as _needs
from . import transfer as _transfer
from .manifest import Scan, Scanner
from .project import (
    find_project,
    find_project_root,
    import_paths,
    module_base,
    project_id,
    real,
    relative,
)
from .watch import getcwd

if TYPE_CHECKING:
    from ..core.compute import Compute

__all__ = [
    "MAX_FILE_SIZE",
    "PodSync",
    "ReloadError",
    "SyncError",
    "SyncLimitError",
    "SyncReport",
    "ensure",
    "find_project_root",
    "pod_connections",
    "shipping_key",
    "shipping_to",
    "sync",
    "synced_module",
]

#: Largest file that travels; larger ones must be listed in .ktignore.
MAX_FILE_SIZE = 50 * 1024 * 1024
#: Most files a project may hold (more suggests the wrong root, like a home directory).
MAX_FILES = 20_000
#: Most bytes a project may hold.
MAX_TOTAL = 2 * 1024**3
#: The same limits for a working directory with no project marker (a notebook in ~).
LOOSE_MAX_FILES = 5_000
LOOSE_MAX_TOTAL = 256 * 1024 * 1024
#: New blobs up to this size ride along with the manifest delta (one round trip).
EAGER_BYTES = 1024 * 1024


def _size(n: int) -> str:
    """Bytes for people: 38 B, 2 KiB, 50 MiB."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    return f"{size:.1f} GiB".replace(".0 ", " ")


@dataclass
class PodSync:
    """What one sync did on one pod.

    Attributes:
        pod: The pod's name.
        up_to_date: Nothing had changed since its last sync: no call was made.
        changed: Files written on the pod (added or modified).
        deleted: Files removed on the pod.
        blobs_sent: Blobs (file contents) sent; others the pod already had.
        bytes_sent: Their size.
        reloaded: Modules re-executed on the pod, in order.
        tree: Where the tree lives on the pod.
    """

    pod: str
    up_to_date: bool = False
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    blobs_sent: int = 0
    bytes_sent: int = 0
    reloaded: list[str] = field(default_factory=list)
    tree: str = ""


@dataclass
class SyncReport:
    """What :func:`sync` did: the project, and each pod's part.

    Attributes:
        root: The project root.
        files: Files in the project's manifest.
        bytes: Their total size.
        pods: One :class:`PodSync` per pod of the compute.
        hashed: Files read and hashed locally this time (the rest came from the cache).
        seconds: Wall time of the whole sync.
    """

    root: Path
    files: int
    bytes: int
    pods: list[PodSync]
    hashed: int = 0
    seconds: float = 0.0
    scan: Scan | None = field(default=None, repr=False, compare=False)
    max_files: int = field(default=0, repr=False, compare=False)

    @property
    def up_to_date(self) -> bool:
        """Whether every pod already had this tree."""
        return all(p.up_to_date for p in self.pods)

    @property
    def changed(self) -> list[str]:
        """Files written on any pod."""
        return sorted({c for p in self.pods for c in p.changed})

    @property
    def deleted(self) -> list[str]:
        """Files removed on any pod."""
        return sorted({d for p in self.pods for d in p.deleted})

    @property
    def blobs_sent(self) -> int:
        """Blobs sent, summed over the pods."""
        return sum(p.blobs_sent for p in self.pods)

    @property
    def bytes_sent(self) -> int:
        """Bytes of blobs sent, summed over the pods."""
        return sum(p.bytes_sent for p in self.pods)

    @property
    def reloaded(self) -> list[str]:
        """Modules reloaded on any pod."""
        seen: dict[str, None] = {}
        for p in self.pods:
            seen.update(dict.fromkeys(p.reloaded))
        return list(seen)

    def _left_out(self) -> str:
        """The note of what was left out on purpose: secrets, links out of the project."""
        notes = []
        for names, what in ((self.scan.secrets if self.scan else [], "as secrets"),
                            (self.scan.links_out if self.scan else [], "links out of it")):
            if names:
                shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more"
                                                if len(names) > 6 else "")
                notes.append(f"{what}: {shown}")
        if not notes:
            return ""
        return (f"\n  left out {'; '.join(notes)} (a '!name' line in .ktignore sends a "
                "secret on purpose)")

    def __str__(self) -> str:
        where = (f"pod '{self.pods[0].pod}'" if len(self.pods) == 1
                 else f"{len(self.pods)} pods")
        took = f"[{self.seconds * 1e3:.0f} ms]" + self._left_out()
        if self.up_to_date:
            return f"kt sync: {self.root.name} up to date on {where} ({self.files} files) {took}"
        parts = [f"{len(self.changed)} file{'s' * (len(self.changed) != 1)} written"]
        if self.deleted:
            parts.append(f"{len(self.deleted)} deleted")
        parts.append(f"{self.blobs_sent} blob{'s' * (self.blobs_sent != 1)} "
                     f"({_size(self.bytes_sent)}) sent")
        text = f"kt sync: {self.root.name} -> {where}: {', '.join(parts)}"
        if self.reloaded:
            text += f"; reloaded {', '.join(self.reloaded)}"
        return f"{text} {took}"


# ---------------------------------------------------------------- per pod
#: The pods being pickled for (set by :func:`shipping_to`), for :func:`synced_module`.
_shipping: ContextVar[tuple[_transfer.PodState, ...]] = ContextVar("kt_shipping", default=())


@contextmanager
def shipping_to(compute: Compute, conns: list[PodConnection] | None = None
                ) -> Iterator[None]:
    """Pickle for ``compute`` inside this block: its synced modules go by reference.

    Outside such a block (or for a compute never synced) every module of the user's
    own goes by value, which works on any pod. ``conns``: the compute's connections
    when the caller has them already (:func:`pod_connections`).
    """
    states = _transfer.states(conns if conns is not None else pod_connections(compute))
    token = _shipping.set(tuple(s for s in states if s is not None)
                          if all(s is not None for s in states) else ())
    try:
        yield
    finally:
        _shipping.reset(token)


def shipping_key() -> tuple[tuple[int, str | None], ...]:
    """What :func:`synced_module` decides from now: a pickle made under another is stale."""
    return tuple((id(s), s.manifest_id) for s in _shipping.get())


def synced_module(module: ModuleType) -> bool:
    """Whether ``module`` is importable from the synced tree on the pods pickled for.

    True inside :func:`shipping_to` when, on every pod of that compute, the module's
    file is part of the synced tree and the directory it was imported from is on the
    pod's ``sys.path``.
    """
    states = _shipping.get()
    path = getattr(module, "__file__", None)
    if not states or not isinstance(path, str) or module.__name__ == "__main__":
        return False
    path = real(os.path.abspath(path))
    base = module_base(module.__name__, path)
    if base is None:
        return False
    for state in states:
        rel = relative(state.root, path)
        if (rel is None or rel == "" or state.files is None or rel not in state.files
                or relative(state.root, base) not in state.paths):
            return False
    return True


def _sync_pod(conn: PodConnection, job: _transfer.Job) -> PodSync:
    """Bring one pod up to date: delta or full manifest, blobs it lacks, its reload."""
    state = _transfer.state_of(conn)
    with state.lock:
        files = job.scan.files
        boot = conn.welcome.get("boot_id")
        same = (state.boot_id == boot and state.project == job.project
                and state.files is not None)
        if (same and state.manifest_id == job.manifest_id and state.paths == job.paths
                and state.cwd == job.cwd):
            return PodSync(conn.name, up_to_date=True, tree=state.tree)
        result = PodSync(conn.name)
        msg: messages.SyncApplyCall = {
            "kind": "sync", "op": "apply", "project": job.project,
            "manifest_id": job.manifest_id, "paths": list(job.paths), "cwd": job.cwd,
            "root": str(job.root)}
        if same and state.files is not None:
            old = state.files
            changed = {k: v for k, v in files.items() if old.get(k) != v}
            msg["base"] = state.manifest_id
            msg["changed"] = changed
            msg["deleted"] = [k for k in old if k not in files]
            new = {v[0]: (v[0], rel, v[1]) for rel, v in changed.items()
                   if v[0] not in state.shas}
            if new and sum(item[2] for item in new.values()) <= EAGER_BYTES:
                index, data = _transfer.pack(job.root, list(new.values()))
                msg["blobs"] = {"index": index, "data": pickle.PickleBuffer(data)}
                result.blobs_sent += len(new)
                result.bytes_sent += len(data)
        else:
            msg["files"] = files
        for _ in range(8):
            reply = _transfer.call(conn, msg)
            msg.pop("blobs", None)
            if reply["status"] == "rebase":
                msg.pop("base", None)
                msg.pop("changed", None)
                msg.pop("deleted", None)
                msg["files"] = files
            elif reply["status"] == "need":
                if reply.get("bad"):
                    raise _transfer.Changed
                count, nbytes = _transfer.upload(conn, job, reply["missing"])
                result.blobs_sent += count
                result.bytes_sent += nbytes
            else:
                break
        else:
            raise SyncError(f"pod {conn.name!r} kept asking for blobs it was sent; "
                            "is another client syncing a different tree to it?")
        state.boot_id, state.project, state.files = boot, job.project, files
        state.shas = {e[0] for e in files.values()}
        state.manifest_id, state.paths, state.cwd = job.manifest_id, job.paths, job.cwd
        state.root, state.tree = str(job.root), reply["tree"]
        result.changed, result.deleted = reply["written"], reply["deleted"]
        result.reloaded, result.tree = reply["reloaded"], reply["tree"]
        if reply["reloaded"] or reply["removed"]:
            conn.known.clear()  # the pod dropped its cached functions
        err = reply.get("error")
        state.error = _reload_error(err, job.root, reply["tree"], conn.name) if err else None
        state.blocked = tuple(err.get("blocked") or (err.get("module"),)) if err else ()
        return result


def _blocked(err: dict[str, Any]) -> str:
    names = list(err.get("blocked") or [err.get("module") or "the project"])
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _reload_error(err: dict[str, Any], root: Path, tree: str, pod: str) -> ReloadError:
    rel, line = err.get("path"), err.get("line")
    local = root / rel if rel else None
    where = f"{rel}, line {line}" if rel and line else (rel or err.get("module") or "?")
    tb = str(err.get("traceback") or "").replace(tree.rstrip("/") + "/", f"{root}{os.sep}")
    message = (f"{where}: {err['type']}: {err['message']}\n{tb.rstrip()}\n"
               f"The previous code of {_blocked(err)} keeps serving on pod '{pod}', and "
               "calls that use it fail; fix the file and call again.")
    return ReloadError(message, path=local, line=line, module=err.get("module") or "",
                       remote_type=err["type"], remote_traceback=tb, pod=pod)


# ------------------------------------------------------------------ entry
def pod_connections(compute: Compute) -> list[PodConnection]:
    """Every pod connection of the compute (one today; replicas later).

    A call resolves them once and hands them to :func:`ensure` and :func:`shipping_to`:
    each resolution checks that the pod is alive (locally a ``waitpid``).
    """
    many = getattr(compute, "connections", None)
    return list(many()) if callable(many) else [compute.connection()]


#: One scanner per project root, for the life of the process (each watches its tree).
_scanners: dict[str, Scanner] = {}
_scanners_lock = threading.Lock()


def _scanner(root: Path, max_files: int) -> Scanner:
    with _scanners_lock:
        scanner = _scanners.get(str(root))
        if scanner is None:
            scanner = _scanners[str(root)] = Scanner(
                root, max_file_size=MAX_FILE_SIZE, max_files=max_files,
                exclude=_own_dirs(root))
        return scanner


def _is_home(root: Path) -> bool:
    try:
        return os.path.realpath(root) == os.path.realpath(Path.home())
    except (KeyError, RuntimeError):  # no home directory known
        return False


def _own_dirs(root: Path) -> frozenset[str]:
    """The directories of kubetorch itself inside ``root`` (state, pod trees): never sent.

    Pod tokens live there, and a pod's synced tree inside the tree it syncs would
    nest itself one level deeper at every sync.
    """
    own = {config.get("state_dir"), os.environ.get("KT_SYNC_DIR")}
    real_root = os.path.realpath(root)
    out = set()
    for path in filter(None, own):
        rel = relative(real_root, os.path.realpath(os.path.expanduser(path)))
        if rel not in (None, "."):
            out.add(rel)
    return frozenset(out)


def _check_limits(root: Path, scan: Scan, max_files: int, max_total: int) -> None:
    if scan.too_large:
        shown = "\n".join(f"  {rel} ({_size(size)})" for rel, size in scan.too_large[:10])
        more = f"\n  ... and {len(scan.too_large) - 10} more" if len(scan.too_large) > 10 else ""
        first = scan.too_large[0][0]
        name = first.rsplit("/", 1)[-1]
        example = f"'{first}'" + (f" or '*.{name.rsplit('.', 1)[1]}'" if "." in name[1:] else "")
        raise SyncLimitError(
            f"{len(scan.too_large)} file(s) of {root} are over the "
            f"{_size(MAX_FILE_SIZE)} limit of code sync:\n{shown}{more}\n"
            f"List them in {root / '.ktignore'} (gitignore syntax, e.g. {example}) to leave "
            "them out; large data belongs where the pod can read it directly (a volume, "
            "object storage).", root=root, files=list(scan.too_large),
            reason=f"{len(scan.too_large)} file(s) are over {_size(MAX_FILE_SIZE)}")
    if scan.truncated or scan.total > max_total:
        what = (f"more than {max_files:,} files" if scan.truncated
                else f"{_size(scan.total)} of files")
        raise SyncLimitError(
            f"the project at {root} has {what} to sync: is that the right root? kt syncs "
            "the nearest directory upward from the working directory with .git, "
            "pyproject.toml or setup.py, else the working directory itself. Work from your "
            f"project's directory, or list what to leave out in {root / '.ktignore'} "
            "(a single '*' line syncs nothing).", root=root, files=[],
            reason=f"it has {what}")


#: Project root -> (the last manifest, its id). An id names one manifest version between a
#: client and a pod (a delta says which one it applies to); a fresh random id per
#: changed manifest needs no hashing of the whole manifest.
_ids: dict[str, tuple[dict[str, Any], str]] = {}


def sync(compute: Compute, *, progress: bool | None = None) -> SyncReport:
    """Bring every pod of ``compute`` up to date with the project, and reload edits.

    Cheap when nothing changed (no call is made). ``kt.fn(...).to()`` and every remote
    call do it too (see :func:`ensure`); call it yourself (or ``%kt sync``) to push on
    demand.

    Args:
        compute: The compute whose pods receive the project.
        progress: Show a progress bar for a large transfer (default: the ``progress``
            setting, ``KT_PROGRESS``).

    Returns:
        What was sent, written, deleted and reloaded, per pod.

    Raises:
        SyncLimitError: A file is over :data:`MAX_FILE_SIZE`, or the tree is too large.
        ReloadError: An edit failed to import on a pod (its old code keeps serving); raised
            again on every sync until the tree changes.
    """
    root, marked = find_project()
    _declined.pop(root, None)
    report = _sync(compute, root, marked, progress)
    for state in _transfer.states(pod_connections(compute)):
        if state is not None and state.error is not None:
            raise state.error
    return report


def ensure(compute: Compute, needs: Any = None,
           conns: list[PodConnection] | None = None) -> SyncReport | None:
    """The sync done before every remote call: :func:`sync`, or None when declined.

    An edit that failed to import on a pod fails only the calls whose code uses it:
    ``needs`` is what the call sends (a function, a class, a cell's source); if it uses
    a module the failure holds back, the :class:`ReloadError` is raised, else the call
    goes ahead with one warning naming the file. None checks nothing.

    A working directory that is no project (no marker above it, e.g. a notebook in the
    home directory) and is over the limits is not synced: one warning says why, and the
    user's modules go by value as they would without sync. A real project over the
    limits raises :class:`SyncLimitError` like :func:`sync`. ``KT_SYNC=0`` turns the
    implicit sync off (``%kt sync`` / :func:`sync` still work). ``conns``: the
    compute's connections when the caller has them already (:func:`pod_connections`).
    """
    report = _ensure(compute, conns)
    if needs is not None:
        _check_reload(conns if conns is not None else pod_connections(compute), needs)
    return report


def _check_reload(conns: list[PodConnection], needs: Any) -> None:
    """Raise the reload error of a pod if ``needs`` uses what it holds back, else warn once."""
    root: str | None = None
    for conn, state in zip(conns, _transfer.states(conns), strict=True):
        if (state is None or state.error is None
                or state.boot_id != conn.welcome.get("boot_id")):
            continue
        root = root or str(find_project()[0])
        if _needs.uses(needs, state.blocked, root):
            raise state.error
        if state.warned is not state.error:
            state.warned = state.error
            err = state.error
            where = str(err).split(": ", 1)[0]  # "mypkg/model.py, line 4"
            kind = getattr(err, "remote_type", type(err).__name__)
            _needs.warn_at_user(
                f"{where} failed to reload on pod '{conn.name}' ({kind}); "
                f"{', '.join(state.blocked)} keep their previous code there and calls "
                "that use them fail until it is fixed. This call does not use them: it "
                "runs.", RuntimeWarning)


def _ensure(compute: Compute, conns: list[PodConnection] | None) -> SyncReport | None:
    if not config.get("sync"):
        return None
    if conns is None:
        conns = pod_connections(compute)
    memo = _quiet.get(compute)
    if (memo is not None and memo.cwd == getcwd() and memo.pods == _pod_keys(conns)
            and memo.scanner.quiet_since(memo.scan)):
        return memo.report  # nothing changed here, nor in which pods we talk to
    root, marked = find_project()
    if root in _declined:
        return None
    if _is_home(root):
        _declined[root] = "it is your home directory"
        warnings.warn(
            f"not syncing {root} to pods: it is your home directory (credentials, caches "
            "and every other project live there). Your modules are sent by value instead. "
            "Work from a project folder (one with pyproject.toml, setup.py or .git) to "
            "sync it, or run `%kt sync` (kubetorch_jupyter.sync.sync) to sync this one "
            "on purpose.", RuntimeWarning, stacklevel=user_stacklevel())
        return None
    try:
        report = _sync(compute, root, marked, None)
    except SyncLimitError as exc:
        if marked:
            raise
        _declined[root] = str(exc)
        warnings.warn(
            f"not syncing {root} to pods: it is no project (no .git, pyproject.toml or "
            f"setup.py) and {exc.reason}. Your modules are sent by value instead. To "
            "sync, work from a project directory, or add a marker or a .ktignore there "
            "and run `%kt sync` (kubetorch_jupyter.sync.sync).",
            RuntimeWarning, stacklevel=user_stacklevel())
        return None
    if report.scan is not None:
        _quiet[compute] = _Quiet(getcwd(), _scanner(root, report.max_files), report.scan,
                                 _pod_keys(conns), report)
    return report


#: Roots whose implicit sync was declined (no project, over the limits): the reason.
_declined: dict[Path, str] = {}


@dataclass(frozen=True)
class _Quiet:
    """What the last implicit sync of a compute saw, to skip the next while nothing moves."""

    cwd: str  # the project root is found from the working directory
    scanner: Scanner
    scan: Scan
    pods: tuple[tuple[int, str | None], ...]
    report: SyncReport


_quiet: weakref.WeakKeyDictionary[Compute, _Quiet] = weakref.WeakKeyDictionary()


def _pod_keys(conns: list[PodConnection]) -> tuple[tuple[int, str | None], ...]:
    """Which pod processes we talk to: a new connection or a restarted pod differs."""
    return tuple((id(c), c.welcome.get("boot_id")) for c in conns)


def _sync(compute: Compute, root: Path, marked: bool, progress: bool | None) -> SyncReport:
    t0 = time.perf_counter()
    max_files, max_total = (MAX_FILES, MAX_TOTAL) if marked else (LOOSE_MAX_FILES,
                                                                  LOOSE_MAX_TOTAL)
    show = config.get("progress") if progress is None else progress
    scanner = _scanner(root, max_files)
    for attempt in range(3):
        scan = scanner.scan()
        _check_limits(root, scan, max_files, max_total)
        cached = _ids.get(str(root))
        if cached is None or (cached[0] is not scan.files and cached[0] != scan.files):
            cached = _ids[str(root)] = (scan.files, secrets.token_hex(16))
        paths, cwd = import_paths(str(root))
        job = _transfer.Job(root, project_id(root), scan, cached[1], paths, cwd, bool(show))
        try:
            conns = pod_connections(compute)
            if len(conns) == 1:
                pods = [_sync_pod(conns[0], job)]
            else:
                with ThreadPoolExecutor(max_workers=min(8, len(conns))) as pool:
                    pods = list(pool.map(_sync_pod, conns, [job] * len(conns)))
            break
        except _transfer.Changed:
            if attempt == 2:
                raise SyncError(f"files of {root} kept changing while they were sent; "
                                "sync again once they settle") from None
    return SyncReport(root, len(scan.files), scan.total, pods, scan.hashed,
                      time.perf_counter() - t0, scan=scan, max_files=max_files)
