"""A proxy for tests of endpoints and drops: real sockets, optionally terminating TLS.

Like :mod:`tcp_proxy` (cut and restore), and also: TLS in front of a plain pod (a
certificate made in the test), the first bytes each client sent (its upgrade request,
decrypted), and counters a test can wait on instead of sleeping.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path


def make_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (an IP address): (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kt test pod")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Proxy:
    """Forward 127.0.0.1:<port> to ``target_port``; with ``tls``, clients speak TLS to it.

    While :meth:`cut`, new connections are accepted and closed at once (a pod behind a
    restarting port-forward); :meth:`restore` lets them through again.
    """

    def __init__(self, target_port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.target_port = target_port
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open = True
        self._cv = threading.Condition()
        self._socks: list[socket.socket] = []
        self.accepted = 0  # connections let through
        self.refused = 0  # connections closed at once while cut
        self.live = 0  # connections let through and still open
        self.heads: list[bytes] = []  # the first bytes each client sent
        self.errors: list[BaseException] = []  # TLS handshakes that failed
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def wait(self, predicate: object, timeout: float) -> bool:
        """Wait until ``predicate()`` (called under the proxy's lock) is true."""
        with self._cv:
            return self._cv.wait_for(predicate, timeout)  # type: ignore[arg-type]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._cv:
                if not self._open:
                    self.refused += 1
                    self._cv.notify_all()
                    client.close()
                    continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.tls is not None:
            try:
                client = self.tls.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                client.close()
                with self._cv:
                    self.errors.append(exc)
                    self._cv.notify_all()
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        with self._cv:
            if not self._open:  # cut while this one was being set up
                client.close()
                upstream.close()
                return
            self._socks += [client, upstream]
            self.accepted += 1
            self.live += 1
            self._cv.notify_all()
        done = threading.Event()
        threading.Thread(target=self._pipe, args=(upstream, client, done), daemon=True).start()
        self._pipe(client, upstream, done, record=True)

    def _pipe(self, src: socket.socket, dst: socket.socket, done: threading.Event,
              record: bool = False) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 20):
                if record:
                    record = False
                    with self._cv:
                        self.heads.append(data)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with self._cv:
            if done.is_set():  # the second direction ended: the connection is gone
                self.live -= 1
                self._cv.notify_all()
            done.set()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones."""
        with self._cv:
            self._open = False
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        """Let connections through again."""
        with self._cv:
            self._open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
