"""`trustfleet broker-config`: the generated files, then a real Mosquitto enforcing them.

The broker tests start a private Mosquitto from exactly what the command
wrote and talk to it with real paho clients: who may read and write which
topic (docs/topics.md), refused logins, `$share` ingest, and retained
documents surviving a restart. "Never delivered" is checked without sleeping:
after the refused publish is acknowledged, a marker is published on a topic
the subscriber does receive; once the marker arrives, anything the broker
had accepted earlier would have arrived before it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from support import brokers
from support.environment import require_tool, skip_or_fail
from support.fleetkit import Repo
from trustfleet_device import topics
from trustfleet_server import brokerconfig, cli

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
NOT_AUTHORIZED = 135  # MQTT 5 reason code
DEVICES = ("pi-01", "pi-02", "esp32-a")


def broker_config(out: Path, *args: str, code: int = 0, capsys=None) -> str:
    """Run `trustfleet broker-config` in process; return its stdout (stderr: capsys.err)."""
    if capsys:
        capsys.readouterr()
    rc = cli.main(["broker-config", "--out", str(out), *map(str, args)])
    captured = capsys.readouterr() if capsys else None
    assert rc == code, captured
    if captured:
        capsys.err = captured.err
    return captured.out if captured else ""


@dataclass
class FleetBroker:
    fleet: str
    out: Path
    proc: brokers.MosquittoProcess
    secrets: dict

    def creds(self, name: str) -> dict:
        return {"username": name, "password": self.secrets[name]}

    def connect(self, name: str, protocol: int = V311, **kw) -> brokers.Client:
        if name not in (self.operator, self.server):
            kw.setdefault("client_id", brokerconfig.device_client_id(self.fleet, name))
        return brokers.connect(self.proc, protocol=protocol, **self.creds(name), **kw)

    @property
    def operator(self) -> str:
        return brokerconfig.DEFAULT_OPERATOR

    @property
    def server(self) -> str:
        return brokerconfig.DEFAULT_SERVER


def load_secrets(out: Path) -> dict:
    doc = json.loads((out / "secrets.json").read_text())
    return {i["username"]: i["password"] for i in doc["identities"]}


@pytest.fixture
def fleet_broker(tmp_path, private_mosquitto) -> FleetBroker:
    """A private Mosquitto running the config `broker-config` generated for three devices."""
    fleet = brokers.unique_fleet("acme")
    out = tmp_path / "broker"
    devs = [a for d in DEVICES for a in ("--device", d)]
    broker_config(out, "--fleet", fleet, *devs, "--port", brokers.free_port())
    proc = private_mosquitto(out / "mosquitto.conf")
    return FleetBroker(fleet, out, proc, load_secrets(out))


@pytest.fixture(scope="module")
def repo() -> Repo:
    return Repo()


def assert_never_delivered(watcher: brokers.Client, publisher: brokers.Client, topic: str,
                           marker_topic: str, forbidden: bytes) -> None:
    """After `forbidden` was acknowledged on `topic`, prove `watcher` never receives it."""
    publisher.publish(marker_topic, b"marker", qos=1)
    got = watcher.wait_messages(1, topic=marker_topic)
    assert [m.payload for m in got] == [b"marker"], "the marker never arrived"
    assert all(m.payload != forbidden for m in watcher.messages if m.topic == topic)


# --------------------------------------------------------------------------- generated files


def test_writes_config_acl_passwords_and_private_secrets(tmp_path, capsys):
    out = tmp_path / "b"
    stdout = broker_config(out, "--fleet", "acme", "--device", "pi-01", "--device", "pi-02",
                           "--json", capsys=capsys)
    doc = json.loads(stdout)
    assert doc["url"] == "mqtt://127.0.0.1:1883"
    assert doc["devices"] == 2
    for name in ("secrets", "passwords", "dynsec"):
        assert stat.S_IMODE(os.stat(doc["files"][name]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out / "data").st_mode) == 0o700
    secrets = json.loads((out / "secrets.json").read_text())
    roles = {i["username"]: i["role"] for i in secrets["identities"]}
    assert roles == {"trustfleet-operator": "operator", "trustfleet-server": "server",
                     "pi-01": "device", "pi-02": "device"}
    passwords = [i["password"] for i in secrets["identities"]]
    assert len(set(passwords)) == 4 and all(len(p) >= 32 for p in passwords)
    assert not any(p in stdout for p in passwords)


def test_password_file_holds_pbkdf2_sha512_hashes_of_the_secrets(tmp_path):
    out = tmp_path / "b"
    broker_config(out, "--fleet", "acme", "--device", "pi-01")
    secrets = load_secrets(out)
    lines = dict(ln.split(":", 1) for ln in (out / "passwords").read_text().splitlines())
    assert set(lines) == set(secrets)
    for user, hashed in lines.items():
        assert hashed.startswith("$7$101$")
        assert brokerconfig.check_password(secrets[user], hashed)
        assert not brokerconfig.check_password(secrets[user] + "x", hashed)
    assert secrets["pi-01"] not in (out / "passwords").read_text()


def test_builtin_hash_is_what_mosquitto_passwd_writes(tmp_path):
    tool = require_tool("mosquitto_passwd", "apt-get install mosquitto",
                        ["/usr/bin/mosquitto_passwd"])
    path = tmp_path / "pw"
    path.write_text("alice:s3cret\n")
    subprocess.run([tool, "-U", str(path)], check=True, capture_output=True)
    hashed = path.read_text().strip().split(":", 1)[1]
    salt = __import__("base64").b64decode(hashed.split("$")[3])
    assert brokerconfig.hash_password("s3cret", salt) == hashed


def test_acl_lets_devices_read_documents_and_write_only_their_own_topics(tmp_path):
    out = tmp_path / "b"
    broker_config(out, "--fleet", "acme", "--device", "pi-01", "--operator", "ops", "--server", "srv")
    acl = (out / "acl").read_text().splitlines()
    rules = [ln for ln in acl if ln and not ln.startswith("#")]
    # Nothing before the first `user` line: anonymous clients get no topic at all.
    assert rules[0] == "user ops"
    patterns = [r for r in rules if r.startswith("pattern")]
    assert patterns == [
        "pattern write tf/acme/status/%u",
        "pattern write tf/acme/report/%u",
    ]
    ops = rules[1:rules.index("user srv")]
    assert ops == ["topic write tf/acme/root/+", "topic write tf/acme/bundle",
                   "topic write tf/acme/bundle/#", "topic write tf/acme/timestamp",
                   "topic read tf/acme/#"]
    srv = rules[rules.index("user srv") + 1:rules.index(patterns[0])]
    assert srv == ["topic read tf/acme/#", "topic write tf/acme/timestamp", "topic write tf/acme/bundle",
                   "topic write tf/acme/bundle/group/+", "topic write tf/acme/bundle/bucket/+"]
    # Mosquitto applies `topic` lines above every `user` line to anonymous clients only, and
    # warns about a `pattern` without %u or %c: each device reads the documents in its own block.
    assert rules[rules.index("user pi-01"):] == [
        "user pi-01", "topic read tf/acme/root/+", "topic read tf/acme/bundle",
        "topic read tf/acme/bundle/#", "topic read tf/acme/timestamp"]


def test_config_refuses_anonymous_persists_and_fits_a_512_kib_document(tmp_path):
    from support import fleetkit as fk
    from trustfleet_server import keys

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    tls_key = keys.generate_key()  # broker-config checks the pair before it writes (issue 13)
    fk.write_pem(cert, fk.make_cert("broker.example", tls_key, ca=False))
    key.write_bytes(keys.private_key_pem(tls_key, None))
    out = tmp_path / "b"
    broker_config(out, "--fleet", "acme", "--listener", "0.0.0.0", "--tls-cert", cert,
                  "--tls-key", key)
    conf = dict(ln.split(" ", 1) for ln in (out / "mosquitto.conf").read_text().splitlines()
                if ln and not ln.startswith("#"))
    assert conf["allow_anonymous"] == "false"
    # The dynamic security plugin enforces; password_file/acl_file would let any SUBSCRIBE through.
    assert "password_file" not in conf and "acl_file" not in conf
    assert conf["plugin"].endswith("mosquitto_dynamic_security.so")
    assert conf["plugin_opt_config_file"] == str((out / "dynamic-security.json").resolve())
    assert conf["persistence"] == "true"
    assert conf["persistence_location"] == f"{(out / 'data').resolve()}/"
    assert "message_size_limit" not in conf
    assert 512 * 1024 < int(conf["max_packet_size"]) <= 520 * 1024
    assert conf["listener"] == "8883 0.0.0.0"
    assert conf["certfile"] == str(cert.resolve()) and conf["keyfile"] == str(key.resolve())


def test_dynamic_security_file_binds_device_client_ids_and_denies_by_default(tmp_path, capsys):
    out = tmp_path / "b"
    broker_config(out, "--fleet", "acme", "--device", "pi-01", "--dynsec-plugin", tmp_path / "none.so",
                  capsys=capsys)
    assert "none.so is not here" in capsys.err  # the broker would not start: say so
    doc = json.loads((out / "dynamic-security.json").read_text())
    assert doc["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": True,
                                       "subscribe": False, "unsubscribe": True}
    clients = {c["username"]: c for c in doc["clients"]}
    assert clients["pi-01"]["clientid"] == "tf-acme-pi-01"
    assert "clientid" not in clients["trustfleet-server"]  # several serve workers, own ids
    assert "clientid" not in clients["trustfleet-operator"]
    shares = [a["topic"] for r in doc["roles"] for a in r["acls"] if a["topic"].startswith("$share/")]
    assert shares == ["$share/trustfleet/tf/acme/#"]
    assert [r["rolename"] for r in doc["roles"] if "$share/trustfleet/tf/acme/#" in
            [a["topic"] for a in r["acls"]]] == ["server"]
    conf = (out / "mosquitto.conf").read_text()
    assert f"plugin {tmp_path / 'none.so'}\n" in conf


def test_no_persistence_on_request(tmp_path):
    out = tmp_path / "b"
    broker_config(out, "--fleet", "acme", "--no-persistence", "--listener", "127.0.0.1:1999")
    text = (out / "mosquitto.conf").read_text()
    assert "persistence false" in text and "persistence_location" not in text
    assert "listener 1999 127.0.0.1" in text


def test_user_option_hands_the_password_file_and_database_to_the_broker_user(tmp_path):
    import pwd

    out = tmp_path / "b"
    broker_config(out, "--fleet", "acme", "--user", "nobody")
    assert "\nuser nobody\n" in (out / "mosquitto.conf").read_text()
    if os.geteuid() != 0:
        skip_or_fail("handing files to the broker user needs root; the config line was checked")
    nobody = pwd.getpwnam("nobody")
    for name in ("passwords", "dynamic-security.json", "data"):
        assert (out / name).stat().st_uid == nobody.pw_uid, name
    assert (out / "secrets.json").stat().st_uid == 0  # the broker never reads the secrets
    assert stat.S_IMODE((out / "secrets.json").stat().st_mode) == 0o600
    assert (out.stat().st_gid, stat.S_IMODE(out.stat().st_mode)) == (nobody.pw_gid, 0o750)


def test_devices_file_with_comments(tmp_path, capsys):
    devices = tmp_path / "devices.txt"
    devices.write_text("# the lab\npi-01\n\n  pi-02  # bench\n")
    out = tmp_path / "b"
    doc = json.loads(broker_config(out, "--fleet", "acme", "--devices-file", devices, "--json",
                                   capsys=capsys))
    assert [i["username"] for i in doc["identities"] if i["role"] == "device"] == ["pi-01", "pi-02"]


def test_devices_file_takes_the_id_group_lines_of_device_add_ids_file(tmp_path, capsys):
    devices = tmp_path / "devices.txt"
    devices.write_text("# id group\npi-01 canary\npi-02\n  esp32-a  beta  # bench\n")
    out = tmp_path / "b"
    doc = json.loads(broker_config(out, "--fleet", "acme", "--devices-file", devices, "--json",
                                   capsys=capsys))
    assert [i["username"] for i in doc["identities"] if i["role"] == "device"] == [
        "pi-01", "pi-02", "esp32-a"]
    # The same file adds the same devices with `device add --ids-file`.
    assert cli.main(["device", "add", "--fleet", "acme", "--ids-file", str(devices),
                     "--broker-dir", str(out), "--out", str(tmp_path / "creds")]) == 0
    creds = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "creds").iterdir()}
    assert {k: v.get("group") for k, v in creds.items()} == {
        "pi-01": "canary", "pi-02": None, "esp32-a": "beta"}
    assert "already known, password kept: pi-01, pi-02, esp32-a" in capsys.readouterr().err


def test_a_devices_file_line_with_three_words_is_refused_naming_the_line(tmp_path, capsys):
    devices = tmp_path / "devices.txt"
    devices.write_text("pi-01 canary\npi-02 canary extra\n")
    broker_config(tmp_path / "b", "--fleet", "acme", "--devices-file", devices, code=2,
                  capsys=capsys)
    assert capsys.err == (f"trustfleet: error: {devices}:2: expected `ID` or `ID GROUP`, "
                          "got 'pi-02 canary extra'\n")
    assert not (tmp_path / "b").exists()


def test_rerun_keeps_passwords_drops_removed_devices_and_rotate_renews(tmp_path, capsys):
    out = tmp_path / "b"
    broker_config(out, "--fleet", "acme", "--device", "pi-01", "--device", "pi-02")
    first = load_secrets(out)
    doc = json.loads(broker_config(out, "--fleet", "acme", "--device", "pi-01", "--device", "pi-03",
                                   "--json", capsys=capsys))
    second = load_secrets(out)
    assert doc["dropped"] == ["pi-02"] and doc["kept_passwords"] == 3
    assert second["pi-01"] == first["pi-01"] and "pi-02" not in second
    assert second["trustfleet-operator"] == first["trustfleet-operator"]
    broker_config(out, "--fleet", "acme", "--device", "pi-01", "--device", "pi-03", "--rotate")
    third = load_secrets(out)
    assert not set(third.values()) & set(second.values())


@pytest.mark.parametrize("args, message", [
    (["--device", "a/b"], "device id 'a/b' may hold only"),
    (["--device", "+"], "device id '+' may hold only"),
    (["--device", "pi-01", "--device", "pi-01"], "listed twice"),
    (["--device", "trustfleet-server"], "operator's or the server's username"),
    (["--operator", "x", "--server", "x"], "different names"),
    (["--tls-cert", "/etc/hostname"], "--tls-cert and --tls-key go together"),
    (["--listener", "127.0.0.1:99999"], "bad port"),
])
def test_refuses_names_that_would_break_the_acl(tmp_path, capsys, args, message):
    broker_config(tmp_path / "b", "--fleet", "acme", *args, code=2, capsys=capsys)
    assert message in capsys.err
    assert not (tmp_path / "b" / "secrets.json").exists()


def test_command_line_entry_point_reports_a_bad_fleet_name(tmp_path):
    run = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", "broker-config",
                          "--fleet", "ac#me", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.startswith("trustfleet: error: fleet 'ac#me' may hold only")


# --------------------------------------------------------------------------- a real Mosquitto


def test_device_receives_the_fleets_retained_documents(fleet_broker, repo):
    fb, f = fleet_broker, fleet_broker.fleet
    bundle, ts = repo.bundle(version=3), repo.timestamp()
    op = fb.connect(fb.operator)
    op.publish(topics.root(f, 1), repo.root_raw, retain=True)
    op.publish(topics.bundle(f), bundle, retain=True)
    op.publish(topics.timestamp(f), ts, retain=True)
    dev = fb.connect("pi-01")
    for t in topics.device_subscriptions(f, "pi-01"):
        dev.subscribe(t)
    got = {m.topic: m for m in dev.wait_messages(3)}
    assert got[topics.bundle(f)].payload == bundle and got[topics.bundle(f)].retain
    assert got[topics.timestamp(f)].payload == ts
    assert got[topics.root(f, 1)].payload == repo.root_raw


@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
def test_device_cannot_publish_a_bundle(fleet_broker, repo, protocol):
    fb, f = fleet_broker, fleet_broker.fleet
    good = repo.bundle(version=1)
    op = fb.connect(fb.operator)
    op.publish(topics.bundle(f), good, retain=True)
    watcher = fb.connect("pi-02")
    watcher.subscribe(topics.bundle(f))
    watcher.subscribe(topics.timestamp(f))
    watcher.wait_messages(1, topic=topics.bundle(f))

    evil = repo.bundle(version=9)
    rc = fb.connect("pi-01", protocol).publish(topics.bundle(f), evil, retain=True)
    if protocol == V5:
        assert rc.value == NOT_AUTHORIZED, rc
    else:
        assert not rc.is_failure  # 3.1.1 has no refusal: Mosquitto acks and drops it
    assert_never_delivered(watcher, op, topics.bundle(f), topics.timestamp(f), evil)
    # Nor did it replace the retained bundle a late device gets.
    late = fb.connect("esp32-a")
    late.subscribe(topics.bundle(f))
    assert [m.payload for m in late.wait_messages(1)] == [good]


@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
def test_device_cannot_publish_another_devices_status(fleet_broker, protocol):
    fb, f = fleet_broker, fleet_broker.fleet
    srv = fb.connect(fb.server)
    srv.subscribe(topics.statuses(f))
    dev = fb.connect("pi-01", protocol)
    rc = dev.publish(topics.status(f, "pi-02"), b'{"state": "ok"}', retain=True)
    if protocol == V5:
        assert rc.value == NOT_AUTHORIZED, rc
    assert_never_delivered(srv, dev, topics.status(f, "pi-02"), topics.status(f, "pi-01"),
                           b'{"state": "ok"}')


def test_device_writes_its_own_status_and_report_but_reads_no_others(fleet_broker):
    fb, f = fleet_broker, fleet_broker.fleet
    srv = fb.connect(fb.server)
    srv.subscribe(topics.statuses(f))
    srv.subscribe(topics.reports(f))
    snoop = fb.connect("pi-02")
    # The plugin refuses the SUBSCRIBE itself (3.1.1: 0x80 failure).
    assert snoop.subscribe(topics.statuses(f))[0].value == 128
    snoop.subscribe(topics.bundle(f))
    dev = fb.connect("pi-01", V5)
    assert not dev.publish(topics.status(f, "pi-01"), b"s1", retain=True).is_failure
    assert not dev.publish(topics.report(f, "pi-01"), b"r1").is_failure
    got = {m.topic: m.payload for m in srv.wait_messages(2)}
    assert got == {topics.status(f, "pi-01"): b"s1", topics.report(f, "pi-01"): b"r1"}
    op = fb.connect(fb.operator)
    assert_never_delivered(snoop, op, topics.status(f, "pi-01"), topics.bundle(f), b"s1")


@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
def test_anonymous_and_wrong_passwords_are_refused(fleet_broker, protocol):
    fb = fleet_broker
    for creds in ({}, {"username": "pi-01", "password": "wrong"},
                  {"username": "pi-01", "password": fb.secrets["pi-02"]},
                  {"username": "nobody", "password": "x"}):
        c = brokers.connect(fb.proc, protocol=protocol, expect_success=False, **creds)
        c.close()
        assert c.connack and c.connack[0].is_failure, (creds, c.connack)
        # 3.1.1: 5 "not authorized"; 5: 135 "Not authorized"
        assert c.connack[0].value in (5, 135), c.connack[0]


def test_operator_publishes_every_document_topic(fleet_broker, repo):
    fb, f = fleet_broker, fleet_broker.fleet
    dev = fb.connect("pi-01")
    assert dev.subscribe(f"tf/{f}/#")[0].value == 128  # a device reads documents only
    for t in brokerconfig.document_topics(f):
        assert dev.subscribe(t)[0].value == 1, t
    op = fb.connect(fb.operator, V5)
    docs = {topics.root(f, 2): b"root2", topics.bundle(f): repo.bundle(),
            topics.group_bundle(f, "lab"): b"g", topics.bucket_bundle(f, 7): b"b7",
            topics.timestamp(f): b"ts"}
    for t, payload in docs.items():
        assert not op.publish(t, payload, retain=True).is_failure, t
    got = {m.topic: m.payload for m in dev.wait_messages(len(docs))}
    assert got == docs
    # The operator does not speak for devices.
    assert op.publish(topics.status(f, "pi-01"), b"x").value == NOT_AUTHORIZED


def test_server_writes_timestamp_and_waves_but_not_roots_or_statuses(fleet_broker):
    fb, f = fleet_broker, fleet_broker.fleet
    srv = fb.connect(fb.server, V5)
    # The last rollout wave is the fleet-wide bundle topic.
    for t in (topics.timestamp(f), topics.bundle(f), topics.group_bundle(f, "lab"), topics.bucket_bundle(f, 3)):
        assert not srv.publish(t, b"ok", retain=True).is_failure, t
    for t in (topics.root(f, 2), topics.status(f, "pi-01"), f"tf/{f}/other"):
        assert srv.publish(t, b"no", retain=True).value == NOT_AUTHORIZED, t


def test_nobody_writes_another_fleets_documents(fleet_broker):
    fb = fleet_broker
    other = brokers.unique_fleet("other")
    for name in (fb.operator, fb.server, "pi-01"):
        c = fb.connect(name, V5)
        assert c.publish(topics.bundle(other), b"x", retain=True).value == NOT_AUTHORIZED, name
        assert c.publish(topics.timestamp(other), b"x", retain=True).value == NOT_AUTHORIZED, name


def test_server_ingests_statuses_through_a_shared_subscription(fleet_broker):
    fb, f = fleet_broker, fleet_broker.fleet
    workers = [fb.connect(fb.server, V5) for _ in range(2)]
    shared = f"$share/trustfleet/{topics.statuses(f)}"
    for w in workers:
        assert w.subscribe(shared)[0].value == 1
    devs = {d: fb.connect(d, V311) for d in DEVICES}
    for d, c in devs.items():
        c.publish(topics.status(f, d), d.encode(), retain=True)
    # Mosquitto checks `read` on the real topic, so the server's grant covers $share.
    assert workers[0].wait(lambda: sum(len(w.messages) for w in workers) >= len(DEVICES))
    got = sorted(m.payload for w in workers for m in w.messages)
    assert got == sorted(d.encode() for d in DEVICES)
    # A device may not subscribe to statuses, through $share or not (issue 10, finding 3).
    snoop = fb.connect("pi-01", V5)
    assert snoop.subscribe(f"$share/snoop/{topics.statuses(f)}")[0].value == NOT_AUTHORIZED
    assert snoop.subscribe(f"$share/trustfleet/{topics.statuses(f)}")[0].value == NOT_AUTHORIZED
    snoop.subscribe(topics.bundle(f))
    devs["pi-02"].publish(topics.status(f, "pi-02"), b"again", retain=True)
    assert_never_delivered(snoop, fb.connect(fb.operator), topics.status(f, "pi-02"),
                           topics.bundle(f), b"again")


def test_retained_documents_survive_a_broker_restart(fleet_broker, repo):
    fb, f = fleet_broker, fleet_broker.fleet
    bundle = repo.bundle(version=5)
    op = fb.connect(fb.operator)
    op.publish(topics.bundle(f), bundle, retain=True)
    op.publish(topics.root(f, 1), repo.root_raw, retain=True)
    op.close()
    fb.proc.restart()
    assert fb.proc.starts == 2
    assert any((fb.out / "data").iterdir()), "no database written"
    dev = fb.connect("pi-01")
    dev.subscribe(topics.bundle(f))
    dev.subscribe(topics.roots(f))
    got = {m.topic: m.payload for m in dev.wait_messages(2)}
    assert got == {topics.bundle(f): bundle, topics.root(f, 1): repo.root_raw}


def test_largest_document_passes_and_a_larger_packet_is_refused(fleet_broker):
    fb, f = fleet_broker, fleet_broker.fleet
    dev = fb.connect("pi-01")
    dev.subscribe(topics.bundle(f))
    dev.subscribe(topics.timestamp(f))
    op = fb.connect(fb.operator, V5)
    biggest = os.urandom(brokerconfig.MAX_DOCUMENT)
    assert not op.publish(topics.bundle(f), biggest, retain=True).is_failure
    assert dev.wait_messages(1, topic=topics.bundle(f))[0].payload == biggest
    # Over max_packet_size Mosquitto drops the connection (MQTT 5: DISCONNECT
    # "Packet too large"); paho would resend on every reconnect, so stop it.
    too_big = os.urandom(brokerconfig.MAX_PACKET_SIZE)
    rogue = fb.connect(fb.operator, V5)
    rogue.paho.publish(topics.bundle(f), too_big, qos=1, retain=True)
    assert rogue.wait(lambda: rogue.disconnects), "not disconnected"
    rogue.close()
    # 0x95 "Packet too large" when paho reads the DISCONNECT before the reset.
    assert rogue.disconnects[0].value in (0x80, 0x95), rogue.disconnects
    assert_never_delivered(dev, op, topics.bundle(f), topics.timestamp(f), too_big)


def test_mosquitto_accepts_the_builtin_password_hashes(tmp_path, private_mosquitto):
    fleet = brokers.unique_fleet()
    cfg = brokerconfig.generate(fleet, ["pi-01"], port=brokers.free_port(), persistence=False)
    result = brokerconfig.write(cfg, tmp_path / "b", passwd_tool=None)
    assert result["hashed_by"] == "builtin"
    proc = private_mosquitto(Path(result["files"]["config"]))
    dev = cfg.identities[-1]
    cid = brokerconfig.device_client_id(fleet, dev.username)
    c = brokers.connect(proc, username=dev.username, password=dev.password, client_id=cid)
    c.close()
    with pytest.raises(ConnectionRefusedError):
        brokers.connect(proc, username=dev.username, password=dev.password + "x", client_id=cid)


# --------------------------------------------------------------------------- as printed, as root


@pytest.fixture
def open_dir():
    """A folder the broker's user can enter (pytest's own tmp dirs are 0700 under root)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="tf-broker-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def broker_user() -> str:
    """What Mosquitto started as root switches to; skips (fails under CI) without root or it."""
    import pwd

    if os.geteuid() != 0:
        skip_or_fail("Mosquitto switches users only when started as root")
    try:
        return pwd.getpwnam("mosquitto").pw_name
    except KeyError:
        skip_or_fail("no `mosquitto` system user (apt-get install mosquitto)")
    raise AssertionError("unreachable")


