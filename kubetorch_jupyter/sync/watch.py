"""Change notification for the project tree (Linux inotify through ctypes).

A :class:`Watcher` tells the scanner in which of the directories it walked something
may have changed since it last asked, so that a call on an unchanged tree costs one
non-blocking ``read`` instead of a ``stat`` per file, and an edit costs a listing of
its directory instead of a walk of the tree. It is an accelerator only: the
scan stays the ground truth, and whenever the watcher cannot be trusted the scanner
walks the tree every time:

- not Linux, or inotify unavailable, or the per-user watch limit reached;
- a network or FUSE filesystem (NFS, SMB, 9p, sshfs, virtiofs...), where edits made on
  another host raise no events here;
- an event queue overflow (the next check walks).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
import sys
import threading
from collections.abc import Callable

__all__ = ["Watcher", "trusted_filesystem"]

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000
_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
         | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")

#: statfs f_type of filesystems whose remote edits raise no local inotify events.
_REMOTE_FS = frozenset({
    0x6969,  # NFS
    0x517B,  # SMB
    0xFF534D42,  # CIFS
    0xFE534D42,  # SMB2
    0x65735546,  # FUSE (sshfs, virtiofs, gcsfuse, s3fs...)
    0x01021997,  # 9p (WSL, VM shares)
    0x00C36400,  # Ceph
    0x0BD00BD0,  # Lustre
    0x5346414F,  # AFS
    0x47504653,  # GPFS
    0x564C,  # NCP
    0x73757245,  # Coda
})

_libc: ctypes.CDLL | None = None
_libc_lock = threading.Lock()


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    with _libc_lock:
        if _libc is None:
            try:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                    use_errno=True)
                _libc.inotify_init1.argtypes = [ctypes.c_int]
                _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p,
                                                    ctypes.c_uint32]
                _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
            except (OSError, AttributeError):
                return None
        return _libc


_pylibc: ctypes.PyDLL | None = None
_FIONREAD = 0x541B  # Linux


def _load_pylibc() -> ctypes.PyDLL | None:
    """The C library through PyDLL, whose calls keep the GIL (only for non-blocking ones)."""
    global _pylibc
    if _pylibc is None and sys.platform.startswith("linux"):
        with _libc_lock:
            try:
                lib = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
                lib.ioctl.restype = ctypes.c_int
                lib.getcwd.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
                lib.getcwd.restype = ctypes.c_void_p
                _pylibc = lib
            except (OSError, AttributeError):
                return None
    return _pylibc


_cwd_buffer = ctypes.create_string_buffer(4096)


def getcwd() -> str:
    """``os.getcwd()`` without giving up the GIL (it runs before every remote call)."""
    pylibc = _load_pylibc()
    if pylibc is None:
        return os.getcwd()
    with _libc_lock:
        if not pylibc.getcwd(_cwd_buffer, len(_cwd_buffer)):
            return os.getcwd()  # a path longer than the buffer, or a deleted cwd
        return os.fsdecode(_cwd_buffer.value)


def trusted_filesystem(path: str) -> bool:
    """Whether inotify sees every change of ``path``'s filesystem (a local one)."""
    libc = _load_libc()
    if libc is None:
        return False
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first word
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    f_type = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return f_type not in _REMOTE_FS


class Watcher:
    """Watches directories; :meth:`poll` says in which ones events came since last asked.

    ``relevant(directory, name, is_dir)`` filters events: an event for an entry it
    rejects (an ignored log file being written, say) does not count.

    Raises:
        OSError: When inotify is not available (the caller walks instead).
    """

    def __init__(self, relevant: Callable[[str, str, bool], bool] | None = None) -> None:
        libc = _load_libc()
        if libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this platform")
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._libc = libc
        self._fd = fd
        self._dirs: dict[int, str] = {}
        self._wds: dict[str, int] = {}
        self._whole: set[str] = set()
        self._relevant = relevant
        self.broken = False

    def watch(self, directory: str, *, whole: bool = False) -> None:
        """Watch ``directory`` (idempotent). On failure the watcher is marked broken.

        With ``whole``, any event there means that anything may have changed.
        """
        if whole:
            self._whole.add(directory)
        if directory in self._wds or self.broken:
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return  # gone or unreadable: the walk skips it as well
            self.broken = True  # ENOSPC: the watch limit; walk every time from now on
            return
        moved = self._dirs.get(wd)
        if moved is not None:  # the same directory under a new name (it was moved)
            self._wds.pop(moved, None)
        self._dirs[wd] = directory
        self._wds[directory] = wd

    def _nothing_pending(self) -> bool:
        """Whether no event is queued, asked without releasing the GIL.

        This runs before every remote call. ``os.read`` on the (empty) inotify fd lets
        other threads take the GIL, and getting it back cost the call ~50-100 us on a
        busy 2-core machine; an ``ioctl(FIONREAD)`` through ``ctypes.PyDLL`` keeps it.
        """
        pylibc = _load_pylibc()
        if pylibc is None:
            return False
        count = ctypes.c_int(0)
        if pylibc.ioctl(self._fd, _FIONREAD, ctypes.byref(count)) != 0:
            return False
        return count.value == 0

    def quiet(self) -> bool:
        """Whether no event is waiting (without draining anything)."""
        return not self.broken and self._nothing_pending()

    def poll(self) -> set[str] | None:
        """Drain pending events: the directories they concern; None for "anything"."""
        if self.broken:
            return None
        if self._nothing_pending():
            return set()
        dirty: set[str] = set()
        everything = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return None if everything else dirty
            except OSError:
                self.broken = True
                return None
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
                offset += _EVENT.size + length
                directory = self._dirs.get(wd)
                if mask & IN_IGNORED:
                    if directory is not None:
                        del self._dirs[wd]
                        if self._wds.get(directory) == wd:
                            del self._wds[directory]
                    continue
                if mask & IN_Q_OVERFLOW or directory is None or directory in self._whole:
                    everything = True
                    continue
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    continue  # its parent has the event that matters
                name = raw.split(b"\0", 1)[0].decode(errors="surrogateescape")
                if (not name or self._relevant is None
                        or self._relevant(directory, name, bool(mask & IN_ISDIR))):
                    dirty.add(directory)

    def close(self) -> None:
        """Stop watching."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            self.broken = True

    def __del__(self) -> None:
        self.close()
