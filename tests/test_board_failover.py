"""The board's agent on a clustered broker (issue 14): config.json lists several broker nodes
("mqtt": {"hosts": [...]}, written by `device provision --broker-host A --broker-host B`), and the
board moves to the next node when one cannot be reached or a working connection is lost.

What runs is the unmodified device/board/main.py on the firmware stand-in (tools/firmware.py:
32-bit MicroPython, package frozen) capped at 87,360 B, 24 KiB under a stock ESP32's heap,
through `trustfleet board run`, against two private Mosquittos set up by `broker-config` and
`device add` (the same password file and ACL, one listener each: the two nodes of a cluster
as the board sees them). Plain MQTT there: the stand-in has no TLS.

- The first node is down (nothing listens on its port): the board goes on to the second at
  once, without a backoff delay, and installs the bundle retained there.
- The board is connected to the first node, which is then SIGKILLed: it reaches the second
  and installs the bundle published there after the kill.
- On a three-node NATS cluster (tests/support/natscluster.py) with "subscribe_qos": 0, the
  node the board is on is SIGKILLed: the board reaches a survivor once they accept MQTT again
  and installs the bundle published through one of them.
- Over TLS on the native unix port (real mbedTLS): two nodes serving one certificate made for
  "localhost"; the first, listed as 127.0.0.1, fails the name check, and the board goes on at
  once to the second, listed as localhost: each node is checked under its own name.
- `device provision` refuses a bad --broker-host in one line.

And the same Transport on CPython against real Mosquittos: a node that refuses the CONNACK
(no anonymous clients) sends it on to the next node at once; after a whole round failed it
waits for the backoff; subscribe_qos=0 asks for QoS 0 on the wire, so a bundle retained at
QoS 1 arrives at QoS 0 (no PUBACK from the device) and still installs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import brokers, mpfirmware, mpunix
from support import fleetkit as fk
from support.clirun import run_cli
from support.environment import skip_or_fail
from support.natscluster import NatsCluster
from support.waiting import wait_for
from trustfleet_device import topics
from trustfleet_device.agent import Config
from trustfleet_device.backoff import Backoff
from trustfleet_device.session import Session
from trustfleet_device.transports import mqtt, runner
from trustfleet_device.transports.storage import DirStorage
from trustfleet_server.broker.mosquitto import config_text

REPO = Path(__file__).resolve().parents[1]
DEVICE = "esp-1"
WAIT = 90.0
HEAP = 111_936 - 24 * 1024  # the stand-in's cap in test_board_fleet, 24 KiB under an ESP32's



class TwoNodes:
    """broker-config + device add; two Mosquittos on the same identities; the board's files."""

    nats = None

    def __init__(self, tmp: Path, start_mosquitto, first_up: bool = True) -> None:
        self.dir = tmp
        self.repo = fk.Repo(fleet=brokers.unique_fleet("failover"), now=int(time.time()))
        (tmp / "root.cose").write_bytes(self.repo.root_raw)
        self.env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
        ports = [brokers.free_port(), brokers.free_port()]
        while ports[1] == ports[0]:
            ports[1] = brokers.free_port()
        out = tmp / "broker"
        run_cli("broker-config", "--fleet", self.fleet, "--out", str(out), "--listener",
           f"127.0.0.1:{ports[0]}", "--no-persistence", env=self.env)
        run_cli("device", "add", "--fleet", self.fleet, "--id", DEVICE, "--broker-dir", str(out),
           "--out", str(tmp / f"{DEVICE}.json"), env=self.env)
        self.secrets = {i["username"]: i["password"]
                        for i in json.loads((out / "secrets.json").read_text())["identities"]}
        conf = (out / "mosquitto.conf").read_text()
        assert f"listener {ports[0]}" in conf, conf
        self.nodes = [start_mosquitto(conf) if first_up else None,
                      start_mosquitto(conf.replace(f"listener {ports[0]}", f"listener {ports[1]}"))]
        self.ports = ports
        self.state = self.provision(out, ports)
        self.board: subprocess.Popen | None = None

    def provision(self, broker_dir: Path, ports: list[int]) -> Path:
        """`device provision --dry-run` with one --broker-host per port; the staged state folder."""
        staging = self.dir / "staging"
        hosts = [a for p in ports for a in ("--broker-host", f"127.0.0.1:{p}")]
        run_cli("device", "provision", "--port", "unused", "--dry-run", "--staging", str(staging),
           "--fleet", self.fleet, "--id", DEVICE, "--root", str(self.dir / "root.cose"),
           "--broker-dir", str(broker_dir), *hosts, "--no-compile", "--no-broker-tls", env=self.env)
        return staging / "trustfleet"

    fleet = property(lambda self: self.repo.fleet)

    def operator(self, node):
        if self.nats is not None:  # the cluster is anonymous, and MQTT 3.1.1 only
            return brokers.connect(node)
        return brokers.connect(node, username="trustfleet-operator",
                               password=self.secrets["trustfleet-operator"], protocol=5)

    def publish_bundle(self, node, version: int) -> None:
        raw = self.repo.bundle(version, anchors=[fk.full_anchor(fk.chain("acme").ca)], pinsets=[])
        c = self.operator(node)
        try:
            rc = c.publish(topics.bucket_bundle(self.fleet, topics.bucket(DEVICE)), raw,
                           qos=1, retain=True)
            assert rc is not None and not rc.is_failure, rc
        finally:
            c.close()

    def watch(self, node):
        """A client on `node` that collects the board's status messages (retained and live)."""
        c = self.operator(node)
        c.subscribe(topics.status(self.fleet, DEVICE), qos=0 if self.nats is not None else 1)
        return c

    def start_board(self, binary: str) -> None:
        self.board = subprocess.Popen(
            [sys.executable, "-m", "trustfleet_server.cli", "board", "run", "--micropython", binary,
             "--heap", str(HEAP), "--state", str(self.state), "--seconds", str(int(WAIT)), "--json",
             "--until", "committed"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def board_result(self) -> dict:
        assert self.board is not None
        out, err = self.board.communicate(timeout=WAIT + 60)
        assert "Traceback" not in err, err
        return json.loads(out)

    def close(self) -> None:
        if self.board is not None and self.board.poll() is None:
            self.board.kill()
            self.board.wait(30)


def _statuses(watcher) -> list[dict]:
    return [json.loads(m.payload) for m in list(watcher.messages) if m.payload]


@pytest.fixture(scope="module")
def standin() -> str:
    return mpfirmware.require().binary


def _committed_v2(run: dict) -> list[str]:
    """The board run committed v2 (not on trial) within HEAP; its MQTT log lines."""
    assert run["ended"] == "committed", run
    assert run["state"]["version"] == 2 and not run["state"]["trial"], run
    assert run["heap"]["total"] is not None and run["heap"]["total"] <= HEAP, run["heap"]
    return _mqtt_lines(run)


def _mqtt_lines(run: dict) -> list[str]:
    return [line for line in run["log"] if "mqtt:" in line]


def test_provisioned_config_lists_both_nodes(tmp_path, private_mosquitto):
    n = TwoNodes(tmp_path, private_mosquitto)
    cfg = json.loads((n.state / "config.json").read_text())
    m = cfg["mqtt"]
    assert (m["host"], m["port"], m["tls"]) == ("127.0.0.1", n.ports[0], False), m
    assert m["hosts"] == [{"host": "127.0.0.1", "port": p} for p in n.ports], m


def test_the_board_skips_a_dead_first_node_at_once(tmp_path, private_mosquitto, standin):
    n = TwoNodes(tmp_path, private_mosquitto, first_up=False)  # nothing listens on the first port
    try:
        n.publish_bundle(n.nodes[1], 2)
        second = n.watch(n.nodes[1])
        t0 = time.monotonic()
        n.start_board(standin)
        run = n.board_result()
        print(f"\nfirst node down: v2 committed via the second in {time.monotonic() - t0:.1f} s "
              f"(board run), heap {run['heap']}")
        lines = _committed_v2(run)
        first_connected = next(i for i, line in enumerate(lines) if "mqtt: connected" in line)
        before = lines[:first_connected]
        # Refused by the first node, the board tried the second straight away: no backoff wait.
        assert any(f"connecting to 127.0.0.1 {n.ports[0]}" in line for line in before), lines
        assert any("trying broker node 1 now" in line for line in before), lines
        assert not any("next attempt in" in line for line in before), lines
        assert f"connecting to 127.0.0.1 {n.ports[1]}" in before[-1], lines
        wait_for(lambda: any(s.get("version") == 2 for s in _statuses(second)),
                 "the board's status on the second node: v2", 30)
        second.close()
    finally:
        n.close()


def test_the_board_fails_over_when_its_node_is_killed(tmp_path, private_mosquitto, standin):
    n = TwoNodes(tmp_path, private_mosquitto)
    try:
        first, second = n.watch(n.nodes[0]), n.watch(n.nodes[1])
        n.start_board(standin)
        # Connected to the first node: its status is there (and not on the second).
        wait_for(lambda: _statuses(first), "the board's status on the first node", 60)
        first.close()
        assert _statuses(second) == []
        n.nodes[0].proc.kill()  # SIGKILL: no goodbye to the board
        n.nodes[0].proc.wait(10)
        t0 = time.monotonic()
        n.publish_bundle(n.nodes[1], 2)
        run = n.board_result()
        print(f"\nfirst node killed: v2 committed via the second {time.monotonic() - t0:.1f} s "
              f"after the kill (incl. board run's linger), heap {run['heap']}")
        lines = _committed_v2(run)
        connected = [i for i, line in enumerate(lines) if "mqtt: connected" in line]
        assert len(connected) >= 2, lines
        assert any(f"connecting to 127.0.0.1 {n.ports[1]}" in line
                   for line in lines[connected[0]:connected[-1]]), lines
        wait_for(lambda: any(s.get("version") == 2 for s in _statuses(second)),
                 "the board's status on the second node: v2", 30)
        second.close()
    finally:
        n.close()


@pytest.mark.parametrize("value, why", [
    ("127.0.0.1:0", "the port after ':' must be 1 to 65535"),
    ("127.0.0.1:x", "the port after ':' must be 1 to 65535"),
    ("mqtt://broker.example", "give a host name, or HOST:PORT"),
    ("user@broker.example", "give a host name, or HOST:PORT"),
])
def test_provision_refuses_a_bad_broker_host_in_one_line(tmp_path, value, why):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
    fleet = brokers.unique_fleet("failover")
    repo = fk.Repo(fleet=fleet, now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    base = ["device", "provision", "--port", "unused", "--dry-run", "--staging", str(tmp_path / "s"),
            "--fleet", fleet, "--id", DEVICE, "--root", str(tmp_path / "root.cose"),
            "--broker-dir", str(tmp_path / "nowhere"), "--no-compile"]
    proc = run_cli(*base, "--broker-host", "broker.example", "--broker-host", value, env=env, code=2)
    assert proc.stderr.strip().count("\n") == 0 and why in proc.stderr, proc.stderr
    twice = run_cli(*base, "--broker-host", "broker.example", "--broker-host", "broker.example:8883",
               env=env, code=2)
    assert "the same node is given twice" in twice.stderr and twice.stderr.strip().count("\n") == 0


class Recording:
    """A real socket (mqtt.open_socket) that keeps every chunk the device writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def factory(self, server, port, ssl_context=None, timeout_s=10):
        sock = mqtt.open_socket(server, port, ssl_context, timeout_s)
        inner = sock.write

        def write(data):
            self.written.append(bytes(data))
            return inner(data)

        sock.write = write
        return sock


def _cpython_device(tmp: Path, fleet: str):
    repo = fk.Repo(fleet=fleet, now=int(time.time()))
    cfg = Config(fleet=fleet, device_id=DEVICE, firmware_time=fk.NOW)
    runner.initialise(DirStorage(str(tmp)), repo.root_raw, cfg)
    device = runner.Device(DirStorage(str(tmp)), cfg, clock=lambda: int(time.time()))
    return repo, device, Session(device, fleet, DEVICE)


def _poll_until(transport, cond, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        if not transport.poll():
            time.sleep(0.005)
    return cond()


def test_transport_refused_by_one_node_goes_on_at_once_and_subscribes_at_qos0(
        tmp_path, private_mosquitto):
    fleet = brokers.unique_fleet("failover")
    closed = private_mosquitto(config_text(brokers.free_port(), extra=["allow_anonymous false"]))
    open_ = private_mosquitto()
    repo, device, session = _cpython_device(tmp_path, fleet)
    raw = repo.bundle(2, anchors=[fk.full_anchor(fk.chain("acme").ca)], pinsets=[])
    pub = brokers.connect(open_)
    try:
        assert not pub.publish(topics.bucket_bundle(fleet, topics.bucket(DEVICE)), raw, qos=1,
                               retain=True).is_failure
    finally:
        pub.close()
    rec = Recording()
    tries: list[int] = []

    def node(broker):
        def client():
            tries.append(broker.port)
            return mqtt.MQTTClient(f"tf-{fleet}-{DEVICE}", broker.host, broker.port, keepalive=30,
                                   sock_factory=rec.factory)
        return client

    log: list[str] = []
    t = mqtt.Transport(session, [node(closed), node(open_)], lambda: int(time.monotonic() * 1000),
                       lambda ms: time.sleep(ms / 1000), backoff=Backoff(5000, 10000),
                       log=log.append, subscribe_qos=0)
    try:
        t0 = time.monotonic()
        assert _poll_until(t, lambda: device.status()["version"] == 2, 20), log
        # The refusal (CONNACK 5) moved it to the second node without the 2.5-5 s backoff.
        assert tries[:2] == [closed.port, open_.port] and t.connects == 1, (tries, log)
        assert time.monotonic() - t0 < 2.5, log
        assert any("not authorised" in line and "trying broker node 1 now" in line for line in log), log
        subs = [w for w in rec.written if w[0] == 0x82]
        assert len(subs) == len(session.subscriptions()) and all(w[-1] == 0 for w in subs), subs
        assert not any(w[:2] == b"\x40\x02" for w in rec.written), "a PUBACK: a QoS 1 delivery"
    finally:
        t.close()

    # Both nodes refuse now: one round of two attempts, then the backoff.
    open_.stop()
    tries.clear()
    log.clear()
    t = mqtt.Transport(session, [node(closed), node(open_)], lambda: int(time.monotonic() * 1000),
                       lambda ms: time.sleep(ms / 1000), backoff=Backoff(5000, 10000), log=log.append)
    _poll_until(t, lambda: len(tries) >= 3, 1.0)
    assert tries == [closed.port, open_.port], (tries, log)
    assert "next attempt in" in log[-1] and t.retry_from is not None, log
    with pytest.raises(ValueError):
        mqtt.Transport(session, [], lambda: 0, lambda ms: None)
    with pytest.raises(ValueError):
        mqtt.Transport(session, node(closed), lambda: 0, lambda ms: None, subscribe_qos=2)


def test_the_board_fails_over_on_a_nats_cluster_when_its_node_is_killed(
        tmp_path, private_mosquitto, standin):
    """Three NATS nodes (tests/support/natscluster.py), config.json listing all three and
    "subscribe_qos": 0: the node the board is on is SIGKILLed; the survivors refuse MQTT for
    some seconds (docs/operations.md), so the board goes round them with its backoff, and
    installs the bundle published through a survivor after the kill."""
    if shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists():
        pytest.skip("nats-server is not installed")
    n = TwoNodes(tmp_path, private_mosquitto)  # for the identities and a provisioned state folder
    for node in n.nodes:
        node.stop()
    cluster = NatsCluster(tmp_path / "nats").start()
    n.nats = cluster
    try:
        ports = [node.mqtt_port for node in cluster.nodes]
        shutil.rmtree(n.dir / "staging")
        n.state = n.provision(n.dir / "broker", ports)
        cfg = json.loads((n.state / "config.json").read_text())
        for key in ("user", "password"):  # the test cluster is anonymous
            cfg["mqtt"].pop(key)
        cfg["mqtt"]["subscribe_qos"] = 0
        (n.state / "config.json").write_text(json.dumps(cfg))
        nodes = [node.broker() for node in cluster.nodes]
        watcher = n.watch(nodes[2])
        n.start_board(standin)
        wait_for(lambda: _statuses(watcher), "the board's status, through the cluster", 60)
        watcher.close()
        t0 = time.monotonic()
        cluster.kill(0)  # the node the board is on (the first it tries)

        def publish() -> bool:
            try:
                n.publish_bundle(nodes[1], 2)
            except (OSError, TimeoutError, AssertionError):
                return False  # the survivors refuse MQTT for a few seconds after the kill
            return True

        wait_for(publish, "the bundle published through a survivor", 60)
        run = n.board_result()
        print(f"\nNATS node killed: v2 committed via a survivor {time.monotonic() - t0:.1f} s after "
              f"the kill (incl. board run's linger), heap {run['heap']}")
        lines = _committed_v2(run)
        connected = [i for i, line in enumerate(lines) if "mqtt: connected" in line]
        assert len(connected) >= 2, lines
        assert any(f"connecting to 127.0.0.1 {p}" in lines[connected[-1] - 1] for p in ports[1:]), lines
    finally:
        n.close()
        cluster.stop()


def test_over_tls_each_node_is_checked_under_its_own_name(tmp_path, private_mosquitto):
    """The native unix port (real mbedTLS), two TLS nodes serving the same certificate, made for
    "localhost": listed as 127.0.0.1, the first fails mbedTLS's name check (CERT_REQUIRED
    against the provisioned CA), so the board goes on at once to the second, listed as
    localhost, which passes under that name; v2 retained there installs."""
    ok, binary = mpunix.available()
    if not ok:
        skip_or_fail(binary)
    from trustfleet_server import keys

    ca_key, leaf_key = keys.generate_key(), keys.generate_key()
    ca = fk.make_cert("failover test CA", ca_key)
    leaf = fk.make_cert("localhost", leaf_key, ca, ca_key, ca=False, dns="localhost")
    fk.write_pem(tmp_path / "ca.pem", ca)
    fk.write_pem(tmp_path / "broker.pem", leaf)
    keys.write_private_key(tmp_path / "broker-key.pem", leaf_key)
    repo = fk.Repo(fleet=brokers.unique_fleet("failover"), now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
    tls_ports = [brokers.free_port() for _ in range(2)]
    plain = brokers.free_port()
    assert len({*tls_ports, plain}) == 3
    out = tmp_path / "broker"
    run_cli("broker-config", "--fleet", repo.fleet, "--out", str(out), "--listener", f"127.0.0.1:{tls_ports[0]}",
       "--tls-cert", str(tmp_path / "broker.pem"), "--tls-key", str(tmp_path / "broker-key.pem"),
       "--no-persistence", env=env)
    run_cli("device", "add", "--fleet", repo.fleet, "--id", DEVICE, "--broker-dir", str(out),
       "--out", str(tmp_path / f"{DEVICE}.json"), env=env)
    secrets = {i["username"]: i["password"]
               for i in json.loads((out / "secrets.json").read_text())["identities"]}
    conf = (out / "mosquitto.conf").read_text()
    assert f"listener {tls_ports[0]}" in conf, conf
    private_mosquitto(conf)
    # The second node, with a plain listener too for the test's own publisher (same users, ACL).
    private_mosquitto(conf.replace(f"listener {tls_ports[0]}", f"listener {tls_ports[1]}")
                      + f"\nlistener {plain} 127.0.0.1\n")
    staging = tmp_path / "staging"
    run_cli("device", "provision", "--port", "unused", "--dry-run", "--staging", str(staging),
       "--fleet", repo.fleet, "--id", DEVICE, "--root", str(tmp_path / "root.cose"),
       "--broker-dir", str(out), "--broker-host", f"127.0.0.1:{tls_ports[0]}",
       "--broker-host", f"localhost:{tls_ports[1]}", "--broker-ca", str(tmp_path / "ca.pem"),
       "--no-compile", env=env)
    cfg = json.loads((staging / "trustfleet" / "config.json").read_text())
    assert cfg["mqtt"]["tls"] is True and cfg["mqtt"]["ca"] == "/trustfleet/broker-ca.der", cfg
    pub = brokers.connect(brokers.Broker("127.0.0.1", plain, "mosquitto"), username="trustfleet-operator",
                          password=secrets["trustfleet-operator"], protocol=5)
    try:
        raw = repo.bundle(2, anchors=[fk.full_anchor(ca)], pinsets=[])
        rc = pub.publish(topics.bucket_bundle(repo.fleet, topics.bucket(DEVICE)), raw, qos=1, retain=True)
        assert rc is not None and not rc.is_failure, rc
    finally:
        pub.close()
    proc = run_cli("board", "run", "--micropython", binary, "--heap", "1000000", "--state",
              str(staging / "trustfleet"), "--seconds", str(int(WAIT)), "--json", "--until", "committed",
              env=env, code=None, timeout=WAIT + 60)
    run = json.loads(proc.stdout)
    assert run["ended"] == "committed" and run["state"]["version"] == 2, run
    lines = _mqtt_lines(run)
    first_connected = next(i for i, line in enumerate(lines) if "mqtt: connected" in line)
    before = lines[:first_connected]
    assert f"connecting to 127.0.0.1 {tls_ports[0]}" in before[0], lines
    assert "trying broker node 1 now" in before[1], lines
    print(f"\nTLS: {before[1]}")
    # The first node was up and its certificate good for "localhost": the name failed it.
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with socket.create_connection(("127.0.0.1", tls_ports[0]), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="localhost"):
        pass
    with pytest.raises(ssl.SSLCertVerificationError), \
            socket.create_connection(("127.0.0.1", tls_ports[0]), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1"):
        pass
    assert f"connecting to localhost {tls_ports[1]}" in before[2] and len(before) == 3, lines
