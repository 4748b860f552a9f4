"""A small TLS server on loopback, for demos and tests only.

`LoopbackTLSServer` accepts connections on 127.0.0.1 (port 0: any free
port, see `.port`) in one thread, wraps each with `ssl` and answers it; as
a context manager it starts on entry and on exit stops the thread (a
bounded join) and closes the listening socket. It serves one connection
at a time and is no production server: `trustfleet demo --offline` and the
tests run it against the agent and `trustfleet pin --connect`.

Per connection, one of:
- the default: complete the handshake, then wait until the client closes;
- `answer(tls_socket)`: complete the handshake, then run `answer`
  (`http_answer()` reads one HTTP request and sends a fixed reply);
- `on_connection(tcp_socket)`: raw mode, no TLS at all: `on_connection`
  gets the accepted TCP socket, which is closed when it returns
  (`close_during_handshake` reads the ClientHello and hangs up; a function
  that does nothing closes before the handshake).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

PemSource = str | Path | bytes  # a PEM file, or PEM bytes


def server_context(cert_chain: PemSource, key: PemSource | None = None) -> ssl.SSLContext:
    """A server-side SSLContext from a certificate chain (leaf first) and its key.

    Either may be a path or PEM bytes; without `key` the chain's PEM must
    hold the key too.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="tlsserver-") as tmp:
        def as_file(source: PemSource, name: str) -> Path:
            if isinstance(source, bytes):
                path = Path(tmp) / name
                path.write_bytes(source)
                return path
            return Path(source)

        context.load_cert_chain(as_file(cert_chain, "chain.pem"),
                                None if key is None else as_file(key, "key.pem"))
    return context


def wait_for_close(tls: ssl.SSLSocket) -> None:
    """The default answer: nothing; return when the client sends a byte or closes."""
    tls.recv(1)


def http_answer(body: bytes = b"hello") -> Callable[[ssl.SSLSocket], None]:
    """An answer that reads one HTTP request (to its blank line) and replies 200 with `body`."""
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def answer(tls: ssl.SSLSocket) -> None:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 4096:
            chunk = tls.recv(4096)
            if not chunk:
                return
            data += chunk
        tls.sendall(reply)

    return answer


def close_during_handshake(conn: socket.socket) -> None:
    """Raw mode: read the client's ClientHello and close without answering."""
    conn.recv(4096)


class LoopbackTLSServer:
    """A TLS server thread on `host`:`port` (default 127.0.0.1, any free port).

    Give the certificate as `cert_chain` (and `key`), or a ready server
    `context` (e.g. one with an SNI callback); neither is needed in raw mode
    (`on_connection`). Errors on a connection (the client refusing the
    chain, hanging up, a timeout) end that connection only.
    """

    def __init__(self, cert_chain: PemSource | None = None, key: PemSource | None = None, *,
                 context: ssl.SSLContext | None = None, host: str = "127.0.0.1", port: int = 0,
                 answer: Callable[[ssl.SSLSocket], object] | None = None,
                 on_connection: Callable[[socket.socket], object] | None = None,
                 timeout: float = 5.0):
        if on_connection is None and (context is None) == (cert_chain is None):
            raise ValueError("give either cert_chain (and key) or context")
        if on_connection is not None and answer is not None:
            raise ValueError("answer needs TLS; on_connection is the raw mode without it")
        self.context = context if cert_chain is None else server_context(cert_chain, key)
        self.answer = answer or wait_for_close
        self.on_connection = on_connection
        self.timeout = timeout
        self.handshakes = 0
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"tls-{self.port}", daemon=True)

    def start(self) -> LoopbackTLSServer:
        self._thread.start()
        return self

    def stop(self, join_timeout: float = 10.0) -> None:
        """Stop accepting, wait (bounded) for the thread, close the listener.

        Raises RuntimeError if the thread is still running after `join_timeout`.
        """
        self._stopping.set()
        try:
            if self._thread.is_alive():
                self._thread.join(join_timeout)
        finally:
            self._listener.close()
        if self._thread.is_alive():
            raise RuntimeError(f"the TLS server thread on port {self.port} did not stop")

    def __enter__(self) -> LoopbackTLSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._listener.fileno() == -1:
                    return  # closed
                self._stopping.wait(0.05)  # e.g. a connection aborted before accept
            with conn, contextlib.suppress(OSError):  # ssl.SSLError is an OSError
                conn.settimeout(self.timeout)
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        if self.on_connection is not None:
            self.on_connection(conn)
            return
        with self.context.wrap_socket(conn, server_side=True) as tls:
            self.handshakes += 1
            self.answer(tls)
