"""Cached image environments: real venvs, a wheel built in the test, no network."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from kubetorch_jupyter.backends.local import venvs
from kubetorch_jupyter.core.image import Image
from kubetorch_jupyter.exceptions import ImageBuildError


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KT_PROGRESS", "0")
    monkeypatch.delenv("KT_PYTHON", raising=False)
    return tmp_path / "state"


def build_wheel(directory: Path) -> Path:
    """A minimal pure-Python wheel with a module and a console script."""
    files = {
        "ktwheel_demo.py": "VALUE = 42\n\ndef main():\n    print('ktwheel', VALUE)\n",
        "ktwheel_demo-0.1.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: ktwheel-demo\nVersion: 0.1\n"),
        "ktwheel_demo-0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        "ktwheel_demo-0.1.dist-info/entry_points.txt": (
            "[console_scripts]\nktwheel-demo = ktwheel_demo:main\n"),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("ktwheel_demo-0.1.dist-info/RECORD,,")
    files["ktwheel_demo-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / "ktwheel_demo-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


def leftovers(state: Path) -> list[str]:
    return sorted(p.name for p in (state / "envs").iterdir() if ".tmp-" in p.name)


def test_image_without_build_steps_uses_the_client_python(monkeypatch):
    image = Image().set_env_vars({"A": "1"})
    assert venvs.image_python(image) == sys.executable
    monkeypatch.setenv("KT_PYTHON", "/opt/other/python")
    assert venvs.image_python(image) == "/opt/other/python"


def test_pip_install_of_a_local_wheel_then_cache_hit(tmp_path, state, monkeypatch):
    wheel = build_wheel(tmp_path)
    image = Image().pip_install([str(wheel)], args=["--no-index"]).run_bash(
        'echo "built in $VIRTUAL_ENV"')
    python = venvs.image_python(image)

    env_dir = venvs.env_dir(image)
    assert python == str(env_dir / "bin" / "python")
    assert env_dir.parent == state / "envs"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import ktwheel_demo, pod_runtime, websockets, cloudpickle; print(ktwheel_demo.VALUE)"
    out = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "42"
    # the console script's shebang points at the final environment, not the build dir
    script = subprocess.run([str(env_dir / "bin" / "ktwheel-demo")], env=env,
                            capture_output=True, text=True, check=True)
    assert script.stdout.strip() == "ktwheel 42"
    log = env_dir.with_suffix(".log").read_text()
    assert "ktwheel-demo" in log and f"built in {state / 'envs'}" in log
    assert leftovers(state) == []

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a cached environment was built again")

    monkeypatch.setattr(venvs, "_build", no_rebuild)
    assert venvs.image_python(image) == python


def test_failing_step_raises_and_leaves_nothing(state):
    image = Image().run_bash("echo about to fail; echo oh no >&2; exit 7")
    with pytest.raises(ImageBuildError) as err:
        venvs.image_python(image)
    assert err.value.step == "run_bash 'echo about to fail; echo oh no >&2; exit 7'"
    assert "about to fail" in err.value.output and "oh no" in err.value.output
    assert "step 1/1" in str(err.value) and "exit status 7" in str(err.value)
    assert not venvs.env_dir(image).exists()
    assert leftovers(state) == []


def test_failing_pip_step_keeps_pips_message(state):
    image = Image().pip_install(["kt-no-such-package-xyz"], args=["--no-index"])
    with pytest.raises(ImageBuildError, match="No matching distribution") as err:
        venvs.image_python(image)
    assert err.value.step.startswith("pip install")
    assert not venvs.env_dir(image).exists()
    assert leftovers(state) == []


def test_two_builders_build_once(monkeypatch):
    image = Image().run_bash("true")
    calls = []
    real = venvs._build

    def counting(*args, **kwargs):
        calls.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(venvs, "_build", counting)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(venvs.image_python(image)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert calls == [1]


def test_progress_bar_builds_too(capsys):
    python = venvs.image_python(Image().run_bash("echo hi"), progress=True)
    assert Path(python).exists()


def test_hash_covers_python_and_inherited_paths(monkeypatch):
    image = Image().run_bash("true")
    before = venvs.env_dir(image)
    monkeypatch.setattr(venvs, "inherited_paths", lambda: ["/somewhere/else"])
    assert venvs.env_dir(image) != before
    monkeypatch.undo()
    monkeypatch.setattr(sys, "version", "3.99.0 (test)")
    assert venvs.env_dir(image) != before


def test_inherited_paths_include_the_source_root():
    root = str(Path(__file__).resolve().parents[1])
    assert root in venvs.inherited_paths()


def test_images_reading_local_files_are_keyed_by_them(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "requirements.txt").write_text("six\n")
    image = Image().pip_install(["-r", "requirements.txt"])
    monkeypatch.chdir(a)
    key_a = venvs.env_dir(image, state_dir=tmp_path)
    monkeypatch.chdir(b)
    assert venvs.env_dir(image, state_dir=tmp_path) != key_a  # another project's file
    monkeypatch.chdir(a)
    (a / "requirements.txt").write_text("six\nidna\n")
    assert venvs.env_dir(image, state_dir=tmp_path) != key_a  # the file changed
    plain = Image().pip_install(["six"])
    assert venvs.env_dir(plain, state_dir=tmp_path) == venvs.env_dir(plain, state_dir=tmp_path)
