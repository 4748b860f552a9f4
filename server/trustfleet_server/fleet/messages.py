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
import re
from collections.abc import Mapping

from trustfleet_device import status as schema
from trustfleet_device import topics
from trustfleet_server.errors import MessageError


class StatusError(MessageError):
    """A status or report message is malformed; the message says which field."""


# Decoding limits for one device message. A status is an object of scalars and flat lists
# (depth 2); a report (trustfleet_device.reports) nests a little more. Counted before parsing,
# so a hostile payload costs one linear scan and never reaches the recursive parser.
MAX_DEPTH = 8
MAX_VALUES = 2048     # JSON values (scalars, arrays, objects) in one message
MAX_NUMBER = 32      # characters in one number: an int up to MAX_INT has 19 digits
_EVENT = re.compile(r'[\[\]{},"\\]')  # what _check_shape looks at


def decode_message(payload: bytes | str | Mapping, limit: int | None = None) -> dict:
    """A JSON object from a message payload (a dict is checked the same way, as its JSON text).

    Bounded before and while parsing: at most `limit` bytes (schema.MAX_BYTES
    unless given), strict UTF-8, nesting at most MAX_DEPTH, at most
    MAX_VALUES values, numbers of at most MAX_NUMBER characters and finite;
    no duplicate keys, no NaN/Infinity, no lone surrogates or NUL characters
    in strings (no database stores them). Raises: StatusError, never anything else.
    """
    limit = schema.MAX_BYTES if limit is None else limit
    if isinstance(payload, Mapping):
        try:
            payload = json.dumps(payload, allow_nan=False, separators=(",", ":"))
        except (ValueError, TypeError, RecursionError, OverflowError) as exc:
            raise StatusError(f"not a JSON object: {str(exc)[:100]}") from None
    if isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if not isinstance(payload, (bytes, str)):
        raise StatusError(f"expected JSON text, got {type(payload).__name__}")
    size = len(payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload)
    if size > limit:
        raise StatusError(f"message is {size} bytes, limit is {limit}")
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StatusError(f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    _check_shape(payload)
    try:
        value = json.loads(payload, object_pairs_hook=_object, parse_constant=_constant,
                           parse_float=_float, parse_int=_int)
    except StatusError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise StatusError(f"not JSON: {str(exc)[:100]}") from None
    except RecursionError:
        raise StatusError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise StatusError(f"expected a JSON object, got {type(value).__name__}")
    _check_text(value)
    return value


def _check_shape(text: str) -> None:
    """Nesting depth and value count, outside strings, before parsing: one linear pass over
    the structural characters only. Raises: StatusError."""
    depth = values = 0
    in_string = False
    skip = -1  # the character after a backslash
    for m in _EVENT.finditer(text):
        i, ch = m.start(), m.group()
        if i == skip:
            continue
        if in_string:
            if ch == "\\":
                skip = i + 1
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            values += 1
            if depth > MAX_DEPTH:
                raise StatusError(f"JSON nested too deeply (more than {MAX_DEPTH} levels)")
        elif ch in "]}":
            depth -= 1
        elif ch == ",":
            values += 1
            if values > MAX_VALUES:
                raise StatusError(f"message holds more than {MAX_VALUES} JSON values")


def _object(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise StatusError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _constant(name: str) -> float:
    raise StatusError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER:
        raise StatusError(f"number of {len(text)} characters, limit is {MAX_NUMBER}")
    v = float(text)
    if v != v or v in (float("inf"), float("-inf")):
        raise StatusError(f"number {text[:40]} is out of range")
    return v


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER:
        raise StatusError(f"number of {len(text)} characters, limit is {MAX_NUMBER}")
    return int(text)


def _check_text(value: object) -> None:
    """Refuse strings that are not storable text: JSON's \\u escapes can spell lone surrogates,
    which json.loads accepts and no database can store, and NUL, which PostgreSQL refuses
    (one such status used to fail every batch it was in). Raises: StatusError."""
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
            if "\x00" in v:
                raise StatusError("a string holds a NUL character")


def _check_identity(fleet: str, device_id: str, message: Mapping) -> None:
    try:
        topics.check_name(fleet, "fleet")
        topics.check_name(device_id, "device id")
    except ValueError as exc:
        raise StatusError(str(exc)) from None
    if message.get("device") not in (None, device_id):
        raise StatusError(f"device {_short(message.get('device'))} does not match the topic's {device_id!r}")
    if message.get("fleet") not in (None, fleet):
        raise StatusError(f"fleet {_short(message.get('fleet'))} does not match {fleet!r}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    """(kind, JSON text) of a report message. Raises: StatusError.

    A report is a JSON object (trustfleet_device.reports: str, int, bool,
    null, lists and objects) within decode_message's bounds; its kind is
    `validation-result` or `event`, a string, clipped to 64 characters.
    """
    report = decode_message(report, schema.MAX_REPORT_BYTES)
    _check_identity(fleet, device_id, report)
    kind = report.get("validation-result") or report.get("event") or "report"
    if not isinstance(kind, str):
        raise StatusError("validation-result must be a string")
    return kind[:64], json.dumps(report, separators=(",", ":"), sort_keys=True, allow_nan=False)
