"""One websocket connection to one pod, shared by every call to it.

Calls are multiplexed by id. The calling thread sends its own frame (no handoff); one
reader thread receives frames and hands each to the call it belongs to (see
:mod:`pod_runtime.protocol.wire` for why this beats an event loop here).

Where the pod is comes from an :class:`~kernel_bridge.Endpoint` (URL, token, headers,
TLS, a dial function), asked for again before every connect attempt.

The connection survives drops: it reconnects with backoff and asks the pod (COLLECT)
for the events and results of the calls still in flight. The pod kept them, so a
result that finished while the connection was down is collected, not lost; a call the
pod never received (same pod, no record of it) is sent again. When the pod is gone
(``status``, run on a worker thread, says the process died, or it came back with
another boot id) the calls in flight fail with :class:`PodDiedError`.

A pod that is silent is not taken for dead while ``status`` says its process runs: a pod
whose Python is held by C code that keeps the GIL (``sum(range(10**10))``) cannot answer
pings, read frames or accept connections until that code returns, and there is no
thread in pure Python that could answer for it. Dropping its connection after the ping
timeout would only start reconnects it cannot answer either (each failing after the
connect timeout, then every call in flight failing as unreachable). So the connection
is kept, pings go on, the calls wait for the pod, and :meth:`PodConnection.unanswered_for`
tells callers how long it has not answered (to say it is busy). Without ``status``, a
silent connection is dropped after the ping timeout as before. One lock guards
the connection's state and its calls, so that every call is sent, resumed after a
reconnect, or failed; none is left waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import ssl
import threading
import time
import uuid
from typing import Any

from pod_runtime import protocol
from pod_runtime.protocol import FrameType, ending, handshake, shm, wire

from .calls import CallHandle, EventSink
from .endpoint import Endpoint, EndpointProvider, as_provider, guarded_dial
from .errors import (
    AuthenticationError,
    BridgeError,
    CallLostError,
    KtError,
    PodDiedError,
    PodUnreachableError,
)
from .logs import about, log
from .status import StatusProbe, died_error, read_probe

__all__ = ["PodConnection"]

class PodConnection:
    """A multiplexed, reconnecting connection to a pod.

    Connecting happens in the constructor; it raises when the pod cannot be reached or
    refuses the token.

    Args:
        endpoint: Where the pod is: an :class:`~kernel_bridge.Endpoint`, a function
            returning one (called again before every reconnect attempt, so a pod that
            moved is found; when it raises, the pod counts as unreachable), or the pod's
            base URL (``ws://host:port``) with ``token``.
        token: The pod's token, with a URL (an Endpoint carries its own).
        name: The pod's name, for messages.
        status: Tells whether the pod process is alive when the connection drops (returns
            a :class:`~kernel_bridge.PodState`, or an ``(alive, exit_status)`` tuple).
            It runs on a worker thread, beside the reconnect attempts, never on the
            thread that reads the socket: in a cluster it is an API round trip.
        connect_timeout: Seconds for a connection attempt (handshake and WELCOME).
        reconnect_timeout: Seconds a dropped connection retries before calls fail.
        use_shm: Offer the shared-memory fast path (used only if the pod can see it).
        ping_interval: Keepalive ping period in seconds (None: no pings).
        ping_timeout: Seconds of silence from the pod before the connection counts as lost.
        ack_delay: Acknowledgements of results are batched over this many seconds.
        max_pending_events: Events (output chunks, displays) one call keeps for a reader
            that has not read them yet, e.g. a ``submit()`` nobody awaits; beyond it the
            oldest are dropped (one marker event and one warning say so). Default 10,000.
    """

    def __init__(
        self,
        endpoint: Endpoint | EndpointProvider | str,
        token: str | None = None,
        *,
        name: str = "pod",
        status: StatusProbe | None = None,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 30.0,
        use_shm: bool = True,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 60.0,
        ack_delay: float = 0.05,
        max_pending_events: int = 10_000,
    ) -> None:
        self._endpoint = as_provider(endpoint, token)
        self.url = ""  # the bridge URL of the last endpoint connected to (for messages)
        self.name = name
        self._status = status
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.use_shm = use_shm and shm.shm_available()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.ack_delay = ack_delay
        self.max_pending_events = max_pending_events
        self.client_id = uuid.uuid4().hex
        self.welcome: dict[str, Any] = {}
        self.shm_active = False
        self.known: set[str] = set()  # function/class ids the pod has cached
        self.dead: BridgeError | None = None
        # Call ids: a random prefix per connection (pods are shared by clients) and a
        # counter; os.urandom per call was a syscall on the hot path.
        self._ids = itertools.count((secrets.randbits(31) << 32) + 1)
        # The state machine, all under _lock: connected (_wire set), reconnecting (no
        # wire; one owner is connecting), down (neither: the next call reconnects),
        # dead, closed. A call registers in _calls under the same lock as it reads the
        # state, and every transition that leaves a state takes the calls registered in
        # it (resumes them on the new wire, or fails them), so no call falls between.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._calls: dict[int, CallHandle] = {}
        self._wire: wire.WireConnection | None = None
        self._boot: str | None = None  # boot id of the pod behind _wire
        self._reconnecting = False  # an owner is connecting (only while _wire is None)
        self._closing = False
        self._probing = False
        self._said: tuple[str, float | None] | None = None  # why the pod said it stopped
        self._swept = False  # shared memory of dead processes swept (once, on first use)
        self._writer = shm.ShmWriter()
        self._acks: list[int] = []
        self._acks_cv = threading.Condition()
        self._connect()
        threading.Thread(target=self._ack_loop, name=f"kt-ack-{name}", daemon=True).start()

    def __repr__(self) -> str:
        state = "dead" if self.dead else ("connected" if self._wire else "reconnecting")
        if self._closing:
            state = "closed"
        return f"<PodConnection {self.name!r} {self.url} {state}>"

    # ------------------------------------------------------------ public API
    @property
    def connected(self) -> bool:
        """Whether a websocket is open right now."""
        ws = self._wire
        return ws is not None and not ws.closed

    def unanswered_for(self) -> float:
        """Seconds the pod has not answered a ping (0.0: it answers, or no ping waits).

        With :meth:`ping` before, a pod that does not answer within a few seconds is
        busy in code that holds the GIL (or unreachable; the keepalive tells the two
        apart with the status probe).
        """
        ws = self._wire
        return 0.0 if ws is None else ws.unanswered_for()

    def ping(self) -> None:
        """Ping the pod now (unless a ping waits already); see :meth:`unanswered_for`."""
        ws = self._wire
        if ws is not None:
            ws.ping()

    def in_flight(self) -> list[CallHandle]:
        """The calls of this connection that have not been answered yet."""
        with self._lock:
            return list(self._calls.values())

    def call(
        self,
        body: bytes,
        buffers: list[memoryview],
        *,
        flags: int = 0,
        label: str = "call",
        sink: EventSink | None = None,
    ) -> CallHandle:
        """Start a call (thread-safe, returns once it is sent); the body is a pickled request.

        Raises:
            BridgeError: The connection is closed, or the pod is dead.
        """
        handle = CallHandle(self, next(self._ids), (body, buffers, flags), label=label,
                            sink=sink)
        self._submit(handle)
        return handle

    def attach(self, call_id: int, *, label: str = "call", sink: EventSink | None = None,
               ) -> CallHandle:
        """Follow a call started elsewhere (another kernel): replay its events and result."""
        handle = CallHandle(self, call_id, (b"", [], 0), label=label, sink=sink)
        handle.request = None  # never resend a call we did not make
        self._submit(handle)
        return handle

    def cancel(self, call_id: int) -> None:
        """Interrupt a call on the pod."""
        self._control(FrameType.CANCEL, call_id, {})

    def close(self, error: BridgeError | None = None) -> None:
        """Close the connection; calls in flight keep running on the pod.

        Args:
            error: What the calls still waiting here fail with (default: a
                :class:`BridgeError` saying the connection was closed and they run on),
                e.g. a :class:`PodDiedError` when the pod is being torn down.
        """
        with self._lock:
            if self._closing:
                return
        self._flush_acks()  # while the wire is still ours
        with self._lock:
            if self._closing:
                return
            self._closing = True
            ws, self._wire, self._boot = self._wire, None, None
            calls, self._calls = self._calls, {}
            self._changed.notify_all()  # a reconnect loop waiting out its backoff stops
        with self._acks_cv:
            self._acks_cv.notify()
        if ws is not None:
            ws.close()
        self._writer.cleanup()
        # Whoever still waits would wait forever: the calls go on on the pod, and
        # Compute.connection() / conn.attach(call_id) on a new connection can follow them.
        self._deliver_error(calls, error or BridgeError(
            f"the connection to pod {self.name!r} was closed while this call was in flight; "
            "it keeps running on the pod", pod=self.name))

    # -------------------------------------------------------------- sending
    def _submit(self, handle: CallHandle) -> None:
        """Register a call and send it, or leave it to the reconnect that will resume it."""
        with self._lock:
            if self.dead is not None:
                raise self.dead
            if self._closing:
                raise BridgeError(f"the connection to pod {self.name!r} is closed; open a "
                                  "new one (Compute.connection())", pod=self.name)
            if handle.request is None:  # attach: it lives (or not) on this pod
                handle.sent_to = self._boot or self.welcome.get("boot_id")
            self._calls[handle.call_id] = handle
            ws, boot = self._wire, self._boot
            owner = ws is None and not self._reconnecting
            if owner:
                self._reconnecting = True
        if ws is not None:
            self._send_call(ws, boot, handle)
        elif owner:  # down since a drop long ago: try once more, here
            self._reconnect(once=True)
        # else: the reconnect in progress resumes it (COLLECT -> UNKNOWN -> resend)

    def _send_call(self, ws: wire.WireConnection, boot: str | None, handle: CallHandle) -> None:
        request = handle.request  # read once: the reader clears it when the result comes
        if request is None:  # a call we follow: ask for what it has done since last_seq
            self._control(FrameType.COLLECT, 0, {"calls": {str(handle.call_id):
                                                           handle.last_seq}}, ws)
            return
        body, buffers, flags = request
        names: list[str | None] = []
        if self.shm_active and any(b.nbytes >= shm.SHM_THRESHOLD for b in buffers):
            names = self._writer.place(buffers)
        frame = protocol.encode_frame(FrameType.CALL, handle.call_id, body, buffers,
                                      shm_names=names, flags=flags)
        try:
            ws.send(frame)
        except wire.ConnectionClosedError:
            return  # the reconnect resumes it
        handle.sent_to = boot

    def _control(self, ftype: FrameType, call_id: int, body: dict[str, Any],
                 ws: wire.WireConnection | None = None) -> None:
        ws = ws or self._wire
        if ws is not None:
            with contextlib.suppress(wire.ConnectionClosedError):
                ws.send(protocol.encode_frame(ftype, call_id, protocol.dump_json(body)))

    # ---------------------------------------------------------- connecting
    def _connect(self) -> None:
        """One connection attempt: open a websocket, then adopt it (resuming calls)."""
        ws, welcome, shm_active = self._open()
        self._adopt(ws, welcome, shm_active)

    def _open(self) -> tuple[wire.WireConnection, dict[str, Any], bool]:
        """Handshake and WELCOME: a websocket to a pod that proved it holds the token."""
        endpoint = self._resolve()
        url = self.url = endpoint.url.rstrip("/") + protocol.BRIDGE_PATH
        nonce = secrets.token_hex(16)
        headers = endpoint.request_headers()
        headers[protocol.CLIENT_ID_HEADER] = self.client_id
        headers[protocol.NONCE_HEADER] = nonce
        probe = shm.probe_create() if self.use_shm else None
        if probe is not None:
            headers[protocol.SHM_PROBE_HEADER] = probe[0]
        greeted = threading.Event()
        verified = threading.Event()
        state: dict[str, Any] = {"ok": False}

        def on_message(parts: list[bytes]) -> None:
            if not greeted.is_set():
                try:
                    frame = protocol.decode_frame(parts)
                    state["welcome"] = frame.json() if frame.type == FrameType.WELCOME else None
                except (protocol.ProtocolError, ValueError):
                    state["welcome"] = None
                greeted.set()
                return
            # Nothing from a peer is acted on before it has proved it holds the token.
            if not verified.wait(self.connect_timeout) or not state["ok"]:
                return
            self._on_message(parts)

        holder: list[wire.WireConnection] = []

        def on_close(exc: BaseException | None) -> None:
            if holder:
                self._on_close(holder[0], exc)

        try:
            ws = handshake.client_handshake(
                url, headers, timeout=self.connect_timeout,
                ssl_context=endpoint.ssl_context, dial=guarded_dial(endpoint),
                on_message=on_message, on_close=on_close,
                ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
                on_silence=self._on_silence, name=self.name,
            )
        except handshake.HandshakeRejected as exc:
            if exc.status == 401:
                raise AuthenticationError(
                    f"pod {self.name!r} refused our token (HTTP 401): this client's record "
                    "of the pod is stale; tear the compute down and start it again",
                    pod=self.name) from None
            raise PodUnreachableError(f"pod {self.name!r} at {url} answered {exc}",
                                      pod=self.name) from None
        except ssl.SSLCertVerificationError as exc:
            raise PodUnreachableError(
                f"pod {self.name!r} at {url}: its TLS certificate failed verification "
                f"({exc.verify_message}); give the Endpoint an ssl_context that trusts the "
                "certificate's authority", pod=self.name) from None
        except (OSError, TimeoutError) as exc:
            raise PodUnreachableError(f"cannot reach pod {self.name!r} at {url}: {exc}",
                                      pod=self.name) from None
        finally:
            if probe is not None:
                (shm.SHM_DIR / probe[0]).unlink(missing_ok=True)
        holder.append(ws)
        ws.start()
        if not greeted.wait(self.connect_timeout):
            ws.abort()
            raise PodUnreachableError(f"pod {self.name!r} did not greet within "
                                      f"{self.connect_timeout}s", pod=self.name)
        welcome = state.get("welcome")
        proof = protocol.token_proof(endpoint.token, nonce)
        if not welcome or not protocol.check_token(proof, welcome.get("proof")):
            verified.set()
            ws.abort()
            raise AuthenticationError(
                f"the server at {url} could not prove it holds pod {self.name!r}'s "
                "token; refusing to exchange pickles with it", pod=self.name)
        state["ok"] = True
        verified.set()
        return ws, welcome, probe is not None and welcome.get("shm") == probe[1]

    def _resolve(self) -> Endpoint:
        """Ask the provider where the pod is now."""
        try:
            endpoint = self._endpoint()
        except Exception as exc:  # noqa: BLE001 - whatever the caller's provider raises
            what = str(exc) if isinstance(exc, KtError) else f"{type(exc).__name__}: {exc}"
            raise PodUnreachableError(f"cannot find where pod {self.name!r} is: {what}",
                                      pod=self.name) from None
        if not isinstance(endpoint, Endpoint):
            raise PodUnreachableError(
                f"the endpoint provider of pod {self.name!r} returned {type(endpoint).__name__}"
                ", not an Endpoint", pod=self.name)
        return endpoint

    def _adopt(self, ws: wire.WireConnection, welcome: dict[str, Any], shm_active: bool,
               ) -> None:
        """Make ``ws`` the connection and resume every call registered meanwhile."""
        boot = welcome.get("boot_id")
        resend: list[CallHandle] = []
        lost: list[CallHandle] = []
        with self._lock:
            if self._closing or self.dead is not None:
                ws.abort()  # closed or dead while we connected: nobody will use it
                return
            previous = self.welcome.get("boot_id")
            self.welcome = welcome
            self.shm_active = shm_active
            self._wire, self._boot = ws, boot
            self._reconnecting = False
            restarted = previous is not None and previous != boot
            if restarted:
                # Calls the old pod got are lost with it; calls it never got go to this one.
                for cid, handle in list(self._calls.items()):
                    if handle.sent_to is not None or handle.request is None:
                        lost.append(self._calls.pop(cid))
                    else:
                        resend.append(handle)
            else:
                resend = list(self._calls.values())
        if shm_active and not self._swept:
            self._swept = True
            _sweep_dead_owners()
        if restarted:
            self.known.clear()
            said, self._said = self._said, None
            self._deliver_error(lost, PodDiedError(
                f"pod {self.name!r} restarted while this call was in flight; its state is "
                "lost", pod=self.name, exit_status=None) if said is None else
                died_error(self.name, _Gone(), said))
        if ws.closed:  # it dropped before we held it: the reader's on_close was ignored
            self._on_close(ws, None)
            return
        if restarted:
            for handle in resend:
                self._send_call(ws, boot, handle)
        elif resend:
            calls = {str(h.call_id): h.last_seq for h in resend}
            self._control(FrameType.COLLECT, 0, {"calls": calls}, ws)
        if self._acks:
            with self._acks_cv:
                self._acks_cv.notify()  # acknowledgements that waited for this connection

    def _on_close(self, ws: wire.WireConnection, exc: BaseException | None) -> None:
        closed = ws.protocol.close_rcvd
        if closed is not None and closed.code == 1001:  # the pod said why it stops
            self._said = ending.parse_close_reason(closed.reason) or self._said
        with self._lock:
            if self._wire is not ws:
                return
            self._wire, self._boot = None, None
            if self._closing or self.dead is not None:
                return
            self._reconnecting = True  # we own the reconnect (none runs while _wire is set)
        self._writer.cleanup()
        log.info("connection to pod %s dropped (%s); reconnecting", self.name, exc)
        threading.Thread(target=self._reconnect, name=f"kt-reconnect-{self.name}",
                         daemon=True).start()

    def _reconnect(self, *, once: bool = False) -> None:
        """Reconnect (the caller owns ``_reconnecting``) until connected, or fail the calls.

        With ``once``, one attempt (a call on a connection that gave up long ago);
        otherwise attempts with backoff for ``reconnect_timeout`` seconds.
        """
        down_since = time.monotonic()
        delay = 0.05
        if not once:
            self._start_probe()  # is it gone? asked beside the first attempt, not before it
        while True:
            try:
                self._connect()
                return  # adopted: the calls are resumed (or it was closed meanwhile)
            except AuthenticationError as exc:
                self._fail_all(exc)
                return
            except PodUnreachableError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - a bug must not leave calls hanging
                log.exception("reconnecting to pod %s failed", self.name)
                error = PodUnreachableError(f"reconnecting to pod {self.name!r} failed: "
                                            f"{type(exc).__name__}: {exc}", pod=self.name)
            if once:
                if not self._check_dead():
                    self._give_up(error)
                return
            self._start_probe()
            if time.monotonic() - down_since > self.reconnect_timeout:
                state = None if self._status is None else read_probe(self._status, self.name)
                runs = (" Its process runs: it may be busy in code that does not see "
                        "interrupts (a long C call holding the GIL), which answers nothing "
                        "until it returns" if state is not None and state.alive else "")
                self._give_up(PodUnreachableError(
                    f"lost the connection to pod {self.name!r} and could not reconnect "
                    f"within {self.reconnect_timeout}s ({error}).{runs}", pod=self.name))
                return
            with self._changed:
                self._changed.wait_for(lambda: self._closing or self.dead is not None, delay)
                if self._closing or self.dead is not None:
                    self._reconnecting = False
                    return
            delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------ receiving
    def _on_message(self, parts: list[bytes]) -> None:
        try:
            frame = protocol.decode_frame(parts)
        except (protocol.ProtocolError, ValueError) as exc:
            log.error("pod %s sent a malformed frame: %s", self.name, exc)
            return
        with self._lock:
            handle = self._calls.get(frame.call_id)
            if frame.type == FrameType.RESULT and handle is not None:
                del self._calls[frame.call_id]
        if frame.type == FrameType.EVENTS:
            if handle is not None:
                try:
                    events = [e for e in frame.json()["events"] if e["seq"] > handle.last_seq]
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("pod %s sent malformed events: %s", self.name, exc,
                              extra=about(handle))
                    return
                if events:
                    handle._deliver("events", events)
        elif frame.type == FrameType.RESULT:
            try:
                frame.buffers = protocol.claim_buffers(frame.buffers, shm.claim)
            except (OSError, ValueError) as exc:
                if handle is not None:
                    handle._deliver("error", CallLostError(
                        f"the result of {handle.label} was sent through shared memory that "
                        f"is gone ({exc}); call again", pod=self.name))
                return
            self._ack(frame.call_id)
            if handle is not None:
                handle._deliver("result", frame)
            else:  # nobody waits for it (a duplicate): do not keep its memory
                protocol.release_buffers(frame.buffers)
        elif frame.type == FrameType.UNKNOWN and handle is not None:
            self._on_unknown(handle)

    def _on_unknown(self, handle: CallHandle) -> None:
        if handle.request is None:
            with self._lock:
                self._calls.pop(handle.call_id, None)
            handle._deliver("error", CallLostError(
                f"pod {self.name!r} has no call {handle.call_id}: it finished and was "
                "collected already, expired, or the pod restarted", pod=self.name))
            return
        with self._lock:
            ws, boot = self._wire, self._boot
        if ws is not None:  # the pod never got it: send it again
            self._send_call(ws, boot, handle)

    # ----------------------------------------------------------------- acks
    def _ack(self, call_id: int) -> None:
        with self._acks_cv:
            self._acks.append(call_id)
            if len(self._acks) == 1 or len(self._acks) >= 256:
                self._acks_cv.notify()

    def _ack_loop(self) -> None:
        while not self._closing:
            with self._acks_cv:
                while not self._acks and not self._closing:
                    self._acks_cv.wait()
                if len(self._acks) < 256:
                    self._acks_cv.wait(self.ack_delay)
            self._flush_acks()

    def _flush_acks(self) -> None:
        with self._acks_cv:
            ids, self._acks = self._acks, []
        if not ids:
            return
        ws = self._wire
        try:
            if ws is None:
                raise wire.ConnectionClosedError("not connected")
            ws.send(protocol.encode_frame(FrameType.ACK, 0, protocol.dump_json({"ids": ids})))
        except wire.ConnectionClosedError:
            with self._acks_cv:  # sent after the reconnect, or the pod holds them a day
                self._acks[:0] = ids

    # -------------------------------------------------------------- failure
    def _on_silence(self, silent: float) -> bool:
        """Keepalive: the pod has said nothing for ``silent`` s; keep the connection?

        Kept while the status probe says the process runs (busy, not gone); a probe that
        says it ended fails the calls at once, and no probe (or one that fails) drops
        the connection as a silent peer, which the reconnect then deals with.
        """
        if self._status is None or self._closing:
            return False
        state = read_probe(self._status, self.name)
        if state is None:
            return False
        if not state.alive:
            self._fail_all(died_error(self.name, state, self._said))
            return False
        log.info("pod %s has not answered for %.0fs but runs: busy in code that holds "
                 "the GIL? keeping the connection", self.name, silent)
        return True

    def _check_dead(self) -> bool:
        """Run the status probe here (never on the reader thread); fail all if it died."""
        if self._status is None:
            return False
        state = read_probe(self._status, self.name)
        if state is None or state.alive:
            return False
        self._fail_all(died_error(self.name, state, self._said))
        return True

    def _start_probe(self) -> None:
        """Run the status probe on a worker thread, one at a time."""
        with self._lock:
            if self._status is None or self._probing or self.dead is not None:
                return
            self._probing = True

        def probe() -> None:
            try:
                if not self._closing:
                    self._check_dead()
            finally:
                with self._lock:
                    self._probing = False

        threading.Thread(target=probe, name=f"kt-probe-{self.name}", daemon=True).start()

    def _give_up(self, exc: BridgeError) -> None:
        """The reconnect failed: down until the next call; fail the calls waiting."""
        with self._lock:
            self._reconnecting = False
            calls, self._calls = self._calls, {}
        self._deliver_error(calls, exc)

    def _fail_all(self, exc: BridgeError) -> None:
        """The pod is gone (or refuses us): fail every call, now and later."""
        with self._lock:
            if self.dead is not None or self._closing:
                return
            self.dead = exc
            self._reconnecting = False
            ws, self._wire, self._boot = self._wire, None, None
            calls, self._calls = self._calls, {}
            self._changed.notify_all()
        if ws is not None:
            ws.abort()
        self._deliver_error(calls, exc)

    @staticmethod
    def _deliver_error(calls: dict[int, CallHandle] | list[CallHandle], exc: BridgeError,
                       ) -> None:
        for handle in (calls.values() if isinstance(calls, dict) else calls):
            handle._deliver("error", exc)


class _Gone:
    """The state of a pod that was replaced: gone, nothing else known."""

    alive = False
    exit_status = None
    reason = None
    message = ""


def _sweep_dead_owners() -> None:
    """Remove shared-memory files left by processes that died (SIGKILL leaves them).

    Called when a connection starts using shared memory.
    """
    try:
        shm.sweep_dead_owners()
    except OSError as exc:  # a sweep that fails must not fail the connection
        log.debug("sweeping shared memory of dead processes failed: %s", exc)
