"""``kt export``: a notebook becomes a job, scheduled in the user's crontab.

Everything is checked before anything is written: the notebook (exists, valid
nbformat), the parameters (they parse, the notebook has a ``parameters`` cell that sets
them), the schedule (each cron field) and its time zone, the compute, the name (free,
unless ``replace``) and the crontab (it can be edited). Then the job's folder is
written (``job.json`` and the notebook as saved, with the compute spec in its metadata)
and its crontab line installed; if the crontab cannot be written the folder goes too,
so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat

from .. import config
from ..core.spec import ComputeSpec
from ..exceptions import ConfigError
from . import source
from .crontab import MARK, Crontab
from .schedule import Schedule
from .store import JobRecord, check_job_name, jobs_dir

__all__ = ["BACKENDS", "cron_command", "export_notebook", "remove_job"]

#: Where an exported job can run.
BACKENDS = ("local", "kubernetes")

#: Settings a run carries from the environment it was exported in (the rest are defaults).
_CARRIED = ("KT_USERNAME", "KT_BACKEND", "KT_PYTHON", "KT_START_TIMEOUT", "KT_CONNECT_TIMEOUT",
            "KT_RECONNECT_TIMEOUT", "KT_SHM", "KT_SYNC", "KT_PROGRESS")


def _default_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"nb-{name}".rstrip("-")
    return name[:52].rstrip("-")


def cron_command(job: JobRecord) -> str:
    """The command a crontab line runs for ``job``: absolute paths, cron's bare environment.

    cron starts it with ``PATH=/usr/bin:/bin``, ``SHELL=/bin/sh`` and little else, so the
    line sets the state dir, puts this Python's directory first on the path, and keeps
    ``PYTHONPATH`` when the export had one (an uninstalled checkout).
    """
    env = {"KT_STATE_DIR": str(config.get("state_dir")),
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in
                                            os.environ["PYTHONPATH"].split(os.pathsep) if p)
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    log = job.folder / "cron.log"
    return (f"cd {shlex.quote(job.cwd)} && {assign} {shlex.quote(sys.executable)} -m "
            f"kubetorch_jupyter.cli jobs run {job.name} --scheduled >>{shlex.quote(str(log))} "
            "2>&1")


def _taken(name: str) -> str | None:
    if (jobs_dir() / name / "job.json").is_file():
        return "a job of that name exists"
    if _has_line(name):
        return f"{Crontab().where} has a line marked {MARK}{name}"
    return None


def export_notebook(
    notebook: str | os.PathLike[str],
    *,
    name: str | None = None,
    schedule: str | None = None,
    params: list[str] | None = None,
    yaml_params: list[str] | None = None,
    compute: str | ComputeSpec | None = None,
    backend: str = "local",
    timezone: str | None = None,
    replace: bool = False,
    kubernetes: dict[str, Any] | None = None,
) -> JobRecord:
    """Export ``notebook`` as job ``name``, scheduled by ``schedule`` (None: by hand only).

    Args:
        notebook: The ``.ipynb`` file, as saved.
        name: The job's name (default: from the file name).
        schedule: Five cron fields or an @shortcut, in ``timezone``.
        params: ``NAME=VALUE`` items (papermill's ``-p`` rules).
        yaml_params: YAML mappings (papermill's ``-y``).
        compute: ``--compute``: a spec, a compute name or spec JSON; default: the
            notebook's ``metadata.kubetorch.compute``.
        backend: ``local`` (crontab) or ``kubernetes`` (a CronJob).
        timezone: IANA zone of the schedule (default: this machine's).
        replace: Replace a job of the same name instead of refusing.
        kubernetes: For ``backend="kubernetes"``: ``namespace``, ``runs_claim`` (an
            existing PersistentVolumeClaim for the runs), ``runs_size`` (of a new one),
            ``apply`` (default True: apply the objects to the configured cluster; False:
            only write them, ``--dry-run``).

    Raises:
        ConfigError: Any bad input (see the module docstring); nothing is created.
    """
    path = Path(notebook).expanduser().resolve()
    nb = source.read_notebook(Path(notebook))
    values = source.parse_params(list(params or ()), list(yaml_params or ()))
    source.check_params(nb, values, str(notebook))
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if timezone and not schedule:
        raise ConfigError("--timezone is the schedule's: give --schedule too")
    sched = Schedule(schedule, timezone) if schedule else None
    if isinstance(compute, str):
        spec: ComputeSpec | None = source.compute_from_option(compute)
    else:
        spec = compute if compute is not None else source.compute_of(nb)
    job_name = check_job_name(name or _default_name(path))
    if backend == "kubernetes":
        return _export_kubernetes(path, nb, job_name, values, sched, spec, replace=replace,
                                  **(kubernetes or {}))
    crontab = Crontab() if sched is not None else None
    if crontab is not None:
        crontab.check_writable()
    taken = _taken(job_name)
    if taken and not replace:
        raise ConfigError(f"the name {job_name!r} is taken ({taken}): pass --name, --replace "
                          f"to replace it, or kt jobs rm {job_name} first")
    job = JobRecord(name=job_name, notebook=str(path), cwd=str(path.parent), parameters=values,
                    schedule=schedule, timezone=timezone, backend=backend,
                    compute=spec.to_json() if spec is not None else None, created=time.time(),
                    env={k: os.environ[k] for k in _CARRIED if os.environ.get(k)})
    source.set_compute(nb, spec)
    if replace:
        _retire_cluster_objects(job_name, None)
    _write(job, nb, crontab, sched)
    return job


def _retire_cluster_objects(name: str, now_in: str | None) -> None:
    """Delete a replaced Kubernetes job's objects, unless the new job has them.

    ``now_in`` is the new job's namespace (None: a local job). The old runs' claim
    stays, as ``kt jobs rm`` leaves it.

    Raises:
        ConfigError: When the cluster it was applied to cannot be asked.
    """
    try:
        old = JobRecord.load(name)
    except ConfigError:
        return
    if old.backend != "kubernetes" or not old.cluster or not old.namespace:
        return
    if now_in == old.namespace and old.username == str(config.get("username")):
        return
    from . import cluster as _cluster

    try:
        target = _cluster.connect(old.namespace)
        _cluster.remove_job_objects(target, name, old.namespace, username=old.username or "")
    except ConfigError as exc:
        raise ConfigError(f"job {name!r} being replaced has its CronJob in namespace "
                          f"{old.namespace!r}, which cannot be removed ({exc})") from None


def _export_kubernetes(path: Path, nb: Any, name: str, values: dict[str, Any],
                       sched: Schedule | None, spec: ComputeSpec | None, *, replace: bool,
                       namespace: str | None = None, runs_claim: str | None = None,
                       runs_size: str = "1Gi", apply: bool = True) -> JobRecord:
    """Render the job's objects, apply them (unless not ``apply``), write the job.

    The job's folder gets ``manifests.yaml`` beside ``job.json``.

    Rendering checks everything first and the cluster's configuration is loaded before
    anything is applied: nothing is written or created when either fails; an apply that
    fails removes what it created (see :mod:`.cluster`), and so does a failed write.
    """
    import yaml

    from . import kubernetes

    spec = spec or ComputeSpec(name=name, backend="kubernetes")
    if (jobs_dir() / name / "job.json").is_file() and not replace:
        raise ConfigError(f"the name {name!r} is taken (a job of that name exists): pass "
                          f"--name, --replace to replace it, or kt jobs rm {name} first")
    username = str(config.get("username"))
    ns = kubernetes.namespace_of(spec, namespace, str(config.get("namespace") or "default"))
    job = JobRecord(name=name, notebook=str(path), cwd=str(path.parent), parameters=values,
                    schedule=sched.expression if sched else None,
                    timezone=sched.timezone if sched else None, backend="kubernetes",
                    compute=spec.to_json(), created=time.time(), namespace=ns,
                    username=username)
    source.set_compute(nb, spec)

    def render() -> list[dict[str, Any]]:
        return kubernetes.render_job(job, nb, username=username, namespace=str(job.namespace),
                                     runs_claim=runs_claim, runs_size=runs_size)

    objects = render()  # every check of the input, before the cluster is asked
    target = None
    if apply:
        from . import cluster as _cluster

        target = _cluster.connect(hint="or pass --dry-run to only write the manifests")
        where = kubernetes.namespace_of(spec, namespace, target.namespace)
        if where != ns:  # the kubeconfig context's namespace
            job.namespace = ns = where
            objects = render()
        _cluster.apply_job(target, objects, ns)
        job.cluster = target.host
    job.cronjob = str(objects[-1]["metadata"]["name"])
    try:
        if replace and target is not None:  # (--dry-run touches no cluster)
            _retire_cluster_objects(name, ns)
        _write(job, nb, None, None, extra={"manifests.yaml": yaml.safe_dump_all(
            objects, sort_keys=False, width=1000)})
    except BaseException:
        if target is not None:
            _cluster.remove_job_objects(target, name, ns, username=username,
                                        purge=runs_claim is None and not replace)
        raise
    return job


def _write(job: JobRecord, nb: Any, crontab: Crontab | None, sched: Schedule | None, *,
           extra: dict[str, str] | None = None) -> None:
    """Write the job's folder, then its crontab line; on failure, undo the folder."""
    folder = job.folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{job.name}."))
    backup = None
    try:
        nbformat.write(nb, staging / "notebook.ipynb")
        if sched is not None and crontab is not None:
            job.crontab_line = crontab.render(job.name, sched.machine_fields(), cron_command(job))
        folder.mkdir(exist_ok=True)
        for file in ("job.json", "notebook.ipynb"):
            if (folder / file).exists():
                backup = backup or Path(tempfile.mkdtemp(dir=folder.parent, prefix=".old."))
                os.replace(folder / file, backup / file)
        os.replace(staging / "notebook.ipynb", folder / "notebook.ipynb")
        for file, text in (extra or {}).items():
            (folder / file).write_text(text)
        job.save()
        if sched is not None and crontab is not None:
            crontab.install(job.name, sched.machine_fields(), cron_command(job))
        elif _has_line(job.name):  # replaced by a job run by hand, or in a cluster
            Crontab().remove(job.name)
    except BaseException:
        for file in ("job.json", "notebook.ipynb", *(extra or {})):
            (folder / file).unlink(missing_ok=True)
            if backup is not None and (backup / file).exists():
                os.replace(backup / file, folder / file)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: runs of an earlier job of this name stay
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def _has_line(name: str) -> bool:
    try:
        return Crontab().find(name) is not None
    except ConfigError:  # no crontab command: there is no line either
        return False


def remove_job(name: str, *, purge: bool = False) -> list[str]:
    """Remove job ``name``: its crontab line, its record (and with ``purge`` its runs).

    A crontab line marked with the name is removed even when its job folder is gone.
    Returns what was removed, for the message.

    Raises:
        ConfigError: When there is neither a job nor a line of that name.
    """
    check_job_name(name)
    removed = []
    if _has_line(name) and Crontab().remove(name):
        removed.append(f"the line in {Crontab().where}")
    if (jobs_dir() / name / "job.json").is_file():
        job = JobRecord.load(name)
        count = len(job.runs())
        job.remove(purge=purge)
        runs = f"{count} run{'s' if count != 1 else ''}"
        removed.append("the job" + (f" and its {runs}" if purge and count else
                                    f" (its {runs} kept; --purge removes them)" if count
                                    else ""))
    if not removed:
        JobRecord.load(name)  # raises: no such job, naming the jobs there are
    return removed