def test_as_root_mosquitto_starts_from_the_printed_command_without_user(open_dir, capsys, repo):
    import pwd

    from trustfleet_server.broker.mosquitto import mosquitto_binary, start_process, stop_process

    user = pwd.getpwnam(broker_user())
    binary = mosquitto_binary() or pytest.skip("mosquitto is not installed")
    fleet, port = brokers.unique_fleet(), brokers.free_port()
    out = open_dir / "broker"
    broker_config(out, "--fleet", fleet, "--device", "pi-01", "--port", port, capsys=capsys)
    conf = out / "mosquitto.conf"
    assert capsys.err.rstrip().endswith(f"start with: mosquitto -c {conf}")
    assert "warning" not in capsys.err
    for name in ("passwords", "dynamic-security.json", "data"):
        assert (out / name).stat().st_uid == user.pw_uid, name
    assert (out / "secrets.json").stat().st_uid == 0
    log = open_dir / "mosquitto.log"
    proc = start_process([binary, "-c", str(conf)], log=log, listens=[(brokers.HOST, port)],
                         name="mosquitto as printed")
    try:
        secrets = load_secrets(out)
        dev = brokers.connect(brokers.Broker(brokers.HOST, port, "mosquitto"), username="pi-01",
                              password=secrets["pi-01"],
                              client_id=brokerconfig.device_client_id(fleet, "pi-01"))
        dev.close()
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "Error" not in text and "Warning" not in text, text


