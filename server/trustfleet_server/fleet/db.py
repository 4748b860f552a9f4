"""Fleet state: device statuses, reports and rollouts, in SQLite or PostgreSQL.

`open_db(target)` takes a file path (SQLite, WAL mode: the default) or a
`postgresql://` URL (fleet.sql: the shim that runs the same SQL on both).
Tables are created on open and carry a schema version in `tf_meta` (a newer
schema is refused). Messages are checked by fleet.messages against the one
status schema (trustfleet_device.status); each status field is stored in the
column of its name (_COLUMN lists the three exceptions) and rows are read
back by column name.

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

`ingest_statuses` writes a whole batch in one transaction: an UPSERT whose
WHERE clause does the ordering, by executemany, or on PostgreSQL for a run of
COPY_MIN statuses or more, COPY into a temporary table and the same UPSERT as
one INSERT ... SELECT. Each message is decoded and validated once
(`check_status_message`, which serve calls as a status arrives) into the row
written; `raw` keeps the payload as received. `store_statuses` writes rows
checked that way.

Failure reports are kept within `Retention` limits (newest N per device, newest
N overall, a maximum age; open_db's `retention`): `add_reports` prunes, in the
batch's transaction, every `every` stored reports, with index range deletes
(tf_reports_device for the per-device cap). Statuses, devices and events are
never pruned.

Rollouts are stored whole (rollout.Rollout) with an optimistic lock
(`revision`): `claim_rollout` and `save_rollout` only succeed against the
revision read, so two `serve` workers, or a worker and the CLI, never act on
the same decision twice. The topics a rollout may have written are kept
apart (`add_published` before publishing, `remove_published` after
clearing), so an abort that races a wave still clears everything. When a wave
ends (it passed, the rollout halted or was aborted on it) its result is kept in
tf_wave_results, written with the rollout's new state (`save_rollout(...,
ended)`): the counts and failing devices the decision was made on, which
`rollout status` shows afterwards instead of counting again.

Leadership: one row per fleet in tf_leases (holder, expires in ms). `acquire_lease` is
a compare-and-set (an UPSERT whose WHERE lets only the holder renew, or anyone take an
expired lease), the same SQL on SQLite (BEGIN IMMEDIATE) and PostgreSQL (the conflicting
row is locked and the WHERE evaluated again), so at most one worker holds it at a time.
`claim_rollout(..., lease=...)` also checks the lease in its transaction.

Audit trail: tf_audit holds who did what (publish, rollout and device actions: `add_audit`,
read newest first by `audit_entries`). Triggers refuse UPDATE and DELETE on it (and TRUNCATE
on PostgreSQL), so trustfleet only ever appends; whoever owns the database can still drop them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustfleet_device import status as schema
from trustfleet_device import topics
from trustfleet_server import rollout as ro
from trustfleet_server.fleet import sql
from trustfleet_server.fleet.messages import StatusError, check_status, normalise_report
from trustfleet_server.fleet.sql import FleetDBError, is_postgres

__all__ = ["FleetDB", "FleetDBError", "IngestResult", "NotFound", "Retention", "RolloutConflict",
           "SCHEMA_VERSION", "SchemaError", "StatusError", "Target", "is_postgres", "open_db"]

SCHEMA_VERSION = 5
# v2: tf_published (the bundle versions the fleet published), tf_devices.suspect and
# .quarantined, tf_device_events (audited quarantine/forget). _MIGRATIONS upgrades v1 in place.
# v3: tf_wave_results (each wave's counts and failing devices when it ended); waves that ended
# in a v2 store have none and show as "not recorded".
# v4: tf_leases (which `serve` worker leads each fleet, until when: acquire_lease).
# v5: tf_audit (the audit trail, append-only through triggers: _AUDIT_GUARD).


class SchemaError(FleetDBError):
    """The database holds a schema this version does not know."""


class RolloutConflict(FleetDBError):
    """Another rollout of the fleet is active, or the rollout changed under us."""


class NotFound(FleetDBError):
    """No such rollout."""


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


@dataclass(frozen=True)
class Retention:
    """How many failure reports the store keeps (0 turns a limit off).

    per_device: the newest N reports of each device; total: the newest N of the
    whole table; max_age: seconds (by the report's stored time). Enforced by
    add_reports every `every` stored reports, or every `per_device` when that
    is smaller (and on the first batch after opening), so between two prunes a
    table may hold that many rows more.
    Newest = highest id (insertion order). Events and devices are never pruned.
    """

    per_device: int = 1000
    total: int = 1_000_000
    max_age: int = 30 * 86_400
    every: int = 1000


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
    suspect INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
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
CREATE INDEX IF NOT EXISTS tf_reports_device ON tf_reports (fleet, device_id, id);
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
CREATE TABLE IF NOT EXISTS tf_published (
    fleet TEXT NOT NULL,
    version BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    time BIGINT NOT NULL,
    PRIMARY KEY (fleet, version)
);
CREATE TABLE IF NOT EXISTS tf_device_events (
    id {serial},
    fleet TEXT NOT NULL,
    device_id TEXT NOT NULL,
    time BIGINT NOT NULL,
    action TEXT NOT NULL,
    who TEXT NOT NULL,
    why TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tf_device_events_device ON tf_device_events (fleet, device_id, id);
CREATE TABLE IF NOT EXISTS tf_wave_results (
    rollout_id BIGINT NOT NULL REFERENCES tf_rollouts (id),
    wave INTEGER NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL,
    time BIGINT NOT NULL,
    members INTEGER NOT NULL,
    succeeded INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    offline INTEGER NOT NULL,
    silent INTEGER NOT NULL,
    excluded INTEGER NOT NULL,
    failing TEXT NOT NULL DEFAULT '[]',
    reason TEXT,
    PRIMARY KEY (rollout_id, wave)
);
CREATE TABLE IF NOT EXISTS tf_leases (
    fleet TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tf_audit (
    id {serial},
    fleet TEXT NOT NULL,
    time BIGINT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    host TEXT NOT NULL,
    source TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS tf_audit_fleet ON tf_audit (fleet, id);
"""

# tf_audit is append-only: these refuse UPDATE and DELETE (statements with their own ';', so run
# one by one after _TABLES). PostgreSQL: function and trigger are created only when the trigger is
# missing, so opening the store needs no ownership of them.
_AUDIT_REFUSED = "tf_audit is append-only"
_AUDIT_GUARD = {
    "sqlite": tuple(
        f"CREATE TRIGGER IF NOT EXISTS tf_audit_no_{op.lower()} BEFORE {op} ON tf_audit "
        f"BEGIN SELECT RAISE(ABORT, '{_AUDIT_REFUSED}'); END" for op in ("UPDATE", "DELETE")),
    "postgresql": (
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'tf_audit_append_only' "
        "AND tgrelid = 'tf_audit'::regclass) THEN "
        "CREATE OR REPLACE FUNCTION tf_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        f"$f$ BEGIN RAISE EXCEPTION '{_AUDIT_REFUSED}'; END $f$; "
        "CREATE TRIGGER tf_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON tf_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION tf_audit_refuse(); END IF; END $$",
    ),
}
AUDIT_SOURCES = ("cli", "console", "serve")

# Schema upgrades, by the version they upgrade from. Tables new in a version are created by
# _TABLES (IF NOT EXISTS); columns added to existing tables, and data to fill, come here.
_SUSPECT_FROM_HISTORY = (
    "UPDATE tf_devices SET suspect = CASE WHEN version IS NOT NULL AND version > COALESCE("
    "(SELECT MAX(p.version) FROM tf_published p WHERE p.fleet = tf_devices.fleet), 0) "
    "THEN 1 ELSE 0 END")
_MIGRATIONS = {
    1: (
        "ALTER TABLE tf_devices ADD COLUMN suspect INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tf_devices ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0",
        # What rollouts already published is history the fleet can trust.
        "INSERT INTO tf_published (fleet, version, sha256, source, time) "
        "SELECT fleet, version, MIN(bundle_sha256), 'rollout', MIN(started) FROM tf_rollouts "
        "GROUP BY fleet, version",
        _SUSPECT_FROM_HISTORY,
    ),
    2: (),  # tf_wave_results is a new table (_TABLES); ended waves of v2 have no results to fill
    3: (),  # tf_leases is a new table (_TABLES): no worker leads until one takes the lease
    4: (),  # tf_audit is a new table (_TABLES), its triggers _AUDIT_GUARD: the trail starts empty
}

# Status field -> tf_devices column: the field's own name, except these (GROUP is an SQL
# keyword; the table's names predate the schema and existing databases keep them).
_COLUMN = {"device": "device_id", "group": "grp", "time": "status_time"}
_FIELD_COLUMNS = tuple((name, _COLUMN.get(name, name)) for name in schema.NAMES)
_JSON_FIELDS = tuple(name for name, kind in schema.FIELDS if kind in (schema.INTS, schema.TEXTS))
_ZERO_IF_NULL = ("time", "seq")  # NOT NULL DEFAULT 0: the ordering compares them
_STATUS_COLUMNS = tuple(c for _, c in _FIELD_COLUMNS) + ("first_seen", "last_seen", "raw", "suspect")
_KEEP_ON_UPDATE = ("fleet", "device_id", "first_seen")

_UPSERT_STATUS = (
    f"INSERT INTO tf_devices ({', '.join(_STATUS_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _STATUS_COLUMNS)}) "
    "ON CONFLICT (fleet, device_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STATUS_COLUMNS if c not in _KEEP_ON_UPDATE)
    + " WHERE excluded.seq > tf_devices.seq OR excluded.status_time > tf_devices.status_time"
)

# The same UPSERT for many rows at once on PostgreSQL (FleetDB._copy_upsert).
_COPY_STATUS = f"COPY tf_status_in ({', '.join(_STATUS_COLUMNS)}) FROM STDIN"
_UPSERT_FROM_COPY = (
    f"INSERT INTO tf_devices ({', '.join(_STATUS_COLUMNS)}) "
    f"SELECT {', '.join(_STATUS_COLUMNS)} FROM tf_status_in "
    + _UPSERT_STATUS[_UPSERT_STATUS.index("ON CONFLICT"):]
)

# A last will: offline, seq back to 0, everything else as last known.
_UPSERT_OFFLINE = (
    "INSERT INTO tf_devices (fleet, device_id, grp, bucket, state, first_seen, last_seen, raw) "
    "VALUES (?, ?, NULL, ?, 'offline', ?, ?, ?) "
    "ON CONFLICT (fleet, device_id) DO UPDATE SET state = 'offline', seq = 0, "
    "last_seen = excluded.last_seen "
    "WHERE tf_devices.state <> 'offline' OR tf_devices.seq <> 0"
)

_DEVICE_SELECT = ("SELECT " + ", ".join(c for _, c in _FIELD_COLUMNS)
                  + ", first_seen, last_seen, suspect, quarantined FROM tf_devices ")

_ROLLOUT_SELECT = ("SELECT id, fleet, version, bundle_sha256, bundle, waves, current_wave, state, "
                   "started, wave_started, paused_at, finished, thresholds, halt_reason, failing, "
                   "published, revision FROM tf_rollouts ")


# How each status field becomes its column's value (_checked).
_AS_IS, _INTS_JSON, _TEXTS_JSON, _ZERO = 0, 1, 2, 3
_LAYOUT = tuple((name, _INTS_JSON if kind == schema.INTS else _TEXTS_JSON if kind == schema.TEXTS
                 else _ZERO if name in _ZERO_IF_NULL else _AS_IS)
                for name, kind in schema.FIELDS[4:])  # after device, fleet, group and bucket
COPY_MIN = 64  # PostgreSQL: a run of at least this many statuses goes through COPY (_copy_upsert)


def _checked(row: dict, fleet: str, device_id: str, bucket: int, raw: str, now: int) -> tuple:
    """What a checked status needs in the store: ("status", values of _STATUS_COLUMNS without
    suspect, claimed version), or ("offline", _UPSERT_OFFLINE's values, None) for a last will."""
    if row["state"] == schema.OFFLINE:
        return ("offline", (fleet, device_id, bucket, now, now, raw), None)
    values = [device_id, fleet, row["group"], bucket]
    append = values.append
    for name, how in _LAYOUT:
        v = row[name]
        if how == _AS_IS:
            append(v)
        elif how == _ZERO:
            append(v or 0)
        elif not v:
            append("[]")
        elif how == _INTS_JSON:
            append("[" + ", ".join(map(str, v)) + "]")  # json.dumps' text, without its encoder
        else:
            append(json.dumps(v))
    values += (now, now, raw)
    return ("status", tuple(values), row["version"])


def _with_suspect(checked: tuple, newest_published: int) -> tuple:
    """The values of _STATUS_COLUMNS for a checked status: suspect when it claims a version
    above everything the fleet published (a claim, stored, never believed by rollouts)."""
    version = checked[2]
    return (*checked[1], int(version is not None and version > newest_published))


def check_status_message(fleet: str, device_id: str, payload: Mapping | bytes | str, now: int) -> tuple:
    """One status message decoded and validated once (messages.check_status) and laid out for
    FleetDB.store_statuses, received at `now`. Raises: StatusError."""
    row, raw = check_status(fleet, device_id, payload)
    return _checked(row, fleet, device_id, topics.bucket(device_id), raw, now)


def _device_dict(r: Mapping) -> dict:
    d = {name: r[column] for name, column in _FIELD_COLUMNS}
    for name in _JSON_FIELDS:
        d[name] = json.loads(d[name])
    d["first_seen"] = r["first_seen"]
    d["last_seen"] = r["last_seen"]
    d["suspect"] = bool(r["suspect"])
    d["quarantined"] = bool(r["quarantined"])
    return d


def _rollout_from_row(r: Mapping) -> ro.Rollout:
    th = json.loads(r["thresholds"])
    return ro.Rollout(
        id=r["id"], fleet=r["fleet"], version=r["version"], sha256=r["bundle_sha256"],
        bundle=bytes(r["bundle"]), waves=tuple(ro.Wave.from_json(w) for w in json.loads(r["waves"])),
        current=r["current_wave"], state=r["state"], started=r["started"],
        wave_started=r["wave_started"], paused_at=r["paused_at"], finished=r["finished"],
        success=th["success"], max_failure=th["max_failure"], deadline=th["deadline"],
        halt_reason=r["halt_reason"], failing=tuple(json.loads(r["failing"])),
        published=tuple(json.loads(r["published"])), revision=r["revision"])


# --------------------------------------------------------------------------- the store


class FleetDB(sql.Connection):
    """One connection to the fleet store. Not thread-safe: one per thread or process."""

    def __init__(self, conn: Any, dialect: str, where: str, reconnect: Any = None,
                 retention: Retention | None = None, create: bool = True) -> None:
        super().__init__(conn, dialect, where, reconnect)
        self.retention = Retention() if retention is None else retention
        self._unpruned = self.retention.every  # prune on the first batch after opening
        self._touched: set[tuple[str, str]] = set()
        self._status_in: Any = None  # the connection whose temporary COPY table exists
        try:
            if not create and not self._has_schema():
                raise FleetDBError(f"{where}: has no trustfleet tables (serve, rollout start and "
                                   f"publish --db create them)")
            self._create_schema()
        except BaseException:
            self.close()
            raise

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
            for statement in _AUDIT_GUARD[self.dialect]:
                cur.execute(statement)
            self._exec(cur, "SELECT value FROM tf_meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            if row is None:
                self._exec(cur, "INSERT INTO tf_meta (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
                found = SCHEMA_VERSION
            else:
                found = int(row[0])
            if found < SCHEMA_VERSION:
                # In the same transaction as the check: a failed upgrade leaves v{found} whole.
                for version in range(found, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[version]:
                        cur.execute(statement)
                self._exec(cur, "UPDATE tf_meta SET value = ? WHERE key = 'schema_version'",
                           (str(SCHEMA_VERSION),))
        if found > SCHEMA_VERSION:
            raise SchemaError(f"{self.where}: schema v{found} is newer than this trustfleet "
                              f"understands (v{SCHEMA_VERSION}); upgrade trustfleet")

    def _has_schema(self) -> bool:
        """Whether the store holds trustfleet's tables (tf_meta), without creating any."""
        sql = ("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tf_meta'"
               if self.dialect == "sqlite" else "SELECT to_regclass('tf_meta')")
        with self._tx("looking for the trustfleet tables") as cur:
            self._exec(cur, sql)
            row = cur.fetchone()
        return row is not None and row[0] is not None

    def fleets(self) -> list[str]:
        """The fleets the store knows: any device, report, rollout, publication, device event or
        audit entry."""
        union = " UNION ".join(f"SELECT fleet FROM {t}" for t in (
            "tf_devices", "tf_reports", "tf_rollouts", "tf_published", "tf_device_events",
            "tf_audit"))
        with self._tx("listing fleets") as cur:
            self._exec(cur, f"SELECT fleet FROM ({union}) AS f ORDER BY fleet")
            return [r[0] for r in cur.fetchall()]

    def require_fleet(self, fleet: str) -> None:
        """Raises NotFound, naming the fleets the store has, when it has nothing of `fleet`."""
        known = self.fleets()
        if fleet not in known:
            raise NotFound(f"fleet {fleet} is not in {self.where} (fleets: {', '.join(known) or 'none yet'})")

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
        checked = []
        for fleet, device_id, status, now in batch:
            if not status:
                result.ignored += 1
                continue
            try:
                checked.append((fleet, check_status_message(fleet, device_id, status, now)))
            except StatusError as exc:
                result.rejected.append((device_id, str(exc)))
        result += self.store_statuses(checked)
        return result

    def store_statuses(self, checked: Sequence[tuple[str, tuple]]) -> IngestResult:
        """Store checked statuses ((fleet, check_status_message(...)) each), in order, in one
        transaction: the ordering rules above, through one UPSERT per run of statuses (COPY
        into a temporary table first on PostgreSQL, for runs of COPY_MIN or more).

        Raises:
            FleetDBError: the database failed (nothing of the batch is stored).
        """
        result = IngestResult()
        if not checked:
            return result
        newest: dict[str, int] = {}
        for fleet in {fleet for fleet, c in checked if c[0] == "status"}:
            newest[fleet] = self.newest_published(fleet) or 0
        runs: list[tuple[str, list[tuple]]] = []  # consecutive (kind, rows): keeps the order
        for fleet, c in checked:
            params = _with_suspect(c, newest[fleet]) if c[0] == "status" else c[1]
            if runs and runs[-1][0] == c[0]:
                runs[-1][1].append(params)
            else:
                runs.append((c[0], [params]))
        changed = 0
        try:
            with self._tx("storing statuses", write=True) as cur:
                for kind, rows in runs:
                    if kind == "status" and self.dialect == "postgresql" and len(rows) >= COPY_MIN:
                        changed += self._copy_upsert(cur, rows)
                    else:
                        sql = _UPSERT_STATUS if kind == "status" else _UPSERT_OFFLINE
                        changed += self._executemany_changes(cur, sql, rows)
        except BaseException:
            self._status_in = None  # a temporary table made in this transaction is gone with it
            raise
        result.accepted += changed
        result.ignored += len(checked) - changed
        return result

    def _copy_upsert(self, cur: Any, rows: list[tuple]) -> int:
        """PostgreSQL: _UPSERT_STATUS for many rows as COPY into a temporary table and one
        INSERT ... SELECT with the same conflict clause. One statement may change a row only
        once, so a device's second status in the run starts another round (same order)."""
        if self._status_in is not self._conn:
            # Per connection; emptied by every commit. Made again after a reconnect.
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS tf_status_in (LIKE tf_devices INCLUDING DEFAULTS) "
                        "ON COMMIT DELETE ROWS")
            self._status_in = self._conn
        changed = 0
        rounds: list[list[tuple]] = [[]]
        seen: set[tuple[str, str]] = set()
        for r in rows:
            key = (r[1], r[0])  # fleet, device_id
            if key in seen:
                rounds.append([])
                seen = set()
            seen.add(key)
            rounds[-1].append(r)
        for i, part in enumerate(rounds):
            if i:
                cur.execute("DELETE FROM tf_status_in")
            with cur.copy(_COPY_STATUS) as copy:
                for r in part:
                    copy.write_row(r)
            cur.execute(_UPSERT_FROM_COPY)
            changed += max(cur.rowcount, 0)
        return changed

    def devices(self, fleet: str) -> list[dict]:
        """Every device of the fleet as a dict of its last status (docs/topics.md fields)."""
        with self._tx("reading devices") as cur:
            self._exec(cur, _DEVICE_SELECT + "WHERE fleet = ? ORDER BY device_id", (fleet,))
            return [_device_dict(r) for r in self.rows(cur)]

    def device(self, fleet: str, device_id: str) -> dict | None:
        with self._tx("reading a device") as cur:
            self._exec(cur, _DEVICE_SELECT + "WHERE fleet = ? AND device_id = ?", (fleet, device_id))
            r = self.row(cur)
            return _device_dict(r) if r else None

    def max_version(self, fleet: str) -> int | None:
        """The highest bundle version any device of the fleet reports."""
        with self._tx("reading versions") as cur:
            self._exec(cur, "SELECT MAX(version) FROM tf_devices WHERE fleet = ?", (fleet,))
            return cur.fetchone()[0]

    # -- published history and device claims ------------------------------------

    def record_published(self, fleet: str, version: int, sha256: str, source: str, now: int) -> None:
        """Record that the fleet published bundle `version` (rollout start, publish --db).

        The first record of a version stays. Devices at or below the newest
        published version stop being suspect.
        """
        with self._tx("recording a published version", write=True) as cur:
            self._exec(cur, "INSERT INTO tf_published (fleet, version, sha256, source, time) "
                            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (fleet, version) DO NOTHING",
                       (fleet, version, sha256, source[:64], now))
            self._exec(cur, "UPDATE tf_devices SET suspect = 0 WHERE fleet = ? AND suspect = 1 AND "
                            "version <= (SELECT MAX(version) FROM tf_published WHERE fleet = ?)",
                       (fleet, fleet))

    def newest_published(self, fleet: str) -> int | None:
        """The highest bundle version the fleet published (None: no history)."""
        with self._tx("reading published versions") as cur:
            self._exec(cur, "SELECT MAX(version) FROM tf_published WHERE fleet = ?", (fleet,))
            return cur.fetchone()[0]

    def published(self, fleet: str) -> list[dict]:
        """The fleet's published versions, newest first: version, sha256, source, time."""
        with self._tx("reading published versions") as cur:
            self._exec(cur, "SELECT version, sha256, source, time FROM tf_published WHERE fleet = ? "
                            "ORDER BY version DESC", (fleet,))
            return self.rows(cur)

    def set_quarantined(self, fleet: str, device_id: str, on: bool, who: str, why: str,
                        now: int) -> dict:
        """Quarantine a device (rollouts skip it; its statuses are still stored) or release it.

        Audited in tf_device_events. Returns the event. Raises: NotFound (no such device).
        """
        action = "quarantine" if on else "release"
        with self._tx(f"{action} of a device", write=True) as cur:
            self._exec(cur, "UPDATE tf_devices SET quarantined = ? WHERE fleet = ? AND device_id = ?",
                       (int(on), fleet, device_id))
            if cur.rowcount != 1:
                raise NotFound(f"no device {device_id} in fleet {fleet}")
            return self._device_event(cur, fleet, device_id, now, action, who, why)

    def forget_device(self, fleet: str, device_id: str, who: str, why: str, now: int) -> dict:
        """Delete a device's row (it comes back if it publishes a status again; quarantine keeps
        it out). Audited in tf_device_events. Returns the event. Raises: NotFound."""
        with self._tx("forgetting a device", write=True) as cur:
            self._exec(cur, "DELETE FROM tf_devices WHERE fleet = ? AND device_id = ?", (fleet, device_id))
            if cur.rowcount != 1:
                raise NotFound(f"no device {device_id} in fleet {fleet}")
            return self._device_event(cur, fleet, device_id, now, "forget", who, why)

    def add_device_event(self, fleet: str, device_id: str, action: str, who: str, why: str,
                         now: int) -> dict:
        """Record an action on a device that has no row of its own to change (serve's
        "fence"/"unfence" at the broker). Returns the event."""
        with self._tx(f"recording a device {action}", write=True) as cur:
            return self._device_event(cur, fleet, device_id, now, action, who, why)

    def open_fences(self, fleet: str) -> list[tuple[str, int]]:
        """(device, time) of each device whose latest "fence"/"unfence" event is a fence."""
        with self._tx("reading device fences") as cur:
            self._exec(cur, "SELECT e.device_id, e.time, e.action FROM tf_device_events e "
                            "WHERE e.fleet = ? AND e.action IN ('fence', 'unfence') AND e.id = ("
                            "SELECT MAX(l.id) FROM tf_device_events l WHERE l.fleet = e.fleet "
                            "AND l.device_id = e.device_id AND l.action IN ('fence', 'unfence'))",
                       (fleet,))
            rows = self.rows(cur)
        return [(r["device_id"], int(r["time"])) for r in rows if r["action"] == "fence"]

    def _device_event(self, cur: Any, fleet: str, device_id: str, now: int, action: str, who: str,
                      why: str) -> dict:
        event = {"fleet": fleet, "device": device_id, "time": now, "action": action,
                 "who": who[:200], "why": why[:2000]}
        self._exec(cur, "INSERT INTO tf_device_events (fleet, device_id, time, action, who, why) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                   (fleet, device_id, now, action, event["who"], event["why"]))
        return event

    def device_events(self, fleet: str, device_id: str | None = None, limit: int = 50) -> list[dict]:
        """Quarantine/release/forget/fence/unfence events, oldest first (of one device, or the fleet)."""
        where, params = ("fleet = ?", (fleet,)) if device_id is None else \
            ("fleet = ? AND device_id = ?", (fleet, device_id))
        with self._tx("reading device events") as cur:
            self._exec(cur, f"SELECT id, device_id, time, action, who, why FROM tf_device_events "
                            f"WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit))
            rows = self.rows(cur)
        return [{"device": r["device_id"], "time": r["time"], "action": r["action"], "who": r["who"],
                 "why": r["why"]} for r in reversed(rows)]

    # -- audit trail --------------------------------------------------------------

    def add_audit(self, fleet: str, action: str, actor: str, host: str, source: str,
                  detail: Mapping[str, Any], now: int) -> dict:
        """Append an entry to the audit trail (source: "cli", "console" or "serve"); returns it
        as audit_entries does."""
        if source not in AUDIT_SOURCES:
            raise ValueError(f"audit source {source!r} is not one of {', '.join(AUDIT_SOURCES)}")
        entry = {"id": None, "time": int(now), "fleet": fleet, "action": action[:100],
                 "actor": actor[:200], "host": host[:255], "source": source, "detail": dict(detail)}
        with self._tx(f"recording audit entry {action}", write=True) as cur:
            self._exec(cur, "INSERT INTO tf_audit (time, fleet, action, actor, host, source, detail) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                       (entry["time"], fleet, entry["action"], entry["actor"], entry["host"], source,
                        json.dumps(entry["detail"], sort_keys=True)))
            entry["id"] = cur.fetchone()[0]
        return entry

    def audit_entries(self, fleet: str | None = None, limit: int = 100, before: int | None = None,
                      action: str | None = None) -> list[dict]:
        """Audit entries newest first: of one fleet and one action when given, with an id below
        `before` (the next page), at most `limit`. Each: id, time, fleet, action, actor, host,
        source, detail (a dict)."""
        where, params = [], []
        for clause, value in (("fleet = ?", fleet), ("id < ?", before), ("action = ?", action)):
            if value is not None:
                where.append(clause)
                params.append(value)
        cond = f"WHERE {' AND '.join(where)} " if where else ""
        with self._tx("reading the audit trail") as cur:
            self._exec(cur, f"SELECT id, time, fleet, action, actor, host, source, detail FROM tf_audit "
                            f"{cond}ORDER BY id DESC LIMIT ?", (*params, max(int(limit), 0)))
            rows = self.rows(cur)
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows

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
            self._touched.update((r[0], r[1]) for r in rows)
            self._unpruned += len(rows)
            keep = self.retention
            prune = self._unpruned >= max(min(keep.every, keep.per_device or keep.every), 1)
            with self._tx("storing reports", write=True) as cur:
                cur.executemany(self._sql(
                    "INSERT INTO tf_reports (fleet, device_id, time, kind, body) VALUES (?, ?, ?, ?, ?)"),
                    rows)
                if prune:
                    self._prune(cur, max(r[2] for r in rows))
        result.accepted = len(rows)
        return result

    def report_count(self) -> int:
        """How many reports the store holds (all fleets)."""
        with self._tx("counting reports") as cur:
            self._exec(cur, "SELECT COUNT(*) FROM tf_reports")
            return cur.fetchone()[0]

    def prune_reports(self, now: int | None = None) -> int:
        """Apply the retention limits now (to every device). Returns the rows deleted."""
        now = int(time.time()) if now is None else now
        with self._tx("pruning reports", write=True) as cur:
            self._exec(cur, "SELECT DISTINCT fleet, device_id FROM tf_reports")
            self._touched.update((r[0], r[1]) for r in cur.fetchall())
            return self._prune(cur, now)

    def _prune(self, cur: Any, now: int) -> int:
        """Retention, inside the writer's transaction; every delete is an index range:
        per device on tf_reports_device, by age on tf_reports_fleet_time, total on the id."""
        keep = self.retention
        deleted = 0
        fleets = {fleet for fleet, _ in self._touched}
        if keep.per_device > 0:
            for fleet, device_id in sorted(self._touched):
                self._exec(cur, "DELETE FROM tf_reports WHERE fleet = ? AND device_id = ? AND id <= "
                                "(SELECT id FROM tf_reports WHERE fleet = ? AND device_id = ? "
                                "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                           (fleet, device_id, fleet, device_id, keep.per_device))
                deleted += max(cur.rowcount, 0)
        if keep.max_age > 0:
            for fleet in sorted(fleets):
                self._exec(cur, "DELETE FROM tf_reports WHERE fleet = ? AND time < ?",
                           (fleet, now - keep.max_age))
                deleted += max(cur.rowcount, 0)
        if keep.total > 0:
            # MAX - MIN + 1 bounds the row count from above in two index lookups: the OFFSET
            # walk (up to `total` ids) runs only when the table may be over the cap.
            self._exec(cur, "SELECT MAX(id) - MIN(id) + 1 FROM tf_reports")
            span = cur.fetchone()[0] or 0
            if span > keep.total:
                self._exec(cur, "DELETE FROM tf_reports WHERE id <= "
                                "(SELECT id FROM tf_reports ORDER BY id DESC LIMIT 1 OFFSET ?)",
                           (keep.total,))
                deleted += max(cur.rowcount, 0)
        self._touched.clear()
        self._unpruned = 0
        return deleted

    def reports(self, fleet: str, limit: int = 20, since: int | None = None) -> list[dict]:
        """The newest reports of the fleet, newest first."""
        with self._tx("reading reports") as cur:
            self._exec(cur, "SELECT id, device_id, time, kind, body FROM tf_reports "
                            "WHERE fleet = ? AND time >= ? ORDER BY time DESC, id DESC LIMIT ?",
                       (fleet, since or 0, limit))
            return [{"id": r["id"], "device": r["device_id"], "time": r["time"], "kind": r["kind"],
                     "report": json.loads(r["body"])} for r in self.rows(cur)]

    def report_overview(self, fleet: str, limit: int = 50) -> dict:
        """The fleet's stored reports counted by kind and by domain, duplicates left out.

        A duplicate is the same report body from the same device stored again (a
        QoS 1 redelivery, a device sending its queue twice). Domain is the report's
        "hostname" (the name the device connected to) and "noted-hostname" (the
        pin-set's domain, or the document kind for "document-refused").

        Returns {"reports": distinct reports, "duplicates": left out, "devices":
        devices that reported, "newest": time, "kinds": [{kind, reports, devices,
        newest}], "domains": [{hostname, noted, kind, reports, devices, newest}]},
        lists by reports then newest, descending; at most `limit` domains
        (domains_count has the full number).
        """
        with self._tx("counting reports") as cur:
            self._exec(cur, "SELECT kind, device_id, body, COUNT(*) AS copies, MAX(time) AS newest "
                            "FROM tf_reports WHERE fleet = ? GROUP BY kind, device_id, body", (fleet,))
            rows = self.rows(cur)
        kinds: dict[str, dict] = {}
        domains: dict[tuple, dict] = {}
        devices: set[str] = set()
        duplicates = 0

        def count(table: dict, key: Any, base: dict, device: str, newest: int) -> None:
            entry = table.setdefault(key, {**base, "reports": 0, "devices": set(), "newest": 0})
            entry["reports"] += 1
            entry["devices"].add(device)
            entry["newest"] = max(entry["newest"], newest)

        for r in rows:
            duplicates += r["copies"] - 1
            devices.add(r["device_id"])
            try:
                body = json.loads(r["body"])
            except ValueError:
                body = {}
            host, noted = (body.get(k) if isinstance(body, dict) else None
                           for k in ("hostname", "noted-hostname"))
            host = host if isinstance(host, str) else None
            noted = noted if isinstance(noted, str) else None
            count(kinds, r["kind"], {"kind": r["kind"]}, r["device_id"], r["newest"])
            count(domains, (host, noted, r["kind"]), {"hostname": host, "noted": noted, "kind": r["kind"]},
                  r["device_id"], r["newest"])

        def listed(table: dict) -> list[dict]:
            out = [{**e, "devices": len(e["devices"])} for e in table.values()]
            out.sort(key=lambda e: (-e["reports"], -e["newest"], str(e.get("kind")),
                                    str(e.get("hostname")), str(e.get("noted"))))
            return out

        domain_list = listed(domains)
        return {"reports": len(rows), "duplicates": duplicates, "devices": len(devices),
                "newest": max((r["newest"] for r in rows), default=None),
                "kinds": listed(kinds), "domains": domain_list[:limit], "domains_count": len(domain_list)}

    # -- summary ------------------------------------------------------------------

    def summary(self, fleet: str, now: int | None = None, silent_after: int = 86_400, limit: int = 50,
                recent: int = 10) -> dict:
        """Counts by version and state, and the devices that need a look.

        Returns a dict: devices (total), table ([{version, state, count}]),
        by_state, by_version, stale / behind / fail_open / offline / silent (lists of
        at most `limit` devices, with *_count for the full number), reports
        (the `recent` newest), report_overview (report_overview: counts by kind
        and domain). Silent = not offline but not heard from for
        `silent_after` seconds.
        """
        now = int(time.time()) if now is None else now
        with self._tx("summarising the fleet") as cur:
            self._exec(cur, "SELECT version, state, COUNT(*) AS count FROM tf_devices WHERE fleet = ? "
                            "GROUP BY version, state", (fleet,))
            table = self.rows(cur)
            table.sort(key=lambda t: (-1 if t["version"] is None else t["version"], t["state"]))

            def listed(where: str, params: tuple, cols: str = "device_id, version, state, last_seen"):
                self._exec(cur, f"SELECT COUNT(*) FROM tf_devices WHERE fleet = ? AND {where}",
                           (fleet, *params))
                count = cur.fetchone()[0]
                self._exec(cur, f"SELECT {cols} FROM tf_devices WHERE fleet = ? AND {where} "
                                "ORDER BY device_id LIMIT ?", (fleet, *params, limit))
                return count, self.rows(cur)

            stale_n, stale = listed("state = 'stale'", (), "device_id, version, reasons, last_seen")
            behind_n, behind = listed("state = 'behind'", ())
            fo_n, fo = listed("fail_open <> '[]'", (), "device_id, version, fail_open, last_seen")
            off_n, off = listed("state = 'offline'", ())
            sil_n, sil = listed("state <> 'offline' AND last_seen < ?", (now - silent_after,))
            sus_n, sus = listed("suspect = 1", ())
            qua_n, qua = listed("quarantined = 1", ())
        by_state: dict[str, int] = {}
        by_version: dict[str, int] = {}
        for t in table:
            by_state[t["state"]] = by_state.get(t["state"], 0) + t["count"]
            key = "none" if t["version"] is None else str(t["version"])
            by_version[key] = by_version.get(key, 0) + t["count"]
        return {
            "fleet": fleet, "time": now, "devices": sum(t["count"] for t in table),
            "table": table, "by_state": by_state, "by_version": by_version,
            "stale": [{"device": d["device_id"], "version": d["version"], "reasons": json.loads(d["reasons"]),
                       "last_seen": d["last_seen"]} for d in stale], "stale_count": stale_n,
            "behind": [{"device": d["device_id"], "version": d["version"], "last_seen": d["last_seen"]}
                       for d in behind], "behind_count": behind_n,
            "fail_open": [{"device": d["device_id"], "version": d["version"],
                           "domains": json.loads(d["fail_open"]), "last_seen": d["last_seen"]}
                          for d in fo], "fail_open_count": fo_n,
            "offline": [{"device": d["device_id"], "version": d["version"], "last_seen": d["last_seen"]}
                        for d in off], "offline_count": off_n,
            "silent": [{"device": d["device_id"], "version": d["version"], "state": d["state"],
                        "last_seen": d["last_seen"]} for d in sil], "silent_count": sil_n,
            "suspect": [{"device": d["device_id"], "version": d["version"], "last_seen": d["last_seen"]}
                        for d in sus], "suspect_count": sus_n,
            "quarantined": [{"device": d["device_id"], "version": d["version"], "last_seen": d["last_seen"]}
                            for d in qua], "quarantined_count": qua_n,
            "reports": self.reports(fleet, recent),
            "report_overview": self.report_overview(fleet, limit),
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
            busy = self.row(cur)
            if busy is not None:
                state = busy["state"]
                what = state if state in ro.ACTIVE else f"{state} but its topics are not cleared yet"
                raise RolloutConflict(f"rollout {busy['id']} of fleet {r.fleet} is {what}; "
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
            r = self.row(cur)
        if r is None:
            raise NotFound(f"no rollout {rollout_id}")
        return _rollout_from_row(r)

    def rollouts(self, fleet: str, limit: int = 20) -> list[ro.Rollout]:
        """The fleet's rollouts, newest first."""
        with self._tx("listing rollouts") as cur:
            self._exec(cur, _ROLLOUT_SELECT + "WHERE fleet = ? ORDER BY id DESC LIMIT ?", (fleet, limit))
            return [_rollout_from_row(r) for r in self.rows(cur)]

    def latest_rollout(self, fleet: str) -> ro.Rollout | None:
        found = self.rollouts(fleet, 1)
        return found[0] if found else None

    def rollout_to_drive(self, fleet: str) -> ro.Rollout | None:
        """The rollout `serve` must step: running or paused, or final with topics left to clear."""
        with self._tx("reading rollouts") as cur:
            self._exec(cur, _ROLLOUT_SELECT + "WHERE fleet = ? AND (state IN ('running', 'paused') "
                            "OR published <> '[]') ORDER BY id LIMIT 1", (fleet,))
            r = self.row(cur)
        return _rollout_from_row(r) if r else None

    def latest_done(self, fleet: str) -> ro.Rollout | None:
        """The newest rollout that reached the whole fleet."""
        with self._tx("reading rollouts") as cur:
            self._exec(cur, _ROLLOUT_SELECT + "WHERE fleet = ? AND state = 'done' "
                            "ORDER BY version DESC, id DESC LIMIT 1", (fleet,))
            r = self.row(cur)
        return _rollout_from_row(r) if r else None

    def claim_rollout(self, rollout_id: int, revision: int,
                      lease: tuple[str, str, float] | None = None) -> bool:
        """Take the right to act on `revision` (bumps it by one). False when someone else did.

        `lease` (fleet, holder, now): also False unless `holder` holds the fleet's lease at `now`.
        """
        with self._tx("claiming a rollout", write=True) as cur:
            sql, params = "UPDATE tf_rollouts SET revision = revision + 1 WHERE id = ? AND revision = ?", \
                [rollout_id, revision]
            if lease is not None:
                sql += " AND EXISTS (SELECT 1 FROM tf_leases WHERE fleet = ? AND holder = ? AND expires > ?)"
                params += [lease[0], lease[1], int(lease[2] * 1000)]
            self._exec(cur, sql, params)
            return cur.rowcount == 1

    def acquire_lease(self, fleet: str, holder: str, now: float, length: float) -> bool:
        """Take or renew the fleet's lease for `length` s from `now` (wall-clock seconds).

        True when `holder` holds it afterwards: it held it already, nobody did, or the
        last holder's lease had expired. A compare-and-set: two workers never both win.
        """
        at, until = int(now * 1000), int((now + length) * 1000)
        with self._tx("taking the leader lease", write=True) as cur:
            self._exec(cur, "INSERT INTO tf_leases (fleet, holder, expires) VALUES (?, ?, ?) "
                            "ON CONFLICT (fleet) DO UPDATE SET holder = excluded.holder, "
                            "expires = excluded.expires "
                            "WHERE tf_leases.holder = excluded.holder OR tf_leases.expires <= ?",
                       (fleet, holder, until, at))
            self._exec(cur, "SELECT holder, expires FROM tf_leases WHERE fleet = ?", (fleet,))
            row = cur.fetchone()
        return row is not None and row[0] == holder and int(row[1]) == until

    def release_lease(self, fleet: str, holder: str) -> None:
        """Give the lease up (a clean exit): another worker takes it at its next try."""
        with self._tx("releasing the leader lease", write=True) as cur:
            self._exec(cur, "DELETE FROM tf_leases WHERE fleet = ? AND holder = ?", (fleet, holder))

    def lease(self, fleet: str) -> tuple[str, float] | None:
        """(holder, expires in wall-clock seconds) of the fleet's lease, or None (none taken)."""
        with self._tx("reading the leader lease") as cur:
            self._exec(cur, "SELECT holder, expires FROM tf_leases WHERE fleet = ?", (fleet,))
            row = cur.fetchone()
        return None if row is None else (row[0], int(row[1]) / 1000)

    def save_rollout(self, r: ro.Rollout, expected_revision: int,
                     ended: ro.WaveProgress | None = None) -> bool:
        """Write the rollout's state (not its published topics) if still at `expected_revision`,
        with the result of the wave it left (`ended`, rollout.ended_wave) in the same transaction.

        Returns False when it changed in between (nothing written).
        """
        with self._tx("saving a rollout", write=True) as cur:
            self._exec(cur, "UPDATE tf_rollouts SET current_wave = ?, state = ?, wave_started = ?, "
                            "paused_at = ?, finished = ?, halt_reason = ?, failing = ?, "
                            "revision = revision + 1 WHERE id = ? AND revision = ?",
                       (r.current, r.state, r.wave_started, r.paused_at, r.finished, r.halt_reason,
                        json.dumps(list(r.failing)), r.id, expected_revision))
            if cur.rowcount != 1:
                return False
            if ended is not None:
                self._exec(cur, "INSERT INTO tf_wave_results (rollout_id, wave, name, outcome, time, "
                                "members, succeeded, failed, pending, offline, silent, excluded, "
                                "failing, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                                "ON CONFLICT (rollout_id, wave) DO NOTHING",
                           (r.id, ended.index, ended.name, ended.status, ended.ended or 0,
                            ended.members, ended.succeeded, ended.failed, ended.pending, ended.offline,
                            ended.silent, ended.excluded, json.dumps(ended.failing),
                            None if ended.reason is None else ended.reason[:2000]))
            return True

    def wave_results(self, rollout_id: int) -> dict[int, ro.WaveProgress]:
        """The results recorded for the rollout's ended waves, by wave index."""
        with self._tx("reading wave results") as cur:
            self._exec(cur, "SELECT wave, name, outcome, time, members, succeeded, failed, pending, "
                            "offline, silent, excluded, failing, reason FROM tf_wave_results "
                            "WHERE rollout_id = ? ORDER BY wave", (rollout_id,))
            rows = self.rows(cur)
        return {r["wave"]: ro.WaveProgress(
            r["wave"], r["name"], r["outcome"], members=r["members"], succeeded=r["succeeded"],
            failed=r["failed"], pending=r["pending"], offline=r["offline"], silent=r["silent"],
            excluded=r["excluded"], failing=json.loads(r["failing"]), source="recorded",
            ended=r["time"], reason=r["reason"]) for r in rows}

    def all_rollouts(self, fleet: str | None = None, state: str | None = None) -> list[ro.Rollout]:
        """Every rollout (of one fleet, in one state, or all), newest first."""
        where, params = [], []
        if fleet is not None:
            where.append("fleet = ?")
            params.append(fleet)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        clause = ("WHERE " + " AND ".join(where) + " ") if where else ""
        with self._tx("listing rollouts") as cur:
            self._exec(cur, _ROLLOUT_SELECT + clause + "ORDER BY id DESC", params)
            return [_rollout_from_row(r) for r in self.rows(cur)]

    def update_rollout(self, rollout_id: int, change: Any, tries: int = 5) -> ro.Rollout:
        """Read, apply change(rollout) -> rollout, save; retried when the revision moved.

        Raises:
            RolloutConflict: still changing after `tries` attempts.
            NotFound, rollout.RolloutError: from the read or the change.
        """
        for _ in range(tries):
            r = self.rollout(rollout_id)
            new = change(r)
            ended = None
            if new.state in ro.FINAL and r.state not in ro.FINAL:  # an abort: the wave's result now
                ended = ro.ended_wave(r, new, self.devices(r.fleet), new.finished or int(time.time()))
            if self.save_rollout(new, r.revision, ended):
                return self.rollout(rollout_id)
        raise RolloutConflict(f"rollout {rollout_id} keeps changing; try again")

    def _edit_published(self, rollout_id: int, add: Sequence[str], remove: Sequence[str]) -> None:
        with self._tx("recording published topics", write=True) as cur:
            lock = " FOR UPDATE" if self.dialect == "postgresql" else ""
            self._exec(cur, f"SELECT published FROM tf_rollouts WHERE id = ?{lock}", (rollout_id,))
            row = self.row(cur)
            if row is None:
                raise NotFound(f"no rollout {rollout_id}")
            current = json.loads(row["published"])
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
            rows = self.rows(cur)
        return list(reversed(rows))


# --------------------------------------------------------------------------- opening


class Target(str):
    """A --db value that knows whether its command may create the store (cli.common.db_argument)."""

    create: bool = True

    @classmethod
    def of(cls, text: str, create: bool) -> Target:
        t = cls(text)
        t.create = create
        return t


def open_db(target: str | os.PathLike[str], retention: Retention | None = None,
            create: bool | None = None) -> FleetDB:
    """Open the fleet store, creating it (file and tables) if needed unless `create` is False.

    Args:
        target: a file path for SQLite, or a postgresql:// URL (the scheme decides;
            others are refused). libpq URL options work, e.g.
            `?options=-csearch_path%3Dtrustfleet` for a schema.
        retention: report limits (None: the Retention defaults).
        create: False refuses a SQLite file that does not exist and a store without
            trustfleet's tables, creating nothing. None: the target's own `create`
            (a Target), else True.

    Raises:
        FleetDBError: cannot open, no store where one must exist, or the schema is newer
            than this code.
    """
    if create is None:
        create = getattr(target, "create", True)
    return FleetDB(*sql.connect(os.fspath(target), create=create), retention=retention, create=create)
