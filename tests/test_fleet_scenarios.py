"""Fleet scenarios through our own pytest plugin (trustfleet_server.testing.plugin).

The fixtures are the ones users get with trustfleet[testing]: a broker for the
session, a fleet with fresh keys, a loopback TLS server with the fleet's chain,
and simulated devices whose health checks and connections are real TLS
handshakes judged by each device's own trust store.
"""

from __future__ import annotations

import time

import pytest

from trustfleet_server.testing import Chain, pin


@pytest.mark.tf_devices(6)
def test_past_a_pinsets_expiry_devices_fail_open_to_ca_validation_never_to_none(
        tf_fleet, tf_tls_server, tf_devices):
    issued = time.time()
    tf_fleet.publish(tf_fleet.bundle(1, pinsets=[tf_fleet.pinset(tf_fleet.chain(), expires="4s")]))
    tf_fleet.wait(lambda s: s.converged, timeout=30)
    # The server moves to a key no pin names, under the same root CA.
    tf_tls_server.use(tf_fleet.chain().rotate().rotate())
    before = tf_devices.connect(tf_tls_server)
    assert time.time() < issued + 4, "too slow to see the pins enforced"
    assert all(not c.accepted and "no key matches the pins" in c.detail for c in before.values())
    time.sleep(max(0.0, issued + 5 - time.time()))
    after = tf_devices.connect(tf_tls_server)
    assert {c for c in after.values()} == {(True, "expired-pins-fail-open")}
    # Failing open is to CA validation: a chain from another root is still refused.
    tf_tls_server.use(Chain.create(tf_fleet.domain))
    stranger = tf_devices.connect(tf_tls_server)
    assert all(not c.accepted for c in stranger.values()), stranger


@pytest.mark.tf_devices(10, groups={"canary": 0.2})
def test_a_bundle_distrusting_the_servers_issuing_ca_halts_at_the_canary_wave(
        tf_fleet, tf_tls_server, tf_devices):
    tf_fleet.publish(tf_fleet.bundle(1))
    tf_fleet.wait(lambda s: s.converged, timeout=30)
    tf_fleet.rollout(tf_fleet.bundle(2, distrust=[tf_fleet.chain().issuing]), "canary,100%")
    s = tf_fleet.wait(lambda s: s.rollout.final, timeout=60)
    assert s.rollout.halted and s.rollout.wave == "canary"
    assert set(s.rollout.failing) == {d.id for d in s.in_group("canary")}
    assert all("distrust" in d.reverts[-1].reason for d in s.in_group("canary"))
    assert s.versions == {1: 10}
    # The devices that never saw v2 still reach the server with v1.
    assert all(c.accepted for c in tf_devices.connect(tf_tls_server).values())


@pytest.mark.tf_devices(20, groups={"canary": 0.1}, faults={"power_cut": 0.25, "duplicate": 0.2})
def test_a_staged_rollout_completes_through_power_cuts_and_duplicate_deliveries(
        tf_fleet, tf_tls_server, tf_devices):
    tf_fleet.publish(tf_fleet.bundle(1))
    tf_fleet.wait(lambda s: s.converged, timeout=30)
    r = tf_fleet.rollout(tf_fleet.bundle(2), "canary,50%,100%")
    assert r.state == "running" and r.waves == ("canary", "50%", "100%")
    s = tf_fleet.wait(lambda s: s.rollout.final and s.converged, timeout=60)
    assert s.rollout.done and s.versions == {2: 20}
    assert s.states == {"ok": 20} and all(d.bad == () for d in s.devices)
    cut = [d for d in s.devices if "power-cut" in d.faults]
    assert len(cut) == 5
    # A cut before the commit reverts that install ("reboot before commit"); nothing else does.
    assert {d.id for d in s.reverted} <= {d.id for d in cut}
    assert all(r.reason.endswith("reboot before commit") for d in s.reverted for r in d.reverts)


@pytest.mark.tf_fleet(thresholds={"bundle": 3}, key_counts={"bundle": 4})
@pytest.mark.tf_devices(4)
def test_a_bundle_below_the_roots_threshold_is_refused_by_every_device(tf_fleet, tf_devices):
    tf_fleet.publish(tf_fleet.bundle(1, signers=tf_fleet.keys["bundle"][1:3]))
    s = tf_fleet.wait(lambda s: all(d.refusals for d in s.devices), timeout=30)
    assert all(d.version is None and d.refusals[-1].kind == "bundle" for d in s.devices)
    tf_fleet.publish(tf_fleet.bundle(1, signers=tf_fleet.keys["bundle"][1:4]))  # any 3 of 4
    s = tf_fleet.wait(lambda s: s.converged, timeout=30)
    assert s.versions == {1: 4}
    assert pin(tf_fleet.chain().issuing) in tf_fleet.chain().pins
