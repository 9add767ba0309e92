"""Exceptions raised by the bridge, and the root of every kubetorch-jupyter exception.

Hierarchy::

    KtError                         anything this project raises on purpose
    ├── BridgeError                 talking to a pod went wrong
    │   ├── AuthenticationError     the pod refused our token, or could not prove its own
    │   ├── PodUnreachableError     could not connect (or reconnect) within the timeout
    │   ├── PodDiedError            the pod process ended while calls were in flight
    │   └── CallLostError           the pod no longer knows a call (it restarted)
    ├── CallCancelledError          the call was cancelled (``handle.cancel()``)
    ├── SerializationError          an argument or result cannot be pickled / unpickled
    └── RemoteError                 the remote code raised; carries type, message, traceback

A :class:`RemoteError` for an exception whose type is importable here is raised as a
subclass of that type too, so ``except ValueError`` works as it would locally.
``kubetorch_jupyter.exceptions`` adds the user-facing configuration errors under
:class:`KtError`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BridgeError",
    "CallCancelledError",
    "CallLostError",
    "KtError",
    "PodDiedError",
    "PodUnreachableError",
    "RemoteError",
    "SerializationError",
]


class KtError(Exception):
    """Base class of every exception kubetorch-jupyter raises on purpose."""

    def _render_traceback_(self) -> list[str]:
        """IPython hook: our errors say what happened and what to do; no stack of our frames.

        (Scripts still get the full traceback.)
        """
        return [f"{type(self).__name__}: {self}"]


class BridgeError(KtError):
    """Talking to a pod went wrong. ``pod`` names it where known."""

    def __init__(self, message: str, *, pod: str | None = None) -> None:
        super().__init__(message)
        self.pod = pod


class AuthenticationError(BridgeError):
    """The pod refused our token, or the peer could not prove it holds the token."""


class PodUnreachableError(BridgeError):
    """No connection to the pod could be made (or remade) in time."""


class PodDiedError(BridgeError):
    """The pod process ended while calls were in flight.

    Attributes:
        exit_status: The process exit status (negative: killed by that signal), or None
            when it is not known (the pod was started by another process).
        reason: Why it ended, where the backend knows ("OOMKilled", "Evicted", "Killed",
            "Error"), else None.
    """

    def __init__(self, message: str, *, pod: str | None = None, exit_status: int | None,
                 reason: str | None = None) -> None:
        super().__init__(message, pod=pod)
        self.exit_status = exit_status
        self.reason = reason


class CallLostError(BridgeError):
    """The pod does not know a call we are waiting for (it was restarted)."""


class CallCancelledError(KtError):
    """The call was cancelled (``handle.cancel()``) before it returned.

    Attributes:
        pod: The pod the call was sent to.
        remote: The pod's ``KeyboardInterrupt`` (with its traceback: where the call
            stopped), or None when it was cancelled before it started.
    """

    def __init__(self, message: str, *, pod: str | None = None,
                 remote: BaseException | None = None) -> None:
        super().__init__(message)
        self.pod = pod
        self.remote = remote


class SerializationError(KtError):
    """An argument or result cannot be pickled or unpickled.

    Attributes:
        target: What failed, e.g. ``"argument 'lock'"`` or ``"result"``.
    """

    def __init__(self, message: str, *, target: str = "") -> None:
        super().__init__(message)
        self.target = target


class RemoteError(KtError):
    """The code on the pod raised.

    Attributes:
        remote_type: ``module.QualName`` of the remote exception's type.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: The remote traceback, formatted as Python prints it.
        pod: The pod the call ran on.
    """

    remote_type: str
    remote_message: str
    remote_traceback: str
    pod: str | None

    def __init__(
        self,
        remote_type: str = "Exception",
        remote_message: str = "",
        remote_traceback: str = "",
        pod: str | None = None,
    ) -> None:
        super().__init__(f"{remote_type}: {remote_message}" if remote_message else remote_type)
        self._set_remote(remote_type, remote_message, remote_traceback, pod)

    def _set_remote(self, rtype: str, message: str, tb: str, pod: str | None) -> None:
        self.remote_type = rtype
        self.remote_message = message
        self.remote_traceback = tb
        self.pod = pod

    def _render_traceback_(self) -> list[str]:
        """IPython hook: show the remote traceback as the cell's traceback."""
        where = f" on pod '{self.pod}'" if self.pod else ""
        lines = [f"Remote traceback{where}:"]
        lines.extend(self.remote_traceback.rstrip("\n").splitlines())
        return lines

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            RemoteError,
            (self.remote_type, self.remote_message, self.remote_traceback, self.pod),
        )


_as_remote_cache: dict[type, type | None] = {}


def as_remote(
    original: tuple[type, tuple[Any, ...], dict[str, Any]] | None,
    remote_type: str,
    message: str,
    traceback_text: str,
    pod: str | None,
) -> BaseException:
    """Build the exception to raise locally for a remote failure.

    ``original`` is the remote exception's (type, args, attributes) when its type could
    be unpickled here. Then the result is an instance of a subclass of both that type
    and :class:`RemoteError`, with those args and attributes, so ``except ValueError``
    and ``err.code`` work as they would locally. Otherwise it is a plain RemoteError.
    """
    if original is not None:
        typ, args, state = original
        cls = _remote_subclass(typ) if isinstance(typ, type) else None
        if cls is not None:
            try:
                exc = cls.__new__(cls, *args)
                exc.args = tuple(args)
                exc.__dict__.update(state)
                exc._set_remote(remote_type, message, traceback_text, pod)  # type: ignore[attr-defined]
                exc.add_note(_note(traceback_text, pod))
                return exc
            except Exception:  # noqa: BLE001 - an exotic type that will not combine
                pass
    err = RemoteError(remote_type, message, traceback_text, pod)
    err.add_note(_note(traceback_text, pod))
    return err


def _note(traceback_text: str, pod: str | None) -> str:
    where = f" on pod '{pod}'" if pod else ""
    return f"\nRemote traceback{where}:\n{traceback_text.rstrip()}"


def _remote_subclass(typ: type) -> type | None:
    if typ in _as_remote_cache:
        return _as_remote_cache[typ]
    if not issubclass(typ, BaseException) or (
        not issubclass(typ, Exception) and not issubclass(typ, KeyboardInterrupt)
    ):
        return None  # a remote sys.exit() must not end the caller: a plain RemoteError
    if issubclass(typ, RemoteError):
        return typ
    try:
        cls: type | None = type(
            typ.__name__,
            (typ, RemoteError),
            {"__module__": typ.__module__, "__qualname__": typ.__qualname__,
             "__str__": typ.__str__, "__init__": lambda self, *a, **k: None,
             "__reduce__": BaseException.__reduce__},
        )
    except TypeError:  # layout conflict (e.g. two C bases)
        cls = None
    _as_remote_cache[typ] = cls
    return cls
