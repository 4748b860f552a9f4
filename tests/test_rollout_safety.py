"""Rollout safety (issue 12): a typo must not skip the canary.

`rollout start --groups canray,all` used to publish to the whole fleet: the
misspelt wave reached nobody, passed at once ("no devices in this wave; moving
on") and the `all` wave went out unguarded. Now `rollout start` refuses a wave
naming a group no device is in, or reaching no device, with one line naming it
and the known groups (`--allow-empty-waves` to start anyway), and `--dry-run`
prints the waves, the devices each reaches and the halt rule, storing and
publishing nothing. Through the real CLI on SQLite and the real PostgreSQL, and
once end to end with `serve` on the real broker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from support import brokers
from support.fleetkit import Repo
from trustfleet_device import topics
from trustfleet_server import cli
from trustfleet_server.fleet import db as fleetdb


@pytest.fixture
def repo(tmp_path):
    r = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(r.root_raw)
    (tmp_path / "bundle-v2.cose").write_bytes(r.bundle(2))
    return r


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def names(n: int, low: bool) -> list[str]:
    """n device ids in bucket 0 (low) or not (so a 1% wave reaches only the low ones)."""
    found, i = [], 0
    while len(found) < n:
        name = f"dev-{i:05d}"
        if (topics.bucket(name) == 0) == low:
            found.append(name)
        i += 1
    return found


def fleet(db, f: str, groups: dict[str, str | None]) -> None:
    """Device statuses as `serve` ingests them: each device names its group, runs v1 (published)."""
    now = int(time.time())
    db.record_published(f, 1, "ab" * 32, "test", now)
    batch = []
    for device, group in groups.items():
        body = {"state": "ok", "version": 1, "floor": 1, "seq": 1, "time": now}
        if group:
            body["group"] = group
        batch.append((f, device, body, now))
    assert not db.ingest_statuses(batch).rejected


def start(capsys, tmp_path: Path, repo: Repo, db: str, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "rollout", "start", "--db", db, "--fleet", repo.fleet, "--root",
               str(tmp_path / "root.cose"), "--bundle", str(tmp_path / "bundle-v2.cose"), *extra)


def nothing_stored(db_target: str, f: str) -> bool:
    with fleetdb.open_db(db_target) as db:
        return db.latest_rollout(f) is None and (db.newest_published(f) or 1) == 1


GROUPS = {"can-1": "canary", "can-2": "canary", "beta-1": "beta", "plain-1": None, "plain-2": None}


def test_a_misspelt_canary_group_is_refused_naming_it_and_the_known_groups(capsys, tmp_path, repo,
                                                                           target):
    with fleetdb.open_db(target) as db:
        fleet(db, repo.fleet, GROUPS)
    code, out, err = start(capsys, tmp_path, repo, target, "--groups", "canray,all")
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert "wave canray: no device is in group canray (known groups: beta, canary)" in line
    assert "--allow-empty-waves" in line and "Traceback" not in err
    assert nothing_stored(target, repo.fleet)
    # One good group and one typo joined in a wave: still refused, naming the typo.
    code, _, err = start(capsys, tmp_path, repo, target, "--groups", "canary+bta,all")
    assert code == 2 and "no device is in group bta" in err
    assert nothing_stored(target, repo.fleet)
    # The spelling that matches starts.
    code, out, err = start(capsys, tmp_path, repo, target, "--groups", "canary,all", "--json")
    assert code == 0, err
    assert [w["name"] for w in json.loads(out)["waves"]] == ["canary", "all"]


def test_a_wave_reaching_no_device_is_refused_unless_explicitly_allowed(capsys, tmp_path, repo, target):
    with fleetdb.open_db(target) as db:
        fleet(db, repo.fleet, {n: None for n in names(4, low=False)})
    code, _, err = start(capsys, tmp_path, repo, target, "--waves", "1%,100%")
    assert code == 2 and "wave 1%: reaches no device of the fleet" in err
    assert nothing_stored(target, repo.fleet)
    # Quarantined devices are never counted: a wave of only those gates nothing either.
    [low] = names(1, low=True)
    with fleetdb.open_db(target) as db:
        fleet(db, repo.fleet, {low: None})
        db.set_quarantined(repo.fleet, low, True, "test", "broken sensor", int(time.time()))
    code, _, err = start(capsys, tmp_path, repo, target, "--waves", "1%,100%")
    assert code == 2 and "(1 suspect or quarantined)" in err
    code, _, err = start(capsys, tmp_path, repo, target, "--waves", "1%,100%", "--allow-empty-waves")
    assert code == 0, err
    with fleetdb.open_db(target) as db:
        assert db.latest_rollout(repo.fleet).version == 2


def test_dry_run_prints_waves_device_counts_and_the_halt_rule_and_stores_nothing(capsys, tmp_path,
                                                                                 repo, target):
    with fleetdb.open_db(target) as db:
        fleet(db, repo.fleet, GROUPS)
    args = ("--groups", "canary,beta,all", "--success", "0.8", "--max-failure", "0.25",
            "--wave-deadline", "15m", "--dry-run")
    code, out, err = start(capsys, tmp_path, repo, target, *args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"dry run: bundle v2 for fleet {repo.fleet} (5 device(s) known)")
    assert "nothing published, nothing stored" in lines[0]
    assert "wave 1 canary" in lines[1] and "2 device(s), 2 new; 1 topic(s)" in lines[1]
    assert "wave 2 beta" in lines[2] and "3 device(s), 1 new" in lines[2]
    assert "wave 3 all" in lines[3] and "5 device(s), 2 new; 101 topic(s)" in lines[3]
    assert lines[4].startswith("halt rule: a wave passes when 0.80 of its counted devices run v2")
    assert "more than 0.25" in lines[4] and "900 s" in lines[4]
    code, out, err = start(capsys, tmp_path, repo, target, *args, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["dry_run"] is True and plan["version"] == 2 and plan["fleet_devices"] == 5
    assert [(w["name"], w["devices"], w["new"]) for w in plan["waves"]] == [
        ("canary", 2, 2), ("beta", 3, 1), ("all", 5, 2)]
    assert plan["thresholds"] == {"success": 0.8, "max_failure": 0.25, "deadline": 900}
    assert nothing_stored(target, repo.fleet)
    # A dry run refuses what start refuses, with the same line.
    code, _, err = start(capsys, tmp_path, repo, target, "--groups", "canray,all", "--dry-run")
    assert code == 2 and "no device is in group canray" in err
    assert nothing_stored(target, repo.fleet)


def test_dry_run_on_a_store_that_does_not_exist_creates_no_file(capsys, tmp_path, repo):
    missing = tmp_path / "not-yet.db"
    code, out, err = start(capsys, tmp_path, repo, str(missing), "--dry-run", "--allow-empty-waves")
    assert code == 0, err
    assert "(0 device(s) known)" in out and "0 device(s), 0 new" in out
    assert not missing.exists()
    code, _, err = start(capsys, tmp_path, repo, str(missing), "--dry-run")
    assert code == 2 and "wave 1%: reaches no device" in err and not missing.exists()


def test_a_refused_typo_publishes_nothing_when_serve_runs(capsys, tmp_path, repo, mosquitto):
    db = str(tmp_path / "fleet.db")
    with fleetdb.open_db(db) as store:
        fleet(store, repo.fleet, GROUPS)
    code, _, err = start(capsys, tmp_path, repo, db, "--groups", "canray,all")
    assert code == 2, err
    try:
        code, _, err = run(capsys, "serve", "--broker", mosquitto.url, "--fleet", repo.fleet, "--root",
                           str(tmp_path / "root.cose"), "--db", db, "--once")
        assert code == 0, err
        assert brokers.retained(mosquitto, topics.bundle(repo.fleet), 0.5) is None
        assert brokers.retained(mosquitto, topics.group_bundle(repo.fleet, "canray"), 0.3) is None
    finally:
        brokers.clear_retained(mosquitto, [topics.bundle(repo.fleet),
                                           topics.group_bundle(repo.fleet, "canray")])


def test_a_device_running_the_target_but_behind_a_newer_timestamp_counts_as_a_success():
    """status "behind" (issue 12): the latest timestamp names a newer bundle than the device holds.
    A device that runs the rollout's version is a success even so; one below it is pending."""
    from trustfleet_server import rollout

    plan = rollout.new_rollout("acme", 5, "ab" * 32, b"b", rollout.parse_waves("100%"), 1000)
    r, _ = rollout.step(plan, [], 1000)
    devices = [{"device": "a", "bucket": 3, "state": "behind", "version": 5, "bad": [], "last_seen": 1001},
               {"device": "b", "bucket": 4, "state": "behind", "version": 4, "bad": [], "last_seen": 1001}]
    p = rollout.wave_progress(r, devices, 1002, 0)
    assert (p.succeeded, p.pending, p.failed) == (1, 1, 0)
