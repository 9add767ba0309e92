"""``kt export`` bad input (one line each, nothing created) and ``%kt export`` in a kernel."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from _kernel import Kernel
from test_jobs import notebook

from kubetorch_jupyter.cli.main import main
from kubetorch_jupyter.jobs.store import jobs_dir

OTHERS = 'MAILTO="a b"\n0  3 * * * /bin/true #theirs\n'


@pytest.fixture
def tab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "crontab"
    path.write_text(OTHERS)
    monkeypatch.setenv("KT_CRONTAB_FILE", str(path))
    return path


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    return notebook(tmp_path / "train.ipynb", ["print(lr)"], params="lr = 0.1\nepochs = 3")


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``kt argv`` exits 1 with one line on stderr (no traceback); that line."""
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.startswith("kt: ") and err.count("\n") == 1, err
    return err


def nothing_created(tab: Path) -> None:
    assert tab.read_text() == OTHERS
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir())


@pytest.mark.parametrize(("schedule", "says"), [
    ("0 25 * * *", "hour field: 25 is out of range 0-23"),
    ("61 3 * * *", "minute field: 61 is out of range 0-59"),
    ("0 3 * *", "has 4 fields; cron takes 5"),
    ("*/0 * * * *", "minute field '*/0': the step '0' must be a whole number > 0"),
    ("0 3 * * fri-mon", "day-of-week field 'fri-mon': the range fri-mon runs backwards"),
    ("0 3 * jan-foo *", "month field: 'foo' is not a number, or jan-dec"),
    ("@reboot", "unknown schedule '@reboot'"),
])
def test_an_invalid_cron_expression_names_the_field(capsys: pytest.CaptureFixture[str],
                                                    tab: Path, nb: Path, schedule: str,
                                                    says: str) -> None:
    assert says in fails(capsys, "export", str(nb), "--schedule", schedule)
    nothing_created(tab)


@pytest.mark.parametrize(("args", "says"), [
    (["-p", "lr"], "--param 'lr': expected NAME=VALUE"),
    (["-p", "1x=2"], "'1x' is not a variable name"),
    (["-p", "lrr=0.5"], "the parameters cell of"),
    (["-y", "lr: [1, 2"], "does not parse as YAML"),
    (["-y", "- 1"], "expected a mapping of variable names"),
    (["--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["--compute", "{not json"], "--compute '{not json' is not valid JSON"),
    (["--compute", '{"name": "Bad_Name"}'], "is not a compute spec"),
    (["--name", "Nightly!"], "job name 'Nightly!' is not valid"),
])
def test_bad_export_input_is_one_line_and_creates_nothing(
        capsys: pytest.CaptureFixture[str], tab: Path, nb: Path, args: list[str],
        says: str) -> None:
    assert says in fails(capsys, "export", str(nb), "--schedule", "0 3 * * *", *args)
    nothing_created(tab)


def test_a_param_without_a_parameters_cell(capsys: pytest.CaptureFixture[str], tab: Path,
                                           tmp_path: Path) -> None:
    plain = notebook(tmp_path / "plain.ipynb", ["x = 1"])
    err = fails(capsys, "export", str(plain), "--schedule", "@daily", "-p", "lr=0.1")
    assert "has no cell tagged 'parameters'" in err
    nothing_created(tab)


def test_a_notebook_missing_or_not_nbformat(capsys: pytest.CaptureFixture[str], tab: Path,
                                            tmp_path: Path) -> None:
    assert "does not exist" in fails(capsys, "export", str(tmp_path / "nope.ipynb"),
                                     "--schedule", "@daily")
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    assert "is not a valid notebook" in fails(capsys, "export", str(broken), "--schedule",
                                              "@daily")
    wrong = tmp_path / "wrong.ipynb"
    wrong.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": [{"x": 1}],
                                 "metadata": {}}))
    assert "is not a valid notebook" in fails(capsys, "export", str(wrong), "--schedule",
                                              "@daily")
    nothing_created(tab)


