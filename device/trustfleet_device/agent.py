"""The device agent: a state machine with no I/O.

Fed with documents (root, bundle, timestamp) as bytes, a bundle also as a
source (see source.py: already streamed into the inactive slot), clock
readings and health-check results; returns actions for the caller to carry
out, in order:

    slots.WRITE_SLOT, slots.WRITE_ROOT, slots.SWITCH, slots.COMMIT,
    slots.REVERT, slots.SAVE     -> Store.apply (persistence)
    HEALTH_CHECK (bundle, trusted_time, deadline)
                                 -> connect to the endpoints with a store
                                    built from `bundle` (the one on trial),
                                    judged at `trusted_time`, then call health()
    REPORT (dict)                -> publish or log
    REFUSED (kind, reason)       -> the document was not accepted

A bundle streamed in by a transport: begin_stream() names the slot to write
(or refuses), stream_too_large() refuses one over the size limit, and
offer_bundle(source, clock, slot, digest) verifies what was written.

States: IDLE (a committed store, or none yet) and TRIAL (switched to a new
store, waiting for the health check). Table of transitions:

    state  input                      -> actions                       next
    IDLE   valid newer bundle         -> WRITE_SLOT, SWITCH, HEALTH_CHECK TRIAL
    IDLE   invalid/older/bad bundle   -> REFUSED, REPORT               IDLE
    TRIAL  health ok                  -> COMMIT, REPORT                IDLE
    TRIAL  health failed / deadline   -> REVERT, REPORT                IDLE
    TRIAL  bundle                     -> REFUSED (busy)                TRIAL
    any    valid next root            -> WRITE_ROOT, REPORT            same
    any    valid newer timestamp      -> SAVE                          same
    boot   state says TRIAL           -> REVERT, REPORT (like MCUboot's test swap: a reboot
                                         before commit means the new store did not prove itself)

Rules: never accept a bundle version <= the committed floor or one reverted
as bad; trusted time = max(clock, last authenticated time, firmware build
time, persisted clock reading); an expired bundle or an old timestamp makes
the device "stale" but it keeps the store it has.
"""

import hashlib

from trustfleet_device import VERSION, policy, slots
from trustfleet_device.errors import BundleError, PolicyError, RollbackError
from trustfleet_device.limits import DEFAULT

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

HEALTH_CHECK = "health_check"
REPORT = "report"
REFUSED = "refused"

IDLE = "idle"
TRIAL = "trial"

# A clock reading is persisted (so a board whose RTC resets still knows
# roughly the date) only when it is within this much of authenticated time:
# an NTP attacker cannot make a far-future time permanent.
_MAX_CLOCK_LEAD = const(400 * 86400)
_CLOCK_SAVE_STEP = const(3600)


class Config:
    """Per-device settings that do not come from signed documents."""

    def __init__(self, fleet=None, firmware_time=0, health_timeout=120, limits=DEFAULT,
                 device_id=None, managed=False, agent_version=VERSION):
        self.fleet = fleet
        self.firmware_time = firmware_time
        self.health_timeout = health_timeout
        self.limits = limits
        self.device_id = device_id
        self.managed = managed
        self.agent_version = agent_version


