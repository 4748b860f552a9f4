"""The audit trail's side of the tools: who acts, from which host, and who signed a document.

Entries are stored by FleetDB.add_audit (tf_audit, append-only). The CLI's actor is
$TRUSTFLEET_OPERATOR when set, else the login user; serve acts as "serve:<worker id>";
the console as the operator its token names. `signers` reads a document's key ids and the
names signers stated with `sign --signer` (docs/format.md).
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

from trustfleet_device.errors import TrustfleetError
from trustfleet_server import documents

OPERATOR_ENV = "TRUSTFLEET_OPERATOR"


def host() -> str:
    """This machine's host name."""
    return socket.gethostname() or "unknown"


def actor() -> str:
    """Who runs this command: $TRUSTFLEET_OPERATOR, else the login user."""
    named = os.environ.get(OPERATOR_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def operator_name() -> str:
    """actor@host: who ran the command, as tf_device_events records it."""
    return f"{actor()}@{host()}"


def signers(raw: bytes) -> list[dict]:
    """Each signature of a signed document: {"kid": hex or None, "name": stated name or None}.

    The name is the text under documents.SIGNER_LABEL in that signature's protected header, so
    it is covered by the signature; it is what the signer said, not checked against anything.
    An unsigned or unreadable document has none.
    """
    try:
        doc = documents.read_document(raw)
    except TrustfleetError:
        return []
    if doc.message is None:
        return []
    out = []
    for s in doc.message.signers:
        name = s.protected.get(documents.SIGNER_LABEL) if isinstance(s.protected, dict) else None
        out.append({"kid": s.kid.hex() if isinstance(s.kid, bytes) else None,
                    "name": name if isinstance(name, str) else None})
    return out


def record(db: Any, fleet: str, action: str, detail: dict, now: int, *, actor_name: str | None = None,
           host_name: str | None = None, source: str = "cli") -> dict:
    """Append an entry to the audit trail of `db` (a FleetDB); actor and host default to this
    command's (actor(), host()). Returns the entry."""
    return db.add_audit(fleet, action, actor() if actor_name is None else actor_name,
                        host() if host_name is None else host_name, source, detail, now)
