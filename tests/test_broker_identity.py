"""Issue 10, findings 3 and 4: a device's broker identity is tied to its credentials.

A private Mosquitto runs exactly the config `trustfleet broker-config` wrote.
Finding 3: a device that joins the server's shared group
(`$share/trustfleet/tf/<fleet>/status/+`) would take its round-robin turn and
swallow other devices' statuses; it must be refused, and every other
device's status must still reach a real FleetServer and its database.
Finding 4: a device that connects with another device's client id would
knock that device off the broker; it must be refused and the victim stay.
"""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest

from support import brokers
from support.securedfleet import SecuredFleet
from support.serving import ServerThread
from support.waiting import wait_for
from trustfleet_device import topics
from trustfleet_server import mqtturl
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve import server
from trustfleet_server.serve.server import DYNSEC_RESPONSE, DYNSEC_TOPIC

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
WAIT = 20.0
NOT_AUTHORIZED = (5, 135)  # MQTT 3.1.1 CONNACK / MQTT 5 reason code
SUBACK_FAILURE = (128, 135)  # 3.1.1 "failure" / 5 "Not authorized"
DEVICES = [f"dev-{i:02d}" for i in range(10)]
ATTACKER = "mallory"


@pytest.fixture
def fleet(tmp_path, private_mosquitto) -> SecuredFleet:
    return SecuredFleet(tmp_path, private_mosquitto, [*DEVICES, ATTACKER], prefix="id")


# --------------------------------------------------------------------------- finding 3


def test_a_device_cannot_join_the_servers_shared_group_and_every_status_lands(fleet, tmp_path):
    db = fleetdb.open_db(tmp_path / "fleet.db")
    srv = server.FleetServer(mqtturl.parse(fleet.server_url()), fleet.fleet, [fleet.repo.root_raw], db,
                             timestamp_every=300, step_every=0.2, client_id="serve-1")
    run = ServerThread(srv)
    errors, thread = run.errors, run.thread
    attacker = None
    try:
        wait_for(lambda: srv.synced or errors, "the server to connect")
        assert srv.stats.shared, "serve did not use a shared subscription"
        time.sleep(2 * server.BOOT_IDLE + 0.5)  # past the retained-status read: live via the share
        attacker = fleet.device(ATTACKER)
        shared = f"$share/{server.SHARE_GROUP}/{topics.statuses(fleet.fleet)}"
        codes = [attacker.subscribe(shared)[0].value,
                 attacker.subscribe(f"$share/{server.SHARE_GROUP}/{topics.reports(fleet.fleet)}")[0].value]
        for name in DEVICES:
            dev = fleet.device(name)
            body = {"device": name, "fleet": fleet.fleet, "state": "ok", "version": 1, "seq": 1}
            assert not dev.publish(topics.status(fleet.fleet, name), json.dumps(body),
                                   retain=True).is_failure
            dev.close()

        def landed() -> set[str]:  # on a connection of its own: the server's is busy on its thread
            with fleetdb.open_db(tmp_path / "fleet.db") as reader:
                return {d["device"] for d in reader.devices(fleet.fleet)}

        try:
            wait_for(lambda: set(DEVICES) <= landed() or errors, "every status to land", 10)
        except AssertionError:
            missing = sorted(set(DEVICES) - landed())
            raise AssertionError(f"SUBACK {codes}; {len(missing)} of {len(DEVICES)} statuses never"
                                 f" reached the database: {missing}") from None
        assert all(code in SUBACK_FAILURE for code in codes), codes
        assert not attacker.messages
    finally:
        if attacker:
            attacker.close()
        srv.stop()
        thread.join(20)
        db.close()
    assert not errors, errors


# --------------------------------------------------------------------------- finding 4


@pytest.mark.parametrize("protocol", [V5, V311], ids=["mqtt5", "mqtt311"])
def test_a_device_cannot_take_another_devices_client_id(fleet, protocol):
    f = fleet.fleet
    victim = fleet.device(DEVICES[0], protocol)
    thief = fleet.device(ATTACKER, protocol, client_id=fleet.client_id(DEVICES[0]), expect_success=False)
    thief.close()
    assert thief.connack and thief.connack[0].is_failure, thief.connack
    assert thief.connack[0].value in NOT_AUTHORIZED, thief.connack
    # The victim was never disconnected: it still publishes, and the server still hears it.
    watcher = brokers.connect(fleet.proc, username="trustfleet-server",
                              password=fleet.secrets["trustfleet-server"], protocol=V5)
    watcher.subscribe(topics.statuses(f))
    victim.publish(topics.status(f, DEVICES[0]), b"still here", retain=True)
    got = watcher.wait_messages(1, topic=topics.status(f, DEVICES[0]))
    assert [m.payload for m in got][-1:] == [b"still here"]
    assert not victim.disconnects, victim.disconnects
    # A device keeps its own id, and any id is refused to the wrong password.
    fleet.device(ATTACKER, protocol).close()
    wrong = brokers.connect(fleet.proc, username=ATTACKER, password=fleet.secrets[DEVICES[0]],
                            protocol=protocol, client_id=fleet.client_id(ATTACKER), expect_success=False)
    wrong.close()
    assert wrong.connack and wrong.connack[0].value in NOT_AUTHORIZED


def test_several_server_workers_share_the_ingest_under_their_own_client_ids(fleet):
    f = fleet.fleet
    user = "trustfleet-server"
    workers = [brokers.connect(fleet.proc, username=user, password=fleet.secrets[user], protocol=V5,
                               client_id=f"serve-{i}") for i in range(2)]
    for w in workers:
        assert w.subscribe(f"$share/{server.SHARE_GROUP}/{topics.statuses(f)}")[0].value == 1
    for name in DEVICES[:4]:
        dev = fleet.device(name)
        dev.publish(topics.status(f, name), name.encode(), retain=True)
        dev.close()
    assert workers[0].wait(lambda: sum(len(w.messages) for w in workers) >= 4)
    assert sorted(m.payload for w in workers for m in w.messages) == sorted(d.encode() for d in DEVICES[:4])
    assert all(w.messages for w in workers), "one worker got nothing: not shared"
    assert not any(w.disconnects for w in workers)


def test_only_the_server_may_command_the_brokers_identities(fleet):
    """serve fences a flooding device through the dynamic security plugin; a device must not
    be able to do the same to another device (or read the plugin's answers)."""
    victim = fleet.device(DEVICES[0])
    attacker = fleet.device(ATTACKER)
    try:
        sub = attacker.subscribe(DYNSEC_RESPONSE)
        assert sub[0].value in SUBACK_FAILURE, sub
        command = json.dumps({"commands": [{"command": "disableClient", "username": DEVICES[0]}]})
        assert attacker.publish(DYNSEC_TOPIC, command).value in (135,)  # Not authorized
        time.sleep(0.5)
        assert not victim.disconnects, victim.disconnects
    finally:
        attacker.close()
        victim.close()
    # The server identity may, and reads the answer.
    user = "trustfleet-server"
    admin = brokers.connect(fleet.proc, username=user, password=fleet.secrets[user], protocol=V5)
    try:
        assert admin.subscribe(DYNSEC_RESPONSE)[0].value == 1
        admin.publish(DYNSEC_TOPIC, json.dumps({"commands": [{"command": "getClient",
                                                              "username": DEVICES[0]}]}))
        answer = json.loads(admin.wait_messages(1, topic=DYNSEC_RESPONSE)[0].payload)
        got = answer["responses"][0]
        assert got["command"] == "getClient" and "error" not in got, got
        assert not got["data"]["client"].get("disabled", False), got  # the attack did nothing
    finally:
        admin.close()
