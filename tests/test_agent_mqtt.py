"""`trustfleet-agent run` (the Pi agent over paho-mqtt) against the real Mosquitto.

The agent runs as a subprocess with a config file, exactly as systemd
starts it. Documents are real signed bundles (fleetkit.Repo) whose anchors
and pins match the loopback test PKI of test_agent_tls, on the real clock.
A paho "watcher" publishes the retained documents and collects the
device's retained status. Broker restarts and TLS use a PRIVATE Mosquitto
started here on free ports (never the system one); the plain delivery test
uses the system Mosquitto on 1883 when it listens, else a private one.
Every wait is bounded; every process started here is stopped at the end.

The reconnect rule (capped, jittered exponential backoff, reset only by a
successful CONNACK) is also checked without a broker: a fake paho client
and a fake clock.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from support import fleetkit as fk
from support.environment import skip_or_fail
from support.fleetkit import many_anchors
from support.pki import key, make_cert
from support.tlsagent import ENV, OTHER, PKI, T0, make_bundle
from trustfleet_device import topics
from trustfleet_device.transports.mqtt import Backoff
from trustfleet_pi.config import MqttConfig
from trustfleet_pi.paho import PahoTransport
from trustfleet_server.broker.mosquitto import (
    PrivateMosquitto,
    free_port,
    mosquitto_binary,
    port_open,
)

DEVICE = "pi-7"
GROUP = "canary"
STATUS_FIELDS = {"device", "fleet", "group", "bucket", "state", "version", "floor", "bad",
                 "last_revert", "reasons", "root_version", "trusted_time", "last_timestamp",
                 "fail_open", "event", "detail", "agent_version", "time", "seq"}
WAIT = 20.0  # seconds: the bound on every wait for the broker or the agent


# --------------------------------------------------------------------------- brokers


def _require_mosquitto() -> None:
    if mosquitto_binary() is None:
        skip_or_fail("mosquitto is not installed (apt-get install mosquitto)")


class Mosquitto(PrivateMosquitto):
    """A private Mosquitto on free loopback ports (.port; with `tls`, a second listener on .tls_port
    configured by those lines), stopped and restarted by its PID only."""

    def __init__(self, directory: Path, extra: str = "", tls: str | None = None,
                 anonymous: bool = True):
        _require_mosquitto()
        port = free_port()
        self.tls_port = free_port() if tls else None
        text = (f"per_listener_settings false\nallow_anonymous {str(anonymous).lower()}\n"
                f"persistence false\nlog_dest stderr\n"
                f"listener {port} 127.0.0.1\n{extra}")
        if tls:
            text += f"listener {self.tls_port} 127.0.0.1\n{tls}"
        super().__init__(text, directory, start_timeout=WAIT)


@pytest.fixture
def private_broker(tmp_path):
    brokers: list[Mosquitto] = []

    def make(**kw) -> Mosquitto:
        b = Mosquitto(tmp_path / f"broker{len(brokers)}", **kw)
        brokers.append(b)
        return b.start()

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture(scope="module")
def shared_port(tmp_path_factory):
    """The system Mosquitto (1883) when it listens, else (or with TRUSTFLEET_PRIVATE_BROKER set)
    a private one for this module."""
    if port_open("127.0.0.1", 1883, timeout=1) and not os.environ.get("TRUSTFLEET_PRIVATE_BROKER"):
        yield 1883
        return
    b = Mosquitto(tmp_path_factory.mktemp("shared-broker")).start()
    try:
        yield b.port
    finally:
        b.stop()


class Watcher:
    """A paho client that publishes retained documents and collects every status it sees."""

    def __init__(self, port: int, fleet: str, username: str | None = None,
                 password: str | None = None):
        self.fleet = fleet
        self.port = port
        self.seen: queue.Queue[tuple[float, dict]] = queue.Queue()
        self.statuses: list[dict] = []
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2,
                             client_id=f"watch-{fleet}-{os.getpid()}")
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.statuses(fleet), qos=1)
        self.c.on_message = lambda c, u, m: self.seen.put(
            (time.monotonic(), json.loads(m.payload) if m.payload else {}))
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def put(self, topic: str, payload: bytes) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def wait_for(self, pred: Callable[[dict], bool], what: str, timeout: float = WAIT
                 ) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no status {what} within {timeout} s; saw {self.statuses}")
            try:
                at, status = self.seen.get(timeout=left)
            except queue.Empty:
                continue
            self.statuses.append(status)
            if pred(status):
                return at, status

    def clear(self, *names: str) -> None:
        for t in names:
            self.put(t, b"")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


# --------------------------------------------------------------------------- the agent process


class Agent:
    """`trustfleet-agent run --config` as a subprocess; stderr lines are collected with arrival times."""

    def __init__(self, config: Path):
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trustfleet_pi.cli", "run", "--config", str(config)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_line(self, fragment: str, count: int = 1, timeout: float = WAIT) -> float:
        """Arrival time of the count-th stderr line containing fragment."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [t for t, line in self.lines if fragment in line]
            if len(hits) >= count:
                return hits[count - 1]
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                break
            time.sleep(0.02)
        raise AssertionError(f"no line {fragment!r} (x{count}) within {timeout} s:\n{self.text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def agents():
    running: list[Agent] = []

    def start(config: Path) -> Agent:
        a = Agent(config)
        running.append(a)
        return a

    yield start
    for a in running:
        a.stop(signal.SIGKILL)


def cli(*args: object, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trustfleet_pi.cli", *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


def fleet_name(tag: str) -> str:
    return f"t{tag}-{os.getpid()}-{int(time.time() * 1000) % 10**8}"


def setup_device(tmp_path: Path, repo: fk.Repo, mqtt: str, factory: bytes | None = None) -> Path:
    """agent.toml + a state directory initialised with the fleet's root (and a factory bundle)."""
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "state"\ndevice_id = "{DEVICE}"\nfleet = "{repo.fleet}"\n'
                      f"[mqtt]\n{mqtt}")
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    extra: list[object] = []
    if factory is not None:
        (tmp_path / "factory.cose").write_bytes(factory)
        extra = ["--bundle", tmp_path / "factory.cose"]
    cli("init", "--config", config, "--root", tmp_path / "root.cose", *extra)
    return config


# --------------------------------------------------------------------------- delivery


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_run_installs_a_retained_bundle_and_publishes_its_status(shared_port, tmp_path, agents,
                                                                 record_property, capsys, protocol):
    repo = fk.Repo(fleet=fleet_name("deliv"), now=T0)
    raw = make_bundle(repo, 1, anchors=[fk.compact_anchor(PKI.root)] + many_anchors(470))
    assert len(raw) > 58_000
    watcher = Watcher(shared_port, repo.fleet)
    status_topic = topics.status(repo.fleet, DEVICE)
    agent = None
    try:
        watcher.put(topics.group_bundle(repo.fleet, GROUP), raw)
        config = setup_device(tmp_path, repo, f'broker = "mqtt://127.0.0.1:{shared_port}"\n'
                                              f'group = "{GROUP}"\nkeepalive = 10\n'
                                              f'protocol = "{protocol}"\n')
        agent = agents(config)
        assert agent.wait_line(f"(MQTT {protocol})")
        connected = agent.wait_line("connected to mqtt://127.0.0.1")
        at, status = watcher.wait_for(lambda s: s.get("version") == 1, "with bundle v1")
        assert set(status) >= STATUS_FIELDS, STATUS_FIELDS - set(status)
        assert (status["device"], status["fleet"], status["group"]) == (DEVICE, repo.fleet, GROUP)
        assert status["bucket"] == topics.bucket(DEVICE) and status["state"] == "ok"
        assert (status["root_version"], status["floor"], status["bad"]) == (1, 1, [])
        assert status["event"] == "installed" and status["fail_open"] == []
        assert status["agent_version"] and status["seq"] >= 2 and status["time"] > T0
        assert "received tf/" in agent.text() and "status: ok, bundle v1" in agent.text()
        assert agent.stop() == 0
        assert "stopped (SIGTERM)" in agent.text() and "Traceback" not in agent.text()
        _, offline = watcher.wait_for(lambda s: s.get("state") == "offline", "offline")
        assert offline == {"device": DEVICE, "fleet": repo.fleet, "state": "offline"}
        record_property("install_after_connect_s", round(at - connected, 3))
        with capsys.disabled():
            print(f"\ntrustfleet-agent run (MQTT {protocol}): retained {len(raw)} B bundle installed "
                  "and status received "
                  f"{(at - connected) * 1000:.0f} ms after the connect line")
    finally:
        if agent is not None:
            agent.stop(signal.SIGKILL)  # before clearing: its will must not land after the clear
        watcher.clear(topics.group_bundle(repo.fleet, GROUP), status_topic)
        watcher.close()


def test_run_reconnects_after_a_broker_restart_and_its_will_says_offline(private_broker, tmp_path,
                                                                          agents):
    passwd = tmp_path / "passwd"
    for user in ("device", "watcher"):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == "device" else []),
                        str(passwd), user, f"{user}-secret"], check=True, capture_output=True)
    broker = private_broker(extra=f"password_file {passwd}\n", anonymous=False)
    repo = fk.Repo(fleet=fleet_name("recon"), now=T0)
    (tmp_path / "mqtt-password").write_text("device-secret\n")
    config = setup_device(tmp_path, repo, f'broker = "mqtt://127.0.0.1:{broker.port}"\n'
                                          'username = "device"\npassword_file = "mqtt-password"\n'
                                          "keepalive = 5\n")
    watcher = Watcher(broker.port, repo.fleet, "watcher", "watcher-secret")
    watcher.put(topics.bundle(repo.fleet), make_bundle(repo, 1))
    agent = agents(config)
    _, first = watcher.wait_for(lambda s: s.get("version") == 1, "with v1")
    watcher.close()
    broker.stop()                                       # the connection drops
    agent.wait_line("disconnected")
    agent.wait_line("next connection attempt in")
    broker.start()                                      # empty: no retained messages survive
    agent.wait_line("connected to mqtt://", count=2, timeout=60)
    watcher = Watcher(broker.port, repo.fleet, "watcher", "watcher-secret")
    try:
        _, again = watcher.wait_for(lambda s: s.get("seq", 0) > first["seq"], "republished")
        assert (again["version"], again["state"]) == (1, "ok")
        watcher.put(topics.bundle(repo.fleet), make_bundle(repo, 2))   # resubscribed?
        watcher.wait_for(lambda s: s.get("version") == 2, "with v2 after the reconnect")
        agent.stop(signal.SIGKILL)                      # no DISCONNECT: the broker sends the will
        _, will = watcher.wait_for(lambda s: s.get("state") == "offline", "offline (the will)")
        assert will == {"device": DEVICE, "fleet": repo.fleet, "state": "offline"}
    finally:
        watcher.close()
    assert "Traceback" not in agent.text()


