"""kubetorch-jupyter: write Python in a notebook, run it on warm cluster GPUs.

::

    import kubetorch_jupyter as kt

    compute = kt.Compute(cpus="2", memory="4Gi", name="dev")
    remote_train = kt.fn(train).to(compute)
    remote_train(10, lr=0.5)

In a notebook, ``%load_ext kubetorch_jupyter`` adds the ``%%kt`` cell magic (run a
cell on a warm pod), ``%kt`` and ``%autokt`` (see :mod:`kubetorch_jupyter.notebook.magics`).

The public API is exactly what ``__all__`` lists, and ``dir(kt)`` shows just that (the
subpackages stay importable by their full names, ``kubetorch_jupyter.config``).
"""

from typing import TYPE_CHECKING

from kernel_bridge import CallHandle, CallStats

from .calls.remote import Cls, Fn, RemoteFn, RemoteInstance, RemoteMethod, cls, fn
from .calls.retry import grow
from .core.compute import Compute
from .core.image import Image
from .exceptions import (
    AuthenticationError,
    BridgeError,
    CallCancelledError,
    CallLostError,
    ComputeInUseError,
    ComputeNotFoundError,
    ConfigError,
    ImageBuildError,
    KtError,
    PodDiedError,
    PodOOMError,
    PodStartError,
    PodUnreachableError,
    ReloadError,
    RemoteError,
    ResourceUnavailableError,
    SerializationError,
    SyncError,
    SyncLimitError,
    VersionMismatchError,
    VersionMismatchWarning,
)

if TYPE_CHECKING:
    from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: "Any") -> None:
    """``%load_ext kubetorch_jupyter``: register ``%%kt``, ``%kt`` and ``%autokt``."""
    from .notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: "Any") -> None:
    """``%unload_ext kubetorch_jupyter``: remove the magics again."""
    from .notebook.magics import unload_ipython_extension as unload

    unload(ipython)


del TYPE_CHECKING  # a typing helper, not API

__all__ = [
    "AuthenticationError",
    "BridgeError",
    "CallCancelledError",
    "CallHandle",
    "CallLostError",
    "CallStats",
    "Cls",
    "Compute",
    "ComputeInUseError",
    "ComputeNotFoundError",
    "ConfigError",
    "Fn",
    "Image",
    "ImageBuildError",
    "KtError",
    "PodDiedError",
    "PodOOMError",
    "PodStartError",
    "PodUnreachableError",
    "ReloadError",
    "RemoteError",
    "RemoteFn",
    "RemoteInstance",
    "RemoteMethod",
    "ResourceUnavailableError",
    "SerializationError",
    "SyncError",
    "SyncLimitError",
    "VersionMismatchError",
    "VersionMismatchWarning",
    "__version__",
    "cls",
    "fn",
    "grow",
]


def __dir__() -> list[str]:
    """The public API only (PEP 562): no submodules, no imported helpers."""
    return sorted(__all__)
