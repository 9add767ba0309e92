"""kt-bootstrap, inside the pod: install this client's runtime, run the image steps, start.

This file travels in the runtime ConfigMap and runs in the *image's* Python (found by
``start.sh``), so it uses the standard library only and imports nothing of ours. In order:

1. **Check** the interpreter (>= 3.11), the token's presence and the cache directory.
2. **Image steps** (``KT_IMAGE_STEPS``, the ``Image``'s steps as JSON): ``set_env_vars``
   applies in order (later steps see it; the compute's own variables, named in
   ``KT_COMPUTE_ENV_NAMES``, are never overridden); the first time an image hash is
   seen, a virtual environment is made in ``$KT_CACHE_DIR/images/<hash>/venv`` that
   inherits the image's own site directories (so the image's torch stays visible, even
   when the image's Python is itself a venv), and ``pip_install`` steps install into it.
   A marker (``ready.json``) is written only when every step succeeded; a later start
   with the same hash (a container restart, or another pod on the same cache volume)
   skips the pip steps. ``run_bash`` steps run at *every* container start: what they
   change outside the cache volume (``apt-get`` into ``/usr``, files in ``$HOME``) is
   gone when a container restarts, so skipping them would leave a cached venv whose
   system libraries are missing. Write them to be re-runnable; ``$KT_IMAGE_DIR`` (on
   the cache volume) is the place for what should be downloaded once. pip's download
   cache is ``$KT_CACHE_DIR/pip``. Steps never see ``KT_POD_TOKEN``.
3. **Runtime**: the bundle (``runtime.zip``: ``pod_runtime`` and its dependencies,
   pure Python) is checked against its hash and unpacked once per hash into
   ``$KT_CACHE_DIR/runtime/<hash>`` (so bytecode is cached too), then put first on
   ``PYTHONPATH`` of the runtime process only: the steps' pip never sees it. With
   ``KT_RUNTIME_PREINSTALLED=1`` (the project's prebuilt image) the image's own
   ``pod_runtime`` is used when its sources hash to the bundle's and its dependencies'
   versions match; otherwise the bundle is used and a line says why.
4. **Start**: ``exec python -m pod_runtime --host $KT_POD_HOST --port $KT_RUNTIME_PORT``.

Progress goes to stdout and errors to stderr, one line each, all prefixed
``kt-bootstrap:`` (errors ``kt-bootstrap: error:``); the backend reads phases from them.
Exit statuses: 2 for a setup problem (Python, token, cache, malformed steps), 3 for a
failed image step, 4 for a broken runtime bundle. The token is never printed.

``python kt_start.py --probe`` prints, as JSON, the source hash of the ``pod_runtime``
this interpreter imports and its dependencies' versions (for the preinstalled check).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NoReturn

PREFIX = "kt-bootstrap:"
EXIT_SETUP = 2
EXIT_STEP = 3
EXIT_RUNTIME = 4
#: The packages the bundle carries besides ``pod_runtime`` (their versions are checked).
DEPENDENCIES = ("websockets", "cloudpickle", "prometheus_client")


def say(message: str) -> None:
    """A progress line on stdout."""
    print(f"{PREFIX} {message}", flush=True)


def fail(status: int, message: str) -> NoReturn:
    """One error line on stderr, then exit with ``status``."""
    sys.stdout.flush()
    print(f"{PREFIX} error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


# ---- hashing (shared with the client, which imports this function) ---------------------


def source_hash(package_dir: str | Path) -> str:
    """The sha256 of a package's ``.py`` files: sorted relative paths and contents."""
    root = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def probe() -> dict[str, Any]:
    """What this interpreter would run as ``pod_runtime``: its source hash and dep versions."""
    import importlib.util
    from importlib import metadata

    out: dict[str, Any] = {"runtime_hash": None, "versions": {}}
    spec = importlib.util.find_spec("pod_runtime")
    if spec is not None and spec.submodule_search_locations:
        out["runtime_hash"] = source_hash(next(iter(spec.submodule_search_locations)))
    for name in DEPENDENCIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out["versions"][name] = metadata.version(name)
    return out


