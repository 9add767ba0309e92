"""The magics through a real IPython InteractiveShell (run_cell / run_cell_magic), real pods."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import kubetorch_jupyter as kt
from kubetorch_jupyter.backends.local.backend import LocalBackend
from kubetorch_jupyter.calls import versions as _versions
from kubetorch_jupyter.calls.display import RemoteValue
from kubetorch_jupyter.notebook.magics import KtMagics


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One state dir for the module's pods, all of them stopped at its end."""
    path = tmp_path_factory.mktemp("magics-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KT_STATE_DIR", str(path))
        mp.setenv("KT_TEST_SHARED_STATE", "1")
        mp.setenv("KT_PROGRESS", "0")
        try:
            yield path
        finally:
            backend = LocalBackend(path)
            for pod in backend.list():
                backend.down(pod.name)


@pytest.fixture(scope="module")
def shell(state: Path) -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kubetorch_jupyter")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "kubetorch_jupyter")
        InteractiveShell.clear_instance()


@pytest.fixture(scope="module")
def name() -> str:
    return f"m-{secrets.token_hex(3)}"


def magics(shell: InteractiveShell) -> KtMagics:
    return next(m for m in shell.magics_manager.registry.values() if isinstance(m, KtMagics))


def ok(shell: InteractiveShell, code: str) -> Any:
    """Run a cell that must succeed; its result (the cell's Out)."""
    res = shell.run_cell(code)
    if not res.success:
        raise AssertionError(f"cell failed: {res.error_before_exec or res.error_in_exec!r}")
    return res.result


def test_help_teaches_with_examples(shell: InteractiveShell) -> None:
    for query, expect in (("%%kt?", "%%kt --gpus 1 --memory 16Gi --name llm"),
                          ("%kt?", "%kt attach llm:3f9a0c2e1b7d4a55"),
                          ("%autokt?", "%autokt on --name llm")):
        with capture_output() as io:
            shell.run_cell(query)
        assert "Examples" in io.stdout and expect in io.stdout, query
    with capture_output() as io:
        shell.run_cell("%kt")
    assert io.stdout.startswith("%kt use NAME|VAR")


def test_result_display_and_out(shell: InteractiveShell, name: str) -> None:
    with capture_output() as io:
        res = shell.run_cell(f"%%kt --name {name}\n"
                             "from IPython.display import HTML, display\n"
                             "print('printed')\n"
                             "display(HTML('<p>shown</p>'))\n"
                             "class Frame:\n"
                             "    def _repr_html_(self): return '<table>frame</table>'\n"
                             "    def __repr__(self): return 'Frame()'\n"
                             "Frame()\n")
    assert res.success, res.error_in_exec
    assert isinstance(res.result, RemoteValue)
    assert res.result.data["text/html"] == "<table>frame</table>"
    assert repr(res.result) == "Frame()"
    assert shell.user_ns["_"] is res.result  # the cell's value, as a local cell's would be
    assert io.outputs[0].data["text/html"] == "<p>shown</p>"
    assert io.stdout.startswith("printed\n") and "Out[" in io.stdout and "Frame()" in io.stdout


def test_remote_traceback_shows_the_cells_lines(shell: InteractiveShell, name: str) -> None:
    with capture_output() as io:
        res = shell.run_cell(f"%%kt --name {name}\n"
                             "x = 1\n"
                             "raise ValueError(f'bad {x}')\n")
    assert isinstance(res.error_in_exec, ValueError)
    assert isinstance(res.error_in_exec, kt.RemoteError)
    out = re.sub(r"\x1b\[[0-9;]*m", "", io.stdout)  # rendered by IPython, as a local one
    assert f"(raised on pod '{name}')" in out
    assert re.search(r"----> 3 raise ValueError\(f'bad \{x\}'\)", out), out
    assert "ValueError: bad 1" in out
    assert "magics.py" not in out  # no frames of this side's machinery


