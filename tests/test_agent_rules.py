"""Every rule of the device agent (device/trustfleet_device/agent.py), one decision at a time.

The agent is a state machine with no I/O, so most tests here feed it real
signed documents and clock values and compare the returned actions with
the exact list expected: slots.WRITE_SLOT/SWITCH/COMMIT/REVERT/SAVE with the
whole new state, HEALTH_CHECK with the bundle on trial, the trusted time and
the deadline, REPORT and REFUSED with
their kind and reason. Boundaries are tested on both sides (a deadline
reached vs passed, a clock one second inside or outside a limit).

A bundle offer is tested on both paths: in memory (`offer_bundle` with
bytes) and streamed into the inactive slot and verified from there
(`offer_bundle` with a source). Tests that need storage use the real Store over
MemStorage through runner.Device. See tests/test_agent.py for the
scenarios (power cuts, reboots) driven end to end.
"""

from __future__ import annotations

import hashlib

import pytest

from support.fleetkit import DAY, NOW, Repo, encode, flip_payload_byte
from trustfleet_device import VERSION, documents, policy, slots
from trustfleet_device import agent as core
from trustfleet_device.errors import BundleError
from trustfleet_device.limits import DEFAULT
from trustfleet_device.source import BytesSource
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage

FIRMWARE_TIME = NOW - 30 * DAY
TIMEOUT = 60
DEVICE = "sensor-17"
EXPIRES = NOW + 90 * DAY        # expires_at of every fleetkit bundle
MAX_AGE = 2 * DAY               # max_timestamp_age of every fleetkit bundle
LEAD = 100 * DAY                # the root's max_time_lead: how far past authenticated time
STEP = 3600                     # a clock reading is saved only when this much newer


@pytest.fixture(scope="module")
def repo() -> Repo:
    # A lead past the bundles' 90-day expiry, so timestamps can carry a device to it.
    return Repo(time_lead=LEAD)


@pytest.fixture(scope="module")
def bundles(repo: Repo) -> dict[int, bytes]:
    return {v: repo.bundle(version=v) for v in (1, 2, 3, 4, 5)}


def config(repo: Repo, **kw) -> core.Config:
    settings = {"fleet": repo.fleet, "firmware_time": FIRMWARE_TIME, "health_timeout": TIMEOUT,
                "device_id": DEVICE}
    settings.update(kw)
    return core.Config(**settings)


def state(**changes) -> dict:
    s = slots.fresh_state()
    s.update(changes)
    return s


def boot(repo: Repo, st: dict | None = None, slot_docs: dict | None = None, clock: int = NOW,
         root_raw: bytes | None = None, **kw):
    """A booted agent and the actions boot returned."""
    agent = core.Agent(config(repo, **kw))
    empty = {"a": None, "b": None}
    actions = agent.boot(root_raw or repo.root_raw, st or state(), slot_docs or empty, clock)
    return agent, actions


def committed(repo: Repo, raw: bytes, version: int, **changes):
    """An agent booted on `raw` committed in slot a (floor = version)."""
    st = state(active="a", version=version, floor=version, time=NOW, vouched=NOW, **changes)
    agent, actions = boot(repo, st, {"a": raw, "b": None})
    assert actions == [] and agent.bundle.version == version
    return agent


def report(event: str, detail: str, **extra) -> tuple:
    return (core.REPORT, {"event": event, "detail": detail, "device": DEVICE, **extra})


def refused(kind: str, reason: str) -> list:
    return [(core.REFUSED, kind, reason), report("refused", f"{kind}: {reason}")]


def error_of(fn, *args) -> str:
    with pytest.raises(BundleError) as info:
        fn(*args)
    return str(info.value)


