"""A clustered broker (issue 14): three NATS nodes with MQTT and JetStream, real agents, real serve.

tests/support/natscluster.py starts the cluster (three nats-server processes on loopback,
routes between them, MQTT streams with three replicas). The fleet is real: `trustfleet-agent
run` processes spread over the three nodes, `trustfleet serve` processes, a SQLite store,
signed roots, bundles and timestamps. NATS 2.9 speaks MQTT 3.1.1 only and has no shared
subscriptions, so two serve workers share the fleet with only the leader ingesting.

1. Devices on different nodes converge on a staged rollout driven through another node, and
   each status is ingested by one worker only.
2. The node that serve and a third of the devices are on is killed with SIGKILL mid-rollout:
   they move to a surviving node (brokers = [...] / several --broker), the documents retained
   on the dead node are still served by the others (JetStream replicas), and the rollout ends
   done with every device on the new bundle and in the store.

Serve and agents in the second test subscribe at QoS 0, as docs/operations.md says for NATS.

Also, without a broker: the agent's `brokers` list and serve's several --broker, their bad
input, the agent's order of attempts over the nodes and its second SUBSCRIBE for a refused
topic; and on one NATS node, the '.' in a topic level that NATS refuses, the per-device
ACL as NATS permissions, and the ingest passing to the next leader when the leader is killed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from support import brokers
from support.agentproc import AgentProcess
from support.environment import require_tool
from support.fleetkit import Repo
from support.livedevice import LiveDevice, ids_in_buckets
from support.natscluster import NatsCluster, acl_authorization
from support.serving import ServeProcess
from support.waiting import wait_for
from trustfleet_device import topics
from trustfleet_pi import paho as pahomod
from trustfleet_pi.config import ConfigError, MqttConfig, parse_config
from trustfleet_pi.paho import PahoTransport
from trustfleet_server import cli, keys, rollout
from trustfleet_server import config as opconfig
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb

WAVES = "20%,50%,100%"


@pytest.fixture
def cluster(tmp_path):
    require_tool("nats-server", "apt-get install nats-server", ["/usr/sbin/nats-server"])
    c = NatsCluster(tmp_path / "nats").start()
    try:
        yield c
    finally:
        c.stop()


# --------------------------------------------------------------------------- the fleet


class Fleet:
    """A repo, its files, a SQLite store, devices (agent processes) and serve workers."""

    def __init__(self, cluster: NatsCluster, tmp_path: Path, tag: str, qos: int = 1) -> None:
        self.cluster, self.dir, self.qos = cluster, tmp_path, qos
        # NATS 2.9 refuses '.' in a topic level: the fleet and device names here have none.
        self.repo = Repo(fleet=brokers.unique_fleet(tag), now=int(time.time()))
        self.fleet = self.repo.fleet
        self.db = str(tmp_path / "fleet.db")
        self.root = str(tmp_path / "root.cose")
        (tmp_path / "root.cose").write_bytes(self.repo.root_raw)
        keys.write_private_key(tmp_path / "timestamp.pem", self.repo.keys["timestamp"][0])
        for v in (1, 2):
            (tmp_path / f"bundle-v{v}.cose").write_bytes(self.repo.bundle(v))
        self.agents: dict[str, AgentProcess] = {}
        self.serves: list[ServeProcess] = []

    def urls_from(self, node: int) -> list[str]:
        """Every node's URL, starting with `node` (the order a client tries them)."""
        urls = self.cluster.urls
        return urls[node:] + urls[:node]

    def add_agent(self, device_id: str, node: int) -> None:
        home = self.dir / device_id
        home.mkdir()
        config = home / "agent.toml"
        listed = ", ".join(f'"{u}"' for u in self.urls_from(node))
        config.write_text(f'state_dir = "state"\ndevice_id = "{device_id}"\nfleet = "{self.fleet}"\n'
                          f"[mqtt]\nbrokers = [{listed}]\nkeepalive = 5\nsubscribe_qos = {self.qos}\n")
        init = subprocess.run([sys.executable, "-m", "trustfleet_pi.cli", "init", "--config", str(config),
                               "--root", self.root], env=_agent_env(), capture_output=True, text=True,
                              timeout=60)
        assert init.returncode == 0, init.stderr
        self.agents[device_id] = AgentProcess("run", "--config", config)

    def add_serve(self, name: str, node: int) -> ServeProcess:
        argv = ["--broker", ",".join(self.urls_from(node)), "--fleet", self.fleet, "--root", self.root,
                "--db", self.db, "--timestamp-key", str(self.dir / "timestamp.pem"),
                "--timestamp-every", "2", "--step-every", "1", "--subscribe-qos", str(self.qos)]
        s = ServeProcess(f"{name}-{self.fleet}", argv, self.dir)
        self.serves.append(s)
        return s

    def stored(self) -> dict[str, dict]:
        with fleetdb.open_db(self.db) as db:
            return {d["device"]: d for d in db.devices(self.fleet)}

    def rollout(self) -> rollout.Rollout | None:
        with fleetdb.open_db(self.db) as db:
            return db.latest_rollout(self.fleet)

    def publish_v1(self, node: int) -> None:
        assert cli.main(["publish", "--broker", self.cluster.urls[node], "--root", self.root,
                         str(self.dir / "bundle-v1.cose")]) == 0

    def start_rollout(self) -> None:
        assert cli.main(["rollout", "start", "--db", self.db, "--fleet", self.fleet, "--root", self.root,
                         "--bundle", str(self.dir / "bundle-v2.cose"), "--waves", WAVES,
                         "--wave-deadline", "120"]) == 0

    def on_version(self, version: int) -> bool:
        rows = self.stored()
        return sorted(rows) == sorted(self.agents) and all(
            r["version"] == version and r["state"] == "ok" for r in rows.values())

    def close(self) -> dict[str, dict | None]:
        """Stop the workers that never led first (so none takes the lead at the end), then the
        leader, then the agents."""
        order = sorted(self.serves, key=lambda s: "now leads" in s.log())
        summaries = {s.name: s.stop() for s in order}
        for a in self.agents.values():
            a.stop()
        return summaries

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log()[-3000:]}" for s in self.serves) + "".join(
            f"\n--- {d}\n" + "\n".join(a.lines[-15:]) for d, a in self.agents.items())


