"""The wire protocol between a client and a pod: frames, message types, serialization.

Pure: no sockets, no threads. Both sides import it; it is tested without a network.

A *frame* is one binary websocket message made of fragments, so that large buffers
are never concatenated into one big ``bytes`` on either side::

    fragment 0  header      25 bytes: magic b"KT", version, type, flags, call id,
                            body length, buffer count
                descriptors per buffer: kind (inline | shm), size, name length, name
                body        JSON for control messages, pickle for calls and results
    fragment i  the i-th inline out-of-band buffer

Calls and results are pickled with protocol 5; every ``PickleBuffer`` (numpy arrays,
``bytes`` over a threshold wrapped by the caller) travels out of band, either inline
after the body or, when both ends share a host, in a shared-memory file whose name is
in the descriptor (see :mod:`pod_runtime.protocol.shm`).

Message types and who sends them:

=========  =====  ==========================================================
type       from   body
=========  =====  ==========================================================
CALL       client pickle: ``{"kind": ..., ...}`` (see :mod:`pod_runtime.executor`)
CANCEL     client JSON ``{}``: interrupt the call
ACK        client JSON ``{"ids": [...]}``: the client has these results; drop them
COLLECT    client JSON ``{"calls": {id: last_seq}}``: resend events and results
WELCOME    pod    JSON: pod identity, versions, proof of the token, shm support
EVENTS     pod    JSON ``{"events": [{"seq": n, "kind": "stream", ...}]}``
RESULT     pod    pickle: ``{"ok": True, "value": v}`` or ``{"ok": False, "error": {...}}``
UNKNOWN    pod    JSON ``{}``: the pod holds no call with this id (COLLECT reply)
=========  =====  ==========================================================

Authentication happens in the HTTP upgrade (``X-KT-Token: <token>``, or
``Authorization: Bearer <token>`` where no proxy needs that header) before any frame is
read, so nothing is unpickled for a peer that has not proved the token.
The pod proves it holds the token too: WELCOME carries ``HMAC(token, client nonce)``.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import io
import json
import pickle
import struct
import sys
import types
from collections import ChainMap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

__all__ = [
    "POD_TOKEN_HEADER",
    "PROTOCOL_VERSION",
    "BufferRef",
    "Frame",
    "FrameType",
    "ProtocolError",
    "decode_frame",
    "dump_json",
    "dumps",
    "encode_frame",
    "installed_version",
    "load_json",
    "loads",
    "presented_token",
    "token_proof",
]

PROTOCOL_VERSION = 1
MAGIC = b"KT"
_HEADER = struct.Struct("!2sBBBQQI")
_DESCRIPTOR = struct.Struct("!BQH")
BUFFER_INLINE = 0
BUFFER_SHM = 1
#: CALL flag: run on the pod's main thread (notebook cells: real SIGINT interrupts).
FLAG_MAIN_THREAD = 1

#: HTTP header names used in the websocket upgrade.
TOKEN_HEADER = "Authorization"
#: The pod's own token header, which no ingress or API-server proxy uses for itself.
#: When a request carries it, it alone decides (a proxy may put its own credentials in
#: ``Authorization``); otherwise ``Authorization: Bearer <token>`` does.
POD_TOKEN_HEADER = "X-KT-Token"
CLIENT_ID_HEADER = "X-KT-Client"
NONCE_HEADER = "X-KT-Nonce"
SHM_PROBE_HEADER = "X-KT-Shm-Probe"
#: The websocket path of the bridge; plain HTTP GETs answer /healthz, /ready, /metrics.
BRIDGE_PATH = "/bridge"


class ProtocolError(Exception):
    """A frame that does not follow this protocol (wrong magic, version or lengths)."""


class FrameType(enum.IntEnum):
    """What a frame carries; see the table in the module docstring."""

    CALL = 1
    CANCEL = 2
    ACK = 3
    COLLECT = 4
    WELCOME = 10
    EVENTS = 11
    RESULT = 12
    UNKNOWN = 13


@dataclass(frozen=True, slots=True)
class BufferRef:
    """An out-of-band buffer as described in a received frame.

    Inline buffers hold a view into the received message; shared-memory buffers hold
    the file name, resolved by the receiver with :func:`pod_runtime.protocol.shm.open_buffer`.
    """

    kind: int
    size: int
    view: memoryview | None = None
    name: str | None = None
    fd: int | None = None


def claim_buffers(refs: list[BufferRef], claim: Callable[[str], int]) -> list[BufferRef]:
    """Claim every shared-memory buffer of a frame (``claim(name) -> fd``) right away."""
    out: list[BufferRef] = []
    try:
        for ref in refs:
            if ref.kind == BUFFER_SHM and ref.fd is None:
                assert ref.name is not None
                ref = BufferRef(ref.kind, ref.size, name=ref.name, fd=claim(ref.name))
            out.append(ref)
    except BaseException:
        release_buffers(out)  # none of them leaks when one cannot be claimed
        raise
    return out


def release_buffers(refs: Sequence[BufferRef]) -> None:
    """Close the descriptors of claimed shared-memory buffers that were never mapped.

    Mapping closes a descriptor; a call cancelled before it started, or a result nobody
    waits for any more, must not keep its (unlinked, still allocated) file open.
    """
    import os

    for ref in refs:
        if ref.kind == BUFFER_SHM and ref.fd is not None and ref.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(ref.fd)
            object.__setattr__(ref, "fd", -1)


def resolve_buffers(
    refs: Sequence[BufferRef], map_claimed: Callable[[int, int], memoryview]
) -> list[memoryview]:
    """Turn buffer refs into buffers for :func:`loads` (maps claimed shm files)."""
    out = []
    for ref in refs:
        if ref.kind == BUFFER_SHM:
            if ref.fd is None or ref.fd < 0:
                raise ProtocolError(f"shared-memory buffer {ref.name} was never claimed")
            fd = ref.fd
            object.__setattr__(ref, "fd", -1)  # map_claimed closes it
            out.append(map_claimed(fd, ref.size))
        else:
            assert ref.view is not None
            # Received bytes are read-only; arrays built on them would be too.
            out.append(memoryview(bytearray(ref.view)) if ref.view.readonly else ref.view)
    return out


@dataclass(slots=True)
class Frame:
    """A decoded frame. ``body`` is a view into the received bytes (no copy)."""

    type: FrameType
    call_id: int
    body: memoryview
    buffers: list[BufferRef] = field(default_factory=list)
    flags: int = 0

    def json(self) -> Any:
        """Parse the body as JSON (control frames)."""
        return load_json(self.body)


def encode_frame(
    type: FrameType,
    call_id: int,
    body: bytes | memoryview,
    buffers: Sequence[memoryview] = (),
    *,
    shm_names: Sequence[str | None] = (),
    flags: int = 0,
) -> list[bytes | memoryview]:
    """Encode a frame as websocket fragments, without copying the buffers.

    The first fragment holds header, descriptors and body; each inline buffer is a
    fragment of its own, so the receiver gets it as its own ``bytes``.

    Args:
        type: The message type.
        call_id: The call the message belongs to (0 for connection-level messages).
        body: The message body.
        buffers: Out-of-band buffers (raw, contiguous ``memoryview`` of bytes).
        shm_names: For each buffer, the shared-memory file it was written to, or None
            to send it inline. Shorter than ``buffers`` means the rest go inline.
        flags: Bit flags (:data:`FLAG_MAIN_THREAD`).

    Returns:
        Fragments to send as one websocket message.
    """
    descriptors = bytearray()
    inline: list[memoryview] = []
    for i, buf in enumerate(buffers):
        name = shm_names[i] if i < len(shm_names) else None
        if name is None:
            descriptors += _DESCRIPTOR.pack(BUFFER_INLINE, buf.nbytes, 0)
            inline.append(buf)
        else:
            raw = name.encode()
            descriptors += _DESCRIPTOR.pack(BUFFER_SHM, buf.nbytes, len(raw)) + raw
    head = _HEADER.pack(
        MAGIC, PROTOCOL_VERSION, int(type), flags, call_id, len(body), len(buffers)
    )
    return [b"".join((head, descriptors, body)), *inline]


def decode_frame(parts: Sequence[bytes | bytearray | memoryview]) -> Frame:
    """Decode a received message (its fragments) into header, body and buffer views.

    Raises:
        ProtocolError: When the message is not a well-formed frame.
    """
    if not parts:
        raise ProtocolError("empty message")
    view = memoryview(parts[0])
    if view.nbytes < _HEADER.size:
        raise ProtocolError(f"frame of {view.nbytes} bytes is shorter than its header")
    magic, version, type_, flags, call_id, body_len, nbufs = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}: not a kubetorch-jupyter frame")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} from the peer, {PROTOCOL_VERSION} here: "
            "upgrade kubetorch-jupyter on both sides"
        )
    try:
        ftype = FrameType(type_)
    except ValueError:
        raise ProtocolError(f"unknown frame type {type_}") from None
    offset = _HEADER.size
    inline = iter(parts[1:])
    buffers: list[BufferRef] = []
    for _ in range(nbufs):
        if offset + _DESCRIPTOR.size > view.nbytes:
            raise ProtocolError("truncated buffer descriptor")
        kind, size, name_len = _DESCRIPTOR.unpack_from(view, offset)
        offset += _DESCRIPTOR.size
        if kind == BUFFER_SHM:
            name = bytes(view[offset : offset + name_len]).decode()
            offset += name_len
            buffers.append(BufferRef(kind, size, name=name))
        elif kind == BUFFER_INLINE:
            part = next(inline, None)
            if part is None or memoryview(part).nbytes != size:
                raise ProtocolError("inline buffer missing or of the wrong size")
            buffers.append(BufferRef(kind, size, view=memoryview(part)))
        else:
            raise ProtocolError(f"unknown buffer kind {kind}")
    body = view[offset : offset + body_len]
    if body.nbytes != body_len or offset + body_len != view.nbytes:
        raise ProtocolError("frame body length does not match its header")
    if next(inline, None) is not None:
        raise ProtocolError("more fragments than inline buffers")
    return Frame(ftype, call_id, body, buffers, flags)


def _code_reduce(code: types.CodeType) -> Any:
    """Cloudpickle's code reducer, keeping the real file name for remote tracebacks."""
    reducer = cloudpickle.Pickler.dispatch_table[types.CodeType]
    ctor, args = reducer(code)
    args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)
    return ctor, args


