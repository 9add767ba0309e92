"""A websocket connection driven by threads, on top of websockets' Sans-I/O protocol.

Why not ``websockets.asyncio``: a call crossing an event loop pays for thread handoffs
on both sides (caller thread -> loop -> socket, socket -> loop -> worker thread), and on
two cores those handoffs cost more than the websocket itself (measured: a no-op call
2.5-3x a bare websockets echo). Here any thread sends directly under a lock, and one
reader thread per connection parses frames and hands each message to a callback,
which is the minimum: one handoff per direction.

The same class serves both ends: :mod:`.handshake` makes a :class:`WireConnection`
from a connected socket (``client_handshake``, ``server_accept``).

A message is a list of websocket fragments; :mod:`pod_runtime.protocol` aligns its
frames so that each out-of-band buffer is its own fragment and is received as its own
``bytes`` (no concatenation on either side).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

__all__ = [
    "ConnectionClosedError",
    "WireConnection",
    "WouldBlock",
]

log = logging.getLogger("kubetorch.wire")
_CHUNK = 1 << 20
#: Masked payloads larger than this are masked and written in slices of this size (a
#: multiple of 4, so that each slice starts the masking key's cycle afresh).
_MASK_SLICE = 1 << 20
#: The largest message ``send_nowait`` writes (one segment; more goes through ``send``).
_NOWAIT_MAX = 65536
#: Seconds an idle follower thread waits to be handed the reading before it exits.
FOLLOWER_IDLE = 60.0
#: Seconds work run by the reading thread may take before another thread reads on.
ASIDE_GRACE = 0.002


try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # no C extension on this platform
    from websockets.utils import apply_mask as _apply_mask

_HEAD_SHORT = struct.Struct("!BB")
_HEAD_MEDIUM = struct.Struct("!BBH")
_HEAD_LONG = struct.Struct("!BBQ")


class _Masks:
    """Masking keys from the OS's strong source of entropy, fetched 1,024 at a time.

    RFC 6455 wants each client frame masked with an unpredictable key; one os.urandom
    call per frame was a syscall (and a GIL release) on the path of every call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._next = 0

    def take(self) -> bytes:
        with self._lock:
            if self._next >= len(self._pool):
                self._pool, self._next = os.urandom(4096), 0
            key = self._pool[self._next:self._next + 4]
            self._next += 4
            return key


_masks = _Masks()


class WouldBlock(Exception):
    """:meth:`WireConnection.send_nowait` wrote nothing: send the message another way."""


class ConnectionClosedError(ConnectionError):
    """The websocket is closed; nothing more can be sent on it."""


Fragments = Sequence[bytes | bytearray | memoryview]


