"""Fleet state: device statuses, reports and rollouts, in SQLite or PostgreSQL.

`open_db(target)` takes a file path (SQLite, WAL mode: the default) or a
`postgresql://` URL (psycopg 3, installed with the `postgres` extra). Both
backends run the same SQL and give the same answers; tables are created on
open and carry a schema version in `tf_meta` (a newer schema is refused).

What it trusts: nothing in a status or report. Device statuses come from
the broker, where any client allowed to publish on the topic could have
written them, so every field is type-checked and size-capped
(`normalise_status`) and the device id comes from the topic, not the body.

Ordering of statuses from one device (`ingest_status`, `ingest_statuses`):

- a status replaces the stored one only when its `seq` is greater or its
  `time` is later, so a duplicate (same seq and time) changes nothing and a
  late, older message from the same session is ignored;
- an offline last will (`{"state": "offline"}`) sets the state to offline
  and keeps the last known version and everything else; it also resets the
  stored seq to 0, because the device's next session counts from 1 again
  (its clock may even be behind, e.g. a board without RTC);
- limit: a device that restarts without a will and within the same second
  as its previous status is ignored until its next status.

`ingest_statuses` writes a whole batch in one transaction (executemany of
an UPSERT whose WHERE clause does the ordering), which is what makes
thousands of messages a second possible on SQLite.

Rollouts are stored whole (rollout.Rollout) with an optimistic lock
(`revision`): `claim_rollout` and `save_rollout` only succeed against the
revision read, so two `serve` workers, or a worker and the CLI, never act on
the same decision twice. The topics a rollout may have written are kept
apart (`add_published` before publishing, `remove_published` after
clearing), so an abort that races a wave still clears everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustfleet_device import topics
from trustfleet_server import rollout as ro
from trustfleet_server.errors import FleetStoreError

SCHEMA_VERSION = 1
MAX_STATUS_BYTES = 16 * 1024
MAX_REPORT_BYTES = 16 * 1024
MAX_LIST = 64          # items in bad / reasons / fail_open
MAX_TEXT = 1024        # characters in one text field
MAX_INT = 2**63 - 1
STATES = ("ok", "stale", "trial", "no-store", "offline")


class FleetDBError(FleetStoreError):
    """The fleet database cannot be opened or used (exit code 2)."""


class SchemaError(FleetDBError):
    """The database holds a schema this version does not know."""


class RolloutConflict(FleetDBError):
    """Another rollout of the fleet is active, or the rollout changed under us."""


class NotFound(FleetDBError):
    """No such rollout."""


class StatusError(ValueError):
    """A status or report message is malformed; the message says which field."""


# --------------------------------------------------------------------------- validation

_TEXT_FIELDS = ("last_revert", "event", "detail", "agent_version")
_INT_FIELDS = ("version", "floor", "root_version", "trusted_time", "last_timestamp", "seq", "time")
_LIST_FIELDS = ("reasons", "fail_open")


def _opt_int(status: Mapping, key: str) -> int | None:
    v = status.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_INT:
        raise StatusError(f"{key} must be a non-negative integer, got {v!r}"[:200])
    return v


def _opt_text(status: Mapping, key: str) -> str | None:
    v = status.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise StatusError(f"{key} must be a string, got {type(v).__name__}")
    return v[:MAX_TEXT]


def _text_list(status: Mapping, key: str) -> list[str]:
    v = status.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_LIST or not all(isinstance(x, str) for x in v):
        raise StatusError(f"{key} must be a list of at most {MAX_LIST} strings")
    return [x[:MAX_TEXT] for x in v]


def _int_list(status: Mapping, key: str) -> list[int]:
    v = status.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_LIST or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT for x in v):
        raise StatusError(f"{key} must be a list of at most {MAX_LIST} non-negative integers")
    return v


def decode_message(payload: bytes | str | Mapping, limit: int = MAX_STATUS_BYTES) -> dict:
    """A JSON object from a message payload (or a dict passed through). Raises: StatusError."""
    if isinstance(payload, Mapping):
        return dict(payload)
    if len(payload) > limit:
        raise StatusError(f"message is {len(payload)} bytes, limit is {limit}")
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(f"not JSON: {exc}") from None
    except RecursionError:
        # A device's message must never take the server down ('[' x 2000 did).
        raise StatusError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise StatusError(f"expected a JSON object, got {type(value).__name__}")
    _check_text(value)
    return value


def _check_text(value: object) -> None:
    """Refuse strings that are not Unicode text: JSON's \\u escapes can spell lone surrogates,
    which json.loads accepts and no database can store. Raises: StatusError."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise StatusError("a string holds a lone surrogate escape, not text") from None


