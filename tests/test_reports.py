"""The report queue: deduplication, per-kind rate limit, bounded size."""

from __future__ import annotations

import pytest

from support.pki import NOW, pin, pki
from support.truststores import HOST, full, pinset, store
from trustfleet_device.reports import ReportQueue, report_key, report_kind

DAY = 86_400


def report(host=HOST, result="pin-mismatch", when="2026-01-01T00:00:00Z", **extra):
    r = {"hostname": host, "port": 443, "noted-hostname": "example.com",
         "validation-result": result, "known-pins": ["sha256/AAAA", "sha256/BBBB"],
         "date-time": when, "enforce-pinning": True, "pin-expiry": None}
    r.update(extra)
    return r


def test_deduplicates_reports_that_differ_only_in_time():
    q = ReportQueue(interval=0)  # no rate limit: dedupe alone
    assert q.add(report(), NOW) is True
    assert q.add(report(when="2026-01-02T00:00:00Z"), NOW + 5) is False
    assert q.duplicates == 1 and len(q) == 1
    assert q.add(report(port=8443), NOW + 6) is True


def test_rate_limits_one_report_per_kind_per_day():
    q = ReportQueue()
    assert q.add(report(), NOW)
    # Same kind, different chain/pins: still limited within 24 h.
    assert not q.add(report(**{"known-pins": ["sha256/CCCC"]}), NOW + DAY - 1)
    assert q.rate_limited == 1
    assert q.add(report(**{"known-pins": ["sha256/CCCC"]}), NOW + DAY)
    assert len(q.drain()) == 2


def test_different_kinds_are_limited_separately():
    q = ReportQueue()
    assert q.add(report(), NOW)
    assert q.add(report(result="chain-invalid"), NOW)
    assert q.add(report(host="other.example.com"), NOW)
    assert q.add(report(port=8883), NOW) is False  # the port is not part of the kind
    assert report_kind(report()) == (HOST, "example.com", "pin-mismatch")


def test_identical_pending_report_is_dropped_even_after_the_interval():
    q = ReportQueue()
    assert q.add(report(), NOW)
    assert not q.add(report(), NOW + 3 * DAY)
    assert q.duplicates == 1
    q.drain()
    assert q.add(report(), NOW + 3 * DAY)


def test_bounded_queue_drops_oldest_and_counts_drops():
    q = ReportQueue(max_items=3)
    for i in range(5):
        assert q.add(report(host=f"h{i}.example.com"), NOW)
    assert q.dropped == 2
    assert [r["hostname"] for r in q.drain()] == ["h2.example.com", "h3.example.com",
                                                  "h4.example.com"]


def test_drain_returns_pending_reports_and_empties_the_queue():
    q = ReportQueue()
    q.add(report(), NOW)
    assert q.drain() == [report()]
    assert q.drain() == [] and len(q) == 0


def test_key_ignores_dict_order_and_time_but_not_values():
    a = report()
    b = dict(reversed(list(a.items())))
    b["date-time"] = "1999-01-01T00:00:00Z"
    assert report_key(a) == report_key(b)
    assert report_key(a) != report_key(report(port=444))
    # Types are kept apart: the string "443" is not the integer 443, True is not 1.
    assert report_key(report(port="443")) != report_key(a)
    assert report_key(report(**{"enforce-pinning": 1})) != report_key(a)


def test_rate_limit_table_is_bounded_and_forgets_oldest_first():
    q = ReportQueue(max_items=100, max_kinds=4)
    for i in range(4):
        q.add(report(host=f"h{i}.example.com"), NOW + i)
    assert q.add(report(host="h9.example.com"), NOW + 10)
    assert len(q._last) == 4
    # h0 (the oldest) was forgotten, so it may report again at once.
    q.drain()
    assert q.add(report(host="h0.example.com"), NOW + 11)
    assert not q.add(report(host="h3.example.com", port=1), NOW + 11)


def test_clock_going_backwards_reopens_the_window():
    q = ReportQueue()
    assert q.add(report(), NOW)
    q.drain()
    assert q.add(report(), NOW - 10)


def test_refuses_values_it_cannot_canonicalize():
    q = ReportQueue()
    with pytest.raises(ValueError):
        q.add(["not", "a", "dict"], NOW)
    with pytest.raises(ValueError):
        q.add(report(extra=1.5), NOW)
    with pytest.raises(ValueError):
        ReportQueue(max_items=0)


def test_queues_reports_from_real_decisions_once_per_day():
    p = pki("ec")
    st = store([full(p.root)], [pinset(pins=[pin(p.backup_key), pin(p.backup_root)])])
    q = ReportQueue()
    for i in range(10):
        d = st.evaluate(HOST, p.chain(), NOW + i * 3600)
        assert d.result == "pin-mismatch"
        q.add(d.report, NOW + i * 3600)
        if i == 4:
            assert len(q.drain()) == 1  # sent: later ones are rate-limited, not duplicates
    assert q.duplicates == 4 and q.rate_limited == 5 and len(q) == 0
    d = st.evaluate(HOST, p.chain(), NOW + DAY)
    assert q.add(d.report, NOW + DAY)
    assert q.drain()[0]["date-time"] == "2026-01-02T00:00:00Z"
