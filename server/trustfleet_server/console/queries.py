"""The console's read model: the JSON each page shows, read from the fleet store.

Every function takes an open FleetDB and the ConsoleSettings and returns plain
dicts (the body of one /api route). They reuse what `fleet status`, `fleet
devices` and `rollout status` compute (fleetops, render, rollout.history); the
only SQL of their own is what db.py has no read for: devices counted by console
state, the filtered and paged device table, one device's reports, and the
fingerprint the event stream compares.
"""

from __future__ import annotations

import json
from typing import Any

from trustfleet_server import fleetops, render, rollout
from trustfleet_server.console import STATE_SQL, STATES, ConsoleSettings, console_state
from trustfleet_server.fleet import db as fleetdb

MAX_PAGE = 500
DEFAULT_PAGE = 100
DEVICE_AUDIT = ("device-quarantine", "device-release", "device-forget")


class QueryError(ValueError):
    """A filter or page value the console cannot use (the message is one line for the client)."""


def _rows(db: fleetdb.FleetDB, what: str, sql: str, params: tuple = ()) -> list[dict]:
    with db._tx(what) as cur:
        db._exec(cur, sql, params)
        return db.rows(cur)


# --------------------------------------------------------------------------- overview


def state_counts(db: fleetdb.FleetDB, fleet: str, silent_before: int) -> list[dict]:
    """Devices by version and console state (STATE_SQL), one grouped query for the overview and
    /metrics: rows {version, cstate, count, silent}, silent = not offline and last seen before
    `silent_before`."""
    return _rows(db, "counting devices by state",
                 f"SELECT version, {STATE_SQL} AS cstate, COUNT(*) AS count, "
                 "SUM(CASE WHEN state <> 'offline' AND last_seen < ? THEN 1 ELSE 0 END) AS silent "
                 f"FROM tf_devices WHERE fleet = ? GROUP BY version, {STATE_SQL}",
                 (silent_before, fleet))


def overview(db: fleetdb.FleetDB, settings: ConsoleSettings, now: int) -> dict:
    """Devices by version and console state (STATES), the counts `fleet status` lists, the
    reports in short, the newest rollout in short, and serve's live counters when it runs here."""
    fleet = settings.fleet
    s = fleetops.fleet_summary(db, fleet, now, settings.silent_after, 0)
    rows = state_counts(db, fleet, now - settings.silent_after)
    by_state = dict.fromkeys(STATES, 0)
    versions: dict[Any, dict[str, int]] = {}
    for r in rows:
        state = r["cstate"] if r["cstate"] in by_state else r["cstate"][:32]
        by_state[state] = by_state.get(state, 0) + r["count"]
        versions.setdefault(r["version"], {})
        versions[r["version"]][state] = versions[r["version"]].get(state, 0) + r["count"]
    table = [{"version": v, "states": counts, "total": sum(counts.values())}
             for v, counts in sorted(versions.items(), key=lambda kv: -1 if kv[0] is None else kv[0],
                                     reverse=True)]
    o = s["report_overview"]
    out = {
        "fleet": fleet, "time": now, "devices": s["devices"], "states": list(by_state),
        "by_state": by_state, "table": table,
        "counts": {k: s[f"{k}_count"] for k in ("silent", "suspect", "quarantined", "stale", "behind",
                                                  "fail_open", "offline")},
        "silent_after": settings.silent_after,
        "reports": {"reports": o["reports"], "duplicates": o["duplicates"], "devices": o["devices"],
                    "newest": o["newest"]},
        "rollout": None,
        "live": settings.live() if settings.live is not None else None,
    }
    r = db.latest_rollout(fleet)
    if r is not None:
        out["rollout"] = {**render.rollout_row(r), "current_wave": r.current}
    return out


# --------------------------------------------------------------------------- rollouts


def rollouts(db: fleetdb.FleetDB, settings: ConsoleSettings, now: float, limit: int = 100) -> dict:
    """The fleet's rollouts, newest first, as `rollout list` shows them."""
    return {"fleet": settings.fleet, "time": now,
            "rollouts": [render.rollout_row(r) for r in db.rollouts(settings.fleet, limit)]}


def actions(r: rollout.Rollout) -> dict[str, bool]:
    """Which operator actions apply to the rollout now."""
    return {"pause": r.state == rollout.RUNNING, "resume": r.state == rollout.PAUSED,
            "abort": r.state in rollout.ACTIVE}


def rollout_summary(db: fleetdb.FleetDB, settings: ConsoleSettings, rollout_id: int) -> dict:
    """One rollout as `rollout list` shows it. Raises: fleetdb.NotFound (none, or of another fleet)."""
    r = db.rollout(rollout_id)
    if r.fleet != settings.fleet:
        raise fleetdb.NotFound(f"no rollout {rollout_id} in fleet {settings.fleet}")
    return render.rollout_row(r)


