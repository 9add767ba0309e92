"""Exported notebooks: real runs (papermill, a real ipykernel, real local pods), crontab.

Three notebook runs share module fixtures: a job run with ``kt jobs run`` (a ``%%kt``
cell on a local pod that gets the job's compute spec, an injected parameter), the same
job started by its crontab line exactly as cron would start it, and a failing job whose
``%%kt`` cells run in the kernel itself (``KT_JOB_COMPUTE``).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from kt_testing import timeout

from kubetorch_jupyter.core.spec import ComputeSpec
from kubetorch_jupyter.jobs.crontab import Crontab
from kubetorch_jupyter.jobs.store import JobRecord, RunRecord

REPO = Path(__file__).resolve().parents[1]

#: Other people's lines, kept byte for byte around ours (quotes, odd spacing, tabs).
OTHERS_BEFORE = ('# m h  dom mon dow   command\nMAILTO="ops team <ops@example.com>"\n'
                 '0  3 * * *   /usr/bin/backup   --all   # nightly backup\n')
OTHERS_AFTER = ('*/5 * * * * echo "50 % done" >> /tmp/x 2>&1\n\n  # indented\twith tab\n'
                '15 4 * * 1-5 /bin/true #no space\n')


def notebook(path: Path, cells: list[str], *, params: str | None = None,
             compute: ComputeSpec | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    if compute is not None:
        nb.metadata["kubetorch"] = {"compute": compute.to_json()}
    body = [nbformat.v4.new_markdown_cell("# a job")]
    if params is not None:
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        body.append(cell)
    body += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.cells = body
    nbformat.write(nb, path)
    return path


def kt(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
       ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "kubetorch_jupyter.cli", *args], env=full,
                          capture_output=True, text=True, timeout=timeout(120),
                          cwd=str(cwd or "/"))


def cron_command(line: str) -> str:
    """What cron hands to ``sh -c`` for a crontab line: after the five fields, with
    ``\\%`` unescaped (an unescaped % would end the command; ours has none)."""
    command = line.split(None, 5)[5]
    assert "%" not in command.replace(r"\%", "")
    return command.replace(r"\%", "%")


def outputs(nb: nbformat.NotebookNode, marker: str) -> str:
    """Every text output of the cell whose source contains ``marker``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and marker in cell.source:
            parts = []
            for out in cell.outputs:
                if out.output_type == "stream":
                    parts.append(out.text)
                elif "data" in out:
                    parts.append(out.data.get("text/plain", ""))
                elif out.output_type == "error":
                    parts.append("\n".join(out.traceback))
            return re.sub(r"\x1b\[[0-9;]*m", "", "".join(parts))  # no colours
    raise AssertionError(f"no cell with {marker!r}")


@dataclass
class Env:
    root: Path
    state: Path
    crontab: Path

    def vars(self) -> dict[str, str]:
        return {"KT_STATE_DIR": str(self.state), "KT_CRONTAB_FILE": str(self.crontab),
                "KT_PROGRESS": "0", "KT_TEST_SHARED_STATE": "1"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, state: Path) -> Iterator[Env]:
    """One state dir (its pods stopped at the end) and a crontab file with others' lines."""
    root = tmp_path_factory.mktemp("jobs")
    e = Env(root, state, root / "crontab")
    e.crontab.write_text(OTHERS_BEFORE + OTHERS_AFTER)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in e.vars().items():
            mp.setenv(k, v)
        yield e


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    job: JobRecord
    record: RunRecord
    nb: nbformat.NotebookNode


def _latest(name: str, proc: subprocess.CompletedProcess[str]) -> Run:
    job = JobRecord.load(name)
    record = job.run()
    return Run(proc, job, record, nbformat.read(record.output, as_version=4))


@pytest.fixture(scope="module")
def pod_name() -> str:
    return f"jp-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def good(env: Env, pod_name: str) -> Run:
    """``kt export`` then ``kt jobs run``: a parameter, a %%kt cell on a local pod."""
    spec = ComputeSpec(name=pod_name, env={"JOB_MARK": "from-the-job-spec"})
    path = notebook(env.root / "train.ipynb", [
        "print('lr is', lr)\nlr * 10",
        "%load_ext kubetorch_jupyter",
        f"%%kt --name {pod_name}\nimport os\nprint('pod says', os.environ.get('JOB_MARK'), "
        "os.getpid())\n6 * 7",
        "print('last cell')",
    ], params="lr = 0.01\nepochs = 2", compute=spec)
    exported = kt("export", str(path), "--schedule", "0 3 * * *", "-p", "lr=0.5",
                  "--name", "nightly", env=env.vars())
    assert exported.returncode == 0, exported.stderr
    assert "next run" in exported.stdout and "At 03:00 AM" in exported.stdout
    return _latest("nightly", kt("jobs", "run", "nightly", env=env.vars()))


