"""``pytest --nbval notebooks``: the example notebooks run against the local backend.

Their kernels get a state directory of their own (``KT_STATE_DIR``), so they neither
see nor leave pods in yours; every pod started there is stopped when the session ends,
even when a notebook failed before its own teardown cell.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_STATE_ENV = "KT_STATE_DIR"
_saved: dict[str, str | None] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Point the kernels nbval starts at a fresh state dir (and crontab file), no progress bars."""
    for name in (_STATE_ENV, "KT_PROGRESS", "KT_CRONTAB_FILE"):
        _saved[name] = os.environ.get(name)
    os.environ[_STATE_ENV] = tempfile.mkdtemp(prefix="kt-notebooks-")
    os.environ["KT_PROGRESS"] = "0"
    # export.ipynb schedules a job: into a file of the session's, never your crontab
    os.environ["KT_CRONTAB_FILE"] = os.path.join(os.environ[_STATE_ENV], "crontab")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the pods the notebooks left running and restore the environment."""
    from kubetorch_jupyter.backends.local.backend import LocalBackend

    state = os.environ.get(_STATE_ENV)
    if state and state.startswith(tempfile.gettempdir()):
        backend = LocalBackend(state)
        for pod in backend.list():
            backend.down(pod.name)
        shutil.rmtree(state, ignore_errors=True)
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
