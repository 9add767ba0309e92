"""``kt export`` and ``kt jobs ...``: notebooks as scheduled jobs.

Examples::

    kt export train.ipynb --schedule "0 3 * * *" -p lr=0.1 --name nightly
    kt export train.ipynb --schedule "30 8 * * mon-fri" --timezone Europe/Paris
    kt jobs list                 # schedule in words, next run, last run and its outcome
    kt jobs run nightly          # now, in the foreground, cell by cell
    kt jobs logs nightly -f      # the latest run's progress, as it goes
    kt jobs output nightly       # the executed notebook of the latest run (--run ID)
    kt jobs rm nightly           # its crontab line and record (--purge: its runs too)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import datetime
from typing import Any

from ..exceptions import ConfigError
from ..manager.table import age, table

__all__ = ["add_parsers"]

_OUTCOME_MARK = {"succeeded": "ok", "failed": "FAILED", "interrupted": "interrupted",
                 "lost": "lost (its process died)", "running": "running"}


#: What ``kt export`` and ``kt jobs`` import, from the ``jobs`` extra.
_NEEDS = ("papermill", "crontab", "croniter", "cron_descriptor", "yaml")


def require() -> None:
    """Say how to install the jobs extra when it is missing (instead of a traceback)."""
    import importlib.util

    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"kt export and kt jobs need {', '.join(missing)}: pip install "
                          "'kubetorch-jupyter[jobs]'")


def _when(moment: datetime) -> str:
    now = datetime.now(moment.tzinfo)
    return f"{moment:%Y-%m-%d %H:%M %Z}".strip() + f" (in {age((moment - now).total_seconds())})"


def _cmd_export(args: argparse.Namespace) -> int:
    require()
    from ..jobs import export

    job = export.export_notebook(
        args.notebook, name=args.name, schedule=args.schedule, params=args.param,
        yaml_params=args.param_yaml, compute=args.compute, backend=args.backend,
        timezone=args.timezone, replace=args.replace, kubernetes=kubernetes_options(args))
    print(describe_export(job))
    return 0


def kubernetes_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--namespace``, ``--runs-claim``, ``--runs-size`` (for ``--backend kubernetes``).

    Raises:
        ConfigError: When they are given for a local job.
    """
    given = {k: getattr(args, k) for k in ("namespace", "runs_claim", "runs_size")
             if getattr(args, k, None) is not None}
    if given and args.backend != "kubernetes":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags}: only for --backend kubernetes")
    return given or None


