"""The operator config (issue 13): trustfleet.toml in the working folder or --config, TRUSTFLEET_*
variables over it, and options on the command line over both; and the JSON error convention.

Every case runs the real CLI in-process on real keys, roots and bundles made by the CLI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import fleetkit as fk
from support.clirun import one_line, run_main
from trustfleet_server import cli, config
from trustfleet_server.errors import UsageError

ENV = [var for var, _, _ in config.SETTINGS.values()] + [config.CONFIG_ENV, "TRUSTFLEET_PASSPHRASE"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)


def run(capsys, *args: object) -> tuple[int, str, str]:
    return run_main(cli.main, capsys, *args)




@pytest.fixture(scope="module")
def ops(tmp_path_factory) -> SimpleNamespace:
    """An operator folder: keys/, root.cose (one key per role), an unsigned and a signed bundle."""
    d = tmp_path_factory.mktemp("ops")
    for name in ("root", "bundle", "timestamp"):
        assert cli.main(["key", "generate", "--out", str(d / "keys" / f"{name}.pem")]) == 0
    k = d / "keys"
    assert cli.main(["root", "create", "--fleet", "acme", "--key", f"root={k / 'root.pub.pem'}",
                     "--key", f"bundle={k / 'bundle.pub.pem'}", "--key", f"timestamp={k / 'timestamp.pub.pem'}",
                     "-o", str(d / "root.cose")]) == 0
    assert cli.main(["root", "sign", "--key", str(k / "root.pem"), str(d / "root.cose")]) == 0
    acme = fk.chain("acme")
    fk.write_pem(d / "acme.pem", acme.ca, acme.intermediate)
    (d / "b.toml").write_text(f'fleet = "acme"\nversion = 3\nexpires = "90d"\n'
                              f'[[anchors]]\nfiles = ["{d / "acme.pem"}"]\n')
    assert cli.main(["bundle", "build", str(d / "b.toml"), "-o", str(d / "unsigned.cbor")]) == 0
    assert cli.main(["bundle", "sign", "--key", str(k / "bundle.pem"), str(d / "unsigned.cbor"),
                     "-o", str(d / "bundle.cose")]) == 0
    return SimpleNamespace(dir=d)


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / config.FILE_NAME
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- where settings come from

def test_trustfleet_toml_in_the_working_folder_gives_root_and_keys(ops, tmp_path, monkeypatch, capsys):
    d = ops.dir
    write_config(tmp_path, f'fleet = "acme"\nroot = "{d / "root.cose"}"\n[keys]\nbundle = "{d / "keys/bundle.pem"}"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "bundle", "sign", d / "unsigned.cbor", "-o", tmp_path / "signed.cose")
    assert code == 0, err
    code, out, err = run(capsys, "bundle", "verify", tmp_path / "signed.cose")
    assert code == 0, err
    assert "valid" in out


def test_relative_paths_in_the_file_are_read_from_its_folder(ops, tmp_path, monkeypatch, capsys):
    d = ops.dir
    ops_dir = tmp_path / "ops"
    (ops_dir / "keys").mkdir(parents=True)
    (ops_dir / "root.cose").write_bytes((d / "root.cose").read_bytes())
    write_config(ops_dir, 'fleet = "acme"\nroot = "root.cose"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run(capsys, "--config", "../ops/trustfleet.toml", "bundle", "verify", d / "bundle.cose")
    assert code == 0, err


def test_the_environment_wins_over_the_file_and_the_command_line_over_both(ops, tmp_path, monkeypatch,
                                                                            capsys):
    d = ops.dir
    write_config(tmp_path, f'root = "{tmp_path / "no-such-root.cose"}"\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bundle", "verify", d / "bundle.cose")
    assert code == 2 and "no-such-root.cose" in one_line(err)

    monkeypatch.setenv("TRUSTFLEET_ROOT", str(d / "root.cose"))
    code, _, err = run(capsys, "bundle", "verify", d / "bundle.cose")
    assert code == 0, err

    code, _, err = run(capsys, "bundle", "verify", "--root", tmp_path / "typo.cose", d / "bundle.cose")
    assert code == 2 and "typo.cose" in one_line(err)


def test_trustfleet_root_lists_a_rotation_chain(ops, tmp_path, monkeypatch, capsys):
    d = ops.dir
    monkeypatch.setenv("TRUSTFLEET_ROOT", os.pathsep.join([str(d / "root.cose"), str(tmp_path / "v2.cose")]))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bundle", "verify", d / "bundle.cose")
    assert code == 2 and "v2.cose" in one_line(err)  # the second link of the chain is read


def test_a_required_option_given_nowhere_names_the_setting_and_the_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bundle", "verify", tmp_path / "b.cose")
    assert code == 2
    assert one_line(err) == ("trustfleet: error: --root is required: give it, or set root in "
                             "trustfleet.toml or TRUSTFLEET_ROOT")
    code, _, err = run(capsys, "timestamp", "create", "--bundle", tmp_path / "b.cose", "-o", tmp_path / "t")
    assert one_line(err) == ("trustfleet: error: --key is required: give it, or set [keys] timestamp in "
                             "trustfleet.toml or TRUSTFLEET_TIMESTAMP_KEY")


def test_help_shows_the_configured_default_and_where_it_comes_from(tmp_path, monkeypatch, capsys):
    write_config(tmp_path, 'fleet = "acme"\ndb = "fleet.db"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["fleet", "status", "--help"])
    out = "".join(capsys.readouterr().out.split())  # argparse wraps long paths at their hyphens
    assert f"(default:acme,from{tmp_path / 'trustfleet.toml'})" in out
    assert f"(default:{tmp_path / 'fleet.db'},from" in out


def test_the_configured_key_is_checked_against_the_configured_root(ops, tmp_path, monkeypatch, capsys):
    """With a root in the config, `bundle sign` refuses a key of another role without --root."""
    d = ops.dir
    write_config(tmp_path, f'root = "{d / "root.cose"}"\n[keys]\nbundle = "{d / "keys/timestamp.pem"}"\n')
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "signed.cose"
    code, _, err = run(capsys, "bundle", "sign", d / "unsigned.cbor", "-o", out)
    assert code == 2
    assert "is not a bundle key of root v1 of fleet acme; nothing written" in one_line(err)
    assert not out.exists()


# --------------------------------------------------------------------------- bad configs

@pytest.mark.parametrize("text, message", [
    ('fleet = "acme"\nbrokr = "mqtt://x"\n', "unknown setting 'brokr'; known: fleet, root, db, broker, [keys]"),
    ('[keys]\nbundel = "k.pem"\n', "unknown role 'bundel' in [keys]; roles: root, bundle, timestamp"),
    ('fleet = 3\n', "fleet must be a non-empty string, got 3"),
    ('root = []\n', "root must be a non-empty string or a list of them, got []"),
    ('fleet = "acme\n', "not valid TOML"),
    ('keys = "k.pem"\n', "[keys] must be a table"),
])
def test_a_bad_config_is_one_line_and_nothing_runs(tmp_path, monkeypatch, capsys, text, message):
    path = write_config(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "key", "generate", "--out", tmp_path / "k.pem")
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"trustfleet: error: {path}: ") and message in line, line
    assert not (tmp_path / "k.pem").exists()


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_named_config_that_does_not_exist_is_an_error(tmp_path, monkeypatch, capsys, how):
    monkeypatch.chdir(tmp_path)
    if how == "env":
        monkeypatch.setenv(config.CONFIG_ENV, "ops.toml")
        args = ["bundle", "inspect", "x"]
    else:
        args = ["--config", "ops.toml", "bundle", "inspect", "x"]
    code, _, err = run(capsys, *args)
    assert code == 2
    assert one_line(err) == f"trustfleet: error: {tmp_path / 'ops.toml'}: no such config file"


def test_a_config_folder_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "trustfleet.toml").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bundle", "inspect", "x")
    assert code == 2 and one_line(err).endswith("is a folder; the config is a file (trustfleet.toml)")


def test_config_after_the_command_belongs_to_the_command():
    """`board run --config` is the board's config.json: only --config before the command is ours."""
    assert config.split_config_option(["--config", "a.toml", "board", "run", "--config", "b.json"]) == \
        ("a.toml", ["board", "run", "--config", "b.json"])
    assert config.split_config_option(["--config=a.toml", "fleet", "status"]) == ("a.toml", ["fleet", "status"])
    assert config.split_config_option(["fleet", "status"]) == (None, ["fleet", "status"])
    with pytest.raises(UsageError):
        config.split_config_option(["--config"])


