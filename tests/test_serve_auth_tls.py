"""`trustfleet publish` and `serve` against an authenticated TLS Mosquitto, through the real CLI.

The broker is what `trustfleet broker-config --tls-cert --tls-key` writes:
one password per identity, the fleet's ACL, anonymous clients refused, and
a TLS listener on a free loopback port whose certificate (for "localhost")
comes from a CA made here with fleetkit's certificate builder. Every
command runs as a subprocess (`python -m trustfleet_server.cli`), so exit
codes and stderr are exactly what an operator sees. The commands trust the
system CA store (paho's `tls_set()` without a CA file); the test points
OpenSSL's default store at its own CA with SSL_CERT_FILE.

What this pins in trustfleet_server.serve.link.Link:

- `username_pw_set`: publish and serve log in as the operator and the
  server identity; without it the broker sees an anonymous client and
  refuses it, so nothing gets published or ingested;
- `tls_set`: mqtts:// really speaks TLS; without it the TLS listener hangs
  up before any CONNACK. A broker certificate from another CA is refused
  with the certificate-verify reason, in one line;
- the "broker refused" paths: a wrong password ends publish and
  `serve --once` with one line naming the refusal (exit 2, no traceback),
  and a long-running serve says so on every retry instead of crashing or
  going quiet; a device identity pointed at `publish` gets the ACL's
  refusal of its PUBACK (MQTT 5 "Not authorized"), and the retained
  bundle stays the operator's; `serve --once` under a device identity
  ends on the refused timestamp (exit 2) instead of reporting success.

Waits are on events with bounded timeouts: a process exit, a log line, a
message delivered, an acknowledgement. Nothing sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from support import brokers
from support import fleetkit as fk
from trustfleet_device import policy, topics
from trustfleet_server import brokerconfig, keys
from trustfleet_server.fleet import db as fleetdb

REPO = Path(__file__).resolve().parents[1]
WAIT = 20.0  # bound on every wait for the broker or a command
DEVICES = ("pi-01", "pi-02")
OPERATOR, SERVER = brokerconfig.DEFAULT_OPERATOR, brokerconfig.DEFAULT_SERVER


# --------------------------------------------------------------------------- the broker and its PKI


@dataclass
class TLSFleet:
    """A private Mosquitto from broker-config with a TLS listener, and the fleet's documents."""

    dir: Path
    repo: fk.Repo
    port: int
    secrets: dict[str, str]
    ca: Path           # the CA that issued the broker's certificate
    other_ca: Path     # a CA the broker has nothing to do with

    @property
    def fleet(self) -> str:
        return self.repo.fleet

    @property
    def root(self) -> Path:
        return self.dir / "root.cose"

    @property
    def db(self) -> Path:
        return self.dir / "fleet.db"

    @property
    def timestamp_key(self) -> Path:
        return self.dir / "timestamp.pem"

    def url(self, user: str | None = None, password: str | None = None) -> str:
        creds = f"{user}:{password}@" if password is not None else f"{user}@" if user else ""
        return f"mqtts://{creds}localhost:{self.port}"

    def env(self, ca: Path | None = None, password: str | None = None) -> dict[str, str]:
        """The commands' environment; OpenSSL's default CA store is `ca` (default: the right CA)."""
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}",
               "SSL_CERT_FILE": str(ca or self.ca), "SSL_CERT_DIR": str(self.dir / "no-ca-dir")}
        env.pop("TRUSTFLEET_MQTT_PASSWORD", None)
        if password is not None:
            env["TRUSTFLEET_MQTT_PASSWORD"] = password
        return env

    def write_bundle(self, version: int) -> Path:
        path = self.dir / f"bundle-v{version}.cose"
        path.write_bytes(self.repo.bundle(version))
        return path

    def publish_args(self, url: str, *files: Path) -> list[str]:
        return ["publish", "--broker", url, "--root", str(self.root), *map(str, files)]

    def serve_args(self, url: str, *extra: str) -> list[str]:
        return ["serve", "--broker", url, "--fleet", self.fleet, "--root", str(self.root),
                "--db", str(self.db), "--timestamp-key", str(self.timestamp_key), *extra]


