"""Report retention in the fleet store (issue 10 finding 8, database side), on SQLite and the real
PostgreSQL: a report flood through add_reports (the API serve ingests with) stays within the
per-device and total caps, the newest reports are the ones kept, other devices keep theirs, and
reports older than the maximum age go."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt

from support import brokers
from support.fleetkit import Repo
from trustfleet_device import topics
from trustfleet_server import cli
from trustfleet_server.fleet import db as fleetdb

F = "acme"
T = 1_800_000_000
DAY = 86_400


def report(device: str, n: int) -> dict:
    return {"validation-result": "pin-failure", "device": device, "n": n}


def flood(db, device: str, count: int, now: int = T, batch: int = 250) -> None:
    for start in range(0, count, batch):
        result = db.add_reports([(F, device, report(device, n), now)
                                 for n in range(start, min(start + batch, count))])
        assert result.accepted == min(batch, count - start) and not result.rejected


def rows(db, device: str | None = None) -> list[int]:
    """The stored reports' n, oldest first (of one device, or all)."""
    with db._tx("test read") as cur:
        if device is None:
            db._exec(cur, "SELECT body FROM tf_reports ORDER BY id")
        else:
            db._exec(cur, "SELECT body FROM tf_reports WHERE fleet = ? AND device_id = ? ORDER BY id",
                     (F, device))
        return [json.loads(r[0])["n"] for r in cur.fetchall()]


def test_a_report_flood_from_one_device_keeps_its_newest_reports_and_spares_the_others(target):
    with fleetdb.open_db(target) as db:  # the default retention
        for quiet in ("q1", "q2", "q3"):
            flood(db, quiet, 20)
        flood(db, "noisy", 20_000)
        kept = rows(db, "noisy")
        # Pruned every `every` reports: never more than that over the cap.
        assert 1000 <= len(kept) <= 2000, f"{len(kept)} reports of the flood kept"
        keep = db.retention
        assert (keep.per_device, keep.every) == (1000, 1000)
        assert kept == list(range(20_000 - len(kept), 20_000))  # the newest, in order
        for quiet in ("q1", "q2", "q3"):
            assert rows(db, quiet) == list(range(20))
        db.prune_reports(T)
        assert rows(db, "noisy") == list(range(20_000 - keep.per_device, 20_000))
        assert len(rows(db)) == keep.per_device + 60
    with fleetdb.open_db(target) as db:  # still within the caps when reopened
        assert len(rows(db, "noisy")) == keep.per_device


def test_the_total_cap_keeps_the_newest_reports_of_the_fleet(target):
    keep = fleetdb.Retention(per_device=0, total=3000, max_age=0, every=500)
    with fleetdb.open_db(target, retention=keep) as db:
        for d in range(40):
            flood(db, f"d{d:02}", 250)
        stored = len(rows(db))
        assert keep.total <= stored <= keep.total + keep.every
        db.prune_reports(T)
        assert len(rows(db)) == keep.total
        # 40 devices x 250 in order: the newest 3000 are the last 12 devices' reports.
        newest = {r["device"] for r in db.reports(F, limit=keep.total)}
        assert newest == {f"d{d:02}" for d in range(28, 40)}


def test_reports_older_than_the_maximum_age_are_dropped_on_ingest(target):
    keep = fleetdb.Retention(max_age=30 * DAY, every=1)
    with fleetdb.open_db(target, retention=keep) as db:
        db.add_reports([(F, "old", report("old", 0), T - 31 * DAY),
                        (F, "young", report("young", 0), T - 29 * DAY)])
        db.add_report(F, "now", report("now", 0), T)
        assert sorted(r["device"] for r in db.reports(F)) == ["now", "young"]


def test_a_zero_limit_turns_retention_off(target):
    keep = fleetdb.Retention(per_device=0, total=0, max_age=0, every=1)
    with fleetdb.open_db(target, retention=keep) as db:
        db.add_report(F, "old", report("old", 0), T - 365 * DAY)
        flood(db, "d", 3000)
        assert len(rows(db)) == 3001


def test_a_database_made_before_retention_gets_the_index_on_open_and_is_pruned(target):
    off = fleetdb.Retention(per_device=0, total=0, max_age=0, every=1)
    with fleetdb.open_db(target, retention=off) as db:
        with db._tx("drop", write=True) as cur:  # the schema as the code before retention made it
            cur.execute("DROP INDEX tf_reports_device")
        flood(db, "noisy", 1200)
    with fleetdb.open_db(target) as db:
        with db._tx("read") as cur:
            if db.dialect == "sqlite":
                cur.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            else:
                cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
            assert "tf_reports_device" in {r[0] for r in cur.fetchall()}
        assert db.schema_version() == fleetdb.SCHEMA_VERSION
        db.add_report(F, "noisy", report("noisy", 1200), T)  # the first batch after opening prunes
        assert rows(db, "noisy") == list(range(201, 1201))


def test_fleet_prune_applies_the_limits_at_once_and_refuses_a_negative_one(target, capsys):
    from trustfleet_server import cli

    off = fleetdb.Retention(per_device=0, total=0, max_age=0, every=1)
    with fleetdb.open_db(target, retention=off) as db:
        flood(db, "noisy", 1500)
        flood(db, "quiet", 10)
    code = cli.main(["fleet", "prune", "--db", target, "--per-device", "200", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out) == {"deleted": 1300, "left": 210}
    with fleetdb.open_db(target, retention=off) as db:
        assert rows(db, "noisy") == list(range(1300, 1500)) and rows(db, "quiet") == list(range(10))
    code = cli.main(["fleet", "prune", "--db", target, "--total", "-1"])
    out, err = capsys.readouterr()
    assert code != 0 and err.strip().count("\n") == 0 and "--total" in err and "Traceback" not in err


def test_serve_applies_the_retention_it_is_given_as_reports_arrive(private_mosquitto, tmp_path):
    """`serve --reports-per-device 3` keeps about a device's three newest reports (the default
    would keep all 18)."""
    broker = private_mosquitto()
    repo = Repo(fleet=brokers.unique_fleet("ret"), now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    db_path = tmp_path / "fleet.db"
    rc: list[int] = []
    serve = threading.Thread(target=lambda: rc.append(cli.main(
        ["serve", "--broker", broker.url, "--fleet", repo.fleet, "--root", str(tmp_path / "root.cose"),
         "--db", str(db_path), "--duration", "6s", "--reports-per-device", "3", "--client-id", "ret-test"])))
    serve.start()
    dev = brokers.connect(broker, protocol=mqtt.MQTTv5)
    try:
        for n in range(18):  # some before serve subscribes: those are not counted
            dev.publish(topics.report(repo.fleet, "pi-1"), json.dumps({"device": "pi-1", "n": n}))
            time.sleep(0.25)
    finally:
        dev.close()
        serve.join(30)
    assert rc == [0]
    with fleetdb.open_db(str(db_path)) as db, db._tx("test read") as cur:
        db._exec(cur, "SELECT body FROM tf_reports WHERE device_id = 'pi-1' ORDER BY id")
        kept = [json.loads(r[0])["n"] for r in cur.fetchall()]
    # The newest, and at most per_device more than the limit between two prunes (Retention).
    assert kept == list(range(18 - len(kept), 18)) and 3 <= len(kept) <= 6, kept