def test_the_config_holds_no_secrets_and_says_so_for_a_passphrase(tmp_path, monkeypatch, capsys):
    write_config(tmp_path, 'passphrase = "hunter2"\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bundle", "inspect", "x")
    assert code == 2 and "unknown setting 'passphrase'" in one_line(err)


# --------------------------------------------------------------------------- JSON errors

def test_with_json_a_missing_file_is_a_json_error_on_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "bundle", "inspect", "--json", tmp_path / "missing.cose")
    assert code == 2
    assert json.loads(out) == {"error": {"exit": 2, "kind": "usage",
                                         "message": one_line(err).removeprefix("trustfleet: error: ")}}
    assert "missing.cose" in out


def test_with_json_a_refused_document_is_a_json_error(ops, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "garbage.cose"
    bad.write_bytes(b"\x00not cbor at all")
    code, out, err = run(capsys, "bundle", "inspect", "--json", bad)
    assert code == 1
    error = json.loads(out)["error"]
    assert error["kind"] == "refused" and error["exit"] == 1 and error["message"] in err


def test_with_json_a_usage_error_from_the_parser_is_a_json_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["bundle", "inspect", "--json", "--no-such-option", "x"])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    error = json.loads(out)["error"]
    assert error["exit"] == 2 and error["kind"] == "usage"
    assert "unrecognized arguments: --no-such-option" in error["message"]


