"""Pin-failure reports leave the device (issue 12), end to end over a real Mosquitto.

The attack this answers: a device whose pins stopped matching (a mis-issued certificate, an
interception proxy, a bundle pinning the wrong keys) said nothing to anyone: its TLS decisions
queued TrustKit reports in a queue no one published. Now each device has one report queue,
shared by its broker TLS context, every health check and its MQTT session, which publishes
them on tf/<fleet>/report/<device>, deduplicated and rate-limited (reports.ReportQueue).

- The Pi: `trustfleet-agent run` as a process, a private Mosquitto on free ports, a loopback
  TLS server (tests/support/tlsagent.py's PKI) as its health endpoint (listed twice: one
  report, not two), and a broker whose certificate misses report-only pins (the connection
  through tls.context_for goes ahead and says so, once, even after a reconnect).
- The board: the board application (transports/board.py: build_device, make_link and its
  umqtt-style transport) on the MicroPython unix port, whose mbedTLS shows the chain
  (verify_callback), so its report is TrustKit's too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from support import brokers, mpunix
from support import fleetkit as fk
from support.tlsagent import ENV, HOST, OTHER, PKI, T0, anchor, make_bundle, pinsets, tls_server
from support.waiting import wait_for
from trustfleet_device import topics, trust
from trustfleet_pi import tls

DEVICE = "pi-r1"
WAIT = 30.0
TRUSTKIT_FIELDS = {"hostname", "port", "noted-hostname", "include-subdomains", "enforce-pinning",
                   "validated-certificate-chain", "known-pins", "pin-expiry", "validation-result",
                   "date-time"}


def _pem(*objs) -> bytes:
    out = b""
    for o in objs:
        if hasattr(o, "public_bytes"):
            out += o.public_bytes(serialization.Encoding.PEM)
        else:
            out += o.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return out


class Agent:
    """`trustfleet-agent run --config` as a process; stderr goes to a file."""

    def __init__(self, config: Path):
        self.log = config.parent / "agent.log"
        self.err = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "trustfleet_pi.cli", "run",
                                      "--config", str(config)], env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=self.err)

    def text(self) -> str:
        return self.log.read_text()

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in self.text().splitlines())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


@pytest.fixture
def agents():
    started: list[Agent] = []

    def start(config: Path) -> Agent:
        started.append(Agent(config))
        return started[-1]

    yield start
    for a in started:
        a.stop()


def setup_agent(tmp_path: Path, repo: fk.Repo, broker_url: str, endpoints: list[str],
                factory: bytes) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "state"\ndevice_id = "{DEVICE}"\nfleet = "{repo.fleet}"\n'
                      f"[health]\nendpoints = {json.dumps(endpoints)}\ntimeout = 5\n"
                      f'[mqtt]\nbroker = "{broker_url}"\nkeepalive = 10\n')
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    (tmp_path / "factory.cose").write_bytes(factory)
    proc = subprocess.run([sys.executable, "-m", "trustfleet_pi.cli", "init", "--config",
                           str(config), "--root", str(tmp_path / "root.cose"), "--bundle",
                           str(tmp_path / "factory.cose")], env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return config


def reports_of(client: brokers.Client, fleet: str, device: str, result: str) -> list[dict]:
    topic = topics.report(fleet, device)
    out = []
    for m in client.messages:
        if m.topic == topic:
            body = json.loads(m.payload)
            if body.get("validation-result") == result:
                out.append(body)
    return out


def assert_trustkit(report: dict, host: str, port: int, pins: list[bytes], result: str) -> None:
    assert set(report) >= TRUSTKIT_FIELDS, TRUSTKIT_FIELDS - set(report)
    assert (report["hostname"], report["noted-hostname"], report["port"]) == (host, host, port)
    assert report["validation-result"] == result
    assert report["known-pins"] == [trust.pin_text(p) for p in pins]
    chain = report["validated-certificate-chain"]
    assert len(chain) == 2 and all(c.startswith("-----BEGIN CERTIFICATE-----") for c in chain)


# --------------------------------------------------------------------------- the Pi agent


def test_a_health_check_pin_failure_reaches_mqtt_once_as_trustkit_json(private_mosquitto,
                                                                      tmp_path, agents):
    broker = private_mosquitto()
    repo = fk.Repo(fleet=brokers.unique_fleet("rep"), now=T0)
    with tls_server(PKI) as server:
        endpoint = f"localhost:{server.port}"
        # The same endpoint twice: two identical failures, one report (deduplicated).
        config = setup_agent(tmp_path, repo, broker.url, [endpoint, endpoint], make_bundle(repo, 1))
        watcher = brokers.connect(broker)
        try:
            watcher.subscribe(topics.report(repo.fleet, DEVICE))
            watcher.subscribe(topics.status(repo.fleet, DEVICE))
            agent = agents(config)
            wait_for(lambda: agent.count("connected to mqtt://") >= 1, "the agent's connection",
                     WAIT)
            # v2 pins another CA's keys: its health check fails on the pins.
            watcher.publish(topics.bundle(repo.fleet), make_bundle(repo, 2, pins=OTHER.pins()),
                            retain=True)
            wait_for(lambda: reports_of(watcher, repo.fleet, DEVICE, "pin-mismatch"),
                     "a pin-mismatch report", WAIT)
            [report] = reports_of(watcher, repo.fleet, DEVICE, "pin-mismatch")
            assert_trustkit(report, "localhost", server.port, OTHER.pins(), "pin-mismatch")
            assert report["enforce-pinning"] is True
            wait_for(lambda: any(json.loads(m.payload or b"{}").get("bad") == [2]
                                 for m in watcher.messages
                                 if m.topic == topics.status(repo.fleet, DEVICE)),
                     "status with v2 bad", WAIT)
            time.sleep(3)  # three more session ticks: nothing else comes
            assert len(reports_of(watcher, repo.fleet, DEVICE, "pin-mismatch")) == 1
            assert "Traceback" not in agent.text()
        finally:
            watcher.publish(topics.bundle(repo.fleet), b"", retain=True)
            watcher.close()


def test_a_report_only_broker_mismatch_goes_out_over_that_broker_once(private_mosquitto,
                                                                     tmp_path, agents):
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "chain.pem").write_bytes(_pem(PKI.leaf, PKI.inter))
    (pki / "key.pem").write_bytes(_pem(PKI.leaf_key))
    port, tls_port = brokers.free_port(), brokers.free_port()
    broker = private_mosquitto(
        "per_listener_settings false\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        f"listener {port} 127.0.0.1\nlistener {tls_port} 127.0.0.1\n"
        f"certfile {pki / 'chain.pem'}\nkeyfile {pki / 'key.pem'}\n")
    repo = fk.Repo(fleet=brokers.unique_fleet("rop"), now=T0)
    sets = pinsets(OTHER.pins())
    for s in sets:
        s["mode"] = "report"  # accept, and report
    factory = repo.bundle(1, anchors=[anchor(PKI.root)], pinsets=sets)
    config = setup_agent(tmp_path, repo, f"mqtts://localhost:{tls_port}", [], factory)
    watcher = brokers.connect(broker)
    try:
        watcher.subscribe(topics.report(repo.fleet, DEVICE))
        agent = agents(config)
        wait_for(lambda: reports_of(watcher, repo.fleet, DEVICE, "report-only-mismatch"),
                 "a report-only-mismatch report", WAIT)
        [report] = reports_of(watcher, repo.fleet, DEVICE, "report-only-mismatch")
        assert_trustkit(report, "localhost", tls_port, OTHER.pins(), "report-only-mismatch")
        assert report["enforce-pinning"] is False
        assert agent.count("report: report-only-mismatch localhost") == 1
    finally:
        watcher.close()
    # The broker restarts: a second handshake, the same finding, rate-limited (24 h per kind).
    broker.restart()
    wait_for(lambda: agent.count("connected to mqtts://") >= 2, "a reconnection", WAIT)
    time.sleep(3)
    assert agent.count("report: report-only-mismatch localhost") == 1, agent.text()
    assert "Traceback" not in agent.text()


def test_every_context_of_a_device_shares_one_queue(tmp_path):
    """A health check and an application's context_for put their reports in the queue given,
    and adds from many threads (paho's, the worker's) are safe."""
    from trustfleet_pi.local import LocalDevice
    repo = fk.Repo(now=T0)
    LocalDevice.initialise(tmp_path / "state", repo.root_raw)
    device = LocalDevice(tmp_path / "state")
    assert device.install(make_bundle(repo, 1, pins=OTHER.pins())).committed == 1
    queue = tls.SharedReports()
    with tls_server(PKI) as server:
        ok, _ = tls.health_check_for([f"localhost:{server.port}"], 5, reports=queue)(
            device.active_bundle(), T0)
        assert ok is False
        ctx = tls.context_for(device, reports=queue)
        assert ctx.reports is queue
        decision = tls.probe(ctx, "127.0.0.1", server.port, 5, HOST)
        assert decision.result == "pin-mismatch"
    got = queue.drain()
    assert [(r["hostname"], r["port"]) for r in got] == [("localhost", server.port),
                                                         (HOST, server.port)]
    many = tls.SharedReports(max_items=1000, interval=0)

    def add(i: int) -> None:
        for j in range(200):
            many.add({"hostname": f"h{i}", "n": j, "validation-result": "pin-mismatch"}, T0)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(many.drain()) == 800 and len(many) == 0


# --------------------------------------------------------------------------- the board

BOARD_APP = """
import json, sys, time
from trustfleet_device.transports import board

