"""`trustfleet serve`: ingest device statuses and reports, publish timestamps, drive rollouts.

One process talks to one broker for one fleet (docs/topics.md), with paho-mqtt
2.x driven by hand (`loop()` in this thread), so ingest, rollout steps and
timestamps share one thread and one database connection:

- The broker connection is a serve.link.Link: MQTT 5 first, 3.1.1 when the
  broker refuses it. Reconnects wait with trustfleet_device.backoff, the
  devices' rule (1 s doubling to 60 s, equal jitter).
- Ingest: on MQTT 5 with shared subscriptions, live statuses and reports
  come through `$share/trustfleet/tf/<fleet>/status/+` (and report/+), so
  several `serve` workers split them. Brokers need not send retained
  messages to a shared subscription, so after every connect the server also
  subscribes plainly to `tf/<fleet>/status/+` to read the retained statuses,
  and drops that subscription once they are in (the first non-retained
  message on it, or one idle second). Without shared subscriptions (3.1.1,
  e.g. NATS) one plain subscription does both, and only the leader holds it
  (taken when it gains the lead, dropped when it loses it), so several
  workers never write each status several times. A status is decoded and
  validated once, as it arrives, into the row the store writes
  (fleetdb.check_status_message; a malformed one is counted in `rejected` and
  dropped); the newest per device waits, and batches are written in a thread
  of their own (fleetdb.store_statuses, one transaction each) while the next
  one gathers. Reports are checked when their batch is written.
- Nothing is stepped before that first sync: a rollout judged on an empty
  table would pass every wave.
- Roots published on `tf/<fleet>/root/<n>` extend the trusted chain one
  version at a time, exactly as a device walks it. Every document this
  server publishes is verified against the current root first, and refused
  (a rollout halts) when it does not verify: a wave's bundle with
  policy.verify_bundle, a timestamp with policy.verify_timestamp.
- Timestamps (COSE_Sign1 by the online timestamp key) name the latest bundle
  that reached the whole fleet: the higher of the last rollout that finished
  and the valid bundle retained on `tf/<fleet>/bundle`.
- Rollouts: every few seconds `rollout.step` runs on the stored devices;
  the worker claims the rollout's revision before it acts (fleetdb), records
  wave topics before publishing them, and saves the new state after, with
  the result of a wave that ended (rollout.ended_wave: the counts it was
  decided on) in the same transaction.
- SIGTERM/SIGINT: finish the current step, flush the queue, disconnect.
  On MQTT 5 the disconnect ends the session, so the broker stops handing
  this worker its share of the shared subscriptions. The client id is
  stable by default (default_client_id: fleet and host name), and serve
  resumes its session on connect: a worker restarted after a crash takes
  back the dead one's session, its queued statuses and its share at once.
  A worker that never comes back loses its session after SESSION_EXPIRY s.
- Leadership: every worker ingests, but only one per fleet, the leader, publishes
  timestamps, steps rollouts and repairs retained documents. It holds the fleet's
  lease in the store (fleetdb.acquire_lease, holder = the client id), LEASE_LENGTH
  s long, renewed every LEASE_RENEW s; the others try every LEASE_TRY s, so a killed
  leader is replaced within LEASE_LENGTH + LEASE_TRY s. A worker acts as leader only
  while its own renewal is younger than LEASE_LENGTH - LEASE_MARGIN s (checked before
  each leader action), and its rollout claims check the lease in the same transaction.
  A worker that takes over from an expired holder ends the dead worker's MQTT session
  (a clean connect under its client id), so the broker stops handing it a share of
  the statuses, and re-reads the retained statuses before it steps a rollout. A clean
  exit releases the lease.
- Retained state is owned: after every connect serve compares what the
  broker holds on the document topics with what they must hold (roots it
  knows beyond its first, the fleet bundle, the running rollout's wave
  topics, a timestamp) and publishes again what the broker lost.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from trustfleet_device import documents as device_docs
from trustfleet_device import policy, topics
from trustfleet_device import status as status_schema
from trustfleet_device.backoff import Backoff
from trustfleet_device.errors import BundleError
from trustfleet_server import audit, documents, keys, rollout, times
from trustfleet_server.errors import BrokerError, FleetStoreError, UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.fleet.messages import StatusError
from trustfleet_server.mqtturl import BrokerURL
from trustfleet_server.serve.limits import FENCE_WINDOW, Limits
from trustfleet_server.serve.link import Link, PublishRefused, SubscribeRefused

log = logging.getLogger("trustfleet.serve")

SHARE_GROUP = "trustfleet"
BOOT_IDLE = 1.0               # retained statuses are in when none came for this long
BOOT_MAX = 30.0
FLUSH_EVERY = 0.2
BATCH_MAX = 2000
BATCH_MIN = 200               # ... or this many, as soon as the store is free for the next batch
PRUNE_EVERY = 5.0             # seconds between sweeps of the per-device rate buckets
# Flood limits (issue 10 finding 8): one device cannot starve the others or grow serve's memory.
# Pending statuses are one per device (a newer status replaces the pending one: nothing is
# lost, a status is the device's whole state); pending reports are capped. Each device has a
# token bucket per kind (Limits): the excess is dropped and counted. A device that keeps going
# is fenced: disabled at the broker for a while (see _fence).
MAX_PENDING_REPORTS = 10_000
RESYNC_QUIET = 0.25            # after a fence, re-read retained statuses once drops pause this long
TIME_LEAD_WARNING = 7 * 86400   # warn this long before devices would refuse timestamps
RESYNC_MAX_WAIT = 5.0          # ... or this long after the fence at the latest
FENCE_ANSWER_WAIT = 2.0        # the broker's dynamic security plugin answers within this
FENCE_RETRY = 5.0              # seconds between tries to lift a fence the broker did not lift
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE = DYNSEC_TOPIC + "/response"
DROP_LOG_EVERY = 60.0          # one log line per device and kind per this many seconds
MAX_PENDING_ROOTS = 8
RECONNECT_FIRST_MS = 1000     # reconnect delays: 1 s doubling to 60 s, equal jitter (backoff.py)
RECONNECT_CAP_MS = 60000

MAX_CLIENT_ID = 64
LEASE_LENGTH = 6.0             # seconds a leader's lease lasts from its last renewal
LEASE_RENEW = 2.0              # the leader renews this often
LEASE_TRY = 1.0                # the others try to take it this often
LEASE_MARGIN = 1.0             # a leader stops acting this long before its lease would expire

_SUB_DOCS, _SUB_LIVE, _SUB_BOOT = 1, 2, 3


def default_client_id(fleet: str, host: str | None = None) -> str:
    """`tfserve-<fleet>-<host>`: the same for every restart of serve for this fleet on this host.

    Longer than MAX_CLIENT_ID characters: cut, with 8 hex digits of its SHA-256
    so that two long names stay apart. Several workers of one fleet on one
    host need distinct ids (--client-id), else they take the id from each other.
    """
    host = host if host is not None else socket.gethostname().split(".")[0]
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", host) or "host"
    cid = f"tfserve-{fleet}-{host}"
    if len(cid) > MAX_CLIENT_ID:
        cid = cid[:MAX_CLIENT_ID - 9] + "-" + hashlib.sha256(cid.encode()).hexdigest()[:8]
    return cid


# --------------------------------------------------------------------------- the service


@dataclasses.dataclass
class Stats:
    statuses: int = 0
    ignored: int = 0
    rejected: int = 0
    reports: int = 0
    timestamps: int = 0
    waves: int = 0
    cleared: int = 0
    connects: int = 0
    restored: int = 0             # retained documents published again after the broker lost them
    rate_limited: int = 0         # statuses and reports dropped by a device's rate limit
    coalesced: int = 0            # pending statuses replaced by a newer one from the same device
    dropped: int = 0              # reports dropped because the pending reports were full
    fenced: int = 0               # devices disabled at the broker for flooding
    resyncs: int = 0              # retained-status re-reads after a fence
    protocol: str | None = None
    shared: bool = False
    led: bool = False             # this worker led the fleet at some point
    leaderships: int = 0          # times it became the leader
    events: list[str] = dataclasses.field(default_factory=list)


class FenceUnavailable(BrokerError):
    """The broker does not let serve disable devices (no dynamic security plugin, or its ACL)."""


class FleetServer:
    """The long-running service behind `trustfleet serve`.

    Args:
        url: the broker, or the nodes of a clustered broker (serve.link.Link).
        fleet: the fleet served (must be the root's fleet).
        root_raws: the trusted root chain, oldest first (signed roots).
        db: an open fleetdb.FleetDB.
        timestamp_key: the online timestamp key, or None for no timestamps.
        timestamp_every: seconds between timestamps.
        step_every: seconds between rollout steps.
        clock: wall-clock seconds (tests pass a fake).
        client_id: MQTT client id; default_client_id(fleet) when None.
        limits: per-device rate limits and fencing (Limits()).

    Raises:
        BundleError: the root chain does not verify.
        UsageError: the fleet does not match the root, or the timestamp key
            is not a timestamp key of the root.
    """

    def __init__(self, url: BrokerURL, fleet: str, root_raws: Sequence[bytes], db: fleetdb.FleetDB,
                 timestamp_key: Any = None, timestamp_every: float = 300, step_every: float = 5,
                 clock: Callable[[], float] = time.time, client_id: str | None = None,
                 limits: Limits | None = None) -> None:
        root = policy.load_trusted_root(root_raws[0])
        root = policy.walk_root_chain(root, list(root_raws[1:])) if len(root_raws) > 1 else root
        if root.fleet != fleet:
            raise UsageError(f"--fleet {fleet} does not match the root's fleet {root.fleet}")
        self.url, self.fleet, self.root, self.db = url, fleet, root, db
        self.timestamp_key = timestamp_key
        self.timestamp_every, self.step_every = timestamp_every, step_every
        self.clock = clock
        self._default_id = client_id is None
        self.link = Link(url, client_id or default_client_id(fleet), self._on_message, resume=True)
        self.stats = Stats()
        self._pending_roots: dict[int, bytes] = {}
        self._fleet_bundle: tuple[int, bytes] | None = None  # (version, sha256) on tf/<fleet>/bundle
        self._fleet_doc: tuple[int, bytes] | None = None  # (version, raw): the newest seen there
        self._vouched = 0  # the newest issued_at among the fleet bundles seen: devices bound time by it
        self._lead_warned = -1.0  # when the time-lead warning was last logged
        # Roots serve answers for: those given beyond the first, and those the broker held.
        first = policy.load_trusted_root(root_raws[0]).version
        self._chain = {first + i: bytes(raw) for i, raw in enumerate(root_raws)}
        self._owned_roots = {v: raw for v, raw in self._chain.items() if v > first}
        self._held: dict[str, bytes] = {}  # what the broker holds on document topics, since connect
        self._not_ours: set[str] = set()  # topics the broker refused to take from serve (its ACL)
        self._restore_due = False
        self._next_restore = 0.0
        self._statuses: dict[str, tuple] = {}  # device -> newest pending status, checked
        self._first_rejected: tuple[str, str] | None = None  # malformed statuses since the last flush
        self._rejected_since = 0
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None  # the store's thread
        self._writing: tuple | None = None  # (future, statuses, reports) of the batch being written
        self._next_prune = 0.0
        self._reports: collections.deque[tuple[str, bytes, int]] = collections.deque()
        self._buckets: dict[tuple[str, str], list[float]] = {}  # (kind, device) -> [tokens, at]
        self._drop_logged: dict[tuple[str, str], float] = {}
        self.limits = limits or Limits()
        self._over: dict[str, list[float]] = {}  # device -> [drops in window, window start]
        self._fence_due: dict[str, int] = {}  # device -> drops that earned it a fence
        self._fenced: dict[str, float] = {}  # device -> monotonic time its fence ends
        self._fences_loaded = False
        self._can_fence: bool | None = None  # None: not tried since the last connect
        self._resync_at: float | None = None  # re-read retained statuses by then (fencing)
        self._last_drop = 0.0
        self._recorded: tuple[int, bytes] | None = None  # fleet bundle recorded as published
        self._boot: dict[str, Any] | None = None
        self.synced = False
        self._stop = threading.Event()
        self._next_flush = self._next_step = self._next_timestamp = 0.0
        self.leading = False
        self._elected = False  # run() takes the lease before leader actions
        self._lead_until = 0.0  # monotonic: act as leader until then (last renewal + length - margin)
        self._next_lease = 0.0
        self._warned_no_bundle = False
        self.last_timestamp: int | None = None  # the `time` of the newest timestamp this worker published
        if timestamp_key is not None:
            self._check_timestamp_key()

    # -- control ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to finish (thread-safe; also what SIGTERM/SIGINT do)."""
        self._stop.set()

    def _now(self) -> int:
        return int(self.clock())

    def run(self, once: bool = False, duration: float | None = None) -> Stats:
        """Serve until stopped, for `duration` seconds, or (once) one full round.

        `once`: connect, read the retained statuses, ingest, step the rollout
        once, publish one timestamp, and return. Raises: BrokerError (once
        only, also for a refused or unacknowledged publish: a long-running
        server logs it and retries), FleetStoreError.
        """
        restore = self._install_signals()
        self._elected = True
        if once:
            self.link.session_expiry = 0  # nothing to resume: leave no session behind
            self.link.resume = False
            if self._default_id:  # never take the stable id from a long-running worker
                self.link.client_id = f"{self.link.client_id[:MAX_CLIENT_ID - 12]}-once-{uuid.uuid4().hex[:6]}"
        end = time.monotonic() + duration if duration else None
        backoff = Backoff(RECONNECT_FIRST_MS, RECONNECT_CAP_MS)
        stepped = timestamped = False
        try:
            while not self._stop.is_set():
                if end is not None and time.monotonic() >= end:
                    break
                if not self.link.connected:
                    try:
                        self._connect()
                        backoff.reset()
                    except BrokerError as exc:
                        if once:
                            raise
                        delay = backoff.next_ms() / 1000
                        log.warning("%s; retrying in %.1f s", exc, delay)
                        self._stop.wait(delay if end is None else max(0.0, min(delay, end - time.monotonic())))
                        continue
                self.link.loop(0.05)
                mono = time.monotonic()
                self._check_boot(mono)
                if mono >= self._next_flush or self.pending() >= (
                        BATCH_MIN if self._writing is None or self._writing[0].done() else BATCH_MAX):
                    self._flush()
                    self._next_flush = mono + FLUSH_EVERY
                if (self._restore_due and self.link.connected and mono >= self._next_restore
                        and self._leads(mono)):
                    # Needs only the store, not the statuses: at once; after a failure, next step.
                    self._restore_due = not self._guard(self._restore_retained, fatal=once)
                    self._next_restore = mono + self.step_every
                if self.synced and self.link.connected and mono >= self._next_lease:
                    self._lease_step(mono)
                    if once and not self.leading:
                        log.info("another worker leads fleet %s; --once only ingested", self.fleet)
                        break
                if not self.synced or not self.link.connected:
                    continue
                if self._can_fence is not False:
                    self._guard(functools.partial(self._fence_step, mono), fatal=once)
                if not self._leads(mono) or not self._read_done():
                    continue
                if mono >= self._next_step:
                    self._guard(self._drive_rollout, fatal=once)
                    self._next_step = mono + self.step_every
                    stepped = True
                if self.timestamp_key is not None and mono >= self._next_timestamp:
                    if self._guard(self._publish_timestamp, fatal=once):
                        self._next_timestamp = mono + self.timestamp_every
                    else:
                        self._next_timestamp = mono + min(self.timestamp_every, 5.0)
                    timestamped = True
                if once and stepped and (timestamped or self.timestamp_key is None):
                    break
        finally:
            self._flush(wait=True)
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None
            self._release_lease()
            self.link.close()
            restore()
        return self.stats

    # -- leadership ------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        """This worker's name in the lease: its MQTT client id."""
        return self.link.client_id

    def live(self) -> dict:
        """A snapshot of this worker's state for the console and /metrics (called from their
        thread: plain reads of values this thread replaces whole)."""
        s = self.stats
        return {"worker": self.worker_id, "fleet": self.fleet, "leading": self.leading,
                "connected": self.link.connected, "broker": str(self.link.url),
                "protocol": s.protocol, "synced": self.synced, "connects": s.connects,
                "statuses": s.statuses, "ignored": s.ignored, "rejected": s.rejected,
                "reports": s.reports, "rate_limited": s.rate_limited, "dropped": s.dropped,
                "fenced": s.fenced, "waves": s.waves, "cleared": s.cleared, "restored": s.restored,
                "timestamps": s.timestamps, "last_timestamp": self.last_timestamp,
                "timestamp_every": self.timestamp_every if self.timestamp_key is not None else None,
                "root_version": self.root.version}

    def _leads(self, mono: float) -> bool:
        """Whether this worker may act as leader now (its lease renewal is recent enough)."""
        if self.leading and mono >= self._lead_until:
            self._lose("its lease could not be renewed in time")
        return self.leading

    def _read_done(self) -> bool:
        return self._boot is None or "done" in self._boot

    def _lease_step(self, mono: float) -> None:
        """Renew the lease (leader) or try to take it (the others)."""
        previous = None
        try:
            if not self.leading:
                previous = self.db.lease(self.fleet)
            held = self.db.acquire_lease(self.fleet, self.worker_id, time.time(), LEASE_LENGTH)
        except FleetStoreError as exc:
            # Unknown, not lost: a leader goes on until its last renewal is too old (_leads).
            log.warning("%s", exc)
            self._next_lease = mono + LEASE_TRY
            return
        self._next_lease = mono + (LEASE_RENEW if held else LEASE_TRY)
        if held:
            self._lead_until = mono + LEASE_LENGTH - LEASE_MARGIN
            if not self.leading:
                self._gain(previous)
        elif self.leading:
            self._lose("another worker holds the lease")

    def _gain(self, previous: tuple[str, float] | None) -> None:
        self.leading = True
        self.stats.led = True
        self.stats.leaderships += 1
        self._restore_due, self._next_restore = True, 0.0
        self._next_step = self._next_timestamp = 0.0
        dead = previous[0] if previous is not None and previous[0] != self.worker_id else None
        log.info("worker %s now leads fleet %s%s", self.worker_id, self.fleet,
                 f" (taking over from {dead}, whose lease expired)" if dead else "")
        if dead is not None:
            self._end_session(dead)
            if self.stats.shared:
                self._reread_statuses()  # what the broker queued for the dead worker is lost to us
        if not self.stats.shared:
            self._follow_statuses()

    def _follow_statuses(self) -> None:
        """No shared subscriptions: the leader alone subscribes to statuses and reports (the
        retained statuses come first, read before the next rollout step)."""
        if not self.link.connected:
            return
        now = time.monotonic()
        self._boot = {"shared": False, "last": now, "start": now}
        try:
            self.link.subscribe(topics.statuses(self.fleet), _SUB_LIVE)
            self.link.subscribe(topics.reports(self.fleet), _SUB_LIVE)
        except BrokerError as exc:
            log.warning("%s; connecting again", exc)
            self.link.close()  # the next connect subscribes, as this worker leads

    def _lose(self, why: str) -> None:
        self.leading = False
        log.warning("worker %s no longer leads fleet %s: %s", self.worker_id, self.fleet, why)
        if not self.stats.shared and self.link.connected:
            self.link.unsubscribe(topics.statuses(self.fleet))
            self.link.unsubscribe(topics.reports(self.fleet))

    def _end_session(self, client_id: str) -> None:
        """End a dead worker's MQTT 5 session: a clean connect under its client id, then a
        disconnect. Until then the broker hands it a share of the statuses."""
        if not self.link.mqtt5 or not self.link.shared_subscriptions:
            return
        ghost = Link(self.url, client_id, None, session_expiry=0)
        try:
            ghost.open()
        except BrokerError as exc:
            log.warning("could not end the MQTT session of %s (%s); the broker keeps its share of "
                        "the statuses until the session expires", client_id, exc)
        finally:
            ghost.close()

    def _release_lease(self) -> None:
        if not self.leading:
            return
        self.leading = False
        try:
            self.db.release_lease(self.fleet, self.worker_id)
        except FleetStoreError as exc:
            log.warning("%s; the lease expires by itself", exc)
            return
        log.info("worker %s released the lead of fleet %s", self.worker_id, self.fleet)

    def _guard(self, fn: Callable[[], Any], fatal: bool = False) -> bool:
        """Run one periodic job; a broker or database failure is logged and retried next round.

        With `fatal` (--once: there is no next round) the failure is raised instead.
        """
        try:
            fn()
            return True
        except (BrokerError, FleetStoreError) as exc:
            if fatal:
                raise
            log.warning("%s", exc)
            return False

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for s in old:
            signal.signal(s, lambda signum, frame: self.stop())

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
        return restore

    # -- connection ---------------------------------------------------------------

    def _connect(self) -> None:
        self.link.open()
        try:
            self._subscribe()
        except BrokerError:
            self.link.close()  # half-subscribed is not connected: start over
            raise

    def _subscribe(self) -> None:
        self.stats.connects += 1
        self.stats.protocol = "MQTT 5" if self.link.mqtt5 else "MQTT 3.1.1"
        shared = self.link.mqtt5 and self.link.shared_subscriptions
        self.stats.shared = shared
        log.info("connected to %s (%s%s)", self.link.url, self.stats.protocol,
                 ", shared subscriptions" if shared else "")
        f = self.fleet
        self._held = {}  # the broker may have lost anything: read it again
        self.link.subscribe(topics.roots(f), _SUB_DOCS)
        self.link.subscribe(topics.bundle(f), _SUB_DOCS)
        self.link.subscribe(topics.bundle(f) + "/+/+", _SUB_DOCS)  # group and bucket topics
        self.link.subscribe(topics.timestamp(f), _SUB_DOCS)
        # The retained documents came before the SUBACKs that followed them: compare once synced.
        self._restore_due, self._next_restore = True, 0.0
        if shared:
            self.link.subscribe(f"$share/{SHARE_GROUP}/{topics.statuses(f)}", _SUB_LIVE)
            self.link.subscribe(f"$share/{SHARE_GROUP}/{topics.reports(f)}", _SUB_LIVE)
            self.link.subscribe(topics.statuses(f), _SUB_BOOT)  # retained statuses, then dropped
        elif self.leading or not self._elected:  # the others wait for the lead (_follow_statuses)
            self.link.subscribe(topics.statuses(f), _SUB_LIVE)
            self.link.subscribe(topics.reports(f), _SUB_LIVE)
        self._can_fence = None  # this broker (or its config) may be new: ask again when needed
        now = time.monotonic()
        self._boot = {"shared": shared, "last": now, "start": now}

    def _check_boot(self, mono: float) -> None:
        """End the retained-status read: idle for BOOT_IDLE, or BOOT_MAX in all."""
        b = self._boot
        if b is None or "done" in b:
            return
        if mono - b["last"] >= BOOT_IDLE or mono - b["start"] >= BOOT_MAX:
            self._end_boot()

    def _end_boot(self) -> None:
        b = self._boot
        if b is None or "done" in b:
            return
        b["done"] = True
        if b["shared"] and self.link.connected:
            self.link.unsubscribe(topics.statuses(self.fleet))
        self._flush(wait=True)  # the retained statuses are stored before anything is stepped
        if not self.synced:
            log.info("read the retained statuses of fleet %s", self.fleet)
        self.synced = True

    # -- messages -------------------------------------------------------------------

    def _on_message(self, msg: Any) -> None:
        kind, arg = topics.classify(self.fleet, msg.topic)
        if kind in ("status", "report"):
            self._note_boot(msg, kind)
            limit = status_schema.MAX_BYTES if kind == "status" else status_schema.MAX_REPORT_BYTES
            if len(msg.payload) > limit:  # refused now: never held, never parsed
                self.stats.rejected += 1
                self._note_drop(kind, arg, f"{len(msg.payload)} bytes, limit is {limit}")
                return
            if not self._admit(kind, arg, bool(msg.retain)):
                return
            if kind == "status":
                self._take_status(arg, msg.payload)
            elif msg.payload:
                if len(self._reports) >= MAX_PENDING_REPORTS:
                    self.stats.dropped += 1
                    self._note_drop("report", arg, f"pending reports full ({MAX_PENDING_REPORTS})",
                                    flood=False)
                    return
                self._reports.append((arg, bytes(msg.payload), self._now()))
        elif kind in ("root", "bundle", "timestamp"):
            raw = bytes(msg.payload)
            if raw:
                self._held[msg.topic] = raw
            else:
                self._held.pop(msg.topic, None)
            if kind == "root":
                self._on_root(arg, raw)
            elif msg.topic == topics.bundle(self.fleet):
                self._on_fleet_bundle(raw)

    def _take_status(self, device: str, payload: bytes) -> None:
        """Check a status once, as it arrives, into the row the store writes; the newest
        pending one per device is kept (a status is the device's whole state)."""
        if not payload:
            self.stats.ignored += 1  # a cleared retained status: nothing to store
            return
        try:
            checked = fleetdb.check_status_message(self.fleet, device, payload, self._now())
        except StatusError as exc:
            self.stats.rejected += 1
            if self._first_rejected is None:
                self._first_rejected = (device, str(exc))
            self._rejected_since += 1
            return
        if self._statuses.pop(device, None) is not None:
            self.stats.coalesced += 1
        self._statuses[device] = checked

    def pending(self) -> int:
        """Statuses and reports received and not yet written."""
        return len(self._statuses) + len(self._reports)

    def _admit(self, kind: str, device: str, retained: bool) -> bool:
        """The device's token bucket for `kind`: False (counted, logged) when it is over its rate."""
        if retained and kind == "status":
            return True  # the broker's copy, read once per connect
        rate, burst = self.limits.bucket(kind)
        mono = time.monotonic()
        b = self._buckets.get((kind, device))
        if b is None:
            b = self._buckets[(kind, device)] = [burst, mono]
        b[0] = min(burst, b[0] + (mono - b[1]) * rate)
        b[1] = mono
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        self.stats.rate_limited += 1
        self._note_drop(kind, device, f"over {rate:g}/s (burst {burst:g})")
        return False

    def _note_drop(self, kind: str, device: str, why: str, flood: bool = True) -> None:
        mono = time.monotonic()
        if flood:
            self._count_flood(device, mono)
        key = (kind, device)
        if mono - self._drop_logged.get(key, -DROP_LOG_EVERY) >= DROP_LOG_EVERY:
            self._drop_logged[key] = mono
            log.warning("dropping %s from device %s: %s (logged once per %.0f s)",
                        "statuses" if kind == "status" else "reports", device, why, DROP_LOG_EVERY)

    def _prune_buckets(self) -> None:
        """Forget full buckets and old log marks: memory follows the devices active now."""
        mono = time.monotonic()
        for key, (tokens, at) in list(self._buckets.items()):
            rate, burst = self.limits.bucket(key[0])
            if tokens + (mono - at) * rate >= burst:
                del self._buckets[key]
        for key, at in list(self._drop_logged.items()):
            if mono - at >= DROP_LOG_EVERY:
                del self._drop_logged[key]
        for device, (_, start) in list(self._over.items()):
            if mono - start >= FENCE_WINDOW:
                del self._over[device]

    # -- fencing: a flooding device is disabled at the broker for a while --------------
    #
    # Serve's rate limits keep its memory and store bounded, but the flood still fills the
    # broker's outgoing queue for serve (Mosquitto: max_queued_messages), and whatever else
    # arrives for serve then is dropped by the broker, other devices' statuses included.
    # Only the broker can stop a device from sending, so serve asks it: "disableClient" on the
    # dynamic security plugin (broker-config grants serve this), which also disconnects it.
    # When the flood has stopped reaching serve, serve reads the retained statuses again:
    # they hold the latest status of every device, also of those the broker dropped.
    # The fence is lifted ("enableClient") after Limits.fence_for seconds; both are audited
    # as device events, so a restarted serve lifts the fences of its predecessor on time.

    def _count_flood(self, device: str, mono: float) -> None:
        self._last_drop = mono
        lim = self.limits
        if (not lim.fence_for or self._can_fence is False or device in self._fenced
                or device in self._fence_due):
            return
        w = self._over.get(device)
        if w is None or mono - w[1] >= FENCE_WINDOW:
            w = self._over[device] = [0.0, mono]
        w[0] += 1
        if w[0] >= lim.fence_after:
            self._fence_due[device] = int(w[0])
            del self._over[device]

    def _fence_step(self, mono: float) -> None:
        """Fence who earned it, lift fences that ended, and re-read the retained statuses once
        a fenced flood has stopped arriving."""
        if not self._fences_loaded:
            now = self._now()
            for device, at in self.db.open_fences(self.fleet):
                self._fenced[device] = mono + max(0.0, at + self.limits.fence_for - now)
            self._fences_loaded = True
        for device, drops in list(self._fence_due.items()):
            del self._fence_due[device]
            self._fence(device, drops, mono)
        for device, until in list(self._fenced.items()):
            if mono >= until and self._can_fence is not False:
                self._unfence(device, mono)
        if self._resync_at is not None and (mono - self._last_drop >= RESYNC_QUIET
                                            or mono >= self._resync_at):
            self._resync_at = None
            self._reread_statuses()

    def _fence(self, device: str, drops: int, mono: float) -> None:
        self._fenced[device] = mono + self.limits.fence_for  # counted as fenced while asking
        try:
            error = self._dynsec("disableClient", device)
        except FenceUnavailable as exc:
            del self._fenced[device]
            self._can_fence = False
            log.warning("cannot fence flooding devices at this broker (%s); serve only drops their "
                        "messages (docs/operations.md, 'Floods')", exc)
            return
        except BrokerError:
            del self._fenced[device]
            raise
        if error:
            del self._fenced[device]
            log.warning("the broker would not disable flooding device %s: %s", device, error)
            return
        self._can_fence = True
        why = (f"flooding: {drops} messages over its limits within {FENCE_WINDOW:g} s; "
               f"disabled at the broker for {self.limits.fence_for:g} s")
        self.db.add_device_event(self.fleet, device, "fence", "serve", why, self._now())
        self.stats.fenced += 1
        self.stats.events.append(f"fenced device {device}: {why}")
        log.warning("fenced device %s: %s", device, why)
        self._resync_at = mono + RESYNC_MAX_WAIT

    def _unfence(self, device: str, mono: float) -> None:
        try:
            error = self._dynsec("enableClient", device)
        except (FenceUnavailable, BrokerError) as exc:
            error = str(exc)
        if error and error != "Client not found":
            # It stays disabled at the broker until this works: say so, and try again.
            self._fenced[device] = mono + FENCE_RETRY
            log.warning("could not lift the fence of device %s (%s); retrying in %g s",
                        device, error, FENCE_RETRY)
            return
        del self._fenced[device]
        self.db.add_device_event(self.fleet, device, "unfence", "serve",
                                 error or f"the fence of {self.limits.fence_for:g} s ended", self._now())
        log.info("lifted the fence of device %s", device)

    def _dynsec(self, command: str, device: str) -> str | None:
        """One command to the broker's dynamic security plugin, on a connection of its own:
        the main one may sit behind a flood at the broker. Returns the plugin's error, None
        when done. Raises: FenceUnavailable (refused or unanswered), BrokerError."""
        answers: list[bytes] = []
        ctl = Link(self.url, f"{self.link.client_id[:MAX_CLIENT_ID - 4]}-ctl",
                   lambda msg: answers.append(bytes(msg.payload)), session_expiry=0)
        body = {"commands": [{"command": command, "username": device}]}
        ctl.open()
        try:
            ctl.subscribe(DYNSEC_RESPONSE)
            ctl.publish([(DYNSEC_TOPIC, json.dumps(body).encode())], retain=False)
            deadline = time.monotonic() + FENCE_ANSWER_WAIT
            while not answers and time.monotonic() < deadline:
                if not ctl.loop(0.01):
                    raise BrokerError(f"{ctl.url}: connection lost waiting for the {command} answer")
                self.link.loop(0)  # keep reading: the broker drops what serve does not take
        except (SubscribeRefused, PublishRefused) as exc:
            raise FenceUnavailable(str(exc)) from None
        finally:
            ctl.close()
        if not answers:
            raise FenceUnavailable("no answer from its dynamic security plugin")
        try:
            answer = next(a for a in json.loads(answers[0])["responses"] if a.get("command") == command)
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration, RecursionError):
            raise FenceUnavailable("an unreadable answer from its dynamic security plugin") from None
        error = answer.get("error")
        return str(error)[:200] if error else None

    def _reread_statuses(self) -> None:
        """Subscribe to the retained statuses again, as after a connect."""
        if not self.link.connected:
            return
        shared = bool(self._boot and self._boot.get("shared"))
        now = time.monotonic()
        self._boot = {"shared": shared, "last": now, "start": now}
        self.link.subscribe(topics.statuses(self.fleet), _SUB_BOOT)
        self.stats.resyncs += 1

    def _note_boot(self, msg: Any, kind: str) -> None:
        b = self._boot
        if b is None or "done" in b or kind != "status":
            return
        ids = getattr(getattr(msg, "properties", None), "SubscriptionIdentifier", None) or []
        from_boot = (_SUB_BOOT in ids) if b["shared"] and self.link.subscription_ids else True
        if not from_boot:
            return
        if msg.retain:
            b["last"] = time.monotonic()
        else:
            # Live traffic on the plain subscription: the broker sent the retained ones first.
            self._end_boot()

    def _on_root(self, version: int, raw: bytes) -> None:
        if raw and self._chain.get(version) == raw:
            self._owned_roots[version] = raw  # the broker carried it: keep it there
        if not raw or version <= self.root.version:
            return
        if len(self._pending_roots) >= MAX_PENDING_ROOTS and version not in self._pending_roots:
            return
        self._pending_roots[version] = raw
        while self.root.version + 1 in self._pending_roots:
            nxt = self._pending_roots.pop(self.root.version + 1)
            try:
                self.root = policy.verify_root_update(self.root, nxt)
            except BundleError as exc:
                log.warning("refusing root v%d from the broker: %s", self.root.version + 1, exc)
                return
            log.info("now trusting root v%d of fleet %s", self.root.version, self.fleet)
            self._chain[self.root.version] = self._owned_roots[self.root.version] = nxt
            if self.timestamp_key is not None:
                with contextlib.suppress(UsageError):
                    self._check_timestamp_key()

    def _on_fleet_bundle(self, raw: bytes) -> None:
        if not raw:  # cleared on purpose (a lost message is absent, never empty)
            self._fleet_bundle = self._fleet_doc = None
            return
        try:
            b = policy.verify_bundle(self.root, raw, now=self._now())
        except BundleError as exc:
            log.warning("the bundle retained on %s does not verify: %s", topics.bundle(self.fleet), exc)
            return
        seen = (b.version, documents.sha256(raw))
        self._vouched = max(self._vouched, b.issued_at)
        self._record_published(seen)
        if self._fleet_doc is None or b.version >= self._fleet_doc[0]:
            self._fleet_doc = (b.version, raw)
        if seen != self._fleet_bundle:
            self._fleet_bundle = seen
            self._next_timestamp = 0.0  # name the new bundle in a timestamp at once

    def _record_published(self, seen: tuple[int, bytes]) -> None:
        """Record the verified fleet bundle as published (a bundle published by hand, without
        `publish --db`, is then history too: devices running it are not suspect)."""
        if seen == self._recorded:
            return
        try:
            self.db.record_published(self.fleet, seen[0], seen[1].hex(),
                                     "serve: retained on the fleet topic", self._now())
        except FleetStoreError as exc:
            log.warning("%s; will record bundle v%d when it is seen again", exc, seen[0])
            return
        self._recorded = seen

    def _flush(self, wait: bool = False) -> None:
        """Hand the pending statuses and reports to the store, one batch at a time.

        The batch is written in a thread of its own (one transaction; the
        driver waits for the database there, not here), so messages keep
        being read and checked meanwhile and gather for the next batch. `wait`:
        return only once everything pending now is stored (or failed).
        """
        mono = time.monotonic()
        if mono >= self._next_prune:
            self._prune_buckets()
            self._next_prune = mono + PRUNE_EVERY
        self._harvest(block=wait)
        if self._writing is None and (self._statuses or self._reports or self._rejected_since):
            pending_statuses, self._statuses = self._statuses, {}
            pending_reports, self._reports = self._reports, collections.deque()
            if self._writer is None:
                self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tf-store")
            job = self._writer.submit(self._write, list(pending_statuses.values()),
                                      [(self.fleet, d, p, t) for d, p, t in pending_reports])
            self._writing = (job, pending_statuses, pending_reports)
            if wait:
                self._harvest(block=True)

    def _write(self, statuses: list[tuple], reports: list[tuple]) -> tuple:
        """In the store's thread: one batch. Raises: FleetStoreError."""
        fleet = self.fleet
        result = self.db.store_statuses([(fleet, c) for c in statuses]) if statuses else fleetdb.IngestResult()
        rep = self.db.add_reports(reports) if reports else fleetdb.IngestResult()
        return result, rep

    def _harvest(self, block: bool = False) -> None:
        """Count what the batch being written did, once it is done (`block`: wait for it)."""
        if self._writing is None or not (block or self._writing[0].done()):
            return
        (job, pending_statuses, pending_reports), self._writing = self._writing, None
        try:
            result, rep = job.result()
        except FleetStoreError as exc:
            # Keep them for the next flush: statuses are idempotent, a newer one wins.
            for d, entry in pending_statuses.items():
                self._statuses.setdefault(d, entry)
            pending_reports.extend(self._reports)
            while len(pending_reports) > MAX_PENDING_REPORTS:
                pending_reports.popleft()
                self.stats.dropped += 1
            self._reports = pending_reports
            log.warning("%s; will retry", exc)
            return
        self.stats.statuses += result.accepted
        self.stats.ignored += result.ignored
        self.stats.reports += rep.accepted
        rejected = result.rejected + rep.rejected
        self.stats.rejected += len(rejected)
        count, first = len(rejected) + self._rejected_since, self._first_rejected or next(iter(rejected), None)
        self._first_rejected, self._rejected_since = None, 0
        if first is not None:
            log.warning("rejected %d malformed message(s); first from %s: %s", count, first[0], first[1])

    # -- retained state ----------------------------------------------------------------

    def owned_documents(self) -> dict[str, bytes]:
        """{topic: document} the broker must hold for this fleet (timestamps aside).

        Roots serve knows beyond its first (and any the broker carried), the
        fleet bundle (the newer of the last done rollout's and the newest
        verified one seen on the fleet topic), and the bundle of a running or
        paused rollout on each topic it has published. Bundles that no longer
        verify against the current root are left out (and logged).
        """
        f, now = self.fleet, self._now()
        want = {topics.root(f, v): raw for v, raw in sorted(self._owned_roots.items())}
        fleet_doc = self._fleet_doc
        done = self.db.latest_done(f)
        if done is not None and (fleet_doc is None or done.version > fleet_doc[0]):
            fleet_doc = (done.version, done.bundle)
        if fleet_doc is not None:
            want[topics.bundle(f)] = fleet_doc[1]
        r = self.db.rollout_to_drive(f)
        if r is not None and r.state in (rollout.RUNNING, rollout.PAUSED):
            for t in r.published:
                want[t] = r.bundle
        bad: dict[bytes, str] = {}
        for raw in {raw for t, raw in want.items() if topics.classify(f, t)[0] == "bundle"}:
            try:
                policy.verify_bundle(self.root, raw, now=now)
            except BundleError as exc:
                bad[raw] = str(exc)
        for t in [t for t, raw in want.items() if raw in bad and topics.classify(f, t)[0] == "bundle"]:
            log.warning("not publishing %s again: it does not verify: %s", t, bad.pop(want.pop(t), "(above)"))
        return want

    def _restore_retained(self) -> None:
        """Publish again what the broker lost (or holds wrong) of the documents serve owns."""
        lost = [(t, raw) for t, raw in self.owned_documents().items()
                if self._held.get(t) != raw and t not in self._not_ours]
        if lost:
            names = ", ".join(t for t, _ in lost[:5]) + (" ..." if len(lost) > 5 else "")
            log.warning("the broker lost %d retained document(s) of fleet %s; publishing them again: %s",
                        len(lost), self.fleet, names)
            try:
                self.link.publish(lost)
            except PublishRefused as exc:
                # Not serve's to write (broker-config gives roots to the operator): say so once.
                self._not_ours.update(exc.topics)
                log.warning("%s; serve will not publish %s again: the operator must", exc,
                            ", ".join(exc.topics))
                lost = [(t, raw) for t, raw in lost if t not in exc.topics]
            self._held.update(lost)
            self.stats.restored += len(lost)
        if self.timestamp_key is not None and topics.timestamp(self.fleet) not in self._held:
            self._next_timestamp = 0.0  # a timestamp at once, retained

    # -- timestamps -------------------------------------------------------------------

    def _check_timestamp_key(self) -> None:
        kid = keys.kid_of(self.timestamp_key)
        if kid not in self.root.roles["timestamp"].kids:
            raise UsageError(f"the timestamp key {kid.hex()[:16]} is not a timestamp key of "
                               f"root v{self.root.version}")

    def latest_bundle(self) -> tuple[int, bytes] | None:
        """(version, sha256) of the newest bundle that reached the whole fleet."""
        candidates = []
        if self._fleet_bundle is not None:
            candidates.append(self._fleet_bundle)
        done = self.db.latest_done(self.fleet)
        if done is not None:
            candidates.append((done.version, bytes.fromhex(done.sha256)))
        return max(candidates, key=lambda c: c[0]) if candidates else None

    def make_timestamp(self, now: int) -> bytes | None:
        """A signed timestamp for the latest bundle, verified against the current root.

        Returns None when no bundle has reached the fleet yet. Raises: BundleError
        when it does not verify (e.g. the key left the timestamp role).
        """
        latest = self.latest_bundle()
        if latest is None:
            return None
        payload = documents.encode_payload({
            "type": "timestamp", "spec": device_docs.SPEC, "fleet": self.fleet, "time": now,
            "bundle_version": latest[0], "bundle_sha256": latest[1]})
        raw = documents.sign1(payload, self.timestamp_key)
        policy.verify_timestamp(self.root, raw)
        return raw

    def _publish_timestamp(self) -> None:
        now = self._now()
        try:
            raw = self.make_timestamp(now)
        except BundleError as exc:
            log.error("refusing to publish a timestamp that does not verify against root v%d: %s",
                      self.root.version, exc)
            return
        if raw is None:
            if not self._warned_no_bundle:
                log.warning("no bundle has reached fleet %s yet; no timestamp to publish", self.fleet)
                self._warned_no_bundle = True
            return
        self._warn_time_lead(now)
        self.link.publish([(topics.timestamp(self.fleet), raw)])
        self.stats.timestamps += 1
        self.last_timestamp = now
        log.debug("published a timestamp at %d", now)

    def _warn_time_lead(self, now: int) -> None:
        """Devices refuse a timestamp more than the root's max_time_lead past the newest bundle's
        issued_at (docs/format.md, "Trusted time"): say so a week ahead, then hourly."""
        if not self._vouched:
            return
        limit = self._vouched + self.root.time_lead
        if now < limit - TIME_LEAD_WARNING or (self._lead_warned >= 0 and now - self._lead_warned < 3600):
            return
        self._lead_warned = now
        newest = self._fleet_doc[0] if self._fleet_doc else "?"
        if now > limit:
            log.error("devices refuse these timestamps: they are more than root v%d's max_time_lead "
                      "(%s) past %s, when the fleet bundle v%s was issued; sign and publish a new "
                      "bundle version (the same content is enough)", self.root.version,
                      f"{self.root.time_lead // 86400} days", times.iso(self._vouched), newest)
        else:
            log.warning("from %s devices will refuse timestamps: root v%d's max_time_lead (%s) past "
                        "the fleet bundle v%s's issued_at; sign and publish a new bundle version "
                        "before then", times.iso(limit), self.root.version,
                        f"{self.root.time_lead // 86400} days", newest)

    # -- rollouts ---------------------------------------------------------------------

    def _drive_rollout(self) -> None:
        r = self.db.rollout_to_drive(self.fleet)
        if r is None:
            return
        now = self._now()
        devices = self.db.devices(self.fleet)
        new, actions = rollout.step(r, devices, now)
        if any(a[0] == "publish_wave" for a in actions):
            problem = self._bundle_problem(r, now)
            if problem:
                new, actions = rollout.halt(r, now, problem)
        # The wave's result as decided now (counts, failing devices), kept with the rollout.
        note = next((a[1] for a in actions if a[0] == "note"), None)
        ended = rollout.ended_wave(r, new, devices, now, note)
        if not actions and new == r:
            return
        lease = None
        if self._elected:  # under run(); a step called directly acts without a lease
            if not self._leads(time.monotonic()):
                return
            lease = (self.fleet, self.worker_id, time.time())
        if not self.db.claim_rollout(r.id, r.revision, lease):
            return  # another worker (or the CLI) changed it, or the lease is gone: look again
        for action in actions:
            self._act(r, action, now)
        # Topics the rollout no longer answers for: cleared, or (done) handed to the fleet topic.
        gone = [t for t in r.published if t not in new.published]
        if gone:
            self.db.remove_published(r.id, gone)
        if not self.db.save_rollout(new, r.revision + 1, ended):
            log.info("rollout %s changed while it was being stepped; looking again", r.id)

    def _bundle_problem(self, r: rollout.Rollout, now: int) -> str | None:
        """Why the rollout's bundle must not be published now, or None."""
        try:
            b = policy.verify_bundle(self.root, r.bundle, now=now)
        except BundleError as exc:
            return f"bundle v{r.version} no longer verifies against root v{self.root.version}: {exc}"
        if b.version != r.version or b.fleet != self.fleet:
            return f"stored bundle is v{b.version} of {b.fleet}, expected v{r.version} of {self.fleet}"
        return None

    def _act(self, r: rollout.Rollout, action: tuple, now: int) -> None:
        kind = action[0]
        if kind == "publish_wave":
            wave, names = action[1], action[2]
            self.db.add_published(r.id, names)  # before publishing: an abort must find them
            # A leader killed after publishing and before saving: its successor does not publish
            # again what the broker already holds.
            fresh = [t for t in names if self._held.get(t) != r.bundle]
            if len(fresh) < len(names):
                log.info("rollout %s: %d of the wave's topic(s) already hold v%d", r.id,
                         len(names) - len(fresh), r.version)
            if fresh:
                self.link.publish([(t, r.bundle) for t in fresh])
            self.stats.waves += 1
            self._event(r, now, f"published v{r.version} for wave {wave.name} on {len(names)} topic(s)")
            self._audit("wave-publish", now, rollout=r.id, version=r.version, wave=wave.name,
                        topics=list(names))
        elif kind == "clear_waves":
            names = action[1]
            self.link.publish([(t, b"") for t in names])
            self.db.remove_published(r.id, names)
            self.stats.cleared += len(names)
            self._event(r, now, f"cleared {len(names)} wave topic(s)")
            self._audit("wave-clear", now, rollout=r.id, version=r.version, topics=list(names))
        elif kind == "halt":
            failing = action[2]
            listed = ", ".join(f"{f['device']} ({f['reason']})" for f in failing[:10])
            more = f" and {len(failing) - 10} more" if len(failing) > 10 else ""
            text = f"halted: {action[1]}" + (f"; failing: {listed}{more}" if failing else "")
            log.warning("rollout %s %s", r.id, text)
            self._event(r, now, text)
            self._audit("rollout-halt", now, rollout=r.id, version=r.version, reason=action[1],
                        failing=list(failing))
        elif kind == "done":
            self._event(r, now, f"done: v{r.version} is on the fleet topic")
            self._audit("rollout-done", now, rollout=r.id, version=r.version)
            self._next_timestamp = 0.0  # announce the new bundle at once
        elif kind == "note":
            self._event(r, now, action[1])

    def _audit(self, action: str, now: int, **detail: Any) -> None:
        """An audit trail entry by this worker ("serve:<worker id>") from this host."""
        audit.record(self.db, self.fleet, action, detail, now, actor_name=f"serve:{self.worker_id}",
                     source="serve")

    def _event(self, r: rollout.Rollout, now: int, text: str) -> None:
        self.db.add_event(r.id, now, text)
        self.stats.events = self.stats.events[-99:] + [f"rollout {r.id}: {text}"]
        log.info("rollout %s: %s", r.id, text)


# --------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. under pytest)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def log_to_stderr(verbose: bool) -> None:
    """Log the `trustfleet` loggers to stderr, INFO (or DEBUG with `verbose`), once."""
    logger = logging.getLogger("trustfleet")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