def retained_qos0(broker: brokers.Broker, topic: str, **login: str) -> bytes | None:
    """What a new QoS 0 subscriber on `broker` gets on `topic` (None: nothing within 3 s).

    A NATS node refuses connections for a few seconds after a peer died: tried for up to 30 s."""
    def attempt() -> brokers.Client | None:
        try:
            return brokers.connect(broker, timeout=10, **login)
        except (ConnectionRefusedError, TimeoutError):
            return None
    c = wait_for(attempt, f"{broker.port} to accept a connection", 30, step=0.5)
    try:
        assert not c.subscribe(topic, qos=0)[0].is_failure
        got = c.wait_messages(1, topic, timeout=3)
    finally:
        c.close()
    return got[0].payload if got else None


def _agent_env() -> dict[str, str]:
    from support.tlsagent import ENV
    return ENV


def device_ids() -> list[str]:
    """Two devices in each wave's bucket range ([0, 20), [20, 50), [50, 100)), in that order."""
    low, rest = ids_in_buckets(20, 2, 30)
    return low + [d for d in rest if topics.bucket(d) < 50][:2] + [d for d in rest if topics.bucket(d) >= 50][:2]


def spread(fleet: Fleet) -> dict[str, int]:
    """Each wave's two devices on two different nodes; every node holds two devices."""
    placed = {d: i % 3 for i, d in enumerate(device_ids())}
    for d, node in placed.items():
        fleet.add_agent(d, node)
    return placed


