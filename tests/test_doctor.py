"""`trustfleet doctor` (issue 13): one line per check, ok/warn/fail with a fix; exit 1 when one fails.

Everything is real: keys, roots, bundle and timestamp made by the CLI, a Mosquitto (the session's, and
a closed port), a SQLite store opened by the fleet code, and trustfleet.toml read by main().
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import brokers
from support.clirun import make_operator, run_main
from trustfleet_server import cli, keys
from trustfleet_server.broker.mosquitto import config_text
from trustfleet_server.cli import doctor
from trustfleet_server.fleet import db as fleetdb


def run(capsys, *args: object) -> tuple[int, str, str]:
    return run_main(cli.main, capsys, *args)


def lines(out: str) -> dict[str, str]:
    """check name -> its line (the summary line left out)."""
    found = {}
    for line in out.strip().splitlines()[:-1]:
        status, rest = line.split(None, 1)
        name = rest[:13].strip()
        found[name] = line
    return found


def kid(path: Path) -> str:
    return keys.kid_hex(keys.load_private_key(path, None))


@pytest.fixture(scope="module")
def operator(tmp_path_factory) -> SimpleNamespace:
    """Keys made by the CLI, a signed root (one key per role), a signed bundle, its timestamp, a store."""
    d, _ = make_operator(tmp_path_factory.mktemp("doctor"), extra_keys=("stranger",))
    assert cli.main(["bundle", "sign", "--key", str(d / "b1.pem"), str(d / "unsigned.cbor"),
                     "-o", str(d / "bundle.cose")]) == 0
    assert cli.main(["timestamp", "create", "--bundle", str(d / "bundle.cose"), "--key", str(d / "t1.pem"),
                     "-o", str(d / "ts.cose")]) == 0
    with fleetdb.open_db(str(d / "fleet.db")):
        pass
    return SimpleNamespace(dir=d, root=d / "root.cose", db=d / "fleet.db")


def healthy(operator, broker_url: str) -> list[object]:
    d = operator.dir
    return ["doctor", "--broker", broker_url, "--root", operator.root, "--db", operator.db, "--fleet", "acme",
            "--key", f"root={d / 'r1.pem'}", "--key", f"bundle={d / 'b1.pem'}",
            "--key", f"timestamp={d / 't1.pem'}", "--bundle", d / "bundle.cose", "--timestamp", d / "ts.cose"]


def test_a_healthy_setup_is_all_ok_and_exits_0(operator, mosquitto, capsys):
    code, out, err = run(capsys, *healthy(operator, mosquitto.url))
    assert code == 0, out + err
    checks = lines(out)
    assert set(checks) == {"config", "broker", "root", "key root", "key bundle", "key timestamp", "store",
                           "bundle", "timestamp"}
    assert all(line.startswith("ok    ") for line in checks.values()), out
    assert f"{mosquitto.url} reachable" in checks["broker"]
    assert "root v1 of fleet acme" in checks["root"] and "verifies (root 1 of 1" in checks["root"]
    b1 = kid(operator.dir / "b1.pem")
    assert checks["key bundle"].endswith(f"kid {b1[:16]}, a bundle key of root v1, mode 0600")
    assert "opens and is writable" in checks["store"]
    assert "bundle v3 verifies" in checks["bundle"]
    assert out.strip().splitlines()[-1] == "9 ok, 0 warning(s), 0 failed"


def test_json_has_every_check_and_ok(operator, mosquitto, capsys):
    code, out, _ = run(capsys, *healthy(operator, mosquitto.url), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["ok"] is True
    assert doc["counts"] == {"ok": 9, "warn": 0, "fail": 0}
    assert {c["check"] for c in doc["checks"]} >= {"broker", "root", "store"}
    assert all(set(c) == {"check", "status", "message", "fix"} for c in doc["checks"])


def test_a_closed_broker_port_fails_with_a_fix(operator, capsys):
    port = brokers.free_port()
    started = time.monotonic()
    code, out, _ = run(capsys, "doctor", "--broker", f"mqtt://127.0.0.1:{port}", "--root", operator.root)
    assert time.monotonic() - started < 10
    assert code == 1
    line = lines(out)["broker"]
    assert line.startswith(f"fail  broker        mqtt://127.0.0.1:{port}: cannot connect: ")
    assert line.endswith(f"; fix: start the broker, or check the host and port of mqtt://127.0.0.1:{port}")
    assert out.strip().splitlines()[-1] == "2 ok, 1 warning(s), 1 failed"  # config, root; store not given


def test_nothing_given_is_warnings_only_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in ("TRUSTFLEET_CONFIG", "TRUSTFLEET_FLEET", "TRUSTFLEET_ROOT", "TRUSTFLEET_DB",
                "TRUSTFLEET_BROKER", "TRUSTFLEET_ROOT_KEY", "TRUSTFLEET_BUNDLE_KEY", "TRUSTFLEET_TIMESTAMP_KEY"):
        monkeypatch.delenv(var, raising=False)
    code, out, _ = run(capsys, "doctor")
    assert code == 0
    checks = lines(out)
    assert checks["broker"] == ("warn  broker        no broker given; fix: pass --broker mqtt://HOST[:PORT] "
                                "(or set it in trustfleet.toml)")
    assert checks["store"].startswith("warn  store         no fleet store given; fix: pass --db")
    assert checks["root"].startswith("warn  root          no root given")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_store_fails_and_is_not_created(operator, tmp_path, capsys):
    db = tmp_path / "typo.db"
    code, out, _ = run(capsys, "doctor", "--db", db)
    assert code == 1
    assert lines(out)["store"] == (f"fail  store         {db}: no such fleet database (serve, rollout start and "
                                   f"publish --db create one); fix: check --db; serve, rollout start or publish "
                                   f"--db {db} create the store")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_store_fails_and_is_left_alone(tmp_path, capsys):
    db = tmp_path / "notes.db"
    db.write_bytes(b"notes, not a database\n")
    code, out, _ = run(capsys, "doctor", "--db", db)
    assert code == 1
    assert lines(out)["store"].startswith(f"fail  store         {db}: ")
    assert db.read_bytes() == b"notes, not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_keys_of_the_wrong_role_missing_or_public_fail(operator, tmp_path, capsys):
    d = operator.dir
    code, out, _ = run(capsys, "doctor", "--root", operator.root, "--key", f"bundle={d / 't1.pem'}",
                       "--key", f"timestamp={tmp_path / 'nope.pem'}", "--key", f"root={d / 'r1.pub.pem'}")
    assert code == 1
    checks = lines(out)
    t1 = kid(d / "t1.pem")
    assert checks["key bundle"] == (f"fail  key bundle    {d / 't1.pem'}: kid {t1[:16]} is not a bundle key of "
                                    f"root v1 (it is a timestamp key); fix: give one of the root's bundle keys, "
                                    f"or add it: trustfleet root rotate --key bundle=PUB.pem")
    assert checks["key timestamp"].startswith(f"fail  key timestamp {tmp_path / 'nope.pem'}: no such file; fix: ")
    assert checks["key root"] == (f"fail  key root      {d / 'r1.pub.pem'}: holds a public key, not a private "
                                  f"key; fix: give the root private key (the .pem beside the .pub.pem)")


def test_a_key_others_can_read_is_a_warning_with_chmod(operator, tmp_path, capsys):
    loose = tmp_path / "b1.pem"
    loose.write_bytes((operator.dir / "b1.pem").read_bytes())
    loose.chmod(0o644)
    code, out, _ = run(capsys, "doctor", "--root", operator.root, "--key", f"bundle={loose}")
    assert code == 0
    assert lines(out)["key bundle"].endswith(f", a bundle key of root v1, mode 0644 (others can read it); "
                                             f"fix: chmod 600 {loose}")


def test_a_bad_key_option_is_a_failed_check(operator, capsys):
    code, out, _ = run(capsys, "doctor", "--key", "signing.pem")
    assert code == 1
    assert lines(out)["key"] == ("fail  key           --key 'signing.pem': expected ROLE=PATH with ROLE one of "
                                 "root, bundle, timestamp; fix: write e.g. --key bundle=keys/bundle-1.pem")


def test_an_encrypted_key_without_passphrase_is_a_warning(operator, tmp_path, monkeypatch, capsys):
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse\n")
    key = tmp_path / "enc.pem"
    assert cli.main(["key", "generate", "--out", str(key), "--passphrase-file", str(secret)]) == 0
    monkeypatch.delenv("TRUSTFLEET_PASSPHRASE", raising=False)
    code, out, _ = run(capsys, "doctor", "--key", f"bundle={key}")
    assert code == 0
    assert lines(out)["key bundle"].startswith(f"warn  key bundle    {key}: encrypted private key; kid not checked")
    code, out, _ = run(capsys, "doctor", "--key", f"bundle={key}", "--passphrase-file", secret)
    assert lines(out)["key bundle"].startswith(f"ok    key bundle    {key}: kid ")


def test_a_root_below_its_threshold_fails(tmp_path, capsys):
    for name in ("r1", "r2", "b1", "t1"):
        assert cli.main(["key", "generate", "--out", str(tmp_path / f"{name}.pem")]) == 0
    root = tmp_path / "root.cose"
    assert cli.main(["root", "create", "--fleet", "acme", "--key", f"root={tmp_path / 'r1.pub.pem'}",
                     "--key", f"root={tmp_path / 'r2.pub.pem'}", "--threshold", "root=2",
                     "--key", f"bundle={tmp_path / 'b1.pub.pem'}", "--key", f"timestamp={tmp_path / 't1.pub.pem'}",
                     "-o", str(root)]) == 0
    assert cli.main(["root", "sign", "--key", str(tmp_path / "r1.pem"), str(root)]) == 0
    code, out, _ = run(capsys, "doctor", "--root", root)
    assert code == 1
    line = lines(out)["root"]
    assert line.startswith(f"fail  root          {root}: ")
    assert "1 of 2" in line or "threshold" in line, line
    assert line.endswith("; fix: give the fleet's signed root (trustfleet root sign once per root key until "
                         "the threshold is met; trustfleet root verify shows why)")


def test_a_root_near_expiry_warns_and_an_expired_one_fails(tmp_path, monkeypatch, capsys):
    for name in ("r1", "b1", "t1"):
        assert cli.main(["key", "generate", "--out", str(tmp_path / f"{name}.pem")]) == 0
    root = tmp_path / "root.cose"
    assert cli.main(["root", "create", "--fleet", "acme", "--expires", "10d",
                     "--key", f"root={tmp_path / 'r1.pub.pem'}", "--key", f"bundle={tmp_path / 'b1.pub.pem'}",
                     "--key", f"timestamp={tmp_path / 't1.pub.pem'}", "-o", str(root)]) == 0
    assert cli.main(["root", "sign", "--key", str(tmp_path / "r1.pem"), str(root)]) == 0
    code, out, _ = run(capsys, "doctor", "--root", root)
    assert code == 0
    line = lines(out)["root"]
    assert line.startswith(f"warn  root          root v1 of fleet acme ({root}) expires ")
    assert ", in 10 day(s); fix: rotate soon: trustfleet root rotate --from ROOT" in line
    later = time.time() + 11 * 86_400
    monkeypatch.setattr(doctor.time, "time", lambda: later)
    code, out, _ = run(capsys, "doctor", "--root", root)
    assert code == 1
    assert lines(out)["root"].startswith(f"fail  root          root v1 of fleet acme ({root}) EXPIRED ")


def test_a_fleet_that_is_not_the_roots_fails(operator, capsys):
    code, out, _ = run(capsys, "doctor", "--root", operator.root, "--fleet", "other")
    assert code == 1
    assert lines(out)["root"] == (f"fail  root          root v1 of fleet acme ({operator.root}) is not for fleet "
                                  f"other; fix: pass the root of fleet other, or --fleet acme")


def test_a_bundle_not_signed_by_the_root_and_a_timestamp_for_another_bundle_fail(operator, tmp_path, capsys):
    d = operator.dir
    forged = tmp_path / "forged.cose"
    assert cli.main(["bundle", "build", str(d / "b.toml"), "--version", "4", "-o", str(forged)]) == 0
    assert cli.main(["bundle", "sign", "--key", str(d / "stranger.pem"), str(forged)]) == 0
    code, out, _ = run(capsys, "doctor", "--root", operator.root, "--bundle", forged, "--timestamp", d / "ts.cose")
    assert code == 1
    checks = lines(out)
    assert checks["bundle"].startswith(f"fail  bundle        {forged}: ")
    assert checks["timestamp"].startswith(f"ok    timestamp     {d / 'ts.cose'}: time ")  # no verified bundle
    other = tmp_path / "v4.cose"
    assert cli.main(["bundle", "build", str(d / "b.toml"), "--version", "4", "-o", str(other)]) == 0
    assert cli.main(["bundle", "sign", "--key", str(d / "b1.pem"), str(other)]) == 0
    code, out, _ = run(capsys, "doctor", "--root", operator.root, "--bundle", other, "--timestamp", d / "ts.cose")
    assert code == 1
    assert lines(out)["timestamp"].endswith("for bundle v3 names another bundle than --bundle; fix: create a "
                                            "timestamp for the latest bundle: trustfleet timestamp create "
                                            "--bundle ...")


def test_the_config_in_use_supplies_what_doctor_checks(operator, mosquitto, tmp_path, monkeypatch, capsys):
    d = operator.dir
    for var in ("TRUSTFLEET_CONFIG", "TRUSTFLEET_FLEET", "TRUSTFLEET_ROOT", "TRUSTFLEET_DB",
                "TRUSTFLEET_ROOT_KEY", "TRUSTFLEET_BUNDLE_KEY", "TRUSTFLEET_TIMESTAMP_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRUSTFLEET_BROKER", mosquitto.url)
    (tmp_path / "trustfleet.toml").write_text(f'fleet = "acme"\nroot = "{operator.root}"\ndb = "{operator.db}"\n'
                                              f'[keys]\nbundle = "{d / "b1.pem"}"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "doctor")
    assert code == 0, out + err
    checks = lines(out)
    assert checks["config"] == (f"ok    config        broker from TRUSTFLEET_BROKER; db, fleet, keys.bundle, root "
                                f"from {tmp_path / 'trustfleet.toml'}")
    assert checks["broker"].startswith("ok    broker")
    assert checks["key bundle"].startswith(f"ok    key bundle    {d / 'b1.pem'}: kid ")
    assert checks["store"].startswith(f"ok    store         {operator.db} opens")
    # an option still wins over the config
    code, out, _ = run(capsys, "doctor", "--key", f"bundle={d / 't1.pem'}")
    assert code == 1
    assert "is not a bundle key of root v1" in lines(out)["key bundle"]


def test_broker_credentials_are_used_and_a_wrong_password_fails(operator, private_mosquitto, tmp_path, capsys):
    """A Mosquitto that refuses anonymous clients: the URL's user and password get in, a wrong one is
    refused with a fix that names the password variable."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    pwfile = tmp_path / "passwords"
    subprocess.run([passwd, "-b", "-c", str(pwfile), "ops", "s3cret"], check=True, capture_output=True)
    pwfile.chmod(0o644)  # Mosquitto, started as root, reads it as the user it switches to
    tmp_path.chmod(0o755)
    port = brokers.free_port()
    broker = private_mosquitto(config_text(port, extra=["allow_anonymous false", f"password_file {pwfile}"]))
    code, out, _ = run(capsys, "doctor", "--broker", f"mqtt://ops:s3cret@127.0.0.1:{broker.port}")
    assert code == 0, out
    assert lines(out)["broker"] == f"ok    broker        mqtt://ops@127.0.0.1:{broker.port} reachable (MQTT 5)"
    code, out, _ = run(capsys, "doctor", "--broker", f"mqtt://ops:wrong@127.0.0.1:{broker.port}")
    assert code == 1
    line = lines(out)["broker"]
    assert line.startswith(f"fail  broker        mqtt://ops@127.0.0.1:{broker.port} refused the connection: ")
    assert "wrong" not in line and "s3cret" not in line
    assert line.endswith("; fix: check the user name and password (TRUSTFLEET_MQTT_PASSWORD holds the password) "
                         "and the broker's ACL")


