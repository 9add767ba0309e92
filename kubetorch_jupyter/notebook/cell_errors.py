"""How a ``%%kt`` cell's errors read: like a local cell's, plus what only the pod knows.

* the cell's number is its prompt's (``In[8]``), as IPython counts it while it runs;
* a syntax error shows as IPython shows a local one (file, line, caret), without the
  frames of the magic that sent it;
* a module one side lacks because the two have different versions of its package
  names both versions (:func:`..calls.versions.explain_missing`);
* a ``NameError`` on a pod that restarted since the notebook's last cell there says so:
  the variables of earlier cells went with the old pod.
"""

from __future__ import annotations

from typing import Any

from kernel_bridge import RemoteError

from ..calls import versions as _versions
from ..core import connections
from ..core.compute import Compute
from ..exceptions import KtError

__all__ = ["RemoteSyntaxError", "boot_id", "cell_count", "explain"]


def cell_count(ip: Any) -> int | None:
    """The prompt number of the cell IPython is running (``In[N]``).

    IPython counts ``execution_count`` up before it runs a cell that is stored in the
    history, so during the cell it is one ahead of the prompt; the running cell's own
    number is on its ExecutionResult.
    """
    result = getattr(getattr(ip, "displayhook", None), "exec_result", None)
    count = getattr(result, "execution_count", None)
    if isinstance(count, int):
        return count
    count = getattr(ip, "execution_count", None)
    return count if isinstance(count, int) else None


class RemoteSyntaxError(KtError):
    """A ``%%kt`` cell that does not parse on the pod; shown as IPython shows a local one.

    Attributes:
        error: The pod's SyntaxError (also a :class:`RemoteError`).
    """

    def __init__(self, error: SyntaxError) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error

    def _render_traceback_(self) -> list[str]:
        """IPython hook: the shell's own rendering of a syntax error: file, line, caret."""
        from IPython.core.interactiveshell import InteractiveShell

        if not InteractiveShell.initialized():
            return [str(self)]
        shell = InteractiveShell.instance()
        notes = getattr(self.error, "__notes__", None)
        if notes is not None:  # the remote traceback's note would show it twice
            self.error.__notes__ = [n for n in notes if not n.lstrip().startswith("Remote ")]
        try:
            rendered: list[str] = shell.SyntaxTB.structured_traceback(
                SyntaxError, self.error, None)  # no frames: none of them is the user's
        finally:
            if notes is not None:
                self.error.__notes__ = notes
        return rendered


def boot_id(compute: Compute) -> str | None:
    """The boot id of the pod process ``compute`` is connected to now (no I/O)."""
    info = compute._info
    if info is None:
        return None
    conn = connections.live(compute.backend, info)
    if conn is None:
        return None
    return str(conn.welcome.get("boot_id") or "") or None


def explain(exc: BaseException, compute: Compute, before: str | None) -> BaseException:
    """The exception to show for a failed ``%%kt`` cell (``exc`` itself, or a clearer one).

    Args:
        exc: What the cell raised.
        compute: Where it ran.
        before: The boot id of the pod this notebook's previous cell ran on (None: none).
    """
    if isinstance(exc, SyntaxError) and isinstance(exc, RemoteError):
        return RemoteSyntaxError(exc)
    info = compute._info
    mismatch = _versions.explain_missing(
        exc, connections.live(compute.backend, info) if info is not None else None)
    if mismatch is not exc:
        return mismatch
    now = boot_id(compute)
    if isinstance(exc, NameError) and before is not None and now is not None and now != before:
        exc.add_note(
            f"(pod {compute.name!r} restarted since the previous cell ran there: the state "
            "of the old one (imports, globals, instances) is lost; run the cells that "
            "define what this one uses again)")
    return exc
