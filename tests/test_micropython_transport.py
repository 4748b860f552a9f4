"""The board's MQTT transport (trustfleet_device.transports.mqtt) inside the real MicroPython VM, and on CPython
against the real Mosquitto.

In the VM the broker is a script: a FakeSock (a Python class in the VM)
hands out byte-exact broker packets built here on CPython, each connection
its own script, and records every byte the client writes; the test parses
those bytes here with its own MQTT parser. Steps of a script: "data" (bytes
the broker sends), "wait" (hold the rest until the client has written these
bytes), "gate" (hold until the test opens it), "eof" (the broker hangs up),
"reset" (the connection breaks). A script "refuse" fails the TCP connect.
The clock is scripted too (milliseconds the test moves), so keep-alive and
backoff are checked to the millisecond without sleeping.

Documents are real (fleetkit.Repo), installed by the same runner, agent
and DirStorage code a board runs, in the VM's filesystem.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from support import fleetkit as fk
from support.environment import skip_or_fail
from support.fleetkit import many_anchors
from support.scenarios import scenario
from trustfleet_device import topics
from trustfleet_device.agent import Config
from trustfleet_device.session import Session
from trustfleet_device.transports import runner
from trustfleet_device.transports.mqtt import Backoff, MQTTClient, Transport
from trustfleet_device.transports.storage import DirStorage
from trustfleet_server.broker.mosquitto import PrivateMosquitto, mosquitto_binary, port_open

DEVICE = "esp-1"
NOW = fk.NOW + fk.DAY
KEEPALIVE = 10  # seconds
BUNDLE_PID = 7
TS_PID = 8

# --------------------------------------------------------------------------- MQTT on CPython
# An independent encoder/parser (not trustfleet_device.transports.mqtt's), so the two cannot share a bug.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connack(rc: int = 0) -> bytes:
    return bytes([0x20, 0x02, 0x00, rc])


def suback(pid: int, granted: int = 1) -> bytes:
    return packet(0x90, pid.to_bytes(2, "big") + bytes([granted]))


def publish(topic: str, payload: bytes, qos: int = 0, pid: int = 0, retain: bool = False) -> bytes:
    return packet(0x30 | qos << 1 | int(retain),
                  _s(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload)


def subscribe(pid: int, topic: str, qos: int = 1) -> bytes:
    return packet(0x82, pid.to_bytes(2, "big") + _s(topic) + bytes([qos]))


def puback(pid: int) -> bytes:
    return b"\x40\x02" + pid.to_bytes(2, "big")


PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


@dataclass
class Packet:
    first: int
    body: bytes

    @property
    def kind(self) -> int:
        return self.first & 0xF0

    def publish(self) -> tuple[str, bytes, int, bool]:
        """(topic, payload, qos, retain) of a PUBLISH."""
        n = int.from_bytes(self.body[:2], "big")
        qos = (self.first >> 1) & 3
        start = 2 + n + (2 if qos else 0)
        return self.body[2:2 + n].decode(), self.body[start:], qos, bool(self.first & 1)


def parse(stream: bytes) -> list[Packet]:
    out, i = [], 0
    while i < len(stream):
        first, n, shift = stream[i], 0, 0
        i += 1
        while True:
            b = stream[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(Packet(first, stream[i:i + n]))
        i += n
    assert i == len(stream), "the client wrote a truncated packet"
    return out


def parse_connect(p: Packet) -> dict:
    body = p.body
    assert p.first == 0x10 and body[:7] == b"\x00\x04MQTT\x04"
    flags, keepalive = body[7], int.from_bytes(body[8:10], "big")
    fields, i = [], 10
    while i < len(body):
        n = int.from_bytes(body[i:i + 2], "big")
        fields.append(body[i + 2:i + 2 + n])
        i += 2 + n
    out = {"clean": bool(flags & 2), "keepalive": keepalive, "client_id": fields[0].decode()}
    if flags & 4:
        out["will"] = (fields[1].decode(), fields[2], (flags >> 3) & 3, bool(flags & 0x20))
    return out


def statuses(packets: list[Packet]) -> list[dict]:
    return [json.loads(p.publish()[1]) for p in packets
            if p.kind == 0x30 and p.publish()[0].startswith(f"tf/{FLEET}/status/")]


# --------------------------------------------------------------------------- the VM side

VM_CODE = scenario("transport_vm.py")


FLEET = fk.Repo.fleet


@dataclass
class Docs:
    repo: fk.Repo
    bundle: bytes      # v2, about 60 KB
    bundle3: bytes
    timestamp: bytes


@pytest.fixture(scope="module")
def docs() -> Docs:
    repo = fk.Repo()
    big = repo.bundle(version=2, anchors=many_anchors(480))
    assert 58_000 < len(big) < 64_000
    return Docs(repo, big, repo.bundle(version=3), repo.timestamp(big, time=NOW - 60))


def subscriptions() -> list[str]:
    return topics.device_subscriptions(FLEET, DEVICE)


def handshake() -> list:
    """CONNACK, and once the client has subscribed to every topic, the SUBACKs."""
    subs = subscriptions()
    return [("data", connack()), ("wait", subscribe(len(subs), subs[-1])),
            ("data", b"".join(suback(i + 1) for i in range(len(subs))))]


class Scripted:
    """Writes documents, the spec and broker scripts into the VM, and drives one scenario there."""

    def __init__(self, vm, docs: Docs, name: str):
        self.vm, self.name, self.n = vm, name, 0
        vm.write("/mq/root.cose", docs.repo.root_raw)
        vm.write("/mq/spec.json", json.dumps({"fleet": FLEET, "device": DEVICE, "now": NOW}).encode())
        vm.run(VM_CODE)

    def _file(self, data: bytes) -> str:
        self.n += 1
        path = f"/mq/{self.name}-{self.n}.bin"
        self.vm.write(path, data)
        return path

    def start(self, scripts: list, keepalive: int = KEEPALIVE, record: bool = False) -> None:
        out = []
        for script in scripts:
            if script == "refuse":
                out.append(script)
                continue
            out.append([[kind, self._file(arg) if arg is not None else ""] for kind, arg in script])
        path = f"/mq/{self.name}-scripts.json"
        self.vm.write(path, json.dumps(out).encode())
        self.vm.run(f"LOG.clear(); CHUNKS.clear()\n"
                    f"T, B, C, D = make({self.name!r}, {path!r}, {keepalive}, {record})")

    def run(self, polls: int, step: int = 100) -> int:
        """Poll in the VM; returns the real milliseconds the polls took there."""
        return self.vm.run_json(f"print(run(T, C, {polls}, {step}))")

    def state(self) -> dict:
        got = self.vm.run_json("print(json.dumps(summary(T, B, D)))")
        got["packets"] = [parse(bytes.fromhex(h)) for h in got["sent"]]
        return got


@pytest.fixture
def vm(mpy, docs, request):
    return Scripted(mpy, docs, request.node.name.split("[")[0][-40:])


def check_handshake(packets: list[Packet]) -> list[Packet]:
    """CONNECT (clean, will = offline status), then SUBSCRIBE QoS 1 to every topic; returns the rest."""
    c = parse_connect(packets[0])
    assert c["clean"] and c["client_id"] == DEVICE and c["keepalive"] == KEEPALIVE
    will_topic, will_body, will_qos, will_retain = c["will"]
    assert will_topic == topics.status(FLEET, DEVICE)
    assert json.loads(will_body) == {"device": DEVICE, "fleet": FLEET, "state": "offline"}
    assert (will_qos, will_retain) == (1, True)
    subs = subscriptions()
    got = packets[1:1 + len(subs)]
    assert [p.first for p in got] == [0x82] * len(subs)
    assert b"".join(p.first.to_bytes(1, "big") + _varint(len(p.body)) + p.body for p in got) == \
        b"".join(subscribe(i + 1, t) for i, t in enumerate(subs))
    return packets[1 + len(subs):]


# --------------------------------------------------------------------------- VM scenarios


def test_retained_60k_bundle_streams_in_1k_chunks_and_installs(vm, docs, record_property, capsys):
    """Connect, subscribe to every topic, a retained 60 KB bundle in one PUBLISH, then a timestamp."""
    bundle_topic = topics.bucket_bundle(FLEET, topics.bucket(DEVICE))
    vm.start([handshake() + [
        ("data", publish(bundle_topic, docs.bundle, qos=1, pid=BUNDLE_PID, retain=True)),
        ("data", publish(topics.timestamp(FLEET), docs.timestamp, qos=1, pid=TS_PID, retain=True)),
    ]], record=True)
    elapsed_ms = vm.run(5)
    record_property("vm_connect_to_installed_ms", elapsed_ms)
    with capsys.disabled():
        print(f"\nMicroPython VM: connect, subscribe, {len(docs.bundle)} B bundle streamed, verified "
              f"and installed, timestamp verified: {elapsed_ms} ms (wasm, not a board)")
    got = vm.state()
    assert (got["version"], got["state"], got["connects"], got["drops"]) == (2, "ok", 1, 0)
    assert got["last_timestamp"] == NOW - 60
    chunks = got["chunks"]
    assert sum(chunks) == len(docs.bundle) and max(chunks) == 1024 and len(chunks) == 60
    [packets] = got["packets"]
    rest = check_handshake(packets)
    status_topic = topics.status(FLEET, DEVICE)
    # The status on connect (no store yet), then PUBACK, the status after the install, PUBACK.
    assert [p.kind for p in rest] == [0x30, 0x40, 0x30, 0x40]
    first, after = (p.publish() for p in (rest[0], rest[2]))
    assert first[0] == after[0] == status_topic and first[2:] == after[2:] == (1, True)
    assert json.loads(first[1])["state"] == "no-store"
    status = json.loads(after[1])
    assert (status["version"], status["state"], status["event"]) == (2, "ok", "installed")
    assert rest[1].body == puback(BUNDLE_PID)[2:] and rest[3].body == puback(TS_PID)[2:]
    assert "slot-a.cose" in got["files"] and not [f for f in got["files"] if f.endswith(".tmp")]


def test_streamed_bundle_leaves_little_live_heap_unlike_on_message(vm, docs, record_property,
                                                                     capsys):
    bundle_topic = topics.bundle(FLEET)
    vm.start([handshake() + [("gate", None),
                             ("data", publish(bundle_topic, docs.bundle, qos=1, pid=BUNDLE_PID,
                                              retain=True))]])
    vm.run(2)
    assert vm.state()["connects"] == 1
    vm.vm.write("/mq/bundle.cose", docs.bundle)
    streamed = vm.vm.mem_alloc_between("B.socks[0].gates = 1\nCHUNKS.clear(); LOG.clear()",
                                       "T.poll()")
    got = vm.state()
    assert got["version"] == 2 and got["drops"] == 0
    # The same bundle read whole (as umqtt.simple would) and given to on_message.
    vm.vm.run(f"T2, B2, C2, D2 = make('whole', {_empty_scripts(vm)!r}, {KEEPALIVE})")
    whole = vm.vm.mem_alloc_between(
        "", f"_out = T2.session.on_message({bundle_topic!r}, _read('/mq/bundle.cose'))")
    assert vm.vm.run_json("print(json.dumps(D2.status()['version']))") == 2
    figures = {k: {f: m[f] for f in ("allocated", "retained")}
               for k, m in (("streamed", streamed), ("on_message", whole))}
    record_property("transport_memory", json.dumps(figures))
    with capsys.disabled():
        print(f"\n60 KB bundle in the VM: streamed through Transport {figures['streamed']}, "
              f"whole through on_message {figures['on_message']} (bytes)")
    # What stays live after a streamed install: no payload, only the parsed bundle's small parts.
    assert streamed["retained"] < 16 * 1024
    assert streamed["retained"] * 3 < whole["retained"]
    assert whole["retained"] > len(docs.bundle) // 2


def _empty_scripts(vm: Scripted) -> str:
    path = f"/mq/{vm.name}-empty.json"
    vm.vm.write(path, b"[]")
    return path


def test_keepalive_sends_pingreq_and_a_missing_pingresp_means_dead(vm):
    vm.start([handshake() + [("wait", PINGREQ), ("data", PINGRESP)], handshake()])
    vm.run(1)
    ka = KEEPALIVE * 1000
    vm.run(ka * 3 // 4 // 100 - 2)          # just before 3/4 of the keep-alive: nothing sent
    got = vm.state()
    assert [p.kind for p in got["packets"][0]][-1] == 0x30 and got["connects"] == 1
    vm.run(3)                               # 3/4 passed: PINGREQ, the broker answers
    got = vm.state()
    assert got["packets"][0][-1].first == 0xC0 and got["drops"] == 0
    vm.run(ka * 3 // 4 // 100)              # the second PINGREQ gets no answer ...
    assert vm.state()["packets"][0][-1].first == 0xC0
    vm.run(ka // 2 // 100 + 8)              # ... for half the keep-alive: dead; 0.5 s, reconnect
    got = vm.state()
    assert got["drops"] == 1 and got["connects"] == 2
    assert [p.first for p in got["packets"][0]].count(0xC0) == 2
    assert any("no PINGRESP within 5000 ms" in line for line in got["log"])
    check_handshake(got["packets"][1])


def test_dropped_connection_reconnects_with_backoff_resubscribes_and_republishes(vm, docs):
    bundle_topic = topics.bundle(FLEET)
    half = docs.bundle[:30_000]
    cut = publish(bundle_topic, docs.bundle, qos=1, pid=BUNDLE_PID, retain=True)[:len(half)]
    vm.start([
        handshake() + [("data", cut), ("eof", None)],                  # drops mid-bundle
        "refuse", "refuse",
        handshake() + [("gate", None), ("reset", None)],               # CONNACK 0, then broken
        "refuse",
        handshake() + [("data", publish(bundle_topic, docs.bundle, qos=1, pid=3, retain=True))],
    ])
    vm.run(1, step=0)
    got = vm.state()
    assert (got["connects"], got["drops"], got["version"]) == (1, 1, None)
    t_drop = got["clock"]
    # Backoff 1 s first, doubling to the 8 s cap, drawn from [c/2, c] (rand = 0 here: c/2).
    vm.run(120, step=50)
    got = vm.state()
    assert got["connects"] == 2
    assert [a - t_drop for a in got["attempts"][1:4]] == [500, 1500, 3500]
    vm.run(1)
    vm.vm.run("B.socks[-1].gates = 1")
    vm.run(1, step=0)
    got = vm.state()
    assert (got["connects"], got["drops"]) == (2, 2)
    t_drop = got["clock"]
    vm.run(200, step=50)
    got = vm.state()
    # The CONNACK 0 of the second connection reset the backoff: 0.5 s, then 1 s again.
    a = got["attempts"]
    assert (a[4] - t_drop, a[5] - a[4], len(a)) == (500, 1000, 6)
    assert (got["connects"], got["drops"], got["version"]) == (3, 2, 2)
    for packets in got["packets"]:
        check_handshake(packets)
    seqs = [s["seq"] for p in got["packets"] for s in statuses(p)]
    assert seqs == sorted(seqs) and len(seqs) >= 4
    assert statuses(got["packets"][-1])[-1]["version"] == 2
    # The cut-off stream's temporary slot file was overwritten by the complete one.
    assert not [f for f in got["files"] if f.endswith(".tmp")]
    assert any("connection lost" in line for line in got["log"])


def test_oversized_message_is_skipped_without_allocating_it(vm, docs):
    big = publish(topics.timestamp(FLEET), b"\xa5" * 40_000, qos=1, pid=21, retain=True)
    vm.start([handshake() + [("gate", None), ("data", big), ("gate", None),
                             ("data", publish(topics.timestamp(FLEET), docs.timestamp, qos=1,
                                              pid=22))]])
    vm.run(2)
    m = vm.vm.mem_alloc_between("B.socks[0].gates = 1", "T.poll()")
    got = vm.state()
    assert got["skipped"] == 1 and got["drops"] == 0
    assert got["packets"][0][-1].body == puback(21)[2:]
    assert m["allocated"] < 8 * 1024, m  # 40 KB went through one 1 KiB scratch buffer
    vm.vm.run("B.socks[0].gates = 1")
    vm.run(2)
    got = vm.state()
    assert got["last_timestamp"] == NOW - 60 and got["packets"][0][-1].body == puback(22)[2:]


MALFORMED = {
    "length over 4 bytes": b"\x30\xff\xff\xff\xff\x7f",
    "topic longer than the packet": packet(0x30, b"\x00\x50abc"),
    "QoS 3 publish": packet(0x36, _s("tf/x") + b"\x00\x01hi"),
    "QoS 2 publish": packet(0x34, _s("tf/x") + b"\x00\x01hi"),
    "CONNECT from the broker": packet(0x10, b"\x00\x04MQTT"),
    "SUBACK of the wrong size": packet(0x90, b"\x00\x01\x01\x01"),
    "PUBACK with bad flags": b"\x42\x02\x00\x01",
    "PINGRESP with a body": b"\xd0\x01\x00",
    "truncated publish then EOF": b"\x32\x40\x00\x04tf/x",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_packet_closes_and_reconnects_without_crashing(vm, docs, name):
    vm.start([handshake() + [("data", MALFORMED[name]), ("eof", None)],
              handshake() + [("data", publish(topics.timestamp(FLEET), docs.timestamp, qos=1,
                                              pid=5))]])
    vm.run(40)
    got = vm.state()
    assert (got["connects"], got["drops"]) == (2, 1), got["log"]
    assert got["last_timestamp"] == NOW - 60
    check_handshake(got["packets"][1])
    assert got["packets"][1][-2].body == puback(5)[2:] or got["packets"][1][-1].body == puback(5)[2:]


# --------------------------------------------------------------------------- the client alone

CLIENT_CODE = scenario("transport_client.py")


def test_mqtt_client_has_umqtt_simples_interface(vm):
    vm.vm.run(CLIENT_CODE)
    script = [
        ("data", connack()), ("wait", subscribe(1, "tf/x/#")),
        ("data", publish("tf/x/early", b"hi") + suback(1)),
        ("wait", publish("tf/x/out", b"hello", qos=1, pid=2)), ("data", puback(2)),
        ("wait", PINGREQ),
        ("data", PINGRESP + publish("tf/x/late", b"yo", qos=1, pid=9)
         + publish("tf/x/big", b"z" * 20_000, qos=1, pid=10)),
    ]
    refused = [("data", connack(5))]
    denied = [("data", connack()), ("wait", subscribe(1, "tf/secret")), ("data", suback(1, 0x80))]
    paths = []
    for steps in (script, refused, denied):
        paths.append([[kind, vm._file(arg) if arg is not None else ""] for kind, arg in steps])
    vm.vm.write("/mq/client-scripts.json", json.dumps(paths).encode())
    got = vm.vm.run_json("print(json.dumps(client_scenario('/mq/client-scripts.json')))")
    assert got["session_present"] == 0
    assert got["ops"] == [0xD0, 0x30, 0x30, None]
    assert got["msgs"] == [["tf/x/early", "hi"], ["tf/x/late", "yo"]]  # the 20 KB one: skipped
    assert got["errors"] == ["broker refused the connection: CONNACK 5 (not authorised)",
                             "broker refused the subscription to tf/secret"]
    packets = parse(bytes.fromhex(got["sent"][0]))
    c = parse_connect(packets[0])
    assert c["clean"] and c["keepalive"] == 30 and c["client_id"] == "cli-1"
    assert c["will"] == ("tf/x/will", b"gone", 1, True)
    assert [p.first for p in packets[1:]] == [0x82, 0x32, 0x30, 0xC0, 0x40, 0x40, 0xE0]
    assert packets[2].publish() == ("tf/x/out", b"hello", 1, False)
    assert packets[3].publish() == ("tf/x/q0", b"q0", 0, False)
    assert [p.body for p in packets[5:7]] == [puback(9)[2:], puback(10)[2:]]


# --------------------------------------------------------------------------- CPython, real Mosquitto


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory):
    """The system Mosquitto on 1883, else a private one on a free port (never skipped under CI)."""
    if port_open("127.0.0.1", 1883, timeout=1) and not os.environ.get("TRUSTFLEET_PRIVATE_BROKER"):
        yield 1883
        return
    if mosquitto_binary() is None:
        skip_or_fail("mosquitto is not installed and nothing listens on 1883")
    with PrivateMosquitto(workdir=tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker.port


class Watcher:
    """A paho client that publishes documents and collects the device's status messages."""

    def __init__(self, port: int, fleet: str):
        self.statuses: list[dict] = []
        self.fleet = fleet
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watch-{os.getpid()}")
        self.c.on_message = lambda c, u, m: self.statuses.append(
            json.loads(m.payload) if m.payload else {})
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(topics.statuses(fleet), qos=1)

    def put(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)

    def close(self, topics_to_clear: list[str]) -> None:
        for t in topics_to_clear:
            self.put(t, b"")
        self.c.loop_stop()
        self.c.disconnect()


