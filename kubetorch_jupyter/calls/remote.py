"""``kt.fn`` and ``kt.cls``: call functions and stateful class instances on a pod.

::

    remote_train = kt.fn(train).to(compute)
    remote_train(10, lr=0.5)                  # blocks; output streams back live
    handle = remote_train.submit(10)          # returns at once; handle.result() later
    handle.stats                              # what it cost on the pod (CallStats)
    remote_train.last_stats                   # the same, for the last blocking call
    await remote_train.acall(10)              # from async code
    await kt.fn(async_fetch).to(compute)(url) # async def: awaited on the pod, as locally

    counter = kt.cls(Counter).to(compute, init_args={"start": 5})
    counter.add(2)                            # state lives on the pod
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping
from types import CodeType, FunctionType
from typing import Any, Generic, TypeVar

from kernel_bridge import CallHandle, CallStats, PodConnection
from pod_runtime.protocol import messages

from ..core import connections as _connections
from ..core.compute import Compute
from ..exceptions import ConfigError, KtError, SerializationError
from ..sync import session as _sync
from . import versions as _versions
from .display import cell_sink
from .serialize import dump_call, dump_callable

__all__ = ["Cls", "Fn", "InstanceGoneError", "RemoteFn", "RemoteInstance", "RemoteMethod",
           "cls", "fn"]

T = TypeVar("T")


class InstanceGoneError(KtError, LookupError):
    """A :class:`RemoteInstance`'s pod ended (torn down, restarted): the instance is gone.

    Attributes:
        instance: The instance's name on the pod.
        pod: The compute's name.
    """

    def __init__(self, message: str, *, instance: str, pod: str) -> None:
        super().__init__(message)
        self.instance = instance
        self.pod = pod
_Call = messages.FnCall | messages.InitCall | messages.MethodCall


def _invoke(compute: Compute, msg: _Call, label: str, blob: tuple[str, bytes] | None,
            *, shipping: bool = False, conn: PodConnection | None = None) -> CallHandle:
    """Send a call; includes the function/class blob when the pod may not have it.

    The caller syncs the project first (:func:`.sync.ensure`), before pickling, so that
    the project's modules go by reference and the pod runs the code as it is now.
    ``shipping``: the caller already pickles inside ``sync.shipping_to(compute)``.
    ``conn``: the connection the caller resolved for this call (else it is resolved).
    """
    if conn is None:
        conn = compute.connection()
    _versions.check(conn)  # once per pod process: can the two sides exchange pickles?
    send_blob = blob is not None and blob[0] not in conn.known
    if blob is not None:
        data = blob[1] if send_blob else None
        if msg["kind"] == "fn":
            msg["fn_blob"] = data
        elif msg["kind"] == "init":
            msg["cls_blob"] = data
    if shipping:
        body, buffers = dump_call(msg, label)
    else:
        with _sync.shipping_to(compute):
            body, buffers = dump_call(msg, label)
    # output goes to the cell that started the call, whichever cell waits for it
    handle = conn.call(body, buffers, label=label, sink=cell_sink())
    if blob is not None and send_blob:
        digest = blob[0]
        handle.on_answer.append(lambda: conn.known.add(digest))  # cached on the pod now
    return handle


def _result(handle: CallHandle, keep: Any = None) -> Any:
    """``handle.result()``; a module one side lacks for a version mismatch says so.

    ``keep``: an object whose ``last_stats`` becomes the call's :class:`CallStats`
    (:func:`_last_stats`).
    """
    try:
        return handle.result()
    except (ModuleNotFoundError, SerializationError) as exc:
        better = _versions.explain_missing(exc, handle.conn)
        if better is exc:
            raise
        raise better from None
    finally:
        if keep is not None:
            keep._last_stats = handle._stats  # decoded only if asked for


async def _aresult(handle: CallHandle, keep: Any = None) -> Any:
    """:func:`_result` for async callers."""
    try:
        return await handle.aresult()
    except (ModuleNotFoundError, SerializationError) as exc:
        better = _versions.explain_missing(exc, handle.conn)
        if better is exc:
            raise
        raise better from None
    finally:
        if keep is not None:
            keep._last_stats = handle._stats  # decoded only if asked for


def _retrying(send: Callable[[bool], CallHandle], keep: Any = None
              ) -> Callable[[CallHandle], Any]:
    """Wait for a handle; if the pod lost its cache of our function, send it again."""

    def wait(handle: CallHandle) -> Any:
        try:
            return _result(handle, keep)
        except messages.NotCachedError:  # the pod lost its copy: send it with the blob
            return _result(send(True), keep)

    return wait


def _last_stats(owner: Any) -> CallStats | None:
    """The figures :func:`_result` kept on ``owner``, decoded (once) now."""
    raw = owner._last_stats
    if raw is None or isinstance(raw, CallStats):
        return raw
    owner._last_stats = stats = CallStats.from_wire(raw)
    return stats


class Fn(Generic[T]):
    """A function that can be sent to a compute with :meth:`to`."""

    def __init__(self, func: Callable[..., T]) -> None:
        if not callable(func):
            raise ConfigError(f"kt.fn needs a function, got {type(func).__name__}")
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    def to(self, compute: Compute) -> RemoteFn[T]:
        """Deploy to ``compute`` (starting or finding its warm pod, syncing the project)."""
        if not isinstance(compute, Compute):
            raise ConfigError(f".to() needs a kt.Compute, got {type(compute).__name__}")
        compute.connection()
        _sync.ensure(compute, self.func)
        return RemoteFn(self.func, compute)

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        """Run locally (``kt.fn(f)`` alone changes nothing until ``.to()``)."""
        return self.func(*args, **kwargs)


class RemoteFn(Generic[T]):
    """A function bound to a compute; calling it runs it on the pod.

    ``last_stats`` is what the last call through it cost on the pod.
    """

    def __init__(self, func: Callable[..., T], compute: Compute) -> None:
        self.func = func
        self.compute = compute
        self._last_stats: Any = None
        self._cached: tuple[tuple[Any, ...], Any, tuple[str, bytes]] | None = None
        self._is_async = inspect.iscoroutinefunction(func)  # asked on every call
        self.__name__ = getattr(func, "__name__", "fn")
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)
        self.__doc__ = func.__doc__

    def __repr__(self) -> str:
        return f"<remote {self.__qualname__} on {self.compute.name!r}>"

    @property
    def last_stats(self) -> CallStats | None:
        """What the last call through it cost on the pod (None before the first).

        Set by ``remote(...)`` and ``await remote.acall(...)``: wall and CPU time, peak
        RSS, per-GPU peak memory and utilisation (:class:`CallStats`). A ``submit()``
        handle has its own, ``handle.stats``.
        """
        return _last_stats(self)

    def submit(self, *args: Any, **kwargs: Any) -> CallHandle:
        """Start a call and return at once; ``handle.result()`` waits for it."""
        return self._send(args, kwargs, force_blob=False)

    def _blob(self) -> tuple[str, bytes]:
        """The pickled function, re-made when what it captures has changed.

        The function is pickled again when its code, a global it names, a closure cell
        or its defaults is rebound (re-running a notebook cell, ``lr = 0.01``), checked
        by identity on every call (a few microseconds, not a pickle). A global that is
        mutated in place (``config["lr"] = 0.01``) is not noticed: rebind it, or pass it
        as an argument. A sync changes what goes by reference: it is pickled again then.
        """
        refs = _captured(self.func)
        cached = self._cached
        shipped = _sync.shipping_key()
        if (refs is not None and cached is not None and len(refs) == len(cached[0])
                and cached[1] == shipped
                and all(a is b for a, b in zip(refs, cached[0], strict=True))):
            return cached[2]
        blob = dump_callable(self.func)
        self._cached = (refs, shipped, blob) if refs is not None else None
        return blob

    def _send(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, force_blob: bool
              ) -> CallHandle:
        conns = _sync.pod_connections(self.compute)  # once per call: each checks the pod
        _sync.ensure(self.compute, self.func, conns)  # before pickling; cheap when unchanged
        with _sync.shipping_to(self.compute, conns):  # synced modules by reference
            digest, data = self._blob()
            if force_blob:
                conns[0].known.discard(digest)
            msg: messages.FnCall = {"kind": "fn", "fn_id": digest, "args": args,
                                    "kwargs": kwargs}
            return _invoke(self.compute, msg, f"{self.__qualname__}()", (digest, data),
                           shipping=True, conn=conns[0])

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        """Run on the pod and return the result; output streams back while it runs.

        For an ``async def`` function, as locally, the call returns an awaitable (the
        coroutine runs on the pod; ``await remote(...)`` gives its result).
        """
        if self._is_async:
            return self.acall(*args, **kwargs)  # type: ignore[return-value]
        handle = self.submit(*args, **kwargs)
        return _retrying(lambda force: self._send(args, kwargs, force_blob=force), self)(handle)

    async def acall(self, *args: Any, **kwargs: Any) -> T:
        """Run on the pod without blocking the caller's event loop.

        Pickling, connecting (or starting the pod) and sending run on a worker thread;
        the loop only awaits the result.
        """
        handle = await asyncio.to_thread(self.submit, *args, **kwargs)
        try:
            result: T = await _aresult(handle, self)
        except messages.NotCachedError:  # the pod lost its copy: send it with the blob
            again = await asyncio.to_thread(self._send, args, kwargs, force_blob=True)
            result = await _aresult(again, self)
        return result

    def with_retry(self, *, on_oom: Any, max: int = 3) -> Any:
        """This function, called again with more memory when its pod runs out of it.

        Args:
            on_oom: How to grow: ``kt.grow(memory=2.0)`` doubles the memory each time.
            max: Attempts in all (3: the first and two retries).

        Returns:
            A :class:`~kubetorch_jupyter.calls.retry.RetryingFn`: call it as this one.

        Example:
            >>> safe = kt.fn(train).to(compute).with_retry(on_oom=kt.grow(memory=2.0))
        """
        from .retry import RetryingFn

        return RetryingFn(self, on_oom, max)

    def teardown(self) -> None:
        """Stop the compute this function runs on."""
        self.compute.teardown()


_MISSING = object()


@functools.lru_cache(maxsize=1024)
def _global_names(code: CodeType) -> tuple[str, ...]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names.update(_global_names(const))
    return tuple(sorted(names))


def _captured(func: Any, seen: set[int] | None = None) -> tuple[Any, ...] | None:
    """What a plain function captures, for an identity check; None for other callables.

    Functions of the same module that it uses (a notebook's helpers) are followed, so
    that rebinding a global one of them reads is noticed too.
    """
    code = getattr(func, "__code__", None)
    if not isinstance(code, CodeType) or not hasattr(func, "__globals__"):
        return None
    seen = seen if seen is not None else {id(func)}
    glob = func.__globals__
    cells = tuple(c.cell_contents if _filled(c) else _MISSING for c in func.__closure__ or ())
    values = [glob.get(name, _MISSING) for name in _global_names(code)]
    nested: list[Any] = []
    for value in values:
        if (isinstance(value, FunctionType) and value.__module__ == func.__module__
                and id(value) not in seen):
            seen.add(id(value))
            nested.extend(_captured(value, seen) or ())
    return (code, func.__defaults__, func.__kwdefaults__, *cells, *values, *nested)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def fn(func: Callable[..., T]) -> Fn[T]:
    """Wrap a function to run it on a compute: ``kt.fn(train).to(compute)(10)``."""
    return Fn(func)


class Cls:
    """A class whose instances can live on a compute (see :meth:`to`)."""

    def __init__(self, klass: type) -> None:
        if not isinstance(klass, type):
            raise ConfigError(f"kt.cls needs a class, got {type(klass).__name__}")
        self.klass = klass

    def to(
        self,
        compute: Compute,
        init_args: Mapping[str, Any] | None = None,
        *,
        args: tuple[Any, ...] = (),
        name: str | None = None,
    ) -> RemoteInstance:
        """Create an instance on the pod; it replaces any earlier one of the same name.

        Args:
            compute: Where the instance lives.
            init_args: Keyword arguments of the constructor.
            args: Positional arguments of the constructor.
            name: The instance's name on the pod (default: the class name).
        """
        if not isinstance(compute, Compute):
            raise ConfigError(f".to() needs a kt.Compute, got {type(compute).__name__}")
        instance = name or self.klass.__name__
        _sync.ensure(compute, self.klass)
        with _sync.shipping_to(compute):
            blob = dump_callable(self.klass)
        msg: messages.InitCall = {"kind": "init", "cls_id": blob[0], "instance": instance,
                                  "args": tuple(args), "kwargs": dict(init_args or {})}
        label = f"{self.klass.__qualname__}()"

        def send(force: bool) -> CallHandle:
            if force:
                compute.connection().known.discard(blob[0])
            return _invoke(compute, msg.copy(), label, blob)

        _retrying(send)(send(False))
        return RemoteInstance(self.klass, compute, instance)


def cls(klass: type) -> Cls:
    """Wrap a class to keep instances on a compute: ``kt.cls(Model).to(compute)``."""
    return Cls(klass)


class RemoteMethod:
    """A method of a remote instance; call it like the local one."""

    def __init__(self, owner: RemoteInstance, method: str) -> None:
        self.owner = owner
        self.method = method

    def __repr__(self) -> str:
        return f"<remote method {self.owner.klass.__qualname__}.{self.method}>"

    def submit(self, *args: Any, **kwargs: Any) -> CallHandle:
        """Start the call and return at once."""
        self.owner._check_pod()
        conns = _sync.pod_connections(self.owner.compute)
        _sync.ensure(self.owner.compute, self.owner.klass, conns)
        msg: messages.MethodCall = {"kind": "method", "instance": self.owner.instance,
                                    "method": self.method, "args": args, "kwargs": kwargs}
        label = f"{self.owner.klass.__qualname__}.{self.method}()"
        with _sync.shipping_to(self.owner.compute, conns):
            return _invoke(self.owner.compute, msg, label, None, shipping=True, conn=conns[0])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method on the pod and return its result (an awaitable for an async one)."""
        if inspect.iscoroutinefunction(getattr(self.owner.klass, self.method, None)):
            return self.acall(*args, **kwargs)
        return _result(self.submit(*args, **kwargs), self.owner)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method without blocking the caller's event loop (sending on a thread)."""
        handle = await asyncio.to_thread(self.submit, *args, **kwargs)
        return await _aresult(handle, self.owner)


class RemoteInstance:
    """A class instance living on a pod. Methods run there; state stays there.

    ``last_stats`` is what its last method call cost on the pod.
    """

    def __init__(self, klass: type, compute: Compute, instance: str) -> None:
        self.klass = klass
        self.compute = compute
        self.instance = instance
        self._last_stats: Any = None
        #: The pod process the instance lives in: it is gone with it.
        self._boot = compute.connection().welcome.get("boot_id")

    def _check_pod(self) -> None:
        """Raise :class:`InstanceGoneError` if the pod it lives in ended; never start one."""
        compute = self.compute
        info = compute._info
        if info is not None:
            conn = _connections.live(compute.backend, info)
            if (conn is not None and conn.welcome.get("boot_id") == self._boot
                    and not compute.backend.gone(info)):
                return  # warm: a dict lookup and, locally, one waitpid
        why = "was torn down" if info is None else "ended"
        if compute.is_up():
            if compute.connection().welcome.get("boot_id") == self._boot:
                return
            why = "was restarted since"
        name = self.klass.__qualname__
        raise InstanceGoneError(
            f"the {name} instance {self.instance!r} is gone with its pod: compute "
            f"{compute.name!r} {why}, and the instance's state with it. Create it again "
            f"with kt.cls({name}).to(compute)", instance=self.instance, pod=compute.name)

    def __repr__(self) -> str:
        return f"<remote {self.klass.__qualname__} {self.instance!r} on {self.compute.name!r}>"

    @property
    def last_stats(self) -> CallStats | None:
        """What its last blocking or awaited method call cost on the pod (a :class:`CallStats`).

        None before the first; a ``submit()`` handle has its own, ``handle.stats``.
        """
        return _last_stats(self)

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return RemoteMethod(self, name)

    def getattr(self, name: str) -> Any:
        """Read an attribute of the remote instance (``counter.getattr("n")``)."""
        self._check_pod()
        _sync.ensure(self.compute, self.klass)
        msg: messages.MethodCall = {"kind": "method", "instance": self.instance,
                                    "method": name, "get_attr": True}
        return _result(_invoke(self.compute, msg, f"{self.klass.__qualname__}.{name}", None),
                       self)

    def teardown(self) -> None:
        """Stop the compute this instance lives on."""
        self.compute.teardown()
