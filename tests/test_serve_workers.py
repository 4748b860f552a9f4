"""Several `trustfleet serve` workers on one store: one leader per fleet (issue 14).

The lease compare-and-set on both stores (SQLite and the real PostgreSQL), the v3 -> v4
upgrade, and three real `serve` processes on PostgreSQL and a private Mosquitto (MQTT 5
shared subscriptions) with real device cores: one leads; the leader is killed with
SIGKILL mid-rollout; another takes over within 10 s; no wave is published twice, no status
is lost, and the rollout ends done.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

from support import brokers
from support.fleetkit import Repo
from support.livedevice import LiveDevice, ids_in_buckets
from support.serving import ServeProcess
from support.waiting import wait_for
from trustfleet_device import topics
from trustfleet_server import cli, keys, mqtturl, rollout
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve import server

F = "acme"
T = 1_800_000_000.0


# --------------------------------------------------------------------------- the lease


def test_the_lease_goes_to_one_holder_is_renewed_by_it_and_taken_when_it_expires(target):
    with fleetdb.open_db(target) as a, fleetdb.open_db(target) as b:
        assert a.lease(F) is None
        assert a.acquire_lease(F, "w1", T, 6)
        assert not b.acquire_lease(F, "w2", T + 1, 6)  # held: the second holder loses
        assert b.lease(F) == ("w1", T + 6)
        assert a.acquire_lease(F, "w1", T + 5, 6)  # renewed by its holder before it expires
        assert not b.acquire_lease(F, "w2", T + 10.9, 6)
        assert b.acquire_lease(F, "w2", T + 11, 6)  # expired: the first to try takes it
        assert not a.acquire_lease(F, "w1", T + 12, 6)  # and the old holder cannot renew
        assert a.lease(F) == ("w2", T + 17)
        assert a.acquire_lease("other", "w1", T + 12, 6)  # one lease per fleet
        a.release_lease(F, "w1")  # only the holder releases
        assert a.lease(F) == ("w2", T + 17)
        b.release_lease(F, "w2")
        assert a.lease(F) is None
        assert a.acquire_lease(F, "w1", T + 13, 6)


def test_only_the_lease_holder_claims_a_rollout(target, tmp_path):
    repo = Repo(fleet=F, now=int(T))
    r = rollout.new_rollout(F, 2, "cd" * 32, repo.bundle(2), rollout.parse_waves("100%"), int(T))
    with fleetdb.open_db(target) as db:
        r = db.create_rollout(r)
        assert db.acquire_lease(F, "w1", T, 6)
        assert not db.claim_rollout(r.id, r.revision, (F, "w2", T + 1))
        assert not db.claim_rollout(r.id, r.revision, (F, "w1", T + 6))  # expired
        assert db.claim_rollout(r.id, r.revision, (F, "w1", T + 1))
        assert db.rollout(r.id).revision == r.revision + 1


def test_two_workers_racing_for_the_lease_never_both_win(target):
    """Four connections try at the same `now`s at once (w0 with a short lease, so it changes hands):
    at each `now`, at most one of them holds it."""
    wins: list[tuple[int, str]] = []
    start = threading.Barrier(4)

    def worker(name: str) -> None:
        with fleetdb.open_db(target) as db:
            start.wait()
            for i in range(40):
                if db.acquire_lease(F, name, T + i, 0.5 if name == "w0" else 6):
                    wins.append((i, name))

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    holders: dict[int, set[str]] = {}
    for i, name in wins:
        holders.setdefault(i, set()).add(name)
    assert wins and all(len(h) == 1 for h in holders.values()), holders


def test_a_worker_that_loses_the_lease_stops_leading_at_once(tmp_path, caplog):
    repo = Repo(fleet=F, now=int(time.time()))
    path = tmp_path / "fleet.db"
    with fleetdb.open_db(path) as da, fleetdb.open_db(path) as dbb:
        url = mqtturl.parse("mqtt://127.0.0.1:1")
        a = server.FleetServer(url, F, [repo.root_raw], da, client_id="wa")
        b = server.FleetServer(url, F, [repo.root_raw], dbb, client_id="wb")
        a._elected = b._elected = True  # as under run()
        a._lease_step(time.monotonic())
        b._lease_step(time.monotonic())
        assert (a.leading, b.leading, a.stats.led, b.stats.led) == (True, False, True, False)
        with da._tx("handing the lease over", write=True) as cur:  # a's renewals came too late
            da._exec(cur, "UPDATE tf_leases SET holder = 'wb'")
        a._lease_step(time.monotonic())
        assert not a.leading and "worker wa no longer leads fleet acme: another worker holds the lease" \
            in caplog.text
        r = da.create_rollout(rollout.new_rollout(F, 2, "cd" * 32, repo.bundle(2),
                                                  rollout.parse_waves("100%"), int(time.time())))
        a._drive_rollout()  # not the leader: does not claim it
        assert da.rollout(r.id).revision == r.revision and da.rollout(r.id).current == -1
        b._lease_step(time.monotonic())
        assert b.leading
        # Its own last renewal too old: it stops before acting, without asking the store.
        assert not b._leads(time.monotonic() + server.LEASE_LENGTH - server.LEASE_MARGIN)
        assert "worker wb no longer leads fleet acme: its lease could not be renewed in time" in caplog.text


def test_a_schema_v3_store_is_upgraded_to_v4_and_keeps_its_data(target):
    with fleetdb.open_db(target) as db:
        db.ingest_status(F, "d1", {"device": "d1", "fleet": F, "state": "ok", "version": 1, "seq": 1},
                         int(T))
        with db._tx("downgrading", write=True) as cur:  # as trustfleet with schema v3 left it
            cur.execute("DROP TABLE tf_leases")
            db._exec(cur, "UPDATE tf_meta SET value = '3' WHERE key = 'schema_version'")
    with fleetdb.open_db(target) as db:
        assert db.schema_version() == fleetdb.SCHEMA_VERSION == 5
        assert db.device(F, "d1")["version"] == 1
        assert db.lease(F) is None and db.acquire_lease(F, "w1", T, 6)


# --------------------------------------------------------------------------- three workers


class Recorder:
    """Counts what reaches the fleet's bundle topics live (not retained copies): publications."""

    def __init__(self, broker: brokers.Broker, fleet: str) -> None:
        self.client = brokers.connect(broker)
        self.client.subscribe(topics.bundle(fleet))
        self.client.subscribe(topics.bundle(fleet) + "/+/+")

    def published(self, payload: bytes) -> Counter[str]:
        return Counter(m.topic for m in list(self.client.messages) if not m.retain and m.payload == payload)

    def cleared(self) -> Counter[str]:
        return Counter(m.topic for m in list(self.client.messages) if not m.retain and not m.payload)


