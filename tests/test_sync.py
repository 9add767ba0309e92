"""Code sync against real project trees on disk and real pod processes.

What travels (.gitignore/.ktignore, never .git/venvs/__pycache__), what is sent (only
blobs the pod lacks, counted), deletions, limits, a second client, a restarted pod,
several pods of one compute, and the scanner's caches and change notification.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kt_testing import timeout

import kubetorch_jupyter as kt
from kubetorch_jupyter.sync import session as ks
from kubetorch_jupyter.sync import transfer as _transfer
from kubetorch_jupyter.sync.manifest import Scanner

REPO = Path(kt.__file__).resolve().parents[1]


def write(root: Path, rel: str, data: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def tree_files(tree: Path) -> dict[str, bytes]:
    """Every file of a pod's tree (read from disk: the pod wrote it), by relative path."""
    out = {}
    for path in tree.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            out[path.relative_to(tree).as_posix()] = path.read_bytes()
    return out


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project tree on disk, the working directory, with its own state dir."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "proj"\n')
    monkeypatch.setenv("KT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KT_PROGRESS", "0")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    scanner = ks._scanners.pop(str(root.resolve()), None)
    if scanner is not None:
        scanner.close()


@pytest.fixture
def compute(project: Path) -> Iterator[kt.Compute]:
    c = kt.Compute(name=f"sy-{secrets.token_hex(3)}")
    try:
        yield c
    finally:
        with contextlib.suppress(kt.KtError):
            c.teardown()


# ------------------------------------------------------------ no pod needed
def test_project_root_is_the_nearest_marked_directory(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert ks.find_project_root(deep) == deep  # no marker anywhere: the start itself
    (tmp_path / "a" / "pyproject.toml").write_text("")
    assert ks.find_project_root(deep) == tmp_path / "a"
    (tmp_path / "a" / "b" / ".git").mkdir()
    assert ks.find_project_root(deep) == tmp_path / "a" / "b"
    (deep / "setup.py").write_text("")
    assert ks.find_project_root(deep) == deep


def test_gitignore_and_ktignore_decide_what_travels(project: Path) -> None:
    write(project, ".gitignore", textwrap.dedent("""\
        # comments and blank lines are skipped

        *.log
        !keep.log
        build/
        /top_only.txt
        docs/**/*.tmp
        secret[0-9].txt
        \\#hash.txt
        cache/
        !cache/keep.txt
    """))
    write(project, ".ktignore", "data/\n!build/\n")
    write(project, "sub/.gitignore", "local.txt\n")
    kept = ["a.py", "keep.log", "build/out.bin", "sub/top_only.txt", "secretx.txt",
            "local.txt", "sub/deeper/x.py", "docs/readme.md", ".gitignore", ".ktignore",
            "sub/.gitignore", "pyproject.toml"]
    left_out = ["x.log", "sub/y.log", "top_only.txt", "docs/a/b/c.tmp", "docs/c.tmp",
                "secret1.txt", "#hash.txt", "sub/local.txt", "data/file.csv",
                "cache/keep.txt", ".git/config", ".venv/pyvenv.cfg", ".venv/lib/site.py",
                "env2/pyvenv.cfg", "env2/bin/activate", "conda/conda-meta/history",
                "__pycache__/a.cpython-311.pyc", "sub/__pycache__/b.pyc", "mod.pyc",
                ".ipynb_checkpoints/nb.ipynb", ".pytest_cache/v"]
    for rel in kept + left_out:
        if rel not in (".gitignore", ".ktignore", "sub/.gitignore", "pyproject.toml"):
            write(project, rel, f"content of {rel}\n")
    scan = Scanner(project, max_file_size=1 << 20, max_files=1000, watch=False).scan()
    assert sorted(scan.files) == sorted(kept)
    assert scan.files["a.py"][0] == hashlib.sha256(b"content of a.py\n").hexdigest()


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "walk"])
def test_scanner_sees_every_change(project: Path, watch: bool) -> None:
    write(project, "pkg/a.py", "A = 1\n")
    for path in (project / "pyproject.toml", project / "pkg/a.py"):
        os.utime(path, (1e9, 1e9))  # written long ago: its hash can be trusted
    scanner = Scanner(project, max_file_size=1 << 20, max_files=1000, watch=watch)
    if watch and not scanner.watching:
        pytest.skip("no trusted change notification on this filesystem")
    first = scanner.scan()
    walks = scanner.walks
    again = scanner.scan()
    assert again.files == first.files and again.hashed == 0  # nothing read again
    if watch:
        assert scanner.walks == walks  # answered by the watcher, no walk

    # Written twice within one timestamp tick, same size: (size, mtime) cannot tell.
    path = write(project, "pkg/r.py", "R = 1\n")
    tick = path.stat().st_mtime_ns
    assert scanner.scan().files["pkg/r.py"][0] == hashlib.sha256(b"R = 1\n").hexdigest()
    write(project, "pkg/r.py", "R = 2\n")
    os.utime(path, ns=(tick, tick))
    assert scanner.scan().files["pkg/r.py"][0] == hashlib.sha256(b"R = 2\n").hexdigest()

    write(project, "new/dir/b.py", "B = 1\n")
    assert "new/dir/b.py" in scanner.scan().files
    write(project, "new/dir/c.py", "C = 1\n")  # inside a directory made since the last walk
    assert "new/dir/c.py" in scanner.scan().files
    (project / "pkg" / "a.py").unlink()
    assert "pkg/a.py" not in scanner.scan().files
    write(project, ".gitignore", "new/\n")
    assert not any(k.startswith("new/") for k in scanner.scan().files)
    (project / "run.sh").write_text("#!/bin/sh\n")
    (project / "run.sh").chmod(0o755)
    assert scanner.scan().files["run.sh"][2] == 0o755
    scanner.close()


