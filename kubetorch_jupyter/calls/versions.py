"""Before the first call to a pod: do this side and the pod agree on what pickles need?

Functions and classes from a notebook cross as bytecode, which loads only on the same
Python minor version: a different one is an error. Packages whose objects cross by
pickle (cloudpickle itself, numpy, torch, pandas) are compared too; a difference that
is known to break loading is a :class:`VersionMismatchWarning` naming both versions.

The pod reports its versions in its WELCOME frame (``conn.welcome["versions"]``); the
check runs once per pod process (its ``boot_id``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from pod_runtime import protocol

from ..exceptions import (
    RemoteError,
    SerializationError,
    VersionMismatchError,
    VersionMismatchWarning,
)
from ..warn import user_stacklevel

__all__ = ["Mismatch", "VersionMismatchError", "VersionMismatchWarning", "check", "compare",
           "explain_missing", "local_versions"]

#: Package -> how many leading version components must agree for pickles to load.
PACKAGES = {"cloudpickle": 2, "numpy": 1, "torch": 1, "pandas": 1}

_checked: set[tuple[str, str]] = set()
_lock = threading.Lock()


@dataclass(frozen=True)
class Mismatch:
    """One difference: ``fatal`` ones raise, the others warn."""

    package: str
    local: str | None
    remote: str | None
    fatal: bool
    message: str


def local_versions() -> dict[str, str]:
    """The versions here, in the pod's format (python + installed packages)."""
    return protocol.package_versions()


def _parts(version: str, n: int) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:n])


def compare(local: dict[str, str], remote: dict[str, str], *, pod: str = "pod",
            imported: set[str] | frozenset[str] = frozenset()) -> list[Mismatch]:
    """The differences between ``local`` and ``remote`` versions that matter for pickles.

    Args:
        local: Versions here (see :func:`local_versions`).
        remote: Versions the pod reported.
        pod: The pod's name, for messages.
        imported: Packages imported here; one missing on the pod is reported only then.
    """
    out: list[Mismatch] = []
    here, there = local.get("python"), remote.get("python")
    if here and there and _parts(here, 2) != _parts(there, 2):
        out.append(Mismatch("python", here, there, True, (
            f"Python {here} here but {there} on pod {pod!r}: functions and classes defined "
            f"in a notebook cross as bytecode, which only loads on the same Python minor "
            f"version. Run the pod on Python {'.'.join(_parts(here, 2))} (KT_PYTHON for local "
            "pods, the image's base on Kubernetes) or this kernel on the pod's")))
    for name, depth in PACKAGES.items():
        here, there = local.get(name), remote.get(name)
        if here and there and _parts(here, depth) != _parts(there, depth):
            out.append(Mismatch(name, here, there, False, (
                f"{name} {here} here but {there} on pod {pod!r}: objects pickled by one may "
                f"not load in the other. Install {name}=={here} on the pod "
                f"(kt.Image().pip_install([\"{name}=={here}\"])) or match it here")))
        elif here and not there and name in imported:
            out.append(Mismatch(name, here, None, False, (
                f"{name} {here} is imported here but not installed on pod {pod!r}: values of "
                f"its types cannot cross to the pod. Install it there with "
                f"kt.Image().pip_install([\"{name}=={here}\"])")))
    return out


def check(conn: Any) -> None:
    """Compare versions with ``conn``'s pod once per pod process; warn or raise.

    Raises:
        VersionMismatchError: When the Python minor versions differ.
    """
    welcome = getattr(conn, "welcome", None) or {}
    key = (str(getattr(conn, "url", "")), str(welcome.get("boot_id", "")))
    with _lock:
        if key in _checked:
            return
    remote = welcome.get("versions") or {}
    imported = {name for name in PACKAGES if name in sys.modules}
    problems = compare(local_versions(), remote, pod=getattr(conn, "name", "pod"),
                       imported=imported)
    for problem in problems:
        if problem.fatal:
            raise VersionMismatchError(problem.message, package=problem.package,
                                       local=problem.local or "", remote=problem.remote or "")
    with _lock:
        if key in _checked:
            return
        _checked.add(key)
    for problem in problems:
        warnings.warn(problem.message, VersionMismatchWarning, stacklevel=user_stacklevel())


def _distribution(package: str) -> str:
    """The distribution (what pip installs) that provides import name ``package``."""
    from importlib import metadata

    with contextlib.suppress(Exception):
        names = metadata.packages_distributions().get(package)
        if names:
            return names[0]
    return package


def explain_missing(exc: BaseException, conn: Any = None) -> BaseException:
    """A missing module explained by a version mismatch, else ``exc`` itself.

    Objects of one version of a package can name modules another version lacks
    (numpy 2 pickles name ``numpy._core``, which numpy 1 has not): the pod's
    ``ModuleNotFoundError`` for an argument, or this side's failure to unpickle a result.
    When the package's versions differ between here and the pod, the error is a
    :class:`VersionMismatchError` naming both versions and the fix.

    Args:
        exc: What a call raised.
        conn: Its connection (the pod's versions, when the error does not carry them).
    """
    cause = exc.__cause__
    if isinstance(exc, ModuleNotFoundError) and isinstance(exc, RemoteError):
        module, lacks = getattr(exc, "module", None), "pod"
        there = getattr(exc, "pod_version", None)
    elif isinstance(exc, SerializationError) and isinstance(cause, ModuleNotFoundError):
        module, lacks = cause.name, "here"
        remote = (getattr(conn, "welcome", None) or {}).get("versions") or {}
        there = remote.get((module or "").split(".")[0])
    else:
        return exc
    if not module or not there:
        return exc
    top = module.split(".")[0]
    here = protocol.installed_version(top)
    if here is None or here == there:
        return exc
    pod = getattr(conn, "name", None) or getattr(exc, "pod", None) or "pod"
    dist = _distribution(top)
    without = there if lacks == "pod" else here
    err = VersionMismatchError(
        f"{dist} {here} here but {there} on pod {pod!r}: the call's objects refer to "
        f"{module}, which {dist} {without} does not have. Use one version on both sides: "
        f"kt.Image().pip_install([\"{dist}=={here}\"]) for the pod, or `pip install "
        f"{dist}=={there}` here", package=dist, local=here, remote=there)
    return err
