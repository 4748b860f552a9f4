"""Bad input that used to succeed or fail late (issue 13): a typo in --db or --fleet, a database URL
of a kind we do not speak, a key of the wrong role, and epoch seconds where the help allows them.

Each case runs the real CLI in-process and asserts the one line on stderr, the exit code, and that
nothing was created or written. Database cases run on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import fleetkit as fk
from support.clirun import make_operator, one_line, run_main
from trustfleet_device import documents as device_docs
from trustfleet_server import cli
from trustfleet_server.fleet import db as fleetdb

EPOCH = "1796515999"  # 2026-12-06T00:13:19Z


def run(capsys, *args: object) -> tuple[int, str, str]:
    return run_main(cli.main, capsys, *args)




def tables(target: str) -> list[str]:
    """The tables a store holds: [] for a SQLite file that does not exist (it is not created)."""
    if "://" in target:
        import psycopg

        with psycopg.connect(target) as conn:
            rows = conn.execute("SELECT table_name FROM information_schema.tables "
                                "WHERE table_schema = current_schema()").fetchall()
        return sorted(r[0] for r in rows)
    assert not Path(target).exists()
    return []


# --------------------------------------------------------------------------- --db and --fleet

READ_COMMANDS = [
    ("fleet", "status"),
    ("fleet", "watch"),
    ("fleet", "events"),
    ("fleet", "device", "quarantine", "pi-1", "--reason", "typo test"),
    ("rollout", "status"),
    ("rollout", "pause"),
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_read_command_refuses_a_missing_store_and_creates_nothing(target, tmp_path, capsys, command):
    """SQLite: no such file; PostgreSQL: a database without trustfleet's tables. Either way the
    command names it, exits 2 and leaves no file and no table behind."""
    if "://" not in target:
        target = str(tmp_path / "typo.db")
    code, out, err = run(capsys, *command, "--db", target, "--fleet", "acme")
    line = one_line(err)
    assert code == 2, err
    assert line.startswith("trustfleet: error: ")
    if "://" in target:
        assert "has no trustfleet tables" in line, line
    else:
        assert line == (f"trustfleet: error: {target}: no such fleet database (serve, rollout start "
                        f"and publish --db create one)")
    assert tables(target) == []
    assert sorted(os.listdir(tmp_path)) == []  # no typo.db, no -wal or -shm either


@pytest.mark.parametrize("content", [b"", b"notes, not a database\n"])
def test_a_read_command_leaves_a_file_that_is_not_a_store_alone(tmp_path, capsys, content):
    db = tmp_path / "notes.db"
    db.write_bytes(content)
    code, _, err = run(capsys, "fleet", "status", "--db", db, "--fleet", "acme")
    assert code == 2
    assert one_line(err).startswith(f"trustfleet: error: {db}: ")
    assert db.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["notes.db"]


def test_fleet_prune_refuses_a_missing_sqlite_file(tmp_path, capsys):
    db = tmp_path / "typo.db"
    code, _, err = run(capsys, "fleet", "prune", "--db", db)
    assert code == 2
    assert "no such fleet database" in one_line(err)
    assert not db.exists()


def status(fleet: str, device: str) -> dict:
    return {"device": device, "fleet": fleet, "group": None, "bucket": 9, "state": "ok", "version": 2,
            "floor": 2, "bad": [], "last_revert": None, "reasons": [], "root_version": 1,
            "trusted_time": fk.NOW, "last_timestamp": None, "fail_open": [], "agent_version": "0.1.0",
            "time": fk.NOW, "seq": 1}


@pytest.mark.parametrize("command", [("fleet", "status"), ("fleet", "watch"), ("fleet", "events"),
                                     ("fleet", "device", "release", "pi-1", "--reason", "x"),
                                     ("rollout", "status"), ("rollout", "pause")],
                         ids=lambda c: " ".join(c[:2]))
def test_an_unknown_fleet_is_named_with_the_fleets_the_store_has(target, capsys, command):
    with fleetdb.open_db(target) as db:
        db.ingest_statuses([("beta", "d1", status("beta", "d1"), fk.NOW),
                            ("alpha", "d2", status("alpha", "d2"), fk.NOW)])
        before = db.devices("alpha") + db.devices("beta")
    code, out, err = run(capsys, *command, "--db", target, "--fleet", "nosuchfleet")
    assert code == 2, err
    assert one_line(err) == f"trustfleet: error: fleet nosuchfleet is not in {target} (fleets: alpha, beta)"
    with fleetdb.open_db(target) as db:
        assert db.devices("alpha") + db.devices("beta") == before
        assert db.fleets() == ["alpha", "beta"]


def test_a_known_fleet_still_reads(target, capsys):
    with fleetdb.open_db(target) as db:
        db.ingest_statuses([("alpha", "d2", status("alpha", "d2"), fk.NOW)])
    code, out, err = run(capsys, "fleet", "status", "--db", target, "--fleet", "alpha", "--json")
    assert code == 0, err
    assert json.loads(out)["fleet"] == "alpha"


@pytest.mark.parametrize("url, scheme", [("mysql://x", "mysql"), ("sqlite:///fleet.db", "sqlite"),
                                         ("HTTPS://db.example/fleet", "https")])
def test_the_url_scheme_decides_the_kind_of_store(tmp_path, monkeypatch, capsys, url, scheme):
    monkeypatch.chdir(tmp_path)
    for command in (("fleet", "status", "--fleet", "acme"), ("fleet", "prune")):
        code, _, err = run(capsys, *command, "--db", url)
        assert code == 2
        assert one_line(err) == (f"trustfleet: error: unsupported database URL scheme {scheme} "
                                 f"(use a path for SQLite or postgresql://...)")
    assert list(tmp_path.rglob("*")) == []


# --------------------------------------------------------------------------- keys of the wrong role


@pytest.fixture(scope="module")
def operator(tmp_path_factory) -> SimpleNamespace:
    """Keys made by the CLI, a root (one key per role), a signed bundle and a stranger's key."""
    d, _ = make_operator(tmp_path_factory.mktemp("operator"), root_name="root.cbor", extra_keys=("tls-ca",))
    assert cli.main(["bundle", "sign", "--key", str(d / "b1.pem"), str(d / "unsigned.cbor"),
                     "-o", str(d / "bundle.cose")]) == 0
    root = device_docs.parse_root(fk.payload_of((d / "root.cbor").read_bytes()))
    return SimpleNamespace(dir=d, root=d / "root.cbor", kids={r: root.roles[r].kids[0].hex()
                                                              for r in ("root", "bundle", "timestamp")})


