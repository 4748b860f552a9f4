"""A three-node NATS cluster with MQTT and JetStream on loopback, for the clustered-broker tests.

Each node is its own nats-server process with its own temporary JetStream
store, a random client port, a cluster (route) port and an MQTT port, all
on 127.0.0.1 and chosen free when the cluster is built. Every node lists
the routes of the other two, carries a server_name (MQTT needs it, and
JetStream in a cluster names its peers by it), and has an mqtt block that
asks for three replicas of the MQTT streams (sessions, retained messages),
so a retained document survives the loss of the node that took it, and
one replica of their consumers (one per QoS 1 subscription; every trustfleet
client uses a clean session, so a consumer never outlives its connection).
With a node down, nats-server 2.9.10 refuses most new QoS 1 subscriptions
when consumers have three replicas ("Unable to add JetStream consumer", a
timeout), and some at random with one; QoS 0 subscriptions make no consumer
and are unaffected (docs/operations.md, "Clustered broker").

A node that accepts TCP on its MQTT port is not yet serving MQTT: the
JetStream meta group must have elected a leader and the MQTT streams must
exist. start() waits until every node answers an MQTT CONNECT with
"accepted". kill() is SIGKILL by PID (a crash, not a shutdown); restart()
starts the same node again on the same ports and store.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.brokers import HOST, Broker, connect, free_port, mqtt_connect_probe
from trustfleet_server.broker.mosquitto import MosquittoError, start_process, stop_process

CLUSTER_NAME = "trustfleet"
READY_TIMEOUT = 60.0


@dataclass
class NatsNode:
    """One cluster member: its ports, files and process."""

    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.mqtt_port}"

    @property
    def conf(self) -> Path:
        return self.workdir / "nats.conf"

    @property
    def log(self) -> Path:
        return self.workdir / "nats.log"

    def broker(self) -> Broker:
        return Broker(HOST, self.mqtt_port, "nats")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def node_conf(node: NatsNode, peers: list[NatsNode], replicas: int, consumer_replicas: int,
              authorization: str = "") -> str:
    """The nats-server config of one node (see the module docstring); a lone node has no
    cluster block."""
    routes = ", ".join(f'"nats-route://{HOST}:{p.route_port}"' for p in peers if p is not node)
    cluster = (f"cluster {{\n"
               f"  name: {CLUSTER_NAME}\n"
               f'  listen: "{HOST}:{node.route_port}"\n'
               f"  routes: [{routes}]\n"
               f"}}\n") if len(peers) > 1 else ""
    return (
        f"server_name: {node.name}\n"
        f'listen: "{HOST}:{node.client_port}"\n'
        f'jetstream {{ store_dir: "{node.workdir / "jetstream"}" }}\n'
        f"{cluster}"
        f"{authorization}"
        f"mqtt {{\n"
        f'  listen: "{HOST}:{node.mqtt_port}"\n'
        f"  stream_replicas: {replicas}\n"
        f"  consumer_replicas: {consumer_replicas}\n"
        f"}}\n"
    )


def acl_authorization(fleet: str, devices: dict[str, str], server: tuple[str, str]) -> str:
    """An `authorization` block that carries trustfleet's per-device ACL (docs/operations.md):
    each device, by user name = device id, may publish only its own status and report and
    subscribe only to the fleet's documents; the server user may do anything under the fleet.
    MQTT topic levels are NATS subject tokens (`/` -> `.`, `+` -> `*`, `#` -> `>`)."""
    base = f"tf.{fleet}"
    docs = f'["{base}.root.*", "{base}.bundle", "{base}.bundle.*.*", "{base}.timestamp"]'
    users = []
    for device, password in devices.items():
        users.append(
            f'  {{user: "{device}", password: "{password}", allowed_connection_types: ["MQTT"],\n'
            f'   permissions: {{publish: {{allow: ["{base}.status.{device}", "{base}.report.{device}"]}},\n'
            f"                 subscribe: {{allow: {docs}}}}}}}\n")
    name, password = server
    users.append(f'  {{user: "{name}", password: "{password}", allowed_connection_types: ["MQTT"],\n'
                 f'   permissions: {{publish: {{allow: ["{base}.>"]}}, subscribe: {{allow: ["{base}.>"]}}}}}}\n')
    return "authorization {\n users: [\n" + "".join(users) + " ]\n}\n"


class NatsCluster:
    """Three (or `size`) nats-server nodes in one cluster; start(), kill(i), restart(i), stop().

    authorization: an `authorization { ... }` block for every node (acl_authorization), and
    login the (user, password) start() checks readiness with (anonymous clients are refused).
    """

    def __init__(self, workdir: Path, size: int = 3, replicas: int = 3, consumer_replicas: int = 1,
                 authorization: str = "", login: tuple[str, str] | None = None) -> None:
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.workdir = Path(workdir)
        self.replicas, self.consumer_replicas = replicas, consumer_replicas
        self.authorization, self.login = authorization, login
        self.nodes = []
        for i in range(size):
            d = self.workdir / f"n{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsNode(f"tf-n{i}", 0, 0, 0, d))
        self._choose_ports()

    def _choose_ports(self) -> None:
        """Three distinct free ports per node (the OS may hand the same free port out twice)."""
        ports: set[int] = set()
        while len(ports) < 3 * len(self.nodes):
            ports.add(free_port())
        chosen = sorted(ports, key=lambda _: random.random())
        for i, node in enumerate(self.nodes):
            node.client_port, node.route_port, node.mqtt_port = chosen[3 * i:3 * i + 3]
        for node in self.nodes:
            node.conf.write_text(node_conf(node, self.nodes, self.replicas, self.consumer_replicas,
                                           self.authorization))

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, tries: int = 3) -> NatsCluster:
        """Start every node and wait until each serves MQTT. A port taken between choosing and
        binding it (another process on this machine) means new ports and another try."""
        for attempt in range(tries):
            try:
                for node in self.nodes:
                    self._launch(node)
                for node in self.nodes:
                    self.wait_ready(node)
                return self
            except MosquittoError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt + 1 == tries:
                    raise
                self._choose_ports()
            except BaseException:
                self.stop()
                raise
        return self

    def _launch(self, node: NatsNode) -> None:
        node.proc = start_process([self.binary, "-c", str(node.conf)], log=node.log,
                                  listens=[(HOST, node.client_port)], name=node.name)

    def wait_ready(self, node: NatsNode, timeout: float = READY_TIMEOUT) -> None:
        """Until `node` accepts an MQTT CONNECT (its JetStream is up). Raises: AssertionError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.running:
                raise AssertionError(f"{node.name} exited:\n{self.log_tail(node)}")
            if self._accepts(node):
                return
            time.sleep(0.2)
        raise AssertionError(f"{node.name} did not accept MQTT within {timeout:.0f} s:\n"
                             f"{self.log_tail(node)}")

    def _accepts(self, node: NatsNode) -> bool:
        if self.login is None:
            return mqtt_connect_probe(HOST, node.mqtt_port, timeout=5.0) == 0
        try:
            connect(node.broker(), username=self.login[0], password=self.login[1], timeout=5.0).close()
        except (OSError, TimeoutError):  # ConnectionRefusedError included
            return False
        return True

    def kill(self, i: int) -> None:
        """SIGKILL node i by its PID, as a crash would."""
        node = self.nodes[i]
        if node.running:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        self._launch(node)
        self.wait_ready(node)

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                stop_process(node.proc)

    def log_tail(self, node: NatsNode, limit: int = 3000) -> str:
        try:
            return node.log.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"
