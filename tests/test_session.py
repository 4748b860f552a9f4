"""The device's MQTT session: documents in, messages to publish out, no sockets.

Driven with real signed documents (fleetkit), a fixed clock and in-memory
flash; a transport would only move these bytes.
"""

from __future__ import annotations

import json

import pytest

from support.fleetkit import DAY, NOW, Repo
from trustfleet_device import agent as core
from trustfleet_device import session, topics
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage

STATUS_FIELDS = {"device", "fleet", "group", "bucket", "state", "version", "floor", "bad", "last_revert",
                 "reasons", "root_version", "trusted_time", "last_timestamp", "fail_open", "agent_version",
                 "time", "seq"}


@pytest.fixture()
def repo() -> Repo:
    return Repo()


class Clock:
    def __init__(self, t=NOW):
        self.t = t

    def __call__(self):
        return self.t


def make(repo, device_id="dev-001", group=None, health=runner.no_endpoints, clock=None):
    storage = MemStorage()
    config = core.Config(fleet=repo.fleet, firmware_time=NOW - DAY)
    runner.initialise(storage, repo.root_raw, config)
    device = runner.Device(storage, config, health, clock or Clock())
    return session.Session(device, repo.fleet, device_id, group)


def published(out, kind):
    """The (topic, parsed JSON, retain, qos) of the status or report messages in out."""
    return [(t, json.loads(p), r, q) for t, p, r, q in out if f"/{kind}/" in t]


def test_subscribes_to_roots_fleet_group_bucket_bundles_and_timestamp(repo):
    s = make(repo, "dev-001", group="canary")
    assert s.subscriptions() == [
        f"tf/{repo.fleet}/root/+", f"tf/{repo.fleet}/bundle",
        f"tf/{repo.fleet}/bundle/bucket/{topics.bucket('dev-001'):02d}",
        f"tf/{repo.fleet}/timestamp", f"tf/{repo.fleet}/bundle/group/canary",
    ]
    topic, payload, retain, qos = s.will()
    assert topic == f"tf/{repo.fleet}/status/dev-001" and retain and qos == 1
    assert json.loads(payload)["state"] == "offline"


def test_bucket_is_stable_and_spread_over_one_hundred():
    counts = [0] * 100
    for i in range(10000):
        counts[topics.bucket(f"device-{i}")] += 1
    assert topics.bucket("device-42") == topics.bucket("device-42")
    assert min(counts) > 50 and max(counts) < 150


def test_refuses_names_that_would_break_the_topic_tree(repo):
    for bad in ("a/b", "+", "#", "", "x" * 65, "dév"):
        with pytest.raises(ValueError):
            make(repo, device_id=bad)


def test_installed_bundle_publishes_retained_status_with_every_field(repo):
    s = make(repo, group="canary")
    out = s.on_message(topics.bucket_bundle(repo.fleet, s.bucket), repo.bundle(version=1))
    [(topic, status, retain, qos)] = published(out, "status")
    assert topic == topics.status(repo.fleet, "dev-001") and retain and qos == 1
    assert set(status) >= STATUS_FIELDS
    assert (status["state"], status["version"], status["group"], status["event"]) == ("ok", 1, "canary", "installed")


def test_same_document_on_several_topics_is_handled_once(repo):
    s = make(repo)
    raw = repo.bundle(version=1)
    assert s.on_message(topics.bundle(repo.fleet), raw)
    assert s.on_message(topics.bucket_bundle(repo.fleet, s.bucket), raw) == []
    assert s.on_message(topics.bundle(repo.fleet), raw) == []


def test_cleared_retained_topic_and_foreign_topics_are_ignored(repo):
    s = make(repo)
    assert s.on_message(topics.bundle(repo.fleet), b"") == []
    assert s.on_message("tf/other-fleet/bundle", repo.bundle(version=1)) == []
    assert s.on_message(topics.status(repo.fleet, "dev-002"), b"{}") == []


