"""The device agent core driven with real signed documents, a fake clock and in-memory flash.

No sockets, no sleeping: storage is MemStorage (which can cut power after
any primitive operation) and the clock is a number the test moves.
"""

from __future__ import annotations

import hashlib

import pytest

from support.devices import FIRMWARE_TIME, Clock, Health, config, cut_points, fresh_device, reboot
from support.fleetkit import DAY, NOW, Repo
from trustfleet_device import agent as core
from trustfleet_device import slots
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage


@pytest.fixture(scope="module")
def repo() -> Repo:
    return Repo()


@pytest.fixture(scope="module")
def bundles(repo: Repo) -> dict[int, bytes]:
    return {v: repo.bundle(version=v) for v in (1, 2, 3)}


# ------------------------------------------------------------------ install and anti-rollback


def test_installs_verified_newer_bundle_into_inactive_slot(repo, bundles):
    device, storage = fresh_device(repo)
    result = device.offer("bundle", bundles[1])
    assert result.committed == 1 and not result.refused
    assert storage.read("slot-a.cose") == bundles[1]
    device.offer("bundle", bundles[2])
    assert storage.read("slot-b.cose") == bundles[2]
    assert storage.read("slot-a.cose") == bundles[1], "previous slot is kept"
    assert device.status()["version"] == 2


def test_refuses_same_or_older_version_even_after_reboot(repo, bundles):
    device, storage = fresh_device(repo)
    device.offer("bundle", bundles[2])
    other2 = repo.bundle(version=2, distrust=[hashlib.sha256(b"other").digest()])
    for raw, v in ((other2, 2), (bundles[1], 1)):
        result = reboot(storage, repo).offer("bundle", raw)
        assert result.committed is None
        assert f"version {v} is not newer than installed version 2" in result.reason()
    # The installed document itself, retained and delivered after every restart: nothing to say.
    again = reboot(storage, repo).offer("bundle", bundles[2])
    assert again.refused == [] and again.reports == [] and again.committed is None


def test_refuses_bundle_below_threshold_and_keeps_store(repo, bundles):
    device, storage = fresh_device(repo)
    device.offer("bundle", bundles[1])
    weak = repo.bundle(version=2, signers=repo.keys["bundle"][:1])
    result = device.offer("bundle", weak)
    assert result.committed is None and "needs 2" in result.reason()
    assert device.status()["version"] == 1


def test_refuses_expired_bundle_at_trusted_time(repo):
    device, _ = fresh_device(repo, clock=Clock(NOW + 200 * DAY))
    result = device.offer("bundle", repo.bundle(version=5))
    assert result.committed is None and "expired" in result.reason()


# ------------------------------------------------------------------ health check, revert


def test_failed_health_check_reverts_and_marks_version_bad(repo, bundles):
    health = Health(True, False)
    device, storage = fresh_device(repo, health)
    device.offer("bundle", bundles[1])
    result = device.offer("bundle", bundles[2])
    assert result.committed is None and result.reverted == 2
    status = device.status()
    assert status["version"] == 1 and status["bad"] == [2]
    assert "health check failed" in status["last_revert"]
    # Never retried, even after a reboot; a newer version still installs.
    again = reboot(storage, repo, Health(True))
    assert "reverted as bad" in again.offer("bundle", bundles[2]).reason()
    assert again.offer("bundle", bundles[3]).committed == 3


def test_health_check_deadline_reverts_when_no_answer(repo, bundles):
    clock = Clock()
    storage = MemStorage()
    runner.initialise(storage, repo.root_raw, config(repo))
    agent = core.Agent(config(repo))
    s = slots.Store(storage)
    agent.boot(repo.root_raw, s.load_state(), s.slot_sources(), clock())
    actions = agent.offer_bundle(bundles[1], clock())
    assert [a[0] for a in actions] == [slots.WRITE_SLOT, slots.SWITCH, core.HEALTH_CHECK]
    s.apply_all(actions)
    clock.t += 30
    assert agent.tick(clock()) == []
    clock.t += 31
    actions = agent.tick(clock())
    assert actions[0][0] == slots.REVERT
    assert "no answer before the deadline" in actions[0][1]["reason"]