def test_incremental_scans_agree_with_a_fresh_walk(project: Path) -> None:
    """Each step changes the tree; the watching scanner must match a walk from scratch."""
    scanner = Scanner(project, max_file_size=1000, max_files=1000)
    if not scanner.watching:
        pytest.skip("no trusted change notification on this filesystem")
    for i in range(30):
        write(project, f"pkg/sub{i % 3}/m{i}.py", f"X = {i}\n")
    write(project, "pkg/sub0/deep/er/x.txt", "x")
    write(project, "pkg/.gitignore", "*.tmp\n")

    def fresh() -> dict[str, object]:
        return Scanner(project, max_file_size=1000, max_files=1000, watch=False).scan().files

    def rmtree(rel: str) -> None:
        import shutil

        shutil.rmtree(project / rel)

    steps = [
        lambda: write(project, "pkg/sub1/m1.py", "X = 'edited'\n"),
        lambda: write(project, "pkg/sub1/new.tmp", "ignored by pkg/.gitignore"),
        lambda: write(project, "pkg/new/a/b/c.py", "made in one go, three levels deep\n"),
        lambda: (project / "pkg/new").rename(project / "pkg/moved"),
        lambda: rmtree("pkg/sub0/deep"),
        lambda: write(project, "pkg/.gitignore", "*.tmp\nsub2/\n"),  # a whole subtree out
        lambda: write(project, "pkg/.gitignore", "*.tmp\n"),  # and back in
        lambda: write(project, ".gitignore", "*.py\n!pkg/sub1/*.py\n"),  # from the root
        lambda: write(project, "pkg/sub1/.ktignore", "m4.py\n"),
        lambda: write(project, "big.bin", b"\0" * 2000),  # over the limit
        lambda: (project / "big.bin").unlink(),
        lambda: write(project, "venv/pyvenv.cfg", "home = /usr\n"),  # becomes a venv
        lambda: (project / "pkg/sub1/m1.py").unlink(),
    ]
    scanner.scan()
    for step in steps:
        step()
        walks = scanner.walks
        result = scanner.scan()
        assert result.files == fresh()
        assert scanner.walks == walks  # listed again only where events came
    listings = scanner.listings
    write(project, "pkg/sub2/m2.py", "X = 'ignored now'\n")  # *.py, from the root
    assert scanner.scan().files == fresh()
    assert scanner.listings == listings  # an ignored file's event lists nothing
    write(project, "pkg/sub1/m7.py", "X = 'one more'\n")
    assert scanner.scan().files == fresh()
    assert scanner.listings == listings + 1  # an edit lists its own directory only
    scanner.close()


def test_file_over_the_size_limit_is_refused_with_a_ktignore_hint(
        project: Path, compute: kt.Compute, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ks, "MAX_FILE_SIZE", 1000)
    write(project, "a.py", "x = 1\n")
    write(project, "data/big.bin", b"\0" * 2000)
    with pytest.raises(ks.SyncLimitError, match=r"\.ktignore") as info:
        ks.sync(compute)
    assert info.value.files == [("data/big.bin", 2000)]
    assert "data/big.bin" in str(info.value)
    assert not compute.is_up()  # refused before any pod was started

    write(project, ".ktignore", "data/big.bin\n")
    report = ks.sync(compute)
    assert "data/big.bin" not in tree_files(Path(report.pods[0].tree))
    assert "a.py" in tree_files(Path(report.pods[0].tree))


