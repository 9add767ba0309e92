"""What a user sees when a %%kt cell or a call fails: errors that read as local ones.

A real ipykernel through jupyter_client (tests/_kernel.py), real pods: the error output
of a cell is what a notebook frontend shows.
"""

from __future__ import annotations

import re
import secrets
import warnings
from pathlib import Path

import pytest
from _kernel import Cell, Kernel
from kt_testing import timeout

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.local.backend import LocalBackend
from kubetorch_jupyter.warn import user_stacklevel

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Our modules; none of them may appear in what a user sees of a cell's error.
_LIBRARY = ("magics.py", "cells.py", "calls.py", "remote.py", "interactiveshell.py")


def plain(cell: Cell) -> str:
    assert cell.error is not None, cell.messages
    return _ANSI.sub("", "\n".join(cell.error["traceback"]))


def count(cell: Cell) -> int:
    assert cell.reply is not None
    return int(cell.reply["execution_count"])



@pytest.fixture(scope="module")
def pod(kernel: Kernel) -> str:
    name = f"err-{secrets.token_hex(3)}"
    cell = kernel.run(f"%%kt --name {name}\nx = 1\n", timeout=timeout(60))
    assert cell.error is None, cell.messages
    return name


def test_a_syntax_error_shows_file_line_and_caret_only(kernel: Kernel, pod: str) -> None:
    cell = kernel.run(f"%%kt --name {pod}\ny = 2\nx = (1,\n")
    text = plain(cell)
    assert "None (<string>)" not in text
    assert f"<kt In[{count(cell)}] " in text  # the prompt's number, line 3 of the cell
    assert re.search(r"<kt In\[\d+\] \w+>:3", text), text
    assert "x = (1," in text and "^" in text
    assert "SyntaxError: '(' was never closed" in text
    assert not [lib for lib in _LIBRARY if lib in text], text
    assert text.count("was never closed") == 1, text  # not also as a note


def test_a_remote_traceback_renders_as_a_local_one(kernel: Kernel, pod: str) -> None:
    cell = kernel.run(f"%%kt --name {pod}\nclass BadInput(ValueError):\n    pass\n"
                      "def check(v):\n    raise BadInput(f'bad {v}')\ncheck(3)\n")
    assert cell.error is not None and cell.error["ename"] == "BadInput"
    text = plain(cell)
    assert "__main__.BadInput" not in text
    assert "BadInput: bad 3" in text
    n = count(cell)
    assert f"<kt In[{n}] " in text
    # IPython's formatter: the cell's lines, an arrow at the failing one, in each frame
    assert re.search(r"----> 6 check\(3\)", text), text
    assert re.search(r"----> 5\s+raise BadInput", text), text
    assert "in check" in text
    assert "\x1b[" in "".join(cell.error["traceback"])  # coloured as a local traceback
    assert not [lib for lib in _LIBRARY if lib in text], text


def test_a_cell_timeout_is_one_line(kernel: Kernel, pod: str) -> None:
    cell = kernel.run(f"%%kt --name {pod} --timeout 1\nimport time\ntime.sleep(60)\n",
                      timeout=timeout(60))
    text = plain(cell)
    assert len(text.strip().splitlines()) == 1, text
    assert "timeout" in text and "intact" in text


def test_a_pod_killed_between_cells_says_its_state_is_lost(kernel: Kernel, pod: str) -> None:
    assert kernel.run(f"%%kt --name {pod}\nweights = [1, 2]\n").error is None
    kill = kernel.run(
        "import os, signal\nfrom kubetorch_jupyter.backends import get_backend\n"
        f"_b = get_backend(); _i = _b.get({pod!r}); os.kill(_i.pid, signal.SIGKILL)\n"
        f"assert not _b.settle(_i, {timeout(20)}).alive\n")
    assert kill.error is None, kill.messages
    cell = kernel.run(f"%%kt --name {pod}\nprint(weights)\n", timeout=timeout(60))
    warning = cell.stream("stderr")
    assert f"starting a new pod {pod!r}" in warning and "is lost" in warning, cell.messages
    assert "compute.py" not in warning and "cells.py" not in warning, warning  # the cell's
    text = plain(cell)
    assert "NameError: name 'weights' is not defined" in text
    assert f"pod {pod!r} restarted" in text and "is lost" in text, text


