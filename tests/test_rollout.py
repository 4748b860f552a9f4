"""The staged-rollout engine: waves, gates, automatic halts, operator controls.

Pure logic: device rows are dicts shaped like fleetdb.devices() returns
them, time is a number the test moves, nothing touches a broker.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustfleet_device import topics
from trustfleet_server import rollout
from trustfleet_server.rollout import RolloutError, Wave

FLEET = "acme"
T0 = 1_800_000_000
TARGET = 5


def dev(name: str, bucket: int = 0, group: str | None = None, state: str = "ok", version: int | None = 4,
        bad: tuple = (), event: str | None = None, detail: str | None = None,
        last_seen: int = T0 - 100, last_revert: str | None = None) -> dict:
    return {"device": name, "bucket": bucket, "group": group, "state": state, "version": version,
            "bad": list(bad), "event": event, "detail": detail, "last_seen": last_seen,
            "last_revert": last_revert}


def installed(d: dict, now: int, version: int = TARGET) -> dict:
    return {**d, "version": version, "state": "ok", "last_seen": now}


def reverted(d: dict, now: int, version: int = TARGET) -> dict:
    return {**d, "bad": [version], "event": "reverted", "last_seen": now,
            "detail": f"bundle v{version}: TLS to api.acme.example failed",
            "last_revert": "TLS to api.acme.example failed"}


def make(waves: str = "10%,50%,100%", groups: str | None = None, **kw) -> rollout.Rollout:
    plan = rollout.parse_groups(groups) if groups else rollout.parse_waves(waves)
    return dataclasses.replace(
        rollout.new_rollout(FLEET, TARGET, "ab" * 32, b"bundle-bytes", plan, T0, **kw), id=1)


def kinds(actions: list[tuple]) -> list[str]:
    return [a[0] for a in actions]


def only(actions: list[tuple], kind: str) -> tuple:
    found = [a for a in actions if a[0] == kind]
    assert len(found) == 1, actions
    return found[0]


def fleet_in_buckets(n_per_bucket: dict[int, int]) -> list[dict]:
    return [dev(f"d{b:02d}-{i}", bucket=b) for b, n in n_per_bucket.items() for i in range(n)]


# --------------------------------------------------------------------------- plans


def test_bucket_waves_parse_as_cumulative_percents():
    waves = rollout.parse_waves("1%, 10%,50%,100%")
    assert [(w.name, w.buckets) for w in waves] == [("1%", 1), ("10%", 10), ("50%", 50), ("100%", 100)]


@pytest.mark.parametrize("text, why", [
    ("10%,5%,100%", "does not grow"),
    ("10%,50%", "whole fleet"),
    ("0%,100%", "1..100"),
    ("10%,,100%", "comma-separated"),
    ("ten,100%", "not a percent"),
])
def test_bad_bucket_plans_are_refused_with_the_reason(text, why):
    with pytest.raises(RolloutError, match=why):
        rollout.parse_waves(text)


def test_group_plans_end_with_the_whole_fleet_and_refuse_topic_breaking_names():
    waves = rollout.parse_groups("canary,beta+gamma,all")
    assert waves[1].groups == ("beta", "gamma") and waves[-1].buckets == 100
    with pytest.raises(RolloutError, match="whole fleet"):
        rollout.parse_groups("canary,beta")
    with pytest.raises(RolloutError, match="may hold only"):
        rollout.parse_groups("can/ary,all")
    with pytest.raises(RolloutError, match="may hold only"):
        rollout.parse_groups("#,all")


def test_thresholds_out_of_range_are_refused():
    waves = rollout.parse_waves("100%")
    for kw in ({"success": 0}, {"success": 1.5}, {"max_failure": 1.0}, {"deadline": 0}):
        with pytest.raises(RolloutError):
            rollout.new_rollout(FLEET, 2, "00" * 32, b"x", waves, T0, **kw)


def test_wave_topics_are_the_new_buckets_and_the_fleet_topic_at_100_percent():
    waves = rollout.parse_waves("1%,10%,100%")
    assert rollout.wave_topics(FLEET, waves, 0) == [topics.bucket_bundle(FLEET, 0)]
    assert rollout.wave_topics(FLEET, waves, 1) == [topics.bucket_bundle(FLEET, n) for n in range(1, 10)]
    last = rollout.wave_topics(FLEET, waves, 2)
    assert last[:-1] == [topics.bucket_bundle(FLEET, n) for n in range(10, 100)]
    assert last[-1] == topics.bundle(FLEET)


# --------------------------------------------------------------------------- advancing


def test_first_step_publishes_the_first_wave_on_its_bucket_topics():
    r, actions = rollout.step(make(), [], T0)
    wave, names = only(actions, "publish_wave")[1:]
    assert wave.name == "10%" and names == [topics.bucket_bundle(FLEET, n) for n in range(10)]
    assert r.current == 0 and r.wave_started == T0 and r.published == tuple(names)


def test_wave_waits_until_the_success_ratio_is_reached_then_publishes_the_next():
    devices = fleet_in_buckets({3: 10, 30: 5})
    r, _ = rollout.step(make(), devices, T0)
    now = T0 + 30
    devices[:8] = [installed(d, now) for d in devices[:8]]
    r2, actions = rollout.step(r, devices, now)
    assert actions == [] and r2 == r  # 8/10 < 0.9
    devices[8] = installed(devices[8], now)
    r3, actions = rollout.step(r, devices, now + 1)
    assert kinds(actions) == ["note", "publish_wave"]
    assert "9 of 10 devices run v5" in actions[0][1]
    assert only(actions, "publish_wave")[1].name == "50%" and r3.current == 1


def test_devices_outside_the_wave_do_not_count():
    devices = fleet_in_buckets({3: 2, 60: 20})  # the 20 in bucket 60 are not in 10%
    r, _ = rollout.step(make(), devices, T0)
    devices[:2] = [installed(d, T0 + 5) for d in devices[:2]]
    _, actions = rollout.step(r, devices, T0 + 5)
    assert "publish_wave" in kinds(actions)


def test_later_waves_count_every_device_reached_so_far():
    devices = fleet_in_buckets({3: 10, 30: 10})
    r, _ = rollout.step(make(), devices, T0)
    devices[:10] = [installed(d, T0 + 5) for d in devices[:10]]
    r, _ = rollout.step(r, devices, T0 + 5)
    p = rollout.wave_progress(r, devices, T0 + 6, 1)
    assert (p.members, p.succeeded, p.pending) == (20, 10, 10)


def test_last_wave_success_marks_done_and_clears_wave_topics_but_not_the_fleet_topic():
    devices = fleet_in_buckets({3: 3, 70: 3})
    r, _ = rollout.step(make("10%,100%"), devices, T0)
    devices = [installed(d, T0 + 1) for d in devices]
    r, actions = rollout.step(r, devices, T0 + 1)
    assert topics.bundle(FLEET) in only(actions, "publish_wave")[2]
    r, actions = rollout.step(r, devices, T0 + 2)
    assert r.state == rollout.DONE and "done" in kinds(actions)
    cleared = only(actions, "clear_waves")[1]
    assert topics.bundle(FLEET) not in cleared and len(cleared) == 100
    assert rollout.step(r, devices, T0 + 3) == (r, [])


def test_a_wave_without_devices_passes_at_once():
    devices = fleet_in_buckets({60: 5})
    r, _ = rollout.step(make("1%,100%"), devices, T0)
    r, actions = rollout.step(r, devices, T0 + 1)
    assert "no devices in this wave" in actions[0][1] and r.current == 1


def test_group_waves_publish_group_topics_then_the_whole_fleet():
    devices = [dev("c1", bucket=50, group="canary"), dev("c2", bucket=51, group="canary"),
               dev("b1", bucket=5, group="beta"), dev("x1", bucket=7)]
    r, actions = rollout.step(make(groups="canary,all"), devices, T0)
    assert only(actions, "publish_wave")[2] == [topics.group_bundle(FLEET, "canary")]
    p = rollout.wave_progress(r, devices, T0, 0)
    assert p.members == 2  # bucket 5 and 7 are not canaries
    devices[:2] = [installed(d, T0 + 1) for d in devices[:2]]
    r, actions = rollout.step(r, devices, T0 + 1)
    names = only(actions, "publish_wave")[2]
    assert names[-1] == topics.bundle(FLEET) and len(names) == 101


# --------------------------------------------------------------------------- halting


def test_halts_past_the_failure_ratio_naming_failing_devices_and_clears_topics():
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(), devices, T0)
    now = T0 + 20
    devices[:3] = [reverted(d, now) for d in devices[:3]]
    devices[3:5] = [installed(d, now) for d in devices[3:5]]
    r2, actions = rollout.step(r, devices, now)
    assert kinds(actions) == ["halt", "clear_waves"]
    reason, failing = actions[0][1], actions[0][2]
    assert "3 of 10 devices failed (0.30 > 0.20)" in reason
    assert [f["device"] for f in failing] == [d["device"] for d in devices[:3]]
    assert "marked v5 bad: TLS to api.acme.example failed" in failing[0]["reason"]
    assert only(actions, "clear_waves")[1] == list(r.published)
    assert r2.state == rollout.HALTED and r2.halt_reason == reason and r2.published == ()


def test_failures_at_the_threshold_do_not_halt():
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(), devices, T0)
    devices[:2] = [reverted(d, T0 + 5) for d in devices[:2]]  # 0.2, not above 0.2
    _, actions = rollout.step(r, devices, T0 + 5)
    assert actions == []


def test_a_revert_event_for_the_target_counts_even_without_bad_but_not_for_another_version():
    d = dev("a")
    revert = {**d, "event": "reverted", "detail": "bundle v5: reboot before commit"}
    assert rollout.verdict(revert, 5, T0, False)[0] == rollout.FAILED
    other = {**d, "event": "reverted", "detail": "bundle v3: TLS failed"}
    assert rollout.verdict(other, 5, T0, False)[0] == rollout.PENDING
    older = {**d, "event": "reverted", "detail": "bundle v50: x"}  # v50 is not v5
    assert rollout.verdict(older, 5, T0, False)[0] == rollout.PENDING


def test_a_device_whose_health_endpoints_were_unreachable_is_pending_not_failed():
    # Its trust store was never judged: it reverted without a bad mark and tries again,
    # so a rollout must not halt naming it.
    d = {**dev("a"), "event": "reverted",
         "detail": "bundle v5: endpoints unreachable, not marked bad: api.acme.example:443 unreachable"}
    kind, why = rollout.verdict(d, 5, T0, False)
    assert kind == rollout.PENDING and "will try again" in why
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(), devices, T0)
    devices[:5] = [{**x, "event": d["event"], "detail": d["detail"], "last_seen": T0 + 5}
                   for x in devices[:5]]
    _, actions = rollout.step(r, devices, T0 + 5)
    assert not any(a[0] == "halt" for a in actions)


def test_success_wins_over_an_old_revert_of_the_same_version():
    d = reverted(dev("a"), T0)
    assert rollout.verdict({**d, "version": 5, "bad": []}, 5, T0, False)[0] == rollout.OK


def test_no_store_is_pending_before_the_deadline_and_a_failure_after():
    d = dev("a", state="no-store", version=None, last_seen=T0 + 1)
    assert rollout.verdict(d, 5, T0, False)[0] == rollout.PENDING
    kind, why = rollout.verdict(d, 5, T0, True)
    assert kind == rollout.FAILED and "no trust store" in why


def test_offline_devices_count_as_neither():
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(), devices, T0)
    devices[:5] = [{**d, "state": "offline"} for d in devices[:5]]
    devices[5:10] = [installed(d, T0 + 3) for d in devices[5:10]]
    r2, actions = rollout.step(r, devices, T0 + 3)
    assert "5 offline or silent not counted" in actions[0][1] and r2.current == 1


def test_halts_at_the_deadline_without_success_and_silent_devices_stop_blocking():
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(deadline=600), devices, T0)
    devices[:5] = [installed(d, T0 + 10) for d in devices[:5]]
    devices[5] = {**devices[5], "state": "trial", "version": 5, "last_seen": T0 + 10}
    assert rollout.step(r, devices, T0 + 599)[1] == []
    r2, actions = rollout.step(r, devices, T0 + 600)
    # Four never reported since the wave started: left out. 5 of 6 < 0.9.
    assert r2.state == rollout.HALTED
    assert "only 5 of 6 devices run v5 after 600 s" in actions[0][1]


def test_silent_devices_are_dropped_at_the_deadline_so_the_wave_can_pass():
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(deadline=600), devices, T0)
    devices[:9] = [installed(d, T0 + 10) for d in devices[:9]]
    devices[9] = {**devices[9], "version": 4}  # never heard from
    p = rollout.wave_progress(r, devices, T0 + 600, 0)
    assert (p.succeeded, p.silent, p.counted) == (9, 1, 9)


def test_a_wave_where_nobody_reports_halts_at_the_deadline():
    devices = [{**d, "state": "offline"} for d in fleet_in_buckets({2: 4})]
    r, _ = rollout.step(make(deadline=60), devices, T0)
    assert rollout.step(r, devices, T0 + 59)[1] == []
    r2, actions = rollout.step(r, devices, T0 + 60)
    assert r2.state == rollout.HALTED and "no device of 4 reported within 60 s" in actions[0][1]


def test_halted_is_final_and_only_clears():
    devices = fleet_in_buckets({2: 2})
    r, _ = rollout.step(make(), devices, T0)
    r, _ = rollout.step(r, [reverted(d, T0 + 1) for d in devices], T0 + 1)
    assert r.state == rollout.HALTED
    assert rollout.step(r, [installed(d, T0 + 2) for d in devices], T0 + 2) == (r, [])
    with pytest.raises(RolloutError, match="halted"):
        rollout.resume(r, T0 + 3)
    with pytest.raises(RolloutError, match="already halted"):
        rollout.abort(r, T0 + 3)


# --------------------------------------------------------------------------- operator controls


def test_pause_stops_advancing_and_resume_extends_the_deadline_by_the_pause():
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(deadline=600), devices, T0)
    paused = rollout.pause(r, T0 + 100)
    done = [installed(d, T0 + 200) for d in devices]
    assert rollout.step(paused, done, T0 + 5000) == (paused, [])
    resumed = rollout.resume(paused, T0 + 1100)  # paused 1000 s
    assert resumed.wave_started == T0 + 1000 and resumed.state == rollout.RUNNING
    assert rollout.step(resumed, devices, T0 + 1599)[1] == []  # 599 s of wave time
    assert rollout.step(resumed, devices, T0 + 1600)[0].state == rollout.HALTED


def test_abort_clears_every_published_topic_on_the_next_step():
    devices = fleet_in_buckets({2: 10})
    r, _ = rollout.step(make(), devices, T0)
    r, _ = rollout.step(r, [installed(d, T0 + 1) for d in devices], T0 + 1)
    aborted = rollout.abort(r, T0 + 2, "wrong bundle")
    assert aborted.state == rollout.ABORTED and aborted.halt_reason == "wrong bundle"
    cleared, actions = rollout.step(aborted, devices, T0 + 3)
    assert actions == [("clear_waves", list(r.published))] and len(r.published) == 50
    assert cleared.published == () and rollout.step(cleared, devices, T0 + 4) == (cleared, [])


def test_only_running_rollouts_pause_and_only_paused_ones_resume():
    r = make()
    with pytest.raises(RolloutError):
        rollout.resume(r, T0)
    with pytest.raises(RolloutError):
        rollout.pause(rollout.pause(r, T0), T0)


# --------------------------------------------------------------------------- property

ops = st.lists(st.one_of(
    st.tuples(st.just("install"), st.integers(0, 11)),
    st.tuples(st.just("revert"), st.integers(0, 11)),
    st.tuples(st.just("offline"), st.integers(0, 11)),
    st.tuples(st.just("wait"), st.integers(1, 400)),
    st.tuples(st.just("pause"), st.just(0)),
    st.tuples(st.just("resume"), st.just(0)),
    st.tuples(st.just("abort"), st.just(0)),
), max_size=60)


@settings(derandomize=True, max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.sampled_from(["10%,50%,100%", "1%,100%", "groups"]))
def test_a_halted_rollout_never_publishes_another_wave(operations, plan):
    r = make(groups="g0,g1+g2,all", deadline=600) if plan == "groups" else make(plan, deadline=600)
    devices = [dev(f"d{i}", bucket=i * 9, group=f"g{i % 3}") for i in range(12)]
    now = T0
    halted = False
    planned = {t for i in range(len(r.waves)) for t in rollout.wave_topics(FLEET, r.waves, i)}
    for op, arg in operations:
        if op == "install":
            devices[arg] = installed(devices[arg], now)
        elif op == "revert":
            devices[arg] = reverted(devices[arg], now)
        elif op == "offline":
            devices[arg] = {**devices[arg], "state": "offline"}
        elif op == "wait":
            now += arg
        else:
            fn = {"pause": rollout.pause, "resume": rollout.resume, "abort": rollout.abort}[op]
            with contextlib.suppress(RolloutError):
                r = fn(r, now)
        r, actions = rollout.step(r, devices, now)
        for a in actions:
            if a[0] == "publish_wave":
                assert not halted, "a halted rollout published a wave"
                assert set(a[2]) <= planned
        if r.state == rollout.HALTED:
            halted = True
            assert r.published == ()
        if halted:
            assert r.state == rollout.HALTED


def test_wave_round_trips_through_json():
    for w in (Wave("10%", buckets=10), Wave("canary", groups=("canary", "beta"))):
        assert Wave.from_json(w.to_json()) == w
