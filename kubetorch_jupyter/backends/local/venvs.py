"""Cached virtual environments for the local backend's images.

An :class:`~kubetorch_jupyter.Image` with ``pip_install`` or ``run_bash`` steps becomes
a virtual environment in ``<state_dir>/envs/<hash>``, where the hash covers the steps,
this Python's version and executable, and the directories it inherits. The environment
is built without pip of its own; a ``.pth`` file makes it inherit this interpreter's
installed packages (``site.addsitedir``, so editable installs keep working) and the
project's source root, so ``python -m pod_runtime`` runs in it and ``pip`` installs on
top of what the client already has.

Steps run in the client's working directory (so ``pip_install(["-e", "."])`` and
relative paths mean what they mean in the notebook), with ``$VIRTUAL_ENV`` naming the
environment being built and its ``bin`` first on ``PATH``.

Builds happen in a temporary directory next to the final one, under an ``flock`` per
hash, and are renamed into place when every step has succeeded: a failed or interrupted
build leaves nothing behind, and two processes never build the same environment twice.
Every build's output is kept in ``<state_dir>/envs/<hash>.log``.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path
from typing import TextIO

from ... import config
from ...core.image import Image
from ...core.progress import progress_bar
from ...exceptions import ImageBuildError
from .process import make_private_dir

__all__ = ["RUNTIME_DEPS", "env_dir", "image_python", "inherited_paths", "missing_runtime_deps"]

#: What ``python -m pod_runtime`` imports beyond the standard library.
RUNTIME_DEPS = ("websockets", "cloudpickle")

#: Lines of a failed step's output kept in :class:`ImageBuildError`.
TAIL_LINES = 40


def inherited_paths() -> list[str]:
    """Directories a built environment inherits: site dirs and the project's source root.

    Every ``sys.path`` entry that contains ``pod_runtime`` is included, so the pod
    runtime imports in the environment even when the project is not installed.
    """
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    for entry in sys.path:
        root = Path(entry or os.getcwd()).resolve()
        if (root / "pod_runtime" / "__init__.py").is_file():
            dirs.append(str(root))
    out: list[str] = []
    for d in dirs:
        if d not in out and os.path.isdir(d):
            out.append(d)
    return out


def missing_runtime_deps(python: str, env: dict[str, str] | None = None) -> list[str]:
    """Which of :data:`RUNTIME_DEPS` ``python`` cannot import (with the pod's ``env``)."""
    code = ("import importlib.util as u, sys; "
            "print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))")
    try:
        done = subprocess.run([python, "-c", code, *RUNTIME_DEPS], env=env, text=True,
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.split() if done.returncode == 0 else []


def env_dir(image: Image, state_dir: str | Path | None = None) -> Path:
    """Where the environment of ``image`` lives (whether or not it is built yet)."""
    root = Path(state_dir or config.get("state_dir")) / "envs"
    extra = (sys.version, os.path.realpath(sys.executable), *inherited_paths(),
             *_local_inputs(image))
    return root / image.content_hash(*extra)


def _local_inputs(image: Image) -> list[str]:
    """What on this disk an image's steps read, so that the cache key follows it.

    Steps run in the working directory: ``pip install -e .`` or ``-r requirements.txt``
    means a different environment in another project, or after the file changed.
    """
    out: list[str] = []
    for kind, payload in image.steps:
        if kind == "bash":
            out.append(f"cwd={os.getcwd()}")
        if kind != "pip":
            continue
        for arg in payload:
            if arg.startswith("-") and arg not in ("-r", "-c", "-e"):
                continue
            path = Path(arg).expanduser()
            if not (arg.startswith((".", "/", "~")) or path.exists()):
                continue  # a requirement like numpy==2.0
            real = os.path.realpath(path)
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
                out.append(f"{real}:{digest}")
            else:
                out.append(real)
    return out


def image_python(image: Image, *, state_dir: str | Path | None = None,
                 progress: bool | None = None) -> str:
    """The Python interpreter that runs pods of ``image``, building its environment if needed.

    An image without build steps runs on ``config.get("python")`` or,
    when that is unset, the client's own interpreter. Environments are always built
    from the client's interpreter (they inherit its packages), whatever that setting says.

    Args:
        image: The image.
        state_dir: State directory (default: ``config.get("state_dir")``).
        progress: Show a progress bar (default: ``config.get("progress")``).

    Returns:
        Path of the interpreter.

    Raises:
        ImageBuildError: When a step fails; nothing of the failed build is left behind.
    """
    if not image.needs_build:
        return str(config.get("python") or sys.executable)
    target = env_dir(image, state_dir)
    python = target / "bin" / "python"
    if python.exists():
        return str(python)
    make_private_dir(target.parent.parent)
    make_private_dir(target.parent)
    with open(target.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait
        if not python.exists():
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)  # a build that was killed
            show = config.get("progress") if progress is None else progress
            _build(image, target, progress=bool(show))
    return str(python)


def _build(image: Image, target: Path, *, progress: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(tmp)
        _write_pth(tmp)
        steps = [(k, p) for k, p in image.steps if k in ("pip", "bash")]
        with open(target.with_suffix(".log"), "w") as log:
            _run_steps(steps, tmp, log, name=target.name, progress=progress)
        _relocate(tmp, target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _site_packages(env: Path) -> Path:
    return Path(sysconfig.get_path("purelib", scheme="venv",
                                   vars={"base": str(env), "platbase": str(env)}))


def _write_pth(env: Path) -> None:
    """Make ``env`` inherit this interpreter's packages and the project's source root."""
    lines = [f"import site; site.addsitedir({d!r})" for d in inherited_paths()]
    target = _site_packages(env)
    target.mkdir(parents=True, exist_ok=True)
    (target / "_kubetorch_inherit.pth").write_text("\n".join(lines) + "\n")


def _describe(kind: str, payload: tuple[str, ...]) -> str:
    return f"pip install {' '.join(payload)}" if kind == "pip" else f"run_bash {payload[0]!r}"


def _status_of(line: str) -> str | None:
    """A short progress description from a line of pip's output, or None."""
    text = line.strip()
    for prefix in ("Collecting ", "Processing ", "Downloading ", "Building wheel",
                   "Installing collected packages", "Successfully installed"):
        if text.startswith(prefix):
            return text[:70]
    return None


def _run_steps(steps: list[tuple[str, tuple[str, ...]]], env_path: Path, log: TextIO, *,
               name: str, progress: bool) -> None:
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)
    env.update(
        VIRTUAL_ENV=str(env_path),
        PATH=f"{env_path / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PYTHONUNBUFFERED="1",
    )
    python = str(env_path / "bin" / "python")
    bar = progress_bar(enabled=progress, total=len(steps), desc=f"building image {name}",
                       unit="step", leave=False)
    try:
        for number, (kind, payload) in enumerate(steps, 1):
            step = _describe(kind, payload)
            bar.set_description(f"image {name}: {step[:60]}")
            argv = ([python, "-m", "pip", "install", *payload] if kind == "pip"
                    else ["bash", "-c", payload[0]])
            log.write(f"### step {number}/{len(steps)}: {step}\n")
            log.flush()
            tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", bufsize=1)
            assert proc.stdout is not None
            with proc:
                for line in proc.stdout:
                    log.write(line)
                    tail.append(line)
                    status = _status_of(line)
                    if status:
                        bar.set_description(f"image {name}: {status}")
            if proc.returncode != 0:
                output = "".join(tail)
                raise ImageBuildError(
                    f"building the image failed at step {number}/{len(steps)} ({step}): "
                    f"exit status {proc.returncode}; full log in {log.name}\n{output}",
                    step=step, output=output,
                )
            bar.update(1)
    finally:
        bar.close()


def _relocate(tmp: Path, target: Path) -> None:
    """Rewrite the build directory's path to the final one in scripts and pyvenv.cfg."""
    old, new = str(tmp).encode(), str(target).encode()
    files = [tmp / "pyvenv.cfg", *(tmp / "bin").iterdir()]
    for path in files:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        data = path.read_bytes()
        if old in data and b"\0" not in data[:1024]:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            path.chmod(mode)
