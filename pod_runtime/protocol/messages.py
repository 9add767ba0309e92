"""The bodies of the messages a client and a pod exchange, typed once for both sides.

A CALL frame's body is a pickled dict whose ``kind`` says which of the call types
below it is; the pod's handler for that kind reads it (see
:data:`pod_runtime.registry.HANDLERS`). EVENTS bodies hold :class:`StreamEvent` and
:class:`DisplayEvent` dicts; a RESULT body is a :class:`Result`, whose failures carry
an :class:`ErrorInfo` with an :class:`ErrorKind` where the failure is one the client
acts on (resend, report as lost) rather than a plain remote exception.

These are ``TypedDict`` types: on the wire they are plain dicts with the same keys as
before (so PROTOCOL_VERSION is unchanged); mypy checks the builders and the readers.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "CallBody",
    "CallStats",
    "CellCall",
    "CellRunsCall",
    "CellVarsCall",
    "ClearOutputEvent",
    "DisplayEvent",
    "ErrorInfo",
    "ErrorKind",
    "Event",
    "FnCall",
    "GpuStats",
    "InitCall",
    "LogEntry",
    "LogsCall",
    "MethodCall",
    "NotCachedError",
    "PodStoppingError",
    "QueuedEvent",
    "Result",
    "RunClient",
    "RunInfo",
    "StartedEvent",
    "StreamEvent",
    "SyncApplyCall",
    "SyncBlobs",
    "SyncBlobsCall",
    "SyncCall",
    "TypeByName",
    "import_type",
]


class ErrorKind(enum.StrEnum):
    """Failures a client recognises by kind rather than by the remote exception's text."""

    #: The pod has no cached copy of the function or class the call names: resend it
    #: with its blob (the pod restarted, or another client's call evicted it).
    NOT_CACHED = "not_cached"
    #: The pod no longer holds the call's result (evicted by a bound, or expired).
    CALL_LOST = "call_lost"
    #: The result could not be pickled on the pod.
    SERIALIZATION = "SerializationError"


# ------------------------------------------------------------------ call bodies
class FnCall(TypedDict):
    """Run a function: ``fn_blob`` is its pickle, or None when the pod has ``fn_id`` cached."""

    kind: Literal["fn"]
    fn_id: str
    fn_blob: NotRequired[bytes | None]
    args: NotRequired[tuple[Any, ...]]
    kwargs: NotRequired[dict[str, Any]]


class InitCall(TypedDict):
    """Create (or replace) the instance named ``instance`` of a class."""

    kind: Literal["init"]
    cls_id: str
    cls_blob: NotRequired[bytes | None]
    instance: str
    args: NotRequired[tuple[Any, ...]]
    kwargs: NotRequired[dict[str, Any]]


class MethodCall(TypedDict):
    """Call a method of a named instance, or read an attribute (``get_attr``)."""

    kind: Literal["method"]
    instance: str
    method: str
    get_attr: NotRequired[bool]
    args: NotRequired[tuple[Any, ...]]
    kwargs: NotRequired[dict[str, Any]]


class CellCall(TypedDict):
    """Run a notebook cell's source in the pod's namespace (on its main thread).

    ``push`` holds variables set before it runs (also sent as ``kwargs``, so that they
    pickle like call arguments); ``pull`` names variables returned after it.
    """

    kind: Literal["cell"]
    source: str
    filename: NotRequired[str | None]
    first_line: NotRequired[int]
    label: NotRequired[str]
    push: NotRequired[dict[str, Any]]
    pull: NotRequired[list[str]]
    kwargs: NotRequired[dict[str, Any]]
    detach: NotRequired[bool]


class CellVarsCall(TypedDict):
    """Push variables into / pull variables from the pod's notebook namespace."""

    kind: Literal["cell_vars"]
    push: NotRequired[dict[str, Any]]
    pull: NotRequired[list[str]]
    kwargs: NotRequired[dict[str, Any]]


class CellRunsCall(TypedDict):
    """List the cell runs the pod knows (every cell is a run; see :class:`RunInfo`)."""

    kind: Literal["cell_runs"]


#: Who follows a run: the connection that asks (``this``), another live one
#: (``other``), nobody because it was detached (``detached``), or nobody because the
#: connection that started it is gone, a kernel restart say (``gone``: an orphan).
RunClient = Literal["this", "other", "detached", "gone"]


class RunInfo(TypedDict):
    """One cell run the pod holds: queued, running, or finished and not collected."""

    run: int
    state: str  # queued | running | ok | failed | done
    label: str
    created: float
    started: float | None
    finished: float | None
    events: int
    client: RunClient
    stats: NotRequired[CallStats | None]  # what it cost, once it finished


class SyncBlobsCall(TypedDict):
    """Store file contents: ``index`` rows ``[sha, offset, size]`` into ``data``."""

    kind: Literal["sync"]
    op: Literal["blobs"]
    index: list[list[Any]]
    data: Any  # a PickleBuffer on the client, a buffer on the pod


class SyncBlobs(TypedDict):
    """Blobs carried inside an apply message."""

    index: list[list[Any]]
    data: Any


class SyncApplyCall(TypedDict):
    """Make a project's tree match a manifest, then reload what changed.

    The manifest is whole (``files``) or a change (``changed``/``deleted``) against
    ``base``.
    """

    kind: Literal["sync"]
    op: Literal["apply"]
    project: str
    manifest_id: str
    paths: list[str]
    cwd: str
    root: str
    files: NotRequired[dict[str, Any]]
    base: NotRequired[str | None]
    changed: NotRequired[dict[str, Any]]
    deleted: NotRequired[list[str]]
    blobs: NotRequired[SyncBlobs]