def test_a_tree_with_too_many_files_asks_whether_the_root_is_right(
        project: Path, compute: kt.Compute, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ks, "MAX_FILES", 5)
    for i in range(10):
        write(project, f"f{i}.txt", "x")
    with pytest.raises(ks.SyncLimitError, match=r"more than 5 files.*right root"):
        ks.sync(compute)


# ------------------------------------------------------------------ with a pod
def test_ignored_files_never_arrive_and_the_pod_gets_its_own_copy(
        project: Path, compute: kt.Compute) -> None:
    write(project, ".gitignore", "*.log\nsecrets/\n")
    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/train.py", "def where():\n    import os\n    return os.getcwd()\n")
    for rel in ("run.log", "secrets/key.txt", ".git/HEAD", ".venv/pyvenv.cfg",
                "mypkg/__pycache__/train.cpython-311.pyc"):
        write(project, rel, "never\n")
    report = ks.sync(compute)
    tree = Path(report.pods[0].tree)
    assert set(tree_files(tree)) == {".gitignore", "pyproject.toml", "mypkg/__init__.py",
                                     "mypkg/train.py"}
    assert not tree.is_relative_to(project)  # the pod reads its own copy, never the user's

    from mypkg.train import where

    assert Path(kt.fn(where).to(compute)()) == tree  # the pod works in the synced tree


def test_only_changed_blobs_are_sent(project: Path, compute: kt.Compute) -> None:
    for i in range(20):
        write(project, f"pkg/m{i}.py", f"X = {i}\n")
    write(project, "pkg/copy.py", "X = 0\n")  # same content as m0: one blob for both
    first = ks.sync(compute)
    assert first.files == 22  # with pyproject.toml
    assert first.blobs_sent == 21  # 22 files, 21 distinct contents
    assert sorted(first.changed) == sorted([*(f"pkg/m{i}.py" for i in range(20)),
                                            "pkg/copy.py", "pyproject.toml"])

    again = ks.sync(compute)
    assert again.up_to_date and again.blobs_sent == 0 and again.hashed == 0

    write(project, "pkg/m7.py", "X = 'seven'\n")
    one = ks.sync(compute)
    assert (one.blobs_sent, one.changed, one.deleted) == (1, ["pkg/m7.py"], [])
    assert one.bytes_sent == len("X = 'seven'\n")
    assert (Path(one.pods[0].tree) / "pkg/m7.py").read_text() == "X = 'seven'\n"

    write(project, "pkg/m8.py", "X = 0\n")  # content the pod already has: nothing to send
    known = ks.sync(compute)
    assert (known.blobs_sent, known.changed) == (0, ["pkg/m8.py"])

    os.utime(project / "pkg/m9.py", ns=(1, 1))  # touched, same content: nothing at all
    assert ks.sync(compute).up_to_date


def test_deletion_propagates(project: Path, compute: kt.Compute) -> None:
    write(project, "keep.py", "")
    write(project, "gone.py", "")
    write(project, "olddir/deep/x.py", "")
    tree = Path(ks.sync(compute).pods[0].tree)
    assert (tree / "olddir/deep/x.py").exists()

    (project / "gone.py").unlink()
    (project / "olddir/deep/x.py").unlink()
    (project / "olddir/deep").rmdir()
    (project / "olddir").rmdir()
    report = ks.sync(compute)
    assert sorted(report.deleted) == ["gone.py", "olddir/deep/x.py"]
    assert report.blobs_sent == 0
    assert set(tree_files(tree)) == {"keep.py", "pyproject.toml"}
    assert not (tree / "olddir").exists()  # emptied directories go too


def test_first_sync_of_a_larger_tree_arrives_bit_exact(
        project: Path, compute: kt.Compute, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_transfer, "PROGRESS_MIN_BYTES", 1)
    monkeypatch.setattr("kubetorch_jupyter.core.progress._terminal", lambda: True)  # as in a shell
    rng = secrets.SystemRandom()
    for i in range(30):  # 12 MiB: more than one 8 MiB pack, through shared memory
        write(project, f"assets/{i % 3}/blob{i}.bin", rng.randbytes(400 * 1024 + i))
    report = ks.sync(compute, progress=True)
    assert report.blobs_sent == 31 and report.bytes_sent == report.bytes
    local = {p.relative_to(project).as_posix(): p.read_bytes()
             for p in project.rglob("*") if p.is_file()}
    assert tree_files(Path(report.pods[0].tree)) == local
    assert f"syncing {project.name} to {compute.name}" in capsys.readouterr().err