def lease_holder(db_url: str, fleet: str) -> str | None:
    with fleetdb.open_db(db_url) as db:
        held = db.lease(fleet)
    return held[0] if held is not None and held[1] > time.time() else None


def rollout_of(db_url: str, fleet: str) -> rollout.Rollout | None:
    with fleetdb.open_db(db_url) as db:
        return db.latest_rollout(fleet)


def test_three_workers_one_leader_and_a_kill_9_mid_rollout_loses_nothing(private_mosquitto, pg_target,
                                                                         tmp_path, capsys):
    broker = private_mosquitto()
    b = brokers.Broker(broker.host, broker.port, "mosquitto")
    repo = Repo(fleet=brokers.unique_fleet("lead"), now=int(time.time()))
    fleet, db_url = repo.fleet, pg_target
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    keys.write_private_key(tmp_path / "timestamp.pem", repo.keys["timestamp"][0])
    root = str(tmp_path / "root.cose")
    for v in (1, 2):
        (tmp_path / f"bundle-v{v}.cose").write_bytes(repo.bundle(v))
    bundle2 = (tmp_path / "bundle-v2.cose").read_bytes()
    assert cli.main(["publish", "--broker", b.url, "--root", root, str(tmp_path / "bundle-v1.cose")]) == 0

    # Devices in each of the three waves' bucket ranges: [0, 20), [20, 50), [50, 100).
    first, rest = ids_in_buckets(20, 3, 30)
    second = [d for d in rest if topics.bucket(d) < 50][:3]
    third = [d for d in rest if topics.bucket(d) >= 50][:3]
    names = first + second + third
    assert len(names) == 9
    devices = [LiveDevice(b, repo, n) for n in names]
    recorder = Recorder(b, fleet)
    argv = ["--broker", b.url, "--fleet", fleet, "--root", root, "--db", db_url,
            "--timestamp-key", str(tmp_path / "timestamp.pem"), "--timestamp-every", "2",
            "--step-every", "2"]
    workers = [ServeProcess(f"w{i}-{fleet}"[:60], argv, tmp_path) for i in range(3)]
    try:
        wait_for(lambda: all(d.version == 1 for d in devices), "devices to install v1", 30)

        def ingested() -> int:
            with fleetdb.open_db(db_url) as db:
                return sum(1 for d in db.devices(fleet) if d["version"] == 1)
        wait_for(lambda: ingested() == 9, "the workers to ingest 9 devices", 30)
        wait_for(lambda: lease_holder(db_url, fleet), "a worker to lead", 30)
        time.sleep(2 * server.LEASE_RENEW)
        leaders = [w for w in workers if "now leads fleet" in w.log()]
        assert len(leaders) == 1, [w.log() for w in workers]
        leader = leaders[0]
        assert lease_holder(db_url, fleet) == leader.name
        assert all(w.proc.poll() is None for w in workers)

        capsys.readouterr()
        assert cli.main(["rollout", "start", "--db", db_url, "--fleet", fleet, "--root", root,
                         "--bundle", str(tmp_path / "bundle-v2.cose"), "--waves", "20%,50%,100%",
                         "--wave-deadline", "120"]) == 0, capsys.readouterr().err
        wait_for(lambda: (r := rollout_of(db_url, fleet)) is not None and r.current >= 0,
                 "the leader to publish the first wave", 30, step=0.05)
        leader.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        leader.proc.wait(10)
        assert rollout_of(db_url, fleet).state == rollout.RUNNING  # mid-rollout
        wait_for(lambda: lease_holder(db_url, fleet) not in (None, leader.name),
                 "another worker to take the lead", 15, step=0.05)
        takeover = time.monotonic() - killed
        print(f"takeover after {takeover:.2f} s")
        assert takeover < 10, takeover
        successor = next(w for w in workers if w.name == lease_holder(db_url, fleet))

        wait_for(lambda: rollout_of(db_url, fleet).state != rollout.RUNNING, "the rollout to end", 90)
        r = rollout_of(db_url, fleet)
        assert r.state == rollout.DONE, (r.halt_reason, successor.log())
        assert all(d.version == 2 for d in devices)

        # No wave published twice: each wave topic got v2 once (and the fleet topic once).
        expected = [t for i in range(3) for t in rollout.wave_topics(fleet, r.waves, i)]
        wait_for(lambda: set(recorder.published(bundle2)) == set(expected), "every wave topic", 10)
        time.sleep(1)
        counts = recorder.published(bundle2)
        assert sorted(counts) == sorted(expected)
        assert set(counts.values()) == {1}, {t: n for t, n in counts.items() if n != 1}
        assert set(recorder.cleared().values()) <= {1}
        with fleetdb.open_db(db_url) as db:
            events = [e["text"] for e in db.events(r.id)]
            assert [e.split(" on ")[0] for e in events if e.startswith("published")] == [
                "published v2 for wave 20%", "published v2 for wave 50%", "published v2 for wave 100%"]

            # No status lost or duplicated: one row per device, holding its last (retained) status.
            def matches() -> bool:
                rows = db.devices(fleet)
                last = {n: json.loads(brokers.retained(b, topics.status(fleet, n))) for n in names}
                return (sorted(d["device"] for d in rows) == sorted(names)
                        and all((d["version"], d["seq"]) == (last[d["device"]]["version"],
                                                             last[d["device"]]["seq"]) for d in rows))
            wait_for(matches, "every device's last status in the store", 10)
    finally:
        for d in devices:
            d.close()
        recorder.client.close()
        # The lead holder stops last: stopped first, it releases the lease and a follower
        # still running could take it in the second before its own stop.
        try:
            holder = lease_holder(db_url, fleet)
        except Exception:  # noqa: BLE001 - the store may be what failed the test
            holder = None
        summaries = {w.name: w.stop() for w in sorted(workers, key=lambda w: w.name == holder)}
    assert summaries[leader.name] is None  # killed: no summary
    survivors = [s for name, s in summaries.items() if name != leader.name]
    assert sorted(s["led"] for s in survivors) == [False, True]
    follower = next(s for s in survivors if not s["led"])
    assert follower["timestamps"] == follower["waves"] == follower["restored"] == 0
    assert summaries[successor.name]["waves"] >= 1
    assert "taking over from" in successor.log() and "released the lead" in successor.log()