def tf(*args: str, env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess:
    """Run `trustfleet ARGS`; require exit `code` and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (
        f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def tls_fleet(tmp_path, private_mosquitto) -> TLSFleet:
    """Broker-config's files for two devices with a TLS listener, run by a private Mosquitto."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key, leaf_key, other_key = (keys.generate_key() for _ in range(3))
    ca = fk.make_cert("trustfleet test broker CA", ca_key)
    fk.write_pem(pki / "ca.pem", ca)
    leaf = fk.make_cert("localhost", leaf_key, ca, ca_key, ca=False, dns="localhost")
    fk.write_pem(pki / "broker.pem", leaf)
    keys.write_private_key(pki / "broker-key.pem", leaf_key)
    fk.write_pem(pki / "other-ca.pem", fk.make_cert("an unrelated CA", other_key))
    (tmp_path / "no-ca-dir").mkdir()

    repo = fk.Repo(fleet=brokers.unique_fleet("tls"), now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    keys.write_private_key(tmp_path / "timestamp.pem", repo.keys["timestamp"][0])
    fleet = TLSFleet(tmp_path, repo, brokers.free_port(), {}, pki / "ca.pem", pki / "other-ca.pem")

    out = tmp_path / "broker"
    made = tf("broker-config", "--fleet", repo.fleet, "--out", str(out),
              *(a for d in DEVICES for a in ("--device", d)),
              "--listener", f"127.0.0.1:{fleet.port}",
              "--tls-cert", str(pki / "broker.pem"), "--tls-key", str(pki / "broker-key.pem"),
              "--no-persistence", "--json", env=fleet.env())
    assert json.loads(made.stdout)["url"] == f"mqtts://127.0.0.1:{fleet.port}"
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and f"certfile {pki / 'broker.pem'}" in conf
    private_mosquitto(out / "mosquitto.conf")
    identities = json.loads((out / "secrets.json").read_text())["identities"]
    fleet.secrets.update({i["username"]: i["password"] for i in identities})
    return fleet


# --------------------------------------------------------------------------- a device over TLS


class TLSClient:
    """A paho MQTT 5 client logged in as one identity over TLS, trusting only the test CA."""

    def __init__(self, fleet: TLSFleet, username: str) -> None:
        self.cond = threading.Condition()
        self.connack: list = []
        self.subacks: dict[int, list] = {}
        self.pubacks: dict[int, object] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        # A device may connect only under its own client id (broker-config binds it).
        cid = (brokerconfig.device_client_id(fleet.fleet, username) if username in DEVICES
               else f"{username}-{uuid.uuid4().hex[:8]}")
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.username_pw_set(username, fleet.secrets[username])
        c.tls_set(ca_certs=str(fleet.ca))
        c.on_connect = self._note(lambda cl, ud, flags, rc, props: self.connack.append(rc))
        c.on_subscribe = self._note(
            lambda cl, ud, mid, rcs, props: self.subacks.__setitem__(mid, rcs))
        c.on_publish = self._note(lambda cl, ud, mid, rc, props: self.pubacks.__setitem__(mid, rc))
        c.on_message = self._note(lambda cl, ud, msg: self.messages.append(msg))
        self.paho = c
        c.connect("localhost", fleet.port, keepalive=30)
        c.loop_start()
        if not self._wait(lambda: self.connack) or self.connack[0].is_failure:
            self.close()
            raise AssertionError(f"{username} could not log in over TLS: {self.connack}")

    def _note(self, fn):
        def callback(*args):
            with self.cond:
                fn(*args)
                self.cond.notify_all()
        return callback

    def _wait(self, predicate, timeout: float = WAIT) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def subscribe(self, topic: str) -> None:
        rc, mid = self.paho.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(rc)
        assert self._wait(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        assert not self.subacks[mid][0].is_failure, self.subacks[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = True):
        """Publish at QoS 1; return the PUBACK's reason code."""
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        assert self._wait(lambda: info.mid in self.pubacks), f"no PUBACK for {topic}"
        return self.pubacks[info.mid]

    def received(self, topic: str) -> mqtt.MQTTMessage:
        """The first message on `topic` (waiting for it)."""
        def first():
            return next((m for m in self.messages if m.topic == topic), None)
        assert self._wait(first), f"nothing arrived on {topic} within {WAIT:.0f} s"
        return first()

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


def retained(fleet: TLSFleet, topic: str, device: str = DEVICES[1]) -> bytes:
    """What a device logging in over TLS now gets on `topic` (it must hold a retained message)."""
    c = TLSClient(fleet, device)
    try:
        c.subscribe(topic)
        msg = c.received(topic)
        assert msg.retain
        return msg.payload
    finally:
        c.close()


# --------------------------------------------------------------------------- what works


def test_publish_over_tls_as_the_operator_leaves_documents_retained_for_devices(tls_fleet):
    f = tls_fleet
    bundle = f.write_bundle(1)
    url = f.url(OPERATOR, f.secrets[OPERATOR])            # the password inside the URL
    done = tf(*f.publish_args(url, f.root, bundle), env=f.env())
    assert f"published bundle v1 -> {topics.bundle(f.fleet)}" in done.stdout
    assert f.secrets[OPERATOR] not in done.stdout + done.stderr
    assert retained(f, topics.bundle(f.fleet)) == bundle.read_bytes()
    assert retained(f, topics.root(f.fleet, 1)) == f.repo.root_raw


def test_serve_over_tls_ingests_a_device_status_and_signs_a_timestamp_devices_read(tls_fleet):
    f = tls_fleet
    bundle = f.write_bundle(1)
    tf(*f.publish_args(f.url(OPERATOR), f.root, bundle), env=f.env(password=f.secrets[OPERATOR]))
    device, watcher = TLSClient(f, "pi-01"), TLSClient(f, "pi-02")
    try:
        status = {"device": "pi-01", "fleet": f.fleet, "state": "ok", "version": 1, "seq": 1}
        rc = device.publish(topics.status(f.fleet, "pi-01"), json.dumps(status).encode())
        assert not rc.is_failure, rc
        watcher.subscribe(topics.timestamp(f.fleet))
        # The password from the environment, as the docs recommend for a service.
        run = tf(*f.serve_args(f.url(SERVER), "--once", "--json"),
                 env=f.env(password=f.secrets[SERVER]))
        summary = json.loads(run.stdout)
        assert (summary["statuses"], summary["timestamps"], summary["protocol"]) == (1, 1, "MQTT 5")
        with fleetdb.open_db(str(f.db)) as db:
            rows = {d["device"]: d for d in db.devices(f.fleet)}
        assert set(rows) == {"pi-01"}
        assert (rows["pi-01"]["version"], rows["pi-01"]["state"]) == (1, "ok")
        # The server's timestamp went through the ACL and TLS to a device, and verifies.
        raw = watcher.received(topics.timestamp(f.fleet)).payload
        ts = policy.verify_timestamp(policy.load_trusted_root(f.repo.root_raw), raw)
        assert ts.bundle_version == 1
    finally:
        device.close()
        watcher.close()


# --------------------------------------------------------------------------- what is refused


def test_a_wrong_password_is_one_line_for_publish_and_serve(tls_fleet):
    f = tls_fleet
    wrong = f.env(password=f.secrets[DEVICES[0]])    # a real password, of another identity
    published = tf(*f.publish_args(f.url(OPERATOR), f.write_bundle(1)), env=wrong, code=2)
    assert one_line(published) == (f"trustfleet: error: {f.url(OPERATOR)} refused the connection: "
                                   "Not authorized")
    served = tf(*f.serve_args(f.url(SERVER), "--once"), env=wrong, code=2)
    assert one_line(served) == (f"trustfleet: error: {f.url(SERVER)} refused the connection: "
                                "Not authorized")
    with fleetdb.open_db(str(f.db)) as db:
        assert db.devices(f.fleet) == []


def test_a_device_identity_cannot_publish_a_bundle_through_publish(tls_fleet):
    f = tls_fleet
    good = f.write_bundle(1)
    tf(*f.publish_args(f.url(OPERATOR), good), env=f.env(password=f.secrets[OPERATOR]))
    newer = f.write_bundle(2)                # valid and signed: only the ACL stands in its way
    device = f.url(DEVICES[0])
    refused = tf(*f.publish_args(device, newer), env=f.env(password=f.secrets[DEVICES[0]]), code=2)
    # Not even connected: a device identity is bound to its own client id.
    assert one_line(refused) == f"trustfleet: error: {device} refused the connection: Not authorized"
    assert retained(f, topics.bundle(f.fleet)) == good.read_bytes()


def test_serve_once_under_a_device_identity_fails_on_the_refused_timestamp(tls_fleet):
    """The broker refuses a device what serve needs: `--once` must not exit 0."""
    f = tls_fleet
    tf(*f.publish_args(f.url(OPERATOR), f.write_bundle(1)), env=f.env(password=f.secrets[OPERATOR]))
    device = f.url(DEVICES[0])
    run = tf(*f.serve_args(device, "--once", "--client-id",
                           brokerconfig.device_client_id(f.fleet, DEVICES[0])),
             env=f.env(password=f.secrets[DEVICES[0]]), code=2)
    assert run.stdout == ""
    # Under its own client id it gets in, but the server's shared group is not a device's.
    assert run.stderr.strip().splitlines()[-1] == (
        f"trustfleet: error: {device} refused the subscription to "
        f"$share/trustfleet/{topics.statuses(f.fleet)}: Not authorized")


def test_a_broker_certificate_from_another_ca_is_refused_in_one_line(tls_fleet):
    f = tls_fleet
    env = f.env(ca=f.other_ca, password=f.secrets[OPERATOR])
    published = tf(*f.publish_args(f.url(OPERATOR), f.write_bundle(1)), env=env, code=2)
    line = one_line(published)
    assert line.startswith(f"trustfleet: error: {f.url(OPERATOR)}: cannot connect: ")
    assert "CERTIFICATE_VERIFY_FAILED" in line
    served = tf(*f.serve_args(f.url(SERVER), "--once"),
                env=f.env(ca=f.other_ca, password=f.secrets[SERVER]), code=2)
    assert "CERTIFICATE_VERIFY_FAILED" in one_line(served)


# --------------------------------------------------------------------------- a long-running serve


class Running:
    """`trustfleet serve` as a child process; its stderr read line by line on a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "trustfleet_server.cli", *args],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append("<eof>")
            self.cond.notify_all()

    def wait_lines(self, needle: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        def matching() -> list[str]:
            return [ln for ln in self.lines if needle in ln]
        with self.cond:
            self.cond.wait_for(lambda: len(matching()) >= count or "<eof>" in self.lines, timeout)
            found = matching()
        assert len(found) >= count, (
            f"{count} x {needle!r} not seen; stderr so far:\n" + "\n".join(self.lines))
        return found

    def stop(self) -> int:
        """SIGTERM, then the exit code (bounded)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
            self.reader.join(WAIT)


def test_a_long_running_serve_reports_every_refused_login_and_stops_cleanly(tls_fleet):
    f = tls_fleet
    serve = Running(f.serve_args(f.url(SERVER)), f.env(password="not-the-password"))
    try:
        tries = serve.wait_lines(f"WARNING {f.url(SERVER)} refused the connection: Not authorized;"
                                 " retrying in", count=2)
        assert serve.proc.poll() is None, "serve gave up instead of retrying"
    finally:
        code = serve.stop()
    assert code == 0, "\n".join(serve.lines)
    assert not any("Traceback" in ln for ln in serve.lines), "\n".join(serve.lines)
    assert len(tries) >= 2


def test_serve_says_once_that_the_acl_keeps_it_from_restoring_a_root_and_goes_on(tls_fleet):
    """broker-config lets only the operator write roots: serve, missing root v2 on the broker,
    tries to put it back once, logs the refusal once, and keeps serving (timestamps)."""
    f = tls_fleet
    tf(*f.publish_args(f.url(OPERATOR), f.write_bundle(1)), env=f.env(password=f.secrets[OPERATOR]))
    v2 = f.dir / "root-v2.cose"
    v2.write_bytes(f.repo.rotate("bundle"))
    watcher = TLSClient(f, "pi-02")
    serve = Running(f.serve_args(f.url(SERVER), "--root", str(v2), "--step-every", "0.2",
                                 "--timestamp-every", "0.5"), f.env(password=f.secrets[SERVER]))
    try:
        refused = serve.wait_lines(f"refused the publish on {topics.root(f.fleet, 2)}")
        assert "serve will not publish" in refused[0]
        watcher.subscribe(topics.timestamp(f.fleet))
        raw = watcher.received(topics.timestamp(f.fleet)).payload
        assert policy.verify_timestamp(policy.load_trusted_root(f.repo.root_raw), raw).bundle_version == 1
        time.sleep(2.0)  # ten rollout steps: a retry on each would log ten more refusals
        assert serve.proc.poll() is None
        assert len([ln for ln in serve.lines if "refused the publish" in ln]) == 1, serve.lines
    finally:
        watcher.close()
        assert serve.stop() == 0
    assert "Traceback" not in "\n".join(serve.lines)