def describe_export(job: Any) -> str:
    """What ``kt export`` / ``%kt export`` print about a new job."""
    from ..jobs.schedule import Schedule

    lines = [f"exported {job.notebook} as job {job.name!r}"]
    if job.backend == "kubernetes":
        sched = Schedule(job.schedule, job.timezone)
        manifests = job.folder / "manifests.yaml"
        lines.append(f"  schedule  {job.schedule}: {sched.describe()} (in the cluster: a "
                     f"CronJob in namespace {job.namespace!r})")
        lines.append(f"  objects   {manifests}: the notebook's ConfigMap, the runs' volume "
                     "claim, the CronJob")
        lines.append(f"apply them with: kubectl apply -f {manifests}")
        return "\n".join(lines)
    if job.schedule:
        sched = Schedule(job.schedule, job.timezone)
        lines.append(f"  schedule  {job.schedule}: {sched.describe()}; next run "
                     f"{_when(sched.next_run())}")
        from ..jobs.crontab import Crontab

        lines.append(f"  crontab   a line marked kubetorch-jupyter:{job.name} in "
                     f"{Crontab().where}")
    else:
        lines.append("  schedule  none: it runs when you say (kt jobs run)")
    if job.parameters:
        lines.append("  params    " + ", ".join(f"{k}={v!r}" for k, v in job.parameters.items()))
    if job.compute:
        lines.append(f"  compute   {job.compute['name']!r} (%%kt cells for it get this spec)")
    lines.append(f"  runs      {job.folder / 'runs'}")
    lines.append(f"kt jobs run {job.name} runs it now; kt jobs logs {job.name} -f follows a run")
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace) -> int:
    require()
    from ..jobs.crontab import Crontab
    from ..jobs.schedule import Schedule
    from ..jobs.store import JobRecord, all_job_names

    try:
        lines = {line.name: line for line in Crontab().lines()}
    except ConfigError:
        lines = {}
    names = all_job_names()
    if not names and not lines:
        print("no jobs (kt export NOTEBOOK --schedule '0 3 * * *' makes one)")
        return 0
    rows = [["NAME", "SCHEDULE", "WHEN", "NEXT RUN", "LAST RUN", "OUTCOME"]]
    notes = []
    now = time.time()
    for name in names:
        job = JobRecord.load(name)
        runs = job.runs()
        last = runs[-1] if runs else None
        if job.backend == "kubernetes":
            sched = Schedule(job.schedule or "@daily", job.timezone)
            when, nxt = sched.describe(), _when(sched.next_run()) + " in the cluster"
        elif job.schedule:
            sched = Schedule(job.schedule, job.timezone)
            when, nxt = sched.describe(), _when(sched.next_run())
            if name not in lines:
                nxt = "not scheduled: its crontab line is gone"
                notes.append(f"{name}: no crontab line; kt export --replace schedules it again")
        else:
            when, nxt = "by hand (kt jobs run)", "-"
        outcome = "-"
        if last is not None:
            outcome = _OUTCOME_MARK.get(last.outcome, last.outcome)
            if last.failing_cell:
                outcome += f" at cell {last.failing_cell['index'] + 1}"
        never = "see the cluster" if job.backend == "kubernetes" else "never"
        rows.append([name, job.schedule or "-", when, nxt,
                     f"{age(now - last.start)} ago" if last else never, outcome])
    for name in sorted(set(lines) - set(names)):
        rows.append([name, lines[name].fields, "-", "-", "-", "no job record"])
        notes.append(f"{name}: a crontab line without its job; kt jobs rm {name} removes it")
    print(table(rows))
    for note in notes:
        print(note)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    require()
    from ..core.names import pod_name
    from ..jobs.runner import run_job
    from ..jobs.store import JobRecord

    job = JobRecord.load(args.name)
    if job.backend == "kubernetes" and not args.scheduled and not args.here:
        raise ConfigError(
            f"job {args.name!r} runs in the cluster: kubectl create job -n {job.namespace} "
            f"--from=cronjob/{pod_name(args.name)} {pod_name(args.name)}-now starts a run there; "
            f"kt jobs run {args.name} --here runs it on this machine")
    trigger = "schedule" if args.scheduled else "manual"
    return run_job(args.name, trigger=trigger, echo=None if args.scheduled else sys.stdout)


def _cmd_logs(args: argparse.Namespace) -> int:
    require()
    from ..jobs.store import JobRecord, RunRecord

    job = JobRecord.load(args.name)
    run = job.run(args.run)
    if not args.follow:
        sys.stdout.write(run.log.read_text() if run.log.exists() else "")
        return 0
    stop = threading.Event()
    with run.log.open() as f:
        try:
            while True:
                finished = RunRecord.load(run.folder).outcome != "running"
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                    continue
                if finished:
                    break
                stop.wait(0.25)  # a file has no "appended" event in the stdlib
        except KeyboardInterrupt:
            return 0
    final = RunRecord.load(run.folder)
    return 0 if final.outcome == "succeeded" else 1


def _cmd_output(args: argparse.Namespace) -> int:
    require()
    from ..jobs.store import JobRecord

    run = JobRecord.load(args.name).run(args.run)
    if not run.output.exists():
        raise ConfigError(f"run {run.run_id} of {args.name!r} wrote no notebook (it failed "
                          f"before its first cell: kt jobs logs {args.name} --run {run.run_id})")
    print(run.output)
    if args.open:
        html = _as_html(run.output)
        import webbrowser

        if not webbrowser.open(html.as_uri()):
            print(f"no browser here; the HTML is {html}", file=sys.stderr)
    return 0