def test_without_json_stdout_stays_empty_on_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "bundle", "inspect", tmp_path / "missing.cose")
    assert code == 2 and out == "" and "missing.cose" in one_line(err)


# --------------------------------------------------------------------------- fleet store and broker

def test_fleet_status_reads_the_configured_store_and_fleet(tmp_path, monkeypatch, capsys):
    from support.fleetkit import NOW
    from trustfleet_server.fleet import db as fleetdb

    status = {"device": "d1", "fleet": "acme", "group": None, "bucket": 9, "state": "ok", "version": 2,
              "floor": 2, "bad": [], "last_revert": None, "reasons": [], "root_version": 1,
              "trusted_time": NOW, "last_timestamp": None, "fail_open": [], "agent_version": "0.1.0",
              "time": NOW, "seq": 1}
    with fleetdb.open_db(tmp_path / "fleet.db") as db:
        db.ingest_statuses([("acme", "d1", status, NOW)])
    write_config(tmp_path, 'fleet = "acme"\ndb = "fleet.db"\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    code, out, err = run(capsys, "--config", "../trustfleet.toml", "fleet", "status", "--json")
    assert code == 0, err
    assert json.loads(out)["fleet"] == "acme" and json.loads(out)["devices"] == 1
    # a configured store is not created by a read command either
    monkeypatch.setenv("TRUSTFLEET_DB", str(tmp_path / "typo.db"))
    code, out, err = run(capsys, "--config", "../trustfleet.toml", "fleet", "status")
    assert code == 2 and "typo.db" in one_line(err)
    assert not (tmp_path / "typo.db").exists()


def test_publish_takes_the_configured_broker(ops, tmp_path, monkeypatch, capsys):
    """The broker URL comes from TRUSTFLEET_BROKER; a closed port is one line naming it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TRUSTFLEET_BROKER", f"mqtt://127.0.0.1:{port}")
    monkeypatch.setenv("TRUSTFLEET_ROOT", str(ops.dir / "root.cose"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "publish", ops.dir / "bundle.cose")
    assert code == 2
    assert f"127.0.0.1:{port}" in one_line(err)


def test_signing_without_a_root_says_the_role_was_not_checked(ops, tmp_path, monkeypatch, capsys):
    d = ops.dir
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "bundle", "sign", "--key", d / "keys/bundle.pem", d / "unsigned.cbor",
                       "-o", tmp_path / "a.cose")
    assert code == 0
    assert one_line(err) == ("note: the key's role was not checked; give --root (or set root in "
                             "trustfleet.toml) to refuse a key that is not a bundle key of the fleet's root")
    write_config(tmp_path, f'root = "{d / "root.cose"}"\n')
    code, _, err = run(capsys, "bundle", "sign", "--key", d / "keys/bundle.pem", d / "unsigned.cbor",
                       "-o", tmp_path / "b.cose")
    assert code == 0 and err == ""


def test_help_and_version_still_answer_with_a_bad_config(tmp_path, monkeypatch, capsys):
    write_config(tmp_path, 'fleet = "acme\n')
    monkeypatch.chdir(tmp_path)
    for args in (["--version"], ["bundle", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 0
    out, err = capsys.readouterr()
    assert "trustfleet" in out and err == ""


def test_simulate_takes_fleet_and_root_from_the_config_but_never_the_broker(ops, tmp_path, monkeypatch,
                                                                            capsys):
    write_config(tmp_path, f'fleet = "acme"\nroot = "{ops.dir / "root.cose"}"\nbroker = "mqtt://127.0.0.1:1"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulate", "--devices", "2"])
    assert exc.value.code == 2
    assert "the following arguments are required: --broker" in capsys.readouterr().err
    # The simulated devices' health check judges the sample chain (valid today): anchor its root.
    samples = Path(cli.__file__).resolve().parents[1] / "samples"
    (tmp_path / "sim.toml").write_text(f'fleet = "acme"\nversion = 4\nexpires = "90d"\n[[anchors]]\n'
                                       f'files = ["{samples / "demo-fleet-root-ca.pem"}"]\n')
    assert run(capsys, "bundle", "build", tmp_path / "sim.toml", "-o", tmp_path / "sim.cose")[0] == 0
    assert run(capsys, "bundle", "sign", "--key", ops.dir / "keys/bundle.pem", tmp_path / "sim.cose")[0] == 0
    code, out, err = run(capsys, "simulate", "--devices", "2", "--broker", "embedded", "--timeout", "30",
                         "--publish", tmp_path / "sim.cose", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["devices"] == 2 and report["converged"] and report["versions"] == {"v4": 2}
