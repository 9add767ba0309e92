"""One run of a job: the notebook executed top to bottom, its record, its exit status.

``run_job(name)`` is what ``kt jobs run NAME`` and the crontab line call. It takes the
job's lock (one run at a time: a start while one runs is skipped, as a CronJob's
``concurrencyPolicy: Forbid``), writes ``run.json`` (outcome ``running``), executes the
exported notebook with papermill (parameters injected, ``%%kt`` cells included), and
writes the record again at the end. Exit status: 0 succeeded, 1 a cell failed (its
traceback is in the output notebook) or the run could not start, 130 interrupted.

The kernel gets ``KT_JOB_SPEC`` (the job's compute spec, when it has one), so a
``%%kt`` cell that names that compute, or none, starts its pod with the job's spec;
see :mod:`.in_kernel`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from ..exceptions import ConfigError
from .schedule import Schedule
from .store import JobRecord, RunRecord, new_run_id

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "run_job"]

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@contextlib.contextmanager
def _locked(job: JobRecord) -> Iterator[bool]:
    """Hold the job's lock; yields False when another run holds it."""
    job.folder.mkdir(parents=True, exist_ok=True)
    with (job.folder / "lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (the kernel inherits it), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (cron stopping, kill) ends the run like Ctrl-C: recorded as interrupted."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _failing_cell(nb: Any) -> dict[str, Any] | None:
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return {"index": index, "execution_count": cell.get("execution_count"),
                        "ename": output.get("ename"), "evalue": output.get("evalue"),
                        "source": cell.source.splitlines()[0][:200] if cell.source else ""}
    return None


def run_job(name: str, *, trigger: str = "manual", echo: IO[str] | None = None,
            run_id: str | None = None) -> int:
    """Run job ``name`` now; return the exit status (see the module docstring).

    Args:
        name: The job.
        trigger: ``manual`` or ``schedule`` (a crontab start: it checks the schedule's
            time zone first, and a minute that is not the schedule's does nothing).
        echo: Where progress goes besides ``progress.log`` (``kt jobs run``: stdout).
        run_id: The run's id (default: a new timestamped one).

    Raises:
        ConfigError: No such job.
    """
    job = JobRecord.load(name)
    if trigger == "schedule" and job.backend == "local" and job.schedule and job.timezone:
        sched = Schedule(job.schedule, job.timezone)
        if not sched.matches(datetime.now().astimezone()):
            return EXIT_OK  # the hourly line of a job in another zone: not its time
    with _locked(job) as mine:
        if not mine:
            busy = next((r for r in reversed(job.runs()) if r.outcome == "running"), None)
            what = f" (run {busy.run_id}, pid {busy.pid})" if busy else ""
            print(f"kt: job {name!r} is already running{what}; this start is skipped",
                  file=sys.stderr)
            return EXIT_FAILED
        return _run_locked(job, trigger, echo, run_id or new_run_id())


def _run_locked(job: JobRecord, trigger: str, echo: IO[str] | None, run_id: str) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from . import engine

    run = RunRecord(job=job.name, run_id=run_id, trigger=trigger, start=time.time(),
                    pid=os.getpid(), parameters=dict(job.parameters))
    run.folder.mkdir(parents=True, exist_ok=True)
    progress = engine.Progress(run.log, echo)  # before the record: a follower finds both
    run.save()
    params = ", ".join(f"{k}={v!r}" for k, v in job.parameters.items()) or "none"
    progress.note(f"run {run_id} of job {job.name!r} ({trigger}) started: notebook "
                  f"{job.notebook}, parameters {params}")
    env = dict(job.env)
    if job.compute:
        env["KT_JOB_SPEC"] = json.dumps(job.compute, sort_keys=True)
    nb = None
    try:
        with _environment(env), _sigterm_interrupts():
            nb = papermill.execute_notebook(
                str(job.snapshot), str(run.output), parameters=job.parameters or None,
                engine_name=engine.ENGINE, kernel_name=_kernel_name(job), progress_bar=False,
                cwd=job.cwd if os.path.isdir(job.cwd) else None, progress=progress)
        run.outcome, run.exit_code = "succeeded", EXIT_OK
    except PapermillExecutionError as exc:
        run.outcome, run.exit_code = "failed", EXIT_FAILED
        run.failing_cell = {"index": exc.cell_index, "execution_count": exc.exec_count,
                            "ename": exc.ename, "evalue": exc.evalue,
                            "source": (exc.source or "").splitlines()[0][:200]
                            if exc.source else ""}
    except KeyboardInterrupt:
        run.outcome, run.exit_code = "interrupted", EXIT_INTERRUPTED
        run.failing_cell = _failing_cell(_read(run))
    except Exception as exc:  # noqa: BLE001 - a kernel that died, a bad kernelspec: recorded
        run.outcome, run.exit_code = "failed", EXIT_FAILED
        run.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        run.failing_cell = _failing_cell(_read(run))
    run.end = time.time()
    run.save()
    took = f"{run.end - run.start:.1f} s"
    if run.outcome == "succeeded":
        progress.note(f"run {run_id} succeeded in {took}; output: {run.output}")
    else:
        where = (f" at cell {run.failing_cell['index'] + 1} ({run.failing_cell['ename']}: "
                 f"{run.failing_cell['evalue']})" if run.failing_cell else "")
        why = f": {run.error}" if run.error else ""
        progress.note(f"run {run_id} {run.outcome}{where}{why} after {took} (exit "
                      f"{run.exit_code}); output: {run.output}")
    progress.close()
    del nb
    return int(run.exit_code)


def _read(run: RunRecord) -> Any:
    import nbformat

    try:
        return nbformat.read(run.output, as_version=4)
    except (OSError, ValueError):
        return nbformat.v4.new_notebook()


def _kernel_name(job: JobRecord) -> str:
    try:
        data = json.loads(job.snapshot.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"job {job.name!r}: its notebook copy {job.snapshot} is unreadable "
                          f"({exc}); export it again") from None
    return str(data.get("metadata", {}).get("kernelspec", {}).get("name") or "python3")