def _as_html(path: Any) -> Any:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(path))
    html = path.with_suffix(".html")
    html.write_text(body)
    return html


def _cmd_rm(args: argparse.Namespace) -> int:
    require()
    from ..jobs.export import remove_job

    removed = remove_job(args.name, purge=args.purge)
    print(f"removed job {args.name!r}: {' and '.join(removed)}")
    return 0


def add_export_arguments(p: argparse.ArgumentParser, *, notebook_optional: bool = False
                         ) -> None:
    """The flags of ``kt export`` (``%kt export`` takes the same; its notebook is optional)."""
    p.add_argument("notebook", metavar="NOTEBOOK.ipynb", nargs="?" if notebook_optional else None)
    p.add_argument("--schedule", metavar="CRON",
                   help="five cron fields ('0 3 * * *') or @daily, @hourly...; none: run by "
                        "hand with kt jobs run")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a value for the notebook's parameters cell (papermill's -p rules)")
    p.add_argument("-y", "--param-yaml", action="append", default=[], metavar="YAML",
                   help="parameters as a YAML mapping (papermill's -y)")
    p.add_argument("--compute", metavar="NAME|SPEC-JSON",
                   help="the job's compute (default: the notebook's metadata.kubetorch.compute)")
    p.add_argument("--name", metavar="NAME", help="the job's name (default: from the file)")
    p.add_argument("--backend", default="local", choices=["local", "kubernetes"],
                   help="local: the user's crontab (default); kubernetes: a CronJob")
    p.add_argument("--timezone", metavar="TZ", help="the schedule's zone, e.g. Europe/Paris")
    p.add_argument("--replace", action="store_true", help="replace a job of the same name")
    k8s = p.add_argument_group("kubernetes", "for --backend kubernetes")
    k8s.add_argument("--namespace", metavar="NS",
                     help="where the CronJob goes (default: the compute's, else 'default')")
    k8s.add_argument("--runs-claim", metavar="PVC",
                     help="an existing PersistentVolumeClaim for the runs (default: a new one)")
    k8s.add_argument("--runs-size", metavar="SIZE", help="the new claim's size (default 1Gi)")


def add_parsers(sub: Any) -> None:
    """Add ``export`` and ``jobs`` to the ``kt`` command's subparsers."""
    p = sub.add_parser("export", help="make a notebook a (scheduled) job")
    add_export_arguments(p)
    p.set_defaults(func=_cmd_export)

    jobs = sub.add_parser("jobs", help="list, run, follow and remove exported notebooks")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    q = jsub.add_parser("list", help="jobs, their schedules, next and last runs")
    q.set_defaults(func=_cmd_list)
    q = jsub.add_parser("run", help="run a job now, in the foreground")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--scheduled", action="store_true", help=argparse.SUPPRESS)
    q.add_argument("--here", action="store_true",
                   help="a Kubernetes job: run it on this machine instead")
    q.set_defaults(func=_cmd_run)
    q = jsub.add_parser("logs", help="a run's progress: cells and their output")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--run", metavar="RUN_ID", help="which run (default: the latest)")
    q.add_argument("-f", "--follow", action="store_true", help="until the run ends")
    q.set_defaults(func=_cmd_logs)
    q = jsub.add_parser("output", help="the path of a run's executed notebook")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--run", metavar="RUN_ID", help="which run (default: the latest)")
    q.add_argument("--open", action="store_true", help="as HTML, in a browser")
    q.set_defaults(func=_cmd_output)
    q = jsub.add_parser("rm", help="remove a job and its crontab line")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--purge", action="store_true", help="its runs' outputs too")
    q.set_defaults(func=_cmd_rm)
