"""What simulated devices share (sim/shared.py) and what each still decides alone.

One worker's devices verify a document once per exact bytes and judge the
health check once per exact inputs. These tests hold that sharing to what
real devices could share: a forged or corrupted copy handed to one device
is refused by that device although its neighbours verified the genuine
one; each device still applies its own floor, bad marks, expiry (its own
trusted time) and health outcome. Real signatures (fleetkit), real
MemStorage slots, the real sample chain; the last test runs a fleet on the
embedded broker with the forge fault.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from support import brokers
from support.fleetkit import Repo, compact_anchor, flip_payload_byte, pin, pinset
from trustfleet_device import agent as core
from trustfleet_device import slots, topics, trust
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage
from trustfleet_server import mqtturl
from trustfleet_server.sim.config import (
    SAMPLE_CHAIN,
    SAMPLE_HOST,
    Faults,
    SimConfig,
    chain_ders,
    sample_file,
)
from trustfleet_server.sim.shared import HealthChecks, SharedChecks
from trustfleet_server.sim.simulator import Simulation
from trustfleet_server.sim.worker import device_class

DAY = 86_400


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(sample_file(name))


class Fleet:
    def __init__(self) -> None:
        self.name = brokers.unique_fleet("share")
        self.now = int(time.time())
        self.repo = Repo(fleet=self.name, now=self.now)
        self.root_ca, self.backup_ca = _cert("demo-fleet-root-ca.pem"), _cert("demo-fleet-backup-ca.pem")
        self._bundles: dict[int, bytes] = {}

    def bundle(self, version: int) -> bytes:
        if version not in self._bundles:
            ps = pinset(SAMPLE_HOST, [pin(self.root_ca), pin(self.backup_ca)], expires=self.now + 180 * DAY)
            self._bundles[version] = self.repo.bundle(version, anchors=[compact_anchor(self.root_ca)],
                                                      pinsets=[ps])
        return self._bundles[version]

    def image(self) -> dict[str, bytes]:
        """Factory image: the root and v1 committed (as the simulator's factory_image makes it)."""
        storage = MemStorage()
        config = core.Config(fleet=self.name, device_id="factory")
        runner.initialise(storage, self.repo.root_raw, config)
        assert runner.Device(storage, config, runner.no_endpoints, time.time).offer("bundle", self.bundle(1)).committed == 1
        return dict(storage.files)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet()


def make_devices(fleet: Fleet, n: int, checks: SharedChecks, health=runner.no_endpoints,
                 clock=time.time, image=None) -> list:
    cls = device_class(checks)
    image = image or fleet.image()
    return [cls(MemStorage(image), core.Config(fleet=fleet.name, device_id=f"d{i}"), health, clock)
            for i in range(n)]


def forged_copies(fleet: Fleet, raw: bytes) -> dict[str, bytes]:
    stranger = ec.generate_private_key(ec.SECP256R1())
    return {
        "payload bit flipped": flip_payload_byte(raw),
        "signature bit flipped": raw[:-1] + bytes([raw[-1] ^ 1]),
        "signed by a key outside the root": fleet.repo.bundle(
            2, signers=[stranger], anchors=[compact_anchor(fleet.root_ca)],
            pinsets=[pinset(SAMPLE_HOST, [pin(fleet.root_ca), pin(fleet.backup_ca)],
                            expires=fleet.now + 180 * DAY)]),
    }


@pytest.mark.parametrize("how", ["payload bit flipped", "signature bit flipped",
                                 "signed by a key outside the root"])
def test_a_forged_copy_is_refused_by_its_device_while_the_others_hold_the_genuine_one(fleet, how):
    checks = SharedChecks()
    devices = make_devices(fleet, 4, checks)
    genuine = fleet.bundle(2)
    for d in devices[:3]:
        assert d.offer("bundle", genuine).committed == 2
    assert (checks.verified, checks.reused) == (3, 3 + 3 + 2)  # root, v1 (boot), v2: once each

    victim = devices[3]
    result = victim.offer("bundle", forged_copies(fleet, genuine)[how])
    assert result.committed is None and not victim.busy()
    assert result.refused and result.refused[0][0] == "bundle"
    assert "signature" in result.refused[0][1]
    assert victim.active_bundle().version == 1
    assert [d.active_bundle().version for d in devices[:3]] == [2, 2, 2]
    # The genuine copy still installs on the victim afterwards, from the shared table.
    assert victim.offer("bundle", genuine).committed == 2


def test_the_forged_copy_is_refused_even_when_it_comes_first_and_again(fleet):
    checks = SharedChecks()
    devices = make_devices(fleet, 2, checks)
    forged = flip_payload_byte(fleet.bundle(2))
    for _ in range(2):   # a refusal is not remembered: each copy is checked for itself
        assert devices[0].offer("bundle", forged).refused
    assert devices[1].offer("bundle", fleet.bundle(2)).committed == 2
    assert devices[0].offer("bundle", forged).refused
    assert devices[0].active_bundle().version == 1


def test_a_corrupted_slot_is_caught_at_boot_on_its_device_only(fleet):
    checks = SharedChecks()
    image = fleet.image()
    good = make_devices(fleet, 2, checks, image=image)
    bad_image = dict(image)
    name = slots.slot_file(slots.Store(MemStorage(image)).load_state()["active"])
    raw = bad_image[name]
    bad_image[name] = raw[:40] + bytes([raw[40] ^ 0x10]) + raw[41:]
    (bad,) = make_devices(fleet, 1, checks, image=bad_image)
    assert [d.active_bundle().version for d in good] == [1, 1]
    assert bad.active_bundle() is None
    assert [r["event"] for r in bad.boot_result.reports][0] == "store-invalid"


def test_each_device_keeps_its_own_floor_bad_marks_and_expiry(fleet):
    checks = SharedChecks()
    ahead, plain = make_devices(fleet, 2, checks)
    assert ahead.offer("bundle", fleet.bundle(3)).committed == 3
    assert plain.offer("bundle", fleet.bundle(2)).committed == 2
    # v2 is in the table now, but `ahead` runs v3: for it v2 is older than its floor.
    again = ahead.offer("bundle", fleet.bundle(2))
    assert again.committed is None and again.stale and "not newer" in again.stale[0][1]

    (failing,) = make_devices(fleet, 1, checks, health=lambda b, t: (False, "refused by the test"))
    assert failing.offer("bundle", fleet.bundle(2)).reverted == 2
    assert failing.bad_versions() == [2]
    refused = failing.offer("bundle", fleet.bundle(2))
    assert refused.refused and "reverted as bad" in refused.refused[0][1]

    (late,) = make_devices(fleet, 1, checks, clock=lambda: time.time() + 400 * DAY)
    expired = late.offer("bundle", fleet.bundle(2))
    assert expired.refused and "expired" in expired.refused[0][1]
    assert late.active_bundle().version == 1


def test_health_decisions_are_those_of_a_fresh_store_at_each_devices_own_time(fleet):
    chain = list(chain_ders(sample_file(SAMPLE_CHAIN)))
    health = HealthChecks(SAMPLE_HOST, chain)
    checks = SharedChecks()
    (d,) = make_devices(fleet, 1, checks)
    bundle = d.active_bundle()
    now = int(time.time())
    later = now + 40 * 365 * DAY   # past the sample leaf's validity
    for t in (now, later):
        fresh = trust.TrustStore(bundle).evaluate(SAMPLE_HOST, chain, t)
        for _ in range(2):
            shared = health.decide(bundle, t)
            assert (shared.verdict, shared.result, shared.reason) == (fresh.verdict, fresh.result, fresh.reason)
    assert health.decide(bundle, now).accepted()
    assert not health.decide(bundle, later).accepted()
    assert (health.evaluated, health.reused) == (2, 4)


@pytest.mark.timeout(90)
def test_a_running_fleet_refuses_every_forged_copy_and_converges_on_the_genuine_one(embedded_broker):
    fleet = Fleet()
    cfg = SimConfig(devices=30, broker=mqtturl.BrokerURL(embedded_broker.host, embedded_broker.port),
                    fleet=fleet.name, root_raw=fleet.repo.root_raw, initial=fleet.bundle(1),
                    faults=Faults(forge=0.2), seed=3)
    try:
        report = asyncio.run(Simulation(cfg).run(40, (topics.bundle(fleet.name), fleet.bundle(2)),
                                                 clear=True))
    finally:
        brokers.clear_retained(embedded_broker, [topics.bundle(fleet.name)])
    forge = report.faults["forge"]
    assert forge["devices"] == 6
    assert forge["forged"] >= 6 and forge["refused"] == forge["forged"] and forge["accepted"] == 0
    assert report.converged, report.why
    assert report.versions == {"v2": 30}
    assert all(list(d.commits) == [2] for d in report.devices if "forge" in d.faults)
