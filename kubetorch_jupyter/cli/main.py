"""The ``kt`` command: list, tear down and read the logs of pods.

Examples::

    kt list                      # running pods: name, status, pid, url, resources, age
    kt teardown dev              # stop one pod (or several: kt teardown a b)
    kt teardown --all            # stop every pod
    kt logs dev -n 50            # the last 50 lines the pod printed
    kt logs dev --follow         # and keep printing until Ctrl-C
    kt config                    # every setting, its variable, value and default
    kt demo                      # a guided tour on a local pod

Errors (an unknown pod, a bad setting) print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .. import config
from ..backends import PodInfo, get_backend
from ..backends.local.backend import LocalBackend
from ..backends.local.process import tail
from ..core.resources import format_bytes
from ..exceptions import KtError

__all__ = ["main"]


def _age(started_at: float, now: float) -> str:
    seconds = max(0, int(now - started_at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _probe(info: PodInfo) -> str:
    """``ready``, ``starting`` or ``unresponsive``, from the pod's ``/ready`` endpoint."""
    url = info.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(f"{url}/ready", timeout=1) as resp:
            return "ready" if resp.status == 200 else "starting"
    except urllib.error.HTTPError:
        return "starting"
    except OSError:
        return "unresponsive"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _cmd_list(args: argparse.Namespace) -> int:
    pods = get_backend().list()
    if not pods:
        print("no running pods")
        return 0
    now = time.time()
    rows = [["NAME", "STATUS", "PID", "URL", "GPUS", "CPUS", "MEMORY", "AGE"]]
    for p in pods:
        cpus = p.spec.get("cpus")
        rows.append([
            p.name, _probe(p), str(p.pid or "-"), p.url,
            ",".join(map(str, p.gpus)) or "-",
            f"{cpus:g}" if cpus else "-",
            format_bytes(p.spec.get("memory")),
            _age(p.started_at, now),
        ])
    _table(rows, sys.stdout)
    return 0


def _cmd_teardown(args: argparse.Namespace) -> int:
    backend = get_backend()
    names = [p.name for p in backend.list()] if args.all else args.names
    if args.all and not names:
        print("no running pods")
    status = 0
    for name in names:
        try:
            backend.down(name)
        except KtError as exc:
            print(f"kt: {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"torn down {name!r}")
    return status


def _follow(path: Path, lines: int, out: TextIO) -> None:
    """Print the last ``lines`` lines of ``path``, then what is appended, until Ctrl-C."""
    f = open(path, "rb")  # noqa: SIM115  (reopened when the log is truncated)
    try:
        end = f.seek(0, os.SEEK_END)
        out.write(tail(path, lines, end=end))  # up to where following starts: no line lost
        out.flush()
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk.decode(errors="replace"))
                out.flush()
                continue
            if path.exists() and path.stat().st_size < f.tell():  # truncated: start over
                f.close()
                f = open(path, "rb")  # noqa: SIM115
            time.sleep(0.25)  # a file has no "appended" event in the stdlib
    finally:
        f.close()


def _cmd_logs(args: argparse.Namespace) -> int:
    backend = get_backend()
    if not args.follow:
        sys.stdout.write(backend.logs(args.name, tail=args.tail))
        return 0
    if not isinstance(backend, LocalBackend):
        print(f"kt: --follow is not supported by the {backend.name} backend", file=sys.stderr)
        return 1
    path = backend.log_path(args.name)
    if not path.exists():
        backend.logs(args.name)  # raises ComputeNotFoundError with the names that exist
    with contextlib.suppress(KeyboardInterrupt):
        _follow(path, args.tail, sys.stdout)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    rows = [["VARIABLE", "VALUE", "DEFAULT", "MEANING"]]
    for setting, (env, default, help_text) in zip(config.SETTINGS.values(), config.describe(),
                                                  strict=True):
        try:
            value = str(config.get(setting.name))
        except KtError as exc:
            value = f"<invalid: {exc}>"
        rows.append([env, value, default, help_text])
    _table(rows, sys.stdout)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module(f"{__package__}.demo")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.demo":
            raise
        print("kt: the demo is not part of this installation", file=sys.stderr)
        return 1
    return int(demo.main() or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kt", description="Manage kubetorch-jupyter pods.",
        epilog="Settings come from KT_... environment variables; see `kt config`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list running pods")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("teardown", help="stop pods and forget them")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("names", nargs="*", default=[], metavar="NAME", help="pods to stop")
    group.add_argument("--all", action="store_true", help="stop every pod")
    p.set_defaults(func=_cmd_teardown)

    p = sub.add_parser("logs", help="print what a pod printed")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--tail", type=int, default=200, metavar="LINES",
                   help="how many of the last lines to print (default 200)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines until Ctrl-C")
    p.set_defaults(func=_cmd_logs)

    p = sub.add_parser("config", help="show every setting and its environment variable")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("demo", help="a guided tour on a local pod")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kt`` with ``argv`` (default: the command line); return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KtError as exc:
        print(f"kt: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