def test_transport_on_cpython_installs_a_retained_bundle_from_real_mosquitto(
        broker_port, tmp_path, docs, record_property, capsys):
    fleet = f"mq-{os.getpid()}-{int(time.time())}"
    repo = fk.Repo(fleet=fleet)
    raw = repo.bundle(version=2, anchors=many_anchors(480))
    cfg = Config(fleet=fleet, device_id=DEVICE, firmware_time=fk.NOW)
    runner.initialise(DirStorage(str(tmp_path)), repo.root_raw, cfg)
    device = runner.Device(DirStorage(str(tmp_path)), cfg, clock=lambda: NOW)
    session = Session(device, fleet, DEVICE)
    watcher = Watcher(broker_port, fleet)
    status_topic = topics.status(fleet, DEVICE)
    transport = None
    try:
        watcher.put(topics.bundle(fleet), raw)
        log: list[str] = []
        transport = Transport(
            session, lambda: MQTTClient(f"{fleet}-{DEVICE}", "127.0.0.1", broker_port, keepalive=30),
            lambda: int(time.monotonic() * 1000), lambda ms: time.sleep(ms / 1000),
            backoff=Backoff(200, 2000), log=log.append)
        t0 = time.monotonic()
        while device.status()["version"] != 2 and time.monotonic() - t0 < 20:
            if not transport.poll():
                time.sleep(0.005)
        installed_s = time.monotonic() - t0
        assert device.status()["version"] == 2, log
        deadline = time.monotonic() + 10
        while not any(s.get("version") == 2 for s in watcher.statuses) and \
                time.monotonic() < deadline:
            transport.poll()
            time.sleep(0.01)
        status = [s for s in watcher.statuses if s.get("version") == 2][-1]
        assert (status["device"], status["fleet"], status["state"]) == (DEVICE, fleet, "ok")
        assert status["event"] == "installed" and status["bucket"] == topics.bucket(DEVICE)
        deadline = time.monotonic() + 10     # poll until every PUBACK is in, not a fixed 0.2 s
        while transport.pending and time.monotonic() < deadline:
            if not transport.poll():
                time.sleep(0.005)
        assert transport.pending == {} and transport.drops == 0
        transport.close()
        deadline = time.monotonic() + 5
        while watcher.statuses[-1].get("state") != "offline" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.statuses[-1] == {"device": DEVICE, "fleet": fleet, "state": "offline"}
        record_property("install_after_connect_s", round(installed_s, 3))
        with capsys.disabled():
            print(f"\nTransport on CPython, real Mosquitto: {len(raw)} B retained bundle installed "
                  f"{installed_s * 1000:.0f} ms after the first poll (connect included)")
    finally:
        if transport is not None:
            transport.close()  # before clearing: nothing of ours may land after the clear
        watcher.close([topics.bundle(fleet), status_topic])


