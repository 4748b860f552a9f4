"""Device claims are checked, not believed (issue 10, finding 5).

A device claiming version 2^62 used to block every rollout ("bundle v2 is not newer than
v4611686018427387904, which the fleet already runs"), and no command could drop or set aside
a device row. Now the fleet records what it published; a status claiming a version above
that history is stored as suspect and never counted by rollouts; `trustfleet fleet device
quarantine|release|forget` set a device aside, audited. Everything runs through the real CLI
on SQLite and PostgreSQL; the upgrade is tested on a database laid out as schema v1 wrote it.
"""

from __future__ import annotations

import json
import time

import pytest

from support.fleetkit import Repo
from trustfleet_server import cli, rollout
from trustfleet_server.fleet import db as fleetdb

HUGE = 1 << 62


@pytest.fixture
def repo(tmp_path):
    r = Repo(fleet="claims", now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(r.root_raw)
    return r


def status(version: int | None, seq: int = 1) -> dict:
    return {"state": "ok", "version": version, "floor": version, "seq": seq, "time": int(time.time())}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def start(capsys, tmp_path, repo: Repo, db: str, version: int) -> tuple[int, str, str]:
    bundle = tmp_path / f"bundle-v{version}.cose"
    bundle.write_bytes(repo.bundle(version))
    return run(capsys, "rollout", "start", "--db", db, "--fleet", repo.fleet, "--root",
               str(tmp_path / "root.cose"), "--bundle", str(bundle), "--waves", "100%", "--json")


def test_a_device_claiming_version_2_62_neither_blocks_a_rollout_nor_counts_in_it(
        capsys, tmp_path, repo, target):
    f = repo.fleet
    with fleetdb.open_db(target) as db:
        db.ingest_statuses([(f, "liar", status(HUGE), 1), (f, "honest", status(1), 1)])
    code, out, err = start(capsys, tmp_path, repo, target, 2)
    assert code == 0, err
    rid = json.loads(out)["id"]
    with fleetdb.open_db(target) as db:
        assert [p["version"] for p in db.published(f)] == [2]
        liar, honest = db.device(f, "liar"), db.device(f, "honest")
        assert liar["version"] == HUGE and liar["suspect"] and not honest["suspect"]
        r = db.rollout(rid)
        # The honest device is the only member; updating it to v2 passes the wave.
        db.ingest_statuses([(f, "honest", status(2, seq=2), 2)])
        p = rollout.wave_progress(r, db.devices(f), int(time.time()), 0)
        assert (p.members, p.excluded) == (1, 1)
        assert not db.device(f, "honest")["suspect"]
    # A version at or below the published history is believed again.
    with fleetdb.open_db(target) as db:
        db.ingest_statuses([(f, "liar", status(2, seq=5), 3)])
        assert not db.device(f, "liar")["suspect"]
    # Going back is still refused, by history: v2 was published.
    code, _, err = start(capsys, tmp_path, repo, target, 2)
    assert code != 0 and "not newer than v2" in err


def test_quarantine_release_and_forget_are_audited_and_unknown_devices_are_named(
        capsys, tmp_path, repo, target):
    f = repo.fleet
    with fleetdb.open_db(target) as db:
        db.ingest_statuses([(f, "odd", status(1), 1), (f, "fine", status(1), 1)])
    base = ("--db", target, "--fleet", f)
    code, out, err = run(capsys, "fleet", "device", "quarantine", "odd", *base, "--reason",
                         "sends nonsense", "--by", "alice", "--json")
    assert code == 0, err
    event = json.loads(out)
    assert event["action"] == "quarantine" and event["who"] == "alice" and event["why"] == "sends nonsense"
    assert abs(event["time_epoch"] - time.time()) < 60 and event["time"].endswith("Z")
    code, _, err = start(capsys, tmp_path, repo, target, 2)
    assert code == 0, err
    with fleetdb.open_db(target) as db:
        assert db.device(f, "odd")["quarantined"]
        p = rollout.wave_progress(db.latest_rollout(f), db.devices(f), int(time.time()), 0)
        assert (p.members, p.excluded) == (1, 1)
        # A new status keeps the quarantine: it is the operator's, not the device's, to lift.
        db.ingest_statuses([(f, "odd", status(1, seq=2), 2)])
        assert db.device(f, "odd")["quarantined"]
    code, out, err = run(capsys, "fleet", "status", *base)
    assert code == 0 and "quarantined" in out and "odd" in out
    code, out, err = run(capsys, "rollout", "status", *base)
    assert code == 0 and "1 excluded (suspect or quarantined)" in out, out
    code, out, err = run(capsys, "fleet", "device", "release", "odd", *base, "--reason", "fixed")
    assert code == 0 and "release odd" in out
    code, out, err = run(capsys, "fleet", "device", "forget", "odd", *base, "--reason", "scrapped")
    assert code == 0, err
    code, out, err = run(capsys, "fleet", "device", "forget", "odd", *base, "--reason", "again")
    assert code == 2 and "no device odd in fleet claims" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "fleet", "device", "quarantine", "a/b", *base, "--reason", "x")
    assert code == 2 and "device id" in err
    with fleetdb.open_db(target) as db:
        assert db.device(f, "odd") is None and db.device(f, "fine") is not None
        events = db.device_events(f, "odd")
        assert [e["action"] for e in events] == ["quarantine", "release", "forget"]
        assert events[2]["why"] == "scrapped" and "@" in events[2]["who"]