class Pickler(cloudpickle.Pickler):
    """cloudpickle, except that functions sent by value keep their file name.

    cloudpickle replaces it with ``<dynamic-code>``; we keep it so that a remote
    traceback names the notebook cell or script line the function came from.
    """

    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def dumps(
    obj: Any,
    *,
    pickler: type[pickle.Pickler] = Pickler,
    min_oob: int = 1024,
) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj`` with protocol 5, returning the body and its out-of-band buffers.

    The default pickler is cloudpickle's (functions and classes of ``__main__`` by
    value); pass ``pickler=pickle.Pickler`` for plain data.

    Buffers smaller than ``min_oob`` bytes stay in the body (a separate buffer costs
    more than it saves); non-contiguous ones too.
    """
    buffers: list[memoryview] = []

    def callback(pb: pickle.PickleBuffer) -> bool:
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: pickle copies it in-band
            return True
        if raw.nbytes < min_oob:
            return True
        buffers.append(raw)
        return False

    out = io.BytesIO()
    pickler(out, protocol=5, buffer_callback=callback).dump(obj)
    return out.getvalue(), buffers


def loads(body: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle a body with its out-of-band buffers. Only ever for authenticated peers."""
    return pickle.loads(body, buffers=buffers)


def dump_json(obj: Any) -> bytes:
    """Encode a control message body."""
    return json.dumps(obj, separators=(",", ":")).encode()