def _check_identity(fleet: str, device_id: str, status: Mapping) -> None:
    try:
        topics.check_name(fleet, "fleet")
        topics.check_name(device_id, "device id")
    except ValueError as exc:
        raise StatusError(str(exc)) from None
    if status.get("device") not in (None, device_id):
        raise StatusError(f"device {status.get('device')!r} does not match the topic's {device_id!r}")
    if status.get("fleet") not in (None, fleet):
        raise StatusError(f"fleet {status.get('fleet')!r} does not match {fleet!r}")


def normalise_status(fleet: str, device_id: str, status: Mapping | bytes | str) -> dict:
    """Check a status message and return the fields the store keeps. Raises: StatusError.

    The bucket is computed here from the device id (topics.bucket), never
    taken from the message.
    """
    status = decode_message(status)
    _check_identity(fleet, device_id, status)
    state = status.get("state")
    if not isinstance(state, str) or not 1 <= len(state) <= 32:
        raise StatusError(f"state must be a short string, got {state!r}"[:200])
    group = status.get("group")
    if group is not None:
        if not isinstance(group, str):
            raise StatusError("group must be a string")
        try:
            topics.check_name(group, "group")
        except ValueError as exc:
            raise StatusError(str(exc)) from None
    row = {"fleet": fleet, "device": device_id, "group": group, "bucket": topics.bucket(device_id),
           "state": state, "bad": _int_list(status, "bad")}
    for key in _INT_FIELDS:
        row[key] = _opt_int(status, key)
    for key in _TEXT_FIELDS:
        row[key] = _opt_text(status, key)
    for key in _LIST_FIELDS:
        row[key] = _text_list(status, key)
    raw = json.dumps(status, separators=(",", ":"), sort_keys=True)
    if len(raw) > MAX_STATUS_BYTES:
        raise StatusError(f"status is {len(raw)} bytes, limit is {MAX_STATUS_BYTES}")
    row["raw"] = raw
    return row


def normalise_report(fleet: str, device_id: str, report: Mapping | bytes | str) -> tuple[str, str]:
    """(kind, JSON text) of a report message. Raises: StatusError."""
    report = decode_message(report, MAX_REPORT_BYTES)
    _check_identity(fleet, device_id, report)
    kind = report.get("validation-result") or report.get("event") or "report"
    if not isinstance(kind, str):
        raise StatusError("validation-result must be a string")
    return kind[:64], json.dumps(report, separators=(",", ":"), sort_keys=True)


@dataclass
class IngestResult:
    """What a batch did: statuses stored, ignored (duplicate or older), rejected (malformed)."""

    accepted: int = 0
    ignored: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def __iadd__(self, other: IngestResult) -> IngestResult:
        self.accepted += other.accepted
        self.ignored += other.ignored
        self.rejected.extend(other.rejected)
        return self


# --------------------------------------------------------------------------- schema

