"""Exceptions of kubetorch-jupyter.

Hierarchy (the bridge's part is in :mod:`kernel_bridge.errors`)::

    KtError
    ├── ConfigError                 a malformed setting or argument ("8Gb", a bad cron)
    ├── ComputeNotFoundError        no compute of that name
    ├── ResourceUnavailableError    asked for more than there is (GPUs)
    ├── ImageBuildError             an Image's pip_install / run_bash step failed
    ├── PodStartError               a pod did not come up; carries its log tail
    ├── BridgeError                 (AuthenticationError, PodUnreachableError,
    │                                PodDiedError, CallLostError)
    ├── SerializationError
    └── RemoteError                 the code on the pod raised
"""

from __future__ import annotations

from kernel_bridge.errors import (
    AuthenticationError,
    BridgeError,
    CallLostError,
    KtError,
    PodDiedError,
    PodUnreachableError,
    RemoteError,
    SerializationError,
)

__all__ = [
    "AuthenticationError",
    "BridgeError",
    "CallLostError",
    "ComputeNotFoundError",
    "ConfigError",
    "ImageBuildError",
    "KtError",
    "PodDiedError",
    "PodStartError",
    "PodUnreachableError",
    "RemoteError",
    "ResourceUnavailableError",
    "SerializationError",
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
    """A pod did not come up. ``log_tail`` holds the last lines it printed."""

    def __init__(self, message: str, *, pod: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- last lines of the pod's log ---\n{log_tail}"
                         if log_tail else message)
        self.pod = pod
        self.log_tail = log_tail
