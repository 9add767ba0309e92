"""Where jobs and their runs live: ``$KT_STATE_DIR/jobs/<name>/``.

::

    jobs/<name>/
      job.json              the job: notebook, parameters, schedule, compute, crontab line
      notebook.ipynb        the notebook as it was saved when it was exported
      cron.log              what scheduled starts printed (before a run has its own log)
      lock                  held while a run is in progress (one run at a time)
      runs/<run-id>/
        run.json            start, end, outcome, exit code, failing cell, parameters
        progress.log        which cell runs, and its output, as it goes (kt jobs logs -f)
        output.ipynb        the executed notebook (saved after every cell)

A run id is the UTC start time and four random hex digits (``20261202-031500-3f9a``), so
runs sort by time. Records are written atomically (a temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import config
from ..exceptions import ConfigError

__all__ = ["JobRecord", "RunRecord", "jobs_dir", "new_run_id", "write_json"]

_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")

#: A run's outcome while it goes on, and when it has ended.
RUNNING = "running"
OUTCOMES = ("succeeded", "failed", "interrupted", "lost")


def jobs_dir() -> Path:
    """``$KT_STATE_DIR/jobs``."""
    return Path(config.get("state_dir")) / "jobs"


def check_job_name(name: str) -> str:
    """``name`` if it is a valid job name (a DNS-1123 label, at most 52 characters).

    52 leaves room for the CronJob's Job suffix on Kubernetes.

    Raises:
        ConfigError: When it is not.
    """
    if not _NAME.match(name) or len(name) > 52:
        raise ConfigError(f"job name {name!r} is not valid: use lowercase letters, digits and "
                          "'-' (starting with a letter, at most 52 characters)")
    return name


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def new_run_id(now: float | None = None) -> str:
    """A run id: ``YYYYmmdd-HHMMSS-xxxx`` (UTC start, random suffix)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{secrets.token_hex(2)}"


@dataclass
class JobRecord:
    """A job as ``job.json`` holds it.

    Attributes:
        name: The job's name.
        notebook: The notebook it was exported from (absolute path).
        cwd: The directory runs start in (the notebook's).
        parameters: Values injected into the notebook's ``parameters`` cell.
        schedule: The cron expression, or None for a job run by hand only.
        timezone: The schedule's IANA zone, or None (this machine's).
        backend: ``local`` (crontab) or ``kubernetes`` (CronJob).
        compute: The job's compute spec (JSON), or None.
        created: When it was exported (epoch seconds).
        crontab_line: The exact crontab line installed for it (local, scheduled).
        env: Variables each run sets for its kernel (the state dir, the path).
        namespace: Where a Kubernetes job's objects go (``--backend kubernetes``).
        cluster: The API server a Kubernetes job was applied to (None: its manifests
            were only written, ``--dry-run``).
        cronjob: A Kubernetes job's CronJob (``{username}-{name}``).
        username: ``KT_USERNAME`` at export: a Kubernetes job's objects carry it.
    """

    name: str
    notebook: str
    cwd: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    timezone: str | None = None
    backend: str = "local"
    compute: dict[str, Any] | None = None
    created: float = 0.0
    crontab_line: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None
    cluster: str | None = None
    cronjob: str | None = None
    username: str | None = None

    @property
    def folder(self) -> Path:
        """``jobs/<name>``."""
        return jobs_dir() / self.name

    @property
    def snapshot(self) -> Path:
        """The notebook as exported."""
        return self.folder / "notebook.ipynb"

    def save(self) -> None:
        """Write ``job.json``."""
        write_json(self.folder / "job.json", asdict(self))

    @classmethod
    def load(cls, name: str) -> JobRecord:
        """The job called ``name``.

        Raises:
            ConfigError: When there is no such job.
        """
        path = jobs_dir() / check_job_name(name) / "job.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            known = ", ".join(all_job_names()) or "none"
            raise ConfigError(f"no job named {name!r} (jobs: {known}); kt export NOTEBOOK "
                              "--name NAME makes one") from None
        except ValueError as exc:
            raise ConfigError(f"job {name!r}: {path} is not readable ({exc}); export it "
                              "again with --replace") from None
        known_fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known_fields})

    def runs(self) -> list[RunRecord]:
        """Every run of this job, oldest first."""
        root = self.folder / "runs"
        if not root.is_dir():
            return []
        out = []
        for sub in sorted(root.iterdir()):
            if _RUN_ID.match(sub.name) and (sub / "run.json").is_file():
                try:
                    out.append(RunRecord.load(sub))
                except (ValueError, TypeError):  # a record cut short (a full disk): skipped
                    continue
        return out

    def run(self, run_id: str | None = None) -> RunRecord:
        """The run ``run_id`` (default: the latest).

        Raises:
            ConfigError: When the job has no such run (or none at all).
        """
        runs = self.runs()
        if not runs:
            raise ConfigError(f"job {self.name!r} has not run yet; kt jobs run {self.name} "
                              "runs it now")
        if run_id is None:
            return runs[-1]
        for run in runs:
            if run.run_id == run_id:
                return run
        raise ConfigError(f"job {self.name!r} has no run {run_id!r}; its runs: "
                          f"{', '.join(r.run_id for r in runs[-5:])}")

    def remove(self, *, purge: bool) -> None:
        """Delete the job's record (and with ``purge`` its runs too)."""
        if purge:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for name in ("job.json", "notebook.ipynb", "manifests.yaml"):
            (self.folder / name).unlink(missing_ok=True)


def all_job_names() -> list[str]:
    """Names of the jobs in the state dir, sorted."""
    root = jobs_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "job.json").is_file())


@dataclass
class RunRecord:
    """One run as ``run.json`` holds it.

    Attributes:
        job: The job's name.
        run_id: ``YYYYmmdd-HHMMSS-xxxx``.
        trigger: ``manual`` (kt jobs run) or ``schedule`` (cron).
        start: Epoch seconds.
        end: Epoch seconds, or None while it runs.
        outcome: ``running``, ``succeeded``, ``failed``, ``interrupted`` or ``lost``
            (its process ended without saying how: killed).
        exit_code: The run's exit status, or None while it runs.
        pid: The process that runs it.
        parameters: What was injected.
        failing_cell: ``{"index", "execution_count", "ename", "evalue", "source"}`` of
            the cell that failed, or None.
        error: A one-line reason when the run failed outside any cell.
    """

    job: str
    run_id: str
    trigger: str
    start: float
    end: float | None = None
    outcome: str = RUNNING
    exit_code: int | None = None
    pid: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    failing_cell: dict[str, Any] | None = None
    error: str | None = None

    @property
    def folder(self) -> Path:
        """``jobs/<job>/runs/<run_id>``."""
        return jobs_dir() / self.job / "runs" / self.run_id

    @property
    def output(self) -> Path:
        """The executed notebook."""
        return self.folder / "output.ipynb"

    @property
    def log(self) -> Path:
        """The progress log."""
        return self.folder / "progress.log"

    def save(self) -> None:
        """Write ``run.json``."""
        write_json(self.folder / "run.json", asdict(self))

    @classmethod
    def load(cls, folder: Path) -> RunRecord:
        """The run recorded in ``folder``; a running one whose process is gone is lost."""
        data = json.loads((folder / "run.json").read_text())
        known_fields = set(cls.__dataclass_fields__)
        run = cls(**{k: v for k, v in data.items() if k in known_fields})
        if run.outcome == RUNNING and not _alive(run.pid):
            run.outcome = "lost"
        return run


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