@pytest.mark.parametrize(("cell", "message"), [
    ("%%kt --gpus many\n1", "argument --gpus: invalid int value: 'many'"),
    ("%%kt --frobnicate\n1", "unrecognized arguments: --frobnicate"),
    ("%%kt --memory 16Gb\n1", "did you mean '16Gi'"),
    ("%%kt --cpus lots\n1", "cpus 'lots' is not a quantity"),
    ("%%kt --name Bad_Name\n1", "compute name 'Bad_Name' is not valid"),
    ("%%kt --timeout soon\n1", "duration 'soon' is not understood"),
    ("%%kt --compute nothing\n1", "the notebook has no variable 'nothing'"),
    ("%%kt --image 42\n1", "'42'"),
    ("%%kt --push 2x\n1", "'2x' is not a variable name"),
    ("%%kt --push undefined_thing\n1", "no variable 'undefined_thing'"),
    ("%%kt --detach --pull y\n1", "--detach returns at once"),
    ("%kt frobnicate", "invalid choice: 'frobnicate'"),
    ("%kt logs -n many", "invalid int value: 'many'"),
    ("%kt attach nonsense", "'nonsense' is not a run id"),
    ("%kt teardown no-such-pod", "no compute named 'no-such-pod'"),
    ("%autokt sideways", "invalid choice: 'sideways'"),
])
def test_bad_flags_are_one_line_usage_errors(shell: InteractiveShell, cell: str, message: str
                                             ) -> None:
    with capture_output() as io:
        res = shell.run_cell(cell)
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    assert message in str(res.error_in_exec)
    assert "UsageError" in io.stderr and "Traceback" not in io.stderr + io.stdout


def test_push_and_pull(shell: InteractiveShell, name: str) -> None:
    shell.user_ns.update(alpha=2, beta=[1, 2])
    ok(shell, f"%kt push alpha beta --name {name}")
    ok(shell, f"%%kt --name {name} --push alpha --pull gamma,delta\n"
              "gamma = alpha * sum(beta)\n"
              "delta = {'g': gamma}\n")
    assert shell.user_ns["gamma"] == 6 and shell.user_ns["delta"] == {"g": 6}
    ok(shell, f"%%kt --name {name}\nepsilon = gamma + 1")
    ok(shell, f"%kt pull epsilon --name {name}")
    assert shell.user_ns["epsilon"] == 7
    with capture_output():
        res = shell.run_cell(f"%kt pull nothing_here --name {name}")
    assert isinstance(res.error_in_exec, NameError)


def test_current_compute_use_and_autokt(shell: InteractiveShell, name: str) -> None:
    m = magics(shell)
    other = f"{name}-b"
    ok(shell, f"%%kt --name {name}\nimport os")
    assert m.current is not None and m.current.name == name  # the last %%kt named it
    pod_pid = ok(shell, "%%kt\nos.getpid()").data["text/plain"]
    assert pod_pid != str(os.getpid())
    with capture_output() as io:
        ok(shell, f"%kt use {other}")
    assert f"now run on {other!r}" in io.stdout
    assert ok(shell, "%%kt\nimport os\nos.getpid()").data["text/plain"] != pod_pid
    ok(shell, f"%%kt --name {name}\n1")  # naming another compute does not move a pin
    assert m.current.name == other
    shell.user_ns["mine"] = kt.Compute(name=name)
    with capture_output():
        ok(shell, "%kt use mine")
    assert m.current is shell.user_ns["mine"]

    with capture_output() as io:
        ok(shell, "%autokt on")
    assert f"cells run on {name!r}" in io.stdout
    remote = ok(shell, "import os\nos.getpid()")
    assert isinstance(remote, RemoteValue) and remote.data["text/plain"] == pod_pid
    with capture_output() as io:
        ok(shell, "%kt status")  # %kt cells still run here
    assert f"compute {name!r} (current, %autokt on)" in io.stdout
    with capture_output() as io:
        res = shell.run_cell("x = 1\nundefined_on_the_pod_too")
    assert isinstance(res.error_in_exec, NameError)
    out = re.sub(r"\x1b\[[0-9;]*m", "", io.stdout)
    assert re.search(r"<kt In\[\d+\] \w+>:2\b", out), out  # no %%kt line: the cell's own
    with capture_output():
        ok(shell, "# back to running here\n%autokt off")  # a comment may come first
    assert ok(shell, "import os\nos.getpid()") == os.getpid()