def sha(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


PATHS = ("memory", "stream")


def shown_for(agent: core.Agent, actions: list) -> list:
    """The actions with a HEALTH_CHECK's bundle replaced by its version, to compare with a list.

    The bundle it carries must be the very one the agent now holds on trial.
    """
    out = []
    for a in actions:
        if a[0] == core.HEALTH_CHECK:
            assert len(a) == 4 and a[1] is agent.trial_bundle()
            a = (a[0], a[1].version, a[2], a[3])
        out.append(a)
    return out


def offer(agent: core.Agent, raw: bytes, clock: int, path: str) -> list:
    """Offer a bundle in memory, or as if streamed into the inactive slot (no WRITE_SLOT then)."""
    if path == "memory":
        return shown_for(agent, agent.offer_bundle(raw, clock))
    return shown_for(agent, agent.offer_bundle(BytesSource(raw), clock, agent.inactive_slot(), sha(raw)))


def install_actions(slot: str, raw: bytes, path: str, switch_state: dict, version: int,
                    deadline: int) -> list:
    head = [(slots.WRITE_SLOT, slot, raw)] if path == "memory" else []
    return head + [(slots.SWITCH, switch_state), (core.HEALTH_CHECK, version, deadline - TIMEOUT, deadline)]


# ------------------------------------------------------------------ before boot, defaults


def test_config_defaults():
    c = core.Config()
    assert (c.fleet, c.firmware_time, c.health_timeout, c.limits, c.device_id, c.managed,
            c.agent_version) == (None, 0, 120, DEFAULT, None, False, VERSION)
    assert core.Config(managed=True).managed is True


def test_an_agent_before_boot_reports_no_store_and_no_root(repo):
    agent = core.Agent(config(repo))
    assert agent.root is None and agent.root_raw is None and agent.bundle is None
    assert agent.trial_bundle() is None and not agent.busy()
    assert agent.inactive_slot() == "a"
    assert agent.status(NOW) == {
        "device": DEVICE, "state": "no-store", "version": None, "floor": 0, "bad": [],
        "root_version": None, "trusted_time": NOW, "last_timestamp": 0, "reasons": [],
        "last_revert": None, "agent_version": VERSION,
    }


def test_default_health_timeout_sets_the_deadline(repo, bundles):
    agent = core.Agent(core.Config(fleet=repo.fleet))
    agent.boot(repo.root_raw, state(), {"a": None, "b": None}, NOW)
    assert shown_for(agent, agent.offer_bundle(bundles[1], NOW))[-1] == (core.HEALTH_CHECK, 1, NOW, NOW + 120)


# ------------------------------------------------------------------ boot


def test_boot_with_no_active_slot_loads_nothing(repo, bundles):
    agent, actions = boot(repo, slot_docs={"a": bundles[1], "b": bundles[2]})
    assert actions == [] and agent.bundle is None
    assert agent.root.version == 1 and agent.root_raw == repo.root_raw
    assert agent.status(NOW)["state"] == "no-store"


@pytest.mark.parametrize("as_source", [False, True], ids=["bytes", "source"])
@pytest.mark.parametrize("slot", ["a", "b"])
def test_boot_loads_the_verified_active_slot(repo, bundles, slot, as_source):
    raw = bundles[2]
    other = "b" if slot == "a" else "a"
    docs = {slot: BytesSource(raw) if as_source else raw, other: bundles[1]}
    agent, actions = boot(repo, state(active=slot, version=2, floor=2, time=NOW), docs)
    assert actions == [] and agent.bundle.version == 2
    assert agent.inactive_slot() == other
    assert agent.status(NOW)["state"] == "ok"


def test_boot_refuses_an_unusable_root(repo):
    agent = core.Agent(config(repo))
    with pytest.raises(BundleError):
        agent.boot(flip_payload_byte(repo.root_raw), state(), {"a": None, "b": None}, NOW)


def test_boot_with_an_empty_active_slot_reports_it_and_forgets_the_slot(repo, bundles):
    st = state(active="a", version=2, floor=2, time=NOW)
    agent, actions = boot(repo, st, {"a": None, "b": None})
    after = state(active=None, version=None, floor=2, time=NOW)
    assert actions == [report("store-invalid", "slot a is empty"), (slots.SAVE, after)]
    assert agent.state == after and agent.bundle is None
    assert agent.status(NOW)["state"] == "no-store"


def _fallback_case(repo, bundles, active, other_raw, **changes):
    """Active slot holds a corrupted v3 (floor 3); the other slot holds other_raw."""
    corrupt = flip_payload_byte(bundles[3])
    other = "b" if active == "a" else "a"
    st = state(active=active, version=3, floor=3, time=NOW, **changes)
    detail = error_of(policy.verify_bundle, policy.load_trusted_root(repo.root_raw), corrupt)
    agent, actions = boot(repo, st, {active: corrupt, other: other_raw})
    return agent, actions, st, other, detail


@pytest.mark.parametrize("active", ["a", "b"])
def test_boot_falls_back_to_the_other_slot_on_trial_when_it_was_never_committed(repo, bundles, active):
    # The other slot holds v4: installed, then reverted once by a reboot before commit
    # (retried, not bad). It is above the floor, so it was never proven: the device
    # falls back to it ON TRIAL, with a health check, and nothing to go back to.
    agent, actions, st, other, detail = _fallback_case(repo, bundles, active, bundles[4], retried=[4])
    after = dict(st, active=other, version=4, trial=True, previous=None, previous_version=None,
                 vouched=NOW)
    assert shown_for(agent, actions) == [report("store-invalid", detail), (slots.SWITCH, after),
                                         (core.HEALTH_CHECK, 4, NOW, NOW + TIMEOUT)]
    assert agent.state == after and agent.bundle is None and agent.busy()
    assert agent.status(NOW)["state"] == "trial"
    done = dict(after, trial=False, floor=4)
    assert agent.health(True, "reachable", NOW + 1) == [(slots.COMMIT, done),
                                                         report("installed", "bundle v4 committed")]


def test_boot_falls_back_to_a_slot_exactly_at_the_floor(repo, bundles):
    agent, actions, st, other, detail = _fallback_case(repo, bundles, "a", bundles[3])
    after = dict(st, active="b", version=3, vouched=NOW)
    assert actions == [report("store-invalid", detail), (slots.COMMIT, after)]
    assert agent.bundle.version == 3 and agent.state == after


@pytest.mark.parametrize("case", ["below-floor", "bad", "bad-at-floor", "empty", "invalid"])
def test_boot_does_not_fall_back_below_the_floor_to_a_bad_or_unusable_slot(repo, bundles, case):
    other_raw, changes = {
        "below-floor": (bundles[2], {}),
        "bad": (bundles[4], {"bad": [4]}),
        "bad-at-floor": (bundles[3], {"bad": [3]}),
        "empty": (None, {}),
        "invalid": (flip_payload_byte(bundles[4]), {}),
    }[case]
    agent, actions, st, _, detail = _fallback_case(repo, bundles, "a", other_raw, **changes)
    after = dict(st, active=None, version=None)
    assert actions == [report("store-invalid", detail), (slots.SAVE, after)]
    assert agent.state == after and agent.bundle is None


def test_boot_on_trial_reverts_once_then_marks_bad(repo, bundles):
    st = state(active="b", version=2, trial=True, previous="a", previous_version=1, floor=1, time=NOW)
    docs = {"a": bundles[1], "b": bundles[2]}
    agent, actions = boot(repo, st, docs)
    first = state(active="a", version=1, floor=1, time=NOW, retried=[2], reason="reboot before commit",
                  vouched=NOW)
    assert actions == [(slots.REVERT, first),
                       report("reverted", "bundle v2: reboot before commit", version=2)]
    assert agent.bundle.version == 1 and not agent.busy()
    # The same version on trial again: the second reboot calls it bad.
    agent, actions = boot(repo, dict(st, retried=[2]), docs)
    second = dict(first, bad=[2])
    assert actions == [(slots.REVERT, second),
                       report("reverted", "bundle v2: reboot before commit", version=2)]


# ------------------------------------------------------------------ time


@pytest.mark.parametrize("clock, st, expected", [
    (NOW, state(), NOW),                                                   # the clock
    (0, state(), FIRMWARE_TIME),                                           # firmware build time
    (NOW, state(time=NOW + 5), NOW + 5),                                   # persisted time
    (NOW, state(last_timestamp=NOW + 7), NOW + 7),                         # last timestamp
    (NOW + 9, state(time=NOW + 5, last_timestamp=NOW + 7), NOW + 9),
])
def test_trusted_time_is_the_latest_of_clock_state_and_firmware(repo, clock, st, expected):
    agent, _ = boot(repo, st)
    assert agent.trusted_time(clock) == expected
    assert agent.status(clock)["trusted_time"] == expected


@pytest.mark.parametrize("clock, saved", [
    (NOW + 1, False),
    (NOW + STEP, False),              # not more than one step newer: not worth a flash write
    (NOW + STEP + 1, True),
    (NOW + LEAD, True),               # as far ahead of authenticated time as is plausible
    (NOW + LEAD + 1, False),          # further: an NTP attacker's jump is never made permanent
    (NOW - DAY, False),
])
def test_observe_clock_saves_a_plausible_reading(repo, clock, saved):
    agent, _ = boot(repo, state(time=NOW, last_timestamp=NOW))
    actions = agent.observe_clock(clock)
    if saved:
        assert actions == [(slots.SAVE, state(time=clock, last_timestamp=NOW))]
        assert agent.state["time"] == clock
        assert agent.observe_clock(clock + STEP) == [], "the next step counts from the saved reading"
    else:
        assert actions == [] and agent.state == state(time=NOW, last_timestamp=NOW)


@pytest.mark.parametrize("clock, saved", [(FIRMWARE_TIME + LEAD, True), (FIRMWARE_TIME + LEAD + 1, False)])
def test_clock_lead_counts_from_firmware_time_when_nothing_is_authenticated(repo, clock, saved):
    agent, _ = boot(repo)
    expected = [(slots.SAVE, state(time=clock))] if saved else []
    assert agent.observe_clock(clock) == expected


def test_tick_when_idle_saves_the_clock(repo):
    agent, _ = boot(repo, state(time=NOW))
    assert agent.tick(NOW + STEP) == []
    assert agent.tick(NOW + STEP + 1) == [(slots.SAVE, state(time=NOW + STEP + 1))]


def test_timestamp_is_saved_as_authenticated_time_with_its_freshness(repo, bundles):
    agent, _ = boot(repo)
    raw = repo.timestamp(bundles[1], time=NOW + 10)
    latest = [1, sha(bundles[1]).hex(), NOW + 10]   # version, digest, when this version was first named
    assert agent.offer_timestamp(raw, 0) == [(slots.SAVE, state(last_timestamp=NOW + 10, latest=latest))]
    assert agent.trusted_time(0) == NOW + 10
    # The same version named again keeps the time it was first named.
    later = repo.timestamp(bundles[1], time=NOW + 20)
    assert agent.offer_timestamp(later, 0) == [(slots.SAVE, state(last_timestamp=NOW + 20, latest=latest))]


def test_timestamp_older_than_saved_time_keeps_the_saved_time(repo, bundles):
    agent, _ = boot(repo, state(time=NOW + 100))
    actions = agent.offer_timestamp(repo.timestamp(bundles[1], time=NOW), NOW)
    latest = [1, sha(bundles[1]).hex(), NOW]
    assert actions == [(slots.SAVE, state(time=NOW + 100, last_timestamp=NOW, latest=latest))]


def test_timestamp_older_than_the_last_is_refused(repo, bundles):
    st = state(time=NOW + 10, last_timestamp=NOW + 10)
    agent, _ = boot(repo, st)
    actions = agent.offer_timestamp(repo.timestamp(bundles[1], time=NOW + 9), NOW)
    assert actions == refused("timestamp", f"timestamp time {NOW + 9} is older than the last accepted {NOW + 10}")
    assert agent.state == st


# ------------------------------------------------------------------ install, health, deadline


@pytest.mark.parametrize("path", PATHS)
def test_install_switches_on_trial_then_commits(repo, bundles, path):
    agent, _ = boot(repo, clock=NOW)
    trial = state(active="a", version=1, trial=True, vouched=NOW)    # vouched: the bundle's issued_at
    assert offer(agent, bundles[1], NOW, path) == install_actions("a", bundles[1], path, trial, 1,
                                                                  NOW + TIMEOUT)
    assert agent.state == trial and agent.busy() and agent.bundle is None
    assert agent.trial_bundle().version == 1

    done = state(active="a", version=1, floor=1, vouched=NOW)
    assert agent.health(True, "endpoints reachable", NOW + 1) == [
        (slots.COMMIT, done), report("installed", "bundle v1 committed")]
    assert agent.state == done and agent.bundle.version == 1
    assert agent.trial_bundle() is None and not agent.busy()
    assert agent.health(True, "again", NOW + 2) == [], "no trial: nothing to commit"

    # The next install goes to the other slot and remembers the way back.
    trial2 = state(active="b", version=2, trial=True, previous="a", previous_version=1, floor=1,
                   vouched=NOW)
    assert offer(agent, bundles[2], NOW + 5, path) == install_actions("b", bundles[2], path, trial2, 2,
                                                                      NOW + 5 + TIMEOUT)


def test_stored_bundle_must_be_in_the_inactive_slot(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    with pytest.raises(ValueError, match="inactive slot is b"):
        agent.offer_bundle(BytesSource(bundles[2]), NOW, "a", sha(bundles[2]))
    assert agent.state["active"] == "a" and not agent.busy()


def test_health_check_deadline_is_reached_then_passed(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    agent.offer_bundle(bundles[2], NOW)
    assert agent.tick(NOW + TIMEOUT) == [] and agent.busy()
    reason = "health check gave no answer before the deadline"
    back = state(active="a", version=1, floor=1, time=NOW, vouched=NOW, bad=[2], reason=reason)
    assert agent.tick(NOW + TIMEOUT + 1) == [(slots.REVERT, back),
                                             report("reverted", "bundle v2: " + reason, version=2)]
    assert agent.state == back and agent.bundle.version == 1


def test_deadline_counts_in_trusted_time(repo, bundles):
    # A clock far behind (a board at 2000-01-01) cannot stretch the deadline:
    # it is set and checked in trusted time.
    agent = committed(repo, bundles[1], 1)
    assert shown_for(agent, agent.offer_bundle(bundles[2], 946_684_800))[-1] == (
        core.HEALTH_CHECK, 2, NOW, NOW + TIMEOUT)


@pytest.mark.parametrize("path", PATHS)
def test_failed_health_check_reverts_marks_bad_and_frees_the_agent(repo, bundles, path):
    agent = committed(repo, bundles[1], 1)
    offer(agent, bundles[2], NOW, path)
    reason = "health check failed: TLS to api.acme.example failed"
    back = state(active="a", version=1, floor=1, time=NOW, vouched=NOW, bad=[2], reason=reason)
    assert agent.health(False, "TLS to api.acme.example failed", NOW + 1) == [
        (slots.REVERT, back), report("reverted", "bundle v2: " + reason, version=2)]
    assert agent.state == back and agent.bundle.version == 1
    assert agent.trial_bundle() is None and not agent.busy()
    assert agent.status(NOW)["last_revert"] == reason
    # Not waiting any more: the next version installs, into the freed slot.
    assert offer(agent, bundles[3], NOW, path)[-1] == (core.HEALTH_CHECK, 3, NOW, NOW + TIMEOUT)
    assert agent.state["active"] == "b"


# ------------------------------------------------------------------ refused bundles


@pytest.mark.parametrize("path", PATHS)
def test_bundle_offered_during_a_trial_is_refused(repo, bundles, path):
    agent = committed(repo, bundles[1], 1)
    offer(agent, bundles[2], NOW, path)
    before = slots.copy_state(agent.state)
    assert offer(agent, bundles[3], NOW, path) == refused(
        "bundle", "an install is already waiting for its health check")
    assert agent.state == before and agent.trial_bundle().version == 2


def test_a_stream_goes_to_the_inactive_slot_unless_a_trial_waits(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    assert agent.begin_stream() == ("b", None)
    offer(agent, bundles[2], NOW, "stream")
    before = slots.copy_state(agent.state)
    assert agent.begin_stream() == (None, refused(
        "bundle", "an install is already waiting for its health check"))
    assert agent.state == before and agent.trial_bundle().version == 2


def test_a_stream_over_the_limit_is_refused_with_the_limit(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    before = slots.copy_state(agent.state)
    assert agent.stream_too_large(4096) == refused("bundle", "document is over 4096 bytes, the limit")
    assert agent.state == before and not agent.busy()


def test_the_device_shows_what_callers_read_without_reaching_into_the_agent(repo, bundles):
    storage = MemStorage()
    runner.initialise(storage, repo.root_raw, config(repo))
    asked = []

    def health(bundle, trusted_time):
        asked.append((bundle.version, trusted_time, device.busy()))
        return bundle.version != 2, "TLS to api.acme.example failed"

    device = runner.Device(storage, config(repo), health, lambda: NOW)
    assert (device.root_version(), device.active_bundle(), device.bad_versions(), device.busy()) == (
        1, None, [], False)
    assert device.trusted_time() == NOW and device.trusted_time(NOW + 9) == NOW + 9
    assert device.offer("bundle", bundles[1]).committed == 1
    assert device.offer("bundle", bundles[2]).reverted == 2
    assert asked == [(1, NOW, True), (2, NOW, True)]
    assert device.active_bundle().version == 1 and device.bad_versions() == [2]
    device.bad_versions().append(7)
    assert device.bad_versions() == [2] and not device.busy()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("version", [1, 2])
def test_bundle_not_above_the_floor_is_refused(repo, bundles, path, version):
    agent = committed(repo, bundles[2], 2)
    raw = bundles[version] if version == 1 else repo.bundle(version=2, distrust=[sha(b"other")])
    reason = f"bundle version {version} is not newer than installed version 2"
    # Older and signed: a stale retained copy (another topic mid-rollout), refused without a
    # report. The same version with other content is refused and reported.
    expected = [(core.STALE, "bundle", reason)] if version == 1 else refused("bundle", reason)
    assert offer(agent, raw, NOW, path) == expected
    assert not agent.busy() and agent.state == state(active="a", version=2, floor=2, time=NOW, vouched=NOW)


@pytest.mark.parametrize("path", PATHS)
def test_the_installed_bundle_offered_again_is_ignored_not_refused(repo, bundles, path):
    # A retained copy arrives after every restart: no refusal, no report, nothing to save.
    agent = committed(repo, bundles[2], 2)
    before = slots.copy_state(agent.state)
    assert offer(agent, bundles[2], NOW, path) == []
    assert agent.state == before and not agent.busy()
    # Known from the boot source, then from each commit.
    assert agent.active_digest == sha(bundles[2])
    offer(agent, bundles[3], NOW, path)
    assert agent.active_digest is None, "on trial: the active document is not settled"
    agent.health(True, "ok", NOW)
    assert agent.active_digest == sha(bundles[3])
    assert offer(agent, bundles[3], NOW, path) == []
    assert offer(agent, bundles[2], NOW, path)[0][0] == core.STALE


def test_the_active_digest_is_not_read_from_a_boot_source_once_a_slot_was_written(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    agent.begin_stream()  # reads the active document first, then the inactive slot may change
    assert agent.active_digest == sha(bundles[1])
    agent = committed(repo, bundles[1], 1)
    agent.offer_bundle(bundles[2], NOW)
    agent.health(False, "refused", NOW)  # back to v1, whose digest this session never saw
    assert agent.active_digest is None and agent._known_active_digest() is None
    assert agent.offer_bundle(bundles[1], NOW)[0][0] == core.REFUSED


def test_the_active_digest_of_a_streamed_boot_source_is_read_in_pieces(repo):
    big = repo.bundle(version=1, distrust=[sha(bytes([i])) for i in range(40)])
    assert len(big) > 1024
    st = state(active="a", version=1, floor=1, time=NOW, vouched=NOW)
    agent, _ = boot(repo, st, {"a": BytesSource(big), "b": None})
    assert agent._known_active_digest() == sha(big)


@pytest.mark.parametrize("path", PATHS)
def test_bundle_reverted_as_bad_is_refused(repo, bundles, path):
    agent = committed(repo, bundles[1], 1, bad=[2])
    assert offer(agent, bundles[2], NOW, path) == refused(
        "bundle", "bundle version 2 was reverted as bad on this device")
    assert offer(agent, bundles[3], NOW, path)[-1] == (core.HEALTH_CHECK, 3, NOW, NOW + TIMEOUT)


@pytest.mark.parametrize("path", PATHS)
def test_bundle_not_newer_than_the_active_one_is_refused(repo, bundles, path):
    # A state whose active version (4) is above the floor (3), as an older agent's boot
    # fallback left it: the floor alone would let v4 be installed again over itself.
    agent, _ = boot(repo, state(active="a", version=4, floor=3, time=NOW), {"a": bundles[4], "b": None})
    assert agent.state["floor"] == 3 and agent.bundle.version == 4
    other4 = repo.bundle(version=4, distrust=[sha(b"other")])  # the same bytes would be ignored
    assert offer(agent, other4, NOW, path) == refused(
        "bundle", "bundle version 4 is not newer than active version 4")
    assert offer(agent, bundles[3], NOW, path) == refused(
        "bundle", "bundle version 3 is not newer than installed version 3")
    assert not agent.busy()
    assert offer(agent, bundles[5], NOW, path)[-1] == (core.HEALTH_CHECK, 5, NOW, NOW + TIMEOUT)


@pytest.mark.parametrize("path", PATHS)
def test_bundle_expired_at_trusted_time_is_refused(repo, bundles, path):
    # The clock says long ago; the saved authenticated time says the bundle has expired.
    agent, _ = boot(repo, state(time=EXPIRES))
    assert offer(agent, bundles[1], NOW, path) == refused(
        "bundle", f"bundle v1 expired at {EXPIRES}, trusted time is {EXPIRES}")


@pytest.mark.parametrize("path", PATHS)
def test_bundle_must_match_the_digest_in_the_latest_timestamp(repo, bundles, path):
    other_v2 = repo.bundle(version=2)   # validly signed, but not the v2 the timestamp vouches for
    assert other_v2 != bundles[2]
    agent = committed(repo, bundles[1], 1)
    agent.offer_timestamp(repo.timestamp(bundles[2], time=NOW), NOW)
    assert offer(agent, other_v2, NOW, path) == refused(
        "bundle", "bundle v2 does not match the digest in the latest timestamp")
    assert offer(agent, bundles[2], NOW, path)[-1] == (core.HEALTH_CHECK, 2, NOW, NOW + TIMEOUT)


def test_bundle_signed_below_threshold_is_refused(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    weak = repo.bundle(version=2, signers=repo.keys["bundle"][:1])
    reason = error_of(policy.verify_bundle, agent.root, weak)
    assert agent.offer_bundle(weak, NOW) == refused("bundle", reason)
    assert "needs 2" in reason


# ------------------------------------------------------------------ roots


def test_next_root_is_written_and_reported():
    repo = Repo()
    agent, _ = boot(repo, root_raw=repo.root_raw)
    raw = repo.rotate("bundle", new_keys=1)
    assert agent.offer_root(raw, NOW) == [(slots.WRITE_ROOT, raw), report("root-updated", "root v2")]
    assert agent.root.version == 2 and agent.root_raw == raw
    assert agent.status(NOW)["root_version"] == 2


@pytest.mark.parametrize("case", ["same", "skip", "corrupt"])
def test_root_that_is_not_the_next_one_is_refused(case):
    repo = Repo()
    agent, _ = boot(repo, root_raw=repo.root_raw)
    v2 = repo.rotate("bundle", new_keys=1)
    v3 = repo.rotate("bundle", new_keys=1)
    raw = {"same": repo.root_raw, "skip": v3, "corrupt": flip_payload_byte(v2)}[case]
    reason = error_of(policy.verify_root_update, agent.root, raw)
    assert agent.offer_root(raw, NOW) == refused("root", reason)
    assert agent.root.version == 1 and agent.root_raw == repo.root_raw


# ------------------------------------------------------------------ status


def _fresh_to(agent: core.Agent, repo: Repo, raw: bytes, t: int) -> None:
    assert agent.offer_timestamp(repo.timestamp(raw, time=t), 0)[0][0] == slots.SAVE


def test_status_of_a_fresh_committed_store(repo, bundles):
    agent = committed(repo, bundles[1], 1, bad=[7])
    assert agent.status(NOW + 1) == {
        "device": DEVICE, "state": "ok", "version": 1, "floor": 1, "bad": [7], "root_version": 1,
        "trusted_time": NOW + 1, "last_timestamp": 0, "reasons": [], "last_revert": None,
        "agent_version": VERSION,
    }


def test_stale_when_the_bundle_has_expired(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    _fresh_to(agent, repo, bundles[1], EXPIRES - 1)
    assert agent.status(EXPIRES - 1)["reasons"] == []
    status = agent.status(EXPIRES)
    assert status["state"] == "stale" and status["version"] == 1
    assert status["reasons"] == [f"bundle v1 expired at {EXPIRES}"]


def test_stale_when_the_last_timestamp_is_too_old(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    _fresh_to(agent, repo, bundles[1], NOW + DAY)
    assert agent.status(NOW + DAY + MAX_AGE)["state"] == "ok"
    status = agent.status(NOW + DAY + MAX_AGE + 1)
    assert status["state"] == "stale" and status["reasons"] == [f"no timestamp newer than {MAX_AGE} s"]


def test_stale_without_any_timestamp_counts_from_issued_at(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    assert agent.status(NOW + MAX_AGE)["state"] == "ok"
    assert agent.status(NOW + MAX_AGE + 1)["reasons"] == [f"no timestamp newer than {MAX_AGE} s"]


def test_stale_when_the_root_has_expired_but_still_trusted(repo, bundles):
    root_expires = NOW + 10 * DAY
    short_root = repo.sign(encode(repo.root_map(expires=root_expires)), repo.signers("root"))
    st = state(active="a", version=1, floor=1, time=NOW)
    agent, _ = boot(repo, st, {"a": bundles[1], "b": None}, root_raw=short_root)
    _fresh_to(agent, repo, bundles[1], root_expires - 1)
    assert agent.status(root_expires - 1)["state"] == "ok"
    status = agent.status(root_expires)
    assert status["state"] == "stale" and status["reasons"] == [f"root v1 expired at {root_expires}"]
    # Still trusted: a timestamp signed under it is accepted.
    _fresh_to(agent, repo, bundles[1], root_expires + 1)


def test_stale_reasons_all_at_once_in_order(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    late = NOW + 366 * DAY
    assert agent.status(late)["reasons"] == [
        f"bundle v1 expired at {EXPIRES}",
        f"no timestamp newer than {MAX_AGE} s",
        f"root v1 expired at {NOW + 365 * DAY}",
    ]


def test_trial_is_reported_as_trial_not_stale(repo, bundles):
    agent = committed(repo, bundles[1], 1)
    agent.offer_bundle(bundles[2], NOW)
    status = agent.status(NOW + 10 * DAY)
    assert status["state"] == "trial" and status["reasons"] == [] and status["version"] == 1


# ------------------------------------------------------------------ with a real store


def test_fallback_after_flash_corruption_is_persisted_through_the_store(repo, bundles):
    storage = MemStorage()
    runner.initialise(storage, repo.root_raw, config(repo))
    device = runner.Device(storage, config(repo), runner.no_endpoints, lambda: NOW)
    assert device.offer("bundle", bundles[1]).committed == 1
    # v2 goes on trial in slot b, then the board reboots before the health check answers.
    device.store.apply_all(device.agent.offer_bundle(bundles[2], NOW)[:2])
    device = runner.Device(storage.reboot(), config(repo), runner.no_endpoints, lambda: NOW)
    assert device.status()["version"] == 1 and device.agent.state["retried"] == [2]
    # Slot a rots on flash: the next boot falls back to v2, on trial; its health
    # check (no endpoints here) passes and commits that choice.
    storage = device.store.storage.reboot()
    storage.files["slot-a.cose"] = flip_payload_byte(bundles[1])
    device = runner.Device(storage, config(repo), runner.no_endpoints, lambda: NOW)
    assert [r["event"] for r in device.boot_result.reports] == ["store-invalid", "installed"]
    assert device.boot_result.committed == 2
    again = runner.Device(storage.reboot(), config(repo), runner.no_endpoints, lambda: NOW)
    assert again.boot_result.reports == [] and again.status()["version"] == 2
    assert again.agent.state["active"] == "b"


def test_streamed_install_through_the_store(repo, bundles):
    storage = MemStorage()
    runner.initialise(storage, repo.root_raw, config(repo))
    device = runner.Device(storage, config(repo), runner.no_endpoints, lambda: NOW)
    raw = bundles[1]
    assert device.receive_bundle([raw[:100], raw[100:]]).committed == 1
    assert storage.read("slot-a.cose") == raw
    # The same document again (a retained copy): ignored; another v1 is refused.
    result = device.receive_bundle([bundles[1]])
    assert result.refused == [] and result.reports == []
    other = repo.bundle(version=1, distrust=[sha(b"other")])
    result = device.receive_bundle([other])
    assert result.refused == [("bundle", "bundle version 1 is not newer than installed version 1")]
    assert device.status()["version"] == 1 and device.agent.state["active"] == "a"


# ------------------------------------------------------------------ bounded time (docs/format.md "Trusted time")


def test_config_on_unreachable_is_revert_or_keep():
    assert core.Config().on_unreachable == "revert"
    assert core.Config(on_unreachable="keep").on_unreachable == "keep"
    with pytest.raises(ValueError, match="on_unreachable must be 'revert' or 'keep', not 'wait'"):
        core.Config(on_unreachable="wait")


@pytest.mark.parametrize("vouched, base", [(0, FIRMWARE_TIME), (NOW, NOW)])
def test_timestamp_is_accepted_up_to_the_lead_past_vouched_time_and_refused_beyond(repo, bundles,
                                                                                  vouched, base):
    st = state(vouched=vouched)
    agent, _ = boot(repo, st)
    assert agent.time_bound() == base + LEAD
    beyond = repo.timestamp(bundles[1], time=base + LEAD + 1)
    assert agent.offer_timestamp(beyond, 0) == refused(
        "timestamp", f"dated {base + LEAD + 1}, more than {LEAD} s past {base}, the newest time the "
                     "offline keys vouch for")
    assert agent.state == st, "a refused timestamp leaves no trace"
    at = repo.timestamp(bundles[1], time=base + LEAD)
    assert agent.offer_timestamp(at, 0)[0][0] == slots.SAVE
    assert agent.trusted_time(0) == base + LEAD


def test_the_root_sets_the_lead_and_the_default_is_thirty_days(bundles):
    repo = Repo()
    agent, _ = boot(repo, state(vouched=NOW))
    assert agent.root.time_lead == 30 * DAY == agent.time_bound() - NOW


def test_root_with_a_lead_out_of_range_is_refused(repo):
    for lead in (3599, 400 * DAY + 1):
        payload = encode(repo.root_map(policy={"max_time_lead": lead}), False)
        with pytest.raises(BundleError, match=f"root.policy.max_time_lead: {lead} s is not in 3600..34560000"):
            documents.parse_root(payload)
    for lead in (3600, 400 * DAY):
        assert documents.parse_root(encode(repo.root_map(policy={"max_time_lead": lead}))).time_lead == lead
    with pytest.raises(BundleError, match="root.policy: unknown field 'lead'"):
        documents.parse_root(encode(repo.root_map(policy={"max_time_lead": 3600, "lead": 1}), False))


def test_a_bundle_moves_vouched_time_at_most_the_lead_past_trusted_time(repo, bundles):
    agent, _ = boot(repo, state())
    future = repo.bundle(version=1, issued_at=NOW + 5 * LEAD, expires_at=NOW + 6 * LEAD)
    agent.offer_bundle(future, NOW)
    assert agent.state["vouched"] == NOW + LEAD
    # One just inside the bound moves it exactly there; an older one never lowers it.
    agent, _ = boot(repo, state(vouched=NOW))
    agent.offer_bundle(repo.bundle(version=1, issued_at=NOW + LEAD - 1, expires_at=NOW + 2 * LEAD), NOW)
    assert agent.state["vouched"] == NOW + LEAD - 1
    agent, _ = boot(repo, state(vouched=NOW + 10))
    agent.offer_bundle(bundles[1], NOW)
    assert agent.state["vouched"] == NOW + 10


def test_boot_vouches_the_installed_bundle_only_for_a_state_without_vouched_time(repo, bundles):
    agent, actions = boot(repo, state(active="a", version=1, floor=1), {"a": bundles[1], "b": None})
    assert actions == [] and agent.state["vouched"] == NOW
    agent, _ = boot(repo, state(active="a", version=1, floor=1, vouched=NOW - 5), {"a": bundles[1], "b": None})
    assert agent.state["vouched"] == NOW - 5


@pytest.mark.parametrize("st, base", [
    (state(vouched=NOW + 50), NOW + 50),
    (state(vouched=NOW, last_timestamp=NOW + 70), NOW + 70),
    (state(vouched=FIRMWARE_TIME - 9), FIRMWARE_TIME),
])
def test_clock_reading_is_saved_up_to_the_lead_past_authenticated_time(repo, st, base):
    agent, _ = boot(repo, st)
    assert agent.observe_clock(base + LEAD + 1) == []
    assert agent.observe_clock(base + LEAD) == [(slots.SAVE, dict(st, time=base + LEAD))]


def test_clock_step_counts_from_the_latest_authenticated_time(repo):
    agent, _ = boot(repo, state(time=NOW - 9 * STEP, vouched=NOW))
    assert agent.observe_clock(NOW + STEP) == []
    assert agent.observe_clock(NOW + STEP + 1)[0][1]["time"] == NOW + STEP + 1
    agent, _ = boot(repo, state(last_timestamp=NOW, vouched=NOW - 9 * STEP))
    assert agent.observe_clock(NOW + STEP) == []


def test_a_root_that_rotates_timestamp_keys_out_forgets_what_they_taught():
    repo = Repo(sizes={"root": (2, 2), "bundle": (3, 2), "timestamp": (2, 1)})
    st = state(last_timestamp=NOW + 9, latest=[1, "ab" * 32, NOW + 9], time=NOW)
    agent, _ = boot(repo, st)
    raw = repo.rotate("timestamp", new_keys=1, remove=2)
    forgot = dict(st, last_timestamp=0, latest=None)
    assert agent.offer_root(raw, NOW) == [(slots.SAVE, forgot), (slots.WRITE_ROOT, raw),
                                          report("root-updated", "root v2")]
    assert agent.state == forgot and agent.trusted_time(0) == NOW


def test_a_root_that_keeps_the_timestamp_keys_keeps_what_they_taught():
    repo = Repo()
    st = state(last_timestamp=NOW + 9, latest=[1, "ab" * 32, NOW + 9])
    agent, _ = boot(repo, st)
    raw = repo.rotate("timestamp", new_keys=1)  # a key added, none removed
    assert agent.offer_root(raw, NOW) == [(slots.WRITE_ROOT, raw), report("root-updated", "root v2")]
    assert agent.state == st


# ------------------------------------------------------------------ freshness: behind


def _behind(repo, bundles, **changes):
    latest = [2, sha(bundles[2]).hex(), NOW + DAY]
    return committed(repo, bundles[1], 1, last_timestamp=NOW + DAY, latest=latest, **changes)


def test_behind_when_the_latest_timestamp_names_a_newer_version(repo, bundles):
    agent = _behind(repo, bundles)
    assert agent.state_name(NOW + DAY) == ("behind", ["the latest timestamp names v2, this device holds v1"])
    assert agent.status(NOW + DAY)["state"] == "behind"
    assert agent.state_name(NOW + DAY + MAX_AGE)[0] == "behind"
    state_, reasons = agent.state_name(NOW + DAY + MAX_AGE + 1)
    assert state_ == "stale" and reasons == [f"no timestamp newer than {MAX_AGE} s",
                                             "the latest timestamp names v2, this device holds v1",
                                             f"behind for more than {MAX_AGE} s"]


def test_behind_says_when_the_named_version_was_reverted_as_bad_here(repo, bundles):
    agent = _behind(repo, bundles, bad=[2])
    assert agent.state_name(NOW + DAY) == ("behind", [
        "the latest timestamp names v2, this device holds v1 (v2 was reverted as bad here)"])


def test_not_behind_when_the_latest_timestamp_names_the_version_held_or_older(repo, bundles):
    for named in (1, 0):
        agent = committed(repo, bundles[1], 1, last_timestamp=NOW, latest=[named, "00" * 32, NOW])
        assert agent.state_name(NOW) == ("ok", [])


def test_stale_for_another_reason_stays_stale_when_also_behind(repo, bundles):
    agent = _behind(repo, bundles)
    assert agent.state_name(EXPIRES)[0] == "stale"


# ------------------------------------------------------------------ inconclusive health checks


def _trial(repo, bundles, timeout=TIMEOUT, **kw):
    agent = committed(repo, bundles[1], 1, **kw) if not kw.get("on_unreachable") else None
    if agent is None:
        st = state(active="a", version=1, floor=1, time=NOW, vouched=NOW)
        agent, _ = boot(repo, st, {"a": bundles[1], "b": None}, health_timeout=timeout, **kw)
    elif timeout != TIMEOUT:
        agent.config.health_timeout = timeout
    agent.offer_bundle(bundles[2], NOW)
    return agent


def test_an_inconclusive_health_check_keeps_the_trial_and_asks_again_with_backoff(repo, bundles):
    agent = _trial(repo, bundles, timeout=10_000)
    assert agent.next_health_retry(NOW) is None, "no answer yet: nothing to retry"
    assert agent.health(None, "unreachable", NOW) == [] and agent.busy()
    assert agent.next_health_retry(NOW) == 5 and agent.next_health_retry(NOW + 4) == 1
    assert agent.next_health_retry(NOW + 5) == 0 and agent.next_health_retry(NOW + 9) == 0
    assert agent.tick(NOW + 4) == []
    check = agent.tick(NOW + 5)
    assert shown_for(agent, check) == [(core.HEALTH_CHECK, 2, NOW + 5, NOW + 10_000)]
    assert agent.next_health_retry(NOW + 5) is None, "asked: the retry is used up"
    t, delays = NOW + 5, []
    for _ in range(8):
        agent.health(None, "unreachable", t)
        wait = agent.next_health_retry(t)
        delays.append(wait)
        t += wait
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    assert agent.state["bad"] == [] and agent.state["retried"] == []


def test_an_inconclusive_answer_after_the_deadline_reverts_without_a_bad_mark(repo, bundles):
    agent = _trial(repo, bundles)
    assert agent.health(None, "api:443 unreachable", NOW + TIMEOUT - 1) == []
    # Past the deadline, but a retry is pending: the deadline alone does not mark it bad.
    assert agent.tick(NOW + TIMEOUT + 1) == [] and agent.busy()
    reason = "endpoints unreachable, not marked bad: api:443 unreachable"
    back = state(active="a", version=1, floor=1, time=NOW, vouched=NOW, reason=reason)
    assert agent.health(None, "api:443 unreachable", NOW + TIMEOUT) == [
        (slots.REVERT, back), report("reverted", "bundle v2: " + reason, version=2)]
    assert agent.state == back and not agent.busy()


def test_keep_on_unreachable_stays_on_trial_past_the_deadline(repo, bundles):
    agent = _trial(repo, bundles, on_unreachable="keep")
    assert agent.health(None, "unreachable", NOW + 10 * TIMEOUT) == [] and agent.busy()
    assert agent.next_health_retry(NOW + 10 * TIMEOUT) == 5
    assert agent.health(True, "reachable", NOW + 10 * TIMEOUT)[0][0] == slots.COMMIT


def test_clear_bad_lets_a_version_be_installed_again(repo, bundles):
    agent = committed(repo, bundles[1], 1, bad=[2, 3], retried=[3])
    after = state(active="a", version=1, floor=1, time=NOW, vouched=NOW, bad=[2])
    assert agent.clear_bad(3) == [(slots.SAVE, after), report("bad-cleared", "bundle v3 may be installed again")]
    assert agent.state == after
    with pytest.raises(ValueError, match=r"version 3 is not marked bad on this device \(bad: 2\)"):
        agent.clear_bad(3)
    assert agent.state == after