# --------------------------------------------------------------------------- TLS to the broker


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def tls_broker(private_broker, tmp_path):
    """A private Mosquitto: plain listener (the watcher) + TLS listener serving PKI's localhost chain,
    which requires a client certificate from its own client CA."""
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "server-chain.pem").write_bytes(_pem(PKI.leaf) + _pem(PKI.inter))
    (pki / "server-key.pem").write_bytes(_pem(PKI.leaf_key))
    client_ca_key, client_key = key("ec", 130), key("ec", 131)
    client_ca = make_cert("Device Client CA", client_ca_key, ca=True, not_before=T0 - 86_400,
                          not_after=T0 + 3650 * 86_400)
    client = make_cert(DEVICE, client_key, client_ca, client_ca_key, not_before=T0 - 86_400,
                       not_after=T0 + 365 * 86_400)
    (pki / "client-ca.pem").write_bytes(_pem(client_ca))
    (tmp_path / "client.pem").write_bytes(_pem(client))
    (tmp_path / "client-key.pem").write_bytes(_pem(client_key))
    return private_broker(tls=f"certfile {pki / 'server-chain.pem'}\n"
                              f"keyfile {pki / 'server-key.pem'}\n"
                              f"cafile {pki / 'client-ca.pem'}\nrequire_certificate true\n")


