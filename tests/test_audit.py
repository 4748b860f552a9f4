"""The audit trail (issue 15): who signed (key id and stated name), who published what to which
topics, who started, paused, resumed or aborted a rollout, from the CLI, the console or serve, with
time and host; kept in the fleet store (tf_audit, schema v5), append-only from the tool's side;
`trustfleet audit [--json]`.

Entries come from the real commands on SQLite and PostgreSQL stores, documents are signed by the
real CLI (`bundle sign --signer`, `root sign --signer`) and verified by the device code on CPython
and on the MicroPython unix port, and serve's entries from a `trustfleet serve` process on a
private Mosquitto.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from support import fleetkit as fk
from support import mpunix
from support.clirun import make_operator, one_line, run_main
from support.serving import RecordingLink, ServeProcess
from support.waiting import wait_for
from trustfleet_device import cbor, cose, policy, topics
from trustfleet_device.errors import SignatureError
from trustfleet_server import audit, cli, fleetops, keys, mqtturl, rollout
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.serve.server import FleetServer

F = "acme"
HOST = socket.gethostname()


def run(capsys, *args: object) -> tuple[int, str, str]:
    return run_main(cli.main, capsys, *args)


def ok(capsys, *args: object) -> str:
    code, out, err = run(capsys, *args)
    assert code == 0, err
    return out


def status(version: int, seq: int, **extra) -> dict:
    return {"state": "ok", "version": version, "floor": version, "seq": seq, "time": int(time.time()) + seq,
            **extra}


def ingest(db: fleetdb.FleetDB, version: int, *devices: str, seq: int = 1, **extra) -> None:
    now = int(time.time())
    result = db.ingest_statuses([(F, d, status(version, seq, **extra), now) for d in devices])
    assert not result.rejected, result.rejected


@pytest.fixture
def op(tmp_path, capsys):
    """The operator's folder (support.clirun.make_operator) with a root signed by "Rita Root"
    (root-named.cose) and bundles v3 and v4 signed by b1 as "Alice Example"."""
    d, _ = make_operator(tmp_path)
    ok(capsys, "root", "create", "--fleet", F, "--key", f"root={d / 'r1.pub.pem'}", "--key",
       f"bundle={d / 'b1.pub.pem'}", "--key", f"timestamp={d / 't1.pub.pem'}", "-o", d / "root-named.cose")
    ok(capsys, "root", "sign", "--key", d / "r1.pem", "--signer", "Rita Root", d / "root-named.cose")
    for v in (3, 4):
        ok(capsys, "bundle", "build", d / "b.toml", "--version", v, "-o", d / f"unsigned-v{v}.cbor")
        ok(capsys, "bundle", "sign", "--key", d / "b1.pem", "--signer", "Alice Example",
           "--root", d / "root-named.cose", d / f"unsigned-v{v}.cbor", "-o", d / f"bundle-v{v}.cose")
    return d


def kid_of(pem: Path) -> str:
    return keys.kid_of(keys.load_private_key(pem, None)).hex()


# --------------------------------------------------------------------------- signer names


def test_signer_names_are_signed_read_back_and_accepted_by_the_device_on_cpython_and_micropython(
        op, capsys):
    root_raw, bundle_raw = (op / "root-named.cose").read_bytes(), (op / "bundle-v3.cose").read_bytes()
    assert audit.signers(root_raw) == [{"kid": kid_of(op / "r1.pem"), "name": "Rita Root"}]
    assert audit.signers(bundle_raw) == [{"kid": kid_of(op / "b1.pem"), "name": "Alice Example"}]
    # Without --signer: no name, and the document is as before ({alg} alone protected).
    unnamed = (op / "root.cose").read_bytes()
    assert audit.signers(unnamed) == [{"kid": kid_of(op / "r1.pem"), "name": None}]
    assert fk.open_sign(unnamed)[3][0][0] == cose.PROTECTED_ES256
    assert audit.signers((op / "unsigned-v3.cbor").read_bytes()) == []

    # The device code accepts the extra protected label, on CPython ...
    root = policy.load_trusted_root(root_raw)
    assert policy.verify_bundle(root, bundle_raw).version == 3
    # ... and on the MicroPython unix port.
    mp = mpunix.require()
    got = mp.run_json(
        "import json, sys\nfrom trustfleet_device import policy\n"
        "root = policy.load_trusted_root(open(sys.argv[-2], 'rb').read())\n"
        "b = policy.verify_bundle(root, open(sys.argv[-1], 'rb').read())\n"
        f"print({mpunix.RESULT_MARK!r} + json.dumps([root.version, b.version]))\n",
        path=[mpunix.DEVICE_DIR], args=[str(op / "root-named.cose"), str(op / "bundle-v3.cose")])
    assert got == [1, 3]

    # The name is under the signature: another name in the same signature makes it count no more.
    body, unprotected, payload, entries = fk.open_sign(bundle_raw)
    protected, sig_unprotected, sig = entries[0]
    assert cbor.decode(protected) == {cose.HDR_ALG: cose.ALG_ES256, "signer": "Alice Example"}
    forged = fk.with_entries(bundle_raw, [[cbor.encode({cose.HDR_ALG: cose.ALG_ES256, "signer": "Mallory"}),
                                           sig_unprotected, sig]])
    assert audit.signers(forged)[0]["name"] == "Mallory"
    with pytest.raises(SignatureError, match="0 valid bundle signature"):
        policy.verify_bundle(root, forged)


def test_a_bad_signer_name_is_refused_in_one_line_and_nothing_is_written(op, capsys):
    for bad in ("", " padded", "a" * 129, "line\nbreak"):
        code, _, err = run(capsys, "bundle", "sign", "--key", op / "b1.pem", "--signer", bad,
                           op / "unsigned-v3.cbor", "-o", op / "never.cose")
        assert code == 2 and "--signer" in one_line(err), err
    assert not (op / "never.cose").exists()


# --------------------------------------------------------------------------- the CLI's entries


def test_publish_rollout_and_device_actions_are_audited_with_actor_host_and_source(
        op, target, private_mosquitto, capsys, monkeypatch):
    broker = private_mosquitto()
    monkeypatch.setenv(audit.OPERATOR_ENV, "alice")
    root = op / "root-named.cose"
    ok(capsys, "publish", "--broker", broker.url, "--root", root, "--db", target, root, op / "bundle-v3.cose")
    with fleetdb.open_db(target) as db:
        ingest(db, 3, "d1", "d2")
    rid = json.loads(ok(capsys, "rollout", "start", "--db", target, "--fleet", F, "--root", root,
                        "--bundle", op / "bundle-v4.cose", "--waves", "50%,100%", "--allow-empty-waves",
                        "--json"))["id"]
    ok(capsys, "rollout", "pause", "--db", target, "--fleet", F)
    with fleetdb.open_db(target) as db:  # the console's call: its operator, the client's address
        fleetops.change_rollout(db, F, rid, "resume", int(time.time()), actor="ops-ann",
                                host="192.0.2.7", source="console", detail={"server": "fleet.example"})
    ok(capsys, "rollout", "abort", "--db", target, "--fleet", F, "--reason", "wrong pins")
    ok(capsys, "fleet", "device", "quarantine", "d2", "--db", target, "--fleet", F, "--reason", "claims v9")

    out = json.loads(ok(capsys, "audit", "--db", target, "--json"))
    entries = out["entries"]
    assert [e["action"] for e in entries] == [
        "device-quarantine", "rollout-abort", "rollout-resume", "rollout-pause", "rollout-start",
        "publish", "publish"]
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    now = int(time.time())
    for e in entries:
        assert e["fleet"] == F and now - 120 <= e["time_epoch"] <= now, e
        assert (e["actor"], e["host"], e["source"]) == (
            ("ops-ann", "192.0.2.7", "console") if e["action"] == "rollout-resume" else ("alice", HOST, "cli"))
    by = {e["action"]: e["detail"] for e in entries}
    bundle_signers = [{"kid": kid_of(op / "b1.pem"), "name": "Alice Example"}]
    root_publish, bundle_publish = entries[-1]["detail"], entries[-2]["detail"]
    assert root_publish == {"topics": [f"tf/{F}/root/1"], "type": "root", "version": 1,
                            "sha256": hashlib.sha256(root.read_bytes()).hexdigest(),
                            "signers": [{"kid": kid_of(op / "r1.pem"), "name": "Rita Root"}]}
    assert bundle_publish == {"topics": [f"tf/{F}/bundle"], "type": "bundle", "version": 3,
                              "sha256": hashlib.sha256((op / "bundle-v3.cose").read_bytes()).hexdigest(),
                              "signers": bundle_signers}
    assert by["rollout-start"] == {
        "rollout": rid, "version": 4, "waves": ["50%", "100%"], "signers": bundle_signers,
        "sha256": hashlib.sha256((op / "bundle-v4.cose").read_bytes()).hexdigest()}
    assert by["rollout-pause"] == {"rollout": rid, "version": 4, "state": "paused"}
    assert by["rollout-resume"] == {"rollout": rid, "version": 4, "state": "running",
                                    "server": "fleet.example"}
    assert by["rollout-abort"] == {"rollout": rid, "version": 4, "state": "aborted", "reason": "wrong pins"}
    assert by["device-quarantine"] == {"device": "d2", "by": f"alice@{HOST}", "reason": "claims v9"}

    # Filters, and the plain text a pipe gets: a header, one tab-separated line per entry.
    out = json.loads(ok(capsys, "audit", "--db", target, "--fleet", F, "--action", "publish",
                        "--limit", "1", "--json"))
    assert [e["detail"]["type"] for e in out["entries"]] == ["bundle"]
    lines = ok(capsys, "audit", "--db", target, "--action", "rollout-abort").splitlines()
    assert lines[0].split("\t") == ["id", "time", "fleet", "action", "actor", "host", "source", "detail"]
    assert len(lines) == 2 and lines[1].split("\t")[3:7] == ["rollout-abort", "alice", HOST, "cli"]
    assert "reason=wrong pins" in lines[1]
    text = ok(capsys, "audit", "--db", target, "--action", "publish")
    assert f"signers=Alice Example ({kid_of(op / 'b1.pem')[:16]})" in text
    assert ok(capsys, "audit", "--db", target, "--action", "wave-clear") == "no audit entries with action wave-clear\n"


def test_audit_refuses_a_missing_store_an_empty_one_and_a_bad_limit_in_one_line(tmp_path, capsys):
    code, out, err = run(capsys, "audit", "--db", tmp_path / "nowhere.db")
    assert code == 2 and "nowhere.db: no such fleet database" in one_line(err)
    assert not (tmp_path / "nowhere.db").exists()
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    code, out, err = run(capsys, "audit", "--db", tmp_path / "other.db", "--json")
    assert code == 2 and "has no trustfleet tables" in one_line(err)
    assert json.loads(out)["error"]["exit"] == 2
    with fleetdb.open_db(tmp_path / "fleet.db"):
        pass
    code, _, err = run(capsys, "audit", "--db", tmp_path / "fleet.db", "--limit", "0")
    assert code == 2 and one_line(err) == "trustfleet: error: --limit must be at least 1"
    code, _, err = run(capsys, "audit", "--db", tmp_path / "fleet.db", "--fleet", "zeta")
    assert code == 2 and "fleet zeta is not in" in one_line(err)
    assert ok(capsys, "audit", "--db", tmp_path / "fleet.db") == "no audit entries\n"


# --------------------------------------------------------------------------- append-only, schema


def entry(db: fleetdb.FleetDB, n: int = 1) -> dict:
    return db.add_audit(F, "publish", "alice", "h1", "cli", {"topics": [f"tf/{F}/bundle"], "n": n}, 100 + n)


@pytest.mark.parametrize("statement", ["UPDATE tf_audit SET actor = 'mallory'", "DELETE FROM tf_audit",
                                       "DELETE FROM tf_audit WHERE id = 1"])
def test_the_store_refuses_to_change_or_delete_audit_entries(target, statement):
    with fleetdb.open_db(target) as db:
        first, second = entry(db, 1), entry(db, 2)
        with pytest.raises(fleetdb.FleetDBError, match="tf_audit is append-only"), \
                db._tx("tampering", write=True) as cur:
            cur.execute(statement)
        assert db.audit_entries() == [second, first]
        assert first == {"id": first["id"], "time": 101, "fleet": F, "action": "publish", "actor": "alice",
                         "host": "h1", "source": "cli", "detail": {"topics": [f"tf/{F}/bundle"], "n": 1}}
        with pytest.raises(ValueError, match="audit source"):
            db.add_audit(F, "publish", "alice", "h1", "cron", {}, 1)


def test_the_triggers_hold_for_any_client_of_the_store(tmp_path, pg_target):
    """Not only through FleetDB: sqlite3 itself, and psycopg (also TRUNCATE)."""
    import psycopg

    path = tmp_path / "fleet.db"
    for target in (str(path), pg_target):
        with fleetdb.open_db(target) as db:
            entry(db)
    conn = sqlite3.connect(path)
    for statement in ("UPDATE tf_audit SET host = 'x'", "DELETE FROM tf_audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    conn.close()
    for statement in ("UPDATE tf_audit SET host = 'x'", "DELETE FROM tf_audit", "TRUNCATE tf_audit"):
        with psycopg.connect(pg_target) as conn, pytest.raises(psycopg.Error, match="append-only"):
            conn.execute(statement)
    for target in (str(path), pg_target):
        with fleetdb.open_db(target) as db:
            assert [e["host"] for e in db.audit_entries()] == ["h1"]


def test_a_schema_v4_store_is_upgraded_to_v5_in_place(target, op, capsys):
    root = op / "root-named.cose"
    ok(capsys, "rollout", "start", "--db", target, "--fleet", F, "--root", root,
       "--bundle", op / "bundle-v4.cose", "--allow-empty-waves")
    with fleetdb.open_db(target) as db:  # as trustfleet with schema v4 left it: no tf_audit
        ingest(db, 3, "d1")
        with db._tx("downgrading", write=True) as cur:
            cur.execute("DROP TABLE tf_audit")
            if db.dialect == "postgresql":
                cur.execute("DROP FUNCTION tf_audit_refuse()")
            db._exec(cur, "UPDATE tf_meta SET value = '4' WHERE key = 'schema_version'")
            cur.execute("SELECT COUNT(*) FROM tf_rollouts")
            assert cur.fetchone()[0] == 1
    with fleetdb.open_db(target) as db:
        assert db.schema_version() == fleetdb.SCHEMA_VERSION == 5
        assert db.device(F, "d1")["version"] == 3 and db.latest_rollout(F).version == 4
        assert db.audit_entries() == []  # the trail starts at the upgrade
        first = entry(db)
        with pytest.raises(fleetdb.FleetDBError, match="append-only"), \
                db._tx("tampering", write=True) as cur:
            cur.execute("DELETE FROM tf_audit")
    with fleetdb.open_db(target) as db:  # opening again changes nothing
        assert db.schema_version() == 5 and db.audit_entries() == [first]
    ok(capsys, "rollout", "pause", "--db", target, "--fleet", F)
    assert [e["action"] for e in json.loads(ok(capsys, "audit", "--db", target, "--json"))["entries"]] == [
        "rollout-pause", "publish"]


# --------------------------------------------------------------------------- serve's entries


def test_serve_records_the_waves_it_publishes_and_clears(op, private_mosquitto, tmp_path, capsys):
    """A real `trustfleet serve` drives the rollout: its wave-publish entry names the wave's topics;
    after an abort from the CLI (without --broker) it clears them and records wave-clear."""
    broker = private_mosquitto()
    db_path = str(tmp_path / "fleet.db")
    root = op / "root-named.cose"
    ok(capsys, "publish", "--broker", broker.url, "--root", root, "--db", db_path, op / "bundle-v3.cose")
    names = [f"dev-{i}" for i in range(200)]
    first = [n for n in names if topics.bucket(n) < 50][:3]  # the 50% wave: buckets 0-49
    with fleetdb.open_db(db_path) as db:
        ingest(db, 3, *first, *[n for n in names if topics.bucket(n) >= 50][:3])
    rid = json.loads(ok(capsys, "rollout", "start", "--db", db_path, "--fleet", F, "--root", root,
                        "--bundle", op / "bundle-v4.cose", "--waves", "50%,100%", "--wave-deadline", "1h",
                        "--json"))["id"]
    name = f"audit-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8]}"
    serve = ServeProcess(name, ["--broker", broker.url, "--fleet", F, "--root", str(root), "--db", db_path,
                                "--step-every", "0.5"], tmp_path)

    def entries(action: str) -> list[dict]:
        with fleetdb.open_db(db_path) as db:
            return db.audit_entries(F, action=action)
    try:
        wait_for(lambda: entries("wave-publish"), "serve to publish the first wave", 30)
        (published,) = entries("wave-publish")
        with fleetdb.open_db(db_path) as db:
            r = db.rollout(rid)
        assert r.current == 0
        topics_0 = rollout.wave_topics(F, r.waves, 0)
        assert (published["actor"], published["host"], published["source"]) == (f"serve:{name}", HOST, "serve")
        assert published["detail"] == {"rollout": rid, "version": 4, "wave": "50%", "topics": topics_0}
        ok(capsys, "rollout", "abort", "--db", db_path, "--fleet", F, "--reason", "stop")
        wait_for(lambda: entries("wave-clear"), "serve to clear the wave topics", 30)
    finally:
        summary = serve.stop()
    assert summary is not None, serve.log()
    (cleared,) = entries("wave-clear")
    assert (cleared["actor"], cleared["source"]) == (f"serve:{name}", "serve")
    assert cleared["detail"] == {"rollout": rid, "version": 4, "topics": topics_0}
    (abort,) = entries("rollout-abort")
    assert abort["source"] == "cli" and abort["id"] < cleared["id"]



REVERTED = {"bad": [4], "last_revert": "health check failed: no key matches the pins", "event": "reverted",
            "detail": "bundle v4: health check failed: no key matches the pins"}


@pytest.mark.parametrize("outcome", ["halt", "done"])
def test_serve_records_a_rollout_halting_with_its_failing_devices_or_finishing(op, target, capsys, outcome):
    """serve's own rollout step (FleetServer._drive_rollout, the link replaced by a recorder)."""
    root = op / "root-named.cose"
    with fleetdb.open_db(target) as db:
        ingest(db, 3, "a", "b")
    rid = json.loads(ok(capsys, "rollout", "start", "--db", target, "--fleet", F, "--root", root,
                        "--bundle", op / "bundle-v4.cose", "--waves", "100%", "--json"))["id"]
    with fleetdb.open_db(target) as db:
        srv = FleetServer(mqtturl.parse("mqtt://127.0.0.1:1"), F, [root.read_bytes()], db)
        srv.link = RecordingLink("w-audit")  # type: ignore[assignment]
        srv._drive_rollout()  # publishes the wave
        if outcome == "halt":
            ingest(db, 3, "a", seq=2, **REVERTED)
        else:
            ingest(db, 4, "a", "b", seq=2)
        srv._drive_rollout()
        r = db.rollout(rid)
        entries = db.audit_entries(F)
    # Newest first: the wave published, the rollout halted or done, its wave topics cleared.
    assert [e["action"] for e in entries] == ["wave-clear", f"rollout-{outcome}", "wave-publish", "rollout-start"]
    assert {(e["actor"], e["host"], e["source"]) for e in entries[:3]} == {("serve:w-audit", HOST, "serve")}
    wave_topics = rollout.wave_topics(F, r.waves, 0)
    assert topics.bundle(F) in wave_topics and entries[2]["detail"]["topics"] == wave_topics
    # Done: the fleet topic keeps the bundle, the others are cleared; halted: all are.
    assert entries[0]["detail"]["topics"] == [t for t in wave_topics
                                              if outcome == "halt" or t != topics.bundle(F)]
    if outcome == "halt":
        assert r.state == rollout.HALTED and "1 of 2 devices failed" in r.halt_reason
        assert entries[1]["detail"] == {
            "rollout": rid, "version": 4, "reason": r.halt_reason,
            "failing": [{"device": "a", "reason": "marked v4 bad: health check failed: no key matches the pins"}]}
    else:
        assert r.state == rollout.DONE
        assert entries[1]["detail"] == {"rollout": rid, "version": 4}
