"""A local pod's memory watchdog: a tiny process that enforces ``memory=`` (stdlib only).

Run as a script (``python memwatch.py PID LIMIT RECORD``; it detaches at once), not as
a module of the package, so that it starts in milliseconds and holds a few MB. Every
:data:`PERIOD` seconds it adds up the resident memory of the pod's session (the pod
and every process its code started: DataLoader workers, shells) from ``/proc``; past
``LIMIT`` bytes it writes ``RECORD`` (``{"pid", "limit", "peak"}``, mode 0600) and then
SIGKILLs the session, as the kernel's OOM killer would in a container. It exits when
the pod does.

Why a watchdog process: this machine may have no writable cgroup v2 hierarchy (see
:mod:`.memory`); a thread in the pod cannot run while C code holds the pod's GIL; the
client that started the pod may exit before it; and an address-space limit
(``RLIMIT_AS``) breaks CUDA, which reserves huge virtual ranges.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

#: Seconds between samples.
PERIOD = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE")


def session_rss(sid: int) -> int:
    """Bytes resident in the processes of session ``sid`` (the pod leads its own)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        # after "pid (comm)": state ppid pgrp session ... rss is field 24 of stat
        if len(fields) > 21 and int(fields[3]) == sid:
            total += int(fields[21]) * _PAGE
    return total


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def watch(pid: int, limit: int, record: str) -> int:
    """Watch pod ``pid`` until it exits; kill it past ``limit`` bytes. Exit status 0."""
    peak = 0
    try:
        sid = os.getsid(pid)
    except OSError:
        return 0
    while _alive(pid):
        used = session_rss(sid)
        peak = max(peak, used)
        if used > limit:
            fd = os.open(record + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": pid, "limit": limit, "peak": peak, "at": time.time()}, f)
            os.replace(record + ".tmp", record)  # before the kill: its clients read it
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            return 0
        time.sleep(PERIOD)
    return 0


if __name__ == "__main__":
    if os.fork():  # detach: the starter reaps this first process at once
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.exit(watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
