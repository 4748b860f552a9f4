"""Streaming install: hash while writing to flash, verify and parse from flash.

The streamed path must give exactly the answers of the in-memory path (the
same Bundle, the same refusals with the same messages, the same trust
decisions), whatever the chunk size, and survive power cuts like it.
"""

from __future__ import annotations

import pytest

from support import fleetkit as fk
from support.fleetkit import DAY, NOW, Repo, many_anchors
from trustfleet_device import agent as core
from trustfleet_device import policy, trust
from trustfleet_device.errors import BundleError
from trustfleet_device.limits import DEFAULT
from trustfleet_device.source import BytesSource
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import DirStorage, MemStorage, PowerCut


@pytest.fixture(scope="module")
def repo() -> Repo:
    return Repo()


@pytest.fixture(scope="module")
def root(repo):
    return policy.load_trusted_root(repo.root_raw)


def chunks(raw: bytes, size: int):
    for i in range(0, len(raw), size):
        yield raw[i:i + size]


def summary(b) -> dict:
    return {
        "fleet": b.fleet, "version": b.version, "issued_at": b.issued_at, "expires_at": b.expires_at,
        "anchors": [(a.der, a.name, a.spki, a.not_after, a.label) for a in b.anchors],
        "pinsets": [(p.domain, p.subdomains, p.pins, p.expires, p.mode, p.report_to, p.allow_single_pin)
                    for p in b.pinsets],
        "distrust": list(b.distrust),
        "policy": (b.policy.user_anchors, b.policy.max_timestamp_age),
    }


def outcome(fn, *args, **kwargs):
    try:
        return "ok", summary(fn(*args, **kwargs))
    except BundleError as exc:
        return type(exc).__name__, str(exc)


# --------------------------------------------------------------- same answers as in memory


def cases(repo: Repo) -> dict[str, bytes]:
    return {
        "valid": repo.bundle(version=2),
        "150 anchors": repo.bundle(version=3, anchors=many_anchors(150)),
        "single-pin override": repo.bundle(version=4, pinsets=[fk.pinset("x.example", [b"\x01" * 32],
                                                                          allow_single_pin=True)]),
        "below threshold": repo.bundle(version=5, signers=repo.keys["bundle"][:1]),
        "tampered": fk.flip_payload_byte(repo.bundle(version=6)),
        "unknown field": repo.bundle(version=7, check=False, colour="blue"),
        "one pin": repo.bundle(version=8, check=False, pinsets=[fk.pinset("x.example", [b"\x01" * 32])]),
        "other fleet": repo.bundle(version=9, fleet="other-fleet"),
        "expired": repo.bundle(version=10, expires_at=NOW + 1),
        "truncated": repo.bundle(version=11)[:-5],
        "trailing": repo.bundle(version=12) + b"\x00",
        "bare payload": fk.payload_of(repo.bundle(version=13)),
    }


@pytest.mark.parametrize("chunk", [1, 7, 512, 4096])
def test_streamed_verification_gives_the_same_bundle_or_refusal_as_in_memory(repo, root, chunk):
    for name, raw in cases(repo).items():
        in_memory = outcome(policy.verify_bundle, root, raw, now=NOW + DAY)

        class Chunked(BytesSource):
            def read_at(self, offset, n):  # never hand out more than `chunk` bytes at once
                return b"".join(self.data[o:min(o + chunk, offset + n)] for o in range(offset, offset + n, chunk))

        streamed = outcome(policy.verify_bundle, root, Chunked(raw), now=NOW + DAY)
        assert streamed == in_memory, name


def test_stored_anchors_are_read_back_from_the_source_only_when_used(repo, root):
    raw = repo.bundle(version=3, anchors=many_anchors(150))
    reads = []

    class Counting(BytesSource):
        def read_at(self, offset, n):
            reads.append(n)
            return BytesSource.read_at(self, offset, n)

    b = policy.verify_bundle(root, Counting(raw))
    parsed = len(reads)
    assert len(b.anchors) == 150 and len(reads) == parsed  # nothing read since parsing
    assert b.anchors[149].not_after == many_anchors(150)[149][3]
    assert len(reads) > parsed
    assert max(reads) <= 1024, "reads go through a small window, never the whole payload"


# --------------------------------------------------------------- the device streams installs


def config(repo):
    return core.Config(fleet=repo.fleet, firmware_time=NOW - DAY)


def device_on(storage, repo, health=runner.no_endpoints):
    runner.initialise(storage, repo.root_raw, config(repo))
    return runner.Device(storage, config(repo), health, lambda: NOW)


