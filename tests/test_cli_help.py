"""The `trustfleet` surface (issue 13): help text on every option and positional of every command, --json
on every command that reports something, and that JSON for the commands that lacked it (timestamp create,
export nsc|trustkit, device add) and for root verify's errors.

The walk runs over the real build_parser(), so a command added without help or --json fails here.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from support import fleetkit as fk
from support.clirun import run_main
from trustfleet_server import cli

# Commands that report nothing a script would parse, with the reason.
NO_JSON = {
    "broker run": "runs the embedded broker until stopped; it logs, it does not report",
    "demo": "a walkthrough for people: its steps print the commands' own output",
    "completion": "prints a shell script, not a report",
}


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser, whether it is a leaf) for every parser under `parser`."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield path, parser, not subs
    for action in subs:
        for name, child in action.choices.items():
            yield from commands(child, path + (name,))


ALL = list(commands(cli.build_parser()))
LEAVES = [(" ".join(path), p) for path, p, leaf in ALL if leaf]


def test_the_walk_sees_the_commands():
    names = {name for name, _ in LEAVES}
    assert {"key generate", "root verify", "bundle build", "timestamp create", "export nsc", "device add",
            "fleet status", "rollout start", "doctor", "completion"} <= names


@pytest.mark.parametrize("path, parser", [(" ".join(p) or "trustfleet", parser) for p, parser, _ in ALL],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_and_positional_has_help(path, parser):
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append("/".join(action.option_strings) or action.dest)
    assert not missing, f"`trustfleet {path}`: no help text for {', '.join(missing)}"


@pytest.mark.parametrize("path, parser", [(" ".join(p) or "trustfleet", parser) for p, parser, leaf in ALL
                                          if not leaf], ids=lambda v: v if isinstance(v, str) else "")
def test_every_subcommand_has_help(path, parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            missing = sorted(n for n in action.choices if not (listed.get(n) or "").strip())
            assert not missing, f"`trustfleet {path}`: subcommands without help: {', '.join(missing)}"


@pytest.mark.parametrize("name, parser", LEAVES, ids=[n for n, _ in LEAVES])
def test_every_command_that_reports_has_json(name, parser):
    options = {o for a in parser._actions for o in a.option_strings}
    if name in NO_JSON:
        assert "--json" not in options, f"{name} has --json now: take it off NO_JSON"
        return
    assert "--json" in options, f"`trustfleet {name}` reports something but has no --json"


def test_help_renders_for_every_command():
    for name, parser in LEAVES:
        text = parser.format_help()
        assert text.startswith("usage: "), name


# --------------------------------------------------------------------------- the JSON that was missing


def run(capsys, *args: object) -> tuple[int, str, str]:
    return run_main(cli.main, capsys, *args)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Keys, a signed root and bundle (with two pin-sets) made by the CLI and fleetkit."""
    d = tmp_path_factory.mktemp("surface")
    os.environ.pop("TRUSTFLEET_PASSPHRASE", None)
    for name in ("r1", "b1", "t1"):
        assert cli.main(["key", "generate", "--out", str(d / f"{name}.pem")]) == 0
    assert cli.main(["root", "create", "--fleet", "acme", "--key", f"root={d / 'r1.pub.pem'}",
                     "--key", f"bundle={d / 'b1.pub.pem'}", "--key", f"timestamp={d / 't1.pub.pem'}",
                     "-o", str(d / "root.cose")]) == 0
    assert cli.main(["root", "sign", "--key", str(d / "r1.pem"), str(d / "root.cose")]) == 0
    acme, beta = fk.chain("acme"), fk.chain("beta")
    fk.write_pem(d / "acme.pem", acme.ca, acme.intermediate)
    pins = "\n".join(f'[[pinsets]]\ndomain = "{c.domain}"\npins = {json.dumps([fk.b64(p) for p in c.pins])}\n'
                     f'expires = "120d"\n' for c in (acme, beta))
    (d / "b.toml").write_text(f'fleet = "acme"\nversion = 3\nexpires = "90d"\n'
                              f'[[anchors]]\nfiles = ["{d / "acme.pem"}"]\nform = "full"\n{pins}')
    assert cli.main(["bundle", "build", str(d / "b.toml"), "-o", str(d / "bundle.cose")]) == 0
    assert cli.main(["bundle", "sign", "--key", str(d / "b1.pem"), str(d / "bundle.cose")]) == 0
    return d