@pytest.mark.parametrize("option", ["--root", "--bundle", "--timestamp"])
def test_a_folder_or_a_missing_file_is_a_failed_check_not_a_crash(operator, tmp_path, capsys, option):
    name = option.lstrip("-")
    extra = [] if option == "--root" else ["--root", operator.root]
    code, out, _ = run(capsys, "doctor", *extra, option, tmp_path)
    assert code == 1
    assert lines(out)[name].startswith(f"fail  {name:<13} {tmp_path}: Is a directory; fix: ")
    code, out, _ = run(capsys, "doctor", *extra, option, tmp_path / "nope.cose")
    assert code == 1
    assert lines(out)[name].startswith(f"fail  {name:<13} {tmp_path / 'nope.cose'}: No such file or directory; ")


def test_a_file_that_is_not_a_document_is_named_once(operator, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a root\n")
    code, out, _ = run(capsys, "doctor", "--root", notes)
    assert code == 1
    line = lines(out)["root"]
    assert line.startswith(f"fail  root          {notes}: ") and line.count(str(notes)) == 1, line


def test_a_timeout_that_is_not_positive_is_a_usage_error(capsys):
    code, out, err = run(capsys, "doctor", "--broker", "mqtt://127.0.0.1:1883", "--timeout", "0")
    assert code == 2
    assert err.strip() == "trustfleet: error: --timeout: must be more than 0 seconds, got 0"


def test_a_timestamp_older_than_the_bundles_max_timestamp_age_warns(operator, tmp_path, capsys):
    """The bundle's policy says how old a timestamp may be before devices call their store stale
    (the spec's default, 48 h here): one signed 3 days ago is a warning with the fix."""
    d = operator.dir
    old = tmp_path / "old-ts.cose"
    three_days_ago = int(time.time()) - 3 * 86_400
    assert cli.main(["timestamp", "create", "--bundle", str(d / "bundle.cose"), "--key", str(d / "t1.pem"),
                     "--time", str(three_days_ago), "-o", str(old)]) == 0
    code, out, _ = run(capsys, "doctor", "--root", operator.root, "--bundle", d / "bundle.cose", "--timestamp", old)
    assert code == 0
    line = lines(out)["timestamp"]
    assert line.startswith(f"warn  timestamp     {old}: time ")
    assert " is 72 h old, more than the bundle's max_timestamp_age (" in line, line
    assert line.endswith("; fix: keep trustfleet serve --timestamp-key running, or trustfleet timestamp create "
                         "and publish")
