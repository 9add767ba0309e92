"""Hot reload on a real pod: edits run at the next call, nothing else is disturbed.

Each test writes a project on disk, calls into it through kt.fn/kt.cls (which sync
first), edits files and calls again. "Raw" calls go straight through the bridge, the
way another client that does not sync would, to look at the pod's state as it is.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import test_sync

import kubetorch_jupyter as kt
from kubetorch_jupyter.calls.serialize import dump_callable
from kubetorch_jupyter.sync import session as ks
from pod_runtime import protocol
from pod_runtime.reload import _order

# The project tree and compute fixtures of test_sync: own state dir, tree, pod each.
project, compute, write = test_sync.project, test_sync.compute, test_sync.write


def raw_call(compute: kt.Compute, fn: Any) -> Any:
    """Run ``fn`` (sent by value) on the pod without syncing first."""
    body, buffers = protocol.dumps({"kind": "fn", "fn_id": secrets.token_hex(8),
                                    "fn_blob": dump_callable(fn)[1], "args": (),
                                    "kwargs": {}})
    return compute.connection().call(body, buffers, sink=lambda e: None).result()


def model_state() -> tuple[Any, Any]:
    import mypkg.model as m

    return m.VALUE, m.predict()


MODEL = "VALUE = {v}\n\n\ndef predict():\n    return 'v{v}'\n"
TRAIN = "from mypkg import model, state\n\n\ndef train():\n    state.calls += 1\n" \
        "    return model.predict(), state.calls\n"


@pytest.fixture
def pkg(project: Path) -> Path:
    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/state.py", "calls = 0\n")
    write(project, "mypkg/model.py", MODEL.format(v=1))
    write(project, "mypkg/train.py", TRAIN)
    return project


def test_an_edit_runs_at_the_next_call_without_restarting_the_pod(
        pkg: Path, compute: kt.Compute) -> None:
    from mypkg.train import train

    remote = kt.fn(train).to(compute)
    assert remote() == ("v1", 1)
    pid = compute.pod.pid
    write(pkg, "mypkg/model.py", MODEL.format(v=2))
    assert remote() == ("v2", 2)  # the global of the unchanged state module survived
    assert compute.pod.pid == pid
    write(pkg, "mypkg/model.py", MODEL.format(v=3))  # again, within the same second
    assert remote() == ("v3", 3)


def test_only_changed_modules_and_their_importers_reload_in_dependency_order(
        project: Path, compute: kt.Compute) -> None:
    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/log.py", "ORDER = []\n")
    write(project, "mypkg/a.py", "from mypkg import log\nlog.ORDER.append('a')\n\n\n"
                                 "def value():\n    return 'a1'\n")
    write(project, "mypkg/b.py", "from mypkg import log\nfrom mypkg.a import value\n"
                                 "log.ORDER.append('b')\n\n\ndef b():\n"
                                 "    return value() + '+b'\n")
    write(project, "mypkg/c.py", "import mypkg.b as bmod\nfrom mypkg import log\n"
                                 "log.ORDER.append('c')\n\n\ndef c():\n"
                                 "    return bmod.b() + '+c'\n")
    write(project, "mypkg/other.py", "from mypkg import log\nlog.ORDER.append('other')\n\n\n"
                                     "def other():\n    return 'other'\n")
    from mypkg.c import c
    from mypkg.other import other

    remote_c = kt.fn(c).to(compute)
    assert remote_c() == "a1+b+c"
    assert kt.fn(other).to(compute)() == "other"

    def order() -> list[str]:
        import mypkg.log

        return list(mypkg.log.ORDER)

    assert raw_call(compute, order) == ["a", "b", "c", "other"]
    write(project, "mypkg/a.py", "from mypkg import log\nlog.ORDER.append('a')\n\n\n"
                                 "def value():\n    return 'a2'\n")
    report = ks.sync(compute)
    assert report.changed == ["mypkg/a.py"]
    assert report.reloaded == ["mypkg.a", "mypkg.b", "mypkg.c"]
    assert raw_call(compute, order) == ["a", "b", "c", "other", "a", "b", "c"]
    assert remote_c() == "a2+b+c"


def test_heavy_imports_stay_loaded(pkg: Path, compute: kt.Compute, tmp_path: Path) -> None:
    counter = tmp_path / "heavy-imports"
    write(pkg, "mypkg/heavy.py", f"import json, os\nwith open({str(counter)!r}, 'a') as f:\n"
                                 "    f.write(f'{os.getpid()}\\n')\nTABLE = list(range(1000))\n")
    write(pkg, "mypkg/train.py", "import mypkg.heavy\n" + TRAIN)
    from mypkg.train import train

    def loaded() -> tuple[int, int]:
        import sys

        return id(sys.modules["json"]), id(sys.modules["mypkg.heavy"].TABLE)

    remote = kt.fn(train).to(compute)
    remote()
    before = raw_call(compute, loaded)
    for v in (2, 3):
        write(pkg, "mypkg/model.py", MODEL.format(v=v))
        assert remote()[0] == f"v{v}"
    assert raw_call(compute, loaded) == before
    imports = counter.read_text().split()
    assert imports.count(str(compute.pod.pid)) == 1  # imported once on the pod, not re-run


def test_a_syntax_error_names_file_and_line_and_the_old_code_keeps_serving(
        pkg: Path, compute: kt.Compute) -> None:
    from mypkg.train import train

    remote = kt.fn(train).to(compute)
    assert remote() == ("v1", 1)
    write(pkg, "mypkg/model.py", "VALUE = 2\n\n\ndef predict(:\n    return 'v2'\n")
    with pytest.raises(ks.ReloadError) as info:
        remote()
    err = info.value
    assert (err.path, err.line, err.remote_type) == (pkg / "mypkg/model.py", 4, "SyntaxError")
    assert str(err).startswith("mypkg/model.py, line 4: SyntaxError")
    assert "keeps serving" in str(err)
    assert raw_call(compute, model_state) == (1, "v1")  # old code, untouched
    with pytest.raises(ks.ReloadError):  # the same error while the file is unchanged
        remote()

    write(pkg, "mypkg/model.py", MODEL.format(v=3))
    assert remote() == ("v3", 2)


def test_a_failing_import_rolls_the_whole_batch_back(pkg: Path, compute: kt.Compute) -> None:
    from mypkg.train import train

    remote = kt.fn(train).to(compute)
    assert remote() == ("v1", 1)
    write(pkg, "mypkg/train.py", TRAIN.replace("model.predict()", "'new ' + model.predict()"))
    write(pkg, "mypkg/model.py", "VALUE = 2\nraise RuntimeError('boom at import')\n")
    with pytest.raises(ks.ReloadError, match="boom at import") as info:
        remote()
    assert (info.value.path, info.value.line) == (pkg / "mypkg/model.py", 2)
    assert info.value.remote_type == "RuntimeError"
    assert raw_call(compute, model_state) == (1, "v1")  # not half-executed

    def train_on_pod() -> Any:
        import mypkg.train

        return mypkg.train.train()

    assert raw_call(compute, train_on_pod) == ("v1", 2)  # the old train too

    write(pkg, "mypkg/model.py", MODEL.format(v=3))  # fixing model applies train's edit
    assert remote() == ("new v3", 3)


def test_deleted_modules_leave_the_pod(pkg: Path, compute: kt.Compute) -> None:
    write(pkg, "mypkg/unused.py", "X = 1\n")
    write(pkg, "mypkg/dep.py", "def helper():\n    return 'help'\n")
    write(pkg, "mypkg/user.py", "from mypkg import dep\n\n\ndef use():\n"
                                "    return dep.helper()\n")
    from mypkg.user import use

    remote = kt.fn(use).to(compute)
    assert remote() == "help"

    def has_unused() -> bool:
        import sys

        import mypkg.unused  # noqa: F401

        return "mypkg.unused" in sys.modules

    assert raw_call(compute, has_unused) is True
    (pkg / "mypkg/unused.py").unlink()
    ks.sync(compute)
    with pytest.raises(ModuleNotFoundError):
        raw_call(compute, has_unused)

    (pkg / "mypkg/dep.py").unlink()  # still imported by user.py: that is the error
    with pytest.raises(ks.ReloadError) as info:
        ks.sync(compute)
    assert (info.value.path, info.value.line) == (pkg / "mypkg/user.py", 1)
    assert "dep" in str(info.value)


def test_existing_instances_run_edited_methods(pkg: Path, compute: kt.Compute) -> None:
    write(pkg, "mypkg/net.py", "class Net:\n    def __init__(self):\n        self.n = 0\n\n"
                               "    def step(self):\n        self.n += 1\n"
                               "        return ('v1', self.n)\n")
    from mypkg.net import Net

    net = kt.cls(Net).to(compute)
    assert net.step() == ("v1", 1)
    write(pkg, "mypkg/net.py", "class Net:\n    def __init__(self):\n        self.n = 0\n\n"
                               "    def step(self):\n        self.n += 10\n"
                               "        return ('v2', self.n)\n")
    assert net.step() == ("v2", 11)  # the same instance, its state kept, the new method


def test_notebook_functions_see_the_new_code_of_what_they_call(
        pkg: Path, compute: kt.Compute) -> None:
    from mypkg.model import predict

    def cell() -> str:  # sent by value, like a notebook cell's function
        return "cell:" + predict()

    remote = kt.fn(cell).to(compute)
    assert remote() == "cell:v1"
    write(pkg, "mypkg/model.py", MODEL.format(v=2))
    assert remote() == "cell:v2"
    write(pkg, "mypkg/extra.py", "def more():\n    return 'more'\n")  # a new module
    write(pkg, "mypkg/model.py", "from mypkg.extra import more\n\n\ndef predict():\n"
                                 "    return 'v3+' + more()\n")
    assert remote() == "cell:v3+more"


def test_remote_tracebacks_name_the_local_file(pkg: Path, compute: kt.Compute) -> None:
    write(pkg, "mypkg/model.py", "def predict():\n    raise ValueError('bad weights')\n")
    from mypkg.model import predict

    with pytest.raises(ValueError, match="bad weights") as info:
        kt.fn(predict).to(compute)()
    text = info.value.remote_traceback  # type: ignore[attr-defined]
    assert f'File "{pkg / "mypkg/model.py"}", line 2, in predict' in text
    assert "raise ValueError('bad weights')" in text


def test_dependency_order_survives_import_cycles() -> None:
    deps = {"a": {"b"}, "b": {"a"}, "c": {"b"}, "d": set()}
    order = _order({"a", "b", "c"}, deps)
    assert sorted(order) == ["a", "b", "c"]
    assert order.index("b") < order.index("c")
