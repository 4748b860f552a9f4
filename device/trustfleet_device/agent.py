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
    STALE (kind, reason)         -> a validly signed bundle OLDER than the
                                    installed one (a retained copy on another
                                    topic mid-rollout): not accepted, not reported

A bundle streamed in by a transport: begin_stream() names the slot to write
(or refuses), stream_too_large() refuses one over the size limit, and
offer_bundle(source, clock, slot, digest) verifies what was written.

States: IDLE (a committed store, or none yet) and TRIAL (switched to a new
store, waiting for the health check). Table of transitions:

    state  input                      -> actions                       next
    IDLE   valid newer bundle         -> WRITE_SLOT, SWITCH, HEALTH_CHECK TRIAL
    IDLE   invalid/same/bad bundle    -> REFUSED, REPORT               IDLE
    IDLE   signed, older bundle       -> STALE                         IDLE
    IDLE   the installed bundle again -> (nothing)                     IDLE
    TRIAL  health ok                  -> COMMIT, REPORT                IDLE
    TRIAL  health failed / deadline   -> REVERT, REPORT (marked bad)   IDLE
    TRIAL  health inconclusive        -> (HEALTH_CHECK again later,    TRIAL
           (network, not trust)           with backoff, from tick)
    TRIAL  deadline, only inconclusive-> REVERT, REPORT (not bad)      IDLE
                                         ("keep" policy: stay on trial)
    TRIAL  bundle                     -> REFUSED (busy)                TRIAL
    any    valid next root            -> WRITE_ROOT, REPORT            same
    any    valid newer timestamp      -> SAVE                          same
    boot   state says TRIAL           -> REVERT, REPORT (like MCUboot's test swap: a reboot
                                         before commit means the new store did not prove itself)

