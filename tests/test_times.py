"""times.py: the operator side's one duration parser and one time format."""

from __future__ import annotations

import datetime as dt

import pytest

from trustfleet_server import spec, times
from trustfleet_server.errors import UsageError


@pytest.mark.parametrize("text, seconds", [("48h", 172800), ("90d", 7776000), ("2w", 1209600), ("10s", 10),
                                           ("5m", 300), (" 3 h ", 10800), (0, 0), (3600, 3600)])
def test_document_durations_are_whole_numbers_with_a_unit(text, seconds):
    got = times.parse_duration(text, "expires")
    assert got == seconds and isinstance(got, int)


@pytest.mark.parametrize("text", ["48", "1.5h", "500ms", "-1h", "h", "", True, -5, 1.5, None])
def test_document_durations_refuse_the_rest(text):
    with pytest.raises(UsageError, match="^expires: expected a duration"):
        times.parse_duration(text, "expires")


def test_spec_errors_stay_spec_errors():
    with pytest.raises(spec.SpecError):
        spec.parse_duration("1.5h", "policy.max_timestamp_age")
    assert spec.parse_time("90d", "expires", base=100) == 100 + 90 * 86400
    with pytest.raises(spec.SpecError, match="needs a reference time"):
        spec.parse_time("90d", "expires")


@pytest.mark.parametrize("text, seconds", [("3", 3.0), ("1.5", 1.5), ("500ms", 0.5), ("10s", 10.0),
                                           ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("0", 0.0)])
def test_option_durations_also_take_bare_decimal_and_ms(text, seconds):
    assert times.parse_duration(text, "--timeout", strict=False) == seconds


@pytest.mark.parametrize("text", ["-1", "ten", "5 minutes", "", "1e3"])
def test_option_durations_refuse_what_is_not_a_duration(text):
    with pytest.raises(UsageError, match="^--timeout: .* is not a duration"):
        times.parse_duration(text, "--timeout", strict=False)


def test_positive_seconds_refuses_zero():
    assert times.positive_seconds("5m", "--step-every") == 300.0
    with pytest.raises(UsageError, match="must be positive"):
        times.positive_seconds("0", "--step-every")


def test_iso_is_rfc3339_utc_to_the_second():
    assert times.iso(0) == "1970-01-01T00:00:00Z"
    assert times.iso(1_800_000_000.9) == "2027-01-15T08:00:00Z"
    aware = dt.datetime(2027, 3, 1, 13, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert times.iso(aware) == "2027-03-01T12:00:05Z"
