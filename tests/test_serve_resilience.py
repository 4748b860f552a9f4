"""`trustfleet serve` against a broker that fails: issue 10, findings 2, 6 and 7.

Every test runs a private Mosquitto (no persistence) and the real server:
a FleetServer on a thread, or `trustfleet serve` processes killed with
SIGKILL. Waits are bounded and generous; nothing here measures time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import brokers, waiting
from support.fleetkit import Repo
from support.serving import ServerThread, running
from trustfleet_device import policy, topics
from trustfleet_server import cli, keys, mqtturl, rollout
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve import server

WAIT = 30.0
TRUSTFLEET = Path(sys.executable).with_name("trustfleet")


def wait_for(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> object:
    return waiting.wait_for(predicate, what, timeout)


class Setup:
    def __init__(self, broker, tmp_path: Path) -> None:
        self.broker = broker
        self.b = brokers.Broker(broker.host, broker.port, "mosquitto")
        self.repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
        self.dir = tmp_path
        (tmp_path / "root.cose").write_bytes(self.repo.root_raw)
        keys.write_private_key(tmp_path / "timestamp.pem", self.repo.keys["timestamp"][0])

    fleet = property(lambda self: self.repo.fleet)
    root = property(lambda self: str(self.dir / "root.cose"))
    db = property(lambda self: str(self.dir / "fleet.db"))
    url = property(lambda self: self.broker.url)

    def write_bundle(self, version: int) -> Path:
        path = self.dir / f"bundle-v{version}.cose"
        path.write_bytes(self.repo.bundle(version))
        return path

    def status(self, names: list[str], version: int = 1) -> None:
        c = brokers.connect(self.b)
        try:
            for name in names:
                body = {"device": name, "fleet": self.fleet, "state": "ok", "version": version, "seq": 1}
                c.publish(topics.status(self.fleet, name), json.dumps(body), retain=True)
        finally:
            c.close()

    def devices(self) -> set[str]:
        with fleetdb.open_db(self.db) as db:
            return {d["device"] for d in db.devices(self.fleet)}

    def retained(self, topic: str, timeout: float = 1.0) -> bytes | None:
        return brokers.retained(self.b, topic, timeout)


@contextmanager
def serving(s: Setup, **kw) -> Iterator[server.FleetServer]:
    db = fleetdb.open_db(s.db)
    key = keys.load_private_key(s.dir / "timestamp.pem")
    srv = server.FleetServer(mqtturl.parse(s.url), s.fleet, [s.repo.root_raw], db, key,
                             timestamp_every=kw.get("timestamp_every", 300), step_every=0.2)
    with running(srv, db, duration=180, join=20) as run:
        srv.errors, srv.thread = run.errors, run.thread  # type: ignore[attr-defined]
        yield srv


class Closer:
    """A TCP server on `port` that accepts every connection and closes it at once (a dead proxy)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((brokers.HOST, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


# --------------------------------------------------------------------------- finding 2


def test_serve_keeps_retrying_when_the_broker_port_accepts_and_closes_before_connack(
        private_mosquitto, tmp_path):
    broker = private_mosquitto()
    s = Setup(broker, tmp_path)
    with serving(s) as srv:
        assert srv.stats.protocol == "MQTT 5"
        broker.stop()
        closer = Closer(broker.port)
        try:
            # Each attempt reaches TCP and is cut before CONNACK; serve must back off and retry.
            wait_for(lambda: closer.accepted >= 3 or srv.errors, "serve to retry against the closer")
            assert not srv.errors, srv.errors
            assert srv.thread.is_alive()
        finally:
            closer.close()
        broker.start()
        wait_for(lambda: srv.stats.connects >= 2 or srv.errors, "serve to reconnect to Mosquitto", 60)
        s.status(["after"])
        wait_for(lambda: "after" in s.devices(), "a status after the reconnect")


def test_serve_started_against_a_port_that_hangs_up_waits_and_then_speaks_mqtt_5(private_mosquitto, tmp_path):
    port = brokers.free_port()
    closer = Closer(port)
    s = Setup(brokers.Broker(brokers.HOST, port, "mosquitto"), tmp_path)
    db = fleetdb.open_db(s.db)
    srv = server.FleetServer(mqtturl.parse(s.url), s.fleet, [s.repo.root_raw], db, step_every=0.2)
    run = ServerThread(srv)
    errors, thread = run.errors, run.thread
    try:
        wait_for(lambda: closer.accepted >= 3 or errors, "serve to retry against the closer")
        closer.close()
        assert not errors, errors
        private_mosquitto(brokers.private_mosquitto_conf(port))
        wait_for(lambda: srv.synced or errors, "serve to connect once Mosquitto listens", 60)
        # The hang-ups were not a refusal of MQTT 5: serve did not settle on 3.1.1 for good.
        assert (srv.stats.protocol, srv.stats.shared) == ("MQTT 5", True)
    finally:
        closer.close()
        srv.stop()
        thread.join(20)
        db.close()
    assert not errors, errors


# --------------------------------------------------------------------------- finding 6


@contextmanager
def serve_process(s: Setup, name: str, *extra: str) -> Iterator[subprocess.Popen]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(s.dir / f"{name}.log", "wb") as log:
        proc = subprocess.Popen([str(TRUSTFLEET), "serve", "--broker", s.url, "--fleet", s.fleet,
                                 "--root", s.root, "--db", s.db, "--step-every", "1", *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def test_a_restarted_serve_gets_every_status_at_once_without_a_client_id_option(private_mosquitto, tmp_path):
    if not TRUSTFLEET.exists():
        pytest.fail(f"{TRUSTFLEET} is missing (pip install -e .)")
    broker = private_mosquitto()
    s = Setup(broker, tmp_path)
    with serve_process(s, "first") as first:
        s.status(["boot-1"])
        wait_for(lambda: "boot-1" in s.devices(), "the first serve to ingest a status")
        time.sleep(2 * server.BOOT_IDLE + 0.5)  # past its retained-status read: live via the share
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    # The dead worker's MQTT 5 session (and its share of the statuses) outlives it unless
    # the restarted serve comes back under the same client id and takes it over.
    with serve_process(s, "second") as second:
        s.status(["boot-2"])
        wait_for(lambda: "boot-2" in s.devices(), "the second serve to ingest a status")
        time.sleep(2 * server.BOOT_IDLE + 0.5)
        names = [f"live-{i:02d}" for i in range(20)]
        s.status(names)
        try:
            wait_for(lambda: set(names) <= s.devices(), "all 20 live statuses", 15)
        except AssertionError:
            missing = sorted(set(names) - s.devices())
            raise AssertionError(f"{len(missing)} of 20 statuses never landed: {missing}") from None
        assert second.poll() is None


def test_the_default_client_id_is_stable_per_fleet_and_host_and_can_be_overridden(tmp_path):
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    url = mqtturl.parse("mqtt://127.0.0.1:1")
    with fleetdb.open_db(tmp_path / "f.db") as db:
        a = server.FleetServer(url, repo.fleet, [repo.root_raw], db)
        b = server.FleetServer(url, repo.fleet, [repo.root_raw], db)
        c = server.FleetServer(url, repo.fleet, [repo.root_raw], db, client_id="worker-2")
    assert a.link.client_id == b.link.client_id
    assert repo.fleet in a.link.client_id and socket.gethostname().split(".")[0][:20] in a.link.client_id
    assert c.link.client_id == "worker-2"
    assert len(a.link.client_id) <= 64


# --------------------------------------------------------------------------- finding 7


def kill_9_and_restart(broker) -> None:
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(10)
    broker.start()


def test_serve_republishes_the_retained_documents_it_owns_after_a_broker_kill_9(
        private_mosquitto, tmp_path, capsys):
    broker = private_mosquitto()  # no persistence: a kill -9 loses every retained message
    s = Setup(broker, tmp_path)
    bundle1, bundle2 = s.write_bundle(1), s.write_bundle(2)
    assert cli.main(["publish", "--broker", s.url, "--root", s.root, str(bundle1)]) == 0
    low = [n for n in (f"dev-{i:03d}" for i in range(400)) if topics.bucket(n) < 20][:2]
    s.status(low)
    with serving(s, timestamp_every=300) as srv:
        wait_for(lambda: set(low) <= s.devices(), "the statuses")
        code = cli.main(["rollout", "start", "--db", s.db, "--fleet", s.fleet, "--root", s.root,
                         "--bundle", str(bundle2), "--waves", "20%,100%", "--wave-deadline", "3600"])
        assert code == 0, capsys.readouterr().err
        wave_topic = topics.bucket_bundle(s.fleet, topics.bucket(low[0]))

        def published() -> bool:
            with fleetdb.open_db(s.db) as db:
                r = db.latest_rollout(s.fleet)
            return r is not None and r.state == rollout.RUNNING and wave_topic in r.published
        wait_for(published, "the first wave")
        assert s.retained(wave_topic) == bundle2.read_bytes()
        wait_for(lambda: s.retained(topics.timestamp(s.fleet)), "the first timestamp")
        connects = srv.stats.connects

        kill_9_and_restart(broker)
        assert s.retained(topics.bundle(s.fleet), 0.3) is None  # the broker lost everything
        wait_for(lambda: srv.stats.connects > connects, "serve to reconnect")

        def restored() -> bool:
            return (s.retained(topics.bundle(s.fleet), 0.3) == bundle1.read_bytes()
                    and s.retained(wave_topic, 0.3) == bundle2.read_bytes()
                    and s.retained(topics.timestamp(s.fleet), 0.3) is not None)
        try:
            wait_for(restored, "the retained documents to come back", 20)
        except AssertionError:
            held = {t: s.retained(t, 0.3) is not None for t in
                    (topics.bundle(s.fleet), wave_topic, topics.timestamp(s.fleet))}
            raise AssertionError(f"after the broker kill -9, retained: {held}") from None
        ts = policy.verify_timestamp(policy.load_trusted_root(s.repo.root_raw),
                                     s.retained(topics.timestamp(s.fleet)))
        assert ts.bundle_version == 1  # the fleet runs v1; v2 is still in its first wave
        # Other buckets were never part of the wave and stay empty.
        high = next(n for n in range(20, 100))
        assert s.retained(topics.bucket_bundle(s.fleet, high), 0.3) is None