with open(sys.argv[-1]) as f:
    spec = json.loads(f.read())
state = spec["state"]
board.STATE_DIR = state
board.CONFIG_FILE = state + "/config.json"
board.INBOX_DIR = state + "/inbox"
board.FACTORY_ROOT = state + "/factory-root.cose"
cfg = board.load_config(board.CONFIG_FILE)
device = board.build_device(cfg)
sess, transport = board.make_link(device, cfg)
end = time.ticks_add(time.ticks_ms(), spec["wait_ms"])
quiet_until = None
while time.ticks_diff(end, time.ticks_ms()) > 0:
    if not transport.poll():
        time.sleep_ms(50)
    if device.bad_versions() and quiet_until is None:
        quiet_until = time.ticks_add(time.ticks_ms(), 3000)  # a few more polls and ticks
    if quiet_until is not None and time.ticks_diff(quiet_until, time.ticks_ms()) <= 0:
        break
transport.close()
print(spec["mark"] + json.dumps({"bad": device.bad_versions(), "log": board.LOG}))
"""


def test_the_board_publishes_its_health_check_pin_failure_as_trustkit_json(private_mosquitto,
                                                                           tmp_path):
    port = mpunix.require()
    broker = private_mosquitto()
    repo = fk.Repo(fleet=brokers.unique_fleet("brd"), now=T0)
    with tls_server(PKI) as server:
        state = tmp_path / "state"
        state.mkdir()
        (state / "factory-root.cose").write_bytes(repo.root_raw)
        (state / "config.json").write_text(json.dumps({
            "fleet": repo.fleet, "device_id": "esp-r1",
            "endpoints": [f"localhost:{server.port}", f"localhost:{server.port}"],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "tls": False}}))
        watcher = brokers.connect(broker)
        try:
            watcher.subscribe(topics.report(repo.fleet, "esp-r1"))
            # v1 pins another CA's keys: its health check fails on the pins.
            watcher.publish(topics.bundle(repo.fleet), make_bundle(repo, 1, pins=OTHER.pins()),
                            retain=True)
            spec = {"state": str(state), "wait_ms": 60_000, "mark": mpunix.RESULT_MARK}
            (tmp_path / "spec.json").write_text(json.dumps(spec))
            shims = mpunix.write_shims(tmp_path / "shims")
            out = port.run_json(BOARD_APP, path=[shims, mpunix.DEVICE_DIR],
                                args=[str(tmp_path / "spec.json")], cwd=tmp_path, timeout=120)
            assert out["bad"] == [1], out["log"]
            wait_for(lambda: reports_of(watcher, repo.fleet, "esp-r1", "pin-mismatch"),
                     "the board's pin-mismatch report", 10)
            reports = reports_of(watcher, repo.fleet, "esp-r1", "pin-mismatch")
            assert len(reports) == 1, reports  # two endpoints, one report
            assert_trustkit(reports[0], "localhost", server.port, OTHER.pins(), "pin-mismatch")
        finally:
            watcher.publish(topics.bundle(repo.fleet), b"", retain=True)
            watcher.close()