# ---- image steps -----------------------------------------------------------------------


def describe(kind: str, payload: list[str]) -> str:
    """A step as the user wrote it: ``pip_install torch``, ``run_bash 'make'``."""
    if kind == "pip":
        packages = payload[payload.index("--") + 1:] if "--" in payload else payload
        return "pip_install " + " ".join(packages)
    if kind == "env":
        return "set_env_vars " + ", ".join(item.partition("=")[0] for item in payload)
    return f"run_bash {payload[0]!r}" if payload else "run_bash"


def parse_steps(text: str) -> list[tuple[str, list[str]]]:
    """``KT_IMAGE_STEPS`` (``[[kind, [args...]], ...]``) as a list, or exit with a message."""
    try:
        raw = json.loads(text or "[]")
        steps = [(str(kind), [str(a) for a in payload]) for kind, payload in raw]
    except (ValueError, TypeError) as exc:
        fail(EXIT_SETUP, f"KT_IMAGE_STEPS is not a JSON list of [kind, [args]] steps ({exc})")
    for kind, payload in steps:
        if kind not in ("pip", "env", "bash") or (kind == "bash" and len(payload) != 1):
            fail(EXIT_SETUP, f"KT_IMAGE_STEPS has a step this bootstrap does not know: "
                             f"{[kind, payload]!r} (is the client newer than its runtime?)")
    return steps


def inherited_site_dirs() -> list[str]:
    """The image interpreter's site directories (a venv made from it inherits them)."""
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else ""
    if user and os.path.isdir(user):
        dirs.append(user)
    return dirs


def make_venv(target: Path) -> Path:
    """A venv at ``target`` that sees the image's packages after its own; its python."""
    import sysconfig
    import venv

    try:
        try:
            venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(target)
        except OSError:  # a volume without symbolic links (some SMB/NFS): copy the binary
            venv.EnvBuilder(with_pip=False, symlinks=False, clear=True).create(target)
    except Exception as exc:  # noqa: BLE001 - any failure: say what and where
        fail(EXIT_SETUP, f"could not create a virtual environment in {target}: {exc}")
    purelib = sysconfig.get_path("purelib", scheme="venv",
                                 vars={"base": str(target), "platbase": str(target)})
    Path(purelib).mkdir(parents=True, exist_ok=True)
    lines = [f"import site; site.addsitedir({d!r})" for d in inherited_site_dirs()]
    (Path(purelib) / "_kt_image_site.pth").write_text("\n".join(lines) + "\n")
    return target / "bin" / "python"


def ensure_pip(python: Path, env: dict[str, str], step: str) -> None:
    """Make ``pip`` importable in the venv: the image's, else ``ensurepip`` (offline)."""
    if subprocess.run([python, "-c", "import pip"], env=env, capture_output=True).returncode == 0:
        return
    say("the image has no pip; installing it with ensurepip (offline)")
    done = subprocess.run([python, "-m", "ensurepip", "--default-pip"], env=env,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        fail(EXIT_STEP, f"{step} needs pip, and the image has neither pip nor ensurepip: "
                        f"use an image with pip, or install it in an earlier run_bash step")


def run_step(argv: list[str], env: dict[str, str], label: str) -> None:
    """Run one step with its output in the pod's log; exit naming it if it fails."""
    try:
        status = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL).returncode
    except OSError as exc:
        fail(EXIT_STEP, f"{label} could not start: {exc}")
    if status != 0:
        how = f"signal {-status}" if status < 0 else f"exit status {status}"
        fail(EXIT_STEP, f"{label} failed ({how}); its output is above")


def marker_content(image_hash: str) -> dict[str, str]:
    """What a finished build records: the hash and the interpreter it was built for."""
    return {"image_hash": image_hash, "python": sys.version, "executable": sys.executable}


