"""Serving the console: the address rule, TLS, and uvicorn in a thread of its own.

`--http HOST:PORT` (or a bare PORT, on 127.0.0.1) binds here, in the caller's thread, so
a taken port or a bad address is one clear error before serve connects to anything.
A loopback address serves plain HTTP and lets anyone on the machine read; any other
address needs TLS (--http-cert/--http-key) or --http-public, and then every request
needs an operator token (console.app). uvicorn runs the app on the bound socket in a
daemon thread with its own event loop; `stop()` ends it within a second, open event
streams included.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

from trustfleet_server.console import ConsoleSettings
from trustfleet_server.errors import UsageError

log = logging.getLogger("trustfleet.console")

START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def url(self, port: int, tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{port}/"


def parse_bind(text: str) -> Bind:
    """'127.0.0.1:8080', '[::1]:8080', 'localhost:8080', '0.0.0.0:8443' or '8080' (loopback).
    Port 0 takes a free port. Raises: UsageError."""
    value = text.strip()
    host, port = "127.0.0.1", value
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            raise UsageError(f"--http {text!r}: expected [IPv6]:PORT, e.g. [::1]:8080")
        host, port = value[1:end], value[end + 2:]
    elif ":" in value:
        host, _, port = value.rpartition(":")
        if ":" in host:
            raise UsageError(f"--http {text!r}: put an IPv6 address in brackets, e.g. [::1]:8080")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--http {text!r}: the port must be a number from 0 to 65535")
    if not host:
        raise UsageError(f"--http {text!r}: give the address to listen on, e.g. 127.0.0.1:8080")
    return Bind(host, int(port))


def check_exposure(bind: Bind, tls: bool, public: bool, tokens: dict) -> None:
    """A console off loopback needs TLS or an explicit --http-public, and operator tokens (there,
    reading needs one too). Raises: UsageError."""
    if bind.loopback:
        return
    if not (tls or public):
        raise UsageError(f"--http {bind.host}:{bind.port} is not a loopback address: serve it over TLS "
                         f"(--http-cert and --http-key) or say --http-public to serve plain HTTP")
    if not tokens:
        raise UsageError(f"--http {bind.host}:{bind.port} is not a loopback address: there every request "
                         f"needs an operator token; give --token-file")


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server context from PEM files, or None for plain HTTP. Raises: UsageError."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise UsageError("--http-cert and --http-key go together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise UsageError(f"--http-cert/--http-key: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"--http-cert {cert} / --http-key {key}: cannot load: "
                         f"{getattr(exc, 'reason', None) or exc}") from None
    return ctx


class ConsoleServer:
    """The console on one bound socket, served by uvicorn in a daemon thread.

    Raises (constructor): UsageError when the address cannot be bound.
    """

    def __init__(self, settings: ConsoleSettings, bind: Bind, cert: str | None = None,
                 key: str | None = None) -> None:
        tls = tls_context(cert, key)  # checked here: a bad pair is one clear error before binding
        self.settings, self.bind, self.cert, self.key = settings, bind, cert, key
        sock = socket.socket(bind.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind.host, bind.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise UsageError(f"--http {bind.host}:{bind.port}: cannot listen: "
                             f"{exc.strerror or exc}") from None
        self.port = sock.getsockname()[1]
        self.url = bind.url(self.port, tls is not None)
        self._sock = sock
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> ConsoleServer:
        """Start serving; returns once uvicorn accepts connections. Raises: RuntimeError."""
        import uvicorn

        from trustfleet_server.console.app import create_app

        config = uvicorn.Config(create_app(self.settings), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=1, server_header=False,
                                ssl_certfile=self.cert, ssl_keyfile=self.key)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="tf-console", daemon=True)
        self._thread.start()
        ready = threading.Event()

        def wait() -> None:
            while not self._server.started and self._thread.is_alive():
                ready.wait(0.02)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        waiter.join(START_TIMEOUT)
        if not self._server.started:
            raise RuntimeError(f"the console did not start within {START_TIMEOUT:.0f} s")
        log.info("fleet console on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving (open event streams are closed); safe to call twice."""
        if self._server is not None:
            self._server.config.app.state.console.close()  # ends the event streams at once
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