Rules: never accept a bundle version <= the committed floor or one reverted
as bad; an expired bundle or an old timestamp makes the device "stale" but
it keeps the store it has; a timestamp naming a newer bundle than the one
held makes it "behind" (stale after the policy's max_timestamp_age).

Time (docs/format.md, "Trusted time"): trusted time = max(clock, vouched,
last timestamp, firmware build time, persisted clock reading), where
- vouched is the newest time the offline keys vouch for: the issued_at of
  bundles installed here, each moving it at most the root's max_time_lead
  past the trusted time of its install (a future-dated bundle cannot push
  time years ahead);
- a timestamp (the online key) is refused when dated more than
  max_time_lead past max(vouched, firmware build time), so a thief of that
  key can neither expire pins early beyond that nor freeze the device with
  a far-future time; a root that removes a timestamp key forgets the time
  and freshness the old keys taught;
- a clock reading is persisted (for boards whose RTC resets) only when it
  is at most max_time_lead past authenticated time (vouched, the last
  timestamp, the firmware build time).
"""

import binascii
import hashlib

from trustfleet_device import VERSION, policy, slots
from trustfleet_device.errors import BundleError, OlderError, PolicyError, RollbackError
from trustfleet_device.limits import DEFAULT

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

HEALTH_CHECK = "health_check"
REPORT = "report"
REFUSED = "refused"
STALE = "stale"

IDLE = "idle"
TRIAL = "trial"

# A clock reading is persisted (so a board whose RTC resets still knows
# roughly the date) at most once per step.
_CLOCK_SAVE_STEP = const(3600)
# An inconclusive health check (the network, not the trust store) is asked
# again after this long, doubling up to the cap.
_RETRY_FIRST = const(5)
_RETRY_CAP = const(300)

# How a revert without a bad mark starts its reason (after "bundle vN: "): the
# server's rollouts count such a device as pending, not failed.
UNREACHABLE = "endpoints unreachable, not marked bad"

REVERT_ON_UNREACHABLE = "revert"
KEEP_ON_UNREACHABLE = "keep"


class Config:
    """Per-device settings that do not come from signed documents."""

    def __init__(self, fleet=None, firmware_time=0, health_timeout=120, limits=DEFAULT,
                 device_id=None, managed=False, agent_version=VERSION,
                 on_unreachable=REVERT_ON_UNREACHABLE):
        if on_unreachable not in (REVERT_ON_UNREACHABLE, KEEP_ON_UNREACHABLE):
            raise ValueError("on_unreachable must be 'revert' or 'keep', not %r" % (on_unreachable,))
        self.on_unreachable = on_unreachable
        self.fleet = fleet
        self.firmware_time = firmware_time
        self.health_timeout = health_timeout
        self.limits = limits
        self.device_id = device_id
        self.managed = managed
        self.agent_version = agent_version


class Agent:
    """Decides what to do with documents; the caller performs the actions."""

    # Where signatures and documents are checked: the policy module, or an object with its
    # four verify/load functions (the fleet simulator's cache of verified documents, keyed
    # by their digest; every version, time and rollback rule is still applied per device).
    policy = policy

    def __init__(self, config):
        self.config = config
        self.root = None
        self.root_raw = None
        self.state = slots.fresh_state()
        self.bundle = None
        self.phase = IDLE
        # While on TRIAL: [bundle, deadline, retry at, next delay, last inconclusive detail, sha256]
        self.pending = None
        # SHA-256 of the active slot's document, once known: the same bytes offered again
        # (a retained copy after every restart) are ignored, not refused and reported.
        self.active_digest = None
        self._slot_docs = {}
        self._slots_touched = False  # a slot was written since boot: the boot sources may be stale

    # ------------------------------------------------------------ boot

    def boot(self, root_raw, state, slot_docs, clock):
        """Start from what storage holds. Returns actions. Raises: BundleError if the root is unusable."""
        self.root = self.policy.load_trusted_root(root_raw, self.config.limits, self.config.fleet)
        self.root_raw = root_raw
        self.state = slots.copy_state(state)
        self._slot_docs = slot_docs
        actions = []
        if self.state["trial"]:
            # A power cut and a crash caused by the new store look the same
            # here. Revert either way; allow one more try, then call it bad.
            again = self.state["version"] in self.state["retried"]
            actions.extend(self._revert("reboot before commit", mark_bad=again))
        self.bundle = self._load_active(slot_docs, actions, clock)
        b = self.bundle if self.bundle is not None else self.trial_bundle()
        if b is not None and self.state["vouched"] == 0:
            # A state written before "vouched" existed: the installed bundle vouches
            # (again at every boot until the next state write persists it).
            self._vouch(self.state, b.issued_at, clock)
        return actions

    def _verify(self, doc, installed_version=None, now=None):
        """Verify a bundle given as bytes (in RAM) or as a source (in flash). Raises: BundleError."""
        return self.policy.verify_bundle(self.root, doc, self.config.limits, installed_version, now)

    def _load_active(self, slot_docs, actions, clock):
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
                    if b.version == s["floor"] and b.version not in s["bad"]:
                        new = slots.copy_state(s)
                        new["active"], new["version"], new["trial"] = other, b.version, False
                        self.state = new
                        actions.append((slots.COMMIT, new))
                        return b
                    if b.version > s["floor"] and b.version not in s["bad"]:
                        # Never committed, so never proven: it goes on trial with a
                        # health check like any new bundle, with nothing to go back to.
                        new = slots.copy_state(s)
                        new["active"], new["version"] = None, None
                        self.state = new
                        actions.extend(self._switch_to(other, b, clock))
                        return None
                except BundleError:
                    pass
            new = slots.copy_state(s)
            new["active"], new["version"] = None, None
            self.state = new
            actions.append((slots.SAVE, new))
            return None

    # ------------------------------------------------------------ time

    def trusted_time(self, clock):
        """max(clock, vouched time, last timestamp, firmware build time, persisted clock reading)."""
        s = self.state
        return max(clock, s["time"], s["vouched"], s["last_timestamp"], self.config.firmware_time)

    def time_bound(self, state=None):
        """The latest time a timestamp may teach: max_time_lead past what the offline keys vouch for."""
        s = self.state if state is None else state
        return max(s["vouched"], self.config.firmware_time) + self.root.time_lead

    def _vouch(self, new_state, issued_at, clock):
        """An offline-signed issued_at moves vouched time, by at most max_time_lead past now."""
        most = self.trusted_time(clock) + self.root.time_lead
        new_state["vouched"] = max(new_state["vouched"], min(issued_at, most))

    def _note_clock(self, new_state, clock):
        """Persist a clock reading now and then, only when it is at most max_time_lead past
        authenticated time (an NTP liar's far future would otherwise stay, refusing every
        bundle as expired); a reading further ahead still counts, but only while it lasts."""
        base = max(new_state["last_timestamp"], new_state["vouched"], self.config.firmware_time)
        known = max(new_state["time"], base)
        if known + _CLOCK_SAVE_STEP < clock <= base + self.root.time_lead:
            new_state["time"] = clock

    def observe_clock(self, clock):
        """Persist a plausible clock reading now and then. Returns actions."""
        new = slots.copy_state(self.state)
        self._note_clock(new, clock)
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

    def next_health_retry(self, clock):
        """Seconds until an inconclusive health check is asked again, or None."""
        p = self.pending
        if p is None or p[2] is None:
            return None
        return max(p[2] - self.trusted_time(clock), 0)

    def busy(self):
        """True while a trial waits for its health check: the inactive slot is then the way back."""
        return self.phase == TRIAL

    def begin_stream(self):
        """A bundle is about to be streamed in. Returns (slot to write it to, None) or (None, refusal actions)."""
        if self.phase == TRIAL:
            return None, self._refuse_busy()
        self._known_active_digest()  # before the inactive slot is written over
        return self.inactive_slot(), None

    def _known_active_digest(self):
        """The active document's SHA-256: read once from the boot sources while no slot has
        been written since, then kept from the commits. None when not known."""
        if self.active_digest is None and not self._slots_touched and self.bundle is not None:
            doc = self._slot_docs.get(self.state["active"])
            if doc is not None:
                self.active_digest = _sha256_of(doc)
        return self.active_digest

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
            if self.phase != TRIAL and digest is not None and digest == self._known_active_digest():
                return []  # the installed bundle again
            b, refusal = self._accept_bundle(doc, clock, digest)
            if refusal:
                return refusal
            return self._switch_to(slot, b, clock, digest)
        digest = hashlib.sha256(doc).digest()
        if self.phase != TRIAL and digest == self._known_active_digest():
            return []  # the installed bundle again (a retained copy after a restart)
        b, refusal = self._accept_bundle(doc, clock, digest)
        if refusal:
            return refusal
        slot = self.inactive_slot()
        return [(slots.WRITE_SLOT, slot, doc)] + self._switch_to(slot, b, clock, digest)

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
            latest = s["latest"]
            if latest is not None and latest[0] == b.version and latest[1] != _hex(digest):
                # Mix-and-match: a validly signed document with the version
                # the timestamp names, but not the one it vouches for.
                raise PolicyError("bundle v%d does not match the digest in the latest timestamp"
                                  % b.version)
        except OlderError as exc:
            # Signed, and older than the floor: a stale retained copy, not news to report.
            return None, [(STALE, "bundle", str(exc))]
        except BundleError as exc:
            return None, self._refuse("bundle", str(exc))
        return b, None

    def _switch_to(self, slot, b, clock, digest=None):
        s = self.state
        self._slots_touched = True
        self.active_digest = None
        new = slots.copy_state(s)
        new["previous"], new["previous_version"] = s["active"], s["version"]
        new["active"], new["version"], new["trial"], new["reason"] = slot, b.version, True, None
        self._vouch(new, b.issued_at, clock)
        self.state = new
        now = self.trusted_time(clock)
        deadline = now + self.config.health_timeout
        self.pending = [b, deadline, None, _RETRY_FIRST, None, digest]
        self.phase = TRIAL
        return [(slots.SWITCH, new), (HEALTH_CHECK, b, now, deadline)]

    def health(self, ok, detail, clock):
        """The health check of the trial store finished. Returns actions.

        ok: True (every endpoint accepted), False (the trust store or the server
        said no: the version is marked bad) or None (inconclusive: the network
        failed before any trust decision; asked again later, never marked bad).
        """
        if self.phase != TRIAL:
            return []
        p = self.pending
        b = p[0]
        if ok is None:
            p[4] = detail
            now = self.trusted_time(clock)
            if now >= p[1] and self.config.on_unreachable != KEEP_ON_UNREACHABLE:
                return self._revert(UNREACHABLE + ": " + detail, None)
            p[2] = now + p[3]
            p[3] = min(p[3] * 2, _RETRY_CAP)
            return []
        if not ok:
            return self._revert("health check failed: %s" % detail)
        new = slots.copy_state(self.state)
        new["trial"], new["previous"], new["previous_version"] = False, None, None
        if b.version > new["floor"]:
            new["floor"] = b.version
        self.state = new
        self.bundle = b
        self.active_digest = p[5]
        self.pending = None
        self.phase = IDLE
        return [(slots.COMMIT, new), self._report("installed", "bundle v%d committed" % b.version)]

    def tick(self, clock):
        """Time passes: retry an inconclusive health check, enforce its deadline. Returns actions."""
        if self.phase == TRIAL:
            p = self.pending
            now = self.trusted_time(clock)
            if p[2] is not None and now >= p[2]:
                p[2] = None
                return [(HEALTH_CHECK, p[0], now, p[1])]
            if now > p[1] and p[4] is None:
                return self._revert("health check gave no answer before the deadline")
        return self.observe_clock(clock)

    def clear_bad(self, version):
        """An operator clears a bad mark: `version` may be installed again. Returns actions.
        Raises: ValueError when it is not marked bad."""
        s = self.state
        if version not in s["bad"]:
            raise ValueError("version %r is not marked bad on this device (bad: %s)"
                             % (version, ", ".join([str(v) for v in s["bad"]]) or "none"))
        new = slots.copy_state(s)
        new["bad"].remove(version)
        if version in new["retried"]:
            new["retried"].remove(version)
        self.state = new
        return [(slots.SAVE, new), self._report("bad-cleared", "bundle v%d may be installed again" % version)]

    def offer_root(self, raw, clock):
        """The next root version arrived. Returns actions."""
        try:
            new_root = self.policy.verify_root_update(self.root, raw, self.config.limits)
        except BundleError as exc:
            return self._refuse("root", str(exc))
        old = self.root
        self.root, self.root_raw = new_root, raw
        actions = []
        kept = new_root.roles["timestamp"].kids
        for kid in old.roles["timestamp"].kids:
            if kid not in kept:
                # A timestamp key rotated out: forget the time and freshness it taught
                # (what a thief taught with it goes too), before the new root is written.
                new = slots.copy_state(self.state)
                new["last_timestamp"], new["latest"] = 0, None
                self.state = new
                actions.append((slots.SAVE, new))
                break
        actions.append((slots.WRITE_ROOT, raw))
        actions.append(self._report("root-updated", "root v%d" % new_root.version))
        return actions

    def offer_timestamp(self, raw, clock):
        """A signed timestamp arrived. Returns actions."""
        try:
            ts = self.policy.verify_timestamp(self.root, raw, self.config.limits,
                                              last_time=self.state["last_timestamp"])
        except BundleError as exc:
            return self._refuse("timestamp", str(exc))
        bound = self.time_bound()
        if ts.time > bound:
            return self._refuse("timestamp", "dated %d, more than %d s past %d, the newest time the "
                                "offline keys vouch for" % (ts.time, self.root.time_lead,
                                                            bound - self.root.time_lead))
        new = slots.copy_state(self.state)
        new["last_timestamp"] = ts.time
        old = new["latest"]
        since = old[2] if old is not None and old[0] == ts.bundle_version else ts.time
        new["latest"] = [ts.bundle_version, _hex(ts.bundle_sha256), since]
        self.state = new
        return [(slots.SAVE, new)]

    # ------------------------------------------------------------ status

    def state_name(self, clock):
        """(state, reasons): trial, no-store, ok, behind or stale, and why."""
        if self.phase == TRIAL:
            return "trial", []
        b = self.bundle
        if b is None:
            return "no-store", []
        now = self.trusted_time(clock)
        s = self.state
        age = b.policy.max_timestamp_age
        reasons = []
        if now >= b.expires_at:
            reasons.append("bundle v%d expired at %d" % (b.version, b.expires_at))
        since = s["last_timestamp"] or b.issued_at
        if now - since > age:
            reasons.append("no timestamp newer than %d s" % age)
        if now >= self.root.expires:
            # Still trusted: refusing it would cut the only path to a new root.
            reasons.append("root v%d expired at %d" % (self.root.version, self.root.expires))
        state = "stale" if reasons else "ok"
        latest = s["latest"]
        if latest is not None and latest[0] > b.version:
            why = "the latest timestamp names v%d, this device holds v%d" % (latest[0], b.version)
            if latest[0] in s["bad"]:
                why += " (v%d was reverted as bad here)" % latest[0]
            reasons.append(why)
            if now - latest[2] > age:
                reasons.append("behind for more than %d s" % age)
                state = "stale"
            elif state == "ok":
                state = "behind"
        return state, reasons

    def status(self, clock):
        """A JSON-able summary: version, state and why."""
        now = self.trusted_time(clock)
        s = self.state
        state, reasons = self.state_name(clock)
        b = self.bundle
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
            # mark_bad: True, bad for good; False, one more try (a reboot during the
            # trial); None, nothing learned (its endpoints were unreachable).
            if mark_bad:
                if bad not in new["bad"]:
                    new["bad"].append(bad)
            elif mark_bad is not None and bad not in new["retried"]:
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


def _hex(digest):
    return binascii.hexlify(digest).decode()


def _sha256_of(doc):
    """SHA-256 of a document given as bytes or as a source, read in small pieces."""
    h = hashlib.sha256()
    if not hasattr(doc, "read_at"):
        h.update(doc)
        return h.digest()
    at = 0
    while True:
        piece = doc.read_at(at, 512)
        if not piece:
            return h.digest()
        h.update(piece)
        at += len(piece)
