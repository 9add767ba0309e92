"""Local schedules: one line per job in the user's crontab, marked as ours.

A job's line ends with the comment ``# kubetorch-jupyter:<name>``; ``kt jobs`` finds,
lists and removes only lines with that mark. The line holds everything cron needs in
its bare environment (``PATH=/usr/bin:/bin``, ``SHELL=/bin/sh``): absolute paths, the
state dir, this Python, and where its output goes::

    0 3 * * * cd /home/me/proj && KT_STATE_DIR=/home/me/.local/state/kubetorch-jupyter \
PATH=/home/me/venv/bin:/usr/bin:/bin /home/me/venv/bin/python -m kubetorch_jupyter.cli \
jobs run nightly --scheduled >>/home/me/.local/state/kubetorch-jupyter/jobs/nightly/cron.log \
2>&1 # kubetorch-jupyter:nightly

python-crontab renders our line (and parses it back for ``kt jobs list``). Other lines
are kept byte for byte: the file is edited as text, because python-crontab re-renders
every line it writes (``MAILTO="a b"`` loses its quotes, spacing changes).

Which crontab: the user's (read with ``crontab -l``, written with ``crontab -``; needs
the ``crontab`` command, Debian's ``cron`` package), or the file ``KT_CRONTAB_FILE``
names (for tests, and machines without a user crontab whose file something else
installs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crontab import CronTab

from .. import config
from ..exceptions import ConfigError

__all__ = ["MARK", "CronLine", "Crontab"]

#: The comment that marks a line as a job's: ``kubetorch-jupyter:<name>``.
MARK = "kubetorch-jupyter:"
_OURS = re.compile(r"#\s*" + re.escape(MARK) + r"(?P<name>[a-z][-a-z0-9]*)\s*$")


@dataclass(frozen=True)
class CronLine:
    """One of our lines: the job it runs, its five fields, its command."""

    name: str
    fields: str
    command: str
    text: str


class Crontab:
    """The crontab our lines go in; see the module docstring for which one."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path if path is not None else (config.get("crontab_file") or None)

    @property
    def where(self) -> str:
        """Which crontab, for messages."""
        return self.path or "your crontab"

    def _crontab_command(self) -> str:
        found = shutil.which("crontab")
        if found is None:
            raise ConfigError(
                "no `crontab` command here, so a local schedule cannot be installed: install "
                "cron (Debian: apt-get install cron), set KT_CRONTAB_FILE to a crontab file "
                "something else installs, or export with --backend kubernetes")
        return found

    def read(self) -> str:
        """The crontab's text ('' when there is none)."""
        if self.path:
            try:
                return Path(self.path).read_text()
            except FileNotFoundError:
                return ""
        proc = subprocess.run([self._crontab_command(), "-l"], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            if "no crontab" in proc.stderr.lower():
                return ""
            raise ConfigError(f"crontab -l failed: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def write(self, text: str) -> None:
        """Replace the crontab's text."""
        if self.path:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            if target.exists():
                os.chmod(tmp, target.stat().st_mode & 0o777)
            os.replace(tmp, target)
            return
        proc = subprocess.run([self._crontab_command(), "-"], input=text, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise ConfigError(f"crontab refused the new table: {proc.stderr.strip()}")

    def check_writable(self) -> None:
        """Fail now (before anything is created) if the crontab cannot be edited."""
        if self.path:
            parent = Path(self.path).resolve().parent
            if not os.access(parent if not Path(self.path).exists() else self.path, os.W_OK):
                raise ConfigError(f"cannot write the crontab file {self.path!r} "
                                  "(KT_CRONTAB_FILE)")
            return
        self._crontab_command()

    # ----------------------------------------------------------------- our lines
    def lines(self) -> list[CronLine]:
        """Our lines, in file order."""
        out = []
        for text in self.read().splitlines():
            m = _OURS.search(text)
            if m is None or text.lstrip().startswith("#"):
                continue
            parsed = next(iter(CronTab(tab=text + "\n")), None)
            if parsed is None:
                continue
            out.append(CronLine(name=m.group("name"), fields=str(parsed.slices),
                                command=str(parsed.command), text=text))
        return out

    def find(self, name: str) -> CronLine | None:
        """The line of job ``name``, if there is one."""
        return next((line for line in self.lines() if line.name == name), None)

    @staticmethod
    def render(name: str, fields: str, command: str) -> str:
        """The crontab line of job ``name`` (no newline)."""
        # python-crontab escapes cron's one special character (% starts stdin) as \%
        job = CronTab(tab="").new(command=command, comment=f"{MARK}{name}")
        job.setall(fields)
        return str(job.render())

    def install(self, name: str, fields: str, command: str) -> str:
        """Add (or replace) the line of job ``name``; every other line stays as it was.

        Returns the line as written.
        """
        line = self.render(name, fields, command)
        text = self._without(name)
        if text and not text.endswith("\n"):
            text += "\n"
        self.write(text + line + "\n")
        return line

    def remove(self, name: str) -> bool:
        """Remove the line of job ``name``; True if there was one."""
        before = self.read()
        after = self._without(name, before)
        if after == before:
            return False
        self.write(after)
        return True

    def _without(self, name: str, text: str | None = None) -> str:
        text = self.read() if text is None else text
        kept = []
        for raw in text.splitlines(keepends=True):
            m = _OURS.search(raw.rstrip("\r\n"))
            if m is not None and m.group("name") == name and not raw.lstrip().startswith("#"):
                continue
            kept.append(raw)
        return "".join(kept)
