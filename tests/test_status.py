"""The status message is defined once (trustfleet_device.status) and both sides follow it.

The device's session builds its message through the schema; the server's
fleet package checks what arrives against the same schema and stores each
field in its column. Changing a bound in status.py changes both at once.
"""

from __future__ import annotations

import json

import pytest

from support.fleetkit import DAY, NOW, Repo
from trustfleet_device import agent as core
from trustfleet_device import session, topics
from trustfleet_device import status as schema
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage
from trustfleet_server.errors import MessageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.fleet import messages

DEVICE = "dev-001"


@pytest.fixture()
def repo() -> Repo:
    return Repo()


class Clock:
    def __init__(self, t: int = NOW) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def make(repo, health=runner.no_endpoints, clock=None) -> session.Session:
    storage = MemStorage()
    config = core.Config(fleet=repo.fleet, firmware_time=NOW - DAY)
    runner.initialise(storage, repo.root_raw, config)
    device = runner.Device(storage, config, health, clock or Clock())
    return session.Session(device, repo.fleet, DEVICE, "canary")


def sent(s: session.Session) -> bytes:
    topic, payload, retain, qos = s.status_message()
    assert topic == topics.status(s.fleet, DEVICE) and retain and qos == 1
    return payload


def reverted(repo, detail: str = "TLS to api.example failed") -> session.Session:
    s = make(repo, health=lambda bundle, now: (bundle.version == 1, detail))
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=2))
    return s


def stale(repo) -> session.Session:
    """Bundle and root expired, no recent timestamp: three reasons."""
    clock = Clock()
    s = make(repo, clock=clock)
    s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))
    clock.t = NOW + 5000 * DAY
    return s


@pytest.fixture()
def db(tmp_path):
    with fleetdb.open_db(tmp_path / "fleet.db") as d:
        yield d


# --------------------------------------------------------------------------- one schema


def test_agent_and_session_use_only_the_schemas_field_names(repo):
    s = reverted(repo)
    assert set(s.device.status()) <= set(schema.NAMES)
    assert set(json.loads(sent(s))) == set(schema.NAMES)  # after an event: every field
    assert set(json.loads(s.will()[1])) <= set(schema.NAMES)


def test_the_store_has_a_column_for_every_field_and_reads_it_back_by_name(db):
    msg = {"device": DEVICE, "fleet": "acme", "group": "canary", "bucket": 7, "state": "stale",
           "version": 3, "floor": 2, "bad": [4, 5], "last_revert": "health", "reasons": ["r1", "r2"],
           "fail_open": ["api.example"], "root_version": 2, "trusted_time": NOW, "last_timestamp": NOW - 9,
           "agent_version": "1.2", "time": NOW + 1, "seq": 6, "event": "reverted", "detail": "why"}
    assert set(msg) == set(schema.NAMES)
    assert db.ingest_status("acme", DEVICE, json.dumps(msg).encode(), NOW)
    got = db.device("acme", DEVICE)
    # Plus the server's own flags: v3 was never published here, so the claim is suspect.
    assert got == {**msg, "bucket": topics.bucket(DEVICE), "first_seen": NOW, "last_seen": NOW,
                   "suspect": True, "quarantined": False}


@pytest.mark.parametrize("case", ["no-store", "ok", "stale", "trial", "reverted", "offline"])
def test_every_status_the_session_sends_passes_the_servers_check(repo, db, case):
    if case == "no-store":
        s = make(repo)
        payload = s.connected()[0][1]
    elif case == "ok":
        s = make(repo)
        payload = s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))[0][1]
    elif case == "stale":
        payload = sent(stale(repo))
    elif case == "trial":
        s = make(repo)
        s.on_message(topics.bundle(repo.fleet), repo.bundle(version=1))
        s.device.agent.phase = core.TRIAL  # as while a health check runs
        payload = sent(s)
    elif case == "reverted":
        payload = sent(reverted(repo))
    else:
        payload = make(repo).will()[1]
    body = json.loads(payload)
    state = "ok" if case == "reverted" else case
    assert body["state"] == state
    row = messages.normalise_status(repo.fleet, DEVICE, payload)
    for name in schema.NAMES:
        if name != "bucket" and name in body:
            assert row[name] == body[name], name
    assert db.ingest_status(repo.fleet, DEVICE, payload, NOW)
    assert db.device(repo.fleet, DEVICE)["state"] == state


def test_build_refuses_what_is_not_in_the_schema():
    with pytest.raises(ValueError, match="not a status field"):
        schema.build({"state": "ok", "grp": "canary"})
    with pytest.raises(ValueError, match="state 'fine' is not one of"):
        schema.build({"state": "fine"})
    with pytest.raises(ValueError, match="version must be"):
        schema.build({"state": "ok", "version": -1})
    with pytest.raises(ValueError, match="may hold only"):
        schema.build({"state": "ok", "group": "a/b"})