def test_devices_on_three_nodes_converge_and_each_status_is_ingested_once(cluster, tmp_path, capsys):
    started = time.monotonic()
    fleet = Fleet(cluster, tmp_path, "clu")
    summaries: dict[str, dict | None] = {}
    try:
        placed = spread(fleet)
        fleet.publish_v1(node=1)
        leader = fleet.add_serve("w0", node=0)
        follower = fleet.add_serve("w1", node=2)
        wait_for(lambda: fleet.on_version(1), "every device on v1 in the store", 60)
        fleet.start_rollout()
        wait_for(lambda: (r := fleet.rollout()) is not None and r.state != rollout.RUNNING,
                 "the rollout to end", 120, step=0.2)
        r = fleet.rollout()
        assert r.state == rollout.DONE, (r.halt_reason, fleet.logs())
        wait_for(lambda: fleet.on_version(2), "every device on v2 in the store", 30)
        # Each device got v2 from the node it is on, and a timestamp naming v2 is retained.
        for d, node in placed.items():
            assert f"connected to {cluster.urls[node]}" in "\n".join(fleet.agents[d].lines)
        assert retained_qos0(cluster.nodes[2].broker(), topics.timestamp(fleet.fleet))
    finally:
        summaries = fleet.close()
    lead = [s for s in summaries.values() if s and s["led"]]
    assert len(lead) == 1, (summaries, fleet.logs())
    idle = [s for s in summaries.values() if s and not s["led"]]
    assert len(idle) == 1 and idle[0]["statuses"] == idle[0]["reports"] == 0  # only the leader ingests
    assert lead[0]["protocol"] == "MQTT 3.1.1" and not lead[0]["shared"]
    assert lead[0]["statuses"] >= 12  # 6 devices on v1, then on v2
    assert (leader.name in summaries and follower.name in summaries)
    with capsys.disabled():
        print(f"\nclustered broker, 6 agents on 3 NATS nodes, rollout {WAVES}: "
              f"{time.monotonic() - started:.1f} s in all")


def test_a_node_killed_mid_rollout_and_the_fleet_still_converges(cluster, tmp_path, capsys):
    started = time.monotonic()
    # QoS 0 subscriptions, as docs/operations.md says for NATS: a QoS 1 subscription is a
    # JetStream consumer, and with a node down nats-server 2.9.10 refuses some new ones and
    # stops delivering to those it had placed on the dead node.
    fleet = Fleet(cluster, tmp_path, "kill", qos=0)
    try:
        placed = spread(fleet)
        fleet.publish_v1(node=0)
        serve = fleet.add_serve("w0", node=0)
        wait_for(lambda: fleet.on_version(1), "every device on v1 in the store", 60)
        fleet.start_rollout()
        wait_for(lambda: (r := fleet.rollout()) is not None and r.current >= 0,
                 "the first wave published", 30, step=0.05)
        cluster.kill(0)  # serve's node, and two devices'
        killed = time.monotonic()
        assert fleet.rollout().state == rollout.RUNNING
        survivors = cluster.urls[1:]

        def moved_on(lines: list[str]) -> bool:
            return any(f"connected to {u}" in line for line in lines for u in survivors)
        wait_for(lambda: moved_on(serve.log().splitlines()), "serve on a surviving node", 60)
        for d, node in placed.items():
            if node == 0:
                wait_for(lambda d=d: moved_on(fleet.agents[d].lines), f"{d} on a surviving node", 60)
        moved = time.monotonic() - killed
        wait_for(lambda: fleet.rollout().state != rollout.RUNNING, "the rollout to end", 150, step=0.2)
        r = fleet.rollout()
        assert r.state == rollout.DONE, (r.halt_reason, fleet.logs())
        wait_for(lambda: fleet.on_version(2), "every device on v2 in the store", 30)
        # The fleet bundle is retained on both survivors (read at QoS 0, as the clients do).
        for node in (1, 2):
            assert retained_qos0(cluster.nodes[node].broker(), topics.bundle(fleet.fleet)) == \
                (fleet.dir / "bundle-v2.cose").read_bytes()
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        summaries = fleet.close()
    s = summaries[serve.name]
    assert s is not None and s["led"] and s["waves"] == 3, s
    with capsys.disabled():
        print(f"\nclustered broker, node killed mid-rollout: serve and devices moved in {moved:.1f} s; "
              f"{time.monotonic() - started:.1f} s in all")


