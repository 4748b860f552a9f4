"""A real device core on its own MQTT connection, as the Raspberry Pi agent runs it (runner.Device
and session.Session over MemStorage behind a paho client): for tests that drive a fleet through a
real broker (tests/test_serve.py, tests/test_serve_workers.py)."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from support import brokers
from support.fleetkit import Repo
from trustfleet_device import agent as core
from trustfleet_device import topics
from trustfleet_device.session import Session
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage


class LiveDevice:
    """One real device core on its own MQTT connection (3.1.1, retained status, last will)."""

    def __init__(self, broker: brokers.Broker, repo: Repo, device_id: str, group: str | None = None,
                 fail_versions: tuple[int, ...] = ()) -> None:
        config = core.Config(fleet=repo.fleet, device_id=device_id, health_timeout=60)
        storage = MemStorage()
        runner.initialise(storage, repo.root_raw, config)

        def health(bundle, trusted_time: int) -> tuple[bool, str]:
            if bundle.version in fail_versions:
                return False, "TLS to api.acme.example failed"
            return True, "endpoints reachable"

        self.id = device_id
        self.device = runner.Device(storage, config, health, time.time)
        self.session = Session(self.device, repo.fleet, device_id, group)
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{repo.fleet}-{device_id}",
                                  protocol=mqtt.MQTTv311)
        topic, payload, retain, qos = self.session.will()
        self.client.will_set(topic, payload, qos, retain)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()

    def _send(self, messages: list) -> None:
        for topic, payload, retain, qos in messages:
            self.client.publish(topic, payload, qos=qos, retain=retain)

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        client.subscribe([(t, 1) for t in self.session.subscriptions()])
        with self.lock:
            self._send(self.session.connected())

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self._send(self.session.on_message(msg.topic, msg.payload))

    @property
    def version(self) -> int | None:
        b = self.device.active_bundle()
        return b.version if b is not None else None

    @property
    def last_timestamp(self) -> int | None:
        return self.device.agent.state["last_timestamp"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish without DISCONNECT: the broker publishes the last will."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()


def ids_in_buckets(below: int, n_low: int, n_high: int) -> tuple[list[str], list[str]]:
    """Device ids whose bucket is below `below` (n_low of them) and not (n_high)."""
    low, high, i = [], [], 0
    while len(low) < n_low or len(high) < n_high:
        name = f"dev-{i:04d}"
        (low if topics.bucket(name) < below else high).append(name)
        i += 1
    return low[:n_low], high[:n_high]
