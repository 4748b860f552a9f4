"""The certificate chain a live TLS server sends, for `trustfleet pin --connect`.

Verification is off on purpose: this only collects what the server sends,
so that the operator can see and pin it.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from trustfleet_pi.tls import is_ip
from trustfleet_server import x509util
from trustfleet_server.errors import UsageError


class TLSFetchError(UsageError):
    """A TLS server could not be reached or closed before sending its chain (exit code 2)."""


def parse_address(text: str) -> tuple[str, int]:
    """Split "HOST:PORT", "[v6]:PORT" or "HOST" (port 443)."""
    host, port = text.strip(), "443"
    if host.startswith("["):
        close = host.find("]")
        if close < 0 or (host[close + 1 :] and not host[close + 1 :].startswith(":")):
            raise UsageError(f"--connect {text!r}: expected HOST:PORT or [IPv6]:PORT")
        host, port = host[1:close], host[close + 2 :] or "443"
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--connect {text!r}: expected HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fetch_chain(
    host: str, port: int, servername: str | None, timeout: float
) -> tuple[list[Any], str | None, str | None]:
    """Handshake with a TLS server and return (the certificates it sent, in its order;
    the SNI name sent or None; the TLS version).

    Verification is OFF: this only collects what the server sends, so that the
    operator can see and pin it. Nothing about the chain is validated.

    Raises:
        TLSFetchError: unreachable, refused, timed out, or the handshake failed
            (including a server that closes the connection during it).
    """
    where = format_address(host, port)
    sni = servername or (None if is_ip(host) else host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # to see the chain only; see the docstring
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            ders = _unverified_chain(tls)
            version = tls.version()
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError):
        raise TLSFetchError(
            f"{where}: the server closed the connection during the TLS handshake "
            "(not a TLS server on that port, or it refused the SNI name or "
            "our TLS versions)"
        ) from None
    except ssl.SSLError as exc:
        raise TLSFetchError(f"{where}: TLS handshake failed: {exc.reason or exc}") from None
    except socket.gaierror as exc:
        raise TLSFetchError(f"{where}: cannot resolve {host}: {exc.strerror or exc}") from None
    except TimeoutError:
        raise TLSFetchError(f"{where}: timed out after {timeout:g}s") from None
    except ConnectionRefusedError:
        raise TLSFetchError(f"{where}: connection refused") from None
    except OSError as exc:
        raise TLSFetchError(f"{where}: {exc.strerror or exc}") from None
    if not ders:
        raise TLSFetchError(f"{where}: the server sent no certificate")
    certs = []
    for index, der in enumerate(ders, start=1):
        parsed, _ = x509util.parse_certificates(der, f"{where}: certificate #{index}")
        certs.extend(parsed)
    return certs, sni, version


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The certificates the peer sent, as DER, leaf first, unverified."""
    public = getattr(tls, "get_unverified_chain", None)  # public from CPython 3.13
    chain = public() if public is not None else tls._sslobj.get_unverified_chain()  # 3.11, 3.12
    ders = [
        c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain or ()
    ]
    if not ders:
        leaf = tls.getpeercert(binary_form=True)
        ders = [leaf] if leaf else []
    return ders