def test_a_restart_that_cannot_happen_keeps_the_warm_pod(shell: InteractiveShell,
                                                        name: str) -> None:
    """No GPUs here: asking for one fails clearly, and the pod and its state survive."""
    pod = f"{name}-g"
    ok(shell, f"%%kt --name {pod}   # a comment after the flags\nmodel = 'loaded'")
    pid = magics(shell).computes[pod].pod.pid
    res = shell.run_cell(f"%%kt --name {pod} --gpus 1\nmodel")
    assert isinstance(res.error_in_exec, kt.ResourceUnavailableError)
    assert "this machine has 0 GPUs" in str(res.error_in_exec)
    assert magics(shell).computes[pod].gpus == 0  # the failed ask was not kept
    assert ok(shell, f"%%kt --name {pod}\nmodel").data["text/plain"] == "'loaded'"
    assert magics(shell).computes[pod].pod.pid == pid
    shell.user_ns["threshold"] = 3
    assert ok(shell, f"%%kt --name {pod} --push 'threshold'\nthreshold").data[
        "text/plain"] == "3"


def test_status_list_logs_and_teardown(shell: InteractiveShell, name: str) -> None:
    pod = f"{name}-s"
    ok(shell, f"%%kt --name {pod} --cpus 1 --memory 256Mi\nprint('into the log')")
    with capture_output() as io:
        ok(shell, f"%kt status {pod}")
    assert "asks for  cpus 1, memory 256Mi" in io.stdout and "pod       running, pid" in io.stdout
    assert "versions  Python " in io.stdout
    with capture_output() as io:
        ok(shell, "%kt list")
    assert pod in io.stdout and "256Mi" in io.stdout
    with capture_output() as io:
        ok(shell, f"%kt logs {pod} -n 50")
    assert "into the log" in io.stdout
    with capture_output() as io:
        ok(shell, f"%kt teardown {pod}")
    assert f"tore down {pod!r}" in io.stdout
    assert not kt.Compute(name=pod).is_up()
    with capture_output() as io:
        ok(shell, f"%kt status {pod}")
    assert "not running" in io.stdout


def test_resource_flags_keep_the_pod_and_a_new_kernel_finds_it(shell: InteractiveShell,
                                                               name: str) -> None:
    pod = f"{name}-r"
    ok(shell, f"%%kt --name {pod} --cpus 1\nkept = 'state'\nimport os")
    pid = ok(shell, f"%%kt --name {pod}\nos.getpid()").data["text/plain"]
    assert ok(shell, f"%%kt --name {pod} --cpus 1\nos.getpid()").data["text/plain"] == pid
    # a new kernel: fresh magics that remember nothing find the pod warm by name
    fresh = KtMagics(shell)
    fresh.kt_cell(f"--name {pod} --pull kept,same", "same = os.getpid()")
    assert shell.user_ns["kept"] == "state" and str(shell.user_ns["same"]) == pid
    fresh.kt_cell(f"--name {pod} --cpus 1 --pull again", "again = os.getpid()")
    assert str(shell.user_ns["again"]) == pid  # the same resources: not restarted


def test_image_flag(shell: InteractiveShell, name: str) -> None:
    shell.user_ns["img"] = kt.Image().set_env_vars({"KT_IMAGE_FLAG": "from the image"})
    pod = f"{name}-i"
    value = ok(shell, f"%%kt --name {pod} --image img\nimport os\nos.environ['KT_IMAGE_FLAG']")
    assert value.data["text/plain"] == "'from the image'"
    with capture_output():
        ok(shell, f"%kt teardown {pod}")


def test_timeout_flag(shell: InteractiveShell, name: str) -> None:
    with capture_output():
        res = shell.run_cell(f"%%kt --name {name} --timeout 0.5\nimport time\ntime.sleep(60)")
    assert isinstance(res.error_in_exec, TimeoutError)
    assert "ran longer than its timeout (0.5s)" in str(res.error_in_exec)


