"""``%kt export``: export the notebook this kernel runs, as it is saved.

The kernel cannot save the notebook (the browser holds the edits) and cannot see the
browser's unsaved edits either. What it can see is what it ran: when cells this kernel
executed are not in the saved file, the export says so (they are edits not saved yet,
or cells deleted since) and exports the saved file all the same. An edit that was
neither saved nor run is invisible from here.

Which notebook: the path given, else the one Jupyter told the kernel about
(``__session__``, from ``JPY_SESSION_NAME``). The job's compute: ``--compute``, else the
notebook's ``metadata.kubetorch.compute``, else this kernel's current compute (the one
``%kt use`` chose, or the last a ``%%kt`` cell named): the kernel cannot write the open
notebook's metadata, so ``%kt use`` reaches the job this way.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..cli.jobs import describe_export, kubernetes_options
from ..cli.jobs import require as require_jobs_extra
from ..core.compute import Compute
from ..exceptions import ConfigError
from . import source

__all__ = ["export_from_kernel", "unsaved_cells"]


def notebook_path(shell: Any, given: str | None) -> Path:
    """The notebook to export: ``given``, else the one this kernel runs.

    Raises:
        ConfigError: When neither is known.
    """
    if given:
        return Path(given).expanduser()
    session = shell.user_ns.get("__session__") or os.environ.get("JPY_SESSION_NAME")
    if session and str(session).endswith(".ipynb"):
        return Path(str(session))
    raise ConfigError("which notebook? This kernel was not told its notebook's path; give "
                      "it: %kt export path/to/notebook.ipynb --schedule '0 3 * * *'")


def unsaved_cells(shell: Any, path: Path) -> int:
    """How many cells this kernel ran that the saved notebook at ``path`` does not hold."""
    try:
        saved = {c.source.strip() for c in source.read_notebook(path).cells}
    except ConfigError:
        return 0
    history = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None)
    ran = [str(s).strip() for s in (history or [])[1:]]  # as typed, magics untransformed
    return sum(1 for s in ran if s and not s.startswith("%kt export") and s not in saved)


def _unquote(value: Any) -> Any:
    """IPython's line parser keeps quotes (``'0 3 * * *'``): take them off, as a shell would."""
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def export_from_kernel(shell: Any, args: argparse.Namespace, current: Compute | None) -> str:
    """Export this kernel's notebook with ``%kt export``'s ``args``; return what to print."""
    require_jobs_extra()
    from . import export

    args = argparse.Namespace(**{k: _unquote(v) for k, v in vars(args).items()})
    path = notebook_path(shell, args.notebook)
    compute: Any = args.compute
    note = []
    if compute is None and path.is_file() and source.compute_of(source.read_notebook(path)) \
            is None and current is not None:
        compute = current.spec
        note.append(f"its compute is this kernel's current one, {current.name!r}")
    job = export.export_notebook(
        path, name=args.name, schedule=args.schedule, params=args.param,
        yaml_params=args.param_yaml, compute=compute, backend=args.backend,
        timezone=args.timezone, replace=args.replace, kubernetes=kubernetes_options(args))

    text = describe_export(job)
    missing = unsaved_cells(shell, path)
    if missing:
        text = (f"note: {missing} cell{'s' if missing != 1 else ''} this kernel ran "
                f"{'are' if missing != 1 else 'is'} not in the saved {path.name} (unsaved "
                "edits?); the job runs the file as saved: save the notebook and run "
                "%kt export --replace to include them\n" + text)
    if note:
        text += "\n" + "; ".join(note)
    return text