TLS_MQTT = 'client_cert = "client.pem"\nclient_key = "client-key.pem"\nkeepalive = 10\n'


def test_mqtts_connects_when_the_broker_matches_the_installed_pins(tls_broker, tmp_path, agents):
    repo = fk.Repo(fleet=fleet_name("tls"), now=T0)
    config = setup_device(tmp_path, repo,
                          f'broker = "mqtts://localhost:{tls_broker.tls_port}"\n{TLS_MQTT}',
                          factory=make_bundle(repo, 1))
    watcher = Watcher(tls_broker.port, repo.fleet)
    try:
        agent = agents(config)
        agent.wait_line(f"connected to mqtts://localhost:{tls_broker.tls_port}")
        _, status = watcher.wait_for(lambda s: s.get("version") == 1, "over TLS")
        assert status["state"] == "ok"
        watcher.put(topics.bundle(repo.fleet), make_bundle(repo, 2))
        watcher.wait_for(lambda s: s.get("version") == 2, "v2 over TLS")
        assert agent.stop() == 0
    finally:
        watcher.close()


def test_mqtts_refuses_a_broker_whose_chain_misses_the_pins(tls_broker, tmp_path, agents):
    repo = fk.Repo(fleet=fleet_name("pin"), now=T0)
    config = setup_device(tmp_path, repo,
                          f'broker = "mqtts://localhost:{tls_broker.tls_port}"\n{TLS_MQTT}',
                          factory=make_bundle(repo, 1, pins=OTHER.pins()))
    watcher = Watcher(tls_broker.port, repo.fleet)
    try:
        agent = agents(config)
        agent.wait_line("TLS to the broker refused")
        assert "no key matches the pins for localhost" in agent.text()
        agent.wait_line("TLS to the broker refused", count=2)   # it keeps backing off, and trying
        assert "connected to" not in agent.text()
        assert watcher.statuses == [] and watcher.seen.empty()
        assert agent.stop() == 0
    finally:
        watcher.close()