def test_refusal_is_reported_once_per_kind_per_day(repo):
    s = make(repo)
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=2))
    first = s.on_message(topics.bundle(repo.fleet), repo.bundle(version=2, distrust=[b"\x04" * 32]))
    [(topic, report, retain, _)] = published(first, "report")
    assert topic == topics.report(repo.fleet, "dev-001") and not retain
    assert report["validation-result"] == "document-refused"
    assert "not newer than installed version 2" in report["reason"]
    again = s.on_message(topics.bundle(repo.fleet), repo.bundle(version=2, distrust=[b"\x05" * 32]))
    assert published(again, "report") == []


def test_an_older_signed_bundle_is_neither_installed_nor_reported(repo):
    """Mid-rollout the fleet topic still retains v1 while the device's bucket got v2: after
    every restart v1 comes again. Routine, not news: no report, no status."""
    s = make(repo)
    v1, v2 = repo.bundle(version=1), repo.bundle(version=2)
    s.on_message(topics.bucket_bundle(repo.fleet, s.bucket), v2)
    device = runner.Device(s.device.store.storage, s.device.config, runner.no_endpoints, Clock())
    restarted = session.Session(device, repo.fleet, "dev-001")
    assert restarted.on_message(topics.bundle(repo.fleet), v1) == []
    assert restarted.on_message(topics.bucket_bundle(repo.fleet, s.bucket), v2) == []
    assert restarted.device.status()["version"] == 2
    assert s.device.offer("bundle", v1).reason() == \
        "bundle version 1 is not newer than installed version 2", "still said when asked"


def test_roots_arriving_out_of_order_are_applied_in_order(repo):
    s = make(repo)
    r2 = repo.rotate("bundle", new_keys=1)
    r3 = repo.rotate("bundle", new_keys=1)
    assert s.on_message(topics.root(repo.fleet, 3), r3) == []
    assert s.device.root_version() == 1
    out = s.on_message(topics.root(repo.fleet, 2), r2)
    assert s.device.root_version() == 3
    assert published(out, "status")[-1][1]["root_version"] == 3
    assert s.on_message(topics.root(repo.fleet, 1), repo.root_raw) == []


def test_bundle_streamed_in_chunks_installs_like_a_whole_message(repo):
    s = make(repo)
    raw = repo.bundle(version=1)
    out = s.on_bundle_chunks(topics.bundle(repo.fleet), (raw[i:i + 100] for i in range(0, len(raw), 100)))
    assert published(out, "status")[0][1]["version"] == 1


def test_failed_health_check_reports_revert_in_status(repo):
    s = make(repo, health=lambda bundle, now: (bundle.version == 1, "TLS to api.example failed"))
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))
    out = s.on_message(topics.bundle(repo.fleet), repo.bundle(version=2))
    status = published(out, "status")[-1][1]
    assert status["version"] == 1 and status["bad"] == [2] and status["event"] == "reverted"
    assert "health check failed" in status["last_revert"]


def test_fail_open_lists_domains_whose_pins_expired(repo):
    clock = Clock()
    s = make(repo, clock=clock)
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))
    assert json.loads(s.status_message()[1])["fail_open"] == []
    clock.t = NOW + 181 * DAY
    assert json.loads(s.status_message()[1])["fail_open"] == ["api.acme.example"]


def test_timestamp_updates_state_without_publishing_noise(repo):
    s = make(repo)
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))
    out = s.on_message(topics.timestamp(repo.fleet), repo.timestamp(repo.bundle(version=1), time=NOW + 60))
    assert published(out, "status") == []
    assert s.device.agent.state["last_timestamp"] == NOW + 60