def test_fn_and_cls_on_notebook_definitions(shell: InteractiveShell, name: str) -> None:
    ok(shell, "import math\n"
              "import kubetorch_jupyter as kt\n"
              "SCALE = 3\n"
              "def scaled_root(x):\n"
              "    return math.sqrt(x) * SCALE\n"
              "class Accumulator:\n"
              "    def __init__(self, start):\n"
              "        self.total = start\n"
              "    def add(self, k):\n"
              "        self.total += k * SCALE\n"
              "        return self.total\n"
              f"compute = kt.Compute(name={name!r})\n")
    assert ok(shell, "kt.fn(scaled_root).to(compute)(16)") == 12.0
    ok(shell, "acc = kt.cls(Accumulator).to(compute, init_args={'start': 1})")
    assert ok(shell, "acc.add(2)") == 7
    assert ok(shell, "acc.add(1)") == 10
    assert ok(shell, "import os\nkt.fn(os.getpid).to(compute)()") != os.getpid()


def test_sync_command(shell: InteractiveShell, name: str, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """%kt sync runs code sync when it exists; cells then import the project's modules."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'synced'\n")
    (project / f"mod_{name.replace('-', '_')}.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(project)
    ok(shell, f"%%kt --name {name}\n1")
    try:
        from kubetorch_jupyter.sync import session as sync_module
    except ImportError:
        sync_module = None  # type: ignore[assignment]
    with capture_output() as io:
        ok(shell, f"%kt sync {name}")
    if getattr(sync_module, "sync", None) is None:
        assert io.stdout.strip() == "code sync is not available yet"
        return
    assert io.stdout.startswith("kt sync: project")
    value = ok(shell, f"%%kt --name {name}\nimport mod_{name.replace('-', '_')} as m\nm.VALUE")
    assert value.data["text/plain"] == "7"

    # An edit reaches the next %%kt cell without %kt sync, as it reaches kt.fn calls.
    (project / f"mod_{name.replace('-', '_')}.py").write_text("VALUE = 8\n")
    value = ok(shell, f"%%kt --name {name}\nm.VALUE")
    assert value.data["text/plain"] == "8"


def test_version_mismatch_warns_with_both_versions(shell: InteractiveShell, tmp_path: Path,
                                                   name: str) -> None:
    fake = tmp_path / "fake-site"
    dist = fake / "cloudpickle-9.9.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cloudpickle\nVersion: 9.9.0\n")
    (dist / "RECORD").write_text("")
    odd = kt.Compute(name=f"{name}-v", env={"PYTHONPATH": str(fake)})
    ip = shell
    ip.user_ns["odd"] = odd
    local = _versions.local_versions()["cloudpickle"]
    with pytest.warns(_versions.VersionMismatchWarning) as record:
        ok(ip, "%%kt --compute odd\n1")
    text = str(record[0].message)
    assert f"cloudpickle {local} here but 9.9.0 on pod '{name}-v'" in text

    conn = odd.connection()
    conn.welcome["versions"]["python"] = "3.9.18"  # as a pod on another Python reports it
    _versions._checked.clear()
    with capture_output() as io:
        res = ip.run_cell("%%kt --compute odd\n1")
    assert isinstance(res.error_in_exec, _versions.VersionMismatchError)
    assert isinstance(res.error_in_exec, kt.SerializationError)
    assert "Python 3.11" in str(res.error_in_exec) and "3.9.18 on pod" in str(res.error_in_exec)
    assert "VersionMismatchError" in io.stdout
    odd.teardown()


def test_compare_versions() -> None:
    here = {"python": "3.11.7", "cloudpickle": "3.1.3", "numpy": "2.4.6", "torch": "2.5.1"}
    same = {"python": "3.11.2", "cloudpickle": "3.1.0", "numpy": "2.1.0", "torch": "2.3.0"}
    assert _versions.compare(here, same) == []
    pod = {"python": "3.12.1", "cloudpickle": "3.0.0", "numpy": "1.26.4"}
    problems = {p.package: p for p in _versions.compare(here, pod, pod="gpu",
                                                        imported={"torch"})}
    assert problems["python"].fatal and "3.11.7 here but 3.12.1 on pod 'gpu'" in (
        problems["python"].message)
    assert not problems["numpy"].fatal and "numpy 2.4.6 here but 1.26.4" in (
        problems["numpy"].message)
    assert "cloudpickle 3.1.3 here but 3.0.0" in problems["cloudpickle"].message
    assert "torch 2.5.1 is imported here but not installed on pod 'gpu'" in (
        problems["torch"].message)