def test_timestamp_create_json(fleet, tmp_path, capsys):
    out = tmp_path / "ts.cose"
    code, stdout, err = run(capsys, "timestamp", "create", "--bundle", fleet / "bundle.cose",
                            "--key", fleet / "t1.pem", "--time", "1796515999", "-o", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["out"] == str(out) and doc["bytes"] == out.stat().st_size
    assert doc["time"] == "2026-12-06T00:13:19Z" and doc["time_epoch"] == 1796515999
    assert doc["bundle"] == str(fleet / "bundle.cose") and doc["bundle_version"] == 3
    assert len(doc["kid"]) == 64


def test_export_nsc_json_names_what_was_written(fleet, tmp_path, capsys):
    out, raw = tmp_path / "xml" / "nsc.xml", tmp_path / "res" / "raw"
    code, stdout, err = run(capsys, "export", "nsc", fleet / "bundle.cose", "--anchors", "both",
                            "--raw-dir", raw, "-o", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["format"] == "nsc" and doc["out"] == str(out) and out.exists()
    assert doc["domain_configs"] == 2
    assert doc["raw_dir"] == str(raw) and doc["certificates"] and "text" not in doc
    assert sorted(doc["certificates"]) == sorted(str(p) for p in raw.iterdir())
    assert isinstance(doc["warnings"], list)


def test_export_nsc_json_without_out_carries_the_document(fleet, capsys):
    code, stdout, _ = run(capsys, "export", "nsc", fleet / "bundle.cose", "--json")
    assert code == 0
    doc = json.loads(stdout)  # stdout is the JSON object alone
    assert doc["out"] is None and doc["text"].startswith("<?xml")


@pytest.mark.parametrize("fmt", ["plist", "json", "android"])
def test_export_trustkit_json(fleet, tmp_path, capsys, fmt):
    out = tmp_path / f"tk.{fmt}"
    code, stdout, err = run(capsys, "export", "trustkit", fleet / "bundle.cose", "--format", fmt, "-o", out,
                            "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc == {"format": f"trustkit-{fmt}", "out": str(out), "pinned_domains": 2, "warnings": doc["warnings"]}
    assert out.stat().st_size > 0


def test_device_add_json(tmp_path, capsys):
    broker = tmp_path / "broker"
    code, _, err = run(capsys, "broker-config", "--fleet", "acme", "--out", broker, "--device", "pi-01",
                       "--listener", "0.0.0.0:8883")
    assert code == 0, err
    ids = tmp_path / "ids.txt"
    ids.write_text("pi-01\npi-02 canary\npi-03\n")
    creds = tmp_path / "creds"
    code, stdout, err = run(capsys, "device", "add", "--fleet", "acme", "--broker-dir", broker,
                            "--ids-file", ids, "--out", creds, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["added"] == ["pi-02", "pi-03"] and doc["kept"] == ["pi-01"]
    assert doc["counts"] == {"added": 2, "kept": 1, "written": 3}
    assert sorted(doc["written"]) == sorted(str(creds / f"{i}.json") for i in ("pi-01", "pi-02", "pi-03"))
    assert "credentials" not in doc  # the passwords went to the files only
    assert all(Path(p).exists() for p in doc["updated"].values())
    code, stdout, _ = run(capsys, "device", "add", "--fleet", "acme", "--broker-dir", broker, "--id", "pi-04",
                          "--json")
    doc = json.loads(stdout)
    assert doc["written"] == [] and [c["device_id"] for c in doc["credentials"]] == ["pi-04"]


def test_root_verify_json_answers_errors_in_json(tmp_path, capsys):
    bad = tmp_path / "root.cose"
    bad.write_bytes(b"not a root")
    code, stdout, err = run(capsys, "root", "verify", bad, "--json")
    assert code in (1, 2)
    doc = json.loads(stdout)
    assert set(doc) == {"error"}
    assert doc["error"]["exit"] == code
    assert doc["error"]["kind"] == ("refused" if code == 1 else "usage")
    assert str(bad) in doc["error"]["message"] or doc["error"]["message"] in err
    code, stdout, _ = run(capsys, "root", "verify", tmp_path / "missing.cose", "--json")
    assert code == 2 and json.loads(stdout)["error"]["kind"] == "usage"


def test_root_verify_json_when_valid(fleet, capsys):
    code, stdout, _ = run(capsys, "root", "verify", fleet / "root.cose", "--json")
    assert code == 0
    assert json.loads(stdout)["valid"] is True