def test_as_root_a_folder_the_broker_user_cannot_enter_is_named_in_one_warning(
        open_dir, capsys):
    user = broker_user()
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    out = closed / "broker"
    broker_config(out, "--fleet", "acme", "--device", "pi-01", capsys=capsys)
    warnings = [ln for ln in capsys.err.splitlines() if "warning" in ln]
    assert warnings == [
        f"trustfleet: warning: Mosquitto started as root runs as {user}, which cannot enter "
        f"{closed}: give --out a folder it can reach (or --user NAME)"], capsys.err


def test_an_out_folder_the_tool_did_not_create_keeps_its_owner_and_mode(open_dir, capsys):
    import pwd

    user = pwd.getpwnam(broker_user())
    mine = open_dir / "mine"
    mine.mkdir(mode=0o711)
    (mine / "notes.txt").write_text("mine\n")
    before = mine.stat()
    broker_config(mine, "--fleet", "acme", "--device", "pi-01", "--user", user.pw_name,
                  capsys=capsys)
    after = mine.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid, before.st_gid, before.st_mode)
    assert (mine / "notes.txt").read_text() == "mine\n"
    assert (mine / "passwords").stat().st_uid == user.pw_uid
    assert "warning" not in capsys.err  # 0711: the broker's user can enter it