def test_a_malformed_status_is_a_message_error_not_a_store_error(db):
    with pytest.raises(MessageError, match="version must be"):
        db.ingest_status("acme", DEVICE, {"state": "ok", "version": "7"}, NOW)
    assert not isinstance(messages.StatusError("x"), fleetdb.FleetDBError)


# --------------------------------------------------------------------------- change a bound once


def test_text_bound_changed_once_is_followed_by_device_and_server(repo, db, monkeypatch):
    monkeypatch.setattr(schema, "MAX_TEXT", 12)
    body = json.loads(sent(reverted(repo, detail="a rather long explanation")))
    assert len(body["last_revert"]) == 12 and len(body["detail"]) == 12
    assert body["event"] == "reverted"
    # The server clips a longer text from anyone else to the same bound, and stores that.
    long = {"state": "ok", "last_revert": "x" * 40, "reasons": ["y" * 40]}
    assert db.ingest_status(repo.fleet, DEVICE, long, NOW)
    got = db.device(repo.fleet, DEVICE)
    assert got["last_revert"] == "x" * 12 and got["reasons"] == ["y" * 12]


def test_list_bound_changed_once_is_followed_by_device_and_server(repo, db, monkeypatch):
    s = stale(repo)
    assert len(json.loads(sent(s))["reasons"]) == 3
    monkeypatch.setattr(schema, "MAX_LIST", 2)
    payload = sent(s)
    assert json.loads(payload)["reasons"] == json.loads(sent(s))["reasons"][:2]
    assert len(json.loads(payload)["reasons"]) == 2
    # What the device sends is accepted; a longer list from anyone else is refused.
    assert db.ingest_status(repo.fleet, DEVICE, payload, NOW)
    assert len(db.device(repo.fleet, DEVICE)["reasons"]) == 2
    result = db.ingest_statuses([(repo.fleet, "other", {"state": "stale", "reasons": ["a", "b", "c"]}, NOW)])
    assert result.accepted == 0 and result.rejected == [("other", "reasons must be a list of at most 2 strings")]
    monkeypatch.setattr(schema, "MAX_LIST", 3)
    assert db.ingest_statuses([(repo.fleet, "other", {"state": "stale", "reasons": ["a", "b", "c"]},
                                NOW)]).accepted == 1


def test_size_bound_changed_once_is_followed_by_device_and_server(repo, db, monkeypatch):
    s = stale(repo)
    full = sent(s)
    monkeypatch.setattr(schema, "MAX_BYTES", len(full) - 40)
    payload = sent(s)
    assert len(payload) <= schema.MAX_BYTES
    assert len(json.loads(payload)["reasons"]) < len(json.loads(full)["reasons"])  # dropped from the end
    assert db.ingest_status(repo.fleet, DEVICE, payload, NOW)
    with pytest.raises(messages.StatusError, match="limit is"):
        db.ingest_status(repo.fleet, DEVICE, full, NOW)


def test_the_schema_runs_the_same_in_the_micropython_vm(mpy):
    fields = {"device": DEVICE, "fleet": "acme", "state": "stale", "version": 3, "bad": [2],
              "reasons": ["r" * 30, "s"], "last_revert": "x" * 30, "seq": 1}
    got = mpy.run_json(f"""
import json
from trustfleet_device import status
status.MAX_TEXT = 10
status.MAX_LIST = 1
msg = status.build({fields!r})
raw = status.encode(msg)
try:
    status.build({{"state": "fine"}})
    refused = None
except ValueError as e:
    refused = str(e)
print(json.dumps([json.loads(raw), status.validate(json.loads(raw)), refused]))
""")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(schema, "MAX_TEXT", 10)
        m.setattr(schema, "MAX_LIST", 1)
        msg = schema.build(fields)
        assert got == [json.loads(schema.encode(msg)), schema.validate(json.loads(schema.encode(msg))),
                       "state 'fine' is not one of ok, behind, stale, trial, no-store, offline"]
    assert got[0]["reasons"] == ["r" * 10] and got[0]["last_revert"] == "x" * 10


def test_a_size_capped_message_from_micropython_fits_the_server_with_non_ascii_text(mpy, monkeypatch):
    # MicroPython's json writes UTF-8; the server counts the \u-escaped form.
    got = mpy.run_json("""
import json
from trustfleet_device import status
status.MAX_BYTES = 400
raw = status.encode(status.build({"state": "stale", "reasons": ["\\u00e9" * 30] * 6}))
print(json.dumps([raw.decode(), len(raw)]))
""")
    payload, size = got[0].encode(), got[1]
    monkeypatch.setattr(schema, "MAX_BYTES", 400)
    row = messages.normalise_status("acme", DEVICE, payload)
    assert 0 < len(row["reasons"]) < 6 and size <= 400
