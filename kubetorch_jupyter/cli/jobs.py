"""``kt export`` and ``kt jobs ...``: notebooks as scheduled jobs.

Examples::

    kt export train.ipynb --schedule "0 3 * * *" -p lr=0.1 --name nightly
    kt export train.ipynb --schedule "30 8 * * mon-fri" --timezone Europe/Paris
    kt jobs list                 # schedule in words, next run, last run and its outcome
    kt jobs run nightly          # now, in the foreground, cell by cell
    kt jobs logs nightly -f      # the latest run's progress, as it goes
    kt jobs output nightly       # the executed notebook of the latest run (--run ID)
    kt jobs rm nightly           # its crontab line and record (--purge: its runs too)
    kt export train.ipynb --schedule @daily --backend kubernetes   # a CronJob, applied
    kt export train.ipynb --schedule @daily --backend kubernetes --dry-run   # only written
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
    given: dict[str, Any] = {k: getattr(args, k) for k in ("namespace", "runs_claim",
                                                           "runs_size")
                             if getattr(args, k, None) is not None}
    if getattr(args, "dry_run", False):
        given["apply"] = False
    if given and args.backend != "kubernetes":
        flags = ", ".join("--" + ("dry-run" if k == "apply" else k.replace("_", "-"))
                          for k in given)
        raise ConfigError(f"{flags}: only for --backend kubernetes")
    return given or None


def describe_export(job: Any) -> str:
    """What ``kt export`` / ``%kt export`` print about a new job."""
    from ..jobs.schedule import Schedule

    lines = [f"exported {job.notebook} as job {job.name!r}"]
    if job.backend == "kubernetes":
        sched = Schedule(job.schedule, job.timezone)
        manifests = job.folder / "manifests.yaml"
        lines.append(f"  schedule  {job.schedule}: {sched.describe()} (in the cluster: "
                     f"CronJob {job.cronjob} in namespace {job.namespace!r})")
        if job.cluster:
            lines.append(f"  applied   to {job.cluster}: the notebook's ConfigMap, the runs' "
                         f"volume claim, the CronJob (also in {manifests})")
            lines.append(f"kt jobs run {job.name} runs it now in the cluster; kt jobs list "
                         "shows its runs; kt jobs rm removes it")
            return "\n".join(lines)
        lines.append(f"  objects   {manifests}: the notebook's ConfigMap, the runs' volume "
                     "claim, the CronJob (not applied: --dry-run)")
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
    notes: list[str] = []
    now = time.time()
    clusters: dict[str, Any] = {}
    for name in names:
        job = JobRecord.load(name)
        runs = job.runs()
        last = runs[-1] if runs else None
        if job.backend == "kubernetes":
            sched = Schedule(job.schedule or "@daily", job.timezone)
            when, nxt = sched.describe(), _when(sched.next_run()) + " in the cluster"
            last_run, outcome = _kubernetes_row(job, clusters, notes)
            rows.append([name, job.schedule or "-", when, nxt, last_run, outcome])
            continue
        if job.schedule:
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
        rows.append([name, job.schedule or "-", when, nxt,
                     f"{age(now - last.start)} ago" if last else "never", outcome])
    for name in sorted(set(lines) - set(names)):
        rows.append([name, lines[name].fields, "-", "-", "-", "no job record"])
        notes.append(f"{name}: a crontab line without its job; kt jobs rm {name} removes it")
    print(table(rows))
    for note in notes:
        print(note)
    return 0


def _ago(stamp: str) -> str:
    from ..jobs.cluster import age_of

    seconds = age_of(stamp)
    return f"{age(max(seconds, 0))} ago" if seconds is not None else "never"


def _kubernetes_row(job: Any, clusters: dict[str, Any], notes: list[str]) -> tuple[str, str]:
    """LAST RUN and OUTCOME of a Kubernetes job, from its CronJob (a note says more)."""
    from ..jobs import cluster as _cluster

    if not job.cluster:
        notes.append(f"{job.name}: not applied (--dry-run): kubectl apply -f "
                     f"{job.folder / 'manifests.yaml'}")
        return "-", "not applied"
    try:
        if job.namespace not in clusters:
            clusters[job.namespace] = _cluster.connect(job.namespace)
        state = _cluster.cronjob_state(clusters[job.namespace], job.cronjob, job.name,
                                       job.namespace, username=job.username or "")
    except ConfigError as exc:
        notes.append(f"{job.name}: {exc}")
        return "?", "cluster not reachable"
    if not state.exists:
        notes.append(f"{job.name}: its CronJob {job.cronjob} is gone from namespace "
                     f"{job.namespace!r}; kt export --replace applies it again")
        return "-", "no CronJob"
    active = f", {len(state.active)} active" if state.active else ""
    notes.append(f"{job.name}: cronjob/{job.cronjob} in {job.namespace}: last scheduled "
                 f"{_ago(state.last_schedule)}{active}, last succeeded "
                 f"{_ago(state.last_success)}" + (", suspended" if state.suspended else ""))
    if not state.latest_job:
        return "never", "-"
    outcome = _OUTCOME_MARK.get(state.latest_outcome, state.latest_outcome)
    return _ago(state.latest_start), f"{outcome} ({state.latest_job})"


def _cmd_run(args: argparse.Namespace) -> int:
    require()
    from ..core.names import pod_name
    from ..jobs.runner import run_job
    from ..jobs.store import JobRecord

    job = JobRecord.load(args.name)
    if job.backend == "kubernetes" and not args.scheduled and not args.here:
        from ..jobs import cluster as _cluster

        target = _cluster.connect(job.namespace, hint=f"or kt jobs run {job.name} --here "
                                  "runs it on this machine")
        try:
            return _cluster.run_now(target, job.cronjob or pod_name(args.name),
                                    job.namespace or target.namespace)
        except KeyboardInterrupt:
            print(f"stopped following; the run goes on in the cluster (kubectl get jobs -n "
                  f"{job.namespace} -l kubetorch.dev/job={job.name})", file=sys.stderr)
            return 130
    trigger = (args.trigger or "schedule") if args.scheduled else "manual"
    # (in a CronJob's pod the progress is the pod's log: kubectl logs, kt jobs run follow it)
    echo = sys.stdout if not args.scheduled or job.backend == "kubernetes" else None
    return run_job(args.name, trigger=trigger, echo=echo)


def _cmd_logs(args: argparse.Namespace) -> int:
    require()
    from ..jobs.store import JobRecord, RunRecord

    job = JobRecord.load(args.name)
    if job.backend == "kubernetes" and not job.runs():  # (its runs are on its claim)
        from ..jobs import cluster as _cluster

        if args.run:
            raise ConfigError(f"job {args.name!r} runs in the cluster: its runs' records are "
                              "on its claim; kt jobs logs shows the latest Job's pod log")
        target = _cluster.connect(job.namespace)
        try:
            return _cluster.latest_log(target, job.name, str(job.namespace),
                                       username=job.username or "", follow=args.follow)
        except KeyboardInterrupt:
            return 0
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

    job = JobRecord.load(args.name)
    if job.backend == "kubernetes" and not job.runs():
        raise ConfigError(f"job {args.name!r} runs in the cluster: its executed notebooks are "
                          f"on its runs' claim ({job.cronjob}-runs unless --runs-claim named "
                          f"one), under jobs/{job.name}/runs/RUN_ID/output.ipynb (kubectl cp "
                          "from a pod that mounts it)")
    run = job.run(args.run)
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
    from ..jobs.store import JobRecord, check_job_name

    check_job_name(args.name)
    notes = []
    try:
        job: Any = JobRecord.load(args.name)
    except ConfigError:
        job = None
    if job is not None and job.backend == "kubernetes":
        notes = _remove_from_cluster(job, purge=args.purge)
    removed = remove_job(args.name, purge=args.purge)
    print(f"removed job {args.name!r}: {' and '.join([*notes, *removed])}")
    return 0


def _remove_from_cluster(job: Any, *, purge: bool) -> list[str]:
    """Delete a Kubernetes job's objects; what to say about them.

    Raises:
        ConfigError: When the cluster it was applied to cannot be reached (the record
            stays, so the command can be run again).
    """
    from ..backends.kubernetes import identity
    from ..jobs import cluster as _cluster

    selector = f"{identity.JOB_LABEL}={job.name}"
    try:
        target = _cluster.connect(job.namespace)
        deleted = _cluster.remove_job_objects(target, job.name, job.namespace,
                                              username=job.username or "", purge=purge)
        kept = [] if purge else _cluster.kept_claims(target, job.name, job.namespace,
                                                     username=job.username or "")
    except ConfigError as exc:
        if job.cluster:
            raise ConfigError(f"{exc} (job {job.name!r} is kept: run kt jobs rm again once "
                              "the cluster answers)") from None
        return [f"its objects, if you applied them, stay (kubectl delete -n {job.namespace} "
                f"cronjob,job,configmap,pvc -l {selector})"]
    what = f"{', '.join(deleted)} in namespace {job.namespace}" if deleted else (
        f"nothing in namespace {job.namespace} (its objects were gone)")
    if kept:
        what += f" (its runs' claim {', '.join(kept)} kept; --purge deletes it)"
    return [what]


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
    k8s.add_argument("--dry-run", "--no-apply", dest="dry_run", action="store_true",
                     help="only write the objects to the job's manifests.yaml (default: apply "
                          "them to the cluster of KT_KUBECONFIG / KT_KUBE_CONTEXT)")


def add_parsers(sub: Any) -> None:
    """Add ``export`` and ``jobs`` to the ``kt`` command's subparsers."""
    p = sub.add_parser("export", help="make a notebook a (scheduled) job")
    add_export_arguments(p)
    p.set_defaults(func=_cmd_export)

    jobs = sub.add_parser("jobs", help="list, run, follow and remove exported notebooks")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    q = jsub.add_parser("list", help="jobs, their schedules, next and last runs")
    q.set_defaults(func=_cmd_list)
    q = jsub.add_parser("run", help="run a job now, in the foreground (a Kubernetes job: a Job "
                                    "from its CronJob, its log followed)")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--scheduled", action="store_true", help=argparse.SUPPRESS)
    q.add_argument("--trigger", choices=["schedule", "manual"], help=argparse.SUPPRESS)
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
    q = jsub.add_parser("rm", help="remove a job: its crontab line or its cluster objects")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--purge", action="store_true",
                   help="its runs' outputs too (a Kubernetes job: its runs' claim)")
    q.set_defaults(func=_cmd_rm)