def test_run_without_mqtt_or_store_is_a_usage_error(tmp_path):
    repo = fk.Repo(fleet=fleet_name("usage"), now=T0)
    config = setup_device(tmp_path, repo, 'broker = "mqtts://mqtt.example.org"\n')
    assert "none is installed" in cli("run", "--config", config, code=2).stderr
    bare = tmp_path / "bare.toml"
    bare.write_text(f'state_dir = "state"\ndevice_id = "{DEVICE}"\nfleet = "{repo.fleet}"\n')
    assert "no [mqtt] table" in cli("run", "--config", bare, code=2).stderr
    other = tmp_path / "x.toml"
    other.write_text(f'state_dir = "nowhere"\ndevice_id = "{DEVICE}"\nfleet = "{repo.fleet}"\n'
                     '[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n')
    assert "is not initialised" in cli("run", "--config", other, code=2).stderr
    pw = tmp_path / "pw.toml"
    pw.write_text(f'state_dir = "state"\ndevice_id = "{DEVICE}"\nfleet = "{repo.fleet}"\n'
                  '[mqtt]\nbroker = "mqtt://127.0.0.1:1"\nusername = "u"\n'
                  'password_file = "missing"\n')
    assert "cannot read" in cli("run", "--config", pw, code=2).stderr


# --------------------------------------------------------------------------- backoff, no broker


