"""The magics' argument parsers: shared argument groups, the ``%kt`` subcommands.

Flags are parsed by argparse (IPython's ``MagicArgumentParser``, whose errors are one-line
``UsageError``s); the groups here are shared by ``%%kt``, ``%autokt`` and ``%kt``.
"""

from __future__ import annotations

import argparse
import keyword
import re
import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser, argument, argument_group

from ..cli.jobs import add_export_arguments

__all__ = ["RESOURCE_ARGS", "RETRY_ARGS", "TARGET_ARGS", "add_group", "group", "line_parser",
           "retry_attempts", "variable_names"]

TARGET_ARGS = [
    argument("--name", metavar="NAME",
             help="the compute to use, by name: created if needed, reused when warm"),
    argument("--compute", metavar="VAR", help="a kt.Compute variable of the notebook"),
]
RESOURCE_ARGS = [
    argument("--gpus", type=int, metavar="N", help="GPUs for the pod"),
    argument("--cpus", metavar="C", help="CPU cores: 2, 0.5 or 500m"),
    argument("--memory", metavar="M", help="memory: 16Gi, 512Mi"),
    argument("--image", metavar="VAR", help="a kt.Image variable: what the pod installs"),
]

RETRY_ARGS = [
    argument("--retry-oom", nargs="?", const="3", default=None, metavar="N",
             help="if the pod runs out of memory, restart it with twice the memory and run "
                  "the cell again, N attempts in all (default 3); the pod's state is lost"),
]


def retry_attempts(text: str | None) -> int | None:
    """The attempts ``--retry-oom [N]`` asks for (None: no retry); a bad N is a UsageError."""
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--retry-oom N: the attempts in all, a whole number >= 1, got {text!r}")
    return int(text)


def group(title: str, args: list[Any]) -> Callable[[Any], Any]:
    """Apply a shared argument group (magic_arguments decorators) to a magic."""

    def deco(func: Any) -> Any:
        for arg in reversed(args):
            func = arg(func)
        return argument_group(title)(func)

    return deco


def add_group(parser: argparse.ArgumentParser, title: str, args: list[Any]) -> None:
    """Add the same shared argument group to an argparse (sub)parser."""
    section = parser.add_argument_group(title)
    for arg in args:
        arg.add_to_parser(parser, section)


def line_parser() -> MagicArgumentParser:
    """The parser of ``%kt COMMAND ...`` line magics (one subcommand each)."""
    parser = MagicArgumentParser(prog="kt", add_help=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    use = sub.add_parser("use", help="set the notebook's current compute")
    use.add_argument("target", metavar="NAME|VAR")
    for cmd, what in (("status", "show a compute and its pod"),
                      ("runs", "list the cell runs of a pod (default: of every pod)"),
                      ("restart", "restart a pod: a fresh process, its state lost"),
                      ("sync", "send this directory's code to the pod")):
        p = sub.add_parser(cmd, help=what)
        p.add_argument("name", nargs="?", metavar="NAME")
        p.add_argument("--compute", metavar="VAR")
    sub.add_parser("list", help="list the running pods")
    down = sub.add_parser("teardown", help="stop pods")
    down.add_argument("names", nargs="*", metavar="NAME")
    down.add_argument("--all", action="store_true")
    logs = sub.add_parser("logs", help="print what a pod printed")
    logs.add_argument("name", nargs="?", metavar="NAME")
    logs.add_argument("-n", "--tail", type=int, default=100, metavar="LINES")
    logs.add_argument("--call", metavar="ID", help="only what this call or run printed")
    for cmd in ("push", "pull"):
        p = sub.add_parser(cmd, help=f"{cmd} variables between the notebook and the pod")
        p.add_argument("variables", nargs="+", metavar="VAR")
        add_group(p, "compute", TARGET_ARGS)
    export = sub.add_parser("export", help="this notebook, as saved, as a scheduled job")
    add_export_arguments(export, notebook_optional=True)
    for cmd in ("attach", "cancel"):
        p = sub.add_parser(cmd, help=f"{cmd} a detached run")
        p.add_argument("run_id", nargs="?", metavar="RUN_ID")
    return parser


def strip_comment(line: str) -> str:
    """A magic's argument line without a trailing ``# comment`` (quotes respected)."""
    if "#" not in line:
        return line
    try:
        return shlex.join(shlex.split(line, comments=True))
    except ValueError:  # unbalanced quotes: let the parser report them
        return line


def variable_names(text: str | None, flag: str) -> list[str]:
    """Variable names from ``a,b`` (or ``a b``); argparse-style error for a bad one."""
    names = [n for n in re.split(r"[,\s]+", (text or "").strip("'\"")) if n]
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise UsageError(f"{flag}: {name!r} is not a variable name")
    return names
