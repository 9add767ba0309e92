"""Exceptions of kubetorch-jupyter.

Hierarchy (the bridge's part is in :mod:`kernel_bridge.errors`)::

    KtError
    ├── ConfigError                 a malformed setting or argument ("8Gb", a bad cron)
    ├── ComputeNotFoundError        no compute of that name
    ├── ComputeInUseError           a different spec asked for a pod other clients use
    ├── ResourceUnavailableError    asked for more than there is (GPUs)
    ├── ImageBuildError             an Image's pip_install / run_bash step failed
    ├── PodStartError               a pod did not come up; carries its log tail
    ├── BridgeError                 (AuthenticationError, PodUnreachableError,
    │                                PodDiedError > PodOOMError, CallLostError)
    ├── CallCancelledError          the call was cancelled (handle.cancel())
    ├── SerializationError
    │   └── VersionMismatchError    this Python and the pod's cannot exchange pickles
    ├── CellTimeoutError            a %%kt cell ran past --timeout (also a TimeoutError)
    ├── SyncError                   the project could not be synced to a pod
    │   ├── SyncLimitError          a file or the tree is over the limits
    │   └── ReloadError             an edit failed to import on the pod (file, line)
    └── RemoteError                 the code on the pod raised

    VersionMismatchWarning (a RuntimeWarning): a package differs in a way that may break
    unpickling
"""

from __future__ import annotations

from pathlib import Path

from kernel_bridge.errors import (
    AuthenticationError,
    BridgeError,
    CallCancelledError,
    CallLostError,
    KtError,
    PodDiedError,
    PodOOMError,
    PodUnreachableError,
    RemoteError,
    SerializationError,
)

__all__ = [
    "AuthenticationError",
    "BridgeError",
    "CallCancelledError",
    "CallLostError",
    "CellTimeoutError",
    "ComputeInUseError",
    "ComputeNotFoundError",
    "ConfigError",
    "ImageBuildError",
    "KtError",
    "PodDiedError",
    "PodOOMError",
    "PodStartError",
    "PodUnreachableError",
    "ReloadError",
    "RemoteError",
    "ResourceUnavailableError",
    "SerializationError",
    "SyncError",
    "SyncLimitError",
    "VersionMismatchError",
    "VersionMismatchWarning",
]


class ConfigError(KtError, ValueError):
    """A malformed setting or argument; the message says what was expected."""


class ComputeNotFoundError(KtError, LookupError):
    """No compute of that name exists (for this user and backend).

    Attributes:
        name: The name asked for.
        available: Names that do exist.
    """

    def __init__(self, name: str, available: list[str]) -> None:
        have = ", ".join(sorted(available)) if available else "none"
        super().__init__(
            f"no compute named {name!r} (running: {have}); start one with "
            f"kt.Compute(name={name!r}, ...) and .to() a function, or `%%kt --name {name}`"
        )
        self.name = name
        self.available = available


class ComputeInUseError(KtError):
    """A pod runs another spec and other clients use it, so it is not restarted for this one.

    Attributes:
        name: The compute's name.
        changes: What the request would change, one human line each ("memory 4Gi -> 8Gi").
        clients: How many other clients were connected.
    """

    def __init__(self, name: str, changes: list[str], clients: int) -> None:
        who = "another client uses it" if clients == 1 else f"{clients} other clients use it"
        super().__init__(
            f"compute {name!r} runs another spec ({'; '.join(changes)}) and {who}, so it was "
            f"not restarted: use it as it runs with kt.Compute.from_name({name!r}), stop it "
            f"with `kt teardown {name}`, or pick another name")
        self.name = name
        self.changes = changes
        self.clients = clients


class ResourceUnavailableError(KtError):
    """More of a resource was asked for than exists (e.g. GPUs on this machine)."""

    def __init__(self, message: str, *, requested: int, available: int) -> None:
        super().__init__(message)
        self.requested = requested
        self.available = available


class ImageBuildError(KtError):
    """A step of an :class:`~kubetorch_jupyter.Image` failed; ``output`` is its log."""

    def __init__(self, message: str, *, step: str, output: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.output = output


class PodStartError(KtError):
    """A pod did not come up.

    Attributes:
        pod: The compute's name.
        reason: Why, as a word a program can branch on (the pod status's reason:
            ``"Unschedulable"``, ``"ImagePullBackOff"``, ``"OOMKilled"``, ``"Killed"``,
            ``"Error"``, ``"StartTimeout"``), or None when not known.
        log_tail: The last lines the pod printed.
    """

    def __init__(self, message: str, *, pod: str, log_tail: str = "",
                 reason: str | None = None) -> None:
        super().__init__(f"{message}\n--- last lines of the pod's log ---\n{log_tail}"
                         if log_tail else message)
        self.pod = pod
        self.reason = reason
        self.log_tail = log_tail


class CellTimeoutError(KtError, TimeoutError):
    """A ``%%kt`` cell ran longer than its ``--timeout`` and was interrupted on the pod."""


class SyncError(KtError):
    """The project could not be synced to a pod."""


class SyncLimitError(SyncError):
    """Files over the size limit (50 MB), or a tree over the file or byte limit.

    Attributes:
        root: The project root.
        files: (project path, size) of the offending files (empty for a tree limit).
        reason: What is over which limit, in a few words.
    """

    def __init__(self, message: str, *, root: Path, files: list[tuple[str, int]],
                 reason: str) -> None:
        super().__init__(message)
        self.root = root
        self.files = files
        self.reason = reason


class ReloadError(SyncError):
    """An edit failed to import on the pod; the previous code keeps serving there.

    Attributes:
        path: The local file where it failed.
        line: The line, when known.
        module: The module whose reload failed.
        remote_type: The exception's type name on the pod (``SyntaxError``...).
        remote_traceback: The traceback, with pod paths mapped to local ones.
        pod: The pod.
    """

    def __init__(self, message: str, *, path: Path | None, line: int | None, module: str,
                 remote_type: str, remote_traceback: str, pod: str) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.module = module
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.pod = pod


class VersionMismatchError(SerializationError):
    """This Python and the pod's cannot exchange pickled code (different minor versions).

    Attributes:
        package: ``"python"`` or the package name.
        local: The version here.
        remote: The version on the pod.
    """

    def __init__(self, message: str, *, package: str, local: str, remote: str) -> None:
        super().__init__(message, target=package)
        self.package = package
        self.local = local
        self.remote = remote


class VersionMismatchWarning(RuntimeWarning):
    """A package differs between here and the pod in a way that may break unpickling."""