def prepare_image(steps: list[tuple[str, list[str]]], image_hash: str, cache: Path,
                  env: dict[str, str], keep: set[str]) -> str:
    """Apply env steps and run the others (pip ones once per hash); the runtime's python."""
    total = len(steps)
    if all(kind == "env" for kind, _ in steps):
        for number, (_, payload) in enumerate(steps, 1):
            say(f"image step {number}/{total} {describe('env', payload)}")
            apply_env(payload, env, keep)
        return sys.executable
    if not image_hash or not all(c.isalnum() or c in "-_." for c in image_hash):
        fail(EXIT_SETUP, f"KT_IMAGE_HASH {image_hash!r} is not a hash; the manifest sets it "
                         f"with KT_IMAGE_STEPS")
    home = cache / "images" / image_hash
    home.mkdir(parents=True, exist_ok=True)
    marker = home / "ready.json"
    with open(cache / "images" / f"{image_hash}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"image {image_hash}: waiting for another pod building it on this volume")
            fcntl.flock(lock, fcntl.LOCK_EX)
        venv_dir = home / "venv"
        cached = (_read_json(marker) == marker_content(image_hash)
                  and (venv_dir / "bin" / "python").exists())
        if cached:  # nothing to build: other pods need not wait for our run_bash steps
            fcntl.flock(lock, fcntl.LOCK_UN)
            python = venv_dir / "bin" / "python"
            pips = sum(kind == "pip" for kind, _ in steps)
            say(f"image {image_hash} cached in {home}: skipping {pips} pip_install step(s)")
        else:
            marker.unlink(missing_ok=True)
            say(f"image {image_hash}: building in {home} ({total} steps)")
            python = make_venv(venv_dir)
        env.setdefault("PIP_CACHE_DIR", str(cache / "pip"))  # downloads outlive a hash
        env.update(VIRTUAL_ENV=str(venv_dir), KT_IMAGE_DIR=str(home),
                   PATH=f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}",
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        env.pop("PYTHONHOME", None)
        shell = shutil.which("bash", path=env["PATH"]) or "/bin/sh"
        pip_ready = False
        for number, (kind, payload) in enumerate(steps, 1):
            label = f"image step {number}/{total} {describe(kind, payload)}"
            if kind == "env":
                say(label)
                apply_env(payload, env, keep)
            elif kind == "bash":
                say(label)
                run_step([shell, "-c", payload[0]], env, label)
            elif not cached:
                say(label)
                if not pip_ready:
                    ensure_pip(python, env, label)
                    pip_ready = True
                run_step([str(python), "-m", "pip", "install", *payload], env, label)
        if not cached:
            marker.write_text(json.dumps(marker_content(image_hash)))
            say(f"image {image_hash}: built")
    return str(python)


def apply_env(payload: list[str], env: dict[str, str], keep: set[str]) -> None:
    """Set ``NAME=value`` items in ``env``, except the compute's own variables."""
    for item in payload:
        key, _, value = item.partition("=")
        if key not in keep:
            env[key] = value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- the runtime -----------------------------------------------------------------------


def install_runtime(runtime_dir: Path, cache: Path, bundle: dict[str, Any]) -> Path:
    """Unpack the bundle once per hash into the cache; the directory for ``PYTHONPATH``."""
    target = cache / "runtime" / bundle["hash"][:16]
    label = f"runtime {bundle['version']} ({bundle['hash'][:8]})"
    if (target / "pod_runtime" / "__init__.py").is_file():
        say(f"{label} already installed in {target}")
        return target
    say(f"installing {label} into {target}")
    archive = runtime_dir / "runtime.zip"
    try:
        data = archive.read_bytes()
    except OSError as exc:
        fail(EXIT_RUNTIME, f"cannot read the runtime bundle {archive}: {exc}")
    if hashlib.sha256(data).hexdigest() != bundle["zip_sha256"]:
        fail(EXIT_RUNTIME, f"the runtime bundle {archive} does not match its hash "
                           f"(a truncated ConfigMap?); delete the ConfigMap and start again")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another pod on this volume unpacked it first
            if not (target / "pod_runtime" / "__init__.py").is_file():
                raise
    except (OSError, zipfile.BadZipFile) as exc:
        fail(EXIT_RUNTIME, f"could not unpack the runtime bundle into {target}: {exc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def preinstalled(python: str, env: dict[str, str], bundle: dict[str, Any]) -> bool:
    """Whether ``python`` already imports this very runtime (the project's image)."""
    done = subprocess.run([python, __file__, "--probe"], env=env, capture_output=True,
                          text=True)
    found = _loads(done.stdout) if done.returncode == 0 else None
    if not isinstance(found, dict) or not found.get("runtime_hash"):
        say("KT_RUNTIME_PREINSTALLED=1 but the image has no importable pod_runtime; "
            "installing this client's")
        return False
    if found["runtime_hash"] != bundle["runtime_hash"] or found["versions"] != bundle["deps"]:
        say(f"the image's pod_runtime ({found['runtime_hash'][:8]}, {found['versions']}) "
            f"differs from this client's ({bundle['runtime_hash'][:8]}, {bundle['deps']}); "
            f"installing this client's")
        return False
    say(f"runtime {bundle['version']} preinstalled in the image; not installing it")
    return True


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def main() -> NoReturn:
    """Prepare the container and exec the pod runtime (see the module docstring)."""
    if sys.version_info < (3, 11):  # noqa: UP036 - runs in the image's Python, any version
        fail(EXIT_SETUP, f"the pod runtime needs Python >= 3.11, {sys.executable} is "
                         f"{sys.version.split()[0]}")
    runtime_dir = Path(os.environ.get("KT_RUNTIME_DIR") or "/opt/kt/runtime")
    cache = Path(os.environ.get("KT_CACHE_DIR") or "/var/cache/kt")
    host = os.environ.get("KT_POD_HOST") or "0.0.0.0"  # a pod's own interface
    port = os.environ.get("KT_RUNTIME_PORT") or "32300"
    if not port.isdigit():
        fail(EXIT_SETUP, f"KT_RUNTIME_PORT must be a port number, got {port!r}")
    if not os.environ.get("KT_POD_TOKEN"):
        fail(EXIT_SETUP, "KT_POD_TOKEN is not set; the manifest takes it from the "
                         "compute's Secret (does the Secret exist?)")
    bundle = _read_json(runtime_dir / "bundle.json")
    if not isinstance(bundle, dict) or not {"hash", "version", "zip_sha256"} <= set(bundle):
        fail(EXIT_RUNTIME, f"{runtime_dir}/bundle.json is missing or malformed: is the "
                           f"runtime ConfigMap mounted at KT_RUNTIME_DIR?")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache):
            pass
    except OSError as exc:
        fail(EXIT_SETUP, f"the cache directory {cache} (KT_CACHE_DIR) is not writable by "
                         f"uid {os.getuid()}: {exc}; mount a writable volume there "
                         f"(or set the pod's fsGroup)")

    env = dict(os.environ)
    token = env.pop("KT_POD_TOKEN")  # for the runtime only: steps (pip builds) never see it
    keep = {n for n in env.get("KT_COMPUTE_ENV_NAMES", "").split(",") if n}
    steps = parse_steps(env.get("KT_IMAGE_STEPS", ""))
    python = prepare_image(steps, env.get("KT_IMAGE_HASH", ""), cache, env, keep)

    if env.get("KT_RUNTIME_PREINSTALLED") == "1" and preinstalled(python, env, bundle):
        pass
    else:
        runtime = install_runtime(runtime_dir, cache, bundle)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(runtime),
                                                        env.get("PYTHONPATH")) if p)
    hostname = env.get("HOSTNAME") or socket.gethostname() or "pod"  # the pod's name
    env.setdefault("KT_STATE_DIR", str(cache / "state" / hostname))
    env["PYTHONUNBUFFERED"] = "1"
    env["KT_POD_TOKEN"] = token
    say(f"starting runtime on {host}:{port}")
    sys.stdout.flush()
    argv = [python, "-m", "pod_runtime", "--host", host, "--port", port]
    try:
        os.execve(python, argv, env)
    except OSError as exc:
        fail(EXIT_SETUP, f"could not start {python}: {exc}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        print(json.dumps(probe()))
    else:
        main()
