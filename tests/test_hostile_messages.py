"""Hostile device messages (issue 10, finding 1): every status and report a device can put on
its own topics is a counted rejection of that message only, never an exception, on SQLite and
PostgreSQL; and `trustfleet serve` survives a hostile retained status and report at every start.

The fuzz test drives random and adversarial payloads through FleetDB.ingest_statuses and
add_reports (the calls serve's flush makes), each batch with a good status behind it that must
land. The end-to-end test runs the real CLI in a subprocess against a private Mosquitto.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import brokers
from support.fleetkit import Repo
from trustfleet_device import status as schema
from trustfleet_device import topics
from trustfleet_server.fleet import db as fleetdb

F = "acme"
T = 1_800_000_000
GOOD = "good-device"
_SEQ = itertools.count(1)


def status(device: str, seq: int, time: int) -> dict:
    return {"device": device, "fleet": F, "state": "ok", "version": 2, "floor": 2, "bad": [],
            "root_version": 1, "agent_version": "0.1.0", "time": time, "seq": seq}


# --------------------------------------------------------------------------- payloads


def _nest(n: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * n + close * n).encode()


ADVERSARIAL = [
    b"[" * 2000,                                   # the payload that killed serve at every start
    b"{" * 2000,
    b'{"state":"ok","x":' + _nest(600) + b"}",      # parses in Python, far deeper than any schema
    b'{"event":"e","x":' + _nest(900, '{"a":', "}").replace(b"}}", b"1}}", 1) + b"}",
    b'{"state":"ok","version":' + b"9" * 5000 + b"}",  # Python's int digit limit
    b'{"state":"ok","version":1e999}',
    b'{"state":"ok","version":-1e999}',
    b'{"state":"ok","version":NaN}',
    b'{"event":"e","x":NaN}',
    b'{"event":"e","x":Infinity}',
    b'{"event":"e","x":-Infinity}',
    b'{"state":"ok","version":18446744073709551616}',
    b'{"state":"ok","version":1,"version":99}',    # duplicate keys: which one counts?
    b'{"event":"e","event":"f"}',
    b'{"state":"ok","detail":"a\\u0000b"}',         # PostgreSQL refuses NUL: it failed every batch
    b'{"event":"a\\u0000b"}',
    b'{"state":"ok","detail":"\\ud800"}',
    b'{"state":"\xff\xfe"}',                       # invalid UTF-8
    b'\xef\xbb\xbf{"state":"ok"}',
    b'{"state":"ok","detail":"' + b"x" * (schema.MAX_BYTES) + b'"}',
    b'{"state":"ok","bad":[' + b"1," * 3000 + b"1]}",
    b'{"event":"e","x":[' + b"0," * 5000 + b"0]}",
    b'{"a":' + b'"\\' * 8000 + b"}",                # unterminated quoted escapes: stays linear
    json.dumps({"state": "ok", "detail": '\\"' * 2000, "x": [[[[[[[[[[1]]]]]]]]]]}).encode(),
    b'{"state":"ok","reasons":' + json.dumps(["x" * 100] * 100).encode() + b"}",
    b'{"state":' + json.dumps("s" * 100).encode() + b"}",
    b'{"state":"ok","version":true}',
    b'{"state":"ok","group":"a/b/#"}',
    b'{"state":"ok","device":{"a":1}}',
    b'{"state":["ok"]}',
    b'{"event":{"nested":"kind"}}',
    b'"just a string"', b"null", b"1", b"[]", b"", b" ", b"{", b"}", b'{"a":}',
]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=6), st.dictionaries(st.text(max_size=12), kids, max_size=6)), max_leaves=40)
field_names = st.sampled_from(list(schema.NAMES) + ["validation-result", "event", "x"])
statusish = st.dictionaries(field_names, json_value, max_size=10)


def _encode(value: object, nan: bool) -> bytes:
    try:
        return json.dumps(value, allow_nan=nan).encode("utf-8", "surrogatepass")
    except ValueError:
        return b"{}"


payloads = st.one_of(
    st.sampled_from(ADVERSARIAL),
    st.binary(max_size=300),
    st.builds(_encode, statusish, st.booleans()),
    st.builds(_encode, json_value, st.booleans()),
    st.builds(lambda d: d, statusish),                    # dicts, as tests and the demo pass them
    st.builds(lambda n, c: c * n, st.integers(1, 5000), st.sampled_from([b"[", b"{", b'{"a":'])),
)


# --------------------------------------------------------------------------- the real ingest path


def _assert_one_batch(db: fleetdb.FleetDB, batch: list, now: int) -> None:
    """Each hostile message is accepted, ignored or rejected (with a one-line reason); the good
    status behind them lands; nothing raises."""
    statuses = [(F, f"hostile-{i}", p, now) for i, p in enumerate(batch)]
    seq = next(_SEQ)
    result = db.ingest_statuses([*statuses, (F, GOOD, status(GOOD, seq=seq, time=T), now)])
    assert result.accepted + result.ignored + len(result.rejected) == len(batch) + 1
    assert all("\n" not in why and len(why) < 400 for _, why in result.rejected)
    assert db.device(F, GOOD)["seq"] == seq
    reports = [(F, f"hostile-{i}", p, now) for i, p in enumerate(batch) if p]
    rep = db.add_reports([*reports, (F, GOOD, {"event": "good", "now": now}, now)])
    assert rep.accepted + len(rep.rejected) == len(reports) + 1
    assert all("\n" not in why and len(why) < 400 for _, why in rep.rejected)
    newest = db.reports(F, 1)[0]
    assert newest["device"] == GOOD and newest["report"]["now"] == now


def test_every_adversarial_payload_is_one_counted_rejection_and_the_rest_lands(target):
    with fleetdb.open_db(target) as db:
        for payload in ADVERSARIAL:
            _assert_one_batch(db, [payload], T + 10 + next(_SEQ))
            result = db.ingest_statuses([(F, "one", payload, T)])
            if payload.strip() not in (b"",):
                assert len(result.rejected) == 1, payload[:80]
        # The store is still whole: the good device's row, nothing half-written for the others.
        assert {d["device"] for d in db.devices(F)} <= {GOOD, "hostile-0"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(batch=st.lists(payloads, min_size=1, max_size=4))
def test_random_and_adversarial_payloads_never_escape_the_ingest_path(target, batch):
    with fleetdb.open_db(target) as db:
        _assert_one_batch(db, batch, T + 10_000 + next(_SEQ))


# --------------------------------------------------------------------------- serve, end to end


def _publish_retained(broker: brokers.Broker, items: list[tuple[str, bytes]]) -> None:
    c = brokers.connect(broker)
    try:
        for topic, payload in items:
            c.publish(topic, payload, retain=True)
    finally:
        c.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_serve_survives_hostile_retained_messages_at_every_start_and_counts_them(
        private_mosquitto, tmp_path, request, store):
    broker = private_mosquitto()
    repo = Repo(fleet=brokers.unique_fleet(), now=int(time.time()))
    root = tmp_path / "root.cose"
    root.write_bytes(repo.root_raw)
    db = str(tmp_path / "fleet.db") if store == "sqlite" else request.getfixturevalue("pg_target")
    f = repo.fleet
    normal = {"device": "normal", "fleet": f, "state": "ok", "version": 1, "seq": 1,
              "time": int(time.time())}
    b = brokers.Broker(broker.host, broker.port, "mosquitto")
    _publish_retained(b, [
        (topics.status(f, "deep"), b"[" * 2000),
        (topics.status(f, "nul"), b'{"state":"ok","detail":"\\u0000"}'),
        (topics.status(f, "dup"), b'{"state":"ok","version":1,"version":4611686018427387904}'),
        (topics.report(f, "deep"), b'{"event":"x","y":' + b"[" * 2000 + b"}"),
        (topics.report(f, "nan"), b'{"event":"x","y":NaN}'),
        (topics.status(f, "normal"), json.dumps(normal).encode()),
    ])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    exe = Path(sys.executable).with_name("trustfleet")
    argv = [str(exe), "serve", "--broker", broker.url, "--fleet", f, "--root", str(root),
            "--db", db, "--once", "--json"]
    for start in range(2):  # the retained payloads are still there at the next start
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["rejected"] >= 3 + (2 if start == 0 else 0), summary
        assert "rejected" in proc.stderr and "malformed" in proc.stderr
    with fleetdb.open_db(db) as d:
        assert [x["device"] for x in d.devices(f)] == ["normal"]
        assert d.device(f, "normal")["version"] == 1