_TABLES = """
CREATE TABLE IF NOT EXISTS tf_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tf_devices (
    fleet TEXT NOT NULL,
    device_id TEXT NOT NULL,
    grp TEXT,
    bucket INTEGER NOT NULL,
    state TEXT NOT NULL,
    version BIGINT,
    floor BIGINT,
    bad TEXT NOT NULL DEFAULT '[]',
    last_revert TEXT,
    reasons TEXT NOT NULL DEFAULT '[]',
    fail_open TEXT NOT NULL DEFAULT '[]',
    root_version BIGINT,
    trusted_time BIGINT,
    last_timestamp BIGINT,
    agent_version TEXT,
    status_time BIGINT NOT NULL DEFAULT 0,
    seq BIGINT NOT NULL DEFAULT 0,
    event TEXT,
    detail TEXT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    raw TEXT NOT NULL,
    PRIMARY KEY (fleet, device_id)
);
CREATE INDEX IF NOT EXISTS tf_devices_fleet_state ON tf_devices (fleet, state);
CREATE TABLE IF NOT EXISTS tf_reports (
    id {serial},
    fleet TEXT NOT NULL,
    device_id TEXT NOT NULL,
    time BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tf_reports_fleet_time ON tf_reports (fleet, time);
CREATE TABLE IF NOT EXISTS tf_rollouts (
    id {serial},
    fleet TEXT NOT NULL,
    version BIGINT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    bundle {blob} NOT NULL,
    waves TEXT NOT NULL,
    current_wave INTEGER NOT NULL,
    state TEXT NOT NULL,
    started BIGINT NOT NULL,
    wave_started BIGINT,
    paused_at BIGINT,
    finished BIGINT,
    thresholds TEXT NOT NULL,
    halt_reason TEXT,
    failing TEXT NOT NULL DEFAULT '[]',
    published TEXT NOT NULL DEFAULT '[]',
    revision INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tf_rollouts_fleet ON tf_rollouts (fleet, id);
CREATE TABLE IF NOT EXISTS tf_rollout_events (
    id {serial},
    rollout_id BIGINT NOT NULL REFERENCES tf_rollouts (id),
    time BIGINT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tf_rollout_events_rollout ON tf_rollout_events (rollout_id, id);
"""

_STATUS_COLUMNS = ("fleet", "device_id", "grp", "bucket", "state", "version", "floor", "bad",
                   "last_revert", "reasons", "fail_open", "root_version", "trusted_time",
                   "last_timestamp", "agent_version", "status_time", "seq", "event", "detail",
                   "first_seen", "last_seen", "raw")
_KEEP_ON_UPDATE = ("fleet", "device_id", "first_seen")

_UPSERT_STATUS = (
    f"INSERT INTO tf_devices ({', '.join(_STATUS_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _STATUS_COLUMNS)}) "
    "ON CONFLICT (fleet, device_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STATUS_COLUMNS if c not in _KEEP_ON_UPDATE)
    + " WHERE excluded.seq > tf_devices.seq OR excluded.status_time > tf_devices.status_time"
)

# A last will: offline, seq back to 0, everything else as last known.
_UPSERT_OFFLINE = (
    "INSERT INTO tf_devices (fleet, device_id, grp, bucket, state, first_seen, last_seen, raw) "
    "VALUES (?, ?, NULL, ?, 'offline', ?, ?, ?) "
    "ON CONFLICT (fleet, device_id) DO UPDATE SET state = 'offline', seq = 0, "
    "last_seen = excluded.last_seen "
    "WHERE tf_devices.state <> 'offline' OR tf_devices.seq <> 0"
)

_DEVICE_SELECT = ("SELECT device_id, grp, bucket, state, version, floor, bad, last_revert, reasons, "
                  "fail_open, root_version, trusted_time, last_timestamp, agent_version, "
                  "status_time, seq, event, detail, first_seen, last_seen FROM tf_devices ")

_ROLLOUT_SELECT = ("SELECT id, fleet, version, bundle_sha256, bundle, waves, current_wave, state, "
                   "started, wave_started, paused_at, finished, thresholds, halt_reason, failing, "
                   "published, revision FROM tf_rollouts ")


def _status_row(row: dict, now: int) -> tuple:
    return (row["fleet"], row["device"], row["group"], row["bucket"], row["state"], row["version"],
            row["floor"], json.dumps(row["bad"]), row["last_revert"], json.dumps(row["reasons"]),
            json.dumps(row["fail_open"]), row["root_version"], row["trusted_time"],
            row["last_timestamp"], row["agent_version"], row["time"] or 0, row["seq"] or 0,
            row["event"], row["detail"], now, now, row["raw"])