def rollout_detail(db: fleetdb.FleetDB, settings: ConsoleSettings, rollout_id: int, now: int) -> dict:
    """One rollout as `rollout status --json` shows it (each ended wave as recorded, the running
    one counted now), with its halt rule, the failing devices to show, its events and the
    actions that apply. Raises: fleetdb.NotFound (none, or of another fleet)."""
    rollout_summary(db, settings, rollout_id)
    r = db.rollout(rollout_id)
    waves = rollout.history(r, db.devices(r.fleet), now, db.wave_results(r.id))
    out = render.rollout_json(r, waves, db.events(r.id, 50))
    out.update(time=now, halt_rule=rollout.halt_rule(r), failing_devices=render.failing_devices(r, waves),
               actions=actions(r), waves_done=render.waves_done(r), paused_at=r.paused_at)
    return out


# --------------------------------------------------------------------------- devices


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere ('!' escapes the wildcards)."""
    escaped = text.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def device_filter(fleet: str, q: str = "", state: str = "", version: str = "",
                  group: str = "") -> tuple[str, list]:
    """(WHERE clause, params) for the device table. Raises: QueryError."""
    where, params = ["fleet = ?"], [fleet]
    if q:
        where.append("LOWER(device_id) LIKE ? ESCAPE '!'")
        params.append(_like(q))
    if state:
        if state not in STATES:
            raise QueryError(f"state {state[:40]!r} is not one of {', '.join(STATES)}")
        where.append(f"({STATE_SQL}) = ?")
        params.append(state)
    if version:
        v = version[1:] if version[:1] in "vV" else version
        if version.lower() == "none":
            where.append("version IS NULL")
        elif v.isdigit() and len(v) < 20:
            where.append("version = ?")
            params.append(int(v))
        else:
            raise QueryError(f"version {version[:40]!r}: expected a number like 7 (or none)")
    if group:
        if group.lower() == "none":
            where.append("grp IS NULL")
        else:
            where.append("grp = ?")
            params.append(group)
    return " AND ".join(where), params


def _number(text: str | None, name: str, default: int, top: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or len(text) > 9:
        raise QueryError(f"{name} must be a whole number from 0 to {top}")
    return min(int(text), top)


def device_view(d: dict, now: int, silent_after: int) -> dict:
    """One device as the console shows it: `fleet devices`' row plus its console state."""
    row = render.device_row(d, now, silent_after)
    row.update(console_state=console_state(d["state"], d.get("fail_open")),
               suspect=d.get("suspect", False), quarantined=d.get("quarantined", False),
               reasons=list(d.get("reasons") or []), first_seen=d.get("first_seen"))
    return row