class WireConnection:
    """One open websocket over a socket.

    Args:
        sock: The connected socket (blocking).
        protocol: The Sans-I/O protocol object, in state OPEN.
        on_message: Called on the reader thread with each message's fragments.
        on_close: Called once on the reader thread when the connection ends.
        ping_interval: Seconds between keepalive pings (None: never ping).
        ping_timeout: Seconds without any data from the peer before giving up, unless
            ``on_silence`` says the peer is alive.
        on_silence: Called on the keepalive thread with the seconds of silence once they
            pass ``ping_timeout``; returning True keeps the connection (the peer is known
            to be alive but not answering: a process whose Python is held by C code
            that keeps the GIL cannot answer pings), False drops it. Asked again at
            every ping while the silence lasts.
        name: For logs.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: Protocol,
        *,
        on_message: Callable[[list[bytes]], None],
        on_close: Callable[[BaseException | None], None],
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        on_silence: Callable[[float], bool] | None = None,
        pending: Sequence[Any] = (),
        name: str = "",
    ) -> None:
        self.sock = sock
        self.protocol = protocol
        self.on_message = on_message
        self.on_close = on_close
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.on_silence = on_silence
        self.name = name
        self._closed = threading.Event()  # set once; the keepalive waits on it
        # Two locks, so that the reader never waits for a writer: if both ends were
        # blocked writing a large message while their readers waited for the writer's
        # lock, neither would ever read again. The reader only takes _proto (short),
        # and queues what the protocol answers (pongs, close replies) for the writer.
        self._proto = threading.Lock()  # the Sans-I/O protocol object
        self._send_lock = threading.Lock()  # socket writes, one message at a time
        self._control_out: list[bytes] = []
        self._events: collections.deque[Any] = collections.deque(pending)
        self._parts: list[bytes] = []
        self._last_seen = time.monotonic()
        self._ping_since: float | None = None  # when the oldest unanswered ping went out
        # Leader/follower: one thread at a time (the leader) reads; when the work it
        # runs for a message takes long (run_aside), the role passes to a follower.
        self._baton = threading.Condition()
        self._leader: int | None = None
        self._idle_followers = 0
        self._wanted = False  # a hand-off is waiting for a follower
        self._aside: tuple[int, float] | None = None  # (leader, since) running work
        self._ended = threading.Event()
        self._masked = protocol.side is Side.CLIENT  # RFC 6455: clients mask their frames
        with contextlib.suppress(OSError, AttributeError):  # a dialled socket may be no TCP
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The peer's kernel answers TCP keepalives while its Python is held by C code;
            # a path that is gone does not: the socket errors after ~1 min of that, which
            # is what ends a silent connection that on_silence keeps (the peer "runs").
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (or closing): nothing more can be sent."""
        return self._closed.is_set()

    @closed.setter
    def closed(self, value: bool) -> None:
        if not value:
            raise ValueError("a closed connection cannot be reopened")
        self._closed.set()

    def start(self) -> None:
        """Start reading on a new thread (and the keepalive, when configured)."""
        self._start_keepalive()
        threading.Thread(target=self.run_reader, name=f"kt-wire-{self.name}",
                         daemon=True).start()

    def run(self) -> None:
        """Read on the calling thread until the connection ends (then return)."""
        self._start_keepalive()
        self.run_reader()
        self._ended.wait()

    def run_reader(self) -> None:
        """Lead the reading; if this thread hands off, it waits to lead again."""
        with self._baton:
            self._leader = threading.get_ident()
        self._lead()
        self._follow()

    def run_aside(self, work: Callable[[], None]) -> None:
        """From ``on_message``: run ``work`` on this (the reading) thread right away.

        Most calls are short: running them here, with no thread wake-up on their path,
        is what makes a small call cost little more than a websocket echo. If ``work``
        is still running after :data:`ASIDE_GRACE` seconds, the watchdog hands the
        reading to a follower thread, so a long call never holds up the frames behind
        it (a cancel, another call); when ``work`` ends, this thread then stops reading.
        """
        me = threading.get_ident()
        with self._baton:
            if self._leader != me:
                raise RuntimeError("run_aside() is for on_message, on the reading thread")
            self._aside = (me, time.monotonic())
        _watchdog.watch(self)
        try:
            work()
        finally:
            with self._baton:
                if self._aside is not None and self._aside[0] == me:
                    self._aside = None

    def _hand_off_if_slow(self, now: float) -> bool:
        """Watchdog: hand the reading on if the leader has been running work too long.

        Returns whether this connection still needs watching.
        """
        with self._baton:
            aside = self._aside
            if aside is None or self._leader != aside[0]:
                return False
            if now - aside[1] < ASIDE_GRACE:
                return True
            self._aside = None
            self._leader = None
            self._wanted = True
            if self._idle_followers:
                self._baton.notify()
                return False
        threading.Thread(target=self._follow, name=f"kt-wire-{self.name}",
                         daemon=True).start()
        return False

    def _follow(self) -> None:
        """Wait to be handed the reading; read; repeat until the connection ends."""
        while True:
            with self._baton:
                self._idle_followers += 1
                try:
                    while not self._wanted and not self._ended.is_set():
                        if not self._baton.wait(FOLLOWER_IDLE) and not self._wanted:
                            return  # idle too long: fewer threads
                finally:
                    self._idle_followers -= 1
                if self._ended.is_set():
                    return
                self._wanted = False
                self._leader = threading.get_ident()
            self._lead()

    def _start_keepalive(self) -> None:
        if self.ping_interval:
            threading.Thread(target=self._keepalive, name=f"kt-ping-{self.name}",
                             daemon=True).start()

    # ------------------------------------------------------------------ send
    def send(self, fragments: Fragments) -> None:
        """Send one message made of ``fragments`` (thread-safe).

        Data frames are framed here rather than through the Sans-I/O protocol object:
        its per-frame dataclass, checks and BytesIO were a visible share of a small
        call, and a large fragment goes out without being copied into one buffer. Only
        complete messages are sent this way, so the protocol's own state (it tracks
        continuation only for messages it sends itself) is never out of step; control
        frames (ping, pong, close) still go through it, under the same lock.

        Raises:
            ConnectionClosedError: When the connection is closed.
        """
        masked = self._masked
        # (bytes to write, masking key): a fragment larger than _MASK_SLICE is masked
        # slice by slice as it is written, never copied whole (every large argument
        # pays this on a client where shared memory is off, as in a cluster).
        chunks: list[tuple[bytes | bytearray | memoryview, bytes | None]] = []
        total = 0
        last = len(fragments) - 1
        for i, part in enumerate(fragments):
            view = part if isinstance(part, bytes) else memoryview(part).cast("B")
            length = len(view)
            total += length
            head1 = (0x80 if i == last else 0) | (0x2 if i == 0 else 0x0)
            head2 = 0x80 if masked else 0
            if length < 126:
                header = _HEAD_SHORT.pack(head1, head2 | length)
            elif length < 65536:
                header = _HEAD_MEDIUM.pack(head1, head2 | 126, length)
            else:
                header = _HEAD_LONG.pack(head1, head2 | 127, length)
            if not masked:
                chunks += [(header, None), (view, None)]
                continue
            key = _masks.take()
            chunks.append((header + key, None))
            if length <= _MASK_SLICE:
                chunks.append((_apply_mask(view, key), None))
            else:
                chunks.append((memoryview(view), key))
        with self._send_lock:
            if self.closed or self.protocol.state is not State.OPEN:
                raise ConnectionClosedError(f"connection {self.name} is closed")
            try:
                self._write_control()  # a pong the reader queued goes first
                if total <= 65500:  # one segment, small message (headers included)
                    self.sock.sendall(b"".join([c for c, _ in chunks]))
                else:
                    for chunk, mask in chunks:
                        if mask is None:
                            self.sock.sendall(chunk)
                        else:
                            self._send_masked(chunk, mask)
                self._write_control()
            except OSError as exc:
                self.closed = True
                raise ConnectionClosedError(f"connection {self.name} broke: {exc}") from exc
        self._drain_control()

    def send_nowait(self, fragments: Fragments) -> Callable[[], None] | None:
        """Send one small unmasked message now, if the socket takes it without blocking.

        For the pod's executor threads: a small result goes out on the thread that made
        it, without a hand-off to the connection's writer (a thread switch per call,
        a visible share of a warm call on 2 cores), yet a client that stops reading
        can never block that thread: the write is ``MSG_DONTWAIT``.

        Returns:
            None when the whole message was written. When the socket took only part
            of it, a function that writes the rest (blocking) and must run next, on the
            connection's writer: the connection stays held for this message until then.

        Raises:
            WouldBlock: Nothing was written (the socket is busy or full, or the message
                is large or masked): send it with :meth:`send` from the writer.
            ConnectionClosedError: When the connection is closed.
        """
        if self._masked:
            raise WouldBlock("client frames are masked: use send()")
        parts: list[bytes | memoryview] = []
        total = 0
        last = len(fragments) - 1
        for i, part in enumerate(fragments):
            view = part if isinstance(part, bytes) else memoryview(part).cast("B")
            length = len(view)
            head1 = (0x80 if i == last else 0) | (0x2 if i == 0 else 0x0)
            if length < 126:
                parts.append(_HEAD_SHORT.pack(head1, length))
            elif length < 65536:
                parts.append(_HEAD_MEDIUM.pack(head1, 126, length))
            else:
                raise WouldBlock("a large message: use send()")
            parts.append(view)
            total += length
            if total > _NOWAIT_MAX:
                raise WouldBlock("a large message: use send()")
        data = b"".join(parts)
        if not self._send_lock.acquire(blocking=False):
            raise WouldBlock("another message is being written")
        held = True
        try:
            if self.closed or self.protocol.state is not State.OPEN:
                raise ConnectionClosedError(f"connection {self.name} is closed")
            if self._control_out:
                raise WouldBlock("control frames go first")
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                raise WouldBlock("the socket is full") from None
            except OSError as exc:
                self.closed = True
                raise ConnectionClosedError(f"connection {self.name} broke: {exc}") from exc
            if sent == len(data):
                return None
            held = False  # the writer finishes the message, then releases the socket
            rest = memoryview(data)[sent:]

            def finish() -> None:
                try:
                    self.sock.sendall(rest)
                    self._write_control()
                except OSError as exc:
                    self.closed = True
                    raise ConnectionClosedError(f"connection {self.name} broke: {exc}"
                                                ) from exc
                finally:
                    self._send_lock.release()
                self._drain_control()

            return finish
        finally:
            if held:
                self._send_lock.release()
                self._drain_control()

    def _send_masked(self, view: bytes | bytearray | memoryview, key: bytes) -> None:
        """Write ``view`` masked with ``key``, one slice at a time (``_send_lock`` held).

        Each slice starts at a multiple of 4 bytes into the payload, where the mask's
        cycle starts again, so every slice is masked with the same key.
        """
        for start in range(0, len(view), _MASK_SLICE):
            self.sock.sendall(_apply_mask(view[start:start + _MASK_SLICE], key))

    def _queue_control(self) -> None:
        """Queue what the protocol wants sent (call with ``_proto`` held)."""
        self._control_out.extend(self.protocol.data_to_send())

    def _write_control(self) -> None:
        """Write queued control bytes (call with ``_send_lock`` held)."""
        while self._control_out:
            chunk = self._control_out.pop(0)
            if chunk:
                self.sock.sendall(chunk)
            else:  # SEND_EOF
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)

    def _drain_control(self) -> None:
        """Write queued control bytes now unless a writer holds the socket (it will)."""
        while self._control_out:
            if not self._send_lock.acquire(blocking=False):
                return
            try:
                self._write_control()
            except OSError:
                self.closed = True
                return
            finally:
                self._send_lock.release()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the reader thread finishes it."""
        with self._proto:
            if self.protocol.state is State.OPEN:
                self.protocol.send_close(code, reason)
                self._queue_control()
        self.closed = True
        self._drain_control()
        # Unblock the reader even if the peer never answers the close.
        timer = threading.Timer(2.0, self.abort)
        timer.daemon = True
        timer.start()

    def abort(self) -> None:
        """Drop the connection at once (no closing handshake)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    # ------------------------------------------------------------------ read
    def _leading(self) -> bool:
        return self._leader == threading.get_ident()

    def _lead(self) -> None:
        """Read and dispatch while this thread is the leader; end the connection on EOF."""
        error: BaseException | None = None
        try:
            while True:
                while self._events:
                    self._dispatch(self._events.popleft())
                    if not self._leading():
                        return  # handed off: a follower reads on
                if self.protocol.state is State.CLOSED:
                    break
                try:
                    data = self.sock.recv(_CHUNK)
                except OSError as exc:
                    error = exc
                    break
                if not data:
                    with self._proto:
                        self.protocol.receive_eof()
                        self._queue_control()
                    self._drain_control()
                    break
                self._feed(data)
        except BaseException as exc:  # noqa: BLE001 - reported through on_close
            error = exc
        self._end(error)

    def _end(self, error: BaseException | None) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        if error is None and self.protocol.close_exc is not None:
            code = self.protocol.close_code
            if code not in (1000, 1001):
                error = self.protocol.close_exc
        try:
            self.on_close(error)
        finally:
            with self._baton:
                self._ended.set()
                self._baton.notify_all()

    def _feed(self, data: bytes) -> None:
        self._last_seen = time.monotonic()
        self._ping_since = None  # anything from the peer answers the ping
        with self._proto:
            self.protocol.receive_data(data)
            self._events.extend(self.protocol.events_received())
            self._queue_control()  # pongs and close replies
        self._drain_control()
        if self.protocol.parser_exc is not None:
            raise self.protocol.parser_exc

    def _dispatch(self, frame: Any) -> None:
        op = frame.opcode
        if op is Opcode.BINARY or op is Opcode.CONT:
            self._parts.append(frame.data)
            if frame.fin:
                parts, self._parts = self._parts, []
                self.on_message(parts)
        elif op is Opcode.TEXT:
            self.close(1003, "binary frames only")

    def unanswered_for(self) -> float:
        """Seconds the oldest ping not answered since has waited (0.0: none waits)."""
        since = self._ping_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def ping(self) -> None:
        """Send a ping now, unless one is waiting for its answer already (thread-safe).

        Any data from the peer answers it; :meth:`unanswered_for` tells how long it has
        waited.
        """
        if self._ping_since is not None:
            return
        with self._proto:
            if self.protocol.state is not State.OPEN or self._ping_since is not None:
                return
            self._ping_since = time.monotonic()
            self.protocol.send_ping(b"")
            self._queue_control()
        self._drain_control()

    def _readable(self) -> bool:
        """Whether data from the peer waits unread (this process was too busy to read)."""
        pending = getattr(self.sock, "pending", None)  # bytes TLS has decrypted already
        with contextlib.suppress(Exception):
            if pending is not None and pending() > 0:
                return True
        try:
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    def _keepalive(self) -> None:
        assert self.ping_interval is not None
        # Waits on the closed event, not a sleep: the thread ends when the connection does.
        while not self._closed.wait(self.ping_interval):
            silent = time.monotonic() - self._last_seen
            if (self.ping_timeout is not None and silent > self.ping_timeout
                    and not self._readable()  # (data unread is no silence of the peer)
                    and (self.on_silence is None or not self._peer_alive(silent))):
                log.warning("no data from %s for %.0fs: dropping the connection",
                            self.name, silent)
                self.abort()
                return
            with self._proto:
                if self.protocol.state is State.OPEN:
                    if self._ping_since is None:
                        self._ping_since = time.monotonic()
                    self.protocol.send_ping(b"")
                    self._queue_control()
            self._drain_control()

    def _peer_alive(self, silent: float) -> bool:
        assert self.on_silence is not None
        try:
            return bool(self.on_silence(silent))
        except Exception:
            log.exception("the silence hook of %s failed", self.name)
            return False