def _device_dict(fleet: str, r: Sequence) -> dict:
    return {"device": r[0], "fleet": fleet, "group": r[1], "bucket": r[2], "state": r[3],
            "version": r[4], "floor": r[5], "bad": json.loads(r[6]), "last_revert": r[7],
            "reasons": json.loads(r[8]), "fail_open": json.loads(r[9]), "root_version": r[10],
            "trusted_time": r[11], "last_timestamp": r[12], "agent_version": r[13],
            "time": r[14], "seq": r[15], "event": r[16], "detail": r[17], "first_seen": r[18],
            "last_seen": r[19]}


def _rollout_from_row(r: Sequence) -> ro.Rollout:
    th = json.loads(r[12])
    return ro.Rollout(
        id=r[0], fleet=r[1], version=r[2], sha256=r[3], bundle=bytes(r[4]),
        waves=tuple(ro.Wave.from_json(w) for w in json.loads(r[5])), current=r[6], state=r[7],
        started=r[8], wave_started=r[9], paused_at=r[10], finished=r[11],
        success=th["success"], max_failure=th["max_failure"], deadline=th["deadline"],
        halt_reason=r[13], failing=tuple(json.loads(r[14])), published=tuple(json.loads(r[15])),
        revision=r[16])


# --------------------------------------------------------------------------- the store


