"""The papermill engine a run uses: papermill's nbclient engine, plus a progress log.

papermill runs the notebook (parameters injected after the ``parameters`` cell, the
output notebook saved after every cell, execution stopping at the first failing cell
with its traceback kept). This engine adds one thing: every cell's start, its output
and its end go to a :class:`Progress` as they happen, which writes ``progress.log``
(what ``kt jobs logs -f`` follows) and, for ``kt jobs run``, the terminal.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.log import logger

__all__ = ["ENGINE", "Progress"]

#: The name the engine is registered under with papermill.
ENGINE = "kubetorch"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Progress:
    """Lines about a run, appended to its log (and echoed) as they happen."""

    def __init__(self, path: Path, echo: IO[str] | None = None) -> None:
        self.path = path
        self.echo = echo
        self._file = path.open("a", buffering=1)
        self._lock = threading.Lock()
        self._at_line_start = True

    def write(self, text: str) -> None:
        """Append ``text`` (cell output, any length) as it came."""
        if not text:
            return
        text = _ANSI.sub("", text)
        with self._lock:
            self._file.write(text)
            self._file.flush()
            self._at_line_start = text.endswith("\n")
            if self.echo is not None:
                self.echo.write(text)
                self.echo.flush()

    def flush(self) -> None:
        """Nothing is buffered (for papermill's stdout_file protocol)."""

    def note(self, line: str) -> None:
        """One line of the run's own (``[12:03:01] cell 3/9: ...``)."""
        stamp = time.strftime("%H:%M:%S")
        self.write(("" if self._at_line_start else "\n") + f"[{stamp}] {line}\n")

    def close(self) -> None:
        """Close the log file."""
        self._file.close()


def _first_line(source: str) -> str:
    return next((ln.strip() for ln in source.splitlines() if ln.strip()), "")[:80]


class _Manager(NotebookExecutionManager):  # type: ignore[misc]
    """papermill's bookkeeping, telling :class:`Progress` where the run is."""

    progress: Progress

    def cell_start(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
        super().cell_start(cell, cell_index, **kwargs)
        if cell.get("cell_type") == "code" and cell_index is not None:
            tags = cell.get("metadata", {}).get("tags", [])
            what = (" (injected parameters)" if "injected-parameters" in tags else
                    " (skipped: tagged skip-execution)" if "skip-execution" in tags else "")
            self.progress.note(f"cell {cell_index + 1}/{len(self.nb.cells)}{what}: "
                               f"{_first_line(cell.source) or '(empty)'}")

    def cell_exception(self, cell: Any, cell_index: int | None = None, **kwargs: Any) -> None:
        super().cell_exception(cell, cell_index, **kwargs)
        error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"),
                     None)
        if error is not None and cell_index is not None:
            self.progress.note(f"cell {cell_index + 1} failed: {error.get('ename')}: "
                               f"{error.get('evalue')}")


class _Client(PapermillNotebookClient):  # type: ignore[misc]
    """nbclient's client; every output also goes to the progress log."""

    def log_output_message(self, output: Any) -> None:
        progress: Progress = self.nb_man.progress
        kind = output.get("output_type")
        if kind == "stream":
            progress.write("".join(output.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            if "text/plain" in data:
                text = "".join(data["text/plain"])
                progress.write(text if text.endswith("\n") else text + "\n")
        elif kind == "error":
            progress.write("\n".join(output.get("traceback", [])) + "\n")

    def create_kernel_manager(self) -> Any:
        """The kernel talks over Unix sockets (ipc), not loopback TCP: only this user's."""
        km = super().create_kernel_manager()
        km.transport = "ipc"
        # a short folder: socket paths are limited to about 100 characters
        self._ipc_dir: str | None = tempfile.mkdtemp(prefix="kt-job-")
        km.ip = os.path.join(self._ipc_dir, "k")
        return km

    def execute(self, **kwargs: Any) -> Any:
        self._ipc_dir = None
        try:
            return super().execute(**kwargs)
        finally:
            if self._ipc_dir is not None:
                shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def process_message(self, *args: Any, **kwargs: Any) -> Any:
        output = super(PapermillNotebookClient, self).process_message(*args, **kwargs)
        self.nb_man.autosave_cell()
        if output:
            self.log_output_message(output)
        return output


class KtEngine(NBClientEngine):  # type: ignore[misc]
    """papermill's nbclient engine with a progress log (``progress=`` keyword)."""

    @classmethod
    def execute_notebook(cls, nb: Any, kernel_name: str, output_path: str | None = None,
                         progress_bar: bool = False, log_output: bool = False,
                         autosave_cell_every: int = 30, **kwargs: Any) -> Any:
        progress: Progress = kwargs.pop("progress")
        nb_man = _Manager(nb, output_path=output_path, progress_bar=False,
                          log_output=False, autosave_cell_every=autosave_cell_every)
        nb_man.progress = progress
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, start_timeout: int = 60,
                                 execution_timeout: int | None = None, **kwargs: Any) -> Any:
        client = _Client(nb_man, timeout=execution_timeout, startup_timeout=start_timeout,
                         kernel_name=kernel_name, log=logger)
        return client.execute()


papermill_engines.register(ENGINE, KtEngine)
