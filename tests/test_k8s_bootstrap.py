"""The Kubernetes start command, run on this machine as a container would run it.

The "image" is a fresh virtual environment made without pip and without the project or
its dependencies; the runtime ConfigMap is written to a temp dir as the kubelet mounts
it (each key a file); the env is the RuntimeContainer's, with the mount and cache paths
pointed at temp dirs, the port at 0 (the pod prints the one it got) and the host at
127.0.0.1. Nothing of ours is mocked: the pod is a real ``pod_runtime`` process, called
through a real ``PodConnection``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kt_testing import timeout

from kernel_bridge import Endpoint, PodConnection
from kubetorch_jupyter import Image, KtError
from kubetorch_jupyter.backends.kubernetes import identity
from kubetorch_jupyter.backends.kubernetes.bootstrap import (
    CACHE_DIR,
    CONFIGMAP_LIMIT,
    EXIT_SETUP,
    EXIT_STEP,
    LOG_PREFIX,
    RUNTIME_DIR,
    build_bundle,
    log_phase,
    runtime_bundle,
    runtime_configmap_name,
    runtime_container,
    runtime_selector,
)
from kubetorch_jupyter.backends.kubernetes.container import RUNTIME_PORT, RuntimeContainer
from kubetorch_jupyter.calls.serialize import dump_callable
from kubetorch_jupyter.core.spec import ComputeSpec
from pod_runtime import protocol

USER = "alice"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


# ---- the container, as a kubelet would run it ------------------------------------------


@dataclass
class Container:
    proc: subprocess.Popen[str]
    token: str
    lines: list[str] = field(default_factory=list)
    port: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def bootstrap_lines(self) -> list[str]:
        return [line.rstrip("\n") for line in self.lines if line.startswith(LOG_PREFIX)]

    reader: threading.Thread | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout(20))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout(20))
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def mount_configmap(configmap: dict[str, Any], where: Path) -> Path:
    """Write each key of the ConfigMap as a file, as a configMap volume does."""
    where.mkdir(parents=True, exist_ok=True)
    for key, text in configmap["data"].items():
        (where / key).write_text(text)
    for key, blob in configmap["binaryData"].items():
        (where / key).write_bytes(base64.b64decode(blob))
    return where


def container_env(rc: RuntimeContainer, pod: str) -> dict[str, str]:
    """``rc.env`` as the kubelet gives it to the container (``pod``: the pod's name)."""
    fields = {"metadata.name": pod}
    return {e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"][
        "fieldPath"]] for e in rc.env}