class FleetDB:
    """One connection to the fleet store. Not thread-safe: one per thread or process."""

    def __init__(self, conn: Any, dialect: str, where: str, reconnect: Any = None) -> None:
        self._conn = conn
        self.dialect = dialect
        self.where = where
        self._reconnect = reconnect
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        if dialect == "postgresql":
            import psycopg

            self._errors = (psycopg.Error,)
        self._create_schema()

    # -- plumbing -------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextlib.contextmanager
    def _tx(self, what: str, write: bool = False) -> Iterator[Any]:
        """A transaction; every driver error becomes a FleetDBError naming `what`.

        On SQLite a writer takes the write lock up front (BEGIN IMMEDIATE), so
        two writers queue on the busy timeout instead of failing on upgrade.
        """
        if self._reconnect is not None and getattr(self._conn, "closed", False):
            self._conn = self._reconnect()
        try:
            if self.dialect == "sqlite":
                self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            cur = self._conn.cursor()
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()
        except self._errors as exc:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            raise FleetDBError(f"{self.where}: {what} failed: {_first_line(exc)}") from None

    def _exec(self, cur: Any, sql: str, params: Sequence = ()) -> Any:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> FleetDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema(self) -> None:
        serial = ("INTEGER PRIMARY KEY AUTOINCREMENT" if self.dialect == "sqlite"
                  else "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        blob = "BLOB" if self.dialect == "sqlite" else "BYTEA"
        ddl = _TABLES.format(serial=serial, blob=blob)
        with self._tx("creating the schema", write=True) as cur:
            if self.dialect == "postgresql":
                # Two workers starting together must not race on CREATE TABLE.
                cur.execute("SELECT pg_advisory_xact_lock(7423120001)")
            for statement in ddl.split(";"):
                if statement.strip():
                    cur.execute(statement)
            self._exec(cur, "SELECT value FROM tf_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            if row is None:
                self._exec(cur, "INSERT INTO tf_meta (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
                found = SCHEMA_VERSION
            else:
                found = int(row[0])
        if found > SCHEMA_VERSION:
            raise SchemaError(f"{self.where}: schema v{found} is newer than this trustfleet "
                              f"understands (v{SCHEMA_VERSION}); upgrade trustfleet")
        # Older schemas would be migrated here, one version at a time.

    def schema_version(self) -> int:
        with self._tx("reading the schema version") as cur:
            self._exec(cur, "SELECT value FROM tf_meta WHERE key = 'schema_version'")
            return int(cur.fetchone()[0])

    # -- statuses ---------------------------------------------------------------

    def ingest_status(self, fleet: str, device_id: str, status: Mapping | bytes | str, now: int) -> bool:
        """Store one status message. Returns True when it changed the stored state.

        Raises:
            StatusError: the message is malformed.
            FleetDBError: the database failed.
        """
        result = self.ingest_statuses([(fleet, device_id, status, now)])
        if result.rejected:
            raise StatusError(result.rejected[0][1])
        return result.accepted > 0

    def ingest_statuses(self, batch: Iterable[tuple[str, str, Mapping | bytes | str, int]]) -> IngestResult:
        """Store many status messages, in order, in one transaction.

        Args:
            batch: (fleet, device_id, status dict or JSON bytes, now) per message.
                Malformed messages are skipped and listed in the result; empty
                payloads (a cleared retained topic) are ignored.

        Raises:
            FleetDBError: the database failed (nothing of the batch is stored).
        """
        result = IngestResult()
        runs: list[tuple[str, list[tuple]]] = []  # consecutive (kind, rows): keeps the order
        for fleet, device_id, status, now in batch:
            if not status:
                result.ignored += 1
                continue
            try:
                row = normalise_status(fleet, device_id, status)
            except StatusError as exc:
                result.rejected.append((device_id, str(exc)))
                continue
            if row["state"] == "offline":
                params = (fleet, device_id, row["bucket"], now, now, row["raw"])
                kind = "offline"
            else:
                params, kind = _status_row(row, now), "status"
            if runs and runs[-1][0] == kind:
                runs[-1][1].append(params)
            else:
                runs.append((kind, [params]))
        if not runs:
            return result
        total = sum(len(rows) for _, rows in runs)
        changed = 0
        with self._tx("storing statuses", write=True) as cur:
            for kind, rows in runs:
                sql = _UPSERT_STATUS if kind == "status" else _UPSERT_OFFLINE
                changed += self._executemany_changes(cur, sql, rows)
        result.accepted += changed
        result.ignored += total - changed
        return result

    def _executemany_changes(self, cur: Any, sql: str, rows: list[tuple]) -> int:
        """executemany, returning how many rows it inserted or updated."""
        if self.dialect == "sqlite":
            # sqlite3's rowcount after executemany does not count upserts reliably.
            before = self._conn.total_changes
            cur.executemany(sql, rows)
            return self._conn.total_changes - before
        cur.executemany(self._sql(sql), rows)
        return max(cur.rowcount, 0)

    def devices(self, fleet: str) -> list[dict]:
        """Every device of the fleet as a dict of its last status (docs/topics.md fields)."""
        with self._tx("reading devices") as cur:
            self._exec(cur, _DEVICE_SELECT + "WHERE fleet = ? ORDER BY device_id", (fleet,))
            return [_device_dict(fleet, r) for r in cur.fetchall()]

    def device(self, fleet: str, device_id: str) -> dict | None:
        with self._tx("reading a device") as cur:
            self._exec(cur, _DEVICE_SELECT + "WHERE fleet = ? AND device_id = ?", (fleet, device_id))
            r = cur.fetchone()
            return _device_dict(fleet, r) if r else None

    def max_version(self, fleet: str) -> int | None:
        """The highest bundle version any device of the fleet reports."""
        with self._tx("reading versions") as cur:
            self._exec(cur, "SELECT MAX(version) FROM tf_devices WHERE fleet = ?", (fleet,))
            return cur.fetchone()[0]

    # -- reports ------------------------------------------------------------------

    def add_report(self, fleet: str, device_id: str, report: Mapping | bytes | str, now: int) -> None:
        """Store one failure report. Raises: StatusError, FleetDBError."""
        result = self.add_reports([(fleet, device_id, report, now)])
        if result.rejected:
            raise StatusError(result.rejected[0][1])

    def add_reports(self, batch: Iterable[tuple[str, str, Mapping | bytes | str, int]]) -> IngestResult:
        """Store many reports in one transaction; malformed ones are listed, not stored."""
        result = IngestResult()
        rows = []
        for fleet, device_id, report, now in batch:
            try:
                kind, body = normalise_report(fleet, device_id, report)
            except StatusError as exc:
                result.rejected.append((device_id, str(exc)))
                continue
            rows.append((fleet, device_id, now, kind, body))
        if rows:
            with self._tx("storing reports", write=True) as cur:
                cur.executemany(self._sql(
                    "INSERT INTO tf_reports (fleet, device_id, time, kind, body) VALUES (?, ?, ?, ?, ?)"),
                    rows)
        result.accepted = len(rows)
        return result

    def reports(self, fleet: str, limit: int = 20, since: int | None = None) -> list[dict]:
        """The newest reports of the fleet, newest first."""
        with self._tx("reading reports") as cur:
            self._exec(cur, "SELECT id, device_id, time, kind, body FROM tf_reports "
                            "WHERE fleet = ? AND time >= ? ORDER BY time DESC, id DESC LIMIT ?",
                       (fleet, since or 0, limit))
            return [{"id": r[0], "device": r[1], "time": r[2], "kind": r[3], "report": json.loads(r[4])}
                    for r in cur.fetchall()]

    # -- summary ------------------------------------------------------------------

    def summary(self, fleet: str, now: int | None = None, silent_after: int = 86_400, limit: int = 50,
                recent: int = 10) -> dict:
        """Counts by version and state, and the devices that need a look.

        Returns a dict: devices (total), table ([{version, state, count}]),
        by_state, by_version, stale / fail_open / offline / silent (lists of
        at most `limit` devices, with *_count for the full number), reports
        (the `recent` newest). Silent = not offline but not heard from for
        `silent_after` seconds.
        """
        now = int(time.time()) if now is None else now
        with self._tx("summarising the fleet") as cur:
            self._exec(cur, "SELECT version, state, COUNT(*) FROM tf_devices WHERE fleet = ? "
                            "GROUP BY version, state", (fleet,))
            table = [{"version": v, "state": s, "count": c} for v, s, c in cur.fetchall()]
            table.sort(key=lambda t: (-1 if t["version"] is None else t["version"], t["state"]))

            def listed(where: str, params: tuple, cols: str = "device_id, version, state, last_seen"):
                self._exec(cur, f"SELECT COUNT(*) FROM tf_devices WHERE fleet = ? AND {where}",
                           (fleet, *params))
                count = cur.fetchone()[0]
                self._exec(cur, f"SELECT {cols} FROM tf_devices WHERE fleet = ? AND {where} "
                                "ORDER BY device_id LIMIT ?", (fleet, *params, limit))
                return count, cur.fetchall()

            stale_n, stale = listed("state = 'stale'", (), "device_id, version, reasons, last_seen")
            fo_n, fo = listed("fail_open <> '[]'", (), "device_id, version, fail_open, last_seen")
            off_n, off = listed("state = 'offline'", ())
            sil_n, sil = listed("state <> 'offline' AND last_seen < ?", (now - silent_after,))
        by_state: dict[str, int] = {}
        by_version: dict[str, int] = {}
        for t in table:
            by_state[t["state"]] = by_state.get(t["state"], 0) + t["count"]
            key = "none" if t["version"] is None else str(t["version"])
            by_version[key] = by_version.get(key, 0) + t["count"]
        return {
            "fleet": fleet, "time": now, "devices": sum(t["count"] for t in table),
            "table": table, "by_state": by_state, "by_version": by_version,
            "stale": [{"device": d, "version": v, "reasons": json.loads(r), "last_seen": s}
                      for d, v, r, s in stale], "stale_count": stale_n,
            "fail_open": [{"device": d, "version": v, "domains": json.loads(f), "last_seen": s}
                          for d, v, f, s in fo], "fail_open_count": fo_n,
            "offline": [{"device": d, "version": v, "last_seen": s} for d, v, _, s in off],
            "offline_count": off_n,
            "silent": [{"device": d, "version": v, "state": st, "last_seen": s} for d, v, st, s in sil],
            "silent_count": sil_n,
            "reports": self.reports(fleet, recent),
        }

    # -- rollouts -------------------------------------------------------------------

    def create_rollout(self, r: ro.Rollout) -> ro.Rollout:
        """Store a new rollout. Returns it with its id.

        Raises:
            RolloutConflict: the fleet has a running or paused rollout, or one
                whose topics are not cleared yet.
        """
        with self._tx("creating a rollout", write=True) as cur:
            self._exec(cur, "SELECT id, state, published FROM tf_rollouts WHERE fleet = ? AND "
                            "(state IN ('running', 'paused') OR published <> '[]')", (r.fleet,))
            busy = cur.fetchone()
            if busy is not None:
                what = busy[1] if busy[1] in ro.ACTIVE else f"{busy[1]} but its topics are not cleared yet"
                raise RolloutConflict(f"rollout {busy[0]} of fleet {r.fleet} is {what}; "
                                      "abort it (with --broker to clear at once) or let it finish")
            self._exec(cur, "INSERT INTO tf_rollouts (fleet, version, bundle_sha256, bundle, waves, "
                            "current_wave, state, started, wave_started, paused_at, finished, "
                            "thresholds, halt_reason, failing, published, revision) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
                            + (" RETURNING id" if self.dialect == "postgresql" else ""),
                       (r.fleet, r.version, r.sha256, r.bundle,
                        json.dumps([w.to_json() for w in r.waves]), r.current, r.state, r.started,
                        r.wave_started, r.paused_at, r.finished, json.dumps(r.thresholds()),
                        r.halt_reason, json.dumps(list(r.failing)), json.dumps(list(r.published))))
            new_id = cur.fetchone()[0] if self.dialect == "postgresql" else cur.lastrowid
        return self.rollout(new_id)

    def rollout(self, rollout_id: int) -> ro.Rollout:
        """Raises: NotFound."""
        with self._tx("reading a rollout") as cur:
            self._exec(cur, _ROLLOUT_SELECT + "WHERE id = ?", (rollout_id,))
            r = cur.fetchone()
        if r is None:
            raise NotFound(f"no rollout {rollout_id}")
        return _rollout_from_row(r)

    def rollouts(self, fleet: str, limit: int = 20) -> list[ro.Rollout]:
        """The fleet's rollouts, newest first."""
        with self._tx("listing rollouts") as cur:
            self._exec(cur, _ROLLOUT_SELECT + "WHERE fleet = ? ORDER BY id DESC LIMIT ?", (fleet, limit))
            return [_rollout_from_row(r) for r in cur.fetchall()]

    def latest_rollout(self, fleet: str) -> ro.Rollout | None:
        found = self.rollouts(fleet, 1)
        return found[0] if found else None

    def rollout_to_drive(self, fleet: str) -> ro.Rollout | None:
        """The rollout `serve` must step: running or paused, or final with topics left to clear."""
        with self._tx("reading rollouts") as cur:
            self._exec(cur, _ROLLOUT_SELECT + "WHERE fleet = ? AND (state IN ('running', 'paused') "
                            "OR published <> '[]') ORDER BY id LIMIT 1", (fleet,))
            r = cur.fetchone()
        return _rollout_from_row(r) if r else None

    def latest_done(self, fleet: str) -> ro.Rollout | None:
        """The newest rollout that reached the whole fleet."""
        with self._tx("reading rollouts") as cur:
            self._exec(cur, _ROLLOUT_SELECT + "WHERE fleet = ? AND state = 'done' "
                            "ORDER BY version DESC, id DESC LIMIT 1", (fleet,))
            r = cur.fetchone()
        return _rollout_from_row(r) if r else None

    def claim_rollout(self, rollout_id: int, revision: int) -> bool:
        """Take the right to act on `revision` (bumps it by one). False when someone else did."""
        with self._tx("claiming a rollout", write=True) as cur:
            self._exec(cur, "UPDATE tf_rollouts SET revision = revision + 1 WHERE id = ? AND revision = ?",
                       (rollout_id, revision))
            return cur.rowcount == 1

    def save_rollout(self, r: ro.Rollout, expected_revision: int) -> bool:
        """Write the rollout's state (not its published topics) if still at `expected_revision`.

        Returns False when it changed in between (nothing written).
        """
        with self._tx("saving a rollout", write=True) as cur:
            self._exec(cur, "UPDATE tf_rollouts SET current_wave = ?, state = ?, wave_started = ?, "
                            "paused_at = ?, finished = ?, halt_reason = ?, failing = ?, "
                            "revision = revision + 1 WHERE id = ? AND revision = ?",
                       (r.current, r.state, r.wave_started, r.paused_at, r.finished, r.halt_reason,
                        json.dumps(list(r.failing)), r.id, expected_revision))
            return cur.rowcount == 1

    def update_rollout(self, rollout_id: int, change: Any, tries: int = 5) -> ro.Rollout:
        """Read, apply change(rollout) -> rollout, save; retried when the revision moved.

        Raises:
            RolloutConflict: still changing after `tries` attempts.
            NotFound, rollout.RolloutError: from the read or the change.
        """
        for _ in range(tries):
            r = self.rollout(rollout_id)
            new = change(r)
            if self.save_rollout(new, r.revision):
                return self.rollout(rollout_id)
        raise RolloutConflict(f"rollout {rollout_id} keeps changing; try again")

    def _edit_published(self, rollout_id: int, add: Sequence[str], remove: Sequence[str]) -> None:
        with self._tx("recording published topics", write=True) as cur:
            lock = " FOR UPDATE" if self.dialect == "postgresql" else ""
            self._exec(cur, f"SELECT published FROM tf_rollouts WHERE id = ?{lock}", (rollout_id,))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            current = json.loads(row[0])
            current += [t for t in add if t not in current]
            current = [t for t in current if t not in set(remove)]
            self._exec(cur, "UPDATE tf_rollouts SET published = ? WHERE id = ?",
                       (json.dumps(current), rollout_id))

    def add_published(self, rollout_id: int, topic_names: Sequence[str]) -> None:
        """Record topics about to carry the rollout's bundle (before publishing them)."""
        self._edit_published(rollout_id, topic_names, ())

    def remove_published(self, rollout_id: int, topic_names: Sequence[str]) -> None:
        """Forget topics once they have been cleared (or, after done, handed to the fleet topic)."""
        self._edit_published(rollout_id, (), topic_names)

    def add_event(self, rollout_id: int, now: int, text: str) -> None:
        with self._tx("recording an event", write=True) as cur:
            self._exec(cur, "INSERT INTO tf_rollout_events (rollout_id, time, text) VALUES (?, ?, ?)",
                       (rollout_id, now, text[:2000]))

    def events(self, rollout_id: int, limit: int = 50) -> list[dict]:
        """The rollout's newest events, oldest first."""
        with self._tx("reading events") as cur:
            self._exec(cur, "SELECT id, time, text FROM tf_rollout_events WHERE rollout_id = ? "
                            "ORDER BY id DESC LIMIT ?", (rollout_id, limit))
            rows = cur.fetchall()
        return [{"id": i, "time": t, "text": x} for i, t, x in reversed(rows)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------- opening


def is_postgres(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def open_db(target: str | os.PathLike[str]) -> FleetDB:
    """Open (and create if needed) the fleet store.

    Args:
        target: a file path for SQLite, or a postgresql:// URL. libpq URL
            options work, e.g. `?options=-csearch_path%3Dtrustfleet` for a schema.

    Raises:
        FleetDBError: cannot open, or the schema is newer than this code.
    """
    target = os.fspath(target)
    if is_postgres(target):
        return _open_postgres(target)
    return _open_sqlite(target)


def _open_sqlite(path: str) -> FleetDB:
    try:
        # Autocommit at the driver level: transactions are explicit (BEGIN IMMEDIATE),
        # so a reader never holds a lock and writers queue on busy_timeout.
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        raise FleetDBError(f"{path}: cannot open the SQLite database: {_first_line(exc)}") from None
    return FleetDB(conn, "sqlite", path)


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _open_postgres(url: str) -> FleetDB:
    where = _redact(url)
    try:
        import psycopg
    except ImportError:
        raise FleetDBError(f"{where}: PostgreSQL needs psycopg 3: pip install 'trustfleet[postgres]'") from None

    def connect() -> Any:
        try:
            return psycopg.connect(url, autocommit=False, connect_timeout=10)
        except psycopg.Error as exc:
            raise FleetDBError(f"{where}: cannot connect: {_first_line(exc)}") from None

    return FleetDB(connect(), "postgresql", where, reconnect=connect)
