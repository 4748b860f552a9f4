"""A bounded, deduplicated, rate-limited queue of pin-validation reports.

What it trusts: the reports trust.py builds (plain dicts of str, int,
bool, None and lists of those) and the caller's `now`.

Rules, in the order add() applies them:
1. Deduplicate: a report equal to one still pending, on every field but
   "date-time", is dropped (counted in `duplicates`). Equality uses a
   canonical text with sorted keys, so MicroPython's unordered dicts
   do not matter.
2. Rate-limit: at most one report per kind per `interval` seconds (24 h by
   default), where kind = (hostname, noted-hostname, validation-result).
   Our choice: the port and the certificate chain are left out of the kind,
   so a CDN rotating certificates, or a host reached on two ports, cannot
   multiply the reports of one failure. Dropped ones count in
   `rate_limited`. A clock that went backwards opens the window again
   rather than silencing a kind until the clock catches up.
3. Bound: at most `max_items` pending; the oldest goes first (`dropped`).
   At most `max_kinds` rate-limit entries are kept; when full, expired
   entries go first, then the oldest.

Memory: a report carries its chain as PEM (a few KB); on a board without
PSRAM pass a small max_items.
"""

import hashlib

_KIND_FIELDS = ("hostname", "noted-hostname", "validation-result")
_TIME_FIELD = "date-time"


def _canonical(value, out):
    """Append an unambiguous text form of value to the list out (sorted keys for dicts)."""
    t = type(value)
    if t is dict:
        out.append("{")
        for k in sorted(value):
            if k == _TIME_FIELD:
                continue
            _canonical(k, out)
            out.append(":")
            _canonical(value[k], out)
            out.append(",")
        out.append("}")
    elif t is list or t is tuple:
        out.append("[")
        for v in value:
            _canonical(v, out)
            out.append(",")
        out.append("]")
    elif t is str:
        out.append("s%d:" % len(value))
        out.append(value)
    elif value is True or value is False or value is None:
        out.append("b%r" % (value,))
    elif t is int:
        out.append("i%d" % value)
    else:
        raise ValueError("report values must be str, int, bool, None, list or dict")


def report_key(report):
    """Return the SHA-256 of a report's canonical form, ignoring its time."""
    out = []
    _canonical(report, out)
    return hashlib.sha256("".join(out).encode()).digest()


def report_kind(report):
    """Return the rate-limit kind of a report: (hostname, noted-hostname, validation-result)."""
    kind = []
    for f in _KIND_FIELDS:
        v = report.get(f)
        kind.append("" if v is None else str(v))
    return tuple(kind)


class ReportQueue:
    """Pending reports, deduplicated and rate-limited per kind; see the module docstring."""

    def __init__(self, max_items=32, interval=86400, max_kinds=64):
        if max_items < 1 or interval < 0 or max_kinds < 1:
            raise ValueError("max_items and max_kinds must be >= 1, interval >= 0")
        self.max_items = max_items
        self.interval = interval
        self.max_kinds = max_kinds
        self._pending = []  # (key, report), oldest first
        self._last = {}  # kind -> time of the last accepted report
        self.dropped = 0
        self.duplicates = 0
        self.rate_limited = 0

    def __len__(self):
        return len(self._pending)

    def add(self, report, now):
        """Queue a report at time now; return True if queued, False if deduplicated or rate-limited.

        Raises:
            ValueError: the report is not a dict of plain values (a caller mistake).
        """
        if type(report) is not dict:
            raise ValueError("a report must be a dict")
        key = report_key(report)
        for k, _ in self._pending:
            if k == key:
                self.duplicates += 1
                return False
        kind = report_kind(report)
        last = self._last.get(kind)
        if last is not None and 0 <= now - last < self.interval:
            self.rate_limited += 1
            return False
        self._remember(kind, now)
        self._pending.append((key, report))
        if len(self._pending) > self.max_items:
            self._pending.pop(0)
            self.dropped += 1
        return True

    def _remember(self, kind, now):
        last = self._last
        if kind not in last and len(last) >= self.max_kinds:
            for k in list(last):
                if not (0 <= now - last[k] < self.interval):
                    del last[k]
            if len(last) >= self.max_kinds:
                # min over (time, kind): deterministic whatever the dict order.
                oldest = min([(t, k) for k, t in last.items()])
                del last[oldest[1]]
        last[kind] = now

    def drain(self):
        """Return the pending reports, oldest first, and empty the queue."""
        out = [r for _, r in self._pending]
        self._pending = []
        return out
