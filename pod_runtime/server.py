"""The pod's network side: one websocket endpoint for the bridge, plain HTTP for probes.

``GET /healthz``, ``/ready`` and ``/metrics`` answer without authentication.
``/bridge`` upgrades to a websocket only for a request carrying the pod's token in
``X-KT-Token`` or, without that header, in ``Authorization: Bearer`` (compared in
constant time; see :func:`pod_runtime.protocol.presented_token`); any other request
is answered 401 before a single frame is read, so nothing from an unauthenticated peer
is ever unpickled.

Threads: one acceptor; per connection a reader (parses frames, queues calls) and a
writer, the only thread that writes to its socket (results in the order they finished,
stream output as it is written, coalescing what piles up while it sends; a call's
events always precede its result). The executor's threads never block on a socket.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import cells as _cells  # noqa: F401 - registers the notebook cell call kinds
from . import gpu, protocol, selfscale, settings
from . import podlog as _podlog  # noqa: F401 - registers the "logs" call kind
from . import sync as _sync  # noqa: F401 - registers the "sync" call kind
from .executor import Executor
from .metrics import PodMetrics
from .protocol import FrameType, ending, handshake, messages, shm, wire
from .records import CallRecord

__all__ = ["PodServer"]

log = logging.getLogger("kubetorch.pod")

class _Conn:
    """One authenticated client connection, with its own outbound queue and writer.

    Only the writer thread writes to the socket. The executor's threads (the main
    thread running a cell, workers running calls) and the reader only queue: a client
    that stops reading (a suspended laptop, a stuck port-forward) blocks its own
    writer, never a call, another client, or this connection's reader.

    The queue holds results in the order they finished; a record with new output is
    marked (coalesced) and the writer sends its unsent events. Before a result the
    writer sends that call's unsent events, so a call's events precede its result.

    Args:
        client_id: The client's id (from its upgrade request), for logs.
        use_shm: Whether large result buffers go through shared memory.
        max_outbound: Bytes of queued results, beyond the one being written, past which
            the client counts as not reading and its connection is closed.
    """

    def __init__(self, client_id: str, use_shm: bool, *, max_outbound: int) -> None:
        self.wire: wire.WireConnection | None = None
        self.client_id = client_id
        self.use_shm = use_shm
        self.max_outbound = max_outbound
        self.shm_writer = shm.ShmWriter()
        self._cv = threading.Condition()
        self._queue: collections.deque[_Outbound] = collections.deque()
        self._queued_bytes = 0
        self._dirty: dict[CallRecord, None] = {}  # ordered set
        self._direct = False  # a call's thread writes its result now (see _send_now)
        self._busy = False  # the writer is sending what it took
        self._ended = False
        self._writer: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self._ended or self.wire is None or self.wire.closed

    def start(self, ws: wire.WireConnection) -> None:
        """Attach the websocket and start the writer."""
        self.wire = ws
        self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                        name=f"kt-send-{self.client_id[:8]}")
        self._writer.start()

    def post(self, frame: list[bytes | memoryview]) -> None:
        """Queue a control frame (WELCOME, UNKNOWN)."""
        self._put(_Outbound(frame, None, 0))

    def post_result(self, record: CallRecord, frame: list[bytes | memoryview]) -> None:
        """Send a call's result: at once when that cannot block, else through the writer.

        The common warm call (a small result, no output left to send, nothing queued)
        is written here, on the call's own thread, without blocking
        (:meth:`~pod_runtime.protocol.wire.WireConnection.send_nowait`): handing it to
        the writer cost a thread switch per call. Anything else is queued, and the
        writer sends the call's unsent events just before it.
        """
        nbytes = sum(memoryview(f).nbytes for f in frame)
        if self._send_now(record, frame):
            return
        self._put(_Outbound(frame, record, nbytes))

    def _send_now(self, record: CallRecord, frame: list[bytes | memoryview]) -> bool:
        """Write ``frame`` now if nothing must precede it and the socket takes it."""
        with self._cv:
            if self._queue or self._busy or self._direct or self._ended or self.wire is None:
                return False
            self._direct = True  # the writer waits meanwhile
        try:
            with record.lock:
                if record.result_sent or record.owner is not self:
                    return True  # re-subscribed elsewhere meanwhile: that one sends it
                if record.seq > record.sent_seq or record.dropped_lines:
                    return False  # its output goes first: the writer sends both
                record.result_sent = True
            try:
                finish = self.wire.send_nowait(frame)
            except wire.WouldBlock:
                with record.lock:
                    record.result_sent = False
                return False
            except wire.ConnectionClosedError:
                return True  # kept on the record: a reconnect collects it
            if finish is not None:  # the socket took part: the writer writes the rest
                with self._cv:
                    self._queue.appendleft(_Outbound([], None, 0, finish))
            return True
        finally:
            with self._cv:
                self._direct = False
                # Wake the writer only for what was queued meanwhile: waking it for
                # nothing after every direct result cost a thread switch and a GIL
                # hand-over per warm call (a tenth of a no-op call on 2 cores).
                if self._queue or self._dirty or self._ended:
                    self._cv.notify()

    def flushed(self) -> bool:
        """Whether nothing waits to be written (used while the pod drains)."""
        with self._cv:
            return self._ended or not (self._queue or self._dirty or self._busy or self._direct)

    def mark(self, record: CallRecord) -> None:
        """The record has output to send on this connection (coalesced)."""
        with self._cv:
            if record not in self._dirty:
                self._dirty[record] = None
                self._cv.notify()

    def wake(self) -> None:
        """The connection closed: the writer drops what is queued and exits."""
        with self._cv:
            self._ended = True
            self._queue.clear()
            self._dirty.clear()
            self._queued_bytes = 0
            self._cv.notify()

    def _put(self, item: _Outbound) -> None:
        with self._cv:
            if self._ended:
                return
            self._queue.append(item)
            self._queued_bytes += item.nbytes
            lagging = self._queued_bytes > self.max_outbound
            self._cv.notify()
        if lagging:
            log.warning("client %s is not reading: %d bytes of results wait for it (over "
                        "KT_POD_MAX_OUTBOUND_BYTES=%d); closing its connection, the results "
                        "are kept for it to collect", self.client_id[:8], self._queued_bytes,
                        self.max_outbound)
            assert self.wire is not None
            self.wire.close(1008, "client not reading: over KT_POD_MAX_OUTBOUND_BYTES; "
                                  "reconnect to collect")
            self.wake()

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                self._busy = False
                while (self._direct or not (self._queue or self._dirty)) and not self._ended:
                    self._cv.wait()
                if self._ended:
                    return
                self._busy = True  # what it takes goes out before any direct result
                item: _Outbound | None = None
                batch: list[CallRecord] = []
                if self._queue:
                    item = self._queue.popleft()
                    self._queued_bytes -= item.nbytes
                else:
                    batch = list(self._dirty)
                    self._dirty.clear()
            if item is not None:
                self._write_item(item)
            for record in batch:
                self._write_events(record)

    def _send(self, frame: list[bytes | memoryview]) -> None:
        assert self.wire is not None
        with contextlib.suppress(wire.ConnectionClosedError):
            self.wire.send(frame)

    def _write_events(self, record: CallRecord) -> None:
        with record.lock:
            if record.owner is not self or self.closed:
                return  # re-subscribed elsewhere meanwhile: that connection sends
            events = record.take_unsent()
        if events:
            self._send(_events_frame(record.call_id, events))

    def _write_item(self, item: _Outbound) -> None:
        if item.finish is not None:  # the rest of a message a call's thread began
            with contextlib.suppress(wire.ConnectionClosedError):
                item.finish()
            return
        record = item.record
        if record is None:
            self._send(item.frame)
            return
        with record.lock:
            if record.result_sent or record.owner is not self:
                return
            record.result_sent = True
            events = record.take_unsent()
        if events:
            self._send(_events_frame(record.call_id, events))
        self._send(item.frame)


@dataclass(slots=True)
class _Outbound:
    """A frame queued for a connection (``record``: the call whose result it is)."""

    frame: list[bytes | memoryview]
    record: CallRecord | None
    nbytes: int
    finish: Callable[[], None] | None = None  # writes the rest of a begun message


def _events_frame(call_id: int, events: list[dict[str, Any]]) -> list[bytes | memoryview]:
    return protocol.encode_frame(FrameType.EVENTS, call_id,
                                 protocol.dump_json({"events": events}))


class PodServer:
    """The pod runtime: a threaded websocket server plus the executor.

    Args:
        token: The bearer token clients must present.
        name: The pod's name, shown in errors and WELCOME.
        host: Interface to listen on (127.0.0.1 for local pods; 0.0.0.0 in a container).
        port: TCP port; 0 picks a free one (see :attr:`port` once started).
        inactivity_ttl: Seconds without calls after which the pod stops, connected
            clients or not (a running call, a detached run included, keeps it up).
        max_workers: Threads for concurrent function and method calls.
    """

    def __init__(
        self,
        token: str,
        *,
        name: str = "pod",
        host: str = "127.0.0.1",
        port: int = 0,
        inactivity_ttl: float | None = None,
        max_workers: int = 64,
    ) -> None:
        if not token:
            raise ValueError("a pod needs a token: refusing to serve without authentication")
        self.token = token
        self.name = name
        self.host = host
        self.port = port
        self.inactivity_ttl = inactivity_ttl
        self.boot_id = secrets.token_hex(8)
        self.started = time.time()
        self.executor = Executor(name, self._notify, self._finished, max_workers=max_workers)
        self.stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._versions = protocol.package_versions()
        self.metrics = PodMetrics(name, settings.get("KT_POD_INSTANCE") or name,
                                  executor=self.executor, connections=lambda: len(self._conns),
                                  started=self.started, gpu=gpu.default_reader())
        # connections still in their handshake, oldest first (see _admit_pending)
        self._pending: dict[socket.socket, None] = {}
        self._pending_lock = threading.Lock()
        self.draining = threading.Event()  # SIGTERM: finishing what runs, taking nothing new
        self._drain_cv = threading.Condition()
        self._close_reason = "pod stopping"

    # ------------------------------------------------------------ lifecycle
    def start_in_thread(self) -> int:
        """Bind, start the server threads, and return the port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self._listener = listener
        self.port = listener.getsockname()[1]
        for target, name in ((self._accept_loop, "kt-accept"), (self._janitor, "kt-janitor")):
            threading.Thread(target=target, name=name, daemon=True).start()
        return self.port

    def stop(self, reason: str | None = None) -> None:
        """Stop accepting, close every connection (code 1001, ``reason``), stop the executor."""
        if self.stopped.is_set():
            return
        if reason is not None:
            self._close_reason = reason
        self.stopped.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        for conn in list(self._conns):
            if conn.wire is not None:
                conn.wire.close(1001, self._close_reason)
            conn.shm_writer.cleanup()  # results nobody claimed: tmpfs is memory
        self.executor.shutdown()

    def _janitor(self) -> None:
        """Expire old results; stop the pod after ``inactivity_ttl`` idle seconds."""
        period = min(30.0, self.executor.result_ttl / 4)
        if self.inactivity_ttl is not None:
            period = min(period, self.inactivity_ttl / 4)
        while not self.stopped.wait(max(period, 0.05)):
            self.executor.expire()
            if self.inactivity_ttl is None:
                continue
            # Activity is calls (a sync is one), not connections: an open notebook
            # that makes none must not hold the pod (and its GPUs) forever.
            idle = time.monotonic() - self.executor.last_activity
            if (idle > self.inactivity_ttl and not self.executor.busy()
                    and not self.draining.is_set()):
                log.warning("no calls for %.0fs (inactivity TTL %gs): pod %s stops, "
                            "%d idle client(s) connected", idle, self.inactivity_ttl,
                            self.name, len(self._conns))
                self._scale_to_zero()
                self.end(ending.IDLE, self.inactivity_ttl)

    def _scale_to_zero(self) -> None:
        """In a cluster, set the pod's own workload to 0 replicas so it is not restarted."""
        if not selfscale.in_cluster():
            return
        why = selfscale.scale_to_zero()
        if why is None:
            log.warning("pod %s scaled %s to 0 replicas (idle); the next call starts it "
                        "again", self.name, settings.get("KT_K8S_WORKLOAD"))
        else:
            log.warning("pod %s could not scale itself to 0 (%s): it exits and its "
                        "workload restarts it", self.name, why)

    def end(self, reason: str, value: float) -> None:
        """Stop for ``reason`` (an :mod:`~.protocol.ending`): say why, then :meth:`stop`.

        The termination log gets the reason first (a backend reads it once the process
        is gone), then every connection closes with it.
        """
        path = settings.get("KT_POD_TERMINATION_LOG")
        ending.write_termination_log(path, ending.termination_log(reason, value),
                                     create="KT_POD_TERMINATION_LOG" in os.environ)
        self.stop(ending.close_reason(reason, value))

    def drain(self, grace: float) -> None:
        """SIGTERM: let running calls finish within ``grace`` seconds, then stop as preempted.

        Meanwhile ``/ready`` answers 503 and new calls are refused (:class:`~.protocol.
        messages.PodStoppingError`); results that finish go out before the connections
        close. Calls still running at the end are abandoned with the process: their
        clients read "Preempted" in the close and in the termination log.
        """
        self.draining.set()
        deadline = time.monotonic() + grace
        running = sum(1 for r in list(self.executor.records.values()) if r.state != "done")
        log.warning("SIGTERM: pod %s stops; %d call(s) running get %gs (KT_POD_TERM_GRACE) "
                    "to finish, new calls are refused", self.name, running, grace)
        with self._drain_cv:
            while self.executor.busy():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._drain_cv.wait(left)
        left_over = sum(1 for r in list(self.executor.records.values()) if r.state != "done")
        if left_over:
            log.warning("%d call(s) still running after the %gs grace are stopped",
                        left_over, grace)
        flush_by = time.monotonic() + 2.0  # results that finished: out before the close
        while (any(not c.flushed() for c in list(self._conns))
               and not self.stopped.wait(0.02) and time.monotonic() < flush_by):
            pass
        self.end(ending.PREEMPTED, grace)

    # --------------------------------------------------------------- accept
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._admit_pending(sock)
            threading.Thread(target=self._serve_socket, args=(sock,), name="kt-conn",
                             daemon=True).start()

    def _admit_pending(self, sock: socket.socket) -> None:
        """Count a new connection as in its handshake; past the cap, drop the oldest.

        Threads per unauthenticated peer are bounded this way, and a peer that holds
        a token gets in even during a flood: its handshake takes a round trip, while
        the ones it pushes out have been waiting longest (slow senders, idle sockets).
        """
        cap = settings.get("KT_POD_MAX_PENDING_CONNECTIONS")
        with self._pending_lock:
            self._pending[sock] = None
            excess = len(self._pending) - cap
            dropped = list(self._pending)[:max(0, excess)]
            for old in dropped:
                del self._pending[old]
        for old in dropped:
            with contextlib.suppress(OSError):
                old.shutdown(socket.SHUT_RDWR)  # its thread's read ends; that thread closes it
        if dropped:
            log.warning("over KT_POD_MAX_PENDING_CONNECTIONS=%d connections in their "
                        "handshake: dropped the oldest %d", cap, len(dropped))

    def _serve_socket(self, sock: socket.socket) -> None:
        try:
            proto, request = handshake.read_request(
                sock, settings.get("KT_POD_HANDSHAKE_TIMEOUT"),
                max_size=settings.get("KT_POD_MAX_MESSAGE_BYTES"))
        except (OSError, TimeoutError):  # slow, too large, or dropped for newer ones
            request = None
        with self._pending_lock:
            admitted = self._pending.pop(sock, 0) is None
        if request is None or not admitted:
            with contextlib.suppress(OSError):
                sock.close()
            return
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return handshake.respond(sock, proto, 200, "ok\n")
        if path == "/ready":
            if self.draining.is_set() or self.stopped.is_set():
                return handshake.respond(sock, proto, 503, "stopping\n")
            return handshake.respond(sock, proto, 200, "ready\n")
        if path == "/metrics":
            return handshake.respond(sock, proto, 200, self.metrics.exposition(),
                                     {"Content-Type": self.metrics.content_type})
        if path != protocol.BRIDGE_PATH:
            return handshake.respond(sock, proto, 404, f"no such endpoint: {path}\n")
        presented = protocol.presented_token(request.headers.get(protocol.POD_TOKEN_HEADER),
                                             request.headers.get(protocol.TOKEN_HEADER))
        if not protocol.check_token(self.token, presented):
            log.warning("refused a connection with a %s token",
                        "missing" if presented is None else "wrong")
            return handshake.respond(sock, proto, 401, "missing or wrong token\n")
        self._serve_bridge(sock, proto, request)

    def _serve_bridge(self, sock: socket.socket, proto: Any, request: Any) -> None:
        headers = request.headers
        probe = headers.get(protocol.SHM_PROBE_HEADER)
        probe_payload = shm.probe_check(probe) if probe else None
        conn = _Conn(headers.get(protocol.CLIENT_ID_HEADER, ""), probe_payload is not None,
                     max_outbound=settings.get("KT_POD_MAX_OUTBOUND_BYTES"))
        threading.current_thread().name = f"kt-conn-{conn.client_id[:8]}"
        ws = handshake.server_accept(
            sock, proto, request,
            on_message=lambda parts: self._on_message(conn, parts),
            on_close=lambda exc: conn.wake(),
            # The pod pings too: a client that vanished without closing (a laptop that
            # slept, a dead port-forward) is dropped, so its threads go and the
            # inactivity TTL can count from then.
            ping_interval=20.0,
            ping_timeout=60.0,
            name=f"{self.name}<-{conn.client_id[:8]}",
        )
        if ws is None:
            return
        conn.start(ws)
        self._conns.add(conn)
        welcome = {
            "pod": self.name,
            "pid": os.getpid(),
            "boot_id": self.boot_id,
            "protocol": protocol.PROTOCOL_VERSION,
            "proof": protocol.token_proof(self.token, headers.get(protocol.NONCE_HEADER, "")),
            "shm": probe_payload,
            "versions": self._versions,
            # other clients connected now: a client that would restart the pod asks first
            "clients": sum(1 for c in self._conns if c is not conn and not c.closed),
        }
        conn.post(protocol.encode_frame(FrameType.WELCOME, 0, protocol.dump_json(welcome)))
        try:
            ws.run()
        finally:
            self._conns.discard(conn)
            conn.wake()
            conn.shm_writer.cleanup()
            for rec in list(self.executor.records.values()):
                if rec.owner is conn:
                    rec.owner = None

    # --------------------------------------------------------------- frames
    def _on_message(self, conn: _Conn, parts: list[bytes]) -> None:
        try:
            self._handle_frame(conn, protocol.decode_frame(parts))
        except (protocol.ProtocolError, ValueError, KeyError, TypeError) as exc:
            # Only an authenticated peer gets here; still, a bad frame ends its
            # connection with a reason, not the reader thread with a traceback.
            log.error("malformed frame from %s: %s", conn.client_id, exc)
            assert conn.wire is not None
            conn.wire.close(1002, str(exc)[:120])

    def _handle_frame(self, conn: _Conn, frame: protocol.Frame) -> None:
        ftype = frame.type
        if ftype == FrameType.CALL:
            record, existed = self.executor.admit(frame.call_id, conn)
            if existed:  # a resend after a reconnect: just re-subscribe
                self._subscribe(conn, record, 0)
                return
            if self.draining.is_set():
                self.executor.fail(record, messages.PodStoppingError(
                    f"pod {self.name!r} is stopping (it got SIGTERM: a node drain, kubectl "
                    "delete or preemption) and takes no new calls; call again: the compute "
                    "starts again on the next call"))
                return
            try:
                buffers = protocol.claim_buffers(frame.buffers, shm.claim)
            except (OSError, ValueError) as exc:  # its shm file is gone: fail this call
                self.executor.fail(record, ConnectionError(
                    f"an argument sent through shared memory is gone ({exc}); call again"))
                return
            main = bool(frame.flags & protocol.FLAG_MAIN_THREAD)
            assert conn.wire is not None
            if not main and self.executor.reserve_inline():
                # Run it on this thread at once; if it takes long, a follower thread
                # reads on meanwhile (see wire.run_aside).
                conn.wire.run_aside(
                    lambda: self.executor.run_inline(record, frame.body, buffers))
                return
            self.executor.submit(record, frame.body, buffers, main_thread=main)
        elif ftype == FrameType.CANCEL:
            self.executor.cancel(frame.call_id)
        elif ftype == FrameType.ACK:
            self.executor.acknowledge([int(i) for i in frame.json()["ids"]])
        elif ftype == FrameType.COLLECT:
            for key, last_seq in frame.json()["calls"].items():
                lost = self.executor.lost_result(int(key))
                rec = self.executor.records.get(int(key))
                if lost is not None:  # dropped by a bound: the client is told which
                    conn.post(protocol.encode_frame(FrameType.RESULT, int(key), *lost))
                elif rec is None:
                    conn.post(protocol.encode_frame(FrameType.UNKNOWN, int(key),
                                                    protocol.dump_json({})))
                else:
                    self._subscribe(conn, rec, int(last_seq))
        else:
            log.error("a client does not send %s frames; closing", ftype.name)
            assert conn.wire is not None
            conn.wire.close(1002, f"unexpected {ftype.name}")

    def _subscribe(self, conn: _Conn, rec: CallRecord, last_seq: int) -> None:
        with rec.lock:
            rec.owner = conn
            rec.sent_seq = last_seq
            rec.result_sent = False
            done = rec.state == "done"
        if done:
            self._finished(rec)
        else:
            conn.mark(rec)

    # --------------------------------------------------------------- output
    def _notify(self, record: CallRecord) -> None:
        """A call printed something: its connection's writer sends it (coalesced)."""
        conn = record.owner
        if conn is not None and not conn.closed:
            conn.mark(record)

    def _finished(self, record: CallRecord) -> None:
        """A call finished (on its own thread): queue its result for its connection.

        Never writes to a socket: only the connection's writer does.
        """
        if self.draining.is_set():
            with self._drain_cv:
                self._drain_cv.notify_all()
        conn = record.owner
        if conn is None or conn.closed or record.result is None:
            return
        body, buffers = record.result
        names: list[str | None] = []
        if conn.use_shm and any(b.nbytes >= shm.SHM_THRESHOLD for b in buffers):
            names = conn.shm_writer.place(buffers)
        conn.post_result(record, protocol.encode_frame(FrameType.RESULT, record.call_id, body,
                                                       buffers, shm_names=names))
