"""The local backend: a pod is a ``python -m pod_runtime`` process on this machine.

Each pod listens on an ephemeral loopback port with a random token and is recorded in
``<state_dir>/pods/<name>.json`` (mode 0600, in a 0700 directory), so a restarted kernel,
another notebook or ``kt list`` finds it warm. Pods run in their own session and outlive
the process that started them; their stdout and stderr go to ``<state_dir>/logs/<name>.log``.

Resources:

- **gpus**: handed out with ``CUDA_VISIBLE_DEVICES`` (see :mod:`.gpus`); a pod with
  ``gpus=0`` gets ``CUDA_VISIBLE_DEVICES=""`` so it cannot touch a GPU another pod holds.
  A ``CUDA_VISIBLE_DEVICES`` in the client's own environment limits which GPUs kt hands
  out; the pod's value is always its allocation, whatever ``env`` says.
- **cpus**: when fewer than the cores this process may use, the pod is pinned to the
  first ``ceil(cpus)`` of them and ``OMP/MKL/OPENBLAS_NUM_THREADS`` are set (unless the
  compute's env sets them).
- **memory**: enforced by a watchdog process that SIGKILLs the pod (and what it
  started) past the limit and records why (see :mod:`.memory`); its calls fail with
  :class:`~kubetorch_jupyter.PodOOMError` and ``status`` says ``OOMKilled``.

A pod that stops by itself says why in ``<state_dir>/ended/<name>.term`` (its
termination log: ``Preempted`` after a SIGTERM, ``Idle`` after its inactivity TTL),
which ``status`` reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import psutil

from pod_runtime.protocol import shm

from ... import config
from ...core.names import check_name as _check_name
from ...core.resources import format_bytes
from ...core.spec import ComputeSpec
from ...exceptions import ComputeNotFoundError, ConfigError, PodStartError, ResourceUnavailableError
from ..base import ANY_POD, Backend, PodChanged, PodInfo, PodStatus
from . import gpus as _gpus
from . import memory, teardowns, venvs
from .process import follow, make_private_dir, probe, read_line, source_root, wait_gone
from .process import tail as read_tail

__all__ = ["LocalBackend"]

logger = logging.getLogger(__name__)

#: Popen objects of the pods this process started, by pid, for their exit status.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Seconds a pod gets to exit after SIGTERM before SIGKILL.
TERM_GRACE = 5.0
#: Seconds after SIGTERM for a pod that did not answer its health probe: its Python is
#: held by C code (one bytecode that never lets go of the GIL), so its SIGTERM handler
#: cannot run, and the graceful stop TERM_GRACE waits for cannot happen.
BUSY_TERM_GRACE = 0.5
#: Lines of the log a PodStartError carries.
LOG_TAIL_LINES = 40


def _end_orphans(info: PodInfo) -> None:
    """Kill what a dead pod's code started (DataLoader workers, a shell's children).

    A pod leads its own process group; when it dies (SIGKILL, OOM) its children live on,
    holding memory and the GPUs the pod's allocation frees. A process group id is not
    reused while the group has members, and only processes started after the pod count.
    """
    if info.pid is None:
        return
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if (proc.info["pid"] != info.pid and os.getpgid(proc.info["pid"]) == info.pid
                    and proc.info["create_time"] >= info.started_at - 1):
                proc.kill()
        except (psutil.Error, ProcessLookupError, PermissionError, OSError):
            continue


def _stored(info: PodInfo, fallback: ComputeSpec) -> ComputeSpec:
    """The spec a pod's record holds (a record without one: ``fallback``'s name only)."""
    try:
        return ComputeSpec.from_json(info.spec)
    except (ValueError, TypeError):
        return ComputeSpec(name=fallback.name, backend=fallback.backend)


class LocalBackend(Backend):
    """Pods as processes on this machine.

    Args:
        state_dir: Where pods are recorded (default: ``config.get("state_dir")``, read
            on every call).
        discover_gpus: Returns this machine's GPUs (tests pass a fake).
    """

    name = "local"

    def __init__(self, state_dir: str | Path | None = None, *,
                 discover_gpus: _gpus.Discover = _gpus.discover_gpus) -> None:
        self._state_dir = state_dir
        self._discover = discover_gpus

    # ---- state ------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """The state directory (created mode 0700 when missing).

        Raises:
            ConfigError: When it cannot be created or used (``KT_STATE_DIR=/proc/nope``).
        """
        path = Path(self._state_dir or config.get("state_dir"))
        try:
            return make_private_dir(path)
        except OSError as exc:
            raise ConfigError(f"the state directory {str(path)!r} cannot be used "
                              f"({exc.strerror or exc}): point KT_STATE_DIR at a directory "
                              "you can write to") from None

    def _pods(self) -> Path:
        return make_private_dir(self.state_dir / "pods")

    def log_path(self, name: str) -> Path:
        """The file the pod called ``name`` writes its stdout and stderr to."""
        return self.state_dir / "logs" / f"{_check_name(name)}.log"

    @contextlib.contextmanager
    def _locked(self, name: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the pod's lock (find-or-start, stop); without ``wait``, yield False if busy.

        The lock file goes when its holder leaves no pod record behind (a teardown, a
        start that failed), so names once typed leave nothing in the state directory.
        That is safe because it is removed only by a holder, and a process that locked
        a file is sure it holds the lock only once the file it locked is still the one
        at the path (same inode); else it locks the new one.
        """
        path = self._pods() / f"{name}.lock"
        while True:
            lock = open(path, "a")  # noqa: SIM115  (closed below)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                yield False
                return
            try:
                same = os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            lock.close()  # its holder removed it while we waited: lock the one there now
        try:
            yield True
        finally:
            if not (self._pods() / f"{name}.json").exists():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # still holding it: a waiter re-checks and re-opens
            lock.close()

    def _read(self, name: str) -> PodInfo | None:
        try:
            return PodInfo.from_json(json.loads((self._pods() / f"{name}.json").read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            logger.warning("ignoring the unreadable record of pod %r", name)
            return None

    def _write(self, info: PodInfo) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._pods(), prefix=f".{info.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
            json.dump(info.to_json(), f, indent=1)
        os.replace(tmp, self._pods() / f"{info.name}.json")

    def _prune(self, info: PodInfo) -> None:
        """Forget a dead pod's record, unless another process is (re)starting it now."""
        with self._locked(info.name, wait=False) as locked:
            current = self._read(info.name) if locked else None
            if current is not None and current.pid == info.pid and not self._alive(current):
                self._forget(current)

    def _forget(self, info: PodInfo) -> None:
        _end_orphans(info)
        with contextlib.suppress(FileNotFoundError):
            (self._pods() / f"{info.name}.json").unlink()
        _gpus.release(self.state_dir, info.name)

    def _alive(self, info: PodInfo) -> bool:
        if info.pid is None:
            return False
        child = _CHILDREN.get(info.pid)
        if child is not None:
            return child.poll() is None
        try:
            proc = psutil.Process(info.pid)
            if proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > info.started_at + 1:
                return False
            argv = proc.cmdline()
        except psutil.Error:
            return False
        named = any(a == "--name" and b == info.name for a, b in itertools.pairwise(argv))
        return named and any("pod_runtime" in a for a in argv)

    # ---- Backend ------------------------------------------------------------------------

    def gone(self, info: PodInfo) -> bool:
        """Whether the pod's process has ended (a ``waitpid``, or a signal-0 probe)."""
        if info.pid is None:
            return True
        child = _CHILDREN.get(info.pid)
        if child is not None:
            return child.poll() is not None
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # a process of another user has that pid: not ours
            return True
        return False

    def up(self, spec: ComputeSpec, *, progress: bool = True,
           replacing: str | None = ANY_POD) -> PodInfo:
        """Return the warm pod running ``spec``; start it, or replace one running another spec.

        Whether a running pod may be replaced is the core's decision
        (:func:`kubetorch_jupyter.core.policy.decide`), made before this is called.

        Raises:
            ResourceUnavailableError: When it asks for more GPUs than are free, or more
                memory or cores than this machine has.
            ImageBuildError: When building its image's environment fails.
            PodStartError: When the pod exits or stays silent past ``start_timeout``.
            PodChanged: When the live pod is not the one ``replacing`` names.
        """
        name = _check_name(spec.name)
        spec_hash = spec.spec_hash()
        show = bool(progress and config.get("progress"))
        with self._locked(name):
            old = self._read(name)
            if old is not None and self._alive(old) and old.spec_hash == spec_hash:
                return old
            if (replacing != ANY_POD and old is not None and self._alive(old)
                    and old.spec_hash != replacing):
                raise PodChanged(name)  # another process started it since the decision
            # Everything that can fail before the warm pod is stopped: a restart that
            # cannot happen (no such GPUs, a broken image) must leave it running.
            python = self._prepare(spec, progress=show)
            if old is not None and self._alive(old):
                logger.info("replacing pod %r: %s", name, "; ".join(
                    _stored(old, spec).diff(spec)) or "its record changed")
                self._stop(old)
            elif old is not None:
                self._forget(old)
            return self._start(spec, python, spec_hash, progress=show)

    def check(self, spec: ComputeSpec, *, progress: bool = True) -> None:
        """Raise now what starting ``spec`` would raise before its pod runs (GPUs, image)."""
        self._prepare(spec, progress=bool(progress and config.get("progress")))

    def _prepare(self, spec: ComputeSpec, *, progress: bool) -> str:
        """Check the machine can hold it and the GPUs are free, build the image; its Python."""
        _check_fits(spec)
        _gpus.allocate(self.state_dir, spec.name, spec.gpus, discover=self._discover,
                       dry_run=True)
        return venvs.image_python(spec.build_image(), state_dir=self.state_dir,
                                  progress=progress)

    def get(self, name: str) -> PodInfo:
        """The running pod called ``name`` (a record whose process died is removed).

        Raises:
            ComputeNotFoundError: When there is none.
        """
        info = self._read(_check_name(name))
        if info is not None and self._alive(info):
            return info
        if info is not None:
            self._prune(info)
        raise ComputeNotFoundError(name, [p.name for p in self.list()])

    def list(self) -> list[PodInfo]:
        """Every running pod, by name; records of dead pods are removed."""
        out = []
        for path in sorted(self._pods().glob("*.json")):
            info = self._read(path.stem)
            if info is None:
                continue
            if self._alive(info):
                out.append(info)
            else:
                self._prune(info)
        return out

    def down(self, name: str) -> None:
        """Stop the pod (SIGTERM, SIGKILL after 5 s), free its GPUs and forget it.

        A pod that does not answer its health probe (busy in C code that holds the GIL,
        so its SIGTERM handler cannot run) is killed 0.5 s after SIGTERM.

        Raises:
            ComputeNotFoundError: When no pod of that name is recorded.
        """
        with self._locked(_check_name(name)):
            info = self._read(name)
            if info is None:
                raise ComputeNotFoundError(name, [p.name for p in self.list()])
            teardowns.record(self.state_dir, name, info.pid)  # its clients read "torn down"
            self._stop(info)

    def status(self, info: PodInfo) -> PodStatus:
        """Running, or how the pod ended.

        The exit status (a signal: ``failed``, reason ``Killed``; a non-zero code:
        ``failed``, reason ``Error``) is known for pods this process started; of others
        only that they are ``gone``. A pod that :meth:`down` stopped is ``gone``, reason
        ``TornDown``, its message naming the process that did it. A pod its memory
        watchdog killed is ``failed``, reason ``OOMKilled`` (limit and peak in the message
        and in ``memory_limit`` / ``memory_peak``); one that stopped by itself says why
        (``Preempted``, ``Idle``: its termination log).
        """
        if self._alive(info):
            return PodStatus("running")
        child = _CHILDREN.get(info.pid) if info.pid is not None else None
        code = child.returncode if child is not None else None
        torn = teardowns.who_tore_down(self.state_dir, info.name, info.pid)
        if torn is not None:
            return PodStatus("gone", "TornDown", torn, code)
        oom = memory.oom_status(self.state_dir, info.name, info.pid, code)
        if oom is not None:
            return oom
        said = self._termination_log(info)
        ended = PodStatus.from_termination_log(said, code) if said else None
        return ended if ended is not None else PodStatus.from_exit(code)

    def _termination_log(self, info: PodInfo) -> str | None:
        """What the pod wrote to its termination log (only if it was this pod process)."""
        path = self.state_dir / "ended" / f"{info.name}.term"
        try:
            if path.stat().st_mtime < info.started_at - 1:
                return None
            return path.read_text()
        except OSError:
            return None

    def settle(self, info: PodInfo, timeout: float) -> PodStatus:
        """The status once the pod's exit is visible, waiting up to ``timeout`` seconds for it.

        A SIGKILLed pod's sockets reset before its exit can be seen (waitpid for our
        children, a pidfd for others): without this a dead pod looks unreachable.
        """
        if info.pid is not None and self._alive(info):
            wait_gone(info.pid, timeout, _CHILDREN.get(info.pid))
        return self.status(info)

    def logs(self, name: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the pod's log (kept after it exits).

        The pod rotates its log past ``KT_POD_LOG_MAX_BYTES`` to ``<log>.1``; lines
        from there complete a tail the fresh log is too short for.

        Raises:
            ComputeNotFoundError: When the pod never wrote a log.
        """
        path = self.log_path(name)
        if not path.exists():
            raise ComputeNotFoundError(name, [p.name for p in self.list()])
        text = read_tail(path, tail)
        older = path.with_name(path.name + ".1")
        have = text.count("\n")
        if have < tail and older.exists():
            text = read_tail(older, tail - have) + text
        return text

    def ready(self, info: PodInfo) -> Literal["ready", "starting", "unresponsive"] | None:
        """Ask the pod's ``/ready`` endpoint."""
        try:
            status, _ = probe(info.url, "/ready")
        except OSError:
            return "unresponsive"
        return "ready" if status == 200 else "starting"

    def idle_since(self, info: PodInfo) -> float | None:
        """The pod's last activity, from its ``/metrics``."""
        try:
            status, body = probe(info.url, "/metrics")
        except OSError:
            return None
        for line in body.decode("utf-8", "replace").splitlines() if status == 200 else ():
            if line.startswith("kt_last_activity_timestamp_seconds"):
                with contextlib.suppress(ValueError):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def follow_logs(self, name: str, tail: int = 10,
                    stop: threading.Event | None = None) -> Iterator[str]:
        """The last ``tail`` lines of the pod's log, then each line appended, until ``stop``.

        Ends by itself when the pod ends (torn down, exited, or not running to begin
        with), after the last lines it wrote. A file has no "appended" event in the
        stdlib: new data is looked for every quarter second (waiting on ``stop``, so
        setting it ends the wait at once).

        Raises:
            ComputeNotFoundError: When the pod never wrote a log.
        """
        path = self.log_path(name)
        if not path.exists():
            raise ComputeNotFoundError(name, [p.name for p in self.list()])
        info = self._read(name)
        pid = info.pid if info is not None else None

        def ended() -> bool:
            current = self._read(name)  # torn down: the record goes (a zombie may linger)
            return (current is None or current.pid != pid
                    or self.gone(current))

        f = open(path, "rb")  # noqa: SIM115  (closed by the generator)
        end = f.seek(0, os.SEEK_END)  # now, not at the first next(): no line is missed
        return follow(path, f, read_tail(path, tail, end=end), stop or threading.Event(),
                       ended)

    # ---- processes ------------------------------------------------------------------------

    def _answers(self, info: PodInfo) -> bool:
        """Whether the pod's Python answers its health probe (no: it is stuck in C code)."""
        try:
            status, _ = probe(info.url, "/healthz")
        except OSError:
            return False
        return status == 200

    def _stop(self, info: PodInfo) -> None:
        pid = info.pid
        ours = pid is not None and self._alive(info)
        if pid is not None and ours:
            grace = TERM_GRACE if self._answers(info) else BUSY_TERM_GRACE
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not wait_gone(pid, grace, _CHILDREN.get(pid)):
                if grace == TERM_GRACE:
                    logger.warning("pod %r did not exit %gs after SIGTERM; killing it",
                                   info.name, grace)
                else:
                    logger.info("pod %r is busy in code that holds the GIL (its health "
                                "probe did not answer) and cannot handle SIGTERM; killing it",
                                info.name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_gone(pid, TERM_GRACE, _CHILDREN.get(pid))
            # what the pod's code started lives on in its session: end it too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if pid is not None and (ours or not psutil.pid_exists(pid)):  # not a reused pid's
            for leftover in Path("/dev/shm").glob(f"kt-{pid}-*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        # and what crashed clients and pods left (SIGKILL skips every cleanup): tmpfs is RAM
        with contextlib.suppress(OSError):
            shm.sweep_dead_owners()
        self._forget(info)

    def _pod_env(self, spec: ComputeSpec, indices: Sequence[int], token: str,
                 threads: int | None) -> dict[str, str]:
        env = dict(os.environ)
        own = spec.pod_env  # the image's variables, then the compute's
        env.update(own)
        root = source_root()
        if root:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if threads is not None:
            for var in _THREAD_VARS:
                if var not in own:
                    env[var] = str(threads)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, indices))
        if indices:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's order, which indices follow
        env["KT_POD_TOKEN"] = token
        env["KT_POD_NAME"] = spec.name
        env["KT_STATE_DIR"] = str(self.state_dir)  # absolute: the pod runs elsewhere
        env["KT_POD_TERMINATION_LOG"] = str(make_private_dir(self.state_dir / "ended")
                                             / f"{spec.name}.term")
        return env

    def _start(self, spec: ComputeSpec, python: str, spec_hash: str, *,
               progress: bool) -> PodInfo:
        name, state = spec.name, self.state_dir
        cores = sorted(os.sched_getaffinity(0))
        want = math.ceil(spec.cpus) if spec.cpus else len(cores)
        pin = cores[:want] if want < len(cores) else None
        indices = _gpus.allocate(state, name, spec.gpus, discover=self._discover)
        teardowns.clear(state, name)
        memory.clear(state, name)
        with contextlib.suppress(OSError):
            (state / "ended" / f"{name}.term").unlink()
        proc = None
        try:
            token = secrets.token_urlsafe(32)
            env = self._pod_env(spec, indices, token, len(pin) if pin else None)
            log_path = make_private_dir(state / "logs") / f"{name}.log"
            # The pod's own working directory: it must not see (and import from) the
            # user's tree except through code sync, exactly as a pod in a cluster.
            workdir = make_private_dir(state / "work" / name)
            read_fd, write_fd = os.pipe()
            argv = [python, "-m", "pod_runtime", "--host", "127.0.0.1", "--port", "0",
                    "--name", name, "--ready-fd", str(write_fd)]
            if spec.inactivity_ttl:
                argv += ["--inactivity-ttl", str(spec.inactivity_ttl)]
            try:
                with open(log_path, "ab") as log:
                    log.write(f"=== kt: starting pod {name!r} at {time.ctime()} "
                              f"({python}) ===\n".encode())
                    log.flush()
                    offset = log.tell()
                    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                            pass_fds=(write_fd,), start_new_session=True)
            except OSError as exc:
                os.close(read_fd)
                raise PodStartError(f"could not run {python!r} for pod {name!r}: {exc}",
                                    pod=name, reason="Error") from exc
            finally:
                os.close(write_fd)
            _CHILDREN[proc.pid] = proc
            if pin:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(proc.pid, pin)
            try:
                ready = self._wait_ready(read_fd, proc, name, progress=progress,
                                         log_path=log_path, offset=offset)
            except PodStartError as exc:
                missing = venvs.missing_runtime_deps(python, env) if proc.poll() else []
                if not missing:
                    raise
                raise PodStartError(
                    f"pod {name!r} cannot start: its Python ({python}) lacks the pod "
                    f"runtime's dependencies {', '.join(missing)}. Install them with "
                    f"`{python} -m pip install {' '.join(missing)}`, or point KT_PYTHON at "
                    "a Python that has them", pod=name, reason=exc.reason) from None
            finally:
                os.close(read_fd)
            started_at = time.time()  # after the pod (whichever pid reported) was created
            pid = int(ready.get("pid") or proc.pid)
            info = PodInfo(name=name, url=f"ws://127.0.0.1:{int(ready['port'])}", token=token,
                           backend=self.name, pid=pid, started_at=started_at, gpus=indices,
                           spec=spec.to_json(), spec_hash=spec_hash, log_path=str(log_path))
            if indices:
                _gpus.assign(state, name, pid)
            if spec.memory is not None:
                memory.start_watchdog(state, name, pid, spec.memory)
            self._write(info)
            return info
        except BaseException:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _gpus.release(state, name)
            raise

    def _wait_ready(self, fd: int, proc: subprocess.Popen[bytes], name: str, *,
                    progress: bool, log_path: Path, offset: int) -> dict[str, Any]:
        """Read the pod's ready line from ``fd``; PodStartError when it exits or is silent."""
        timeout = float(config.get("start_timeout"))
        try:
            data = read_line(fd, timeout=timeout, progress=progress,
                             desc=f"starting pod {name!r}")
        except TimeoutError:
            raise PodStartError(
                f"pod {name!r} did not become ready within {timeout:g}s (KT_START_TIMEOUT)",
                pod=name, reason="StartTimeout",
                log_tail=read_tail(log_path, LOG_TAIL_LINES, offset)) from None
        with contextlib.suppress(ValueError):
            line = json.loads(data.split(b"\n", 1)[0])
            if isinstance(line, dict) and isinstance(line.get("port"), int):
                return line
        try:
            code: int | None = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        why, reason = "closed its ready pipe without reporting its port", "Error"
        if code is not None:
            status = PodStatus.from_exit(code)
            why = f"exited with status {code}" if code >= 0 else f"was {status.message}"
            reason = status.reason or "Error"
        raise PodStartError(f"pod {name!r} {why} before it was ready", pod=name,
                            reason=reason, log_tail=read_tail(log_path, LOG_TAIL_LINES, offset))


def _check_fits(spec: ComputeSpec) -> None:
    """Refuse what this machine can never give: more memory or cores than it has.

    Memory is checked against the machine's total (not what is free now: that changes);
    cores against those this process may run on (``sched_getaffinity``).
    """
    total = psutil.virtual_memory().total
    if spec.memory is not None and spec.memory > total:
        raise ResourceUnavailableError(
            f"memory={format_bytes(spec.memory)}: this machine has "
            f"{total / 2**30:.1f} GiB; ask for at most that (e.g. "
            f"memory='{int(total * 0.8) // 2**30 or 1}Gi')",
            requested=spec.memory, available=total)
    cores = len(os.sched_getaffinity(0))
    if spec.cpus is not None and spec.cpus > cores:
        raise ResourceUnavailableError(
            f"cpus={spec.cpus:g}: this machine has {cores} core{'s' * (cores != 1)}; ask "
            f"for at most {cores}", requested=math.ceil(spec.cpus), available=cores)