def load_json(body: bytes | memoryview) -> Any:
    """Decode a control message body."""
    return json.loads(bytes(body))


#: Packages whose versions both sides report: a mismatch can break unpickling.
VERSIONED_PACKAGES = ("cloudpickle", "numpy", "torch", "pandas", "websockets")


def package_versions() -> dict[str, str]:
    """This interpreter's Python and :data:`VERSIONED_PACKAGES` versions (no imports).

    The pod sends them in WELCOME; the client compares them with its own.
    """
    from importlib import metadata

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def installed_version(package: str) -> str | None:
    """The installed version of the distribution that provides import name ``package``."""
    from importlib import metadata

    names = [package]
    with contextlib.suppress(Exception):
        names = metadata.packages_distributions().get(package) or names
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return None


def token_proof(token: str, nonce: str) -> str:
    """What the pod sends back to prove it knows ``token``: HMAC-SHA256 over the nonce."""
    return hmac.new(token.encode(), nonce.encode(), hashlib.sha256).hexdigest()


def check_token(expected: str, presented: str | None) -> bool:
    """Compare tokens in constant time. An empty expected token never matches."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def presented_token(x_kt_token: str | None, authorization: str | None) -> str | None:
    """The token a request presents: its ``X-KT-Token`` if it has one, else its bearer token.

    ``X-KT-Token`` wins outright, so a wrong one is refused even beside a right
    ``Authorization``, and a right one is accepted whatever a proxy put in
    ``Authorization``.
    """
    if x_kt_token is not None:
        return x_kt_token.strip()
    return bearer(authorization)


def bearer(header: str | None) -> str | None:
    """Extract the token from an ``Authorization: Bearer <token>`` header value."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


#: A callback that receives pod events (``{"seq": n, "kind": ..., ...}`` dicts).
EventSink = Callable[[dict[str, Any]], None]