# --------------------------------------------------------------------------- configuration


def _pi(mqtt: str) -> MqttConfig:
    return parse_config({"fleet": "f", "device_id": "d", "mqtt": _toml_table(mqtt)}).mqtt


def _toml_table(text: str) -> dict:
    import tomllib
    return tomllib.loads(text)


def test_the_agent_takes_a_list_of_brokers_with_the_same_rules_for_each():
    m = _pi('brokers = ["mqtt://a:1884", "mqtt://b"]')
    assert m.all_servers() == [("a", 1884), ("b", 1883)] and (m.host, m.port, m.tls) == ("a", 1884, False)
    assert _pi('broker = "mqtts://one.example"').all_servers() == [("one.example", 8883)]
    for text, message in [
        ('brokers = ["mqtt://a", "mqtts://b.example"]', "mqtt.brokers mixes mqtt:// and mqtts://"),
        ('broker = "mqtt://a"\nbrokers = ["mqtt://b"]', "mqtt.broker and mqtt.brokers: give one, not both"),
        ("brokers = []", "mqtt.brokers must be a list of one or more broker URLs"),
        ('brokers = ["mqtt://a", "mqtt://a"]', "mqtt.brokers lists a broker twice"),
        ('brokers = ["mqtt://a", "ftp://b"]', "mqtt.brokers 'ftp://b': expected mqtt://host[:port]"),
        ('brokers = ["mqtts://b.example", "mqtts://10.0.0.2"]', "mqtt.brokers: 10.0.0.2 is an IP address"),
        ('brokers = "mqtt://a"', "mqtt.brokers must be a list of non-empty strings"),
    ]:
        with pytest.raises(ConfigError) as exc:
            _pi(text)
        assert str(exc.value).startswith(f"config: {message}"), str(exc.value)
        assert "\n" not in str(exc.value)