class _Watchdog:
    """One thread that hands the reading on for connections whose leader runs long work.

    It ticks every :data:`ASIDE_GRACE` seconds while some connection runs work aside,
    and for a while after (so back-to-back calls need not wake it); otherwise it sleeps.
    """

    IDLE_TICKS = 500  # ~1 s of ticking with nothing to watch before it sleeps

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._watched: set[WireConnection] = set()
        self._ticking = False
        self._thread: threading.Thread | None = None

    def watch(self, conn: WireConnection) -> None:
        with self._cv:
            self._watched.add(conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kt-wire-watchdog",
                                                daemon=True)
                self._thread.start()
            elif not self._ticking:
                self._cv.notify()

    def _run(self) -> None:
        idle = 0
        while True:
            with self._cv:
                if not self._watched and idle >= self.IDLE_TICKS:
                    self._ticking = False
                    self._cv.wait()
                    idle = 0
                self._ticking = True
                self._cv.wait(ASIDE_GRACE)
                watched = list(self._watched)
            now = time.monotonic()
            done = [conn for conn in watched if not conn._hand_off_if_slow(now)]
            with self._cv:
                for conn in done:  # unless new work started on it meanwhile
                    if conn._aside is None:
                        self._watched.discard(conn)
                idle = 0 if self._watched else idle + 1


_watchdog = _Watchdog()
