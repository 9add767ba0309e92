"""What crosses to a pod and how: by value or by reference, and clear pickling errors.

Functions and classes of ``__main__`` (a script, a notebook) go by value. Those of the
user's own modules (any module not installed in site-packages or the standard library)
go by reference when code sync put their file on the pods (:func:`.sync.synced_module`:
the pod imports them from its synced tree, and a reload there updates them), by value
otherwise (a file left out by .gitignore/.ktignore, or outside the project). Installed
packages go by reference and must be installed on the pod (``kt.Image().pip_install``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any, cast

import cloudpickle

from kernel_bridge import SerializationError
from pod_runtime import protocol
from pod_runtime.protocol import messages

from ..sync.session import synced_module

__all__ = ["dump_call", "dump_callable"]

_lock = threading.RLock()


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def _user_module(module: ModuleType | None) -> bool:
    """A module of the user's own code the pod cannot import: it goes by value.

    Not __main__ (cloudpickle sends it by value anyway), not installed, not built in,
    and not synced to the pods (those are imported there by reference).
    """
    if module is None or module.__name__ == "__main__":
        return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    return _user_path(path) and not synced_module(module)


@functools.lru_cache(maxsize=4096)
def _user_path(path: str) -> bool:
    return not os.path.realpath(path).startswith(_installed_roots())


@contextmanager
def _by_value(obj: Any) -> Iterator[None]:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if not _user_module(module):
        yield
        return
    assert module is not None
    with _lock:
        cloudpickle.register_pickle_by_value(module)
        try:
            yield
        finally:
            cloudpickle.unregister_pickle_by_value(module)


def dump_callable(obj: Any) -> tuple[str, bytes]:
    """Pickle a function or class for the pod's cache; returns (digest, blob)."""
    try:
        with _by_value(obj):
            blob = protocol.dumps(obj, min_oob=1 << 62)[0]  # one self-contained blob
    except Exception as exc:
        name = getattr(obj, "__qualname__", repr(obj))
        raise SerializationError(
            f"{name} cannot be sent to the pod: {type(exc).__name__}: {exc}. It (or a global "
            "it uses) holds something that cannot be pickled, like a lock, an open file or a "
            "client connection; create such objects inside the function instead",
            target=name,
        ) from exc
    return hashlib.sha256(blob).hexdigest()[:32], blob


def dump_call(msg: messages.CallBody, label: str) -> tuple[bytes, list[memoryview]]:
    """Pickle a call request; an unpicklable argument is named in the error."""
    fields = cast(Mapping[str, Any], msg)
    args: tuple[Any, ...] = fields.get("args", ())
    kwargs: dict[str, Any] = fields.get("kwargs", {})
    try:
        with _by_value_all(args, kwargs):
            return protocol.dumps(msg)
    except Exception as exc:
        culprit = _culprit(args, kwargs)
        raise SerializationError(
            f"cannot call {label} on the pod: {culprit or 'an argument'} cannot be pickled "
            f"({type(exc).__name__}: {exc}). Locks, open files, sockets, generators and "
            "live clients cannot cross to a pod: pass plain data and create such objects "
            "on the pod",
            target=culprit or "argument",
        ) from exc


@contextmanager
def _by_value_all(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[None]:
    modules = set()
    for value in (*args, *kwargs.values()):
        mod = sys.modules.get(getattr(type(value), "__module__", "") or "")
        if _user_module(mod):
            modules.add(mod)
    if not modules:
        yield
        return
    with _lock:
        for mod in modules:
            cloudpickle.register_pickle_by_value(mod)
        try:
            yield
        finally:
            for mod in modules:
                cloudpickle.unregister_pickle_by_value(mod)


def _culprit(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    for i, value in enumerate(args):
        if not _picklable(value):
            return f"positional argument {i} ({_describe(value)})"
    for key, value in kwargs.items():
        if not _picklable(value):
            return f"argument {key!r} ({_describe(value)})"
    return None


def _describe(value: Any) -> str:
    typ = type(value)
    return f"a {typ.__module__}.{typ.__qualname__}" if typ.__module__ != "builtins" else (
        f"a {typ.__qualname__}")


def _picklable(value: Any) -> bool:
    try:
        protocol.dumps(value)
    except Exception:  # noqa: BLE001
        return False
    return True
