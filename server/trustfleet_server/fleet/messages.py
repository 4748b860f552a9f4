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
# A number longer than MAX_NUMBER needs a run of more than MAX_NUMBER number characters.
_LONG_NUMBER = re.compile(r"[-+.0-9eE]{" + str(MAX_NUMBER + 1) + "}")
_NUMBER_BYTES = bytes(0x30 if chr(i) in "-+.0123456789eE" else 0x20 for i in range(256))  # -> "0" / " "
_LONG_RUN = b"0" * (MAX_NUMBER + 1)
_NAME = re.compile(r"[A-Za-z0-9._-]{1," + str(topics.MAX_NAME) + "}")  # topics.check_name's rule


def decode_message(payload: bytes | str | Mapping, limit: int | None = None) -> dict:
    """A JSON object from a message payload (a dict is checked the same way, as its JSON text).

    Bounded before and while parsing: at most `limit` bytes (schema.MAX_BYTES
    unless given), strict UTF-8, nesting at most MAX_DEPTH, at most
    MAX_VALUES values, numbers of at most MAX_NUMBER characters and finite;
    no duplicate keys, no NaN/Infinity, no lone surrogates or NUL characters
    in strings (no database stores them). Raises: StatusError, never anything else.
    """
    return decode_text(payload, limit)[0]


def decode_text(payload: bytes | str | Mapping, limit: int | None = None) -> tuple[dict, str]:
    """decode_message's object and the JSON text it was parsed from (the payload as text, or
    a dict's compact JSON). Raises: StatusError.

    The checks cost little on an ordinary message: counts of the structural
    characters bound the nesting and the values from above (the exact scan runs
    only when they do not), numbers go to the C parser unless the text holds a
    run of more than MAX_NUMBER number characters, and strings are walked for
    lone surrogates and NUL only when a \\u escape could spell one (strict UTF-8
    bytes cannot hold either otherwise).
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
    strict_utf8 = isinstance(payload, bytes)
    if strict_utf8:
        long_numbers = _LONG_RUN in payload.translate(_NUMBER_BYTES)
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StatusError(f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        long_numbers = _LONG_NUMBER.search(payload) is not None
    text = payload
    opens = text.count("[") + text.count("{")
    if opens > MAX_DEPTH or opens + text.count(",") > MAX_VALUES:
        _check_shape(text)  # the bounds may be reached: count exactly, outside strings
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = (_DECODER_LONG if long_numbers else _DECODER).decode(text)
    except StatusError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise StatusError(f"not JSON: {str(exc)[:100]}") from None
    except RecursionError:
        raise StatusError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise StatusError(f"expected a JSON object, got {type(value).__name__}")
    if not strict_utf8 or "\\u" in text:
        _check_text(value)
    return value, text


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


# json.loads with hooks makes a decoder per call; these are made once. _DECODER_LONG also
# bounds each integer's length (a text without a long run of number characters needs not).
_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)
_DECODER_LONG = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant,
                                 parse_float=_float, parse_int=_int)


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
    if _NAME.fullmatch(fleet) is None or _NAME.fullmatch(device_id) is None:
        try:  # the one rule is topics.check_name's; it also words the refusal
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


def check_status(fleet: str, device_id: str, status: Mapping | bytes | str) -> tuple[dict, str]:
    """A status message checked once: (schema.validate's fields, the JSON text as received).

    The text is what the store keeps as `raw`: the payload itself (a dict
    arrives as its compact JSON), within schema.MAX_BYTES. Fleet and device
    come from the topic; a body naming others is refused. Raises: StatusError.
    """
    message, text = decode_text(status)
    _check_identity(fleet, device_id, message)
    # Checked just now against the topic's names: schema.validate need not walk them again.
    message.pop("device", None)
    message.pop("fleet", None)
    row = _plain_fields(message)
    if row is None:
        try:
            row = schema.validate(message)
        except ValueError as exc:
            raise StatusError(str(exc)) from None
    row["device"] = device_id
    row["fleet"] = fleet
    return row, text


def _plain_fields(message: dict) -> dict | None:
    """schema.validate's result for a status that needs no change (every text and list within
    its bound, every integer in range, the group a valid name, no device or fleet field); None
    for anything else, which schema.validate then checks, clips or refuses, naming the field.
    The kinds are schema.FIELDS' and the bounds are read here at each call, as validate does."""
    get = message.get
    state = get("state")
    if type(state) is not str or not 0 < len(state) <= schema.MAX_STATE or "device" in message \
            or "fleet" in message or _PLAIN_ORDER[0] is not _KINDS:
        return None
    max_int, max_text, max_list = schema.MAX_INT, schema.MAX_TEXT, schema.MAX_LIST
    for name in _PLAIN_ORDER[1][schema.INT]:
        v = get(name)
        if v is not None and (type(v) is not int or not 0 <= v <= max_int):
            return None
    for name in _PLAIN_ORDER[1][schema.TEXT]:
        v = get(name)
        if v is not None and (type(v) is not str or len(v) > max_text):
            return None
    for name in _PLAIN_ORDER[1][schema.NAME]:
        v = get(name)
        if v is not None and (type(v) is not str or _NAME.fullmatch(v) is None):
            return None
    out = {name: get(name) for name in _PLAIN_ORDER[2]}
    for name in _PLAIN_ORDER[1][schema.INTS]:
        v = out[name]
        if v is None:
            out[name] = []
        elif type(v) is not list or len(v) > max_list or \
                not all(type(x) is int and 0 <= x <= max_int for x in v):
            return None
    for name in _PLAIN_ORDER[1][schema.TEXTS]:
        v = out[name]
        if v is None:
            out[name] = []
        elif type(v) is not list or len(v) > max_list or \
                not all(type(x) is str and len(x) <= max_text for x in v):
            return None
    return out


# What validate returns, but device and fleet (checked against the topic instead), by kind.
_KINDS = (schema.STATE, schema.INT, schema.TEXT, schema.NAME, schema.INTS, schema.TEXTS)
_FIELDS = tuple((n, k) for n, k in schema.FIELDS if k != schema.BUCKET and n not in ("device", "fleet"))
# (kinds known here, {kind: names}, every name); a field of another kind: validate decides.
_PLAIN_ORDER = (_KINDS if all(k in _KINDS for _, k in _FIELDS) else None,
                {kind: tuple(n for n, k in _FIELDS if k == kind) for kind in _KINDS},
                tuple(n for n, _ in _FIELDS))


def normalise_status(fleet: str, device_id: str, status: Mapping | bytes | str) -> dict:
    """Check a status message; return every schema field plus `raw` (its JSON text).

    Fleet and device come from the topic; the bucket is computed from the
    device id (topics.bucket), never taken from the message. Raises: StatusError.
    """
    row, raw = check_status(fleet, device_id, status)
    row["fleet"] = fleet
    row["device"] = device_id
    row["bucket"] = topics.bucket(device_id)
    row["raw"] = raw
    return row


def normalise_report(fleet: str, device_id: str, report: Mapping | bytes | str) -> tuple[str, str]:
    """(kind, JSON text) of a report message. Raises: StatusError.

    A report is a JSON object (trustfleet_device.reports: str, int, bool,
    null, lists and objects) within decode_message's bounds; its kind is
    `validation-result` or `event`, a string, clipped to 64 characters. The
    text is the payload as received (a dict as its compact JSON).
    """
    report, text = decode_text(report, schema.MAX_REPORT_BYTES)
    _check_identity(fleet, device_id, report)
    kind = report.get("validation-result") or report.get("event") or "report"
    if not isinstance(kind, str):
        raise StatusError("validation-result must be a string")
    return kind[:64], text