def test_a_run_executes_the_notebook_with_its_parameter_and_kt_cell(good: Run,
                                                                     pod_name: str) -> None:
    assert good.proc.returncode == 0, good.proc.stdout + good.proc.stderr
    assert good.record.outcome == "succeeded" and good.record.exit_code == 0
    assert good.record.end is not None and good.record.end >= good.record.start
    injected = [c for c in good.nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "lr = 0.5" in injected[0].source
    assert "lr is 0.5" in outputs(good.nb, "print('lr is'")
    assert "5.0" in outputs(good.nb, "print('lr is'")
    kt_out = outputs(good.nb, "pod says")
    assert "pod says from-the-job-spec" in kt_out  # the pod got the job's compute spec
    assert "42" in kt_out
    pod_pid = int(kt_out.split("from-the-job-spec")[1].split()[0])
    assert pod_pid != good.record.pid
    assert "last cell" in outputs(good.nb, "last cell")
    assert good.record.output.parent.parent.name == "runs"
    assert good.record.output.parent.name == good.record.run_id


def test_kt_jobs_run_shows_progress_and_logs_keep_it(good: Run, env: Env) -> None:
    out = good.proc.stdout
    assert "cell 6/7: %%kt --name" in out and "pod says from-the-job-spec" in out
    assert "(injected parameters)" in out
    assert "succeeded in" in out and str(good.record.output) in out
    logs = kt("jobs", "logs", "nightly", env=env.vars())
    assert logs.returncode == 0 and "pod says from-the-job-spec" in logs.stdout
    followed = kt("jobs", "logs", "nightly", "-f", env=env.vars())  # ended: prints and exits
    assert followed.returncode == 0 and followed.stdout == logs.stdout
    output = kt("jobs", "output", "nightly", env=env.vars())
    assert output.stdout.strip() == str(good.record.output)
    opened = kt("jobs", "output", "nightly", "--open", env={**env.vars(), "BROWSER": "true"})
    assert opened.returncode == 0, opened.stderr
    html = good.record.output.with_suffix(".html").read_text()
    assert "pod says from-the-job-spec" in html


def test_the_crontab_line_runs_as_cron_runs_it(good: Run, env: Env) -> None:
    text = env.crontab.read_text()
    ours = [ln for ln in text.splitlines() if ln.endswith("# kubetorch-jupyter:nightly")]
    assert len(ours) == 1 and ours[0].startswith("0 3 * * * ")
    assert text.startswith(OTHERS_BEFORE) and text.endswith(ours[0] + "\n")
    assert OTHERS_AFTER in text  # ours goes last; theirs is untouched
    home = env.root / "home"
    home.mkdir()
    proc = subprocess.run(["env", "-i", f"HOME={home}", "LOGNAME=cronuser",
                           "PATH=/usr/bin:/bin", "SHELL=/bin/sh", "/bin/sh", "-c",
                           cron_command(ours[0])], capture_output=True, text=True,
                          timeout=timeout(120), cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = JobRecord.load("nightly").runs()
    assert len(runs) == 2
    scheduled = runs[-1]
    assert scheduled.trigger == "schedule" and scheduled.outcome == "succeeded", (
        (good.job.folder / "cron.log").read_text())
    nb = nbformat.read(scheduled.output, as_version=4)
    assert "lr is 0.5" in outputs(nb, "print('lr is'")
    assert "pod says from-the-job-spec" in outputs(nb, "pod says")


def test_jobs_list_says_when_in_words_and_the_last_outcome(good: Run, env: Env) -> None:
    listed = kt("jobs", "list", env=env.vars())
    assert listed.returncode == 0, listed.stderr
    row = next(ln for ln in listed.stdout.splitlines() if ln.startswith("nightly"))
    assert "0 3 * * *" in row and "At 03:00 AM" in row and "(in " in row and " ok" in row


@pytest.fixture(scope="module")
def failing(env: Env) -> Run:
    """A job whose %%kt cells run in its own kernel (KT_JOB_COMPUTE), the last one raising."""
    path = notebook(env.root / "fails.ipynb", [
        "%load_ext kubetorch_jupyter",
        "x = 41",
        "%%kt --name here\nimport os\nprint('kernel pid', os.getpid())\nx + 1",
        "%%kt --name here\ndef mean(values):\n    return sum(values) / len(values)\n\n"
        "mean([])",
        "print('never printed')",
    ])
    assert kt("export", str(path), "--name", "fails", env=env.vars()).returncode == 0
    return _latest("fails", kt("jobs", "run", "fails",
                               env={**env.vars(), "KT_JOB_COMPUTE": "here"}))


def test_a_failing_cell_fails_the_run_and_keeps_its_traceback(failing: Run) -> None:
    assert failing.proc.returncode == 1
    assert failing.record.outcome == "failed" and failing.record.exit_code == 1
    cell = failing.record.failing_cell
    assert cell is not None and cell["ename"] == "ZeroDivisionError"
    assert cell["source"] == "%%kt --name here"
    trace = outputs(failing.nb, "mean([])")
    assert "ZeroDivisionError" in trace and "return sum(values) / len(values)" in trace
    assert "----> 5 mean([])" in trace  # the cell's own line numbers (line 1: %%kt)
    assert "magics.py" not in trace and "in_kernel.py" not in trace  # none of our frames
    assert "never printed" not in outputs(failing.nb, "never printed")
    assert "failed at cell" in failing.proc.stdout and "ZeroDivisionError" in failing.proc.stdout


def test_kt_cells_for_the_jobs_own_compute_run_in_its_kernel(failing: Run, env: Env) -> None:
    out = outputs(failing.nb, "kernel pid")
    assert "42" in out  # x came from a plain cell: the same namespace
    from kubetorch_jupyter.backends.local.backend import LocalBackend

    assert "here" not in {p.name for p in LocalBackend(str(env.state)).list()}  # no pod


def test_jobs_rm_removes_only_its_own_line(good: Run, failing: Run, env: Env) -> None:
    removed = kt("jobs", "rm", "nightly", env=env.vars())
    assert removed.returncode == 0, removed.stderr
    assert env.crontab.read_text() == OTHERS_BEFORE + OTHERS_AFTER  # byte for byte
    assert not (good.job.folder / "job.json").exists()
    assert len(list((good.job.folder / "runs").iterdir())) == 2  # runs kept without --purge
    again = kt("jobs", "rm", "nightly", env=env.vars())
    assert again.returncode == 1 and "no job named 'nightly'" in again.stderr
    assert kt("jobs", "rm", "fails", "--purge", env=env.vars()).returncode == 0
    assert not failing.job.folder.exists()


# ------------------------------------------------------------------ crontab, no kernels
def test_crontab_install_replace_remove_keep_other_lines_byte_identical(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "tab"
    path.write_bytes((OTHERS_BEFORE + OTHERS_AFTER.rstrip("\n")).encode())  # no final \n
    tab = Crontab(str(path))
    first = tab.install("a", "0 3 * * *", "/usr/bin/python -m x run a")
    tab.install("b", "*/15 * * * *", "echo 100% >/dev/null")
    assert [ln.name for ln in tab.lines()] == ["a", "b"]
    assert tab.find("b").command == "echo 100% >/dev/null"  # type: ignore[union-attr]
    assert r"echo 100\% " in path.read_text()  # cron's % escaped
    tab.install("a", "0 4 * * *", "/usr/bin/python -m x run a")  # replaced, not doubled
    assert [(ln.name, ln.fields) for ln in tab.lines()] == [("b", "*/15 * * * *"),
                                                           ("a", "0 4 * * *")]
    assert first not in path.read_text()
    assert tab.remove("a") and tab.remove("b") and not tab.remove("b")
    assert path.read_text() == OTHERS_BEFORE + OTHERS_AFTER  # only a final newline added


def test_a_commented_out_line_of_ours_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "tab"
    path.write_text("#0 3 * * * old # kubetorch-jupyter:a\n")
    tab = Crontab(str(path))
    assert tab.lines() == [] and not tab.remove("a")
    assert path.read_text() == "#0 3 * * * old # kubetorch-jupyter:a\n"


def test_the_cron_command_sets_what_cron_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    from kubetorch_jupyter.jobs.export import cron_command as command

    monkeypatch.setenv("KT_STATE_DIR", str(tmp_path / "my state"))
    job = JobRecord(name="n", notebook=str(tmp_path / "a b.ipynb"), cwd=str(tmp_path))
    words = shlex.split(command(job))
    assert words[:3] == ["cd", str(tmp_path), "&&"]
    assert f"KT_STATE_DIR={tmp_path / 'my state'}" in words
    assert sys.executable in words and os.path.isabs(sys.executable)
    path_var = next(w for w in words if w.startswith("PATH="))
    assert path_var.startswith(f"PATH={Path(sys.executable).parent}:")


def test_job_in_another_zone_fires_hourly_and_checks_the_zone() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from kubetorch_jupyter.jobs.schedule import Schedule

    sched = Schedule("30 8 * * mon-fri", "Pacific/Kiritimati")  # UTC+14: never local here
    assert sched.machine_fields() == "30 * * * *"
    kiri = ZoneInfo("Pacific/Kiritimati")
    assert sched.matches(datetime(2026, 12, 2, 8, 30, tzinfo=kiri))  # a Wednesday
    assert not sched.matches(datetime(2026, 12, 2, 9, 30, tzinfo=kiri))
    assert not sched.matches(datetime(2026, 12, 5, 8, 30, tzinfo=kiri))  # Saturday
    nxt = sched.next_run(datetime(2026, 12, 4, 9, 0, tzinfo=kiri))  # Friday, after 8:30
    assert (nxt.weekday(), nxt.hour, nxt.minute) == (0, 8, 30)
    assert "(Pacific/Kiritimati)" in sched.describe()
    assert Schedule("@daily").fields == "0 0 * * *"


def test_params_parse_as_papermill_parses_them() -> None:
    from kubetorch_jupyter.jobs.source import parse_params

    assert parse_params(["a=1", "b=0.5", "c=True", "d=None", "e=hello", "f=1e3", "g="],
                        ["h: [1, 2]\ni: {x: 1}"]) == {
        "a": 1, "b": 0.5, "c": True, "d": None, "e": "hello", "f": 1000.0, "g": "",
        "h": [1, 2], "i": {"x": 1}}


def _read_until(stream: object, needle: str, seen: str = "") -> str:
    """Read ``stream`` until ``needle`` shows up (select: no fixed sleeps)."""
    import select
    import time

    deadline = time.monotonic() + timeout(60)
    while needle not in seen:
        ready, _, _ = select.select([stream], [], [], max(0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"{needle!r} did not appear; got {seen!r}")
        chunk = os.read(stream.fileno(), 4096).decode()  # type: ignore[attr-defined]
        if not chunk:
            raise AssertionError(f"stream closed before {needle!r}; got {seen!r}")
        seen += chunk
    return seen


def test_logs_follow_a_run_while_it_runs_and_a_second_start_is_skipped(env: Env) -> None:
    """The notebook waits for a file the test creates once the follower saw the cell."""
    gate = env.root / "gate"
    path = notebook(env.root / "slow.ipynb", [
        "print('halfway', flush=True)",
        f"import pathlib, time\ngate = pathlib.Path({str(gate)!r})\nwhile not gate.exists():\n"
        "    time.sleep(0.05)\nprint('released')",
    ])
    assert kt("export", str(path), "--name", "slow", env=env.vars()).returncode == 0
    full = {**os.environ, "PYTHONPATH": str(REPO), **env.vars()}
    cmd = [sys.executable, "-m", "kubetorch_jupyter.cli", "jobs"]
    run = subprocess.Popen([*cmd, "run", "slow"], env=full, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    follower = None
    try:
        seen = _read_until(run.stdout, "cell 3/3: import pathlib")
        follower = subprocess.Popen([*cmd, "logs", "slow", "-f"], env=full,
                                    stdout=subprocess.PIPE, text=True)
        followed = _read_until(follower.stdout, "cell 3/3: import pathlib")
        assert "halfway" in followed and "succeeded" not in followed
        second = kt("jobs", "run", "slow", env=env.vars())
        assert second.returncode == 1 and "is already running" in second.stderr
        gate.touch()
        rest, _ = follower.communicate(timeout=timeout(60))
        assert follower.returncode == 0
        assert "released" in rest and "succeeded in" in rest
        out, _ = run.communicate(timeout=timeout(60))
        assert run.returncode == 0 and "released" in seen + out
    finally:
        gate.touch()
        for proc in (run, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [r.outcome for r in JobRecord.load("slow").runs()] == ["succeeded"]
