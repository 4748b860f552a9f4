"""A device's MQTT session, with no I/O: messages in, messages to publish out.

Every transport (paho on the Pi, umqtt on the ESP32, the fleet simulator)
connects, subscribes to subscriptions(), sets will() as its last will, and
then only moves bytes: each received message goes to on_message (or, for a
large bundle read in pieces, to on_bundle_chunks), and every message those
return is published as given. tick() runs now and then (deadlines, clock).

What it decides (docs/topics.md):
- A root may arrive before the one it follows (retained messages come in
  any order): later versions wait, a few at a time, until their turn.
- The same document arrives on several topics (fleet, group, bucket) and
  again after every reconnect: one already seen is not verified twice.
- After anything that changes the device's state it publishes the status,
  retained, and also when the state alone changed (a timestamp made the
  device behind, time made it stale); refusals and trust failures go out
  as reports, deduplicated and rate-limited (reports.ReportQueue). A signed
  bundle older than the installed one (retained on the fleet topic while a
  rollout wave delivered a newer one) is neither: it is routine, not news.
"""

import hashlib
import json

from trustfleet_device import status, topics
from trustfleet_device.reports import ReportQueue

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_SEEN_MAX = const(16)       # digests of documents already handled
_PENDING_ROOTS_MAX = const(8)


class Session:
    """Routes documents to a runner.Device and says what to publish."""

    def __init__(self, device, fleet, device_id, group=None, reports=None):
        self.device = device
        self.fleet = topics.check_name(fleet, "fleet")
        self.device_id = topics.check_name(device_id, "device id")
        self.group = topics.check_name(group, "group") if group else None
        self.bucket = topics.bucket(device_id)
        self.reports = reports if reports is not None else ReportQueue()
        self.seen = []
        self.pending_roots = {}
        self.last = None  # (event, detail) of the last thing that happened
        self.seq = 0
        self.shown = None  # the state in the last status published

    # ------------------------------------------------------------ connection

    def subscriptions(self):
        return topics.device_subscriptions(self.fleet, self.device_id, self.group)

    def will(self):
        """(topic, payload, retain, qos) for the broker to publish if we vanish."""
        body = status.offline(self.device_id, self.fleet)
        return topics.status(self.fleet, self.device_id), status.encode(body), True, 1

    def connected(self):
        """Call after every (re)connect: announces the status."""
        return [self.status_message()]

    # -------------------------------------------------------------- messages

    def on_message(self, topic, payload):
        """Handle one received message. Returns [(topic, payload, retain, qos)] to publish."""
        kind, arg = topics.classify(self.fleet, topic)
        if kind is None or kind == "status" or kind == "report" or not payload:
            return []  # not ours, or an emptied retained topic
        digest = hashlib.sha256(payload).digest()
        if digest in self.seen:
            return []
        self._remember(digest)
        if kind == "root":
            return self._root(arg, payload)
        if kind == "bundle":
            return self.after(self.device.offer("bundle", payload))
        return self.after(self.device.offer("timestamp", payload), quiet=True)

    def on_bundle_chunks(self, topic, chunks):
        """A bundle read piece by piece (large payloads on a board): streamed into the inactive slot."""
        kind, _ = topics.classify(self.fleet, topic)
        if kind != "bundle":
            for _ in chunks:
                pass
            return []
        # A repeat cannot be recognised before it is read; it is written but not verified again.
        out = self.after(self.device.receive_bundle(chunks, self.seen))
        while len(self.seen) > _SEEN_MAX:
            self.seen.pop(0)
        return out

    def tick(self):
        """Time passes: health-check deadlines, clock bookkeeping, queued reports."""
        return self.after(self.device.tick(), quiet=True)

    # --------------------------------------------------------------- helpers

    def _remember(self, digest):
        self.seen.append(digest)
        if len(self.seen) > _SEEN_MAX:
            self.seen.pop(0)

    def _root(self, version, payload):
        current = self.device.root_version()
        if version <= current:
            return []
        if len(self.pending_roots) >= _PENDING_ROOTS_MAX and version not in self.pending_roots:
            return []  # refuse to hoard; the broker keeps them retained
        self.pending_roots[version] = payload
        out = []
        while current + 1 in self.pending_roots:
            raw = self.pending_roots.pop(current + 1)
            out.extend(self.after(self.device.offer("root", raw)))
            if self.device.root_version() == current:
                break  # refused: the rest cannot follow
            current += 1
        return out

    def after(self, result, quiet=False):
        """Turn a runner.Result into status and report messages (also for results that came
        some other way than MQTT, such as a board's inbox)."""
        changed = result.committed is not None or result.reverted is not None or bool(result.reports)
        now = self.device.now()
        for r in result.reports:
            self.last = (r["event"], r["detail"])
        for kind, reason in result.refused:
            # Rate-limited per document kind, like TrustKit per host and result.
            self.reports.add({"validation-result": "document-refused", "noted-hostname": kind,
                              "reason": reason, "device": self.device_id, "date-time": now}, now)
        if result.reverted is not None and result.reverted not in self.device.bad_versions():
            # Reverted without a bad mark (its endpoints were unreachable): the next
            # delivery of the same bundle is a new try, not a repeat to skip.
            self.seen = []
        out = []
        if changed and not (quiet and result.committed is None and result.reverted is None
                            and not result.refused):
            out.append(self.status_message())
        elif self.shown is not None and self.device.state_name() != self.shown:
            # Behind or stale since the last status (a timestamp, time passing): say so now.
            out.append(self.status_message())
        for report in self.reports.drain():
            out.append((topics.report(self.fleet, self.device_id), json.dumps(report).encode(), False, 1))
        return out

    def status_message(self):
        """The retained status (status.FIELDS): what the server and `fleet status` show."""
        self.seq += 1
        s = self.device.status()
        s["device"] = self.device_id
        s["fleet"] = self.fleet
        s["group"] = self.group
        s["bucket"] = self.bucket
        s["seq"] = self.seq
        s["time"] = self.device.now()
        s["fail_open"] = self.expired_pinsets(s["trusted_time"])
        if self.last is not None:
            s["event"], s["detail"] = self.last
        self.shown = s["state"]
        return topics.status(self.fleet, self.device_id), status.encode(status.build(s)), True, 1

    def expired_pinsets(self, now):
        """Domains whose pins have expired: connections there are checked by CA validation only."""
        b = self.device.active_bundle()
        if b is None:
            return []
        return [p.domain for p in b.pinsets if now >= p.expires]