def test_mqtt_client_round_trip_through_real_mosquitto(broker_port):
    got: list[tuple[bytes, bytes]] = []
    topic = f"tfclient/{os.getpid()}/{int(time.time() * 1000)}"
    c = MQTTClient(f"tfclient-{os.getpid()}", "127.0.0.1", broker_port, keepalive=30)
    c.set_callback(lambda t, m: got.append((t, m)))
    c.connect()
    try:
        c.subscribe(topic, 1)
        c.publish(topic, b"x" * 5000, qos=1)   # the echo may arrive while waiting for the PUBACK
        c.ping()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            c.check_msg()
            time.sleep(0.01)
        assert got == [(topic.encode(), b"x" * 5000)]
    finally:
        c.disconnect()


def test_transport_source_has_nothing_micropython_lacks():
    src = (Path(__file__).resolve().parents[1] / "device/trustfleet_device/transports/mqtt.py").read_text()
    top = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert top == ["from trustfleet_device import topics",
                   "from trustfleet_device.backoff import Backoff",
                   "from trustfleet_device.errors import TransportError, TrustfleetError"]
    assert "f\"" not in src and "f'" not in src
    backoff = (Path(__file__).resolve().parents[1] / "device/trustfleet_device/backoff.py").read_text()
    assert not [ln for ln in backoff.splitlines() if ln.startswith(("import ", "from "))]
    assert "f\"" not in backoff and "f'" not in backoff
