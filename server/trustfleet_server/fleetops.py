"""What `trustfleet rollout` and `trustfleet fleet` do in the fleet store.

Start a rollout (the bundle verified against the root chain, newer than
anything the fleet runs), pause, resume or abort one, find one, and
summarise the fleet. `trustfleet serve` carries the rollouts out.
Each start, pause, resume, abort and device action is appended to the audit
trail (trustfleet_server.audit): by the CLI user unless the caller names the
actor (the console: the operator its token names).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trustfleet_device import policy, topics
from trustfleet_device.errors import RollbackError, TrustfleetError
from trustfleet_server import audit, documents, rollout
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.mqtturl import BrokerURL
from trustfleet_server.publish import refused

DEFAULT_WAVES = "1%,10%,50%,100%"
DONE_BY = {"pause": "paused", "resume": "resumed", "abort": "aborted"}


def check_fleet(fleet: str) -> str:
    """A fleet name fit for topics. Raises: UsageError."""
    try:
        return topics.check_name(fleet, "fleet")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def plan_rollout(fleet: str, root_paths: Sequence[Path], bundle_path: Path, now: int, *,
                 waves: str | None, groups: str | None, success: float, max_failure: float,
                 deadline: int) -> rollout.Rollout:
    """A new rollout of the bundle, not yet stored.

    Raises: TrustfleetError (the bundle does not verify), UsageError (bad waves or thresholds).
    """
    raw = documents.read_file(bundle_path)
    root = documents.load_root_chain(root_paths)
    if root.fleet != fleet:
        raise UsageError(f"--fleet {fleet} does not match the root's fleet {root.fleet}")
    try:
        b = policy.verify_bundle(root, raw, now=now)
    except TrustfleetError as exc:
        raise refused(bundle_path, exc) from None
    try:
        plan = rollout.parse_groups(groups) if groups else rollout.parse_waves(waves or DEFAULT_WAVES)
        return rollout.new_rollout(fleet, b.version, documents.sha256(raw).hex(), raw, plan, now,
                                   success, max_failure, deadline)
    except rollout.RolloutError as exc:
        raise UsageError(str(exc)) from None


def start_rollout(db: fleetdb.FleetDB, plan: rollout.Rollout, bundle_path: Path, now: int, *,
                  actor: str | None = None, host: str | None = None,
                  source: str = "cli") -> rollout.Rollout:
    """Store the planned rollout (audited as "rollout-start"); `serve` publishes its first wave.

    The floor is the fleet's published history (versions recorded by rollout
    start and `publish --db`, and the newest finished rollout), never what
    devices claim: one device saying it runs v2^62 must not block the fleet
    (such a status is stored as suspect and rollouts do not count it).

    Raises: RollbackError when the fleet already published this version or a newer one.
    """
    fleet = plan.fleet
    check_floor(db, plan, bundle_path)
    r = db.create_rollout(plan)
    db.record_published(fleet, r.version, r.sha256, f"rollout {r.id}", now)
    names = ", ".join(w.name for w in r.waves)
    db.add_event(r.id, now, f"started: v{r.version} in waves {names} (pass at "
                            f"{r.success:.2f} within {r.deadline} s, halt above {r.max_failure:.2f})")
    audit.record(db, fleet, "rollout-start",
                 {"rollout": r.id, "version": r.version, "sha256": r.sha256,
                  "waves": [w.name for w in r.waves], "signers": audit.signers(r.bundle)},
                 now, actor_name=actor, host_name=host, source=source)
    return r


def check_floor(db: fleetdb.FleetDB, plan: rollout.Rollout, bundle_path: Path) -> int:
    """The fleet's published floor; raises RollbackError when the plan's version is not above it."""
    published = db.newest_published(plan.fleet)
    done = db.latest_done(plan.fleet)
    floor = max(v for v in (published, done.version if done else None, 0) if v is not None)
    if plan.version <= floor:
        raise RollbackError(
            f"{bundle_path}: bundle v{plan.version} is not newer than v{floor}, which the fleet "
            f"already published; going back means a new bundle with a higher version and the old "
            f"content (see `trustfleet rollout start --help`)")
    return floor


def check_reach(plan: rollout.Rollout, devices: Sequence[dict], allow_empty: bool) -> list[dict]:
    """Each wave's reach in the fleet as stored now (rollout.reach).

    Raises: UsageError for a wave naming a group no device is in, or reaching no
    device (the first such wave), unless `allow_empty`.
    """
    reached = rollout.reach(plan.waves, devices, plan.version)
    problem = rollout.empty_wave_problem(reached, rollout.known_groups(devices))
    if problem and not allow_empty:
        raise UsageError(f"{problem}; fix the waves, or pass --allow-empty-waves to start anyway")
    return reached


def find_rollout(db: fleetdb.FleetDB, fleet: str, rollout_id: int | None,
                 active_only: bool = False) -> rollout.Rollout:
    """The given rollout, else the fleet's latest (or active) one. Raises: UsageError."""
    if rollout_id is not None:
        r = db.rollout(rollout_id)
        if r.fleet != fleet:
            raise UsageError(f"rollout {rollout_id} belongs to fleet {r.fleet}, not {fleet}")
        return r
    r = db.rollout_to_drive(fleet) if active_only else db.latest_rollout(fleet)
    if r is None:
        raise UsageError(f"fleet {fleet} has no {'active ' if active_only else ''}rollout")
    return r