def test_reboot_before_commit_reverts_then_allows_one_retry(repo, bundles):
    device, storage = fresh_device(repo)
    device.offer("bundle", bundles[1])
    # Install v2 but "crash" before the health check answers: apply only the first actions.
    actions = device.agent.offer_bundle(bundles[2], NOW)
    device.store.apply_all(actions[:2])
    first = reboot(storage, repo)
    assert first.status()["version"] == 1
    assert first.boot_result.reports[0]["event"] == "reverted"
    assert first.status()["bad"] == []
    # Second crash on the same version: now it is bad.
    actions = first.agent.offer_bundle(bundles[2], NOW)
    first.store.apply_all(actions[:2])
    second = reboot(first.store.storage, repo)
    assert second.status()["bad"] == [2] and second.status()["version"] == 1


# ------------------------------------------------------------------ power cuts


def test_power_cut_at_every_point_of_an_install_leaves_a_verified_store(repo, bundles, capsys):
    outcomes = cut_points(repo, bundles, health_answers=(True,))
    versions = [v for _, v in outcomes]
    assert versions[0] == 1 and versions[-1] == 2
    assert len(outcomes) >= 6
    with capsys.disabled():
        print(f"\n  install: {len(outcomes)} cut points, outcomes {versions}")


def test_power_cut_at_every_point_of_a_revert_leaves_the_old_store(repo, bundles, capsys):
    outcomes = cut_points(repo, bundles, health_answers=(False,))
    assert all(v == 1 for _, v in outcomes), outcomes
    assert len(outcomes) >= 6
    with capsys.disabled():
        print(f"\n  revert: {len(outcomes)} cut points, outcomes {[v for _, v in outcomes]}")


# ------------------------------------------------------------------ time and freshness


def test_board_booting_at_2000_uses_firmware_and_authenticated_time(repo, bundles):
    clock = Clock(946_684_800)  # 2000-01-01
    device, storage = fresh_device(repo, clock=clock)
    assert device.agent.trusted_time(clock()) == FIRMWARE_TIME
    assert device.offer("bundle", bundles[1]).committed == 1
    again = reboot(storage, repo, clock=clock)
    assert again.agent.trusted_time(clock()) >= NOW, "issued_at of the verified bundle is remembered"


def test_stale_without_fresh_timestamp_but_keeps_store(repo, bundles):
    clock = Clock()
    device, _ = fresh_device(repo, clock=clock)
    device.offer("bundle", bundles[1])
    assert device.offer("timestamp", repo.timestamp(bundles[1], time=NOW + DAY)).refused == []
    clock.t = NOW + 2 * DAY
    assert device.status()["state"] == "ok"
    clock.t = NOW + 4 * DAY
    status = device.status()
    assert status["state"] == "stale" and status["version"] == 1
    assert any("no timestamp newer than" in r for r in status["reasons"])


def test_refuses_timestamp_older_than_last(repo, bundles):
    device, _ = fresh_device(repo)
    assert device.offer("bundle", bundles[1]).committed == 1
    assert not device.offer("timestamp", repo.timestamp(bundles[1], time=NOW + 10)).refused
    result = device.offer("timestamp", repo.timestamp(bundles[1], time=NOW + 5))
    assert "older than the last accepted" in result.reason()


def test_clock_far_ahead_of_authenticated_time_is_not_persisted(repo, bundles):
    clock = Clock(NOW + 3000 * DAY)  # an NTP attacker jumped the clock eight years ahead
    device, storage = fresh_device(repo, clock=clock)
    device.offer("bundle", bundles[1])
    device.tick()
    assert device.agent.state["time"] < NOW + 400 * DAY + DAY
    clock.t = NOW + DAY  # the clock is corrected
    again = reboot(storage, repo, clock=clock)
    assert again.agent.trusted_time(clock()) < NOW + 2 * DAY


# ------------------------------------------------------------------ root rotation


def test_root_rotation_through_the_agent_then_bundle_signed_by_new_keys(bundles):
    repo = Repo()
    device, storage = fresh_device(repo)
    device.offer("bundle", repo.bundle(version=1))
    raw = repo.rotate("bundle", new_keys=2, remove=3, threshold=2)
    assert device.offer("root", raw).refused == []
    assert storage.read("root.cose") == raw
    again = reboot(storage, repo)
    assert again.status()["root_version"] == 2
    # v1 is signed by bundle keys root v2 retired: it no longer verifies, so the device
    # reports its store invalid and runs without one until a bundle by the new keys arrives.
    assert [r["event"] for r in again.boot_result.reports] == ["store-invalid"]
    assert "valid bundle signature(s), needs 2" in again.boot_result.reports[0]["detail"]
    assert again.status()["state"] == "no-store" and again.agent.state["active"] is None
    assert again.offer("bundle", repo.bundle(version=2)).committed == 2
