"""Rollout history keeps what happened (issue 13): each wave's result is recorded when the wave
ends (moved on, halted, aborted) and `rollout status` shows those records, not a recomputation
from the devices' current versions; `rollout list` lists every rollout.

The rollout is driven by the real `trustfleet serve` code (FleetServer._drive_rollout) with the
broker link replaced by a recorder, on SQLite and on PostgreSQL (the `target` fixture).
"""

from __future__ import annotations

import json
import time

import pytest

from support.fleetkit import Repo
from support.serving import RecordingLink
from trustfleet_server import cli, mqtturl, rollout
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve.server import FleetServer

F = "acme"



@pytest.fixture
def repo(tmp_path):
    r = Repo(fleet=F, now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(r.root_raw)
    return r


def status(version: int | None, seq: int, group: str | None = None, **extra) -> dict:
    return {"state": "ok", "version": version, "floor": version, "seq": seq, "time": int(time.time()) + seq,
            "group": group, **extra}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def start(capsys, tmp_path, repo: Repo, db: str, version: int, *plan: str) -> int:
    bundle = tmp_path / f"bundle-v{version}.cose"
    bundle.write_bytes(repo.bundle(version))
    code, out, err = run(capsys, "rollout", "start", "--db", db, "--fleet", F, "--root", tmp_path / "root.cose",
                         "--bundle", bundle, "--json", *plan)
    assert code == 0, err
    return json.loads(out)["id"]


def server(repo: Repo, db: fleetdb.FleetDB) -> FleetServer:
    s = FleetServer(mqtturl.parse("mqtt://127.0.0.1:1"), F, [repo.root_raw], db)
    s.link = RecordingLink()  # type: ignore[assignment]
    return s


def ingest(db: fleetdb.FleetDB, *rows: tuple[str, dict]) -> None:
    now = int(time.time())
    result = db.ingest_statuses([(F, device, st, now) for device, st in rows])
    assert not result.rejected, result.rejected


REVERTED = {"bad": [2], "last_revert": "health check failed: no key matches the pins", "event": "reverted",
            "detail": "bundle v2: health check failed: no key matches the pins"}


def halted_rollout(capsys, tmp_path, repo: Repo, target: str) -> int:
    """canary (a, b) passes; wave `all` halts on c's revert with d and e pending."""
    with fleetdb.open_db(target) as db:
        ingest(db, *((d, status(1, 1, "canary")) for d in "ab"), *((d, status(1, 1)) for d in "cde"))
    rid = start(capsys, tmp_path, repo, target, 2, "--groups", "canary,all", "--max-failure", "0.1")
    with fleetdb.open_db(target) as db:
        s = server(repo, db)
        s._drive_rollout()  # publishes canary
        ingest(db, *((d, status(2, 2, "canary")) for d in "ab"))
        s._drive_rollout()  # canary passes, `all` is published
        ingest(db, ("c", status(1, 2, **REVERTED)))
        s._drive_rollout()  # 1 of 5 failed > 0.1: halted
        assert db.rollout(rid).state == rollout.HALTED
    return rid


def test_a_halted_rollout_shows_its_halt_counts_and_failing_devices_after_the_devices_move_on(
        capsys, tmp_path, repo, target):
    rid = halted_rollout(capsys, tmp_path, repo, target)
    with fleetdb.open_db(target) as db:  # afterwards every device runs v2 anyway, then v3
        ingest(db, *((d, status(2, 5, "canary" if d in "ab" else None)) for d in "abcde"))
        ingest(db, *((d, status(3, 6, "canary" if d in "ab" else None)) for d in "abcde"))
    code, out, err = run(capsys, "rollout", "status", "--db", target, "--fleet", F)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (f"rollout {rid}: bundle v2 for {F}, halted, wave 2/2 (all) - wave all: 1 of 5 devices "
                        f"failed (0.20 > 0.10)")
    canary = next(line for line in lines if line.strip().startswith("canary"))
    assert "2/2 ok" in canary and canary.endswith("(passed)")
    wave_all = next(line for line in lines if line.strip().startswith("all"))
    assert "2/5 ok, 1 failed, 2 pending  (halted 20" in wave_all, wave_all
    assert "  failing: c: marked v2 bad: health check failed: no key matches the pins" in lines
    assert "5/5 ok" not in out

    code, out, err = run(capsys, "rollout", "status", "--db", target, "--fleet", F, "--json")
    assert code == 0, err
    progress = json.loads(out)["progress"]
    assert [(p["name"], p["status"], p["source"]) for p in progress] == [
        ("canary", "passed", "recorded"), ("all", "halted", "recorded")]
    assert (progress[1]["succeeded"], progress[1]["failed"], progress[1]["pending"]) == (2, 1, 2)
    assert progress[1]["failing"] == [{"device": "c", "reason": "marked v2 bad: health check failed: no key "
                                                                "matches the pins"}]
    assert progress[1]["reason"] == "wave all: 1 of 5 devices failed (0.20 > 0.10)"
    assert "2 of 2 devices run v2" in progress[0]["reason"] and progress[0]["ended"] <= progress[1]["ended"]


def test_an_aborted_rollout_keeps_the_counts_of_the_wave_it_was_aborted_on(capsys, tmp_path, repo, target):
    with fleetdb.open_db(target) as db:
        ingest(db, *((d, status(1, 1)) for d in "abcd"))
    rid = start(capsys, tmp_path, repo, target, 2, "--waves", "100%")
    with fleetdb.open_db(target) as db:
        server(repo, db)._drive_rollout()
        ingest(db, ("a", status(2, 2)), ("b", status(None, 2, state="trial")))
    code, out, err = run(capsys, "rollout", "abort", "--db", target, "--fleet", F, "--reason", "wrong pins")
    assert code == 0, err
    with fleetdb.open_db(target) as db:
        ingest(db, *((d, status(2, 5)) for d in "abcd"))
    code, out, err = run(capsys, "rollout", "status", "--db", target, "--fleet", F, "--json")
    wave = json.loads(out)["progress"][0]
    assert (wave["status"], wave["source"], wave["reason"]) == ("aborted", "recorded", "wrong pins")
    assert (wave["succeeded"], wave["pending"], wave["members"]) == (1, 3, 4)
    code, out, err = run(capsys, "rollout", "status", "--db", target, "--fleet", F)
    assert "1/4 ok, 3 pending  (aborted 20" in out and "4/4 ok" not in out, out
    assert out.startswith(f"rollout {rid}: bundle v2 for {F}, aborted")


def test_a_rollout_halted_before_wave_results_were_kept_says_so_instead_of_recounting(
        capsys, tmp_path, repo, target):
    """A schema v2 store (no tf_wave_results) is upgraded in place; its old halted rollout shows the
    halt reason and failing devices it kept, no counts, and its unreached waves as not reached."""
    with fleetdb.open_db(target) as db:
        ingest(db, *((d, status(1, 1)) for d in "abc"))
    rid = start(capsys, tmp_path, repo, target, 2, "--waves", "50%,100%", "--allow-empty-waves")
    with fleetdb.open_db(target) as db:  # as trustfleet with schema v2 left it: no results table
        with db._tx("downgrading", write=True) as cur:
            cur.execute("DROP TABLE tf_wave_results")
            db._exec(cur, "UPDATE tf_meta SET value = '2' WHERE key = 'schema_version'")
            db._exec(cur, "UPDATE tf_rollouts SET state = 'halted', current_wave = 0, finished = started, "
                          "halt_reason = ?, failing = ? WHERE id = ?",
                     ("wave 50%: 1 of 1 devices failed",
                      json.dumps([{"device": "a", "reason": "reverted: bad pins"}]), rid))
        ingest(db, *((d, status(2, 5)) for d in "abc"))
    with fleetdb.open_db(target) as db:
        assert db.schema_version() == fleetdb.SCHEMA_VERSION == 5
        assert db.wave_results(rid) == {}
    code, out, err = run(capsys, "rollout", "status", "--db", target, "--fleet", F)
    assert code == 0, err
    assert "  50%  [..............................] -  (halted, counts not recorded)" in out, out
    assert "  100% [..............................] -  (not reached)" in out, out
    assert "  failing: a: reverted: bad pins" in out


def test_rollout_list_shows_every_rollout_newest_first_and_filters_by_fleet_and_state(
        capsys, tmp_path, repo, target):
    first = halted_rollout(capsys, tmp_path, repo, target)
    second = start(capsys, tmp_path, repo, target, 3, "--waves", "100%")
    code, out, err = run(capsys, "rollout", "list", "--db", target)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "id\tfleet\tversion\tstate\twaves\tstarted\tfinished\thalt reason"
    assert [line.split("\t")[:5] for line in lines[1:]] == [
        [str(second), F, "v3", "running", "0/1"], [str(first), F, "v2", "halted", "1/2"]]
    assert lines[2].split("\t")[7] == "wave all: 1 of 5 devices failed (0.20 > 0.10)"
    assert lines[1].split("\t")[6] == "-"
    code, out, err = run(capsys, "rollout", "list", "--db", target, "--fleet", F, "--state", "halted", "--json")
    assert code == 0, err
    rows = json.loads(out)["rollouts"]
    assert [(r["id"], r["state"], r["waves_done"], r["waves"]) for r in rows] == [(first, "halted", 1, 2)]
    assert rows[0]["finished"] >= rows[0]["started"] and rows[0]["halt_reason"].startswith("wave all")
    code, out, err = run(capsys, "rollout", "list", "--db", target, "--state", "stuck")
    assert code == 2 and err == ("trustfleet: error: --state: unknown state 'stuck'; one of running, paused, "
                                 "halted, aborted, done\n")
    code, out, err = run(capsys, "rollout", "list", "--db", target, "--fleet", "nosuch")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"trustfleet: error: fleet nosuch is not in {target} (fleets: {F})")


