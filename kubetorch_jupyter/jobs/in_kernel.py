"""``%%kt`` cells inside a job: what the magics ask when a notebook runs as a job.

Two variables (rows of the settings table) tell a job's kernel where it is:

- ``KT_JOB_SPEC``: the job's compute spec (JSON), set by every run. A ``%%kt`` cell
  that names that compute (``--name trainer``), or names none, gets this spec, so the
  job's pod has the GPUs, memory and image the job was exported with. On the local
  backend that pod is a process on this machine, reached as usual.
- ``KT_JOB_COMPUTE=NAME``: the kernel itself runs on compute ``NAME`` (a Kubernetes
  CronJob's pod *is* the job's compute). A ``%%kt`` cell for that compute runs in the
  kernel, in its namespace: the same output, value, display data and traceback as on
  a pod, with no second pod. ``--push`` and ``--pull`` have nothing to move there.
  Cells for other computes reach their pods as usual.
"""

from __future__ import annotations

import ast
import json
import linecache
from typing import Any

from .. import config
from ..core.compute import Compute
from ..core.spec import ComputeSpec
from ..exceptions import ConfigError

__all__ = ["job_compute", "run_here", "runs_here"]


def _spec() -> ComputeSpec | None:
    raw = config.get("job_spec")
    if not raw:
        return None
    try:
        return ComputeSpec.from_json(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"KT_JOB_SPEC is not a compute spec ({exc})") from None


def job_compute(name: str | None = None) -> Compute | None:
    """The job's compute (``KT_JOB_SPEC``), if ``name`` is its name (None: any name)."""
    spec = _spec()
    if spec is None or (name is not None and spec.name != name):
        return None
    return Compute.from_spec(spec)


def runs_here(compute: Compute) -> bool:
    """Whether this kernel runs on ``compute`` (``KT_JOB_COMPUTE`` names it)."""
    return bool(compute.name == config.get("job_compute"))


def run_here(shell: Any, cell: str, count: int | None = None, line: str = "") -> Any:
    """Run ``cell`` in ``shell``'s own namespace; return its last expression's value.

    IPython syntax (``!cmd``, ``%magic``) is transformed as in any cell; the source is
    registered under the cell's number (``count``, ``In[N]``) so a traceback shows the
    cell's own lines (``line``: the ``%%kt`` line's arguments, its line 1). An exception
    propagates to the cell, shown as IPython shows an error of a plain cell: from the
    cell's first frame, none of ours.
    """
    source = "\n" + shell.transform_cell(cell)  # line 1 of the notebook cell is the %%kt
    filename = shell.compile.cache(source, count if count is not None else
                                   shell.execution_count, raw_code="\n" + cell)
    shown_text = f"%%kt {line}".rstrip() + "\n" + cell
    linecache.cache[filename] = (len(shown_text), None, shown_text.splitlines(True), filename)
    tree = ast.parse(source, filename=filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    namespace = shell.user_ns
    try:
        if tree.body:
            exec(compile(tree, filename, "exec"), namespace)
        if last is None:
            return None
        return eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
    except Exception as exc:
        user_tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        shown = shell.InteractiveTB.structured_traceback(type(exc), exc, user_tb)
        exc._render_traceback_ = lambda: shown  # type: ignore[attr-defined]
        raise
