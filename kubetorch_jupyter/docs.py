"""The README's generated tables: settings, pod variables, public API.

Each table sits in the README between two marker comments (``<!-- settings:start -->``
and ``<!-- settings:end -->``, likewise ``pod-settings`` and ``api``) and is made from
the code that defines it: :data:`kubetorch_jupyter.config.SETTINGS`,
:data:`pod_runtime.settings.POD_SETTINGS` and ``kubetorch_jupyter.__all__``. After
changing any of them::

    python -m kubetorch_jupyter.docs --write-readme README.md

``--check README.md`` exits 1 when the README differs (what ``tests/test_docs.py``
asserts). Defaults that depend on the machine are shown as written in the table
(``$USER``), so the output is the same for everyone.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pod_runtime.settings import POD_SETTINGS, PodSetting, byte_size

from . import config

__all__ = ["TABLES", "api_table", "check", "pod_settings_table", "render", "settings_table"]

FIX_COMMAND = "python -m kubetorch_jupyter.docs --write-readme README.md"


def _value(value: Any) -> str:
    """A default as the table shows it: ``1``/``0`` for flags, ``120`` for ``120.0``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(text: str) -> str:
    """Docstring markup as Markdown: ``x`` and :role:`~a.b.x` both become `x`."""
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _code(text: str) -> str:
    return f"`{text}`" if text else "(unset)"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def settings_table() -> str:
    """The client's settings (``kubetorch_jupyter.config``) as a Markdown table."""
    rows = []
    for s in config.SETTINGS.values():
        default = s.shown or _code(_value(s.default()))
        rows.append((f"`{s.env}`", default, s.help))
    return _table(("variable", "default", "meaning"), rows)


def _pod_default(setting: PodSetting) -> str:
    """A pod variable's default as one would write it (sizes as ``64Mi``, not bytes)."""
    value = setting.default
    if setting.parse is byte_size and isinstance(value, int):
        for unit, size in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
            if value % size == 0:
                return _code(f"{value // size}{unit}")
    return _code(_value(value))


def pod_settings_table() -> str:
    """The variables a pod reads (``pod_runtime.settings``) as a Markdown table."""
    rows = [(f"`{s.env}`", _pod_default(s), s.help) for s in POD_SETTINGS.values()]
    return _table(("variable", "default", "meaning"), rows)


#: What the public names that are plain values (no docstring of their own) are.
VALUES = {"__version__": "The package's version (a string)."}


def api_table() -> str:
    """Every public name of ``kubetorch_jupyter`` with the first line of its docstring.

    Raises:
        ValueError: A public name has no docstring (or, for a plain value, no entry in
            :data:`VALUES`).
    """
    import kubetorch_jupyter as kt

    rows = []
    for name in kt.__all__:
        obj = getattr(kt, name)
        if inspect.isclass(obj):
            kind = ("warning" if issubclass(obj, Warning) else
                    "exception" if issubclass(obj, BaseException) else "class")
        elif callable(obj):
            kind = "function"
        else:
            kind = "value"
        doc = inspect.getdoc(obj) if kind != "value" else VALUES.get(name)
        if not doc:
            raise ValueError(f"kubetorch_jupyter.{name} is public but has no docstring")
        rows.append((f"`kt.{name}`", kind, _markdown(doc.strip().splitlines()[0])))
    return _table(("name", "kind", "what it is"), rows)


#: Marker name -> the function that makes the table between its markers.
TABLES: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "pod-settings": pod_settings_table,
    "api": api_table,
}


def _span(text: str, marker: str) -> tuple[int, int]:
    """Where the table of ``marker`` lies in ``text``: after its start line, before its end."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"the README has no {start} ... {end} block; add one where the "
                         f"{marker} table belongs")
    return i + len(start), j


def render(text: str) -> str:
    """``text`` (a README) with every marked table replaced by a fresh one.

    Raises:
        ValueError: A table's start or end marker is missing.
    """
    for marker, make in TABLES.items():
        i, j = _span(text, marker)
        text = f"{text[:i]}\n{make()}\n{text[j:]}"
    return text


def check(path: Path) -> list[str]:
    """The names of the tables in ``path`` that differ from what :func:`render` writes.

    Raises:
        ValueError: A table's start or end marker is missing.
    """
    text = path.read_text(encoding="utf-8")
    fresh = render(text)
    stale = []
    for marker in TABLES:
        (i, j), (k, m) = _span(text, marker), _span(fresh, marker)
        if text[i:j] != fresh[k:m]:
            stale.append(marker)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kubetorch_jupyter.docs``: print, check or rewrite the README's tables."""
    parser = argparse.ArgumentParser(prog="python -m kubetorch_jupyter.docs",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write-readme", metavar="PATH", type=Path,
                       help="rewrite the marked tables of this README in place")
    group.add_argument("--check", metavar="PATH", type=Path,
                       help="exit 1 if this README's tables are out of date")
    args = parser.parse_args(argv)
    try:
        if args.write_readme is not None:
            path: Path = args.write_readme
            text = path.read_text(encoding="utf-8")
            fresh = render(text)
            if fresh != text:
                path.write_text(fresh, encoding="utf-8")
            print(f"{path}: tables up to date" if fresh == text else f"{path}: tables rewritten")
            return 0
        if args.check is not None:
            stale = check(args.check)
            if stale:
                print(f"{args.check}: out of date: {', '.join(stale)}; run {FIX_COMMAND}",
                      file=sys.stderr)
                return 1
            return 0
    except (OSError, ValueError) as exc:
        print(f"kubetorch_jupyter.docs: {exc}", file=sys.stderr)
        return 1
    for marker, make in TABLES.items():
        print(f"<!-- {marker} -->\n{make()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