def test_the_agent_cli_refuses_a_bad_brokers_list_in_one_line(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('state_dir = "s"\ndevice_id = "d"\nfleet = "f"\n[mqtt]\n'
                      'brokers = ["mqtt://a", "mqtts://b.example"]\n')
    proc = subprocess.run([sys.executable, "-m", "trustfleet_pi.cli", "run", "--config", str(config)],
                          env=_agent_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mqtt.brokers mixes mqtt:// and mqtts://" in lines[0], proc.stderr


def test_serve_takes_several_brokers_from_the_command_line_and_the_config(tmp_path):
    urls = common.broker_urls(["mqtt://a:1", "mqtt://b:2,mqtt://c:3"])
    assert [(u.host, u.port) for u in urls] == [("a", 1), ("b", 2), ("c", 3)]
    for values, message in [([" , "], "give at least one broker URL"),
                            (["mqtt://a:1,mqtt://a:1"], "a broker is listed twice"),
                            (["mqtt://a", "mqtts://b"], "mqtt:// and mqtts:// mixed"),
                            (["ftp://a"], "scheme must be mqtt:// or mqtts://")]:
        with pytest.raises(UsageError, match=message):
            common.broker_urls(values)
    (tmp_path / "trustfleet.toml").write_text('broker = ["mqtt://n1:1883", "mqtt://n2:1883"]\n')
    cfg = opconfig.load(cwd=tmp_path, environ={})
    assert cfg.get("broker").as_list() == ["mqtt://n1:1883", "mqtt://n2:1883"]
    env = opconfig.load(cwd=tmp_path, environ={"TRUSTFLEET_BROKER": "mqtt://x:1, mqtt://y:2"})
    assert env.get("broker").as_list() == ["mqtt://x:1", "mqtt://y:2"]
    one = opconfig.load(cwd=tmp_path, environ={"TRUSTFLEET_BROKER": "mqtt://x:1"})
    assert one.get("broker").as_list() == ["mqtt://x:1"]


def test_serve_refuses_a_mixed_broker_list_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", "serve", "--broker", "mqtt://a",
                           "--broker", "mqtts://b", "--fleet", "f", "--root", str(tmp_path / "r.cose"),
                           "--db", str(tmp_path / "f.db")], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "mqtt:// and mqtts:// mixed" in proc.stderr, proc.stderr


class _Refused:
    """A paho client stand-in whose connect() fails or succeeds by host."""

    def __init__(self, fleet_log: list, up: set) -> None:
        self.log, self.up = fleet_log, up
        self.on_connect = None

    def will_set(self, *a, **kw):
        pass

    def connect(self, host, port, keepalive, **kw):
        self.log.append(host)
        if host not in self.up:
            raise ConnectionRefusedError("refused")
        raise ValueError("stop here")  # enough: the node was chosen


def test_the_agent_tries_each_node_at_once_and_backs_off_only_after_a_full_round():
    class Session:
        fleet, device_id = "f", "d"

        def will(self):
            return ("tf/f/status/d", b"{}", True, 1)

        def subscriptions(self):
            return []

        def tick(self):
            return []

    tried: list[str] = []
    delays: list[str] = []
    settings = _pi('brokers = ["mqtt://a", "mqtt://b", "mqtt://c"]')

    class Stop:
        def is_set(self):
            return len(tried) >= 7

        def wait(self, s):
            return self.is_set()

    def log(line: str) -> None:
        if line.startswith("next connection attempt"):
            delays.append(tried[-1])

    t = PahoTransport(Session(), settings, client_factory=lambda cid, proto: _Refused(tried, set()),
                      clock=time.monotonic, rand=lambda: 0.0, log=log, first_s=0.001, cap_s=0.001)
    t.run(Stop())
    assert tried == ["a", "b", "c", "a", "b", "c", "a"]
    assert delays == ["c", "c"]  # the backoff after each round, never between nodes


class _Subscriber:
    """A paho client stand-in that connects, then refuses the second topic of the first SUBSCRIBE
    (as a NATS node with a dead peer does at random) and grants every later one."""

    def __init__(self, record: list) -> None:
        self.record = record
        self.mid = 0
        self.on_connect = self.on_subscribe = self.on_disconnect = self.on_message = None
        self.on_publish = None
        self.subacks: list = []  # delivered later, as from the network

    def will_set(self, *a, **kw):
        pass

    def connect(self, host, port, keepalive, **kw):
        pass

    def loop_start(self):
        self.on_connect(self, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), None)

    def subscribe(self, subs):
        self.mid += 1
        self.record.append([(t, q) for t, q in subs])
        codes = [ReasonCode(PacketTypes.SUBACK, identifier=0x80 if self.mid == 1 and i == 1 else q)
                 for i, (_, q) in enumerate(subs)]
        self.subacks.append((self.mid, codes))
        return (0, self.mid)

    def publish(self, topic, payload, qos=0, retain=False):
        info = paho.MQTTMessageInfo(1000 + self.mid)
        info.rc = paho.MQTT_ERR_SUCCESS
        return info

    def is_connected(self):
        while self.subacks:
            mid, codes = self.subacks.pop(0)
            self.on_subscribe(self, None, mid, codes, None)
        return True

    def disconnect(self):
        pass

    def loop_stop(self):
        pass