@pytest.mark.parametrize("where", ["memory", "directory"])
def test_device_installs_a_streamed_bundle_and_boots_from_flash(repo, tmp_path, where):
    storage = MemStorage() if where == "memory" else DirStorage(str(tmp_path))
    device = device_on(storage, repo)
    raw = repo.bundle(version=2, anchors=many_anchors(150))
    result = device.receive_bundle(chunks(raw, 333))
    assert result.committed == 2, result.reason()
    assert storage.read("slot-a.cose") == raw
    again = runner.Device(storage if where == "directory" else storage.reboot(), config(repo),
                          runner.no_endpoints, lambda: NOW)
    assert again.status()["version"] == 2
    assert type(again.agent.bundle.anchors).__name__ == "StoredItems"
    assert type(again.agent.bundle.pinsets).__name__ == "StoredItems"


def test_streamed_bundle_over_the_size_limit_is_refused_and_the_store_kept(repo):
    device = device_on(MemStorage(), repo)
    device.offer("bundle", repo.bundle(version=1))
    huge = (b"\x00" * 4096 for _ in range(DEFAULT.max_document // 4096 + 2))
    result = device.receive_bundle(huge)
    assert "over" in result.reason() and result.committed is None
    assert device.status()["version"] == 1


def test_no_streaming_into_the_way_back_while_a_trial_runs(repo):
    device = device_on(MemStorage(), repo)
    device.offer("bundle", repo.bundle(version=1))  # active: slot a
    actions = device.agent.offer_bundle(repo.bundle(version=2), NOW)
    device.run([a for a in actions if a[0] != core.HEALTH_CHECK])  # slot b on trial, health check pending
    assert device.agent.inactive_slot() == "a"  # the way back
    before = device.store.storage.read("slot-a.cose")
    result = device.receive_bundle(chunks(repo.bundle(version=3), 100))
    assert "waiting for its health check" in result.reason()
    assert device.store.storage.read("slot-a.cose") == before


def test_bundle_not_matching_the_timestamp_digest_is_refused(repo):
    device = device_on(MemStorage(), repo)
    announced = repo.bundle(version=2)
    device.offer("timestamp", repo.timestamp(announced, time=NOW))
    other = repo.bundle(version=2, distrust=[b"\x07" * 32])  # same version, other content
    assert "does not match the digest in the latest timestamp" in device.receive_bundle([other]).reason()
    assert device.receive_bundle(chunks(announced, 50)).committed == 2


def test_power_cut_at_every_point_of_a_streamed_install(repo, capsys):
    base = device_on(MemStorage(), repo)
    base.receive_bundle([repo.bundle(version=1)])
    snapshot = dict(base.store.storage.files)
    raw = repo.bundle(version=2, anchors=many_anchors(40))
    versions = []
    k = 0
    while True:
        storage = MemStorage(snapshot, cut_after=k)
        try:
            runner.Device(storage, config(repo), runner.no_endpoints, lambda: NOW).receive_bundle(chunks(raw, 64))
            cut = False
        except PowerCut:
            cut = True
        after = runner.Device(storage.reboot(), config(repo), runner.no_endpoints, lambda: NOW)
        status = after.status()
        assert status["state"] == "ok" and status["version"] in (1, 2) and status["floor"] == status["version"]
        versions.append(status["version"])
        if not cut:
            break
        k += 1
    assert versions[0] == 1 and versions[-1] == 2
    with capsys.disabled():
        print(f"\n  streamed install: {len(versions)} cut points, outcomes {versions}")


# --------------------------------------------------------------- trust decisions from flash


def test_trust_decisions_from_stored_anchors_equal_those_from_memory(repo, root):
    acme, backup = fk.chain("acme"), fk.chain("backup")
    raw = repo.bundle(version=2, anchors=many_anchors(60) + [fk.compact_anchor(acme.ca), fk.full_anchor(backup.ca)])
    eager = trust.TrustStore(policy.verify_bundle(root, raw))
    lazy = trust.TrustStore(policy.verify_bundle(root, BytesSource(raw)))
    chains = {
        "acme": [fk.der(acme.leaf), fk.der(acme.intermediate)],
        "backup": [fk.der(backup.leaf), fk.der(backup.intermediate)],
        "no intermediate": [fk.der(acme.leaf)],
    }
    for now in (NOW, NOW + 200 * DAY):
        for host, chain in (("api.acme.example", chains["acme"]), ("api.backup.example", chains["backup"]),
                            ("api.acme.example", chains["no intermediate"])):
            a, b = eager.evaluate(host, chain, now), lazy.evaluate(host, chain, now)
            assert (a.verdict, a.result, a.reason, a.anchor) == (b.verdict, b.result, b.reason, b.anchor)
    assert eager.evaluate("api.acme.example", chains["acme"], NOW).verdict == "accept"
    assert len(lazy._loaded) <= 8