def test_a_name_already_taken_and_replace(capsys: pytest.CaptureFixture[str], tab: Path,
                                          nb: Path) -> None:
    assert main(["export", str(nb), "--schedule", "0 3 * * *", "--name", "n"]) == 0
    capsys.readouterr()
    before = tab.read_text()
    err = fails(capsys, "export", str(nb), "--schedule", "0 4 * * *", "--name", "n")
    assert "the name 'n' is taken (a job of that name exists)" in err
    assert tab.read_text() == before
    assert main(["export", str(nb), "--schedule", "0 4 * * *", "--name", "n",
                 "--replace"]) == 0
    lines = [ln for ln in tab.read_text().splitlines() if "kubetorch-jupyter:n" in ln]
    assert len(lines) == 1 and lines[0].startswith("0 4 * * * ")
    assert tab.read_text().startswith(OTHERS)


def test_a_name_taken_by_a_crontab_line_of_another_state_dir(
        capsys: pytest.CaptureFixture[str], tab: Path, nb: Path) -> None:
    tab.write_text(OTHERS + "0 1 * * * /x # kubetorch-jupyter:train\n")
    err = fails(capsys, "export", str(nb), "--schedule", "@daily")
    assert "has a line marked kubetorch-jupyter:train" in err
    assert tab.read_text() == OTHERS + "0 1 * * * /x # kubetorch-jupyter:train\n"


def test_no_crontab_command_is_a_clear_error(capsys: pytest.CaptureFixture[str], nb: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.delenv("KT_CRONTAB_FILE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no crontab on it
    err = fails(capsys, "export", str(nb), "--schedule", "@daily")
    assert "no `crontab` command here" in err and "KT_CRONTAB_FILE" in err
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir())


def test_a_crontab_that_cannot_be_written_leaves_no_job(
        capsys: pytest.CaptureFixture[str], nb: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("KT_CRONTAB_FILE", str(tmp_path / "no-such-dir" / "sub" / "tab"))
    (tmp_path / "no-such-dir").write_text("a file where a folder should be")
    err = fails(capsys, "export", str(nb), "--schedule", "@daily")
    assert "crontab" in err
    assert not jobs_dir().exists() or not any(jobs_dir().iterdir())


def test_unknown_jobs_and_runs(capsys: pytest.CaptureFixture[str], tab: Path, nb: Path
                               ) -> None:
    assert "no job named 'ghost'" in fails(capsys, "jobs", "run", "ghost")
    assert main(["export", str(nb), "--name", "idle"]) == 0
    capsys.readouterr()
    assert "has not run yet" in fails(capsys, "jobs", "logs", "idle")
    assert "has not run yet" in fails(capsys, "jobs", "output", "idle")
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "by hand (kt jobs run)" in out and "never" in out


def test_kt_export_in_a_kernel_exports_the_saved_file_and_says_what_is_unsaved(
        kernel: Kernel, tmp_path: Path) -> None:
    path = notebook(tmp_path / "live.ipynb", ["x = 1"], params="lr = 0.1")
    tab = tmp_path / "crontab"
    setup = kernel.run(f"import os\nos.environ['KT_CRONTAB_FILE'] = {str(tab)!r}\n"
                       f"os.environ['KT_STATE_DIR'] = {str(tmp_path / 'st')!r}")
    assert setup.reply is not None and setup.reply["status"] == "ok", setup.messages
    kernel.run("%kt use exported-compute")
    cell = kernel.run(f"%kt export {path} --schedule '0 3 * * *' -p lr=0.2 --name live")
    assert cell.reply is not None and cell.reply["status"] == "ok", cell.messages
    out = cell.stdout
    assert "cells this kernel ran are not in the saved live.ipynb" in out  # the setup cells
    assert "job 'live'" in out and "At 03:00 AM" in out
    assert "its compute is this kernel's current one, 'exported-compute'" in out
    job = json.loads((tmp_path / "st" / "jobs" / "live" / "job.json").read_text())
    assert job["compute"]["name"] == "exported-compute" and job["parameters"] == {"lr": 0.2}
    saved = nbformat.read(tmp_path / "st" / "jobs" / "live" / "notebook.ipynb", as_version=4)
    assert saved.metadata["kubetorch"]["compute"]["name"] == "exported-compute"
    assert "kubetorch-jupyter:live" in tab.read_text()
    bad = kernel.run(f"%kt export {path} --schedule '0 25 * * *' --name live2")
    err = bad.stream("stderr")
    assert "UsageError: %kt export: hour field: 25 is out of range 0-23" in err
    assert "Traceback" not in err
    assert not (tmp_path / "st" / "jobs" / "live2").exists()
