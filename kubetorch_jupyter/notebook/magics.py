"""The notebook magics: ``%%kt`` runs a cell on a warm pod, ``%kt`` manages pods, ``%autokt``.

Load them with ``%load_ext kubetorch_jupyter``; ``%%kt?``, ``%kt?`` and ``%autokt?``
show usage with examples. Every flag is parsed by argparse (a bad one is a one-line
``UsageError``, never a traceback); variables named by flags are looked up in the
notebook's namespace, never evaluated.

The notebook's *current compute*, used by a ``%%kt`` cell without compute flags, is the
one ``%kt use`` chose; until then, the last one a ``%%kt`` cell named; else the compute
called ``default``.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .. import config
from ..backends import get_backend
from ..calls.retry import grow, run_with_oom_retry
from ..core.compute import Compute
from ..core.image import Image
from ..core.resources import format_bytes, parse_duration
from ..exceptions import ComputeNotFoundError, ConfigError
from ..jobs import in_kernel as _job
from ..manager import ComputeManager
from ..manager.table import age as _age
from ..manager.table import log_text, parse_call_id, render
from ..manager.table import table as _table
from . import cells as _cells
from .cell_errors import boot_id, cell_count, explain
from .magic_args import (
    RESOURCE_ARGS,
    RETRY_ARGS,
    TARGET_ARGS,
    group,
    line_parser,
    retry_attempts,
    strip_comment,
    variable_names,
)

__all__ = ["KtMagics", "load_ipython_extension", "unload_ipython_extension"]

_OWN_MAGIC = re.compile(r"^\s*%{1,2}(kt|autokt)\b")


#: Seconds `%kt status` waits for a pod to say what it runs.
_STATUS_WAIT = 5.0
#: How `%kt runs` names who follows a run.
_CLIENT = {"this": "this kernel", "other": "another kernel", "detached": "detached",
           "gone": "orphaned (its kernel is gone)"}

#: The columns of `%kt list` (after the * of the current compute).
LIST_COLUMNS = ("NAME", "BACKEND", "PHASE", "REASON", "PID", "GPUS", "CPUS", "MEMORY", "AGE",
                "IDLE")


@magics_class
class KtMagics(Magics):
    """``%%kt``, ``%kt`` and ``%autokt``; one instance per IPython shell."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.computes: dict[str, Compute] = {}
        self.current: Compute | None = None
        self.pinned = False  # %kt use chose the current compute
        self.auto: Compute | None = None
        self.last_run: str | None = None  # the last run this kernel detached
        self._boots: dict[str, str | None] = {}  # compute -> boot id its last cell ran on
        self._parser = line_parser()

    @property
    def ip(self) -> Any:
        """The IPython shell these magics belong to."""
        assert self.shell is not None
        return self.shell

    # ------------------------------------------------------------------ %%kt
    @cell_magic("kt")
    @magic_arguments(name="%kt")
    @group("compute", TARGET_ARGS + RESOURCE_ARGS)
    @group("variables", [
        argument("--push", metavar="a,b", help="send these notebook variables first"),
        argument("--pull", metavar="x,y", help="bring these variables back afterwards"),
    ])
    @group("run", [
        argument("--timeout", metavar="S",
                 help="interrupt the cell after this long (90, 30s, 5m); the pod survives"),
        argument("--detach", action="store_true",
                 help="start the cell and return at once with a run id (see %%kt attach)"),
        argument("--stats", action="store_true",
                 help="print what the cell cost on the pod under its output (KT_CELL_STATS=1: "
                      "always)"),
        argument("--autokt-cell", action="store_true", help=argparse.SUPPRESS),
    ])
    @group("out of memory", RETRY_ARGS)
    def kt_cell(self, line: str, cell: str) -> Any:
        """Run this cell on a warm pod, as if it ran here.

        The cell runs in the pod's namespace, which lives as long as the pod (across
        cells and kernel restarts): imports stay loaded, variables stay set. Output,
        display() data, matplotlib figures and the value of the last expression show
        in this cell; an exception shows the remote traceback at the cell's own lines;
        interrupting the kernel interrupts the cell on the pod, which survives. Code
        that does not see interrupts (a long C call holding the GIL) is said to be:
        interrupt again to restart the pod (its state is lost), or %kt restart NAME
        later; the next cell on that pod waits for it.

        With no compute flags the cell runs on the notebook's current compute (%kt use;
        else the last compute a %%kt cell named; else "default"). Resource flags change
        the named compute; a pod running with other resources is restarted.

        A pod runs one cell at a time: a detached run holds it, and later %%kt cells on
        that pod wait for it (%kt pull and %kt push work meanwhile).

        Examples::

            %%kt --gpus 1 --memory 16Gi --name llm
            import torch
            model = load_big_model()      # stays loaded on the pod
            model                         # its repr is this cell's Out

            %%kt --name llm --push prompt --pull out
            out = model.generate(prompt)  # prompt comes from the notebook, out goes back

            %%kt --detach
            train(epochs=100)             # returns at once: %kt attach RUN_ID follows it

            %%kt --stats                  # under the output, what the cell cost on the pod:
            train(epochs=1)               # kt: 2.31 s wall · 2.05 s CPU · peak 1.2 GiB RSS
        """
        try:
            args = parse_argstring(self.kt_cell, strip_comment(line))
        except UsageError as exc:
            usage: str = self.kt_cell.parser.format_usage().replace("::\n\n  ", "usage: ").strip()
            raise UsageError(f"%%kt: {exc}\n{usage}") from None
        try:
            compute = self.auto if args.autokt_cell and self.auto else self._compute(args)
            timeout = parse_duration(args.timeout) if args.timeout else None
            push = self._values(variable_names(args.push, "--push"), "--push")
            pull = variable_names(args.pull, "--pull")
            retry = retry_attempts(args.retry_oom)
            if args.detach and retry:
                raise UsageError("--detach returns at once, so --retry-oom does not apply")
            if args.detach and (pull or timeout):
                raise UsageError("--detach returns at once, so --pull and --timeout do not "
                                 "apply; use %kt pull after %kt attach RUN_ID")
        except (ConfigError, UsageError) as exc:
            raise UsageError(f"%%kt: {exc}") from None
        if _job.runs_here(compute):  # a job's pod that is this compute: run it right here
            self._use(compute)
            return _job.run_here(self.ip, cell, cell_count(self.ip), line)
        _ = compute.pod  # started if new: one that cannot start fails before it is adopted
        self._use(compute)
        first_line = 1 if args.autokt_cell else 2  # line 1 of a %%kt cell is the magic
        filename = _cells.cell_filename(cell, cell_count(self.ip), first_line)
        if args.detach:
            run_id = _cells.start_detached(compute, cell, filename=filename,
                                           first_line=first_line, push=push)
            self.last_run = run_id
            print(f"Started run {run_id} on {compute.name!r}; it keeps running if this kernel "
                  f"restarts or the browser closes.\nFollow it (from any kernel) with:  "
                  f"%kt attach {run_id}")
            return None
        before = self._boots.get(compute.name)
        try:
            def run() -> dict[str, Any]:
                return _cells.run_cell(compute, cell, filename=filename, first_line=first_line,
                                       push=push, pull=pull, timeout=timeout,
                                       stats=args.stats or config.get("cell_stats"))

            pulled = run() if not retry else run_with_oom_retry(compute, run, grow(), retry)
        except Exception as exc:
            shown = explain(exc, compute, before)
            if shown is not exc:
                raise shown from None
            raise
        finally:
            self._boots[compute.name] = boot_id(compute) or before
        self.ip.user_ns.update(pulled)
        return None

    # ------------------------------------------------------------------- %kt
    @line_magic("kt")  # type: ignore[arg-type]  # (IPython's stub rejects a named method)
    def kt_line(self, line: str) -> None:
        """Manage the notebook's pods and move variables to and from them.

        Usage::

            %kt use NAME|VAR             cells without flags run there from now on
            %kt status [NAME]            the compute, its pod, its Python and packages
            %kt list                     running pods (* marks the current compute)
            %kt teardown [NAME ...]      stop pods (default: the current compute; --all)
            %kt logs [NAME] [-n LINES]   what the pod printed (--call ID: one call's lines)
            %kt push VAR [VAR ...]       copy notebook variables into the pod's namespace
            %kt pull VAR [VAR ...]       copy pod variables into the notebook
            %kt runs [NAME]              cell runs: queued, running, detached, orphaned
                                         (default: of every running pod)
            %kt restart [NAME]           a fresh pod process (its variables are lost):
                                         for a pod stuck in C code
            %kt attach [RUN_ID]          replay a detached run's output, stream the rest,
                                         and show its result (from any kernel; default:
                                         the last run this kernel started)
            %kt cancel [RUN_ID]          interrupt a detached run
            %kt sync [NAME]              send this directory's code to the pod
            %kt export [NB.ipynb] --schedule CRON [-p NAME=VALUE]
                                         this notebook, as saved, as a scheduled job
                                         (kt export's flags; kt jobs list shows it)

        push and pull take --name NAME or --compute VAR; status, runs and sync take
        --compute VAR. %%kt? explains cells, %autokt? running every cell on a pod.

        Examples::

            %kt use llm
            %kt push prompt temperature
            %kt pull losses
            %kt attach llm:3f9a0c2e1b7d4a55
            %kt attach                    # the run this kernel's last %%kt --detach began
            %kt teardown --all
        """
        if not line.strip():
            usage = inspect.cleandoc(self.kt_line.__doc__ or "")
            print(textwrap.dedent(usage.split("Usage::", 1)[1].split("push and pull")[0])
                  .strip() + "\n\n%kt? shows the details.")
            return
        try:
            args = self._parser.parse_argstring(line)
        except UsageError as exc:
            raise UsageError(f"%kt: {exc}\n{self._parser.format_usage()}".replace(
                "::\n\n  ", "usage: ").strip()) from None
        try:
            getattr(self, f"_cmd_{args.command}")(args)
        except (ConfigError, ComputeNotFoundError) as exc:
            raise UsageError(f"%kt {args.command}: {exc}") from None

    def _cmd_use(self, args: argparse.Namespace) -> None:
        obj = self.ip.user_ns.get(args.target)
        if isinstance(obj, Compute):
            compute = obj
        else:
            compute = self._named(args.target) or Compute(name=args.target)
        self._use(compute, pin=True)
        state = "running" if compute.is_up() else "not started yet; the next %%kt starts it"
        print(f"Cells without compute flags now run on {compute.name!r} ({state}).")

    def _cmd_status(self, args: argparse.Namespace) -> None:
        if not (args.name or args.compute) and self.current is None:
            listed = ComputeManager().list()
            print("no current compute (a %%kt cell or %kt use NAME sets one); " + (
                "running now:\n" + render(listed, LIST_COLUMNS) if listed
                else "no pods are running"))
            return
        compute = self._target(args)
        notes = [n for n, on in (("current", compute is self.current),
                                 ("%autokt on", compute is self.auto)) if on]
        lines = [f"compute {compute.name!r}" + (f" ({', '.join(notes)})" if notes else "")]
        want = [f"cpus {compute.cpus:g}" if compute.cpus else None,
                f"memory {format_bytes(compute.memory)}" if compute.memory else None,
                f"gpus {compute.gpus}" if compute.gpus else None]
        lines.append(f"  asks for  {', '.join(w for w in want if w) or 'defaults'}")
        try:
            pod = ComputeManager([compute.backend]).get(compute.name)
        except ComputeNotFoundError:
            lines.append("  pod       not running (the next %%kt starts it)")
        else:
            gpus = f", GPUs {','.join(map(str, pod.gpu_ids))}" if pod.gpu_ids else ""
            # a process that runs but does not answer: busy in C code, said as such below
            stuck = pod.phase == "running" and pod.reason == "Unresponsive"
            why = f" ({pod.reason}: {pod.message})" if pod.reason and not stuck else ""
            healthy = pod.phase == "running" and pod.reason is None
            lines.append(f"  pod       {pod.phase}{why}, pid {pod.pid}, up "
                         f"{_age(time.time() - pod.started_at)}{gpus}")
            if healthy:
                lines.append(f"  activity  {self._busy(compute.name)}")
            elif stuck:
                lines.append(f"  activity  {self._stuck(compute.name)}")
            lines.append(f"  url       {pod.url} ({pod.backend} backend)")
            if healthy:
                running = Compute.from_name(compute.name, backend=compute.backend)
                versions = running.connection().welcome.get("versions") or {}
                lines.append("  versions  " + ", ".join(
                    f"{'Python' if k == 'python' else k} {v}" for k, v in versions.items()))
        print("\n".join(lines))

    def _busy(self, name: str) -> str:
        """``busy (running cell ... for 42 s)`` for a pod running a cell, else ``idle``."""
        if _cells.busy_since(name) is not None:
            return self._stuck(name)
        running = Compute.from_name(name)
        try:
            runs = _cells.list_runs(running, timeout=_STATUS_WAIT)
        except TimeoutError:
            silent = max(_STATUS_WAIT, running.connection().unanswered_for())
            return (f"busy (not answering for {_age(silent)}: in code that does not see "
                    f"interrupts, such as a long C call holding the GIL; wait, or restart it "
                    f"and lose its state: %kt restart {name})")
        now = time.time()
        for run in runs:
            if run["state"] == "running":
                queued = sum(1 for r in runs if r["state"] == "queued")
                more = f", {queued} queued" if queued else ""
                since = _age(now - (run["started"] or run["created"]))
                return (f"busy (running cell {run['label'] or run['id']} for {since}, run "
                        f"{run['id']}{more})")
        return "idle"

    def _stuck(self, name: str) -> str:
        """The activity of a pod whose process runs but does not answer its probe."""
        since = _cells.busy_since(name)
        how = f" for {_age(since)}" if since is not None else ""
        return (f"busy (in code that does not see interrupts{how}, such as a long C call "
                f"holding the GIL: it answers nothing until that returns; wait, or restart "
                f"it and lose its state: %kt restart {name})")

    def _cmd_restart(self, args: argparse.Namespace) -> None:
        compute = self._target(args)
        _cells.restart(compute)
        print(f"restarted {compute.name!r}: a fresh pod process; its variables and imports "
              "are gone")

    def _cmd_list(self, args: argparse.Namespace) -> None:
        computes = ComputeManager().list()
        if not computes:
            print("no running pods")
            return
        print(render(computes, LIST_COLUMNS, mark=self.current.name if self.current else ""))

    def _cmd_teardown(self, args: argparse.Namespace) -> None:
        manager = ComputeManager()
        if args.all:
            names = [c.name for c in manager.list()]
        elif args.names:
            names = args.names
        elif self.current is not None:
            names = [self.current.name]
        else:
            raise UsageError("%kt teardown: no current compute; name one, or use --all")
        if not names:
            print("no running pods")
        for name in names:
            known = self.computes.get(name)
            if known is not None:
                known.teardown()  # the notebook's own object forgets its pod too
            else:
                manager.stop(name)
            print(f"tore down {name!r}")

    def _cmd_logs(self, args: argparse.Namespace) -> None:
        name = args.name or self._current().name
        if args.call:
            try:
                call = parse_call_id(args.call)
            except ValueError as exc:
                raise UsageError(f"%kt logs: {exc}") from None
            sys.stdout.write(log_text(ComputeManager().pod_logs(name, call=call, tail=args.tail)))
            return
        sys.stdout.write(ComputeManager().logs(name, tail=args.tail))

    def _cmd_push(self, args: argparse.Namespace) -> None:
        names = [n for v in args.variables for n in variable_names(v, "push")]
        _cells.vars_call(self._target(args), push=self._values(names, "push"))

    def _cmd_pull(self, args: argparse.Namespace) -> None:
        names = [n for v in args.variables for n in variable_names(v, "pull")]
        self.ip.user_ns.update(_cells.vars_call(self._target(args), pull=names))

    def _cmd_runs(self, args: argparse.Namespace) -> None:
        manager = ComputeManager()
        if args.name or args.compute:
            names = [self._target(args).name]
        else:  # every pod: after a kernel restart this is how a run is found again
            names = [c.name for c in manager.list()]
            if not names:
                print("no running pods, so no runs")
                return
        now = time.time()
        rows = [["RUN", "STATE", "SINCE", "OUTPUT", "CLIENT", "COST", "CELL"]]
        for name in names:
            for run in manager.runs(name):
                rows.append([run.id, run.state,
                             f"{_age(now - (run.started or run.created))} ago",
                             f"{run.events} events", _CLIENT.get(run.client, run.client),
                             run.cost(), run.label])
        if len(rows) == 1:
            print(f"no runs on {', '.join(map(repr, names))}")
            return
        print(_table(rows))
        if any(row[4] in (_CLIENT["gone"], _CLIENT["detached"]) for row in rows[1:]):
            print("%kt attach RUN follows a run here; %kt cancel RUN interrupts it")

    def _run_id(self, args: argparse.Namespace) -> str:
        if args.run_id:
            return str(args.run_id)
        if self.last_run is None:
            raise UsageError(f"%kt {args.command}: which run? This kernel started no detached "
                             "run; give its RUN_ID (%kt runs lists the runs of every pod)")
        return self.last_run

    def _cmd_attach(self, args: argparse.Namespace) -> None:
        try:
            pulled = _cells.attach(self._run_id(args), stats=config.get("cell_stats"))
        except _cells.Detached as exc:
            print(exc)
            return
        self.ip.user_ns.update((pulled or {}).get("pulled") or {})

    def _cmd_cancel(self, args: argparse.Namespace) -> None:
        run_id = self._run_id(args)
        _cells.cancel_run(run_id)
        print(f"interrupt sent to run {run_id}")

    def _cmd_export(self, args: argparse.Namespace) -> None:
        from ..jobs.from_kernel import export_from_kernel

        print(export_from_kernel(self.ip, args, self.current))

    def _cmd_sync(self, args: argparse.Namespace) -> None:
        try:
            from ..sync import session as sync_module
        except ImportError:
            sync_module = None  # type: ignore[assignment]
        sync = getattr(sync_module, "sync", None)
        if sync is None:
            print("code sync is not available yet")
            return
        result = sync(self._target(args))
        if result is not None:
            print(result)

    # --------------------------------------------------------------- %autokt
    @line_magic
    @magic_arguments()
    @argument("state", nargs="?", choices=["on", "off"],
              help="on: run every following cell on the pod; off: stop; none: toggle")
    @group("compute", TARGET_ARGS + RESOURCE_ARGS)
    def autokt(self, line: str) -> None:
        """Run every following cell on a pod, as if each started with %%kt.

        Cells that start with %kt, %%kt or %autokt still run here. Like ipyparallel's
        %autopx.

        Examples::

            %autokt on --name llm     # from now on, cells run on 'llm'
            %autokt off               # back to running here
        """
        try:
            args = parse_argstring(self.autokt, line)
        except UsageError as exc:
            raise UsageError(f"%autokt: {exc}") from None
        turn_on = args.state == "on" or (args.state is None and self.auto is None)
        if not turn_on:
            if args.name or args.compute:
                raise UsageError("%autokt off takes no compute")
            self.auto = None
            print("%autokt is off: cells run here.")
            return
        try:
            auto = self._compute(args)
        except ConfigError as exc:
            raise UsageError(f"%autokt: {exc}") from None
        _ = auto.pod  # started if new: it fails (clearly) before cells start going there
        self.auto = auto
        self._use(auto)
        print(f"%autokt is on: cells run on {self.auto.name!r} until %autokt off.")

    def transform(self, lines: list[str]) -> list[str]:
        """Input transformer: under %autokt, make every cell a ``%%kt`` cell."""
        first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")),
                     "")
        if self.auto is None or not lines or _OWN_MAGIC.match(first):
            return lines
        return ["%%kt --autokt-cell\n", *lines]

    # --------------------------------------------------------------- helpers
    def _named(self, name: str) -> Compute | None:
        """The compute called ``name`` this notebook used, else the running pod's."""
        if name in self.computes:
            return self.computes[name]
        job = _job.job_compute(name)  # in a job's kernel: the spec it was exported with
        if job is not None:
            return job
        try:
            return Compute.from_name(name)
        except ComputeNotFoundError:
            return None

    def _current(self) -> Compute:
        if self.current is None:
            self.current = _job.job_compute() or self._named("default") or Compute()
        return self.current

    def _use(self, compute: Compute, *, pin: bool = False) -> None:
        self.computes[compute.name] = compute
        if pin or not self.pinned:
            self.current = compute
            self.pinned = self.pinned or pin

    def _variable(self, name: str, flag: str, typ: type) -> Any:
        if name not in self.ip.user_ns:
            raise UsageError(f"{flag} {name}: the notebook has no variable {name!r}")
        value = self.ip.user_ns[name]
        if not isinstance(value, typ):
            raise UsageError(f"{flag} {name}: expected a kt.{typ.__name__}, "
                             f"got {type(value).__name__}")
        return value

    def _values(self, names: list[str], flag: str) -> dict[str, Any]:
        missing = [n for n in names if n not in self.ip.user_ns]
        if missing:
            raise UsageError(f"{flag}: the notebook has no variable "
                             f"{', '.join(map(repr, missing))}")
        return {n: self.ip.user_ns[n] for n in names}

    def _target(self, args: argparse.Namespace) -> Compute:
        """The compute a %kt command names (positional NAME, --name or --compute)."""
        if getattr(args, "compute", None):
            return self._variable(args.compute, "--compute", Compute)
        name = getattr(args, "name", None)
        if name:
            found = self._named(name)
            if found is None:
                raise ComputeNotFoundError(name, [p.name for p in get_backend().list()])
            return found
        return self._current()

    def _compute(self, args: argparse.Namespace) -> Compute:
        """The compute a %%kt cell (or %autokt) asks for; see the module docstring."""
        resources = {k: getattr(args, k) for k in ("gpus", "cpus", "memory")
                     if getattr(args, k) is not None}
        image = self._variable(args.image, "--image", Image) if args.image else None
        if args.compute:
            if args.name or resources or image:
                raise UsageError("--compute takes the compute as it is: drop --name, --gpus, "
                                 "--cpus, --memory and --image, or set them on the kt.Compute")
            compute: Compute = self._variable(args.compute, "--compute", Compute)
            return compute
        name = args.name or self._current().name
        base = self._named(name)
        if base is not None and not resources and image is None:
            return base
        return Compute(
            cpus=resources.get("cpus", base.cpus if base else None),
            memory=resources.get("memory", base.memory if base else None),
            gpus=resources.get("gpus", base.gpus if base else 0),
            image=image or (base.image if base else None),
            env=base.env if base else None,
            name=name,
            inactivity_ttl=base.inactivity_ttl if base else None,
            backend=base.backend_name if base else None,
        )


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics and the %autokt input transformer with ``ipython``."""
    if any(isinstance(m, KtMagics) for m in ipython.magics_manager.registry.values()):
        return
    magics = KtMagics(ipython)
    ipython.register_magics(magics)
    ipython.input_transformers_cleanup.append(magics.transform)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove what :func:`load_ipython_extension` registered."""
    for magics in [m for m in ipython.magics_manager.registry.values()
                   if isinstance(m, KtMagics)]:
        magics.auto = None
        if magics.transform in ipython.input_transformers_cleanup:
            ipython.input_transformers_cleanup.remove(magics.transform)
        del ipython.magics_manager.registry[type(magics).__name__]
    for kind, magic_names in (("cell", ("kt",)), ("line", ("kt", "autokt"))):
        for name in magic_names:
            ipython.magics_manager.magics[kind].pop(name, None)
