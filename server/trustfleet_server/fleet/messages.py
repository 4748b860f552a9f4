"""Device messages as the server receives them: decoded, checked, normalised.

What it trusts: nothing in a status or report. Device statuses come from
the broker, where any client allowed to publish on the topic could have
written them, so every field is checked against the one status schema
(trustfleet_device.status: kinds and bounds) and the device id comes from
the topic, not the body. A malformed message raises StatusError, a
MessageError: bad input, counted and dropped by the callers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from trustfleet_device import status as schema
from trustfleet_device import topics
from trustfleet_server.errors import MessageError


class StatusError(MessageError):
    """A status or report message is malformed; the message says which field."""


def decode_message(payload: bytes | str | Mapping, limit: int | None = None) -> dict:
    """A JSON object from a message payload (or a dict passed through).

    `limit` is in bytes, schema.MAX_BYTES unless given. Raises: StatusError.
    """
    if isinstance(payload, Mapping):
        return dict(payload)
    limit = schema.MAX_BYTES if limit is None else limit
    if len(payload) > limit:
        raise StatusError(f"message is {len(payload)} bytes, limit is {limit}")
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(f"not JSON: {exc}") from None
    except RecursionError:
        # A device's message must never take the server down ('[' x 2000 did).
        raise StatusError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise StatusError(f"expected a JSON object, got {type(value).__name__}")
    _check_text(value)
    return value


def _check_text(value: object) -> None:
    """Refuse strings that are not Unicode text: JSON's \\u escapes can spell lone surrogates,
    which json.loads accepts and no database can store. Raises: StatusError."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise StatusError("a string holds a lone surrogate escape, not text") from None


def _check_identity(fleet: str, device_id: str, message: Mapping) -> None:
    try:
        topics.check_name(fleet, "fleet")
        topics.check_name(device_id, "device id")
    except ValueError as exc:
        raise StatusError(str(exc)) from None
    if message.get("device") not in (None, device_id):
        raise StatusError(f"device {message.get('device')!r} does not match the topic's {device_id!r}")
    if message.get("fleet") not in (None, fleet):
        raise StatusError(f"fleet {message.get('fleet')!r} does not match {fleet!r}")


def normalise_status(fleet: str, device_id: str, status: Mapping | bytes | str) -> dict:
    """Check a status message; return every schema field plus `raw` (its JSON text).

    Fleet and device come from the topic; the bucket is computed from the
    device id (topics.bucket), never taken from the message. Raises: StatusError.
    """
    status = decode_message(status)
    _check_identity(fleet, device_id, status)
    try:
        row = schema.validate(status)
    except ValueError as exc:
        raise StatusError(str(exc)) from None
    row["fleet"] = fleet
    row["device"] = device_id
    row["bucket"] = topics.bucket(device_id)
    raw = json.dumps(status, separators=(",", ":"), sort_keys=True)
    if len(raw) > schema.MAX_BYTES:
        raise StatusError(f"status is {len(raw)} bytes, limit is {schema.MAX_BYTES}")
    row["raw"] = raw
    return row


def normalise_report(fleet: str, device_id: str, report: Mapping | bytes | str) -> tuple[str, str]:
    """(kind, JSON text) of a report message. Raises: StatusError."""
    report = decode_message(report, schema.MAX_REPORT_BYTES)
    _check_identity(fleet, device_id, report)
    kind = report.get("validation-result") or report.get("event") or "report"
    if not isinstance(kind, str):
        raise StatusError("validation-result must be a string")
    return kind[:64], json.dumps(report, separators=(",", ":"), sort_keys=True)
