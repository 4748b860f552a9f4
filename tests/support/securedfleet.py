"""A private Mosquitto started from what `trustfleet broker-config` wrote, and its identities."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from support import brokers
from support.fleetkit import Repo
from trustfleet_server import cli

SERVER_USER = "trustfleet-server"


class SecuredFleet:
    """`broker-config` for `devices`, run by `start_mosquitto` (the private_mosquitto fixture,
    or anything taking a config path and returning an object with host, port, stop())."""

    def __init__(self, workdir: Path, start_mosquitto: Any, devices: list[str], prefix: str = "sec",
                 extra: list[str] | None = None) -> None:
        self.repo = Repo(fleet=brokers.unique_fleet(prefix), now=int(time.time()))
        self.dir = workdir
        out = workdir / "broker"
        args = [a for d in devices for a in ("--device", d)]
        rc = cli.main(["broker-config", "--out", str(out), "--fleet", self.fleet, *args,
                       "--port", str(brokers.free_port()), "--no-persistence", *(extra or [])])
        assert rc == 0
        doc = json.loads((out / "secrets.json").read_text())
        self.secrets = {i["username"]: i["password"] for i in doc["identities"]}
        self.config = out / "mosquitto.conf"
        self.proc = start_mosquitto(self.config)

    fleet = property(lambda self: self.repo.fleet)

    def client_id(self, device: str) -> str:
        """What the agent uses by default (trustfleet_pi.paho): tf-<fleet>-<device id>."""
        return f"tf-{self.fleet}-{device}"

    def device(self, name: str, protocol: int = mqtt.MQTTv5, client_id: str | None = None,
               **kw: Any) -> brokers.Client:
        return brokers.connect(self.proc, username=name, password=self.secrets[name], protocol=protocol,
                               client_id=client_id or self.client_id(name), **kw)

    def server_url(self) -> str:
        return f"mqtt://{SERVER_USER}:{self.secrets[SERVER_USER]}@{self.proc.host}:{self.proc.port}"
