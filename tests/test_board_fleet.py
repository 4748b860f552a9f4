"""A MicroPython board in a real fleet, end to end (issue 11, "Done when"): `trustfleet board run`
runs the unmodified device/board/main.py in a MicroPython unix binary, against a private
Mosquitto that `broker-config` and `device add` set up, from the files `device provision`
stages (config.json, factory root, broker CA), while `trustfleet serve` drives a staged
rollout, all through the CLI as an operator would.

Two boards:
- "native-tls": the PyPI unix port (`micropython` in the venv; real sockets and mbedTLS) over
  TLS: mbedTLS checks the broker's certificate against the provisioned CA file; the health
  check of each trial bundle is a TLS connection to a loopback server whose CA the good bundle
  carries as a full anchor. Its heap (HEAP) is not yet a stock ESP32's: the package imported
  from .py files on a 64-bit port does not fit 111,936 B.
- "standin-plain": the firmware stand-in (tools/firmware.py: 32-bit, package frozen, heap
  growing from 56 KiB in two areas) capped at 87,360 B, 24 KiB under a stock ESP32's 111,936,
  over plain MQTT (it has no TLS); no endpoints,
  so its bad bundle is one with too few signatures put on its topic by hand (`rollout start`
  refuses such a bundle): refused and reported.

For each: the board joins with its own identity from the factory root; rollout v2 reaches it
through its bucket topic; it installs, passes the health check, commits, and `fleet status`
shows it on v2 with the rollout done. Then the bad v3: reverted and marked bad, the rollout
halted (TLS), or refused with a report (plain); the board stays on v2.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import brokers, mpunix
from support import fleetkit as fk
from support.clirun import run_cli
from support.environment import skip_or_fail
from support.waiting import wait_for
from trustfleet_device import topics
from trustfleet_server import keys
from trustfleet_server.demo.tlsserver import LoopbackTLSServer

REPO = Path(__file__).resolve().parents[1]
DEVICE = "esp-1"
WAIT = 90.0
# The heap each board runs in (bytes). A stock ESP32 without PSRAM has 111,936; the stand-in
# runs in 24 KiB less, the margin issue 11 asks for at every step's worst point.
HEAP = {"native-tls": 1_000_000, "standin-plain": 111_936 - 24 * 1024}



def micropython_for(kind: str) -> str:
    if kind == "native-tls":
        ok, what = mpunix.available()
        if not ok:
            skip_or_fail(what)
        return what
    firmware = subprocess.run([sys.executable, str(REPO / "tools" / "firmware.py"), "build"],
                              capture_output=True, text=True, timeout=900)
    if firmware.returncode != 0:
        skip_or_fail(f"the firmware stand-in could not be built: {firmware.stderr.strip()[-400:]}")
    return firmware.stdout.strip().splitlines()[-1]


class BoardFleet:
    """broker-config + device add + a private Mosquitto; serve; the board's state folder."""

    def __init__(self, tmp: Path, start_mosquitto, tls: bool) -> None:
        self.dir, self.tls = tmp, tls
        self.repo = fk.Repo(fleet=brokers.unique_fleet("board"), now=int(time.time()))
        (tmp / "root.cose").write_bytes(self.repo.root_raw)
        self.port = brokers.free_port()
        self.env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
        tls_args: list[str] = []
        if tls:
            ca_key, leaf_key, other_key = (keys.generate_key() for _ in range(3))
            self.ca = fk.make_cert("board test CA", ca_key)
            self.other_ca = fk.make_cert("an unrelated CA", other_key)
            leaf = fk.make_cert("localhost", leaf_key, self.ca, ca_key, ca=False, dns="localhost")
            fk.write_pem(tmp / "ca.pem", self.ca)
            fk.write_pem(tmp / "broker.pem", leaf)
            keys.write_private_key(tmp / "broker-key.pem", leaf_key)
            (tmp / "ca.der").write_bytes(fk.der(self.ca))
            tls_args = ["--tls-cert", str(tmp / "broker.pem"), "--tls-key", str(tmp / "broker-key.pem")]
            self.env["SSL_CERT_FILE"] = str(tmp / "ca.pem")
            # The health-check endpoint: a leaf for localhost under the same CA.
            self.endpoint = LoopbackTLSServer(fk.pem(leaf) + fk.pem(self.ca), _key_pem(leaf_key)).start()
        out = tmp / "broker"
        run_cli("broker-config", "--fleet", self.fleet, "--out", str(out), "--listener",
           f"127.0.0.1:{self.port}", *tls_args, "--no-persistence", env=self.env)
        run_cli("device", "add", "--fleet", self.fleet, "--id", DEVICE, "--broker-dir", str(out),
           "--out", str(tmp / f"{DEVICE}.json"), env=self.env)
        self.secrets = {i["username"]: i["password"]
                        for i in json.loads((out / "secrets.json").read_text())["identities"]}
        self.mosquitto = start_mosquitto(out / "mosquitto.conf")
        # The board's files as provisioning stages them; the staged trustfleet/ folder is
        # what the board's flash partition starts with.
        staging = tmp / "staging"
        run_cli("device", "provision", "--port", "unused", "--dry-run", "--staging", str(staging),
           "--fleet", self.fleet, "--id", DEVICE, "--root", str(tmp / "root.cose"),
           "--broker-dir", str(out), "--broker-host", "localhost" if tls else "127.0.0.1",
           "--broker-port", str(self.port), "--no-compile",
           *(["--broker-ca", str(tmp / "ca.pem"), "--endpoint", f"localhost:{self.endpoint.port}"]
             if tls else ["--no-broker-tls"]), env=self.env)
        self.state = staging / "trustfleet"
        self.serve: subprocess.Popen | None = None

    fleet = property(lambda self: self.repo.fleet)

    def url(self) -> str:
        scheme, host = ("mqtts", "localhost") if self.tls else ("mqtt", "127.0.0.1")
        return f"{scheme}://trustfleet-server:{self.secrets['trustfleet-server']}@{host}:{self.port}"

    def start_serve(self) -> None:
        self.serve = subprocess.Popen(
            [sys.executable, "-m", "trustfleet_server.cli", "serve", "--broker", self.url(),
             "--fleet", self.fleet, "--root", str(self.dir / "root.cose"), "--db", str(self.dir / "fleet.db"),
             "--step-every", "1s"], env=self.env, stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "serve.log", "wb"))  # noqa: SIM115 - the child keeps it

    def bundle(self, version: int, good: bool = True) -> Path:
        anchors = []
        if self.tls:
            anchors = [fk.full_anchor(self.ca if good else self.other_ca)]
            raw = self.repo.bundle(version, anchors=anchors, pinsets=[])
        elif good:
            raw = self.repo.bundle(version, anchors=[fk.full_anchor(fk.chain("acme").ca)], pinsets=[])
        else:  # one signature where the root asks for a threshold
            raw = self.repo.bundle(version, anchors=[fk.full_anchor(fk.chain("acme").ca)], pinsets=[],
                                   signers=self.repo.signers("bundle")[:1], check=False)
        path = self.dir / f"bundle-v{version}.cose"
        path.write_bytes(raw)
        return path

    def rollout(self, bundle: Path) -> None:
        run_cli("rollout", "start", "--db", str(self.dir / "fleet.db"), "--fleet", self.fleet, "--bundle",
           str(bundle), "--root", str(self.dir / "root.cose"), "--waves", "100%", "--allow-empty-waves",
           "--wave-deadline", "120", env=self.env)

    def put_retained(self, topic: str, payload: bytes) -> None:
        """Publish as the operator identity (the broker's ACL lets it write document topics)."""
        c = brokers.connect(self.mosquitto, username="trustfleet-operator",
                            password=self.secrets["trustfleet-operator"], protocol=5)
        try:
            assert not c.publish(topic, payload, retain=True).is_failure
        finally:
            c.close()

    def board_run(self, binary: str, heap: int, until: str | None,
                  seconds: float = WAIT) -> dict:
        args = ["board", "run", "--micropython", binary, "--heap", str(heap), "--state", str(self.state),
                "--seconds", str(int(seconds)), "--json", *(["--until", until] if until else [])]
        proc = run_cli(*args, env=self.env, code=None, timeout=WAIT + 60)
        return json.loads(proc.stdout)

    def fleet_status(self) -> dict:
        return json.loads(run_cli("fleet", "status", "--db", str(self.dir / "fleet.db"), "--fleet", self.fleet,
                             "--json", env=self.env).stdout)

    def close(self) -> None:
        if self.serve is not None:
            self.serve.terminate()
            self.serve.wait(30)
        if self.tls:
            self.endpoint.stop()


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize("kind", ["native-tls", "standin-plain"])
def test_a_board_joins_the_fleet_and_a_staged_rollout_reaches_it(kind, tmp_path, private_mosquitto):
    binary = micropython_for(kind)
    f = BoardFleet(tmp_path, private_mosquitto, tls=kind == "native-tls")
    try:
        f.start_serve()
        f.rollout(f.bundle(2))
        cfg = json.loads((f.state / "config.json").read_text())
        assert cfg["mqtt"]["tls"] is f.tls and cfg["mqtt"].get("ca") == ("/trustfleet/broker-ca.der" if f.tls else None)
        run = f.board_run(binary, HEAP[kind], "committed")
        assert run["ended"] == "committed", run
        assert run["state"]["version"] == 2 and not run["state"]["trial"], run
        assert run["heap"]["total"] is not None and run["heap"]["total"] <= HEAP[kind]

        # The store saw it: fleet status counts the board on v2, and the rollout is done.
        wait_for(lambda: f.fleet_status()["by_version"].get("2") == 1 and
                 f.fleet_status()["rollout"]["state"] == "done", "fleet status: the board on v2, done", 30)

        # A bad v3. TLS: a rollout of a bundle whose health check fails (its anchors do not
        # cover the endpoint): reverted, marked bad. Plain: a bundle with too few signatures,
        # which `rollout start` would refuse, put on the board's topic by hand: refused.
        bad = f.bundle(3, good=False)
        if f.tls:
            f.rollout(bad)
        else:
            f.put_retained(topics.bucket_bundle(f.fleet, topics.bucket(DEVICE)), bad.read_bytes())
        run = f.board_run(binary, HEAP[kind], "reverted" if f.tls else None, seconds=15)
        if f.tls:
            assert run["ended"] == "reverted", run
            assert run["state"]["version"] == 2 and run["state"]["bad"] == [3], run
            status = wait_for(lambda: _reverted(f, 3), "the board's status: v3 reverted, marked bad", 30)
            assert status["version"] == 2 and "health check failed" in status["detail"], status
        else:
            assert run["ended"] == "time-up" and run["state"]["version"] == 2, run
            assert run["state"]["bad"] == [], run
            wait_for(lambda: _refused(f, 3), "the board's report that it refused v3", 30)
            return
        # serve halted the rollout on the board's word and cleared its topics; v2 stays.
        wait_for(lambda: f.fleet_status()["rollout"]["state"] == "halted", "the rollout of v3 to halt", 30)
        assert f.fleet_status()["by_version"].get("2") == 1
    finally:
        f.close()


def _reverted(f: BoardFleet, version: int) -> dict | None:
    """The last status the board sent (tf_devices.raw), if it says it reverted `version` and marked it bad."""
    with sqlite3.connect(f.dir / "fleet.db") as con:
        row = con.execute("SELECT raw FROM tf_devices WHERE device_id = ?", (DEVICE,)).fetchone()
    status = json.loads(row[0]) if row and row[0] else {}
    return status if version in status.get("bad", []) and status.get("event") == "reverted" else None


def _refused(f: BoardFleet, version: int) -> bool:
    """A report from the board that it refused bundle `version` is in the store."""
    with sqlite3.connect(f.dir / "fleet.db") as con:
        rows = con.execute("SELECT body FROM tf_reports WHERE device_id = ?", (DEVICE,)).fetchall()
    return any("document-refused" in body and "bundle" in body for (body,) in rows)