# The tables as schema v1 (trustfleet before this change) created them, and one row each.
V1 = [
    "CREATE TABLE tf_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO tf_meta VALUES ('schema_version', '1')",
    "CREATE TABLE tf_devices (fleet TEXT NOT NULL, device_id TEXT NOT NULL, grp TEXT, bucket INTEGER "
    "NOT NULL, state TEXT NOT NULL, version BIGINT, floor BIGINT, bad TEXT NOT NULL DEFAULT '[]', "
    "last_revert TEXT, reasons TEXT NOT NULL DEFAULT '[]', fail_open TEXT NOT NULL DEFAULT '[]', "
    "root_version BIGINT, trusted_time BIGINT, last_timestamp BIGINT, agent_version TEXT, "
    "status_time BIGINT NOT NULL DEFAULT 0, seq BIGINT NOT NULL DEFAULT 0, event TEXT, detail TEXT, "
    "first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL, raw TEXT NOT NULL, "
    "PRIMARY KEY (fleet, device_id))",
    "CREATE TABLE tf_reports (id {serial}, fleet TEXT NOT NULL, device_id TEXT NOT NULL, "
    "time BIGINT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE TABLE tf_rollouts (id {serial}, fleet TEXT NOT NULL, version BIGINT NOT NULL, "
    "bundle_sha256 TEXT NOT NULL, bundle {blob} NOT NULL, waves TEXT NOT NULL, current_wave INTEGER "
    "NOT NULL, state TEXT NOT NULL, started BIGINT NOT NULL, wave_started BIGINT, paused_at BIGINT, "
    "finished BIGINT, thresholds TEXT NOT NULL, halt_reason TEXT, failing TEXT NOT NULL DEFAULT '[]', "
    "published TEXT NOT NULL DEFAULT '[]', revision INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE tf_rollout_events (id {serial}, rollout_id BIGINT NOT NULL REFERENCES tf_rollouts (id), "
    "time BIGINT NOT NULL, text TEXT NOT NULL)",
    "INSERT INTO tf_devices (fleet, device_id, bucket, state, version, first_seen, last_seen, raw) "
    "VALUES ('claims', 'old', 1, 'ok', 3, 1, 1, '{{}}'), "
    "('claims', 'liar', 2, 'ok', 4611686018427387904, 1, 1, '{{}}')",
    "INSERT INTO tf_rollouts (fleet, version, bundle_sha256, bundle, waves, current_wave, state, "
    "started, thresholds) VALUES ('claims', 3, 'ab', {empty}, '[]', 0, 'done', 5, "
    "'{{\"success\": 0.9, \"max_failure\": 0.1, \"deadline\": 60}}')",
]


def _create_v1(target: str) -> None:
    if target.startswith("postgresql"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            for s in V1:
                conn.execute(s.format(serial="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                                      blob="BYTEA", empty="'\\x'::bytea"))
        return
    import sqlite3

    conn = sqlite3.connect(target)
    with conn:
        for s in V1:
            conn.execute(s.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", empty="X''"))
    conn.close()


def test_a_schema_v1_database_is_upgraded_in_place_with_history_from_its_rollouts(target):
    _create_v1(target)
    with fleetdb.open_db(target) as db:
        assert db.schema_version() == fleetdb.SCHEMA_VERSION == 5  # v1 -> v2 -> v3 (wave results) -> v4 (leases) -> v5 (audit)
        assert [(p["version"], p["source"]) for p in db.published("claims")] == [(3, "rollout")]
        old, liar = db.device("claims", "old"), db.device("claims", "liar")
        assert old["version"] == 3 and not old["suspect"] and not old["quarantined"]
        assert liar["suspect"]
        assert db.latest_done("claims").version == 3
        db.set_quarantined("claims", "liar", True, "t", "test", 9)
    with fleetdb.open_db(target) as db:  # a second open changes nothing
        assert db.schema_version() == 5 and db.device("claims", "liar")["quarantined"]


def test_publish_with_db_records_the_bundle_versions_rollouts_start_above(
        capsys, tmp_path, repo, target, private_mosquitto):
    broker = private_mosquitto()
    bundle = tmp_path / "bundle-v4.cose"
    bundle.write_bytes(repo.bundle(4))
    code, _, err = run(capsys, "publish", "--broker", broker.url, "--root", str(tmp_path / "root.cose"),
                       "--db", target, str(bundle))
    assert code == 0, err
    with fleetdb.open_db(target) as db:
        assert [(p["version"], p["source"]) for p in db.published(repo.fleet)] == \
            [(4, "publish tf/claims/bundle")]
        db.ingest_statuses([(repo.fleet, "d", status(4), 1), (repo.fleet, "e", status(5), 1)])
        assert not db.device(repo.fleet, "d")["suspect"] and db.device(repo.fleet, "e")["suspect"]
    code, _, err = start(capsys, tmp_path, repo, target, 4)
    assert code != 0 and "not newer than v4, which the fleet already published" in err