def test_the_agent_asks_again_for_a_subscription_the_broker_refused(monkeypatch):
    monkeypatch.setattr(pahomod, "RESUBSCRIBE_FIRST_S", 0.05)

    class Session:
        fleet, device_id = "f", "d"

        def will(self):
            return ("tf/f/status/d", b"{}", True, 1)

        def subscriptions(self):
            return ["tf/f/root/+", "tf/f/bundle", "tf/f/timestamp"]

        def connected(self):
            return []

        def tick(self):
            return []

    record: list = []
    lines: list[str] = []

    give_up = time.monotonic() + 10

    class Stop:
        def is_set(self):
            return len(record) >= 2 or time.monotonic() > give_up

        def wait(self, s):
            time.sleep(min(s, 0.01))
            return self.is_set()

    settings = _pi('brokers = ["mqtt://a", "mqtt://b"]\nsubscribe_qos = 0')
    t = PahoTransport(Session(), settings, client_factory=lambda cid, proto: _Subscriber(record),
                      log=lines.append, tick_s=0.01)
    t.run(Stop())
    assert record == [[("tf/f/root/+", 0), ("tf/f/bundle", 0), ("tf/f/timestamp", 0)],
                      [("tf/f/bundle", 0)]], (record, lines)
    assert "the broker refused the subscription to tf/f/bundle; asking again in 0 s" in lines


def test_nats_refuses_a_dot_in_a_topic_level_as_the_docs_say(nats_mqtt):
    """trustfleet names may hold '.', NATS 2.9 topics may not (docs/operations.md): a SUBSCRIBE
    is refused and a PUBLISH costs the connection. Pinned so the docs change if NATS does."""
    fleet = brokers.unique_fleet("dot").replace("-", ".")
    c = brokers.connect(nats_mqtt)
    try:
        assert c.subscribe(topics.bundle(fleet), qos=0)[0].is_failure
        assert not c.subscribe(topics.bundle(fleet.replace(".", "-")), qos=0)[0].is_failure
        c.paho.publish(topics.status(fleet, "d"), b"{}", qos=1, retain=True)
        assert c.wait(lambda: c.disconnects, timeout=5), "the publish did not cost the connection"
    finally:
        c.close()


def test_nats_permissions_carry_the_per_device_acl_but_not_the_client_id(tmp_path):
    """acl_authorization's block (the one docs/operations.md shows) on a real nats-server:
    a device publishes only its own status and report and reads only the documents; what it
    may not publish is acknowledged but dropped (no retained copy, nothing delivered). NATS
    does not tie a client id to a user: another device may take over a device's session."""
    require_tool("nats-server", "apt-get install nats-server", ["/usr/sbin/nats-server"])
    fleet = brokers.unique_fleet("acl")
    auth = acl_authorization(fleet, {"dev1": "p1", "dev2": "p2"}, ("serve", "s"))
    node = NatsCluster(tmp_path / "nats", size=1, replicas=1, authorization=auth,
                       login=("serve", "s")).start()
    b = node.nodes[0].broker()
    clients = []
    try:
        def login(user: str, password: str, **kw):
            c = brokers.connect(b, username=user, password=password, **kw)
            clients.append(c)
            return c
        serve = login("serve", "s")
        assert not serve.publish(topics.bundle(fleet), b"B1", retain=True).is_failure
        for t in (topics.statuses(fleet), topics.reports(fleet)):
            assert not serve.subscribe(t, qos=0)[0].is_failure
        assert serve.subscribe(topics.timestamp(fleet), qos=1)[0].is_failure  # QoS 1: refused
        dev1 = login("dev1", "p1", client_id=f"tf-{fleet}-dev1",
                     will=(topics.status(fleet, "dev1"), b'{"state": "offline"}', 1, True))
        assert not dev1.subscribe(topics.bundle(fleet), qos=0)[0].is_failure
        assert [m.payload for m in dev1.wait_messages(1, topics.bundle(fleet))] == [b"B1"]
        assert dev1.subscribe(topics.statuses(fleet), qos=0)[0].is_failure  # others' statuses
        dev1.publish(topics.status(fleet, "dev1"), b"own", retain=True)
        dev1.publish(topics.report(fleet, "dev1"), b"report")
        dev1.publish(topics.status(fleet, "dev2"), b"forged", retain=True)  # acknowledged ...
        dev1.publish(topics.bundle(fleet), b"evil", retain=True)
        serve.wait_messages(2, timeout=3)
        time.sleep(0.5)
        assert [(m.topic, m.payload) for m in serve.messages] == [
            (topics.status(fleet, "dev1"), b"own"), (topics.report(fleet, "dev1"), b"report")]
        assert retained_qos0(b, topics.bundle(fleet), username="serve", password="s") == b"B1"
        assert retained_qos0(b, topics.status(fleet, "dev2"), username="serve", password="s") is None
        with pytest.raises(ConnectionRefusedError):
            brokers.connect(b, username="dev1", password="wrong")
        # No binding of client id to user: dev2 under dev1's id is accepted and knocks dev1 off.
        # The per-device ACL still holds for dev2: it cannot speak for dev1.
        dev2 = login("dev2", "p2", client_id=f"tf-{fleet}-dev1")
        assert dev1.wait(lambda: dev1.disconnects, timeout=5)
        dev2.publish(topics.status(fleet, "dev1"), b"impostor", retain=True)
        dev2.publish(topics.status(fleet, "dev2"), b"dev2's own", retain=True)
        serve.wait_messages(3, timeout=3)
        assert [m.payload for m in serve.messages[2:]] == [b"dev2's own"]
        assert retained_qos0(b, topics.status(fleet, "dev1"), username="serve", password="s") == b"own"
    finally:
        for c in clients:
            c.close()
        node.stop()


