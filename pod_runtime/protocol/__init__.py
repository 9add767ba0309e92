"""The protocol package: everything both ends of the bridge must agree on.

- :mod:`.frames`: frame layout, message types, pickling policy, token proofs (pure: no
  sockets, no threads; tested without a network).
- :mod:`.wire`: websocket framing over a socket (threaded, on websockets' Sans-I/O core).
- :mod:`.handshake`: the HTTP upgrade, client side (TLS, dialled sockets) and server side.
- :mod:`.shm`: the shared-memory side channel for bulk buffers between local processes.
- :mod:`.messages`: the typed bodies of CALL, EVENTS and RESULT messages, and
  :class:`~.messages.ErrorKind`, the failures a client acts on.

``kernel_bridge`` imports this package and nothing else of ``pod_runtime``.
"""

from .frames import (
    BRIDGE_PATH,
    BUFFER_INLINE,
    BUFFER_SHM,
    CLIENT_ID_HEADER,
    FLAG_MAIN_THREAD,
    MAGIC,
    NONCE_HEADER,
    POD_TOKEN_HEADER,
    PROTOCOL_VERSION,
    SHM_PROBE_HEADER,
    TOKEN_HEADER,
    BufferRef,
    Frame,
    FrameType,
    Pickler,
    ProtocolError,
    bearer,
    check_token,
    claim_buffers,
    decode_frame,
    dump_json,
    dumps,
    encode_frame,
    installed_version,
    load_json,
    loads,
    package_versions,
    presented_token,
    release_buffers,
    resolve_buffers,
    token_proof,
)

__all__ = [
    "BRIDGE_PATH",
    "BUFFER_INLINE",
    "BUFFER_SHM",
    "CLIENT_ID_HEADER",
    "FLAG_MAIN_THREAD",
    "MAGIC",
    "NONCE_HEADER",
    "POD_TOKEN_HEADER",
    "PROTOCOL_VERSION",
    "SHM_PROBE_HEADER",
    "TOKEN_HEADER",
    "BufferRef",
    "Frame",
    "FrameType",
    "Pickler",
    "ProtocolError",
    "bearer",
    "check_token",
    "claim_buffers",
    "decode_frame",
    "dump_json",
    "dumps",
    "encode_frame",
    "installed_version",
    "load_json",
    "loads",
    "package_versions",
    "presented_token",
    "release_buffers",
    "resolve_buffers",
    "token_proof",
]
