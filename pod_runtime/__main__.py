"""``python -m pod_runtime``: start a pod runtime.

The token comes from the environment variable ``KT_POD_TOKEN`` (never the command
line, where other users of the machine could read it). With ``--ready-fd`` the pod
writes one JSON line ``{"port": ..., "pid": ...}`` to that file descriptor once it is
listening, then closes it: the starter waits on it instead of polling.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from . import podlog, settings
from .protocol import shm
from .server import PodServer


def main(argv: list[str] | None = None) -> int:
    """Run a pod until SIGTERM (drained within ``KT_POD_TERM_GRACE``) or the inactivity TTL."""
    parser = argparse.ArgumentParser(prog="python -m pod_runtime", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--name", default=settings.get("KT_POD_NAME"))
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--inactivity-ttl", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--max-workers", type=int, default=64)
    args = parser.parse_args(argv)

    token = settings.get("KT_POD_TOKEN")
    os.environ.pop("KT_POD_TOKEN", None)  # code run on the pod never sees it
    if not token:
        print("pod_runtime: KT_POD_TOKEN is not set; refusing to serve without a token",
              file=sys.stderr)
        return 2
    try:
        podlog.configure(args.name)  # logging records: plain on stderr, or JSON lines
        if args.inactivity_ttl is None:  # the Kubernetes manifests set it in the env
            args.inactivity_ttl = settings.get("KT_POD_INACTIVITY_TTL")
    except ValueError as exc:  # a KT_POD_... variable its parser rejects
        print(f"pod_runtime: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("websockets").setLevel(logging.WARNING)
    swept = shm.sweep_dead_owners()  # files of clients and pods killed by SIGKILL
    if swept:
        logging.getLogger("kubetorch.pod").info(
            "removed %d shared-memory files of processes that are gone", swept)
    # Signals go to the main thread only: it waits on a lock for cells, and a SIGTERM
    # the kernel delivered to some reader thread instead would never wake it. Threads
    # inherit the mask of the thread that starts them, so block first, unblock below.
    # (The executor clears the mask while a call's own code runs: see Executor._run.)
    handled = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        server = PodServer(token, name=args.name, host=args.host, port=args.port,
                           inactivity_ttl=args.inactivity_ttl, max_workers=args.max_workers)
    except ValueError as exc:
        print(f"pod_runtime: {exc}", file=sys.stderr)
        return 2
    port = server.start_in_thread()
    logging.getLogger("kubetorch.pod").info("pod %s listening on %s:%d (pid %d)",
                                            args.name, args.host, port, os.getpid())
    if args.ready_fd is not None:
        with os.fdopen(args.ready_fd, "w") as ready:
            ready.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")

    stop = threading.Event()  # never set: the main loop runs cells until finish() exits
    terminating: list[int] = []

    def finish(drain: bool) -> None:
        # Off the main thread: a cell running there keeps running through the grace.
        if drain:
            server.drain(settings.get("KT_POD_TERM_GRACE"))
        server.stop()  # (stopped already when the inactivity TTL ended it)
        shm.clear_spares()  # os._exit below skips atexit handlers
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def on_term(signum: int, frame: object) -> None:
        # A second SIGTERM can arrive while the handler of the first runs on the main
        # thread: entering it again could wait forever on a lock the first holds (a pod
        # that never exits). The first one is enough.
        if terminating:
            return
        terminating.append(signum)
        threading.Thread(target=finish, args=(signum != 0,), name="kt-stop").start()

    signal.signal(signal.SIGTERM, on_term)

    def watch() -> None:
        server.stopped.wait()  # the inactivity TTL stopped the server
        on_term(0, None)

    threading.Thread(target=watch, name="kt-watch", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    server.executor.run_main_loop(stop)
    threading.Event().wait()  # finish() ends the process
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