# --------------------------------------------------------------------------- the file-based setup


def test_the_acl_and_password_files_load_in_mosquitto_without_warnings_and_grant_the_rules(
        tmp_path, private_mosquitto, repo):
    fleet, port = brokers.unique_fleet(), brokers.free_port()
    out = tmp_path / "b"
    broker_config(out, "--fleet", fleet, "--device", "pi-01", "--device", "pi-02",
                  "--port", port, "--no-persistence")
    conf = (f"listener {port} {brokers.HOST}\nallow_anonymous false\n"
            f"password_file {out / 'passwords'}\nacl_file {out / 'acl'}\n")
    proc = private_mosquitto(conf)
    secrets = load_secrets(out)
    op = brokers.connect(proc, username=brokerconfig.DEFAULT_OPERATOR,
                         password=secrets[brokerconfig.DEFAULT_OPERATOR])
    bundle = repo.bundle(version=3)
    op.publish(topics.bundle(fleet), bundle, retain=True)
    dev = brokers.connect(proc, username="pi-01", password=secrets["pi-01"])
    dev.subscribe(topics.bundle(fleet))
    assert [m.payload for m in dev.wait_messages(1, topic=topics.bundle(fleet))] == [bundle]
    watcher = brokers.connect(proc, username=brokerconfig.DEFAULT_SERVER,
                              password=secrets[brokerconfig.DEFAULT_SERVER])
    watcher.subscribe(f"{topics.PREFIX}/{fleet}/#")
    dev.publish(topics.status(fleet, "pi-01"), b"mine")
    dev.publish(topics.status(fleet, "pi-02"), b"forged")
    assert watcher.wait_messages(1, topic=topics.status(fleet, "pi-01"))
    assert_never_delivered(watcher, dev, topics.status(fleet, "pi-02"),
                           topics.report(fleet, "pi-01"), b"forged")
    for c in (op, dev, watcher):
        c.close()
    proc.stop()
    log = proc.stderr
    assert "mosquitto version" in log, log
    # (as root the test broker runs with `user root`, which Mosquitto warns about)
    assert "ACL pattern" not in log and "Error" not in log, log
