"""A TCP proxy for tests that need a connection to drop: real sockets, real failures."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forward 127.0.0.1:<port> to a target; :meth:`cut` drops every connection.

    While cut, new connections are accepted and closed at once (like a pod behind a
    restarting port-forward); :meth:`restore` lets them through again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self._cut_after: int | None = None  # bytes from the target, then cut (see cut_after)
        self.was_cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._socks += [client, upstream]
            for a, b, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, down), daemon=True).start()

    def cut_after(self, nbytes: int) -> None:
        """Cut every connection (as :meth:`cut`) once ``nbytes`` more came from the target.

        For a drop in the middle of a large result: :attr:`was_cut` is set then.
        """
        self.was_cut.clear()
        self._cut_after = nbytes

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool = False) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16 if self._cut_after is not None else 1 << 20):
                if down and self._cut_after is not None:
                    self._cut_after -= len(data)
                    if self._cut_after <= 0:
                        self._cut_after = None
                        self.cut()
                        self.was_cut.set()
                        return
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        self._open.clear()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """Let connections through again."""
        self._open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()
