"""kubetorch-jupyter: write Python in a notebook, run it on warm cluster GPUs.

::

    import kubetorch_jupyter as kt

    compute = kt.Compute(cpus="2", memory="4Gi", name="dev")
    remote_train = kt.fn(train).to(compute)
    remote_train(10, lr=0.5)

The public API is exactly what ``__all__`` lists.
"""

from kernel_bridge import CallHandle

from .compute import Compute
from .exceptions import (
    AuthenticationError,
    BridgeError,
    CallLostError,
    ComputeNotFoundError,
    ConfigError,
    ImageBuildError,
    KtError,
    PodDiedError,
    PodStartError,
    PodUnreachableError,
    RemoteError,
    ResourceUnavailableError,
    SerializationError,
)
from .image import Image
from .remote import Cls, Fn, RemoteFn, RemoteInstance, RemoteMethod, cls, fn

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BridgeError",
    "CallHandle",
    "CallLostError",
    "Cls",
    "Compute",
    "ComputeNotFoundError",
    "ConfigError",
    "Fn",
    "Image",
    "ImageBuildError",
    "KtError",
    "PodDiedError",
    "PodStartError",
    "PodUnreachableError",
    "RemoteError",
    "RemoteFn",
    "RemoteInstance",
    "RemoteMethod",
    "ResourceUnavailableError",
    "SerializationError",
    "__version__",
    "cls",
    "fn",
]
