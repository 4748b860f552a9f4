"""The fleet store, the same tests on SQLite (a tmp file) and on the real PostgreSQL.

PostgreSQL: $TRUSTFLEET_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test).
Each test gets its own schema (dropped afterwards). Without a reachable
server these cases are skipped with the reason; under CI=true they fail.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from trustfleet_device import status as status_schema
from trustfleet_device import topics
from trustfleet_server import rollout
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.fleet.messages import StatusError

F = "acme"
T = 1_800_000_000


@pytest.fixture
def db(target):
    with fleetdb.open_db(target) as d:
        yield d


def status(device: str, seq: int = 1, time: int = T, version: int | None = 2, state: str = "ok",
           **extra) -> dict:
    return {"device": device, "fleet": F, "group": None, "bucket": 99, "state": state,
            "version": version, "floor": version, "bad": [], "last_revert": None, "reasons": [],
            "root_version": 1, "trusted_time": time, "last_timestamp": None, "fail_open": [],
            "agent_version": "0.1.0", "time": time, "seq": seq, **extra}


def will(device: str) -> bytes:
    return json.dumps({"device": device, "fleet": F, "state": "offline"}).encode()


# --------------------------------------------------------------------------- statuses


def test_ingesting_the_same_status_twice_changes_nothing(db):
    assert db.ingest_status(F, "d1", status("d1"), T) is True
    first = db.device(F, "d1")
    assert db.ingest_status(F, "d1", json.dumps(status("d1")).encode(), T + 50) is False
    assert db.device(F, "d1") == first  # not even last_seen moves


def test_an_older_seq_from_the_same_session_is_ignored(db):
    db.ingest_status(F, "d1", status("d1", seq=5, time=T + 5, version=3), T + 5)
    assert db.ingest_status(F, "d1", status("d1", seq=4, time=T + 4, version=2), T + 6) is False
    assert db.device(F, "d1")["version"] == 3 and db.device(F, "d1")["seq"] == 5


def test_a_restarted_device_counting_from_one_again_is_accepted_when_its_time_is_later(db):
    db.ingest_status(F, "d1", status("d1", seq=9, time=T, version=2), T)
    assert db.ingest_status(F, "d1", status("d1", seq=1, time=T + 60, version=3), T + 60)
    assert db.device(F, "d1")["version"] == 3


def test_an_offline_will_keeps_the_last_known_version_and_the_next_session_is_accepted(db):
    db.ingest_status(F, "d1", status("d1", seq=7, time=T, version=4, bad=[3]), T)
    assert db.ingest_status(F, "d1", will("d1"), T + 10) is True
    d = db.device(F, "d1")
    assert (d["state"], d["version"], d["bad"], d["last_seen"]) == ("offline", 4, [3], T + 10)
    assert db.ingest_status(F, "d1", will("d1"), T + 11) is False  # the same will again
    # Back with seq 1, even with a clock behind (a board without RTC).
    assert db.ingest_status(F, "d1", status("d1", seq=1, time=T - 500, version=4), T + 20)
    assert db.device(F, "d1")["state"] == "ok"


def test_a_will_from_an_unknown_device_records_it_offline_with_no_version(db):
    db.ingest_status(F, "ghost", will("ghost"), T)
    d = db.device(F, "ghost")
    assert d["state"] == "offline" and d["version"] is None and d["bucket"] == topics.bucket("ghost")


def test_a_batch_keeps_message_order_across_statuses_and_wills(db):
    batch = [(F, "d1", status("d1", seq=1, version=2), T), (F, "d1", will("d1"), T + 1),
             (F, "d1", status("d1", seq=1, time=T + 2, version=3), T + 2), (F, "d2", will("d2"), T + 2)]
    result = db.ingest_statuses(batch)
    assert (result.accepted, result.ignored, result.rejected) == (4, 0, [])
    assert db.device(F, "d1")["state"] == "ok" and db.device(F, "d1")["version"] == 3


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    ({"state": "ok", "version": "7"}, "version must be"),
    ({"state": "ok", "version": True}, "version must be"),
    ({"state": "ok", "bad": ["x"]}, "bad must be"),
    ({"state": "ok", "fail_open": "api.example"}, "fail_open must be"),
    ({"state": 3}, "state must be"),
    ({"state": "ok", "device": "someone-else"}, "does not match the topic"),
    ({"state": "ok", "fleet": "other"}, "does not match"),
    ({"state": "ok", "group": "a/b"}, "may hold only"),
    (b"{" + b" " * status_schema.MAX_BYTES + b"}", "limit"),
    (b"[" * 2000, "nested too deeply"),
    (b'{"state": "ok", "detail": "\\udc00"}', "lone surrogate"),
    (b'{"state": "ok", "\\ud800": 1}', "lone surrogate"),
])
def test_malformed_statuses_are_rejected_with_the_reason_and_the_rest_of_the_batch_is_stored(db, body, why):
    result = db.ingest_statuses([(F, "bad", body, T), (F, "good", status("good"), T)])
    assert result.accepted == 1 and len(result.rejected) == 1
    assert result.rejected[0][0] == "bad" and why in result.rejected[0][1]
    assert db.device(F, "bad") is None
    with pytest.raises(StatusError, match=why):
        db.ingest_status(F, "bad", body, T)


def test_a_device_id_that_could_break_the_topic_tree_is_rejected(db):
    result = db.ingest_statuses([(F, "a+b", status("a+b"), T)])
    assert result.accepted == 0 and "may hold only" in result.rejected[0][1]


def test_the_bucket_is_computed_from_the_device_id_not_taken_from_the_message(db):
    db.ingest_status(F, "dev-42", status("dev-42", bucket=0), T)
    assert db.device(F, "dev-42")["bucket"] == topics.bucket("dev-42")


def test_an_empty_payload_from_a_cleared_retained_topic_is_ignored(db):
    result = db.ingest_statuses([(F, "d1", b"", T)])
    assert (result.accepted, result.ignored, result.rejected) == (0, 1, [])


def test_devices_are_listed_per_fleet_with_their_status_fields(db):
    db.ingest_statuses([(F, "b", status("b", group="canary", fail_open=["api.acme.example"]), T),
                        ("other", "a", {**status("a"), "fleet": "other"}, T)])
    [d] = db.devices(F)
    assert d["device"] == "b" and d["group"] == "canary" and d["fail_open"] == ["api.acme.example"]
    assert db.max_version(F) == 2 and db.max_version("nobody") is None


# --------------------------------------------------------------------------- summary and reports


def test_summary_counts_by_version_and_state_and_lists_devices_needing_a_look(db):
    batch = [(F, f"ok{i}", status(f"ok{i}", version=3), T) for i in range(3)]
    batch += [(F, "old", status("old", version=2), T - 90_000)]
    batch += [(F, "stale", status("stale", version=3, state="stale",
                                  reasons=["no timestamp newer than 172800 s"]), T)]
    batch += [(F, "open", status("open", version=3, fail_open=["api.acme.example"]), T)]
    batch += [(F, "gone", status("gone", version=2), T), (F, "gone", will("gone"), T + 1)]
    batch += [(F, "new", status("new", version=None, state="no-store"), T)]
    db.ingest_statuses(batch)
    db.add_report(F, "open", {"validation-result": "document-refused", "reason": "expired",
                              "device": "open"}, T + 5)
    s = db.summary(F, T + 10, silent_after=86_400)
    assert s["devices"] == 8
    assert s["by_version"] == {"3": 5, "2": 2, "none": 1}
    assert s["by_state"] == {"ok": 5, "stale": 1, "offline": 1, "no-store": 1}
    assert {"version": 3, "state": "ok", "count": 4} in s["table"]
    assert s["stale"] == [{"device": "stale", "version": 3, "last_seen": T,
                           "reasons": ["no timestamp newer than 172800 s"]}]
    assert [d["device"] for d in s["fail_open"]] == ["open"] and s["fail_open_count"] == 1
    assert [d["device"] for d in s["offline"]] == ["gone"]
    assert [d["device"] for d in s["silent"]] == ["old"]
    assert s["reports"][0]["kind"] == "document-refused" and s["reports"][0]["device"] == "open"


def test_reports_are_kept_newest_first_and_malformed_ones_refused(db):
    result = db.add_reports([(F, "d1", {"validation-result": "pin-failure", "device": "d1"}, T),
                             (F, "d1", b"{{", T),
                             (F, "d2", {"validation-result": "document-refused"}, T + 1)])
    assert result.accepted == 2 and len(result.rejected) == 1
    assert [r["device"] for r in db.reports(F)] == ["d2", "d1"]


# --------------------------------------------------------------------------- rollouts


def new_rollout(version: int = 3, bundle: bytes = b"\xd8\x62signed bundle") -> rollout.Rollout:
    return rollout.new_rollout(F, version, "cd" * 32, bundle, rollout.parse_groups("canary,all"), T,
                               success=0.95, max_failure=0.1, deadline=120)


def test_a_rollout_round_trips_with_every_field(db):
    r = db.create_rollout(new_rollout())
    assert r.id is not None and r.revision == 0
    again = db.rollout(r.id)
    assert again == r
    assert (again.bundle, again.waves, again.success, again.max_failure, again.deadline) == (
        b"\xd8\x62signed bundle", r.waves, 0.95, 0.1, 120)
    stepped, _ = rollout.step(r, [], T + 1)
    assert db.claim_rollout(r.id, r.revision)
    db.add_published(r.id, list(stepped.published))
    assert db.save_rollout(stepped, r.revision + 1)
    back = db.rollout(r.id)
    assert back == dataclasses.replace(stepped, revision=2)
    assert db.rollout_to_drive(F) == back and db.latest_rollout(F) == back


def test_a_second_rollout_is_refused_while_one_is_active_or_has_topics_to_clear(db):
    r = db.create_rollout(new_rollout())
    with pytest.raises(fleetdb.RolloutConflict, match="is running"):
        db.create_rollout(new_rollout(4))
    db.add_published(r.id, ["tf/acme/bundle/group/canary"])
    db.update_rollout(r.id, lambda x: rollout.abort(x, T + 5))
    with pytest.raises(fleetdb.RolloutConflict, match="not cleared yet"):
        db.create_rollout(new_rollout(4))
    db.remove_published(r.id, ["tf/acme/bundle/group/canary"])
    assert db.rollout_to_drive(F) is None
    assert db.create_rollout(new_rollout(4)).version == 4


def test_claim_and_save_refuse_a_stale_revision(db):
    r = db.create_rollout(new_rollout())
    assert db.claim_rollout(r.id, 0) and not db.claim_rollout(r.id, 0)
    assert not db.save_rollout(rollout.pause(r, T), 0)
    assert db.save_rollout(rollout.pause(r, T), 1)
    assert db.rollout(r.id).state == rollout.PAUSED


def test_published_topics_survive_a_save_from_an_older_read(db):
    r = db.create_rollout(new_rollout())
    db.add_published(r.id, ["t/1", "t/2"])
    # The CLI pauses with the rollout it read before the topics were recorded.
    db.update_rollout(r.id, lambda x: rollout.pause(x, T + 1))
    assert db.rollout(r.id).published == ("t/1", "t/2")
    db.remove_published(r.id, ["t/1"])
    assert db.rollout(r.id).published == ("t/2",)


def test_events_are_kept_in_order(db):
    r = db.create_rollout(new_rollout())
    for i in range(3):
        db.add_event(r.id, T + i, f"event {i}")
    assert [e["text"] for e in db.events(r.id)] == ["event 0", "event 1", "event 2"]
    assert [e["text"] for e in db.events(r.id, limit=2)] == ["event 1", "event 2"]


def test_latest_done_is_the_highest_finished_version(db):
    r = db.create_rollout(new_rollout(3))
    db.update_rollout(r.id, lambda x: dataclasses.replace(x, state=rollout.DONE, finished=T))
    assert db.latest_done(F).version == 3
    with pytest.raises(fleetdb.NotFound):
        db.rollout(9999)


# --------------------------------------------------------------------------- schema


def test_a_newer_schema_is_refused_and_data_survives_reopening(target):
    with fleetdb.open_db(target) as d:
        d.ingest_status(F, "d1", status("d1"), T)
        assert d.schema_version() == fleetdb.SCHEMA_VERSION
    with fleetdb.open_db(target) as d:
        assert d.device(F, "d1")["version"] == 2
        with d._tx("test", write=True) as cur:
            d._exec(cur, "UPDATE tf_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(fleetdb.SchemaError, match="schema v99 is newer"):
        fleetdb.open_db(target)


def test_sqlite_uses_wal_mode(tmp_path):
    with fleetdb.open_db(tmp_path / "f.db") as d:
        assert d._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_unreachable_database_is_a_typed_error_without_the_password():
    with pytest.raises(fleetdb.FleetDBError) as info:
        fleetdb.open_db("postgresql://u:s3cret@127.0.0.1:1/x?connect_timeout=2")
    assert "cannot connect" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(fleetdb.FleetDBError, match="cannot open"):
        fleetdb.open_db("/nonexistent-dir/sub/fleet.db")
