"""One-line errors and the right exit status where the CLI and the API used to stumble."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kubetorch_jupyter as kt

REPO = Path(__file__).resolve().parents[1]


def kt_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "kubetorch_jupyter.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_version() -> None:
    done = kt_cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"kt {kt.__version__}"), done


def test_an_unusable_state_dir_is_one_line() -> None:
    done = kt_cli("list", KT_STATE_DIR="/proc/nope")
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "KT_STATE_DIR" in done.stderr and "/proc/nope" in done.stderr


def test_negative_log_lines_are_a_usage_error() -> None:
    done = kt_cli("logs", "x", "-n", "-5")
    assert done.returncode == 2, done
    assert "-n/--tail" in done.stderr and "'-5'" in done.stderr, done.stderr


def test_env_vars_as_a_list_say_what_to_write() -> None:
    with pytest.raises(kt.ConfigError, match=r"set_env_vars\(\{'A': '1'\}\)"):
        kt.Image().set_env_vars(["A=1"])  # type: ignore[arg-type]


def test_one_name_rule_with_one_suggestion_everywhere(tmp_path: Path) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    from kubetorch_jupyter.manager import ComputeManager

    suggestion = "(e.g. 'my-pod')"
    for call in (lambda: kt.Compute(name="My_Pod"), lambda: kt.Compute.from_name("My_Pod"),
                 lambda: ComputeManager().get("My_Pod"), lambda: ComputeManager().stop("My_Pod"),
                 lambda: ComputeManager().logs("My_Pod"),
                 lambda: ComputeManager().follow_logs("My_Pod")):
        with pytest.raises(kt.ConfigError) as info:
            call()
        assert suggestion in str(info.value), info.value
    for args in (("logs", "My_Pod"), ("teardown", "My_Pod")):
        done = kt_cli(*args, KT_STATE_DIR=str(tmp_path))
        assert done.returncode == 1 and suggestion in done.stderr, done
        assert done.stderr.count("\n") == 1, done.stderr
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kubetorch_jupyter")
    try:
        for kind, line in (("cell", "--name My_Pod"), ("line", "logs My_Pod"),
                           ("line", "use My_Pod"), ("line", "teardown My_Pod")):
            with pytest.raises(UsageError) as usage:
                if kind == "cell":
                    shell.run_cell_magic("kt", line, "1\n")
                else:
                    shell.run_line_magic("kt", line)
            assert suggestion in str(usage.value), (line, usage.value)
    finally:
        shell.run_line_magic("unload_ext", "kubetorch_jupyter")
        InteractiveShell.clear_instance()
