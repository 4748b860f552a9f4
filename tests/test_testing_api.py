"""trustfleet_server.testing without pytest's fixtures: what a test reads is typed and true.

Each case runs a real fleet: keys, a signed root, a broker (the embedded one here, so the
API is also tested without Mosquitto), simulated devices running the real agent, and the
real `trustfleet` commands on the fleet's files.
"""

from __future__ import annotations

import json
import time

import pytest

from support import brokers
from support.clirun import run_main, run_trustfleet
from trustfleet_device import cbor, cose, topics
from trustfleet_server import cli, mqtturl
from trustfleet_server.sim.brokers import BrokerHandle
from trustfleet_server.testing import Chain, Fleet, FleetState, Refusal, TLSServer, WaitTimeout


@pytest.fixture
def fleet():
    with Fleet.create("api-test", broker="embedded") as f:
        yield f


def test_bundles_are_what_the_cli_builds_and_verifies(fleet, capsys):
    b = fleet.bundle(3)
    code, out, _ = run_main(cli.main, capsys, "bundle", "verify", "--root", fleet.root_path, b.path)
    assert code == 0 and "v3" in out
    # `bundle build` of the spec the API wrote gives the same payload (issued_at aside).
    code, _, _ = run_main(cli.main, capsys, "bundle", "build", fleet.workdir / "bundle-v3.toml",
                          "-o", fleet.workdir / "cli.cose")
    assert code == 0

    def fields(payload: bytes) -> dict:
        value = cbor.decode(payload)
        return {k: v for k, v in value.items() if k not in ("issued_at", "expires_at")}

    built = (fleet.workdir / "cli.cose").read_bytes()   # bundle build writes the bare payload
    assert fields(cose.parse(b.raw).unverified_payload) == fields(built)
    assert fields(built)["pinsets"][0]["pins"] == fleet.chain().pins


def test_refusals_and_reverts_are_typed_with_their_reasons(fleet):
    server = TLSServer(fleet.chain())
    try:
        fleet.devices(6, tls_server=server, faults={"health_fail": 0.5})
        fleet.publish(fleet.bundle(1))
        s = fleet.wait(lambda s: all(d.version == 1 or d.bad == (1,) for d in s.devices), 30,
                       "v1 installed or reverted")
        failing = [d for d in s.devices if "health-fail" in d.faults]
        assert len(failing) == 3 and {d.id for d in s.reverted} == {d.id for d in failing}
        assert all(d.reverts[0].version == 1 and "health-fail" in d.reverts[0].reason
                   for d in failing)
        assert s.versions == {1: 3, None: 3}
        # An injected health-fail revert counts as settled, as `trustfleet simulate` counts it.
        assert s.converged and all(s.unsettled(d) is None for d in s.devices)
        # One bundle key where the root asks for two: refused by every device, and why.
        fleet.publish(fleet.bundle(2, signers=fleet.keys["bundle"][:1]))
        s = fleet.wait(lambda s: all(d.refusals for d in s.devices), 30, "refusals")
        assert {d.refusals[-1] for d in s.devices} == {s.devices[0].refusals[-1]}
        refusal = s.devices[0].refusals[-1]
        assert isinstance(refusal, Refusal) and refusal.kind == "bundle"
        assert "signature" in refusal.reason, refusal
        assert s.versions == {1: 3, None: 3} and s.target == 2 and not s.converged
        assert all("never received or never installed v2" in s.unsettled(d) for d in s.devices
                   if d.version == 1)
    finally:
        server.stop()


def test_a_failed_wait_says_what_the_fleet_looks_like(fleet):
    fleet.devices(4)
    fleet.publish(fleet.bundle(1))
    fleet.wait(lambda s: s.converged, 30)
    with pytest.raises(WaitTimeout) as info:
        fleet.wait(lambda s: s.versions.get(2) == 4, timeout=0.3, what="v2 everywhere")
    assert isinstance(info.value, AssertionError) and isinstance(info.value.state, FleetState)
    assert "v2 everywhere" in str(info.value) and "versions v1: 4" in str(info.value)
    # A device off the target says why, in the simulator's words.
    fleet.publish(fleet.bundle(2, anchors=[Chain.create("api.elsewhere.example").root]))
    with pytest.raises(WaitTimeout) as info:
        fleet.wait(lambda s: s.converged, timeout=2)
    assert "reverted v2: its health check refused the new store" in str(info.value)


def test_close_removes_only_what_the_fleet_made(tmp_path):
    made = Fleet.create("made-here", broker="embedded")
    made.close()
    assert not made.workdir.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's file")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        Fleet.create("given-dir", broker="embedded", workdir=mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    with Fleet.create("given-dir", broker="embedded", workdir=fresh) as given:
        given.bundle(1)
    assert (fresh / "root.cose").exists() and (fresh / "bundle-v1.cose").exists()


def test_a_fleet_on_a_shared_broker_leaves_no_retained_message_behind(embedded_broker):
    """On a broker it did not start, close() empties the fleet's topics (documents, statuses)."""
    def retained(fleet: str) -> list[str]:
        c = brokers.connect(embedded_broker)
        try:
            c.subscribe(f"tf/{fleet}/#")
            time.sleep(0.5)
            return sorted(m.topic for m in c.messages if m.payload)
        finally:
            c.close()

    handle = BrokerHandle(mqtturl.parse(embedded_broker.url))
    with Fleet.create("shared-broker", broker=handle) as f:
        f.devices(3, groups={"canary": 0.34})
        f.publish(f.bundle(1), timestamp=True)
        f.publish(f.bundle(2), to="group:canary")
        f.wait(lambda s: s.versions == {2: 1, 1: 2}, 30)
        assert not f.owns_broker
        held = retained(f.name)
        assert topics.bundle(f.name) in held and topics.group_bundle(f.name, "canary") in held
        assert topics.timestamp(f.name) in held and len(held) == 3 + 3   # and 3 statuses
    assert retained(f.name) == []


def test_the_cli_simulator_and_the_api_agree(fleet, tmp_path):
    """`trustfleet simulate` on the fleet's files and fleet.devices see the same outcome."""
    bundle = fleet.bundle(1)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(fleet.chain().pem)
    proc = run_trustfleet(tmp_path, "simulate", "--devices", "8", "--broker", "embedded",
                          "--fleet", fleet.name, "--root", fleet.root_path, "--publish", bundle.path,
                          "--stuck-2000", "50%", "--power-cut", "25%", "--chain", chain,
                          "--endpoint", fleet.domain, "--timeout", "60s", "--json", timeout=120)
    report = json.loads(proc.stdout)
    fleet.devices(8, faults={"stuck_2000": 0.5, "power_cut": 0.25})
    fleet.publish(bundle)
    s = fleet.wait(lambda s: s.converged, 30)
    assert report["converged"] and s.converged
    assert report["versions"] == {f"v{v}": n for v, n in s.versions.items()}
    assert report["faults"]["stuck_2000"]["devices"] == sum("stuck-2000" in d.faults for d in s.devices)
    assert report["faults"]["power_cut"]["devices"] == sum("power-cut" in d.faults for d in s.devices)


@pytest.mark.parametrize("kw, message", [
    ({"thresholds": {"bundles": 2}}, "unknown role 'bundles'"),
    ({"key_counts": {"signing": 3}}, "unknown role 'signing'"),
    ({"thresholds": {"root": 0}}, "at least 1"),
])
def test_a_mistyped_fleet_is_refused_before_anything_starts(kw, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        Fleet.create("typo", broker="embedded", workdir=tmp_path / "fleet", **kw)
    assert not (tmp_path / "fleet").exists()