class Agent:
    """Decides what to do with documents; the caller performs the actions."""

    def __init__(self, config):
        self.config = config
        self.root = None
        self.root_raw = None
        self.state = slots.fresh_state()
        self.bundle = None
        self.phase = IDLE
        self.pending = None  # (bundle, deadline) while on TRIAL
        self.latest = None   # (bundle version, sha256) from the last timestamp

    # ------------------------------------------------------------ boot

    def boot(self, root_raw, state, slot_docs, clock):
        """Start from what storage holds. Returns actions. Raises: BundleError if the root is unusable."""
        self.root = policy.load_trusted_root(root_raw, self.config.limits, self.config.fleet)
        self.root_raw = root_raw
        self.state = slots.copy_state(state)
        actions = []
        if self.state["trial"]:
            # A power cut and a crash caused by the new store look the same
            # here. Revert either way; allow one more try, then call it bad.
            again = self.state["version"] in self.state["retried"]
            actions.extend(self._revert("reboot before commit", mark_bad=again))
        self.bundle = self._load_active(slot_docs, actions)
        return actions

    def _verify(self, doc, installed_version=None, now=None):
        """Verify a bundle given as bytes (in RAM) or as a source (in flash). Raises: BundleError."""
        return policy.verify_bundle(self.root, doc, self.config.limits, installed_version, now)

    def _load_active(self, slot_docs, actions):
        s = self.state
        if s["active"] is None:
            return None
        doc = slot_docs.get(s["active"])
        try:
            if doc is None:
                raise BundleError("slot %s is empty" % s["active"])
            # The installed store was verified before it was written; check it
            # again so flash corruption is caught here and not at a TLS handshake.
            return self._verify(doc)
        except BundleError as exc:
            actions.append(self._report("store-invalid", str(exc)))
            other = "b" if s["active"] == "a" else "a"
            alt = slot_docs.get(other)
            if alt is not None:
                try:
                    b = self._verify(alt)
                    # Never fall back below the anti-rollback floor, even now.
                    if b.version >= s["floor"] and b.version not in s["bad"]:
                        new = slots.copy_state(s)
                        new["active"], new["version"], new["trial"] = other, b.version, False
                        self.state = new
                        actions.append((slots.COMMIT, new))
                        return b
                except BundleError:
                    pass
            new = slots.copy_state(s)
            new["active"], new["version"] = None, None
            self.state = new
            actions.append((slots.SAVE, new))
            return None

    # ------------------------------------------------------------ time

    def trusted_time(self, clock):
        """max(clock, authenticated time, firmware build time, persisted clock reading)."""
        s = self.state
        t = clock
        for other in (s["time"], s["last_timestamp"], self.config.firmware_time):
            if other > t:
                t = other
        return t

    def _note_time(self, new_state, authenticated=None, clock=None):
        if authenticated is not None and authenticated > new_state["time"]:
            new_state["time"] = authenticated
        if clock is not None:
            anchor = new_state["time"]
            if anchor < self.config.firmware_time:
                anchor = self.config.firmware_time
            if new_state["time"] + _CLOCK_SAVE_STEP < clock <= anchor + _MAX_CLOCK_LEAD:
                new_state["time"] = clock

    def observe_clock(self, clock):
        """Persist a plausible clock reading now and then. Returns actions."""
        new = slots.copy_state(self.state)
        self._note_time(new, clock=clock)
        if new["time"] == self.state["time"]:
            return []
        self.state = new
        return [(slots.SAVE, new)]

    # --------------------------------------------------------- documents

    def inactive_slot(self):
        """The slot a new bundle goes into: never the active one."""
        return "b" if self.state["active"] == "a" else "a"

    def trial_bundle(self):
        """The verified bundle on trial (what a health check must use), or None."""
        return self.pending[0] if self.pending is not None else None

    def busy(self):
        """True while a trial waits for its health check: the inactive slot is then the way back."""
        return self.phase == TRIAL

    def begin_stream(self):
        """A bundle is about to be streamed in. Returns (slot to write it to, None) or (None, refusal actions)."""
        if self.phase == TRIAL:
            return None, self._refuse_busy()
        return self.inactive_slot(), None

    def stream_too_large(self, limit):
        """The streamed bundle passed `limit` bytes and was dropped. Returns refusal actions."""
        return self._refuse("bundle", "document is over %d bytes, the limit" % limit)

    def offer_bundle(self, doc, clock, slot=None, digest=None):
        """A bundle arrived. Returns actions.

        `doc` is bytes (a whole bundle in memory: offline install, small
        documents), or a source over the inactive `slot` it was streamed
        into (begin_stream); the caller hashed it while writing (`digest`),
        and it is verified and parsed from the source, never held whole in RAM.
        """
        if hasattr(doc, "read_at"):
            if slot != self.inactive_slot():
                raise ValueError("bundle staged in slot %s, but the inactive slot is %s"
                                 % (slot, self.inactive_slot()))
            b, refusal = self._accept_bundle(doc, clock, digest)
            if refusal:
                return refusal
            return self._switch_to(slot, b, clock)
        b, refusal = self._accept_bundle(doc, clock, hashlib.sha256(doc).digest())
        if refusal:
            return refusal
        slot = self.inactive_slot()
        return [(slots.WRITE_SLOT, slot, doc)] + self._switch_to(slot, b, clock)

    def _accept_bundle(self, doc, clock, digest):
        """Return (bundle, None) when doc may be installed, else (None, refusal actions)."""
        if self.phase == TRIAL:
            return None, self._refuse_busy()
        now = self.trusted_time(clock)
        s = self.state
        try:
            b = self._verify(doc, installed_version=s["floor"], now=now)
            if b.version in s["bad"]:
                raise RollbackError("bundle version %d was reverted as bad on this device" % b.version)
            if self.bundle is not None and b.version <= self.bundle.version:
                raise RollbackError("bundle version %d is not newer than active version %d"
                                    % (b.version, self.bundle.version))
            latest = self.latest
            if latest is not None and latest[0] == b.version and latest[1] != digest:
                # Mix-and-match: a validly signed document with the version
                # the timestamp names, but not the one it vouches for.
                raise PolicyError("bundle v%d does not match the digest in the latest timestamp"
                                  % b.version)
        except BundleError as exc:
            return None, self._refuse("bundle", str(exc))
        return b, None

    def _switch_to(self, slot, b, clock):
        s = self.state
        new = slots.copy_state(s)
        new["previous"], new["previous_version"] = s["active"], s["version"]
        new["active"], new["version"], new["trial"], new["reason"] = slot, b.version, True, None
        self._note_time(new, authenticated=b.issued_at)
        self.state = new
        now = self.trusted_time(clock)
        deadline = now + self.config.health_timeout
        self.pending = (b, deadline)
        self.phase = TRIAL
        return [(slots.SWITCH, new), (HEALTH_CHECK, b, now, deadline)]

    def health(self, ok, detail, clock):
        """The health check of the trial store finished. Returns actions."""
        if self.phase != TRIAL:
            return []
        b = self.pending[0]
        if not ok:
            return self._revert("health check failed: %s" % detail)
        new = slots.copy_state(self.state)
        new["trial"], new["previous"], new["previous_version"] = False, None, None
        if b.version > new["floor"]:
            new["floor"] = b.version
        self.state = new
        self.bundle = b
        self.pending = None
        self.phase = IDLE
        return [(slots.COMMIT, new), self._report("installed", "bundle v%d committed" % b.version)]

    def tick(self, clock):
        """Time passes: enforce the health-check deadline. Returns actions."""
        if self.phase == TRIAL and self.trusted_time(clock) > self.pending[1]:
            return self._revert("health check gave no answer before the deadline")
        return self.observe_clock(clock)

    def offer_root(self, raw, clock):
        """The next root version arrived. Returns actions."""
        try:
            new_root = policy.verify_root_update(self.root, raw, self.config.limits)
        except BundleError as exc:
            return self._refuse("root", str(exc))
        self.root, self.root_raw = new_root, raw
        return [(slots.WRITE_ROOT, raw), self._report("root-updated", "root v%d" % new_root.version)]

    def offer_timestamp(self, raw, clock):
        """A signed timestamp arrived. Returns actions."""
        try:
            ts = policy.verify_timestamp(self.root, raw, self.config.limits,
                                         last_time=self.state["last_timestamp"])
        except BundleError as exc:
            return self._refuse("timestamp", str(exc))
        new = slots.copy_state(self.state)
        new["last_timestamp"] = ts.time
        self._note_time(new, authenticated=ts.time)
        self.state = new
        self.latest = (ts.bundle_version, ts.bundle_sha256)
        return [(slots.SAVE, new)]

    # ------------------------------------------------------------ status

    def status(self, clock):
        """A JSON-able summary: version, state and why."""
        now = self.trusted_time(clock)
        s = self.state
        reasons = []
        b = self.bundle
        if b is None:
            state = "no-store"
        elif self.phase == TRIAL:
            state = "trial"
        else:
            state = "ok"
            if now >= b.expires_at:
                reasons.append("bundle v%d expired at %d" % (b.version, b.expires_at))
            since = s["last_timestamp"] or b.issued_at
            if now - since > b.policy.max_timestamp_age:
                reasons.append("no timestamp newer than %d s" % b.policy.max_timestamp_age)
            if now >= self.root.expires:
                # Still trusted: refusing it would cut the only path to a new root.
                reasons.append("root v%d expired at %d" % (self.root.version, self.root.expires))
            if reasons:
                state = "stale"
        return {
            "device": self.config.device_id,
            "state": state,
            "version": b.version if b is not None else None,
            "floor": s["floor"],
            "bad": list(s["bad"]),
            "root_version": self.root.version if self.root is not None else None,
            "trusted_time": now,
            "last_timestamp": s["last_timestamp"],
            "reasons": reasons,
            "last_revert": s["reason"],
            "agent_version": self.config.agent_version,
        }

    # ----------------------------------------------------------- helpers

    def _revert(self, reason, mark_bad=True):
        s = self.state
        new = slots.copy_state(s)
        bad = s["version"]
        if bad is not None:
            if mark_bad:
                if bad not in new["bad"]:
                    new["bad"].append(bad)
            elif bad not in new["retried"]:
                new["retried"].append(bad)
        new["active"], new["version"] = s["previous"], s["previous_version"]
        new["previous"], new["previous_version"], new["trial"], new["reason"] = None, None, False, reason
        self.state = new
        self.pending = None
        self.phase = IDLE
        report = self._report("reverted", "bundle v%s: %s" % (bad, reason))
        report[1]["version"] = bad
        return [(slots.REVERT, new), report]

    def _refuse_busy(self):
        return self._refuse("bundle", "an install is already waiting for its health check")

    def _refuse(self, kind, reason):
        return [(REFUSED, kind, reason), self._report("refused", "%s: %s" % (kind, reason))]

    def _report(self, event, detail):
        return (REPORT, {"event": event, "detail": detail, "device": self.config.device_id})