def kid_of(path: Path) -> str:
    from trustfleet_server import keys

    return keys.kid_hex(keys.load_private_key(path, None))


@pytest.mark.parametrize("key", ["tls-ca", "t1", "r1"])
def test_bundle_sign_with_root_refuses_a_key_that_is_not_a_bundle_key(operator, tmp_path, capsys, key):
    d = operator.dir
    before = (d / "unsigned.cbor").read_bytes()
    out = tmp_path / "signed.cose"
    code, _, err = run(capsys, "bundle", "sign", "--root", operator.root, "--key", d / f"{key}.pem",
                       d / "unsigned.cbor", "-o", out)
    kid = kid_of(d / f"{key}.pem")
    assert code == 2, err
    assert one_line(err) == (f"trustfleet: error: {d / f'{key}.pem'}: key {kid[:16]} is not a bundle key "
                             f"of root v1 of fleet acme; nothing written")
    assert not out.exists()
    assert (d / "unsigned.cbor").read_bytes() == before


def test_bundle_sign_with_root_accepts_a_bundle_key(operator, tmp_path, capsys):
    d = operator.dir
    out = tmp_path / "signed.cose"
    code, _, err = run(capsys, "bundle", "sign", "--root", operator.root, "--key", d / "b1.pem",
                       d / "unsigned.cbor", "-o", out)
    assert code == 0, err
    assert out.exists()