def test_warnings_point_at_the_users_line(tmp_path: Path) -> None:
    def outer() -> int:
        return user_stacklevel()

    # called from here (a test file, not ours): the user's frame is this one
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("x", RuntimeWarning, stacklevel=outer())
    assert seen[0].filename == __file__


def test_a_restart_warning_in_a_script_names_the_scripts_line() -> None:
    compute = kt.Compute(name=f"w-{secrets.token_hex(3)}")
    remote = kt.fn(abs).to(compute)
    backend = LocalBackend()
    info = backend.get(compute.name)
    import os
    import signal

    os.kill(info.pid or 0, signal.SIGKILL)
    assert not backend.settle(info, timeout(20)).alive
    try:
        with pytest.warns(RuntimeWarning, match="is lost") as seen:
            assert remote(-2) == 2
        assert [w.filename for w in seen] == [__file__], [(w.filename, w.lineno) for w in seen]
    finally:
        compute.teardown()


def test_teardown_during_a_call_says_who_tore_the_pod_down(tmp_path: Path) -> None:
    import subprocess
    import sys

    compute = kt.Compute(name=f"td-{secrets.token_hex(3)}")

    def slow() -> None:
        import time

        print("started", flush=True)
        time.sleep(120)

    handle = kt.fn(slow).to(compute).submit()
    assert next(iter(handle.stream(timeout(30))))["text"].startswith("started")
    done = subprocess.run([sys.executable, "-m", "kubetorch_jupyter.cli", "teardown",
                           compute.name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    with pytest.raises(kt.PodDiedError) as info:
        handle.result(timeout(30))
    message = str(info.value)
    assert info.value.reason == "TornDown"
    assert f"pod {compute.name!r} was torn down by kt teardown {compute.name} (pid " in message
    assert "exit status" not in message and "signal" not in message, message


def test_a_python_without_the_runtimes_dependencies_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    import venv

    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)  # the same Python, none of its packages
    python = str(bare / "bin" / "python")
    assert subprocess.run([python, "-c", "import websockets"], capture_output=True
                          ).returncode != 0, sys.executable
    monkeypatch.setenv("KT_PYTHON", python)
    with pytest.raises(kt.PodStartError) as info:
        kt.Compute(name=f"bare-{secrets.token_hex(3)}").up()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert "websockets" in message and "cloudpickle" in message
    assert f"{python} -m pip install websockets cloudpickle" in message


def _fake_package(root: Path, version: str, *, core: bool) -> Path:
    """A real installed package ``fakever`` (a dist-info importlib.metadata reads)."""
    pkg = root / "fakever"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
    if core:  # what the newer version moved its classes to (as numpy 2 did: numpy._core)
        (pkg / "_core.py").write_text("class Thing:\n    def __init__(self, v):\n"
                                      "        self.v = v\n")
    info = root / f"fakever-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakever\nVersion: {version}\n")
    return root


def test_a_module_missing_for_a_version_mismatch_names_both_versions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    here = _fake_package(tmp_path / "v2", "2.0", core=True)
    there = _fake_package(tmp_path / "v1", "1.0", core=False)
    monkeypatch.syspath_prepend(str(here))
    importlib.invalidate_caches()
    core = importlib.import_module("fakever._core")
    compute = kt.Compute(name=f"vm-{secrets.token_hex(3)}", env={"PYTHONPATH": str(there)})
    try:
        with pytest.raises(kt.VersionMismatchError) as info:
            kt.fn(len).to(compute)([core.Thing(1)])
        message = str(info.value)
        assert "fakever 2.0 here but 1.0 on pod" in message, message
        assert "fakever._core" in message and 'pip_install(["fakever==2.0"])' in message
        assert "neither installed here" not in message
        assert (info.value.local, info.value.remote) == ("2.0", "1.0")
    finally:
        compute.teardown()
        for mod in [m for m in sys.modules if m.split(".")[0] == "fakever"]:
            del sys.modules[mod]
