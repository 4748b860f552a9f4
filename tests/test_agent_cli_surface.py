"""`trustfleet-agent`'s surface (issue 13): exports that never write an empty CA file, folders
as output targets, OSErrors and config mistakes in plain words, `--json` on init and export,
help on every option, the start line of `run`, and a bad-input table for every command.

Commands run in-process through the real `main([...])` (stderr captured; exactly one line per
error); Ctrl-C and `run` run as subprocesses, sent SIGINT while they wait. Exit codes are the
module docstring's: 0 done, 1 refused, 2 usage or missing file, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support import fleetkit as fk
from support.agentproc import AgentProcess
from support.clirun import one_line, run_main
from support.tlsagent import PKI, T0, make_bundle
from trustfleet_pi import cli
from trustfleet_pi.config import ConfigError, load_config

WAIT = 20.0
PREFIX = "trustfleet-agent: "


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    return fk.Repo(now=T0)


def run(capsys, *args: object) -> tuple[int, str, str]:
    return run_main(cli.main, capsys, *args)




class World:
    """Files for one test: the fleet's root, a compact and a full bundle, a key, an empty
    file, a folder, and `state`, initialised with the compact bundle v1."""

    def __init__(self, repo: fk.Repo, tmp: Path, capsys):
        self.tmp = tmp
        self.root = tmp / "root.cose"
        self.root.write_bytes(repo.root_raw)
        self.compact = tmp / "compact.cose"
        self.compact.write_bytes(make_bundle(repo, 1))
        self.full = tmp / "full.cose"
        self.full.write_bytes(make_bundle(repo, 2, form="full"))
        self.key = tmp / "bundle-key.pem"
        self.key.write_bytes(PKI.leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        self.empty = tmp / "empty.cose"
        self.empty.write_bytes(b"")
        self.folder = tmp / "a-folder"
        self.folder.mkdir()
        self.missing = tmp / "no-such-file.cose"
        self.state = tmp / "state"
        assert run(capsys, "init", "--state", self.state, "--root", self.root,
                   "--bundle", self.compact)[0] == 0


@pytest.fixture
def world(repo, tmp_path, capsys) -> World:
    return World(repo, tmp_path, capsys)


# --------------------------------------------------------------------------- 1. no empty CA file


def test_export_of_compact_anchors_writes_no_pem_says_why_and_exits_1(world, capsys):
    pem, pins = world.tmp / "out" / "ca.pem", world.tmp / "out" / "pins.json"
    code, out, err = run(capsys, "export", "--state", world.state, "--pem", pem, "--pins", pins)
    assert code == 1
    assert one_line(err) == (
        f"{PREFIX}refused: {pem} not written: 1 compact anchor(s) cannot be written as PEM: a "
        "compact anchor is a subject and a key, not a certificate; for whole certificates build "
        "the bundle with form = \"full\" in its spec's [[anchors]]")
    assert not pem.exists(), "an empty CA file breaks every TLS client that reads it"
    assert "certificate(s)" not in out
    assert out == f"wrote {pins}: 2 pin-set(s) from bundle v1\n"
    assert json.loads(pins.read_text())["version"] == 1
    # A CA file written earlier stays as it was.
    pem.write_text("# an earlier export\n")
    assert run(capsys, "export", "--state", world.state, "--pem", pem)[0] == 1
    assert pem.read_text() == "# an earlier export\n"


def test_the_post_commit_export_of_compact_anchors_is_reported_and_the_install_stays(
        repo, world, capsys):
    config = world.tmp / "agent.toml"
    config.write_text('[export]\npem = "ca.pem"\npins = "pins.json"\n')
    v2 = world.tmp / "v2.cose"
    v2.write_bytes(make_bundle(repo, 2))
    code, out, err = run(capsys, "install", "--state", world.state, "--config", config, v2)
    assert code == 0 and out == "installed bundle v2\n"
    assert one_line(err) == (
        f"{PREFIX}export: {world.tmp / 'ca.pem'} not written: 1 compact anchor(s) cannot be "
        "written as PEM: a compact anchor is a subject and a key, not a certificate; for whole "
        "certificates build the bundle with form = \"full\" in its spec's [[anchors]] (the "
        "install stays committed)")
    assert not (world.tmp / "ca.pem").exists()
    assert json.loads((world.tmp / "pins.json").read_text())["version"] == 2


def test_export_of_full_anchors_writes_them(world, capsys):
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    pem = world.tmp / "ca.pem"
    code, out, err = run(capsys, "export", "--state", world.state, "--pem", pem)
    assert (code, err) == (0, "")
    assert out == f"wrote {pem}: 1 certificate(s) from bundle v2\n"
    assert len(x509.load_pem_x509_certificates(pem.read_bytes())) == 1


# --------------------------------------------------------------------------- 2. a folder as target


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder/", "existing-folder"])
def test_a_folder_as_export_target_gets_the_default_file_names(world, capsys, existing):
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    folder = world.tmp / "out"
    if existing:
        folder.mkdir()
    given = str(folder) if existing else f"{folder}/"
    code, out, err = run(capsys, "export", "--state", world.state, "--pem", given, "--pins", given)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in folder.iterdir()) == ["ca-bundle.pem", "pins.json"]
    assert f"wrote {folder / 'ca-bundle.pem'}: 1 certificate(s)" in out


# --------------------------------------------------------------------------- 3. OSErrors in words


@pytest.mark.parametrize(("args", "line"), [
    (lambda w: ["install", "--state", w.state, w.folder],
     lambda w: f"{w.folder}: is a folder, not a file"),
    (lambda w: ["install", "--state", w.state, w.missing],
     lambda w: f"{w.missing}: no such file or folder"),
    (lambda w: ["status", "--state", w.root],
     lambda w: f"{w.root}: is a file, not a state directory"),
    (lambda w: ["init", "--state", w.root / "sub", "--root", w.root],
     lambda w: f"cannot set up the state directory: {w.root / 'sub'}: is not a folder (a part "
               "of the path is a file)"),
    (lambda w: ["check", "--state", w.state, "--config", w.folder, "localhost:1"],
     lambda w: f"{w.folder}: cannot read: is a folder, not a file"),
], ids=["folder-as-file", "missing-file", "file-as-state", "state-under-a-file", "config-folder"])
def test_os_errors_name_the_path_in_plain_words(world, capsys, args, line):
    code, _, err = run(capsys, *args(world))
    assert code == 2
    assert one_line(err) == f"{PREFIX}error: {line(world)}"
    assert "Errno" not in err


def test_no_tls_connection_is_said_in_plain_words(world, capsys):
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the check runs
    code, _, err = run(capsys, "check", "--state", world.state, f"localhost:{port}", "--timeout", "3")
    assert code == 2
    assert one_line(err) == f"{PREFIX}error: no TLS connection to localhost:{port}: connection refused"


# --------------------------------------------------------------------------- 4. config values


@pytest.mark.parametrize(("text", "message"), [
    ('[health]\ntimeout = "ten"\n',
     'health.timeout must be a number of seconds, more than 0 and at most 3600, not "ten"'),
    ("[health]\ntimeout = 0\n",
     "health.timeout must be a number of seconds, more than 0 and at most 3600, not 0"),
    ("[post_commit]\ncommand = [\"true\"]\ntimeout = true\n",
     "post_commit.timeout must be a number of seconds, more than 0 and at most 3600, not true"),
    ('managed = "yes"\n', 'managed must be true or false, not "yes"'),
    ("device_id = 42\n", "device_id must be a non-empty string, not 42"),
    ('state_dir = ""\n', 'state_dir must be a non-empty string, not ""'),
    ('user_anchors = "ent.pem"\n',
     'user_anchors must be a list of non-empty strings (e.g. ["a", "b"]), not "ent.pem"'),
    ('[health]\nendpoints = "a:443"\n',
     'health.endpoints must be a list of non-empty strings (e.g. ["a", "b"]), not "a:443"'),
    ('[health]\non_unreachable = "never"\n',
     'health.on_unreachable must be "revert" or "keep", not "never"'),
    ('[export]\npem = 1\n', "export.pem must be a non-empty string, not 1"),
    ('firmware_time = "soon"\n',
     'firmware_time must be a TOML date-time with an offset, a date, or epoch seconds, not "soon"'),
    ('health = 5\n', "health must be a table ([health]), not 5"),
    ('[mqtt]\nbroker = "mqtt://h"\nkeepalive = "60"\n',
     'mqtt.keepalive must be a whole number from 5 to 3600, not "60"'),
    ('[mqtt]\nbroker = "mqtt://h"\nprotocol = 4\n', 'mqtt.protocol must be "3.1.1" or "5", not 4'),
    ('device_id = "pi/1"\n', "device_id 'pi/1' may hold only letters, digits, '-', '_' and '.'"),
    ('fleet = "acme sensors"\n',
     "fleet 'acme sensors' may hold only letters, digits, '-', '_' and '.'"),
])
def test_a_config_value_of_the_wrong_type_says_what_is_expected_and_what_was_given(
        world, capsys, text, message):
    config = world.tmp / "agent.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value) == f"{config}: {message}"
    code, _, err = run(capsys, "clear-bad", "1", "--state", world.state, "--config", config)
    assert code == 2
    assert one_line(err) == f"{PREFIX}error: {config}: {message}"


def test_an_unreadable_enterprise_anchor_names_the_config_file(world, capsys):
    config = world.tmp / "agent.toml"
    config.write_text('managed = true\nuser_anchors = ["ent.pem"]\n')
    code, _, err = run(capsys, "export", "--state", world.state, "--config", config, "--pins",
                       world.tmp / "p.json")
    assert code == 2
    assert one_line(err) == (f"{PREFIX}error: {config}: user_anchors: cannot read "
                             f"{world.tmp / 'ent.pem'}: no such file or folder")


def test_a_binary_file_as_config_is_not_a_toml_file(world, capsys):
    code, _, err = run(capsys, "export", "--state", world.state, "--config", world.compact)
    assert code == 2
    assert one_line(err) == (f"{PREFIX}error: {world.compact}: not a TOML file (not UTF-8 text); "
                             "give the agent.toml")


# --------------------------------------------------------------------------- 7. --json and help


def test_init_json_is_one_object_with_what_was_set_up(repo, tmp_path, capsys):
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    (tmp_path / "b.cose").write_bytes(make_bundle(repo, 1))
    code, out, err = run(capsys, "init", "--state", tmp_path / "s", "--root", tmp_path / "root.cose",
                         "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"initialised": str(tmp_path / "s"), "root_version": 1,
                               "fleet": repo.fleet, "install": None}
    code, out, _ = run(capsys, "init", "--state", tmp_path / "t", "--root", tmp_path / "root.cose",
                       "--bundle", tmp_path / "b.cose", "--json")
    data = json.loads(out)  # one object: the install is inside it
    assert code == 0 and data["initialised"] == str(tmp_path / "t")
    assert (data["install"]["installed"], data["install"]["version"]) == (True, 1)


def test_export_json_is_one_object_with_paths_and_counts(world, capsys):
    pem, pins = world.tmp / "ca.pem", world.tmp / "pins.json"
    code, out, err = run(capsys, "export", "--state", world.state, "--pem", pem, "--pins", pins,
                         "--json")
    assert code == 1 and "compact anchor(s) cannot be written as PEM" in one_line(err)
    assert json.loads(out) == {
        "state": str(world.state), "bundle_version": 1, "pinsets": 2, "ok": False,
        "pem": str(pem), "pem_written": False, "certificates": 0, "compact_skipped": 1,
        "distrusted_skipped": 0, "pins": str(pins),
        "error": f"{pem} not written: 1 compact anchor(s) cannot be written as PEM: a compact "
                 "anchor is a subject and a key, not a certificate; for whole certificates build "
                 "the bundle with form = \"full\" in its spec's [[anchors]]"}
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    code, out, err = run(capsys, "export", "--state", world.state, "--pem", pem, "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["ok"], data["pem_written"], data["certificates"], data["bundle_version"]) == (
        True, True, 1, 2)


def _actions(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.Action]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_actions(sub, f"{prefix}{name} "))
        elif not isinstance(action, argparse._HelpAction):
            out.append((f"{prefix}{'/'.join(action.option_strings) or action.dest}", action))
    return out


def test_every_option_and_argument_of_every_command_has_help():
    actions = _actions(cli.build_parser())
    assert len(actions) > 30
    missing = [name for name, action in actions if not action.help]
    assert missing == []
    for command in ("init", "export"):
        assert any(name == f"{command} --json" for name, _ in actions), command


# --------------------------------------------------------------------------- 8. bad input


def _unwritable(tmp: Path) -> Path:
    """A state directory that cannot be created: under a read-only folder (as root, which
    ignores permission bits: under /sys, where nothing can be made)."""
    if os.geteuid() == 0:
        return Path("/sys/trustfleet-test-state")
    ro = tmp / "read-only"
    ro.mkdir(mode=0o500)
    return ro / "state"


def _not_initialised(w: World) -> Path:
    (w.tmp / "blank").mkdir()
    return w.tmp / "blank"


Row = tuple[Callable[[World], list], int, Callable[[World], str]]

def NO_STATE(w: World) -> str:
    return (f"error: {w.tmp / 'gone'}: no such state directory; set one up with "
            f"`trustfleet-agent init --state {w.tmp / 'gone'} --root root.cose`")


def BLANK(w: World) -> str:
    return (f"error: {w.tmp / 'blank'}: not initialised (no root.cose); run "
            f"`trustfleet-agent init --state {w.tmp / 'blank'} --root root.cose` first")

BAD_INPUT: dict[str, list[tuple[str, Row]]] = {
    "init": [
        ("missing", (lambda w: ["--state", w.tmp / "new", "--root", w.missing], 2,
                     lambda w: f"error: {w.missing}: no such file or folder")),
        ("folder", (lambda w: ["--state", w.tmp / "new", "--root", w.folder], 2,
                    lambda w: f"error: {w.folder}: is a folder, not a file")),
        ("empty", (lambda w: ["--state", w.tmp / "new", "--root", w.empty], 1,
                   lambda w: f"refused: {w.empty}: the file is empty; expected a signed root (.cose)")),
        ("wrong-kind", (lambda w: ["--state", w.tmp / "new", "--root", w.compact], 1,
                        lambda w: f"refused: {w.compact}: is a signed bundle, not a root")),
        ("key", (lambda w: ["--state", w.tmp / "new", "--root", w.key], 1,
                 lambda w: f"refused: {w.key}: is a PEM file (a key or certificate), not a signed "
                           "root (.cose)")),
        ("unwritable-state", (lambda w: ["--state", _unwritable(w.tmp), "--root", w.root], 2,
                              lambda w: f"error: cannot set up the state directory: "
                                        f"{_unwritable(w.tmp)}: permission denied")),
        ("initialised", (lambda w: ["--state", w.state, "--root", w.root], 2,
                         lambda w: f"error: {w.state} is already initialised (use --force)")),
    ],
    "install": [
        ("missing", (lambda w: ["--state", w.state, w.missing], 2,
                     lambda w: f"error: {w.missing}: no such file or folder")),
        ("folder", (lambda w: ["--state", w.state, w.folder], 2,
                    lambda w: f"error: {w.folder}: is a folder, not a file")),
        ("empty", (lambda w: ["--state", w.state, w.empty], 1,
                   lambda w: f"refused: {w.empty}: the file is empty; expected a signed bundle "
                             "(.cose)")),
        ("wrong-kind", (lambda w: ["--state", w.state, w.root], 1,
                        lambda w: f"refused: {w.root}: is a signed root, not a bundle")),
        ("key", (lambda w: ["--state", w.state, w.key], 1,
                 lambda w: f"refused: {w.key}: is a PEM file (a key or certificate), not a signed "
                           "bundle (.cose)")),
        ("missing-state", (lambda w: ["--state", w.tmp / "gone", w.full], 2, NO_STATE)),
        ("blank-state", (lambda w: ["--state", _not_initialised(w), w.full], 2, BLANK)),
    ],
    "status": [
        ("missing-state", (lambda w: ["--state", w.tmp / "gone"], 2, NO_STATE)),
        ("file-as-state", (lambda w: ["--state", w.root], 2,
                           lambda w: f"error: {w.root}: is a file, not a state directory")),
        ("blank-state", (lambda w: ["--state", _not_initialised(w)], 2, BLANK)),
    ],
    "check": [
        ("missing-config", (lambda w: ["--config", w.missing, "localhost"], 2,
                            lambda w: f"error: {w.missing}: cannot read: no such file or folder")),
        ("folder-config", (lambda w: ["--config", w.folder, "localhost"], 2,
                           lambda w: f"error: {w.folder}: cannot read: is a folder, not a file")),
        ("wrong-kind-config", (lambda w: ["--config", w.root, "localhost"], 2,
                               lambda w: f"error: {w.root}: not a TOML file (not UTF-8 text); "
                                         "give the agent.toml")),
        ("missing-state", (lambda w: ["--state", w.tmp / "gone", "localhost"], 2, NO_STATE)),
        ("no-bundle", (lambda w: ["--state", _bare_state(w), "localhost"], 2,
                       lambda w: f"error: {w.tmp / 'bare'} has no bundle installed: nothing to "
                                 "check TLS against")),
        ("bad-target", (lambda w: ["--state", w.state, "h:0"], 2,
                        lambda w: "error: endpoint 'h:0': expected host:port with a port from 1 to "
                                  "65535")),
    ],
    "export": [
        ("missing-config", (lambda w: ["--config", w.missing, "--pem", w.tmp / "a.pem"], 2,
                            lambda w: f"error: {w.missing}: cannot read: no such file or folder")),
        ("folder-config", (lambda w: ["--config", w.folder, "--pem", w.tmp / "a.pem"], 2,
                           lambda w: f"error: {w.folder}: cannot read: is a folder, not a file")),
        ("wrong-kind-config", (lambda w: ["--config", w.compact, "--pem", w.tmp / "a.pem"], 2,
                               lambda w: f"error: {w.compact}: not a TOML file (not UTF-8 text); "
                                         "give the agent.toml")),
        ("missing-state", (lambda w: ["--state", w.tmp / "gone", "--pem", w.tmp / "a.pem"], 2,
                           NO_STATE)),
        ("blank-state", (lambda w: ["--state", _not_initialised(w), "--pem", w.tmp / "a.pem"], 2,
                         BLANK)),
        ("no-bundle", (lambda w: ["--state", _bare_state(w), "--pem", w.tmp / "a.pem"], 2,
                       lambda w: f"error: {w.tmp / 'bare'} has no bundle installed: nothing to "
                                 "export (install one with `trustfleet-agent install`)")),
        ("pem-under-a-file", (lambda w: ["--state", w.state, "--pins", w.root / "pins.json"], 2,
                              lambda w: f"error: {w.root / 'pins.json'}: cannot create it: "
                                        f"{w.root} is a file, not a folder")),
    ],
    "clear-bad": [
        ("missing-config", (lambda w: ["1", "--config", w.missing], 2,
                            lambda w: f"error: {w.missing}: cannot read: no such file or folder")),
        ("folder-config", (lambda w: ["1", "--config", w.folder], 2,
                           lambda w: f"error: {w.folder}: cannot read: is a folder, not a file")),
        ("missing-state", (lambda w: ["1", "--state", w.tmp / "gone"], 2, NO_STATE)),
        ("blank-state", (lambda w: ["1", "--state", _not_initialised(w)], 2, BLANK)),
        ("not-bad", (lambda w: ["1", "--state", w.state], 2,
                     lambda w: f"error: v1 is not marked bad on {w.state}: nothing to clear "
                               "(bad: none)")),
    ],
}


def _bare_state(w: World) -> Path:
    """Initialised with the root only: no bundle."""
    return _init(w, "bare")


def _init(w: World, name: str) -> Path:
    code = cli.main(["init", "--state", str(w.tmp / name), "--root", str(w.root)])
    assert code == 0
    return w.tmp / name


@pytest.mark.parametrize(("command", "row"), [(c, r) for c, rows in BAD_INPUT.items() for r in rows],
                         ids=[f"{c}-{name}" for c, rows in BAD_INPUT.items() for name, _ in rows])
def test_bad_input_is_one_line_and_the_documented_exit_code(world, capsys, command, row):
    _, (args, code, line) = row
    argv = args(world)
    before = sorted(p.name for p in world.tmp.iterdir())
    got, out, err = run(capsys, command, *argv)
    assert one_line(err) == f"{PREFIX}{line(world)}"
    assert got == code
    assert out == "" or command == "init"
    after = sorted(p.name for p in world.tmp.iterdir())
    assert "new" not in after, "a refused init creates no state directory"
    assert set(after) - set(before) <= {"bare", "blank"}


@pytest.mark.parametrize("command", ["status", "export", "clear-bad", "check", "init", "install"])
def test_an_interrupt_is_one_line_and_exit_130(world, capsys, monkeypatch, command):
    """Whatever a command is doing when Ctrl-C arrives (here: opening the device)."""
    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.LocalDevice, "__init__", interrupted)
    monkeypatch.setattr(cli.LocalDevice, "initialise", interrupted)
    argv = {"status": ["--state", world.state], "export": ["--state", world.state, "--pem", "x"],
            "clear-bad": ["1", "--state", world.state], "check": ["--state", world.state, "h"],
            "init": ["--state", world.tmp / "new", "--root", world.root],
            "install": ["--state", world.state, world.full]}[command]
    code, _, err = run(capsys, command, *argv)
    assert (code, one_line(err)) == (130, f"{PREFIX}interrupted")


# --------------------------------------------------------------------------- Ctrl-C while waiting



def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["install", "init"])
def test_ctrl_c_while_the_health_check_waits_exits_130_without_a_traceback(world, command):
    config = world.tmp / "agent.toml"
    config.write_text(f'[health]\nendpoints = ["127.0.0.1:{_closed_port()}"]\ntimeout = 1\n')
    if command == "install":
        p = AgentProcess("install", "--state", world.state, "--config", config, world.full)
    else:
        p = AgentProcess("init", "--state", world.tmp / "new", "--config", config, "--root", world.root,
                 "--bundle", world.full)
    p.wait_line("endpoint unreachable, retrying")
    assert p.interrupt() == 130
    assert p.lines[-1] == f"{PREFIX}interrupted"
    assert not any("Traceback" in line for line in p.lines)


def test_ctrl_c_while_check_waits_for_the_handshake_exits_130(world, capsys):
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(WAIT)
        p = AgentProcess("check", "--state", world.state, f"localhost:{server.getsockname()[1]}",
                 "--timeout", "60")
        conn, _ = server.accept()  # connected; the agent now waits for a ServerHello
        with conn:
            time.sleep(0.3)
            assert p.interrupt() == 130
    assert p.lines == [f"{PREFIX}interrupted"]


# --------------------------------------------------------------------------- 5. no "bundle vNone"


def test_run_start_line_without_a_bundle_says_so_and_sigint_stops_it(repo, tmp_path):
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    config, port = tmp_path / "agent.toml", _closed_port()
    config.write_text(f'state_dir = "state"\ndevice_id = "pi-1"\nfleet = "{repo.fleet}"\n'
                      f'[mqtt]\nbroker = "mqtt://127.0.0.1:{port}"\n')
    assert cli.main(["init", "--config", str(config), "--root", str(tmp_path / "root.cose")]) == 0
    p = AgentProcess("run", "--config", config)
    p.wait_line("started:")
    started = next(line for line in p.lines if "started:" in line)
    assert "vNone" not in started
    assert started == (f"{PREFIX}started: device pi-1 of {repo.fleet}, state no-store, no bundle "
                       f"yet, broker mqtt://127.0.0.1:{port}")
    assert p.interrupt() == 0, "run documents SIGINT as a normal stop"
    assert not any("Traceback" in line or "vNone" in line for line in p.lines)


def test_an_install_refusal_is_one_prefixed_line_and_exit_1(world, capsys):
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    code, out, err = run(capsys, "install", "--state", world.state, world.compact)
    assert (code, out) == (1, "")
    assert one_line(err) == f"{PREFIX}refused: bundle version 1 is not newer than installed version 2"


# --------------------------------------------------------------------------- names and TLS in words


@pytest.mark.parametrize("name", [".example.com", "a..b", "*.example.com", " "])
def test_a_servername_that_is_no_host_name_is_a_usage_error(world, capsys, name):
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    code, _, err = run(capsys, "check", "--state", world.state, "localhost:1", "--servername", name)
    assert code == 2
    assert one_line(err) == f"{PREFIX}error: --servername {name!r}: neither a DNS name nor an IP address"


def test_a_bad_endpoint_name_is_refused_before_the_install_and_marks_nothing_bad(world, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["install", "--state", str(world.state), "--endpoint", "a..b:443", str(world.full)])
    assert caught.value.code == 2
    assert "argument --endpoint: endpoint 'a..b:443': 'a..b' is neither a DNS name nor an IP " \
        "address" in capsys.readouterr().err
    config = world.tmp / "agent.toml"
    config.write_text('[health]\nendpoints = [".api.example:443"]\n')
    code, _, err = run(capsys, "install", "--state", world.state, "--config", config, world.full)
    assert code == 2
    assert one_line(err) == (f"{PREFIX}error: {config}: health.endpoints: endpoint "
                             "'.api.example:443': '.api.example' is neither a DNS name nor an IP "
                             "address")
    code, out, _ = run(capsys, "status", "--state", world.state, "--json")
    assert (json.loads(out)["version"], json.loads(out)["bad"]) == (1, [])


def test_an_unreachable_endpoint_is_said_in_plain_words(world):
    from trustfleet_pi import tls
    from trustfleet_pi.local import LocalDevice

    port = _closed_port()
    bundle = LocalDevice(world.state).active_bundle()
    ok, detail = tls.health_check_for([f"127.0.0.1:{port}"], 2)(bundle, T0)
    assert (ok, detail) == (None, f"127.0.0.1:{port} unreachable: connection refused")


def test_a_server_that_hangs_up_during_the_handshake_is_said_in_plain_words(world, capsys):
    assert run(capsys, "install", "--state", world.state, world.full)[0] == 0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def hang_up() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(WAIT)
                conn.recv(16_384)  # the ClientHello, read: the close is a clean FIN, not a reset

        t = threading.Thread(target=hang_up, daemon=True)
        t.start()
        port = server.getsockname()[1]
        code, _, err = run(capsys, "check", "--state", world.state, f"localhost:{port}",
                           "--timeout", "5")
        t.join(timeout=5)
    assert code == 2
    assert one_line(err) == (f"{PREFIX}error: no TLS connection to localhost:{port}: the server "
                             "closed the connection during the TLS handshake")