def start_container(rc: RuntimeContainer, spec: ComputeSpec, tmp: Path, path: str, *,
                    cache: Path | None = None, extra: dict[str, str] | None = None,
                    wait: bool = True) -> Container:
    """Run ``rc.command`` with a container's environment (nothing of this process's)."""
    mount = mount_configmap(rc.objects[0], tmp / "mount")
    env = container_env(rc, "alice-dev-abc12")
    assert env["KT_RUNTIME_DIR"] == RUNTIME_DIR and env["KT_CACHE_DIR"] == CACHE_DIR
    token = secrets.token_urlsafe(32)
    env.update(KT_RUNTIME_DIR=str(mount), KT_CACHE_DIR=str(cache or tmp / "cache"),
               KT_RUNTIME_PORT="0", KT_POD_HOST="127.0.0.1", KT_POD_TOKEN=token,
               PATH=path, HOME=str(tmp / "home"), HOSTNAME="alice-dev-abc12")
    env.update(spec.env)  # what the manifest renderer adds: the compute's own env
    env.update(extra or {})
    proc = subprocess.Popen(rc.command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp)
    box = Container(proc, token)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            box.lines.append(line)
            found = LISTENING.search(line)
            if found:
                box.port = int(found.group(1))
                box.done.set()
        box.done.set()

    box.reader = threading.Thread(target=read, daemon=True)
    box.reader.start()
    if wait:
        box.done.wait(timeout(240))
    return box


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare virtual environment standing in for an image: Python, no pip, no packages."""
    root = tmp_path_factory.mktemp("image") / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    return root / "bin"


@pytest.fixture()
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for box in started:
        box.stop()


def image_path(image_bin: Path) -> str:
    return f"{image_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"


def connect(box: Container) -> PodConnection:
    assert box.port is not None, box.log
    return PodConnection(Endpoint(f"ws://127.0.0.1:{box.port}", box.token), name="k8s",
                         use_shm=False)


def call(conn: PodConnection, fn: object, *args: object) -> Any:
    digest, blob = dump_callable(fn)
    body, buffers = protocol.dumps({"kind": "fn", "fn_id": digest, "fn_blob": blob,
                                    "args": args, "kwargs": {}})
    return conn.call(body, buffers, sink=lambda e: None).result(timeout(60))


def ready_status(box: Container) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{box.port}/ready",
                                timeout=timeout(10)) as answer:
        return int(answer.status)


def pod_facts() -> dict[str, Any]:
    import os
    import sys

    import cloudpickle
    import websockets.frames

    return {"executable": sys.executable, "prefix": sys.prefix,
            "cloudpickle": cloudpickle.__file__, "mask": websockets.frames.apply_mask.__module__,
            "env": {k: v for k, v in os.environ.items() if k.startswith("KT_T_")},
            "shadowed": os.environ.get("SHADOWED"), "token": os.environ.get("KT_POD_TOKEN"),
            "cwd": os.getcwd()}


def import_tiny() -> int:
    import tinykt

    return int(tinykt.VALUE)


def spec_of(image: Image, **kw: Any) -> ComputeSpec:
    return ComputeSpec(name="dev", image=image.to_json(), backend="kubernetes", **kw)


# ---- a real pod from the start command -------------------------------------------------


def test_runtime_starts_in_a_bare_python_and_serves_calls(
        image: Path, tmp_path: Path, containers: list[Container]) -> None:
    python = str(image / "python")
    for dep in ("websockets", "cloudpickle", "pod_runtime", "pip"):  # the point: none here
        assert subprocess.run([python, "-c", f"import {dep}"], capture_output=True,
                              env={"PATH": str(image)}, cwd=tmp_path).returncode != 0
    spec = spec_of(Image())
    box = start_container(runtime_container(spec, username=USER, namespace="ns"), spec,
                          tmp_path, image_path(image))
    containers.append(box)
    assert box.port is not None, box.log
    assert ready_status(box) == 200
    conn = connect(box)
    try:
        facts = call(conn, pod_facts)
        assert call(conn, sorted, [3, 1, 2]) == [1, 2, 3]
    finally:
        conn.close()
    assert facts["executable"].startswith(str(image.parent))  # the image's own Python
    assert facts["cloudpickle"].startswith(str(tmp_path / "cache" / "runtime"))
    assert facts["token"] is None  # the runtime removed it from the environment
    lines = box.bootstrap_lines()
    assert lines[0].startswith(f"{LOG_PREFIX} python {image}")
    assert any(line.startswith(f"{LOG_PREFIX} installing runtime") for line in lines)
    assert lines[-1].startswith(f"{LOG_PREFIX} starting runtime on 127.0.0.1:0")
    assert box.token not in box.log
    assert log_phase(box.log) == ("starting runtime", None)


def test_env_and_bash_steps_take_effect_and_the_compute_env_wins(
        image: Path, tmp_path: Path, containers: list[Container]) -> None:
    img = (Image().set_env_vars({"KT_T_MODE": "fast", "SHADOWED": "image"})
           .run_bash('echo "$KT_T_MODE ${KT_POD_TOKEN:-no-token}" > "$KT_IMAGE_DIR/made-by-bash"'))
    spec = spec_of(img, env={"SHADOWED": "compute"})
    rc = runtime_container(spec, username=USER, namespace="ns")
    box = start_container(rc, spec, tmp_path, image_path(image))
    containers.append(box)
    conn = connect(box)
    try:
        facts = call(conn, pod_facts)
    finally:
        conn.close()
    assert facts["env"] == {"KT_T_MODE": "fast"}
    assert facts["shadowed"] == "compute"  # the compute's own env beats the image's
    made = tmp_path / "cache" / "images" / spec.image_hash / "made-by-bash"
    assert made.read_text() == "fast no-token\n"  # saw the env step before it, not the token
    assert facts["prefix"] == str(made.parent / "venv")
    lines = box.bootstrap_lines()
    assert f"{LOG_PREFIX} image step 1/2 set_env_vars KT_T_MODE, SHADOWED" in lines
    assert any(line.startswith(f"{LOG_PREFIX} image step 2/2 run_bash") for line in lines)


def tiny_wheel(where: Path) -> Path:
    """A real (hand-made) wheel, so a pip_install step runs offline."""
    files = {"tinykt/__init__.py": b"VALUE = 42\n",
             "tinykt-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinykt\n"
                                              b"Version: 0.1\n",
             "tinykt-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                                           b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()) + "tinykt-0.1.dist-info/RECORD,,\n"
    path = where / "tinykt-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("tinykt-0.1.dist-info/RECORD", record)
    return path


def test_pip_step_installs_once_per_image_hash(
        image: Path, tmp_path: Path, containers: list[Container]) -> None:
    wheel = tiny_wheel(tmp_path)
    img = Image().pip_install([str(wheel)], args=["--no-index"]).run_bash("echo bash-ran")
    spec = spec_of(img)
    rc = runtime_container(spec, username=USER, namespace="ns")
    cache = tmp_path / "cache"
    first = start_container(rc, spec, tmp_path / "first", image_path(image), cache=cache)
    containers.append(first)
    conn = connect(first)
    try:
        assert call(conn, import_tiny) == 42
    finally:
        conn.close()
    first.stop()
    lines = first.bootstrap_lines()
    assert f"{LOG_PREFIX} image step 1/2 pip_install {wheel}" in lines
    assert (cache / "images" / spec.image_hash / "ready.json").is_file()

    # The container restarts (same cache volume): no pip, no ensurepip, no unpacking.
    again = start_container(rc, spec, tmp_path / "again", image_path(image), cache=cache)
    containers.append(again)
    conn = connect(again)
    try:
        assert call(conn, import_tiny) == 42
    finally:
        conn.close()
    lines = again.bootstrap_lines()
    assert not any("step 1/2" in line or "ensurepip" in line for line in lines), lines
    assert any("cached" in line and "skipping 1 pip_install" in line for line in lines)
    assert any("already installed" in line for line in lines)
    assert "bash-ran\n" in again.lines  # run_bash steps run in every container


def _system_python_with_pip() -> str | None:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        check = "import sys, pip; sys.exit(sys.version_info < (3, 11))"
        if os.path.exists(candidate) and subprocess.run(
                [candidate, "-c", check], capture_output=True).returncode == 0:
            return candidate
    return None


def test_a_distro_python_keeps_its_own_packages_and_pip_installs_on_top(
        tmp_path: Path, containers: list[Container]) -> None:
    system = _system_python_with_pip()
    if system is None:
        pytest.skip("no system Python >= 3.11 with pip here")
    bin_dir = tmp_path / "distro-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(system)
    wheel = tiny_wheel(tmp_path)
    spec = spec_of(Image().pip_install([str(wheel)], args=["--no-index"]))
    box = start_container(runtime_container(spec, username=USER, namespace="ns"), spec,
                          tmp_path, f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    containers.append(box)
    assert box.port is not None, box.log
    conn = connect(box)
    try:  # builtins by reference: the distro's Python need not be this one's version
        tiny = call(conn, eval, "__import__('tinykt').VALUE")
        pip_at = call(conn, eval, "__import__('pip').__file__")
        prefix = call(conn, eval, "__import__('sys').prefix")
    finally:
        conn.close()
    assert tiny == 42
    assert not pip_at.startswith(prefix)  # the image's own pip, seen from the cached venv
    assert prefix == str(tmp_path / "cache" / "images" / spec.image_hash / "venv")
    assert not any("ensurepip" in line for line in box.bootstrap_lines())


def test_a_failing_step_exits_non_zero_naming_it(
        image: Path, tmp_path: Path, containers: list[Container]) -> None:
    spec = spec_of(Image().run_bash("echo preparing").run_bash("echo broken >&2; exit 7"))
    box = start_container(runtime_container(spec, username=USER, namespace="ns"), spec,
                          tmp_path, image_path(image))
    containers.append(box)
    assert box.proc.wait(timeout(60)) == EXIT_STEP
    last = box.lines[-1].rstrip("\n")
    assert last == (f"{LOG_PREFIX} error: image step 2/2 run_bash 'echo broken >&2; exit 7' "
                    f"failed (exit status 7); its output is above")
    assert "broken\n" in box.lines
    assert not (tmp_path / "cache" / "images" / spec.image_hash / "ready.json").exists()
    phase, error = log_phase(box.log)
    assert phase == "installing" and error is not None and "step 2/2" in error


def test_no_python_in_the_image_says_so(tmp_path: Path, containers: list[Container]) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    spec = spec_of(Image())
    box = start_container(runtime_container(spec, username=USER, namespace="ns"), spec,
                          tmp_path, str(empty))
    containers.append(box)
    assert box.proc.wait(timeout(30)) == EXIT_SETUP
    assert box.lines[-1].startswith(f"{LOG_PREFIX} error: no Python in this image")


def _other_python(*versions: str) -> str | None:
    for version in versions:
        found = shutil.which(f"python{version}")
        for candidate in [found, *sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/"
                                                          f"python{version}"))]:
            if candidate and subprocess.run([str(candidate), "-c", "pass"],
                                            capture_output=True).returncode == 0:
                return str(candidate)
    return None


def test_a_python_older_than_3_11_is_refused_with_its_version(
        tmp_path: Path, containers: list[Container]) -> None:
    old = _other_python("3.10", "3.9")
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine")
    bin_dir = tmp_path / "old-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old)
    spec = spec_of(Image())
    box = start_container(runtime_container(spec, username=USER, namespace="ns"), spec,
                          tmp_path, str(bin_dir))
    containers.append(box)
    assert box.proc.wait(timeout(30)) == EXIT_SETUP
    last = box.lines[-1]
    assert last.startswith(f"{LOG_PREFIX} error: the pod runtime needs Python >= 3.11")
    assert f"{bin_dir / 'python3'} (3.1" in last or f"{bin_dir / 'python3'} (3.9" in last


def test_an_image_python_of_another_version_runs_without_the_speedups(
        tmp_path: Path, containers: list[Container]) -> None:
    other = _other_python("3.12", "3.13")
    if other is None:
        pytest.skip("no other Python >= 3.11 on this machine")
    root = tmp_path / "image312"
    subprocess.run([other, "-m", "venv", "--without-pip", str(root)], check=True)
    spec = spec_of(Image())
    box = start_container(runtime_container(spec, username=USER, namespace="ns"), spec,
                          tmp_path, image_path(root / "bin"))
    containers.append(box)
    assert box.port is not None, box.log
    conn = connect(box)
    try:  # builtins travel by reference, so a 3.11 client can call a 3.12 pod
        mask = call(conn, eval, "__import__('websockets.frames').frames.apply_mask.__module__")
        version = call(conn, eval, "__import__('sys').version_info[:2]")
    finally:
        conn.close()
    assert mask == "websockets.utils"  # the client's 3.11 speedups are not loaded: pure Python
    assert tuple(version) != sys.version_info[:2]


def test_preinstalled_runtime_is_used_when_it_is_this_one(
        tmp_path: Path, containers: list[Container]) -> None:
    import websockets

    import pod_runtime

    root = tmp_path / "prebuilt"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    site = next((root / "lib").glob("python3.*/site-packages"))
    dirs = {str(Path(pod_runtime.__file__).parent.parent),
            str(Path(websockets.__file__).parent.parent)}
    (site / "prebuilt.pth").write_text("\n".join(sorted(dirs)) + "\n")
    spec = spec_of(Image())
    rc = runtime_container(spec, username=USER, namespace="ns")
    box = start_container(rc, spec, tmp_path, image_path(root / "bin"),
                          extra={"KT_RUNTIME_PREINSTALLED": "1"})
    containers.append(box)
    assert box.port is not None, box.log
    lines = box.bootstrap_lines()
    assert any("preinstalled in the image; not installing it" in line for line in lines)
    assert not any(line.startswith(f"{LOG_PREFIX} installing runtime") for line in lines)


def test_preinstalled_flag_without_a_runtime_installs_the_bundle(
        image: Path, tmp_path: Path, containers: list[Container]) -> None:
    spec = spec_of(Image())
    box = start_container(runtime_container(spec, username=USER, namespace="ns"), spec,
                          tmp_path, image_path(image), extra={"KT_RUNTIME_PREINSTALLED": "1"})
    containers.append(box)
    assert box.port is not None, box.log
    lines = box.bootstrap_lines()
    assert any("has no importable pod_runtime; installing this client's" in ln for ln in lines)
    assert any(line.startswith(f"{LOG_PREFIX} installing runtime") for line in lines)


def test_missing_token_and_unmounted_configmap_fail_clearly(
        image: Path, tmp_path: Path, containers: list[Container]) -> None:
    spec = spec_of(Image())
    rc = runtime_container(spec, username=USER, namespace="ns")
    box = start_container(rc, spec, tmp_path / "a", image_path(image),
                          extra={"KT_POD_TOKEN": ""})
    containers.append(box)
    assert box.proc.wait(timeout(30)) == EXIT_SETUP
    assert box.lines[-1].startswith(f"{LOG_PREFIX} error: KT_POD_TOKEN is not set")
    box = start_container(rc, spec, tmp_path / "b", image_path(image),
                          extra={"KT_RUNTIME_DIR": str(tmp_path / "nowhere")})
    containers.append(box)
    assert box.proc.wait(timeout(30)) == EXIT_SETUP
    assert "the runtime ConfigMap is not mounted" in box.lines[-1]


# ---- the bundle, the ConfigMap and the container contract ------------------------------


def test_bundle_is_deterministic_small_and_complete() -> None:
    one, two = build_bundle(), build_bundle()
    assert one.zip == two.zip and one.hash == two.hash
    assert runtime_bundle() is runtime_bundle()  # built once per process
    print(f"runtime bundle: zip {len(one.zip)} bytes, ConfigMap data {one.size} bytes "
          f"({one.size / CONFIGMAP_LIMIT:.0%} of the 1 MiB limit)")
    assert one.size < CONFIGMAP_LIMIT
    names = zipfile.ZipFile(io.BytesIO(one.zip)).namelist()
    assert names == sorted(names)
    assert {"pod_runtime/__main__.py", "websockets/frames.py", "cloudpickle/__init__.py",
            f"cloudpickle-{one.deps['cloudpickle']}.dist-info/METADATA"} <= set(names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    meta = json.loads(one.files["bundle.json"])
    assert meta["hash"] == one.hash and meta["zip_sha256"] == hashlib.sha256(one.zip).hexdigest()


def test_a_bundle_over_the_limit_is_refused_with_its_size() -> None:
    with pytest.raises(KtError, match=r"the pod runtime bundle is \d+ bytes as a ConfigMap, "
                                      r"over the \d+ a ConfigMap can hold"):
        build_bundle(limit=200_000)


def test_runtime_container_contract() -> None:
    img = Image().pip_install(["numpy"]).set_env_vars({"A": "1"})
    spec = spec_of(img, env={"B": "2", "C": "3"})
    rc = runtime_container(spec, username=USER, namespace="team")
    env = container_env(rc, "alice-dev-7d4b9-x2x9q")
    assert json.loads(env["KT_IMAGE_STEPS"]) == [[k, list(p)] for k, p in img.steps]
    assert env["KT_IMAGE_HASH"] == spec.image_hash
    assert env["KT_RUNTIME_PORT"] == str(RUNTIME_PORT) == str(rc.port)
    assert env["KT_COMPUTE_ENV_NAMES"] == "B,C" and env["KT_POD_NAME"] == "alice-dev"
    assert "KT_POD_TOKEN" not in env  # the renderer takes it from the compute's Secret
    # metrics and logs name the pod itself; logs are JSON lines for the log shipper
    assert env["KT_POD_INSTANCE"] == "alice-dev-7d4b9-x2x9q"
    assert env["KT_POD_LOG_FORMAT"] == "json"
    assert rc.readiness_path == "/ready"
    [configmap] = rc.objects
    name = configmap["metadata"]["name"]
    assert name == runtime_configmap_name(USER) and name.startswith("alice-kt-runtime-0.1.0-")
    assert {v["name"]: v for v in rc.volumes}["kt-runtime"]["configMap"]["name"] == name
    assert {v["name"]: v for v in rc.volumes}["kt-cache"] == {"name": "kt-cache", "emptyDir": {}}
    claimed = runtime_container(spec, username=USER, namespace="team", cache_claim="kt-pip")
    assert {"name": "kt-cache", "persistentVolumeClaim": {"claimName": "kt-pip"}} in claimed.volumes
    assert {m["mountPath"] for m in rc.volume_mounts} == {RUNTIME_DIR, CACHE_DIR}
    # Shared by the user's computes: found by the user's selector, not by one compute's.
    labels = configmap["metadata"]["labels"]
    assert identity.COMPUTE_LABEL not in labels and configmap["immutable"] is True
    assert _matches(identity.selector(USER), labels) and _matches(runtime_selector(USER), labels)
    assert not _matches(identity.selector(USER, "dev"), labels)
    assert not _matches(identity.selector("bob"), labels)


def _matches(selector: str, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (part.split("=") for part in selector.split(",")))


@pytest.mark.parametrize("version", ["1.25", "1.37"])
def test_configmap_validates_against_the_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    configmap = runtime_container(spec_of(Image()), username=USER, namespace="ns").objects[0]
    kubernetes_validate.validate(configmap, version, strict=True)


def test_log_phase_reads_the_bootstrap_lines() -> None:
    assert log_phase("") == (None, None)
    assert log_phase("pip output\nkt-bootstrap: image step 1/2 pip_install torch\n") == (
        "installing", None)
    assert log_phase("kt-bootstrap: starting runtime on 0.0.0.0:32300\n") == (
        "starting runtime", None)
    assert log_phase("kt-bootstrap: error: image step 1/1 run_bash 'x' failed (exit status 1)"
                     "; its output is above\n")[1] == (
        "image step 1/1 run_bash 'x' failed (exit status 1); its output is above")


def test_the_module_prints_the_bundle_and_its_manifest() -> None:
    module = "kubetorch_jupyter.backends.kubernetes.bootstrap"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    shown = subprocess.run([sys.executable, "-m", module, "--username", USER], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert f"configmap     {runtime_configmap_name(USER)}" in shown
    assert f"zip           {len(runtime_bundle().zip)} bytes" in shown
    manifest = json.loads(subprocess.run(
        [sys.executable, "-m", module, "--manifest", "--username", USER, "--namespace", "ml"],
        env=env, capture_output=True, text=True, check=True).stdout)
    assert manifest == runtime_container(spec_of(Image()), username=USER,
                                         namespace="ml").objects[0]
    bad = subprocess.run([sys.executable, "-m", module, "--username", "Bad_User"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: username 'Bad_User' is not valid (KT_USERNAME)")