def test_without_shared_subscriptions_the_next_leader_takes_over_the_ingest(nats_mqtt, tmp_path):
    """Two serve workers on NATS (no $share): only the leader subscribes to statuses. Kill -9 it:
    the other takes the lease, subscribes, reads the retained statuses, and ingests what the
    devices say next (here: v2, published after the kill)."""
    repo = Repo(fleet=brokers.unique_fleet("lead"), now=int(time.time()))
    fleet = repo.fleet
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    for v in (1, 2):
        (tmp_path / f"bundle-v{v}.cose").write_bytes(repo.bundle(v))
    root, db = str(tmp_path / "root.cose"), str(tmp_path / "fleet.db")
    assert cli.main(["publish", "--broker", nats_mqtt.url, "--root", root,
                     str(tmp_path / "bundle-v1.cose")]) == 0
    devices = [LiveDevice(nats_mqtt, repo, f"dev-{i}") for i in range(3)]
    argv = ["--broker", nats_mqtt.url, "--fleet", fleet, "--root", root, "--db", db,
            "--step-every", "1", "--subscribe-qos", "0"]
    workers = [ServeProcess(f"w{i}-{fleet}", argv, tmp_path) for i in range(2)]

    def versions() -> list:
        with fleetdb.open_db(db) as store:
            return sorted((d["device"], d["version"]) for d in store.devices(fleet))
    try:
        wait_for(lambda: versions() == [(d.id, 1) for d in devices], "v1 of every device in the store", 30)
        wait_for(lambda: any("now leads" in w.log() for w in workers), "a leader", 15)
        leader = next(w for w in workers if "now leads" in w.log())
        other = next(w for w in workers if w is not leader)
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait(10)
        wait_for(lambda: "now leads" in other.log(), "the other worker to take the lead", 15)
        assert cli.main(["publish", "--broker", nats_mqtt.url, "--root", root,
                         str(tmp_path / "bundle-v2.cose")]) == 0
        wait_for(lambda: versions() == [(d.id, 2) for d in devices], "v2 of every device in the store", 30)
    finally:
        for d in devices:
            d.close()
        summaries = {w.name: w.stop() for w in workers}
    assert summaries[leader.name] is None  # killed
    s = summaries[other.name]
    assert s["led"] and not s["shared"] and s["statuses"] >= 3, s