def devices(db: fleetdb.FleetDB, settings: ConsoleSettings, now: int, *, q: str = "", state: str = "",
            version: str = "", group: str = "", limit: str | None = None,
            offset: str | None = None) -> dict:
    """One page of the device table, filtered (q: part of the id, any case; state: a console
    state; version: N or none; group: a group or none), with the number matching and the
    versions and groups to filter by. Raises: QueryError."""
    fleet = settings.fleet
    if len(q) > 200 or len(group) > 200:
        raise QueryError("a filter is longer than 200 characters")
    lim = _number(limit, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    off = _number(offset, "offset", 0, 10**9)
    where, params = device_filter(fleet, q, state, version, group)
    with db._tx("reading the device table") as cur:
        db._exec(cur, f"SELECT COUNT(*) FROM tf_devices WHERE {where}", params)
        matching = cur.fetchone()[0]
        db._exec(cur, fleetdb._DEVICE_SELECT + f"WHERE {where} ORDER BY device_id LIMIT ? OFFSET ?",
                 (*params, lim, off))
        rows = [fleetdb._device_dict(r) for r in db.rows(cur)]
        db._exec(cur, "SELECT COUNT(*) FROM tf_devices WHERE fleet = ?", (fleet,))
        total = cur.fetchone()[0]
        db._exec(cur, "SELECT DISTINCT version FROM tf_devices WHERE fleet = ?", (fleet,))
        versions = sorted((r[0] for r in cur.fetchall()), key=lambda v: -1 if v is None else v,
                          reverse=True)
        db._exec(cur, "SELECT DISTINCT grp FROM tf_devices WHERE fleet = ? AND grp IS NOT NULL "
                      "ORDER BY grp LIMIT 200", (fleet,))
        groups = [r[0] for r in cur.fetchall()]
    return {"fleet": fleet, "time": now, "total": total, "matching": matching, "limit": lim,
            "offset": off, "filter": {"q": q, "state": state, "version": version, "group": group},
            "states": list(STATES), "versions": versions, "groups": groups,
            "devices": [device_view(d, now, settings.silent_after) for d in rows]}


def device_reports(db: fleetdb.FleetDB, fleet: str, device_id: str, limit: int = 50) -> list[dict]:
    """The device's newest stored reports, newest first (as db.reports)."""
    rows = _rows(db, "reading a device's reports",
                 "SELECT id, time, kind, body FROM tf_reports WHERE fleet = ? AND device_id = ? "
                 "ORDER BY id DESC LIMIT ?", (fleet, device_id, limit))
    return [{"id": r["id"], "device": device_id, "time": r["time"], "kind": r["kind"],
             "report": json.loads(r["body"])} for r in rows]


def device_detail(db: fleetdb.FleetDB, settings: ConsoleSettings, device_id: str, now: int) -> dict:
    """One device: its last status (None once forgotten) and its history: device events
    (quarantine, release, forget, fences), the audit entries naming it, and its reports.
    Raises: fleetdb.NotFound when the store has neither a row nor any history of it."""
    fleet = settings.fleet
    d = db.device(fleet, device_id)
    events = list(reversed(db.device_events(fleet, device_id, 100)))
    audit = [e for action in DEVICE_AUDIT for e in db.audit_entries(fleet, 200, action=action)
             if isinstance(e["detail"], dict) and e["detail"].get("device") == device_id]
    audit.sort(key=lambda e: -e["id"])
    reports = device_reports(db, fleet, device_id)
    if d is None and not (events or audit or reports):
        raise fleetdb.NotFound(f"no device {device_id} in fleet {fleet}")
    status = None
    if d is not None:
        status = {**device_view(d, now, settings.silent_after),
                  **{k: d.get(k) for k in ("floor", "bad", "root_version", "trusted_time",
                                           "last_timestamp", "agent_version", "time", "seq", "event",
                                           "detail", "last_revert")}}
    return {"fleet": fleet, "time": now, "device": device_id, "status": status, "events": events,
            "audit": audit, "reports": reports}


# --------------------------------------------------------------------------- reports, audit


def reports(db: fleetdb.FleetDB, settings: ConsoleSettings, now: int, recent: int = 50) -> dict:
    """Reports counted by kind and by domain, duplicates left out (db.report_overview), and the
    newest distinct ones: a report stored again from the same device is shown once, newest,
    with the number of copies among those read (report_overview's rule)."""
    newest: dict[tuple, dict] = {}
    for r in db.reports(settings.fleet, recent * 4):
        key = (r["device"], r["kind"], json.dumps(r["report"], sort_keys=True))
        if key in newest:
            newest[key]["copies"] += 1
        elif len(newest) < recent:
            newest[key] = {**r, "copies": 1}
    return {"fleet": settings.fleet, "time": now,
            "overview": db.report_overview(settings.fleet, 100),
            "recent": list(newest.values())}


def audit(db: fleetdb.FleetDB, settings: ConsoleSettings, now: int, *, limit: str | None = None,
          before: str | None = None, action: str = "") -> dict:
    """The fleet's audit trail, newest first, one page (`before`: the id the next page starts
    below). Raises: QueryError."""
    lim = _number(limit, "limit", DEFAULT_PAGE, MAX_PAGE) or DEFAULT_PAGE
    below = _number(before, "before", 0, 10**18) if before else None
    if len(action) > 100:
        raise QueryError("action is longer than 100 characters")
    entries = db.audit_entries(settings.fleet, lim, below, action or None)
    return {"fleet": settings.fleet, "time": now, "entries": entries, "limit": lim,
            "next_before": entries[-1]["id"] if len(entries) == lim else None}


# --------------------------------------------------------------------------- change detection


def fingerprint(db: fleetdb.FleetDB, fleet: str) -> tuple:
    """A few aggregates that change whenever anything a page shows does: a status stored (seq,
    status time and last seen move; a last will zeroes seq), a report, a rollout decision
    (its revision), an event or an audit entry. One transaction of indexed reads."""
    out: list = []
    with db._tx("checking the fleet for changes") as cur:
        for sql, params in (
                ("SELECT COUNT(*), MAX(last_seen), SUM(seq), SUM(status_time), SUM(quarantined), "
                 "SUM(suspect), SUM(CASE WHEN state = 'offline' THEN 1 ELSE 0 END) "
                 "FROM tf_devices WHERE fleet = ?", (fleet,)),
                ("SELECT MAX(id), MIN(id) FROM tf_reports WHERE fleet = ?", (fleet,)),
                ("SELECT MAX(id), SUM(revision) FROM tf_rollouts WHERE fleet = ?", (fleet,)),
                ("SELECT MAX(id) FROM tf_rollout_events", ()),
                ("SELECT MAX(id) FROM tf_device_events WHERE fleet = ?", (fleet,)),
                ("SELECT MAX(id) FROM tf_audit WHERE fleet = ?", (fleet,))):
            db._exec(cur, sql, params)
            out.extend(cur.fetchone())
    return tuple(out)
