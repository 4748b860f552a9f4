"""`trustfleet publish`, `serve` and rollouts end to end, on a real broker with real devices.

Devices are the real core (runner.Device + session.Session over MemStorage),
each behind its own paho client, as the Raspberry Pi agent runs it. The
broker is the `mosquitto` fixture (conftest: the system Mosquitto on 1883
if it answers, else a private one); fleets are unique per test and every
retained topic a test writes is cleared at the end. Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import brokers
from support.fleetkit import Repo
from support.livedevice import LiveDevice, ids_in_buckets
from support.serving import running
from support.waiting import wait_for
from trustfleet_device import cbor, cose, policy, topics
from trustfleet_server import cli, keys, mqtturl, rollout
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve import server

WAIT = 20.0


# --------------------------------------------------------------------------- devices


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    broker: brokers.Broker
    repo: Repo
    dir: Path

    @property
    def fleet(self) -> str:
        return self.repo.fleet

    @property
    def url(self) -> str:
        return self.broker.url

    @property
    def root(self) -> str:
        return str(self.dir / "root.cose")

    @property
    def db(self) -> str:
        return str(self.dir / "fleet.db")

    @property
    def timestamp_key(self) -> str:
        return str(self.dir / "timestamp.pem")

    def write_bundle(self, version: int, **kw) -> str:
        path = self.dir / f"bundle-v{version}.cose"
        path.write_bytes(self.repo.bundle(version, **kw))
        return str(path)

    def retained(self, topic: str, timeout: float = 1.0) -> bytes | None:
        return brokers.retained(self.broker, topic, timeout)


@pytest.fixture
def env(mosquitto, tmp_path):
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    keys.write_private_key(tmp_path / "timestamp.pem", repo.keys["timestamp"][0])
    e = Env(mosquitto, repo, tmp_path)
    devices: list[LiveDevice] = []
    e.devices = devices  # type: ignore[attr-defined]
    yield e
    for d in devices:
        d.close()
    f = repo.fleet
    names = [topics.root(f, v) for v in range(1, 4)] + [topics.bundle(f), topics.timestamp(f)]
    names += [topics.group_bundle(f, g) for g in ("canary", "beta")]
    names += [topics.bucket_bundle(f, n) for n in range(topics.BUCKETS)]
    names += [topics.status(f, d.id) for d in devices]
    brokers.clear_retained(mosquitto, names)


def start_devices(e: Env, specs: list[tuple[str, str | None, tuple[int, ...]]]) -> list[LiveDevice]:
    made = [LiveDevice(e.broker, e.repo, name, group, fail) for name, group, fail in specs]
    e.devices.extend(made)  # type: ignore[attr-defined]
    return made


@contextmanager
def serving(e: Env, step_every: float = 0.2, timestamp_every: float = 1.0):
    """A FleetServer on a background thread, stopped (and its errors raised) at the end."""
    db = fleetdb.open_db(e.db)
    key = keys.load_private_key(e.timestamp_key)
    srv = server.FleetServer(mqtturl.parse(e.url), e.fleet, [e.repo.root_raw], db, key,
                             timestamp_every=timestamp_every, step_every=step_every)
    with running(srv, db, "the server to connect and read the retained statuses", join=15):
        yield srv


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def store(e: Env) -> fleetdb.FleetDB:
    return fleetdb.open_db(e.db)


def count_devices(e: Env) -> int:
    with store(e) as db:
        return len(db.devices(e.fleet))


def has_device(e: Env, name: str) -> bool:
    with store(e) as db:
        return db.device(e.fleet, name) is not None


def reports(e: Env) -> list[dict]:
    with store(e) as db:
        return db.reports(e.fleet)


# --------------------------------------------------------------------------- publish


def test_publish_refuses_a_bundle_below_the_signature_threshold_and_publishes_nothing(env, capsys):
    weak = env.write_bundle(1, signers=env.repo.keys["bundle"][:1])
    code, out, err = run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, weak)
    assert code == 1 and "valid bundle signature(s), needs 2" in err and "Traceback" not in err
    assert env.retained(topics.bundle(env.fleet), timeout=0.5) is None


def test_publish_refuses_the_whole_batch_when_one_file_is_forged(env, capsys):
    good = env.write_bundle(1)
    forged = env.dir / "forged.cose"
    forged.write_bytes(Repo(fleet=env.fleet, now=env.repo.now).bundle(2))  # someone else's keys
    code, _, err = run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, "--to",
                           "group:canary", good, str(forged))
    assert code == 1 and "forged.cose" in err
    assert env.retained(topics.group_bundle(env.fleet, "canary"), timeout=0.5) is None


def test_publish_sends_verified_documents_retained_to_their_topics(env, capsys):
    bundle = env.write_bundle(1)
    code, out, _ = run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, "--json",
                           "--to", "group:canary", env.root, bundle)
    assert code == 0
    report = json.loads(out)
    assert [(p["type"], p["topic"]) for p in report["published"]] == [
        ("root", topics.root(env.fleet, 1)), ("bundle", topics.group_bundle(env.fleet, "canary"))]
    assert env.retained(topics.group_bundle(env.fleet, "canary")) == Path(bundle).read_bytes()
    assert env.retained(topics.root(env.fleet, 1)) == env.repo.root_raw
    code, out, _ = run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, bundle)
    assert code == 0 and f"published bundle v1 -> {topics.bundle(env.fleet)}" in out


def test_publish_takes_a_root_only_as_the_exact_next_version(env, capsys):
    v2 = env.dir / "root-v2.cose"
    v3 = env.dir / "root-v3.cose"
    v2.write_bytes(env.repo.rotate("bundle", new_keys=1))
    v3.write_bytes(env.repo.rotate("bundle", new_keys=1))
    code, _, err = run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, str(v3))
    assert code == 1 and "skips versions: expected 2" in err
    code, out, _ = run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, str(v3), str(v2))
    assert code == 0 and topics.root(env.fleet, 2) in out and topics.root(env.fleet, 3) in out


def test_publish_and_serve_report_an_unreachable_broker_as_a_usage_error(env, capsys):
    url = f"mqtt://127.0.0.1:{brokers.free_port()}"
    code, _, err = run_cli(capsys, "publish", "--broker", url, "--root", env.root, env.write_bundle(1))
    assert code == 2 and "cannot connect" in err
    code, _, err = run_cli(capsys, "serve", "--broker", url, "--fleet", env.fleet, "--root", env.root,
                           "--db", env.db, "--once")
    assert code == 2 and "cannot connect" in err and "Traceback" not in err


# --------------------------------------------------------------------------- serve


def test_serve_ingests_real_device_sessions_and_publishes_timestamps_that_verify(env, capsys):
    bundle = env.write_bundle(1)
    assert run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, bundle)[0] == 0
    devs = start_devices(env, [("pi-1", "canary", ()), ("pi-2", None, ()), ("pi-3", None, ())])
    wait_for(lambda: all(d.version == 1 for d in devs), "devices to install v1")
    code, out, err = run_cli(capsys, "serve", "--broker", env.url, "--fleet", env.fleet, "--root",
                             env.root, "--db", env.db, "--timestamp-key", env.timestamp_key,
                             "--once", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["statuses"] >= 3 and summary["timestamps"] == 1 and summary["protocol"] == "MQTT 5"
    with store(env) as db:
        rows = {d["device"]: d for d in db.devices(env.fleet)}
    assert set(rows) == {"pi-1", "pi-2", "pi-3"}
    assert all(d["version"] == 1 and d["state"] == "ok" for d in rows.values())
    assert rows["pi-1"]["group"] == "canary" and rows["pi-1"]["bucket"] == topics.bucket("pi-1")

    raw = env.retained(topics.timestamp(env.fleet))
    ts = policy.verify_timestamp(policy.load_trusted_root(env.repo.root_raw), raw)
    assert ts.bundle_version == 1
    assert ts.bundle_sha256 == hashlib.sha256(Path(bundle).read_bytes()).digest()
    assert abs(ts.time - time.time()) < 30
    wait_for(lambda: all(d.last_timestamp == ts.time for d in devs), "devices to accept the timestamp")

    # A device that vanishes: its will marks it offline; its version is kept.
    devs[2].drop()
    env.devices.remove(devs[2])
    wait_for(lambda: env.retained(topics.status(env.fleet, "pi-3"), 0.3) and json.loads(
        env.retained(topics.status(env.fleet, "pi-3"), 0.3))["state"] == "offline", "the last will")
    assert run_cli(capsys, "serve", "--broker", env.url, "--fleet", env.fleet, "--root", env.root,
                   "--db", env.db, "--once")[0] == 0
    code, out, _ = run_cli(capsys, "fleet", "status", "--db", env.db, "--fleet", env.fleet, "--json")
    s = json.loads(out)
    assert s["devices"] == 3 and s["by_version"] == {"1": 3}
    assert [d["device"] for d in s["offline"]] == ["pi-3"] and s["offline"][0]["version"] == 1
    # Reports are events, not retained: a running server takes them as they come.
    forged = Repo(fleet=env.fleet, now=env.repo.now).bundle(5)  # someone else's keys
    with serving(env):
        c = brokers.connect(env.broker)
        try:
            c.publish(topics.group_bundle(env.fleet, "canary"), forged, retain=True)
        finally:
            c.close()
        wait_for(lambda: reports(env), "pi-1's report of the forged bundle")
    [report] = reports(env)
    assert report["device"] == "pi-1" and report["kind"] == "document-refused"
    assert "bundle" in report["report"]["reason"] and devs[0].version == 1
    code, out, _ = run_cli(capsys, "fleet", "status", "--db", env.db, "--fleet", env.fleet)
    assert code == 0 and f"fleet {env.fleet}: 3 device(s)" in out and "offline: 1" in out
    assert "recent reports:" in out and "document-refused" in out


def test_serve_refuses_a_timestamp_key_outside_the_roots_timestamp_role(env, capsys):
    other = env.dir / "other.pem"
    keys.write_private_key(other, keys.generate_key())
    code, _, err = run_cli(capsys, "serve", "--broker", env.url, "--fleet", env.fleet, "--root",
                           env.root, "--db", env.db, "--timestamp-key", str(other), "--once")
    assert code == 2 and "is not a timestamp key of root v1" in err


# --------------------------------------------------------------------------- rollouts


def rollout_state(e: Env) -> rollout.Rollout | None:
    with store(e) as db:
        return db.latest_rollout(e.fleet)


def test_a_rollout_advances_wave_by_wave_as_devices_report_success(env, capsys):
    assert run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, env.write_bundle(1))[0] == 0
    low, high = ids_in_buckets(20, 2, 3)
    devs = start_devices(env, [(n, None, ()) for n in low + high])
    wait_for(lambda: all(d.version == 1 for d in devs), "devices to install v1")
    bundle2 = env.write_bundle(2)
    with serving(env):
        wait_for(lambda: count_devices(env) == 5, "the server to ingest 5 devices")
        code, out, err = run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet,
                                 "--root", env.root, "--bundle", bundle2, "--waves", "20%,100%",
                                 "--wave-deadline", "60")
        assert code == 0, err
        wait_for(lambda: rollout_state(env).state == rollout.DONE, "the rollout to finish")
        assert all(d.version == 2 for d in devs)
        wait_for(lambda: policy.verify_timestamp(
            policy.load_trusted_root(env.repo.root_raw),
            env.retained(topics.timestamp(env.fleet))).bundle_version == 2,
            "a timestamp naming v2")
    r = rollout_state(env)
    with store(env) as db:
        events = [e["text"] for e in db.events(r.id)]
    assert any("wave 20%: 2 of 2 devices run v2" in t for t in events), events
    assert any("published v2 for wave 100% on 81 topic(s)" in t for t in events), events
    assert r.published == ()
    assert env.retained(topics.bundle(env.fleet)) == Path(bundle2).read_bytes()
    assert env.retained(topics.bucket_bundle(env.fleet, topics.bucket(low[0])), 0.5) is None
    code, out, _ = run_cli(capsys, "fleet", "watch", "--db", env.db, "--fleet", env.fleet)
    assert code == 0 and "done" in out and "[######" in out
    # Going back is never a lower version.
    code, _, err = run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet,
                           "--root", env.root, "--bundle", env.write_bundle(1))
    assert code == 1 and "not newer than v2" in err


def test_a_rollout_halts_when_canaries_revert_and_clears_its_wave_topics(env, capsys):
    assert run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, env.write_bundle(1))[0] == 0
    canaries = start_devices(env, [("can-1", "canary", (2,)), ("can-2", "canary", (2,))])
    others = start_devices(env, [("fleet-1", None, ()), ("fleet-2", None, ())])
    wait_for(lambda: all(d.version == 1 for d in canaries + others), "devices to install v1")
    with serving(env):
        wait_for(lambda: count_devices(env) == 4, "the server to ingest 4 devices")
        code, _, err = run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet,
                               "--root", env.root, "--bundle", env.write_bundle(2),
                               "--groups", "canary,all", "--wave-deadline", "60")
        assert code == 0, err
        wait_for(lambda: rollout_state(env).state == rollout.HALTED, "the rollout to halt")
        wait_for(lambda: rollout_state(env).published == (), "the wave topics to be cleared")
    r = rollout_state(env)
    assert "wave canary: 2 of 2 devices failed" in r.halt_reason
    assert sorted(f["device"] for f in r.failing) == ["can-1", "can-2"]
    assert all("marked v2 bad" in f["reason"] for f in r.failing)
    assert all(d.version == 1 and 2 in d.device.bad_versions() for d in canaries)
    assert all(d.version == 1 for d in others)
    assert env.retained(topics.group_bundle(env.fleet, "canary"), 0.5) is None
    fleet_bundle = env.retained(topics.bundle(env.fleet))
    assert cbor.decode(cose.parse(fleet_bundle).unverified_payload)["version"] == 1
    code, out, _ = run_cli(capsys, "rollout", "status", "--db", env.db, "--fleet", env.fleet, "--json")
    status = json.loads(out)
    assert status["state"] == "halted" and status["progress"][0]["failed"] == 2
    assert any("halted" in e["text"] and "can-1" in e["text"] for e in status["events"])
    code, out, _ = run_cli(capsys, "fleet", "watch", "--db", env.db, "--fleet", env.fleet)
    assert code == 1 and "halted" in out


def test_abort_with_a_broker_clears_the_published_wave_at_once(env, capsys):
    bundle2 = env.write_bundle(2)
    assert run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet, "--root",
                   env.root, "--bundle", bundle2, "--groups", "canary,all", "--allow-empty-waves")[0] == 0
    assert run_cli(capsys, "serve", "--broker", env.url, "--fleet", env.fleet, "--root", env.root,
                   "--db", env.db, "--once")[0] == 0
    group = topics.group_bundle(env.fleet, "canary")
    assert env.retained(group) == Path(bundle2).read_bytes()
    code, out, _ = run_cli(capsys, "rollout", "pause", "--db", env.db, "--fleet", env.fleet)
    assert code == 0 and "is paused" in out
    code, out, err = run_cli(capsys, "rollout", "abort", "--db", env.db, "--fleet", env.fleet,
                             "--broker", env.url, "--reason", "wrong anchors")
    assert code == 0 and "cleared 1 wave topic(s)" in out, err
    assert env.retained(group, 0.5) is None
    r = rollout_state(env)
    assert (r.state, r.halt_reason, r.published) == ("aborted", "wrong anchors", ())
    code, _, err = run_cli(capsys, "rollout", "resume", "--db", env.db, "--fleet", env.fleet)
    assert code == 2 and "no active rollout" in err


def test_abort_without_a_broker_leaves_the_clearing_to_the_next_serve_step(env, capsys):
    bundle2 = env.write_bundle(2)
    assert run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet, "--root",
                   env.root, "--bundle", bundle2, "--waves", "5%,100%", "--allow-empty-waves")[0] == 0
    serve = ("serve", "--broker", env.url, "--fleet", env.fleet, "--root", env.root, "--db", env.db,
             "--once")
    assert run_cli(capsys, *serve)[0] == 0
    first = topics.bucket_bundle(env.fleet, 0)
    assert env.retained(first) == Path(bundle2).read_bytes()
    code, out, _ = run_cli(capsys, "rollout", "abort", "--db", env.db, "--fleet", env.fleet)
    assert code == 0 and "5 wave topic(s) still hold the bundle" in out
    code, _, err = run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet,
                           "--root", env.root, "--bundle", env.write_bundle(3), "--allow-empty-waves")
    assert code == 2 and "not cleared yet" in err
    code, out, _ = run_cli(capsys, *serve)
    assert code == 0 and "cleared 5 topic(s)" in out
    assert all(env.retained(topics.bucket_bundle(env.fleet, n), 0.3) is None for n in (0, 4))
    assert rollout_state(env).published == ()


def test_rollout_start_refuses_an_unverifiable_bundle_and_a_second_rollout(env, capsys):
    weak = env.write_bundle(2, signers=env.repo.keys["bundle"][:1])
    code, _, err = run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet,
                           "--root", env.root, "--bundle", weak)
    assert code == 1 and "needs 2" in err
    args = ["rollout", "start", "--db", env.db, "--fleet", env.fleet, "--root", env.root,
            "--allow-empty-waves"]
    assert run_cli(capsys, *args, "--bundle", env.write_bundle(2))[0] == 0
    code, _, err = run_cli(capsys, *args, "--bundle", env.write_bundle(3))
    assert code == 2 and "is running" in err
    code, _, err = run_cli(capsys, *args, "--bundle", env.write_bundle(4), "--waves", "10%,50%")
    assert code == 2 and "whole fleet" in err


def test_serve_follows_a_root_rotation_and_refuses_what_no_longer_verifies(env, capsys, caplog):
    """Root v2 (published on the broker) drops every bundle key and the timestamp key."""
    bundle2 = env.write_bundle(2)  # signed by the v1 bundle keys
    assert run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet, "--root",
                   env.root, "--bundle", bundle2, "--allow-empty-waves")[0] == 0
    v2, v3 = env.dir / "root-v2.cose", env.dir / "root-v3.cose"
    v2.write_bytes(env.repo.rotate("bundle", new_keys=3, remove=3))
    v3.write_bytes(env.repo.rotate("timestamp", new_keys=1, remove=1))
    # A bundle for the whole fleet signed by the new bundle keys: what a timestamp would name.
    assert run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, str(v2), str(v3),
                   env.write_bundle(3))[0] == 0
    code, out, err = run_cli(capsys, "serve", "--broker", env.url, "--fleet", env.fleet, "--root",
                             env.root, "--db", env.db, "--timestamp-key", env.timestamp_key,
                             "--once", "--json")
    assert code == 0, err
    assert json.loads(out)["timestamps"] == 0
    assert "now trusting root v3" in err, err
    assert "refusing to publish a timestamp that does not verify against root v3" in err
    r = rollout_state(env)
    assert r.state == rollout.HALTED and "no longer verifies against root v3" in r.halt_reason
    assert env.retained(topics.bucket_bundle(env.fleet, 0), 0.5) is None
    assert env.retained(topics.timestamp(env.fleet), 0.5) is None


def test_fleet_watch_redraws_in_place_on_a_terminal(env, capsys, monkeypatch):
    assert run_cli(capsys, "rollout", "start", "--db", env.db, "--fleet", env.fleet, "--root",
                   env.root, "--bundle", env.write_bundle(2), "--allow-empty-waves")[0] == 0
    with store(env) as db:
        db.update_rollout(1, lambda r: rollout.abort(r, int(time.time()), "test"))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run_cli(capsys, "fleet", "watch", "--db", env.db, "--fleet", env.fleet)
    # rich's live region (cursor hidden while it redraws in place) with a bar per wave
    assert code == 1 and "\x1b[?25l" in out and "aborted" in out and "━" in out


# --------------------------------------------------------------------------- other brokers


def test_serve_falls_back_to_mqtt_3_1_1_and_plain_subscriptions(nats_mqtt, tmp_path):
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    c = brokers.connect(nats_mqtt)
    try:
        c.publish(topics.bundle(repo.fleet), repo.bundle(1), retain=True)
        for i in range(3):
            body = {"device": f"d{i}", "fleet": repo.fleet, "state": "ok", "version": 1, "seq": 1}
            c.publish(topics.status(repo.fleet, f"d{i}"), json.dumps(body), retain=True)
    finally:
        c.close()
    with fleetdb.open_db(tmp_path / "f.db") as db:
        srv = server.FleetServer(mqtturl.parse(nats_mqtt.url), repo.fleet, [repo.root_raw], db,
                                 repo.keys["timestamp"][0])
        stats = srv.run(once=True)
        assert (stats.protocol, stats.shared, stats.timestamps) == ("MQTT 3.1.1", False, 1)
        assert [d["device"] for d in db.devices(repo.fleet)] == ["d0", "d1", "d2"]


def test_serve_reconnects_after_the_broker_restarts(private_mosquitto, tmp_path):
    broker = private_mosquitto()
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    e = Env(brokers.Broker(broker.host, broker.port, "mosquitto"), repo, tmp_path)
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    keys.write_private_key(tmp_path / "timestamp.pem", repo.keys["timestamp"][0])
    e.devices = []  # type: ignore[attr-defined]

    def report(name: str) -> None:
        c = brokers.connect(e.broker)
        try:
            body = {"device": name, "fleet": repo.fleet, "state": "ok", "version": 1, "seq": 1}
            c.publish(topics.status(repo.fleet, name), json.dumps(body), retain=True)
        finally:
            c.close()

    with serving(e) as srv:
        report("before")
        wait_for(lambda: has_device(e, "before"), "the first status")
        broker.restart()
        wait_for(lambda: srv.stats.connects >= 2, "the server to reconnect")
        report("after")
        wait_for(lambda: has_device(e, "after"), "a status after the restart")


def test_backoff_grows_with_jitter_up_to_the_cap():
    # serve reconnects with the devices' Backoff, in milliseconds: 1 s doubling to 60 s.
    assert (server.RECONNECT_FIRST_MS, server.RECONNECT_CAP_MS) == (1000, 60000)
    b = server.Backoff(1000, 8000, lambda: 1.0)
    assert [b.next_ms() / 1000 for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = server.Backoff(1000, 8000, lambda: 0.0)
    assert [low.next_ms() / 1000 for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    b.reset()
    assert b.next_ms() / 1000 == 1.0


def test_a_device_whose_timestamp_names_a_newer_bundle_reports_behind_over_mqtt_at_once(env, capsys):
    bundle = env.write_bundle(1)
    assert run_cli(capsys, "publish", "--broker", env.url, "--root", env.root, bundle)[0] == 0
    [dev] = start_devices(env, [("pi-behind", None, ())])
    wait_for(lambda: dev.version == 1, "the device to install v1")
    # The online key names v2 (published to a canary wave elsewhere): this device is behind.
    ts = env.repo.timestamp(env.repo.bundle(2), time=int(time.time()))
    c = brokers.connect(env.broker)
    try:
        c.publish(topics.timestamp(env.fleet), ts, retain=True)
    finally:
        c.close()

    def state() -> str | None:
        raw = env.retained(topics.status(env.fleet, "pi-behind"), 0.3)
        return json.loads(raw)["state"] if raw else None

    wait_for(lambda: state() == "behind", "the retained status to say behind")
    assert run_cli(capsys, "serve", "--broker", env.url, "--fleet", env.fleet, "--root", env.root,
                   "--db", env.db, "--once")[0] == 0
    with store(env) as db:
        [row] = db.devices(env.fleet)
    assert row["state"] == "behind" and row["version"] == 1
    assert row["reasons"] == ["the latest timestamp names v2, this device holds v1"]
