"""Code sync that fails safe: a broken module blocks only what uses it, explicit syncs
count with KT_SYNC=0, links never lead out of the project, and secrets stay home.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import test_sync

import kubetorch_jupyter as kt
from kubetorch_jupyter.sync import session as ks

project, compute, write, tree_files = (test_sync.project, test_sync.compute, test_sync.write,
                                       test_sync.tree_files)


def test_a_broken_module_fails_only_the_calls_that_use_it(project: Path,
                                                           compute: kt.Compute) -> None:
    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/model.py", "def predict():\n    return 'v1'\n")
    write(project, "mypkg/train.py", "from mypkg import model\n\n\n"
                                     "def train():\n    return model.predict()\n")
    write(project, "mypkg/other.py", "def other():\n    return 'o1'\n")
    from mypkg.other import other
    from mypkg.train import train

    remote_train, remote_other = kt.fn(train).to(compute), kt.fn(other).to(compute)
    assert (remote_train(), remote_other()) == ("v1", "o1")
    write(project, "mypkg/model.py", "def predict(:\n    return 'v2'\n")
    write(project, "mypkg/other.py", "def other():\n    return 'o2'\n")

    def unrelated() -> int:  # a notebook function that uses none of it
        return 41 + 1

    with pytest.warns(RuntimeWarning, match=r"mypkg/model.py, line 1 failed to reload") as w:
        assert kt.fn(unrelated).to(compute)() == 42
    assert w[0].filename == __file__  # attributed to the user's line
    assert remote_other() == "o2"  # the unrelated edit applied; no second warning
    with pytest.raises(ks.ReloadError, match=r"mypkg/model\.py, line 1: SyntaxError"):
        remote_train()  # train imports model: it is held back with it

    def uses_model() -> str:
        from mypkg import model

        return str(model.predict())

    with pytest.raises(ks.ReloadError):
        kt.fn(uses_model).to(compute)
    write(project, "mypkg/model.py", "def predict():\n    return 'v3'\n")
    assert remote_train() == "v3"
    sys.modules.pop("mypkg.model", None)


def test_after_an_explicit_sync_project_modules_go_by_reference_with_sync_off(
        project: Path, compute: kt.Compute, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KT_SYNC", "0")
    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/train.py", "def where():\n    import sys\n"
                                     "    mod = sys.modules.get(__name__)\n"
                                     "    return mod and mod.__file__\n")
    from mypkg.train import where

    remote = kt.fn(where).to(compute)
    assert remote() is None  # no sync: sent by value, from the client's copy
    tree = Path(ks.sync(compute).pods[0].tree)
    assert Path(remote()) == tree / "mypkg/train.py"  # by reference, from the synced tree
    assert Path(kt.fn(where).to(compute)()) == tree / "mypkg/train.py"


def test_links_out_of_the_project_and_secrets_stay_home(project: Path,
                                                         compute: kt.Compute) -> None:
    outside = project.parent / "outside.txt"
    outside.write_text("not the project's\n")
    (project / "passwd_link").symlink_to(outside)
    write(project, "real.py", "X = 1\n")
    (project / "inner_link.py").symlink_to(project / "real.py")  # inside: travels as a file
    write(project, ".env", "TOKEN=secret\n")
    write(project, ".env.local", "TOKEN=secret\n")
    write(project, "certs/server.pem", "-----BEGIN PRIVATE KEY-----\n")
    write(project, "keys/id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----\n")
    write(project, "keys/id_rsa.pub", "ssh-rsa AAAA\n")
    write(project, "id_utils.py", "Y = 2\n")  # a module named like a key is no key
    (project / "env_link").symlink_to(project / ".env")  # a secret under another name
    with pytest.warns(RuntimeWarning, match="'passwd_link', a symbolic link out of the project"):
        report = ks.sync(compute)
    tree = tree_files(Path(report.pods[0].tree))
    assert tree["inner_link.py"] == b"X = 1\n"
    assert {"real.py", "id_utils.py", "keys/id_rsa.pub"} <= tree.keys()
    for gone in ("passwd_link", ".env", ".env.local", "certs/server.pem", "keys/id_rsa",
                 "env_link"):
        assert gone not in tree
    note = str(report).splitlines()[-1]
    assert note.startswith("  left out as secrets: .env, .env.local, certs/server.pem, env_link")
    assert "links out of it: passwd_link" in note

    write(project, ".ktignore", "!.env\n")  # one on purpose
    report = ks.sync(compute)
    assert tree_files(Path(report.pods[0].tree))[".env"] == b"TOKEN=secret\n"
    assert ".env.local" in str(report) and ".env," not in str(report)


def test_a_broken_module_fails_only_the_cells_that_use_it(project: Path,
                                                           compute: kt.Compute) -> None:
    from kubetorch_jupyter.notebook.cells import run_cell

    def cell(source: str) -> str:
        events: list[dict[str, object]] = []
        run_cell(compute, source, sink=events.append)
        return "".join(str(e["text"]) for e in events if e.get("kind") == "stream")

    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/model.py", "def predict():\n    return 'v1'\n")
    write(project, "mypkg/train.py", "from mypkg import model\n\n\n"
                                     "def train():\n    return model.predict()\n")
    write(project, "mypkg/other.py", "def other():\n    return 'o1'\n")
    assert cell("from mypkg import model, other\nprint(model.predict(), other.other())"
                ) == "v1 o1\n"
    write(project, "mypkg/model.py", "def predict(:\n    return 'v2'\n")
    write(project, "mypkg/other.py", "def other():\n    return 'o2'\n")
    with pytest.warns(RuntimeWarning, match=r"mypkg/model.py, line 1 failed to reload"):
        assert cell("print(41 + 1)") == "42\n"  # uses none of it: runs
    assert cell("import mypkg.other\nprint(mypkg.other.other())") == "o2\n"  # applied
    for uses in ("from mypkg import model\nmodel.predict()",
                 "import mypkg.model as m",
                 "from mypkg.train import train\ntrain()",  # imports model: held back too
                 "mypkg.model.predict()"):  # named by its dotted path, imported earlier
        with pytest.raises(ks.ReloadError, match=r"mypkg/model\.py, line 1: SyntaxError"):
            cell(uses)
    write(project, "mypkg/model.py", "def predict():\n    return 'v3'\n")
    assert cell("from mypkg.train import train\nprint(train())") == "v3\n"