@pytest.mark.parametrize("key", ["b1", "tls-ca"])
def test_timestamp_create_with_root_refuses_a_key_that_is_not_a_timestamp_key(operator, tmp_path, capsys,
                                                                              key):
    d = operator.dir
    out = tmp_path / "ts.cose"
    code, _, err = run(capsys, "timestamp", "create", "--root", operator.root, "--bundle", d / "bundle.cose",
                       "--key", d / f"{key}.pem", "-o", out)
    kid = kid_of(d / f"{key}.pem")
    assert code == 2, err
    assert one_line(err) == (f"trustfleet: error: {d / f'{key}.pem'}: key {kid[:16]} is not a timestamp "
                             f"key of root v1 of fleet acme; nothing written")
    assert not out.exists()


def test_timestamp_create_with_root_accepts_the_timestamp_key(operator, tmp_path, capsys):
    d = operator.dir
    out = tmp_path / "ts.cose"
    code, _, err = run(capsys, "timestamp", "create", "--root", operator.root, "--bundle", d / "bundle.cose",
                       "--key", d / "t1.pem", "-o", out)
    assert code == 0, err
    assert out.exists()


def test_rollout_start_still_creates_its_store(operator, tmp_path, capsys):
    """rollout start is one of the commands that create the store (docs/operations.md)."""
    db = tmp_path / "new.db"
    code, _, err = run(capsys, "rollout", "start", "--db", db, "--fleet", "acme", "--root", operator.root,
                       "--bundle", operator.dir / "bundle.cose", "--allow-empty-waves")
    assert code == 0, err
    assert db.exists()
    code, out, err = run(capsys, "rollout", "status", "--db", db, "--fleet", "acme")
    assert code == 0, err


# --------------------------------------------------------------------------- epoch seconds


def test_bundle_verify_at_takes_epoch_seconds_and_dates(operator, capsys):
    d = operator.dir
    for at in (EPOCH, "2026-12-05T23:33:19Z", "2026-12-05"):
        code, out, err = run(capsys, "bundle", "verify", "--root", operator.root, d / "bundle.cose", "--at", at)
        assert code == 0, err
        assert out.startswith("valid: bundle v3")
    code, _, err = run(capsys, "bundle", "verify", "--root", operator.root, d / "bundle.cose",
                       "--at", str(int(EPOCH) + 400 * 86_400))
    assert code == 1 and "expired" in one_line(err)


@pytest.mark.parametrize("bad", ["soon", "-5", "1796515999.5", "17965159990000000000000"])
def test_a_bad_time_gets_one_line(operator, tmp_path, capsys, bad):
    d = operator.dir
    code, _, err = run(capsys, "bundle", "verify", "--root", operator.root, d / "bundle.cose", f"--at={bad}")
    assert code == 2
    assert one_line(err).startswith("trustfleet: error: --at: ")
    out = tmp_path / "ts.cose"
    code, _, err = run(capsys, "timestamp", "create", "--bundle", d / "bundle.cose", "--key", d / "t1.pem",
                       f"--time={bad}", "-o", out)
    assert code == 2
    assert one_line(err).startswith("trustfleet: error: --time: ")
    assert not out.exists()


def test_timestamp_create_time_takes_epoch_seconds(operator, tmp_path, capsys):
    d = operator.dir
    out = tmp_path / "ts.cose"
    code, stdout, err = run(capsys, "timestamp", "create", "--bundle", d / "bundle.cose", "--key", d / "t1.pem",
                            "--time", EPOCH, "-o", out)
    assert code == 0, err
    assert "2026-12-06T00:13:19Z" in stdout
    ts = device_docs.parse_timestamp(fk.payload_of(out.read_bytes()))
    assert ts.time == int(EPOCH)
