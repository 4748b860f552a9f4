"""Real MQTT brokers for tests: Mosquitto (system or private), NATS with MQTT, the embedded one.

Every broker a test starts is a child process on 127.0.0.1 with a free
port, its config and data in a temporary directory, its stderr in a file
so a broker that fails to come up is reported with what it said. Waiting
for a port is bounded (START_TIMEOUT); stopping is SIGTERM then SIGKILL,
by PID. Nothing here touches the system Mosquitto on 1883 beyond probing
it with one MQTT CONNECT.

The fixtures built on this live in conftest.py:

    mosquitto          session: the system broker if it accepts anonymous
                       clients on 127.0.0.1:1883, else a private one
    private_mosquitto  factory: private Mosquitto from config text or a file
                       (e.g. from `trustfleet broker-config`); stop/restart
    nats_mqtt          session: private nats-server, JetStream + MQTT listener
    embedded_broker    session: trustfleet_server.broker.embedded.EmbeddedBroker
    any_broker         parametrized over the three kinds above

Tests on a shared broker must use topics nobody else uses (`unique_fleet`)
and clear what they retained (`clear_retained`): the system broker persists.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from trustfleet_server.broker import mosquitto as _mosquitto
from trustfleet_server.broker.mosquitto import (
    PrivateMosquitto,
    config_text,
    read_log,
    start_process,
    stop_process,
)

# The launcher is trustfleet_server.broker.mosquitto (shared with the demo, the simulator and the
# benchmarks); these names stay here because brokers.* is the tests' API.
START_TIMEOUT, STOP_TIMEOUT = _mosquitto.START_TIMEOUT, _mosquitto.STOP_TIMEOUT
BrokerStartError = _mosquitto.MosquittoError  # a broker did not come up; the message carries its stderr
port_open, wait_for_port = _mosquitto.port_open, _mosquitto.wait_for_port

HOST = "127.0.0.1"
SYSTEM_MOSQUITTO_PORT = 1883

# What each kind of broker offers (asserted, not assumed, in test_brokers_interop).
MQTT5 = {"mosquitto": True, "nats": False, "embedded": True}
SHARED_SUBSCRIPTIONS = {"mosquitto": True, "nats": False, "embedded": True}


@dataclass
class Broker:
    """Where a broker listens. `kind` is "mosquitto", "nats" or "embedded"."""

    host: str
    port: int
    kind: str
    system: bool = False  # the machine's own broker: shared, persistent

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def mqtt5(self) -> bool:
        return MQTT5[self.kind]

    @property
    def shared_subscriptions(self) -> bool:
        return SHARED_SUBSCRIPTIONS[self.kind]


# --------------------------------------------------------------------------- ports and processes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    return _mosquitto.free_port(HOST)


def mqtt_connect_probe(host: str, port: int, timeout: float = 2.0) -> int | None:
    """Send one MQTT 3.1.1 CONNECT (anonymous, clean session); return the CONNACK code or None."""
    connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x00"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(connect)
            ack = b""
            while len(ack) < 4:
                chunk = s.recv(4 - len(ack))
                if not chunk:
                    return None
                ack += chunk
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return ack[3] if ack[0] == 0x20 else None
    except OSError:
        return None


# --------------------------------------------------------------------------- Mosquitto


def private_mosquitto_conf(port: int) -> str:
    """A throwaway anonymous broker (shared/MQTT.md)."""
    return config_text(port, HOST)


class MosquittoProcess(PrivateMosquitto):
    """A private `mosquitto -c <conf>` (trustfleet_server.broker.mosquitto.PrivateMosquitto) for tests.

    Args:
        config: the configuration text. Its first `listener PORT [HOST]` line
            says where it listens; with none, one on a free port is added.
        workdir: where the config copy and the stderr log go.

    Differs from PrivateMosquitto in two ways: `.stderr` is the log's text,
    not its path, and broker() gives the fixtures' Broker.
    """

    def __init__(self, config: str, workdir: Path, name: str = "mosquitto") -> None:
        super().__init__(config, workdir, name=name)

    def broker(self) -> Broker:
        return Broker(self.host, self.port, "mosquitto")

    @property
    def stderr(self) -> str:  # type: ignore[override]
        return read_log(self.log, limit=100_000)


# --------------------------------------------------------------------------- NATS


def nats_conf(mqtt_port: int, store_dir: Path, name: str = "trustfleet_test") -> str:
    """nats-server with JetStream (MQTT needs it and a server_name) and an MQTT listener.

    The client port is random (-1) so it never meets the system server on 4222.
    """
    return (
        f"server_name: {name}\n"
        f'listen: "{HOST}:-1"\n'
        f'jetstream {{ store_dir: "{store_dir}" }}\n'
        f'mqtt {{ listen: "{HOST}:{mqtt_port}" }}\n'
    )


class NatsProcess:
    kind = "nats"

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host, self.port = HOST, free_port()
        self.conf = self.workdir / "nats.conf"
        self.conf.write_text(nats_conf(self.port, self.workdir / "jetstream"))
        self.log = self.workdir / "nats.stderr"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> NatsProcess:
        self.proc = start_process([self.binary, "-c", str(self.conf)], log=self.log,
                                  listens=[(self.host, self.port)], name="nats-server")
        return self

    def stop(self) -> None:
        stop_process(self.proc)


# --------------------------------------------------------------------------- paho helpers


def unique_fleet(prefix: str = "t") -> str:
    """A fleet name no other test (or earlier run on a persistent broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


@dataclass
class Client:
    """A paho client on a background loop that records what it gets and what the broker answers."""

    paho: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    connack: list[Any] = field(default_factory=list)
    subacks: dict[int, list[Any]] = field(default_factory=dict)
    pubacks: dict[int, Any] = field(default_factory=dict)
    disconnects: list[Any] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, predicate, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_messages(self, n: int = 1, topic: str | None = None, timeout: float = 5.0) -> list[Received]:
        """Wait until n messages (on `topic`, if given) have arrived; return them all."""
        def matching() -> list[Received]:
            return [m for m in self.messages if topic is None or m.topic == topic]
        self.wait(lambda: len(matching()) >= n, timeout)
        return matching()

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5.0) -> list[Any]:
        """Subscribe and wait for the SUBACK; return its reason codes."""
        rc, mid = self.paho.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"subscribe {topic}: {mqtt.error_string(rc)}")
        if not self.wait(lambda: mid in self.subacks, timeout):
            raise TimeoutError(f"no SUBACK for {topic} in {timeout} s")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                timeout: float = 5.0) -> Any:
        """Publish and wait until it is acknowledged (QoS 1/2) or sent; return the PUBACK reason code."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if qos and not self.wait(lambda: info.mid in self.pubacks, timeout):
            raise TimeoutError(f"no PUBACK for {topic} in {timeout} s")
        return self.pubacks.get(info.mid)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        self.paho.loop_stop()

    def drop(self) -> None:
        """Cut the TCP connection without DISCONNECT, as a crashing device would."""
        sock = self.paho.socket()
        self.paho.loop_stop()  # sends nothing: no DISCONNECT
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def connect(broker: Broker | Any, *, username: str | None = None, password: str | None = None,
            protocol: int = mqtt.MQTTv311, client_id: str = "", will: tuple | None = None,
            keepalive: int = 30, clean: bool = True, timeout: float = 5.0,
            expect_success: bool = True) -> Client:
    """Connect a paho client and wait for the CONNACK.

    With expect_success, a refused connection raises ConnectionRefusedError
    naming the reason; otherwise inspect `client.connack`.
    """
    kw: dict[str, Any] = {"client_id": client_id or f"tf-{uuid.uuid4().hex[:10]}", "protocol": protocol}
    if protocol != mqtt.MQTTv5:
        kw["clean_session"] = clean
    p = mqtt.Client(CallbackAPIVersion.VERSION2, **kw)
    c = Client(p)

    def note(fn):
        def cb(*args):
            with c.cond:
                fn(*args)
                c.cond.notify_all()
        return cb

    p.on_connect = note(lambda cl, ud, flags, rc, props: c.connack.append(rc))
    p.on_message = note(lambda cl, ud, m: c.messages.append(Received(m.topic, m.payload, m.retain, m.qos)))
    p.on_subscribe = note(lambda cl, ud, mid, rcs, props: c.subacks.__setitem__(mid, rcs))
    p.on_publish = note(lambda cl, ud, mid, rc, props: c.pubacks.__setitem__(mid, rc))
    p.on_disconnect = note(lambda cl, ud, flags, rc, props: c.disconnects.append(rc))
    if username is not None:
        p.username_pw_set(username, password)
    if will:
        p.will_set(*will)
    host, port = broker.host, broker.port
    if protocol == mqtt.MQTTv5:
        p.connect(host, port, keepalive=keepalive, clean_start=clean)
    else:
        p.connect(host, port, keepalive=keepalive)
    p.loop_start()
    if not c.wait(lambda: c.connack or c.disconnects, timeout):
        c.close()
        raise TimeoutError(f"no CONNACK from {host}:{port} in {timeout} s")
    rc = c.connack[0] if c.connack else (c.disconnects[0] if c.disconnects else None)
    if expect_success and (rc is None or rc.is_failure):
        c.close()
        raise ConnectionRefusedError(f"{host}:{port} refused {username or 'anonymous'}: {rc}")
    if rc is not None and rc.is_failure:
        # paho would reconnect forever with loop_start; a refusal is final here.
        p.loop_stop()
    return c


def retained(broker: Broker | Any, topic: str, timeout: float = 1.0, **kw: Any) -> bytes | None:
    """What a new subscriber gets on `topic` right now (None: nothing retained)."""
    c = connect(broker, **kw)
    try:
        c.subscribe(topic)
        got = c.wait_messages(1, topic, timeout=timeout)
    finally:
        c.close()
    return got[0].payload if got and got[0].payload else None


def clear_retained(broker: Broker | Any, topic_names: Iterable[str], **kw: Any) -> None:
    """Publish empty retained messages so a persistent broker forgets what a test left."""
    c = connect(broker, **kw)
    try:
        for t in topic_names:
            c.publish(t, b"", qos=1, retain=True)
    finally:
        c.close()