def test_a_second_client_does_not_resend_blobs(project: Path, compute: kt.Compute) -> None:
    for i in range(10):
        write(project, f"lib/m{i}.py", f"X = {i}\n")
    assert ks.sync(compute).blobs_sent == 11
    code = textwrap.dedent(f"""
        import kubetorch_jupyter as kt
        from kubetorch_jupyter.sync.session import sync
        report = sync(kt.Compute.from_name({compute.name!r}))
        print(report.blobs_sent, len(report.changed), report.files)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, text=True,
                         capture_output=True, timeout=timeout(60), check=True)
    assert out.stdout.split() == ["0", "0", "11"]


def test_a_restarted_pod_keeps_its_blobs_and_tree(project: Path, compute: kt.Compute) -> None:
    for i in range(10):
        write(project, f"lib/m{i}.py", f"X = {i}\n")
    first = ks.sync(compute)
    pid = compute.pod.pid
    compute.teardown()
    write(project, "lib/m3.py", "X = 'edited while the pod was down'\n")
    again = ks.sync(compute)  # a new pod process, the same state dir
    assert compute.pod.pid != pid
    assert (again.blobs_sent, again.changed) == (1, ["lib/m3.py"])
    assert again.pods[0].tree == first.pods[0].tree


def test_every_pod_of_a_compute_gets_the_same_tree(project: Path, compute: kt.Compute) -> None:
    other = kt.Compute(name=f"sy-{secrets.token_hex(3)}")
    try:
        compute.connections = lambda: [compute.connection(), other.connection()]  # type: ignore[attr-defined]
        write(project, "app.py", "VERSION = 1\n")
        report = ks.sync(compute)
        assert [p.pod for p in report.pods] == [compute.name, other.name]
        trees = [Path(p.tree) for p in report.pods]
        assert trees[0] != trees[1]
        assert tree_files(trees[0]) == tree_files(trees[1])

        write(project, "app.py", "VERSION = 2\n")
        report = ks.sync(compute)
        assert [p.blobs_sent for p in report.pods] == [1, 1]
        assert all((t / "app.py").read_text() == "VERSION = 2\n" for t in trees)
    finally:
        with contextlib.suppress(kt.KtError):
            other.teardown()


def test_project_modules_go_by_reference_and_ignored_ones_by_value(
        project: Path, compute: kt.Compute) -> None:
    write(project, ".gitignore", "scratch.py\n")
    write(project, "mypkg/__init__.py", "")
    write(project, "mypkg/train.py", "def where():\n    import sys\n"
                                     "    return sys.modules[__name__].__file__\n")
    write(project, "scratch.py", "def probe():\n    import sys\n"
                                 "    return 'scratch' in sys.modules\n")
    from mypkg.train import where
    from scratch import probe

    remote_where = kt.fn(where).to(compute)
    tree = Path(ks.sync(compute).pods[0].tree)
    assert Path(remote_where()) == tree / "mypkg/train.py"  # imported there, by name
    assert kt.fn(probe).to(compute)() is False  # sent by value: no module on the pod


def test_renames_swaps_and_type_changes_reuse_what_the_pod_has(
        project: Path, compute: kt.Compute) -> None:
    write(project, "a.py", "A = 'aaaa'\n")
    write(project, "b.py", "B = 'bbbb'\n")
    write(project, "thing", "a file that becomes a directory\n")
    write(project, "folder/inner.txt", "a directory that becomes a file\n")
    tree = Path(ks.sync(compute).pods[0].tree)

    (project / "a.py").rename(project / "renamed.py")  # same content under a new name
    write(project, "b.py", "A = 'aaaa'\n")  # and b takes a's old content...
    write(project, "c.py", "B = 'bbbb'\n")  # ...while c takes b's
    (project / "thing").unlink()
    write(project, "thing/now_inside.txt", "a file that becomes a directory\n")
    (project / "folder/inner.txt").unlink()
    (project / "folder").rmdir()
    write(project, "folder", "a directory that becomes a file\n")
    report = ks.sync(compute)
    assert report.blobs_sent == 0  # every content was on the pod already
    local = {p.relative_to(project).as_posix(): p.read_bytes()
             for p in project.rglob("*") if p.is_file()}
    assert tree_files(tree) == local


def test_a_working_directory_that_is_no_project_is_not_forced_to_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"  # like a notebook in ~: no .git, pyproject.toml or setup.py
    home.mkdir()
    monkeypatch.setenv("KT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(home)
    monkeypatch.syspath_prepend(str(home))
    monkeypatch.setattr(ks, "LOOSE_MAX_FILES", 3)
    for i in range(5):
        write(home, f"notes{i}.txt", "x")
    write(home, "helpers.py", "def helper():\n    import sys\n"
                              "    return 'helpers' in sys.modules\n")
    from helpers import helper

    c = kt.Compute(name=f"sy-{secrets.token_hex(3)}")
    try:
        with pytest.warns(RuntimeWarning, match=r"not syncing .*more than 3 files"):
            remote = kt.fn(helper).to(c)
        assert remote() is False  # sent by value: no module of that name on the pod
        assert remote() is False  # and no second warning (warnings are errors here)
        with pytest.raises(ks.SyncLimitError):  # asking explicitly says why
            ks.sync(c)
    finally:
        with contextlib.suppress(kt.KtError):
            c.teardown()
        sys.modules.pop("helpers", None)
        scanner = ks._scanners.pop(str(home.resolve()), None)
        if scanner is not None:
            scanner.close()


def test_src_layout_and_a_notebook_in_a_subdirectory(
        project: Path, compute: kt.Compute, monkeypatch: pytest.MonkeyPatch) -> None:
    write(project, "src/mypkg/__init__.py", "")
    write(project, "src/mypkg/core.py", "def where():\n    import os\n"
                                        "    return __file__, os.getcwd()\n")
    write(project, "notebooks/helpers.py", "from mypkg.core import where\n\n\n"
                                           "def helped():\n    return where()\n")
    monkeypatch.syspath_prepend(str(project / "src"))  # as an editable install would
    monkeypatch.chdir(project / "notebooks")  # where the notebook runs
    monkeypatch.syspath_prepend(str(project / "notebooks"))
    from helpers import helped

    remote = kt.fn(helped).to(compute)
    tree = Path(ks.sync(compute).pods[0].tree)
    file, cwd = remote()
    assert Path(file) == tree / "src/mypkg/core.py"  # found through the tree's src/
    assert Path(cwd) == tree / "notebooks"  # relative paths work as they do locally


def test_implicit_sync_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetorch_jupyter.sync import session as kt_sync

    monkeypatch.setenv("KT_SYNC", "0")
    assert kt_sync.ensure(object()) is None  # type: ignore[arg-type]  # never touches it


def test_credentials_and_kt_state_never_travel(project: Path, compute: kt.Compute,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A project that holds a state dir or credentials (a home directory, say)."""
    write(project, ".aws/credentials", "[default]\nkey = secret\n")
    write(project, ".ssh/id_ed25519", "private\n")
    write(project, ".netrc", "machine x password y\n")
    write(project, "kept.py", "X = 1\n")
    state = project / "kt-state"
    write(project, "kt-state/pods/other.json", '{"token": "t"}')
    monkeypatch.setenv("KT_STATE_DIR", str(state))
    ks._scanners.clear()
    report = ks.sync(compute)
    tree = tree_files(Path(report.pods[0].tree))
    assert "kept.py" in tree
    assert not [p for p in tree if p.startswith((".aws", ".ssh", ".netrc", "kt-state"))]


def test_the_home_directory_is_not_synced_implicitly(tmp_path: Path, compute: kt.Compute,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".git").mkdir(parents=True)  # a home kept in git (dotfiles) is marked too
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    with pytest.warns(RuntimeWarning, match="it is your home directory"):
        assert ks.ensure(compute) is None


def test_a_relative_state_dir_is_made_absolute(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    from kubetorch_jupyter import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KT_STATE_DIR", "rel-state")
    assert config.get("state_dir") == str(tmp_path.resolve() / "rel-state")


def test_private_files_stay_private_on_the_pod(project: Path, compute: kt.Compute) -> None:
    secret = write(project, "config/local.env", "TOKEN=x\n")
    secret.chmod(0o600)
    script = write(project, "run.sh", "#!/bin/sh\n")
    script.chmod(0o755)
    tree = Path(ks.sync(compute).pods[0].tree)
    assert (tree / "config/local.env").stat().st_mode & 0o777 == 0o600
    assert (tree / "run.sh").stat().st_mode & 0o111


def test_a_linked_directory_is_named_not_silently_dropped(project: Path,
                                                          compute: kt.Compute) -> None:
    shared = project.parent / "shared-lib"
    write(shared, "lib/helpers.py", "X = 1\n")
    (project / "lib").symlink_to(shared / "lib")
    with pytest.warns(RuntimeWarning, match="does not follow 'lib', a symbolic link"):
        ks.sync(compute)