def change_rollout(db: fleetdb.FleetDB, fleet: str, rollout_id: int | None, action: str, now: int,
                   reason: str = "", broker: BrokerURL | None = None, *, actor: str | None = None,
                   host: str | None = None, source: str = "cli",
                   detail: dict | None = None) -> tuple[rollout.Rollout, list[str]]:
    """Pause, resume or abort the fleet's active rollout; with `broker`, clear its wave topics now.

    Audited as "rollout-<action>" by `actor` from `host` (None: this command's user and host),
    with `detail` added to the entry's. Returns the rollout and the topics cleared.
    Raises: UsageError, BrokerError.
    """
    r = find_rollout(db, fleet, rollout_id, active_only=True)
    change = {"pause": lambda x: rollout.pause(x, now), "resume": lambda x: rollout.resume(x, now),
              "abort": lambda x: rollout.abort(x, now, reason)}[action]
    if not (action == "abort" and r.state in rollout.FINAL):
        try:
            r = db.update_rollout(r.id, change)
        except rollout.RolloutError as exc:
            raise UsageError(str(exc)) from None
        db.add_event(r.id, now, f"{DONE_BY[action]} by the operator"
                     + (f": {reason}" if action == "abort" else ""))
    cleared: list[str] = []
    if broker is not None and r.published:
        from trustfleet_server.serve.link import publish_retained

        publish_retained(broker, [(t, b"") for t in r.published])
        db.remove_published(r.id, list(r.published))
        db.add_event(r.id, now, f"cleared {len(r.published)} wave topic(s) from the command line")
        cleared = list(r.published)
        r = db.rollout(r.id)
    entry = {"rollout": r.id, "version": r.version, "state": r.state, **(detail or {})}
    if reason:
        entry["reason"] = reason
    if cleared:
        entry["cleared"] = cleared
    audit.record(db, fleet, f"rollout-{action}", entry, now, actor_name=actor, host_name=host,
                 source=source)
    return r, cleared


def fleet_summary(db: fleetdb.FleetDB, fleet: str, now: int, silent_after: int, limit: int) -> dict:
    """db.summary plus the latest rollout, as `fleet status` shows it."""
    s = db.summary(fleet, now, silent_after=silent_after, limit=limit)
    r = db.latest_rollout(fleet)
    if r is not None:
        s["rollout"] = {"id": r.id, "version": r.version, "state": r.state,
                        "wave": r.wave.name if r.wave else None}
    return s


DEVICE_ACTIONS = ("quarantine", "release", "forget")


def device_action(db: fleetdb.FleetDB, fleet: str, device_id: str, action: str, who: str, why: str,
                  now: int, *, actor: str | None = None, host: str | None = None,
                  source: str = "cli") -> dict:
    """Quarantine, release or forget one device; returns the device event (tf_device_events, by
    `who`). Also audited as "device-<action>" by `actor` (None: this command's user).
    Raises: UsageError."""
    try:
        topics.check_name(device_id, "device id")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not why.strip():
        raise UsageError("--reason must say why (it goes in the audit trail)")
    try:
        if action == "forget":
            event = db.forget_device(fleet, device_id, who, why, now)
        else:
            event = db.set_quarantined(fleet, device_id, action == "quarantine", who, why, now)
    except fleetdb.NotFound as exc:
        raise UsageError(str(exc)) from None
    audit.record(db, fleet, f"device-{action}", {"device": device_id, "by": event["who"],
                                                 "reason": event["why"]},
                 now, actor_name=actor, host_name=host, source=source)
    return event
