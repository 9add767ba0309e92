"""The ``kt`` command: list, tear down and read the logs of pods.

Examples::

    kt list                      # running pods: name, backend, phase, reason, pid, url, ...
    kt teardown dev              # stop one pod (or several: kt teardown a b)
    kt teardown --all            # stop every pod
    kt logs dev -n 50            # the last 50 lines the pod printed
    kt logs dev --follow         # and keep printing until Ctrl-C
    kt logs dev --call 3f9a0c2e  # what one call or run printed and logged (the pod's history)
    kt config                    # every setting, its variable, value and default
    kt demo                      # a guided tour on a local pod
    kt export NB.ipynb --schedule "0 3 * * *"   # a notebook as a nightly job (kt jobs ...)

Errors (an unknown pod, a bad setting) print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__, config
from ..exceptions import KtError
from ..manager import ComputeManager
from ..manager.table import log_text, parse_call_id, render, table
from . import jobs

__all__ = ["main"]


#: The columns of `kt list`.
LIST_COLUMNS = ("NAME", "BACKEND", "PHASE", "REASON", "PID", "URL", "GPUS", "CPUS", "MEMORY",
                "AGE", "IDLE")


def _cmd_list(args: argparse.Namespace) -> int:
    computes = ComputeManager().list()
    if not computes:
        print("no running pods")
        return 0
    print(render(computes, LIST_COLUMNS))
    return 0


def _cmd_teardown(args: argparse.Namespace) -> int:
    manager = ComputeManager()
    names = [c.name for c in manager.list()] if args.all else args.names
    if args.all and not names:
        print("no running pods")
    status = 0
    for name in names:
        try:
            manager.stop(name)
        except KtError as exc:
            print(f"kt: {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"torn down {name!r}")
    return status


def _cmd_logs(args: argparse.Namespace) -> int:
    manager = ComputeManager()
    if args.call is not None:
        if args.follow:
            print("kt: --follow follows the pod's whole log; with --call, drop --follow to "
                  "print what the pod holds of that call", file=sys.stderr)
            return 1
        sys.stdout.write(log_text(manager.pod_logs(args.name, call=args.call, tail=args.tail)))
        return 0
    if not args.follow:
        sys.stdout.write(manager.logs(args.name, tail=args.tail))
        return 0
    try:
        for line in manager.follow_logs(args.name, tail=args.tail):
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    print(f"kt: pod {args.name!r} is not running (torn down or exited); stopped following",
          file=sys.stderr)
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
    print(table(rows))
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


def _lines(text: str) -> int:
    """``-n LINES``: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of lines >= 0, got {text!r}")
    return value


def _call_id(text: str) -> int:
    try:
        return parse_call_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kt", description="Manage kubetorch-jupyter pods.",
        epilog="Settings come from KT_... environment variables; see `kt config`.",
    )
    parser.add_argument("--version", action="version", version=f"kt {__version__}")
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
    p.add_argument("-n", "--tail", type=_lines, default=200, metavar="LINES",
                   help="how many of the last lines to print (default 200)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines until Ctrl-C")
    p.add_argument("--call", type=_call_id, metavar="ID",
                   help="only what this call or run printed and logged (its hex id, or the "
                        "run id NAME:HEX), from the pod's recent history (KT_POD_LOG_HISTORY)")
    p.set_defaults(func=_cmd_logs)

    p = sub.add_parser("config", help="show every setting and its environment variable")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("demo", help="a guided tour on a local pod")
    p.set_defaults(func=_cmd_demo)

    jobs.add_parsers(sub)  # kt export, kt jobs list|run|logs|output|rm
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