# --------------------------------------------------------------------------- the pure part


def make(devices: list[dict]) -> tuple[rollout.Rollout, list[dict]]:
    r = rollout.new_rollout(F, 2, "ab", b"b", rollout.parse_waves("50%,100%"), 100, deadline=60)
    return rollout.step(r, devices, 100)[0], devices


def dev(name: str, bucket: int, version: int = 1) -> dict:
    return {"device": name, "bucket": bucket, "state": "ok", "version": version, "last_seen": 101}


def test_ended_wave_is_the_result_the_step_decided_on_and_none_while_the_wave_runs():
    r, devices = make([dev("a", 1), dev("b", 70)])
    assert rollout.ended_wave(r, r, devices, 101) is None
    devices[0]["version"] = 2
    new, actions = rollout.step(r, devices, 102)
    ended = rollout.ended_wave(r, new, devices, 102, "passed it")
    assert (ended.index, ended.status, ended.source, ended.ended, ended.reason) == (0, "passed", "recorded",
                                                                                    102, "passed it")
    assert (ended.members, ended.succeeded) == (1, 1)
    assert rollout.ended_wave(new, new, devices, 103) is None
    waves = rollout.history(new, devices, 103, {0: ended})
    assert [(w.status, w.source) for w in waves] == [("passed", "recorded"), ("running", "live")]