def test_session_runs_in_the_micropython_vm(mpy, repo):
    root, raw = repo.root_raw, repo.bundle(version=1)
    mpy.write("/sess/root.cose", root)
    mpy.write("/sess/b1.cose", raw)
    got = mpy.run_json(f"""
import json
from trustfleet_device import agent, session, topics
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage
st = MemStorage()
cfg = agent.Config(fleet={repo.fleet!r})
runner.initialise(st, open("/sess/root.cose", "rb").read(), cfg)
dev = runner.Device(st, cfg, runner.no_endpoints, lambda: {NOW})
s = session.Session(dev, {repo.fleet!r}, "dev-001", "canary")
raw = open("/sess/b1.cose", "rb").read()
out = s.on_bundle_chunks(topics.bundle({repo.fleet!r}), (raw[i:i + 256] for i in range(0, len(raw), 256)))
print(json.dumps([s.subscriptions(), [(t, json.loads(p)["version"], r, q) for t, p, r, q in out]]))
""")
    cp = make(repo, group="canary")
    out = cp.on_message(topics.bundle(repo.fleet), raw)
    assert got == [cp.subscriptions(), [[t, json.loads(p)["version"], r, q] for t, p, r, q in out]]


def test_streamed_repeat_of_a_handled_bundle_is_not_verified_again(repo):
    s = make(repo)
    raw = repo.bundle(version=1)
    assert s.on_bundle_chunks(topics.bundle(repo.fleet), iter([raw]))
    calls = []
    verify = s.device.agent._verify
    s.device.agent._verify = lambda *a, **k: calls.append(1) or verify(*a, **k)
    assert s.on_bundle_chunks(topics.bucket_bundle(repo.fleet, s.bucket), iter([raw[:100], raw[100:]])) == []
    assert calls == []


def test_broken_stream_leaves_no_partial_slot_file(repo, tmp_path):
    from trustfleet_device.transports.storage import DirStorage

    storage = DirStorage(str(tmp_path))
    config = core.Config(fleet=repo.fleet)
    runner.initialise(storage, repo.root_raw, config)
    device = runner.Device(storage, config, runner.no_endpoints, Clock())

    def broken():
        yield repo.bundle(version=1)[:500]
        raise ConnectionError("connection lost mid-bundle")

    with pytest.raises(ConnectionError):
        device.receive_bundle(broken())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root.cose", "state.json"]


# --------------------------------------------------------------------------- freshness, retries


def test_a_timestamp_naming_a_newer_bundle_publishes_behind_at_once_and_time_publishes_stale(repo):
    clock = Clock()
    s = make(repo, clock=clock)
    v1, v2 = repo.bundle(version=1), repo.bundle(version=2)
    s.on_message(topics.bundle(repo.fleet), v1)
    quiet = s.on_message(topics.timestamp(repo.fleet), repo.timestamp(v1, time=NOW + 60))
    assert published(quiet, "status") == [], "the same state: a timestamp alone publishes nothing"
    out = s.on_message(topics.timestamp(repo.fleet), repo.timestamp(v2, time=NOW + 120))
    [(_, status, retain, _)] = published(out, "status")
    assert status["state"] == "behind" and retain
    assert status["reasons"] == ["the latest timestamp names v2, this device holds v1"]
    assert published(s.tick(), "status") == [], "still behind: nothing new to say"
    clock.t = NOW + 120 + 2 * DAY + 1
    [(_, status, _, _)] = published(s.tick(), "status")
    assert status["state"] == "stale" and "behind for more than 172800 s" in status["reasons"]
    assert published(s.tick(), "status") == []


def test_a_bundle_reverted_because_its_endpoints_were_unreachable_is_tried_again_when_it_comes_again(repo):
    answers = [True, None]
    clock = Clock()

    def health(bundle, trusted_time):
        ok = answers.pop(0) if answers else True
        return ok, "reachable" if ok else "api:443 unreachable"

    s = make(repo, health=health, clock=clock)
    v2 = repo.bundle(version=2)
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))
    s.on_message(topics.bundle(repo.fleet), v2)
    answers.append(None)
    clock.t += 3600  # past the deadline: the retry answers "unreachable" again and reverts
    out = s.tick()
    [(_, status, _, _)] = published(out, "status")
    assert status["version"] == 1 and status["bad"] == [] and "unreachable" in status["last_revert"]
    # The same retained bundle, delivered again (a reconnect): a new try, not a repeat.
    out = s.on_message(topics.bundle(repo.fleet), v2)
    [(_, status, _, _)] = published(out, "status")
    assert status["version"] == 2 and status["state"] == "ok"
