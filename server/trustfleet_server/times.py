"""Durations in, times out: the one duration parser and the one time format of the operator side.

Durations are written `48h`, `90d`, `10s` (units s, m, h, d, w). Documents
(bundle specs) take exactly that, or a whole number of seconds. Command-line
options are looser: a bare number of seconds, decimals and `ms` too
(`1.5`, `500ms`). A point in time on the command line (`parse_moment`) is
whole epoch seconds or an ISO 8601 date or date-time (UTC unless it says).
Times print as RFC 3339 UTC to the second: `2027-03-01T12:00:00Z`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from trustfleet_device._cpython import jsonout
from trustfleet_server.errors import UsageError

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STRICT = re.compile(r"^\d+\s*[smhdw]$")


def is_duration(text: str) -> bool:
    """Whether `text` is a document duration like '90d' (not a date)."""
    return bool(_STRICT.match(text.strip()))


def parse_duration(value: Any, where: str, *, strict: bool = True,
                   error: type[Exception] = UsageError) -> Any:
    """Seconds from a duration.

    strict (documents): an int >= 0 or a whole number with a unit ('48h'); returns an int.
    Otherwise (command-line options): also a bare or decimal number and 'ms'; returns a float.
    Raises `error` (UsageError by default), naming `where`.
    """
    if strict:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and is_duration(value):
            m = _DURATION.match(value.strip())
            return int(m.group(1)) * _UNITS[m.group(2)]
        raise error(f"{where}: expected a duration like '48h' or a number of seconds")
    m = _DURATION.match(str(value).strip())
    if not m:
        raise error(f"{where}: {value!r} is not a duration like 10s, 500ms, 5m or 2h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def positive_seconds(value: str, option: str) -> float:
    """A command-line duration that must be longer than zero. Raises: UsageError."""
    seconds = parse_duration(value, option, strict=False)
    if seconds <= 0:
        raise UsageError(f"{option}: must be positive, got {value}")
    return seconds


_EPOCH = re.compile(r"^[0-9]{1,12}$")  # up to year ~33658: beyond that it is a typo


def parse_moment(text: str, option: str) -> int:
    """Epoch seconds from a command-line time: whole epoch seconds (`1796515999`) or an ISO
    8601 date or date-time (`2026-12-05`, `2026-12-05T23:33:19Z`; UTC without an offset).

    Raises: UsageError, one line naming `option`.
    """
    value = text.strip()
    if _EPOCH.match(value):
        return int(value)
    try:
        if len(value) == 10 and value[4:5] == "-":
            parsed = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
        else:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option}: {text[:40]!r} is not a time: expected epoch seconds "
                         f"(1796515999) or an ISO date (2026-12-05, 2026-12-05T23:33:19Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    seconds = int(parsed.timestamp())
    if seconds < 0:
        raise UsageError(f"{option}: {text[:40]!r} is before 1970")
    return seconds


def iso(when: int | float | dt.datetime) -> str:
    """RFC 3339 UTC to the second, from epoch seconds or an aware datetime."""
    if not isinstance(when, dt.datetime):
        when = dt.datetime.fromtimestamp(when, dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Fields of the fleet store's JSON output that hold epoch seconds (the JSON convention:
# trustfleet_device._cpython.jsonout).
JSON_TIME_KEYS = frozenset({"time", "first_seen", "last_seen", "started", "wave_started", "paused_at",
                            "finished", "ended", "since"})


def json_times(value: Any) -> Any:
    """`value` with JSON_TIME_KEYS fields as RFC 3339 and `<name>_epoch` beside them."""
    return jsonout.with_times(value, JSON_TIME_KEYS)