class LogsCall(TypedDict):
    """Read the pod's recent log history (see :class:`LogEntry`).

    ``call`` keeps the lines of one call or run; ``after`` those past a ``seq`` a
    poller saw last; ``tail`` the last N (after the other filters).
    """

    kind: Literal["logs"]
    call: NotRequired[int | None]
    after: NotRequired[int | None]
    tail: NotRequired[int | None]


#: A code-sync CALL body.
SyncCall = SyncBlobsCall | SyncApplyCall

#: Any CALL body.
CallBody = (FnCall | InitCall | MethodCall | CellCall | CellVarsCall | CellRunsCall
            | SyncBlobsCall | SyncApplyCall | LogsCall)


# ----------------------------------------------------------------------- events
class StreamEvent(TypedDict):
    """Text a call wrote to stdout or stderr."""

    seq: NotRequired[int]
    kind: Literal["stream"]
    name: Literal["stdout", "stderr"]
    text: str


class DisplayEvent(TypedDict):
    """Rich output (``display`` or a cell's ``result``) as a MIME bundle."""

    seq: NotRequired[int]
    kind: Literal["display", "result"]
    data: dict[str, Any]
    metadata: dict[str, Any]
    transient: NotRequired[dict[str, Any]]
    update: NotRequired[bool]


class ClearOutputEvent(TypedDict):
    """``clear_output()`` on the pod."""

    seq: NotRequired[int]
    kind: Literal["clear_output"]
    wait: bool


class QueuedEvent(TypedDict):
    """The call waits on the pod's main thread behind another run (``behind``)."""

    seq: NotRequired[int]
    kind: Literal["queued"]
    behind: RunInfo
    ahead: int  # runs queued before this one, besides ``behind``


class StartedEvent(TypedDict):
    """A call that was queued (:class:`QueuedEvent`) has started, at ``at`` (pod time)."""

    seq: NotRequired[int]
    kind: Literal["started"]
    at: float


Event = StreamEvent | DisplayEvent | ClearOutputEvent | QueuedEvent | StartedEvent


# ----------------------------------------------------------------------- result
class ErrorInfo(TypedDict):
    """Why a call failed.

    ``exc`` is the pickled ``(type, args, attributes)`` of the exception when that
    pickles; ``category`` is the :class:`ErrorKind` value when the failure has one.
    """

    type: str
    message: str
    traceback: str
    frames: list[tuple[str, int | None, str, str | None]] | None
    exc: bytes | None
    category: str | None


class GpuStats(TypedDict):
    """One GPU's figures over a call (None: NVML did not give that figure)."""

    index: int  # the GPU's position among the pod's (cuda:<index>)
    peak_memory_bytes: int | None  # GPU memory in use, by any process
    mean_utilization: float | None  # percent, the mean of the samples


class CallStats(TypedDict):
    """What a call cost on the pod (see :mod:`pod_runtime.callstats`).

    CPU time and RSS are the process's: concurrent calls overlap. ``samples`` counts
    the sampler's readings during the call (0 for a call shorter than one interval:
    the peak is then the larger of the start and end values, which are the latest
    readings there, at most one interval old).
    """

    wall_s: float
    cpu_s: float
    rss_start_bytes: int | None
    rss_end_bytes: int | None
    peak_rss_bytes: int | None
    samples: int
    gpus: list[GpuStats]


class Result(TypedDict):
    """A RESULT body: ``value`` when ``ok``, else ``error``; ``stats``: what it cost."""

    ok: bool
    value: NotRequired[Any]
    error: NotRequired[ErrorInfo]
    stats: NotRequired[CallStats]


class LogEntry(TypedDict):
    """One line of the pod's log history, and of its JSON log (``KT_POD_LOG_FORMAT``).

    ``stream`` is ``stdout`` or ``stderr`` for what code printed, ``log`` for a
    ``logging`` record; ``level`` is the record's (lower case), ``info`` for stdout and
    ``error`` for stderr. ``call`` is the call's or run's id in hex (``%kt runs``
    shows runs as ``NAME:HEX``), None for lines outside any call.
    """

    seq: int
    time: float
    compute: str
    pod: str
    call: str | None
    stream: Literal["stdout", "stderr", "log"]
    level: str
    text: str
    logger: NotRequired[str]


# ------------------------------------------------------------------- exceptions
class NotCachedError(LookupError):
    """The pod does not hold the function or class ``key`` (the client resends it).

    Raised on the pod; it crosses by reference, so the client receives it as this type
    (``kind`` is :attr:`ErrorKind.NOT_CACHED`).
    """

    kind = ErrorKind.NOT_CACHED

    def __init__(self, key: str) -> None:
        # The message keeps the prefix older clients matched on.
        super().__init__(f"kt-not-cached:{key}")
        self.key = key


class PodStoppingError(ConnectionError):
    """The pod is draining after SIGTERM and refuses new calls (call again: a new pod serves).

    Raised on the pod; it crosses by reference, so the client can catch this type.
    """


def import_type(module: str, qualname: str) -> type:
    """The class ``module.qualname``, imported (what a :class:`TypeByName` unpickles to)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{module}.{qualname} is not a class")
    return obj


class TypeByName:
    """Pickles as the class ``module.qualname`` without importing it on this side.

    The pod names client-side exception types this way (``kernel_bridge.errors``'s
    ``CallLostError``) in an :class:`ErrorInfo`'s ``exc``; the client imports it.
    """

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (import_type, (self.module, self.qualname))
