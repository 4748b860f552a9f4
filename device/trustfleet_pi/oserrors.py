"""OSErrors in words for the agent's users: the path they gave, then a plain reason.

Python's wording ("[Errno 21] Is a directory: 'x'") is not for operators;
an error whose text was already written for the user (write_atomic's "is a
folder; give a file name") keeps that text.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl

_PLAIN = {
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "is not a folder (a part of the path is a file)",
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "the connection was reset by the other side",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}


# OpenSSL's reason codes that mean "not a TLS server here" rather than a trust decision.
_TLS = {
    "UNEXPECTED_EOF_WHILE_READING": "the server closed the connection during the TLS handshake",
    "WRONG_VERSION_NUMBER": "the server did not answer in TLS (is it the TLS port?)",
    "RECORD_LAYER_FAILURE": "the server did not answer in TLS (is it the TLS port?)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server and the agent share no TLS version",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the TLS handshake",
    "TLSV1_UNRECOGNIZED_NAME": "the server does not serve that name (SNI)",
}


def plain_oserror(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One line for an OSError: the user's path (else the error's), then a plain reason."""
    named = path if path is not None else exc.filename
    reason = plain_reason(exc)
    return f"{os.fspath(named)}: {reason}" if named is not None else reason


def plain_reason(exc: OSError) -> str:
    """What went wrong, in words (no errno number, no Python repr)."""
    if isinstance(exc, socket.gaierror):
        reason = "unknown host (DNS found no address)"
    elif isinstance(exc, TimeoutError | socket.timeout) and exc.errno is None:
        reason = "timed out"
    elif isinstance(exc, ssl.SSLCertVerificationError):
        reason = f"certificate verify failed: {exc.verify_message or exc.reason}"
    elif isinstance(exc, ssl.SSLError):
        reason = _TLS.get(exc.reason or "") or f"TLS error: {exc.reason or exc.strerror or exc}"
    elif exc.errno is not None and exc.strerror and exc.strerror != os.strerror(exc.errno):
        reason = exc.strerror  # already written for the user (e.g. write_atomic's)
    else:
        reason = _PLAIN.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__).lower()
    return reason