def test_backoff_doubles_to_its_cap_with_jitter_and_only_reset_restarts_it():
    low = Backoff(1000, 8000, lambda: 0.0)
    assert [low.next_ms() for _ in range(6)] == [500, 1000, 2000, 4000, 4000, 4000]
    high = Backoff(1000, 8000, lambda: 0.9999)
    assert [high.next_ms() for _ in range(5)] == [999, 1999, 3999, 7999, 7999]
    high.reset()
    assert high.next_ms() == 999
    spread = {Backoff(1000, 8000).next_ms() for _ in range(200)}
    assert min(spread) >= 500 and max(spread) <= 1000 and len(spread) > 50


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeStop:
    """run()'s stop flag; its wait() moves the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.reason: str | None = None

    def set(self, reason: str = "test") -> None:
        self.reason = reason

    def is_set(self) -> bool:
        return self.reason is not None

    def wait(self, seconds: float) -> bool:
        self.clock.t += seconds
        return self.is_set()


class FakePaho:
    """Just enough of a paho Client; `mode` scripts how its one connection goes."""

    def __init__(self, mode: str, clock: FakeClock, log: list):
        self.mode, self.clock, self.log = mode, clock, log
        self.connected = False
        self.published: list[tuple] = []
        self.subscribed: list = []
        self.mid = 0
        self.connect_timeout = None

    def will_set(self, *a, **kw):
        self.will = (a, kw)

    def connect(self, host, port, keepalive, **kw):
        self.log.append((self.clock.t, self.mode))
        if self.mode == "refused-tcp":
            raise ConnectionRefusedError(111, "Connection refused")

    def loop_start(self):
        if self.mode == "silent":          # TCP up, no CONNACK: time passes
            self.clock.t += 30
        elif self.mode == "not-authorised":
            self.on_connect(self, None, None, ReasonCode(PacketTypes.CONNACK, "Not authorized"), None)
        elif self.mode in ("ok-then-drop", "ok-then-stop"):
            self.connected = True
            self.on_connect(self, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)
            if self.mode == "ok-then-drop":
                self.connected = False
                self.on_disconnect(self, None, None,
                                   ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)

    def subscribe(self, subs):
        self.subscribed.append(subs)

    def publish(self, topic, payload, qos=0, retain=False):
        if self.mode == "ok-then-stop":
            self.stop.set()                # SIGTERM while connected
        self.mid += 1
        self.published.append((topic, payload, qos, retain))
        info = paho.MQTTMessageInfo(self.mid)
        info.rc = paho.MQTT_ERR_SUCCESS
        info._published = True
        return info

    def is_connected(self):
        return self.connected

    def disconnect(self):
        self.connected = False

    def loop_stop(self):
        pass


class StubSession:
    fleet, device_id = "f", "d"

    def __init__(self) -> None:
        self.connected_calls = 0

    def will(self):
        return "tf/f/status/d", b'{"state": "offline"}', True, 1

    def subscriptions(self):
        return ["tf/f/bundle", "tf/f/timestamp"]

    def connected(self):
        self.connected_calls += 1
        return [("tf/f/status/d", json.dumps({"state": "ok", "seq": self.connected_calls}).encode(),
                 True, 1)]

    def tick(self):
        return []

    def on_message(self, topic, payload):
        return []


def test_backoff_resets_only_after_a_successful_connack():
    clock, attempts, lines = FakeClock(), [], []
    modes = ["refused-tcp", "not-authorised", "silent", "refused-tcp", "ok-then-drop",
             "refused-tcp", "ok-then-stop"]
    made: list[FakePaho] = []
    stop = FakeStop(clock)
    session = StubSession()

    def factory(client_id, protocol):
        assert protocol == paho.MQTTv311 and client_id == "tf-f-d"
        c = FakePaho(modes[len(made)], clock, attempts)
        c.stop = stop
        made.append(c)
        return c

    settings = MqttConfig(broker="mqtt://broker:1883", host="broker", port=1883, tls=False)
    t = PahoTransport(session, settings, client_factory=factory, clock=clock, rand=lambda: 0.0,
                       log=lines.append, first_s=1.0, cap_s=60.0, tick_s=0.01,
                       connack_timeout_s=15.0)
    t.run(stop)
    delays = [float(x.split(" in ")[1].split()[0]) for x in lines if "next connection attempt" in x]
    # refused TCP, refused CONNACK, no CONNACK, refused TCP: 0.5 1 2 4 (c/2 with rand 0), growing;
    # then a CONNACK 0 resets it: the drop that follows waits 0.5 s again.
    assert delays == [0.5, 1.0, 2.0, 4.0, 0.5, 1.0]
    assert [m for _, m in attempts] == modes
    assert any("the broker refused the connection: Not authorized" in x for x in lines)
    assert any("no CONNACK within 15 s" in x for x in lines)
    assert t.connects == 2 and session.connected_calls == 2
    assert made[4].subscribed == [[("tf/f/bundle", 1), ("tf/f/timestamp", 1)]]
    # The stop path published the offline status itself (a clean DISCONNECT drops the will).
    assert made[-1].published[-1] == ("tf/f/status/d", b'{"state": "offline"}', 1, True)


def test_the_log_line_of_a_status_without_a_bundle_says_so():
    # It printed "bundle vNone" before any bundle was installed.
    lines: list[str] = []
    settings = MqttConfig(broker="mqtt://broker:1883", host="broker", port=1883, tls=False)
    t = PahoTransport(StubSession(), settings, client_factory=lambda *a: None, log=lines.append)
    t._describe((t.status_topic, json.dumps({"state": "no-store", "version": None}).encode(), True, 1))
    t._describe((t.status_topic, json.dumps({"state": "ok", "version": 3}).encode(), True, 1))
    assert lines == ["status: no-store, no bundle yet", "status: ok, bundle v3"]
