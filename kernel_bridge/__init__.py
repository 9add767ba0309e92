"""The client side of the bridge: connections to pods, calls in flight, errors.

It moves bytes and nothing else: deciding what runs where is ``kubetorch_jupyter``'s
job, running it is ``pod_runtime``'s.
"""

from .calls import CallHandle, EventSink, print_event
from .connection import PodConnection
from .endpoint import Endpoint, EndpointProvider
from .errors import (
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
from .stats import CallStats, GpuStats
from .status import PodState, StatusProbe

__all__ = [
    "AuthenticationError",
    "BridgeError",
    "CallCancelledError",
    "CallHandle",
    "CallLostError",
    "CallStats",
    "Endpoint",
    "EndpointProvider",
    "EventSink",
    "GpuStats",
    "KtError",
    "PodConnection",
    "PodDiedError",
    "PodOOMError",
    "PodState",
    "PodUnreachableError",
    "RemoteError",
    "SerializationError",
    "StatusProbe",
    "print_event",
]
