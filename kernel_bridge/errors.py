"""Exceptions raised by the bridge, and the root of every kubetorch-jupyter exception.

Hierarchy::

    KtError                         anything this project raises on purpose
    ├── BridgeError                 talking to a pod went wrong
    │   ├── AuthenticationError     the pod refused our token, or could not prove its own
    │   ├── PodUnreachableError     could not connect (or reconnect) within the timeout
    │   ├── PodDiedError            the pod process ended while calls were in flight
    │   │   └── PodOOMError         ... because it ran out of memory (limit, peak)
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

import contextlib
from typing import Any, cast

__all__ = [
    "AuthenticationError",
    "BridgeError",
    "CallCancelledError",
    "CallLostError",
    "KtError",
    "PodDiedError",
    "PodOOMError",
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


class PodOOMError(PodDiedError):
    """The pod was killed for using more memory than its limit (reason ``"OOMKilled"``).

    Retry with more: ``remote_fn.with_retry(on_oom=kt.grow(memory=2.0))``.

    Attributes:
        limit: The memory limit in bytes, where known.
        peak: The most memory the pod was seen using, in bytes, where known.
    """

    def __init__(self, message: str, *, pod: str | None = None, exit_status: int | None,
                 limit: int | None = None, peak: int | None = None) -> None:
        super().__init__(message, pod=pod, exit_status=exit_status, reason="OOMKilled")
        self.limit = limit
        self.peak = peak


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
        remote_frames: The remote frames as (file, line, function, source line), outermost
            first, when the pod sent them (not for chained exceptions); IPython renders
            them as it renders a local traceback.
        pod: The pod the call ran on.
    """

    remote_type: str
    remote_message: str
    remote_traceback: str
    remote_frames: list[tuple[str, int, str, str | None]] | None = None
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
        """IPython hook: the remote traceback, rendered as IPython renders a local one.

        Without the remote frames (a chained exception), the pod's formatted text.
        """
        where = f" on pod '{self.pod}'" if self.pod else ""
        notes = list(getattr(self, "__notes__", ()))
        own = [n for n in notes if not n.startswith(_NOTE_HEAD)]  # e.g. "the pod restarted"
        if self.remote_frames:
            from .render import ipython_traceback

            self.__notes__ = own  # the remote-traceback note would repeat the traceback
            try:
                rendered = ipython_traceback(self, self.remote_frames)
            finally:
                self.__notes__ = notes
            if rendered is not None:
                return [*rendered, f"(raised on pod '{self.pod}')" if self.pod else ""]
        lines = [f"Remote traceback{where}:"]
        lines.extend(self.remote_traceback.rstrip("\n").splitlines())
        lines.extend(own)
        return lines

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            RemoteError,
            (self.remote_type, self.remote_message, self.remote_traceback, self.pod),
        )


_as_remote_cache: dict[type, type | None] = {}
_named_cache: dict[str, type[RemoteError]] = {}
_NOTE_HEAD = "\nRemote traceback"


def as_remote(
    original: tuple[type, tuple[Any, ...], dict[str, Any]] | None,
    remote_type: str,
    message: str,
    traceback_text: str,
    pod: str | None,
    frames: list[Any] | None = None,
) -> BaseException:
    """Build the exception to raise locally for a remote failure.

    ``original`` is the remote exception's (type, args, attributes) when its type could
    be unpickled here. Then the result is an instance of a subclass of both that type
    and :class:`RemoteError`, with those args and attributes, so ``except ValueError``
    and ``err.code`` work as they would locally. Otherwise it is a RemoteError of a
    subclass named as the remote type (``BadInput``, a class defined on the pod), so
    tracebacks and ``type(err).__name__`` name it as they would locally.
    """
    remote_frames = [tuple(f) for f in frames] if frames else None
    if original is not None:
        typ, args, state = original
        cls = _remote_subclass(typ) if isinstance(typ, type) else None
        if cls is not None:
            try:
                exc = cls.__new__(cls, *args)
                if typ.__module__ == "builtins":  # C attributes (SyntaxError.lineno, errno)
                    with contextlib.suppress(Exception):
                        cast(Any, typ).__init__(exc, *args)
                exc.args = tuple(args)
                exc.__dict__.update(state)
                exc._set_remote(remote_type, message, traceback_text, pod)  # type: ignore[attr-defined]
                exc.remote_frames = remote_frames  # type: ignore[attr-defined]
                exc.add_note(_note(traceback_text, pod))
                return exc
            except Exception:  # noqa: BLE001 - an exotic type that will not combine
                pass
    err = _named_remote(remote_type)(remote_type, message, traceback_text, pod)
    err.remote_frames = remote_frames
    err.add_note(_note(traceback_text, pod))
    return err


def _named_remote(remote_type: str) -> type[RemoteError]:
    """A RemoteError subclass named as the remote type (module and qualified name)."""
    if remote_type in _named_cache:
        return _named_cache[remote_type]
    module, _, qualname = remote_type.rpartition(".")
    name = qualname.rpartition(".")[2]
    if not name.isidentifier():
        return RemoteError
    cls = type(name, (RemoteError,), {
        "__module__": module or "__main__", "__qualname__": qualname,
        "__str__": lambda self: self.remote_message,
        "__doc__": f"{remote_type}, raised on a pod (the type is not importable here)."})
    _named_cache[remote_type] = cls
    return cls


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
