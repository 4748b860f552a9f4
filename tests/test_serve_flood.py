"""`trustfleet serve` under a flood from one device (issue 10 finding 8), and the fleet bundle
serve verifies recorded as published.

A private Mosquitto and the real FleetServer on a thread. One device publishes
statuses and reports as fast as its socket takes them; another publishes one
status, which must land. Bounds are generous: nothing here measures time
(benchmarks/bench_serve_flood.py prints the figures).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import brokers, flooder
from support.fleetkit import Repo
from support.securedfleet import SecuredFleet
from support.serving import running
from support.waiting import wait_for
from trustfleet_device import topics
from trustfleet_server import cli, mqtturl
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve import server
from trustfleet_server.serve.limits import Limits

FLOOD_SECONDS = 6.0


def status_body(fleet: str, device: str, seq: int, version: int = 1) -> bytes:
    return json.dumps({"device": device, "fleet": fleet, "state": "ok", "version": version,
                       "seq": seq}).encode()


def report_body(fleet: str, device: str, seq: int) -> bytes:
    return json.dumps({"device": device, "fleet": fleet, "event": "flood", "seq": seq}).encode()


@contextmanager
def serving(broker, repo: Repo, db_path: Path) -> Iterator[server.FleetServer]:
    db = fleetdb.open_db(str(db_path))
    srv = server.FleetServer(mqtturl.parse(broker.url), repo.fleet, [repo.root_raw], db,
                             None, step_every=0.5)
    with running(srv, db):
        yield srv


class Flooder:
    """One device publishing statuses and reports (QoS 0) as fast as its socket takes them."""

    def __init__(self, broker, fleet: str, device: str, pad: int = 0) -> None:
        self.fleet, self.device, self.pad = fleet, device, pad
        self.sent = 0
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{fleet}-{device}",
                                  protocol=mqtt.MQTTv311)
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            body = status_body(self.fleet, self.device, seq)
            if self.pad:
                body = body[:-1] + b', "pad": "' + b"x" * self.pad + b'"}'
            self.client.publish(topics.status(self.fleet, self.device), body, qos=0)
            info = self.client.publish(topics.report(self.fleet, self.device),
                                       report_body(self.fleet, self.device, seq), qos=0)
            self.sent += 2
            if seq % 100 == 0:  # keep paho's own send queue short: the socket sets the pace
                info.wait_for_publish(5)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.client.loop_stop()
        self.client.disconnect()


def publish_status(broker, fleet: str, device: str, version: int = 1) -> None:
    c = brokers.connect(broker)
    try:
        c.publish(topics.status(fleet, device), status_body(fleet, device, 1, version), retain=True)
    finally:
        c.close()


def test_a_flooding_device_cannot_delay_another_devices_status_or_grow_serves_queue(
        private_mosquitto, tmp_path):
    broker = private_mosquitto()
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    db_path = tmp_path / "fleet.db"
    with serving(broker, repo, db_path) as srv:
        flood = Flooder(broker, repo.fleet, "flood-1")
        peak = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], srv.pending())
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            wait_for(lambda: flood.sent > 2000, "the flood to start")
            start = time.monotonic()
            publish_status(broker, repo.fleet, "normal-1")
            with fleetdb.open_db(str(db_path)) as reader:
                wait_for(lambda: reader.device(repo.fleet, "normal-1") is not None,
                         "the normal device's status to land during the flood", timeout=10)
            landed = time.monotonic() - start
            time.sleep(max(0.0, FLOOD_SECONDS - (time.monotonic() - start)))
            flooded = time.monotonic() - start
        finally:
            flood.stop()
            sampling.set()
            sampler.join(5)
        stats = srv.stats
        assert flood.sent > 10_000, flood.sent  # the flood was real
        # Its effect is bounded: a short queue, reports stored at the device's rate ...
        assert peak[0] <= 200, f"serve held {peak[0]} pending messages"
        allowed = srv.limits.report_burst + srv.limits.report_rate * (flooded + 10)
        assert stats.reports <= allowed, (stats.reports, allowed)
        # ... and the excess was dropped and counted.
        assert stats.rate_limited > flood.sent // 4, (stats.rate_limited, flood.sent)
    assert landed < 10


def test_serve_records_the_fleet_bundle_it_verifies_as_published(private_mosquitto, tmp_path):
    broker = private_mosquitto()
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    db_path = tmp_path / "fleet.db"
    # Published by hand (no `publish --db`): the store knows nothing of v2 yet.
    c = brokers.connect(broker)
    try:
        c.publish(topics.bundle(repo.fleet), repo.bundle(2), retain=True)
    finally:
        c.close()
    publish_status(broker, repo.fleet, "dev-1", version=2)
    with serving(broker, repo, db_path), fleetdb.open_db(str(db_path)) as reader:
        wait_for(lambda: reader.newest_published(repo.fleet) == 2,
                 "serve to record the fleet bundle as published")
        wait_for(lambda: (reader.device(repo.fleet, "dev-1") or {}).get("version") == 2,
                 "the device's status")
        assert reader.device(repo.fleet, "dev-1")["suspect"] is False
        assert reader.published(repo.fleet)[0]["source"].startswith("serve")


# --------------------------------------------------------------------------- fencing

NORMALS = ["normal-1", "normal-2"]


class FloodProcess:
    """support/flooder.py in a process of its own, as device `device` of a SecuredFleet."""

    def __init__(self, sec: SecuredFleet, device: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(flooder.__file__)), sec.proc.host, str(sec.proc.port), sec.fleet,
             # --password=...: a generated secret may begin with "-", which argparse would take
             # for an option (seen: "argument --password: expected one argument")
             device, "--username", device, f"--password={sec.secrets[device]}",
             "--client-id", sec.client_id(device)],
            stdout=subprocess.PIPE, text=True)

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def device_status(sec: SecuredFleet, device: str) -> None:
    dev = sec.device(device)
    try:
        assert not dev.publish(topics.status(sec.fleet, device), status_body(sec.fleet, device, 1),
                               retain=True).is_failure
    finally:
        dev.close()


def can_connect(sec: SecuredFleet, device: str) -> bool:
    c = sec.device(device, expect_success=False)
    c.close()
    return bool(c.connack) and not c.connack[0].is_failure


def test_a_device_that_keeps_flooding_is_fenced_at_the_broker_and_every_status_lands(
        private_mosquitto, tmp_path, capsys):
    """The broker drops what it cannot deliver to a lagging serve, other devices' statuses
    included; serve disables the flooder at the broker and reads the retained statuses again."""
    sec = SecuredFleet(tmp_path, private_mosquitto, ["flood-1", *NORMALS], prefix="fence")
    db_path = tmp_path / "fleet.db"
    db = fleetdb.open_db(str(db_path))
    srv = server.FleetServer(mqtturl.parse(sec.server_url()), sec.fleet, [sec.repo.root_raw], db,
                             None, step_every=0.5, limits=Limits(fence_for=600))
    with running(srv, db):
        flood = FloodProcess(sec, "flood-1")
        try:
            wait_for(lambda: srv.stats.rate_limited > 0 or flood.proc.poll() is not None,
                     "the flood to reach serve")
            device_status(sec, "normal-1")  # during the flood
            wait_for(lambda: srv.stats.fenced == 1, "serve to fence the flooding device", 20)
            with fleetdb.open_db(str(db_path)) as reader:
                wait_for(lambda: reader.device(sec.fleet, "normal-1") is not None,
                         "the status sent during the flood to land", 20)
                device_status(sec, "normal-2")  # after the fence
                wait_for(lambda: reader.device(sec.fleet, "normal-2") is not None,
                         "the status sent after the fence to land", 10)
        finally:
            result = flood.stop()
        # The broker disconnected the flooder and would not take it back.
        assert result["refused"] is not None, result
        assert not can_connect(sec, "flood-1")
        assert can_connect(sec, "normal-1")
        events = db.device_events(sec.fleet, "flood-1")
        assert [(e["action"], e["who"]) for e in events] == [("fence", "serve")], events
        assert "disabled at the broker for 600 s" in events[0]["why"]
        wait_for(lambda: srv.stats.resyncs >= 1, "serve to read the retained statuses again", 10)

    # A new serve lifts the fence its predecessor left when it ends (here: already over).
    db = fleetdb.open_db(str(db_path))
    srv = server.FleetServer(mqtturl.parse(sec.server_url()), sec.fleet, [sec.repo.root_raw], db,
                             None, step_every=0.5, limits=Limits(fence_for=1))
    with running(srv, db):
        wait_for(lambda: can_connect(sec, "flood-1"), "the fence to be lifted", 20)
        wait_for(lambda: [e["action"] for e in db.device_events(sec.fleet, "flood-1")] == ["fence", "unfence"],
                 "the lift to be recorded", 10)

    # The operator reads both in the audit trail.
    capsys.readouterr()
    assert cli.main(["fleet", "events", "--db", str(db_path), "--fleet", sec.fleet, "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert [(e["device"], e["action"], e["who"]) for e in events] == [
        ("flood-1", "fence", "serve"), ("flood-1", "unfence", "serve")]


@pytest.mark.parametrize("flag, value, message", [
    ("--status-limit", "fast", "expected RATE,BURST"),
    ("--report-limit", "1,0", "the burst at least 1"),
    ("--fence-after", "0", "--fence-after must be at least 1"),
    ("--fence-for", "-5", "--fence-for"),
])
def test_serve_refuses_bad_limits_in_one_line(tmp_path, capsys, flag, value, message):
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    rc = cli.main(["serve", "--broker", "mqtt://127.0.0.1:9", "--fleet", repo.fleet, "--root",
                   str(tmp_path / "root.cose"), "--db", str(tmp_path / "fleet.db"), f"{flag}={value}", "--once"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "fleet.db").exists()
