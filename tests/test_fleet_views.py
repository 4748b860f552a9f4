"""`fleet devices`, terminal output (rich tables and bars on a terminal, plain lines off one,
--json), `fleet watch` off a terminal and with --json, and help text on every option of the
`rollout` and `fleet` commands (issue 13). SQLite and PostgreSQL (the `target` fixture)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import pytest

from trustfleet_device import status as status_schema
from trustfleet_server import cli, rollout
from trustfleet_server.fleet import db as fleetdb

F = "acme"
LONG = "pi-" + "x" * 60  # longer than a column of `fleet status`: plain lines never cut it


def status(version: int | None, state: str = "ok", group: str | None = None, **extra) -> dict:
    now = int(time.time())
    return {"state": state, "version": version, "floor": version, "seq": 1, "time": now, "group": group,
            **extra}


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fleet(target):
    """Seven devices: every state `fleet status` names, in two groups."""
    now = int(time.time())
    with fleetdb.open_db(target) as db:
        db.record_published(F, 3, "ab", "test", now)
        stored = db.ingest_statuses([
            (F, "ok-1", status(3, group="canary"), now),
            (F, "ok-2", status(3, fail_open=["api.example.com"]), now),
            (F, "stale-1", status(3, "stale", group="canary", reasons=["timestamp too old"]), now),
            (F, "trial-1", status(2, "trial"), now),
            (F, LONG, status(2, group="canary", bad=[3], last_revert="health check failed: no key matches "
                                                                      "the pins of api.example.com\ttab",
                             event="reverted", detail="bundle v3: health check failed"), now),
            (F, "nostore-1", status(None, "no-store"), now),
            (F, "old-1", status(2), now - 3 * 86_400),
        ])
        assert not stored.rejected, stored.rejected
        db.ingest_status(F, "gone-1", json.dumps({"device": "gone-1", "fleet": F, "state": "offline"}).encode(),
                         now)
        db.set_quarantined(F, "trial-1", True, "t", "test", now)
    return target


def devices(capsys, target: str, *filters: str) -> list[str]:
    code, out, err = run(capsys, "fleet", "devices", "--db", target, "--fleet", F, *filters)
    assert code == 0, err
    return out.splitlines()


def test_fleet_devices_lists_one_plain_line_per_device_never_cut(capsys, fleet):
    lines = devices(capsys, fleet)
    assert lines[0] == "device\tversion\tstate\tgroup\tbucket\tlast seen\tlast refusal/revert"
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert sorted(rows) == sorted(["ok-1", "ok-2", "stale-1", "trial-1", LONG, "nostore-1", "old-1", "gone-1"])
    assert all(len(r) == 7 for r in rows.values())
    assert rows["ok-1"][1:4] == ["v3", "ok", "canary"]
    assert rows["ok-2"][2] == "ok,fail-open"
    assert rows["trial-1"][2] == "trial,quarantined"
    assert rows["nostore-1"][1:3] == ["-", "no-store"]
    assert rows["gone-1"][2] == "offline"
    assert rows[LONG][6] == "reverted: bundle v3: health check failed"
    assert rows["ok-1"][5].endswith("Z") and rows["ok-1"][4].isdigit()


def test_fleet_devices_filters_combine(capsys, fleet):
    assert [line.split("\t")[0] for line in devices(capsys, fleet, "--version", "3")[1:]] == \
        ["ok-1", "ok-2", "stale-1"]
    assert [line.split("\t")[0] for line in devices(capsys, fleet, "--version", "v3", "--group", "canary")[1:]] \
        == ["ok-1", "stale-1"]
    assert [line.split("\t")[0] for line in devices(capsys, fleet, "--version", "2", "--state", "ok",
                                                    "--group", "canary")[1:]] == [LONG]
    assert [line.split("\t")[0] for line in devices(capsys, fleet, "--state", "fail-open")[1:]] == ["ok-2"]
    assert [line.split("\t")[0] for line in devices(capsys, fleet, "--version", "none")[1:]] == \
        ["gone-1", "nostore-1"]
    assert [line.split("\t")[0] for line in devices(capsys, fleet, "--state", "silent",
                                                    "--silent-after", "1d")[1:]] == ["old-1"]
    assert devices(capsys, fleet, "--state", "stale", "--group", "nosuch")[1:] == []
    code, out, err = run(capsys, "fleet", "devices", "--db", fleet, "--fleet", F, "--state", "quarantined",
                         "--json")
    assert code == 0, err
    body = json.loads(out)
    assert [(d["device"], d["states"], d["version"]) for d in body["devices"]] == \
        [("trial-1", ["trial", "quarantined"], 2)]
    assert set(body["devices"][0]) >= {"device", "version", "state", "group", "bucket", "last_seen",
                                       "last_problem"}


def test_fleet_devices_names_the_valid_states_for_an_unknown_one(capsys, fleet):
    code, out, err = run(capsys, "fleet", "devices", "--db", fleet, "--fleet", F, "--state", "broken")
    valid = (*status_schema.STATES, "fail-open", "silent", "suspect", "quarantined")
    assert code == 2 and out == ""
    assert err == f"trustfleet: error: --state: unknown state 'broken'; one of {', '.join(valid)}\n"
    code, out, err = run(capsys, "fleet", "devices", "--db", fleet, "--fleet", "nosuch")
    assert code == 2 and err == f"trustfleet: error: fleet nosuch is not in {fleet} (fleets: {F})\n"


def test_on_a_terminal_the_views_are_rich_tables(capsys, fleet, monkeypatch):
    with fleetdb.open_db(fleet) as db:
        r = db.create_rollout(rollout.new_rollout(F, 4, "cd", b"b", rollout.parse_waves("100%"), int(time.time())))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    for command in (("fleet", "devices", "--fleet", F), ("fleet", "status", "--fleet", F),
                    ("rollout", "list"), ("rollout", "status", "--fleet", F)):
        code, out, err = run(capsys, *command, "--db", fleet)
        assert code == 0, err
        assert "┃" in out and "│" in out, (command, out)
    code, out, _ = run(capsys, "fleet", "devices", "--db", fleet, "--fleet", F)  # 80 columns
    assert "…" not in out and "\x1b[" in out  # a narrow terminal wraps cells, never cuts them
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "fleet", "devices", "--db", fleet, "--fleet", F)
    assert "ok,fail-open" in out and LONG in out
    code, out, _ = run(capsys, "rollout", "list", "--db", fleet)
    assert f"│ {r.id} " in out and "running" in out
    code, out, _ = run(capsys, "fleet", "devices", "--db", fleet, "--fleet", F, "--json")  # --json wins
    assert json.loads(out)["fleet"] == F


def test_fleet_watch_off_a_terminal_prints_whole_lines_and_with_json_one_object_per_change(
        capsys, fleet, monkeypatch):
    with fleetdb.open_db(fleet) as db:
        r = db.create_rollout(rollout.new_rollout(F, 4, "cd", b"b", rollout.parse_waves("100%"), int(time.time()),
                                                  deadline=600))
        db.save_rollout(rollout.step(r, db.devices(F), int(time.time()))[0], r.revision)
    naps: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the second look finds the rollout aborted
        if threading.current_thread() is not threading.main_thread():
            return real_sleep(seconds)  # a thread another test left running: not the watch
        naps.append(seconds)
        with fleetdb.open_db(fleet) as db:
            db.update_rollout(r.id, lambda x: rollout.abort(x, int(time.time()), "enough"))

    monkeypatch.setattr(time, "sleep", sleep)
    code, out, err = run(capsys, "fleet", "watch", "--db", fleet, "--fleet", F, "--interval", "0.1")
    assert code == 1, err
    lines = out.splitlines()
    running = next(line for line in lines if "(running" in line)
    assert running.endswith("Z)") and ", deadline 20" in running, running  # a whole line, a fixed time
    assert any(line.endswith("aborted") or "(aborted 20" in line for line in lines), lines
    assert "\x1b" not in out and naps == [0.1]

    with fleetdb.open_db(fleet) as db:
        r = db.create_rollout(rollout.new_rollout(F, 5, "ef", b"b", rollout.parse_waves("100%"), int(time.time())))
    code, out, err = run(capsys, "fleet", "watch", "--db", fleet, "--fleet", F, "--json", "--interval", "0.1")
    assert code == 1, err
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["state"] for o in objects] == ["running", "aborted"]
    assert all(o["id"] == r.id and "progress" in o and isinstance(o["time_epoch"], int) for o in objects)


def test_fleet_watch_on_a_terminal_draws_progress_bars(capsys, fleet, monkeypatch):
    with fleetdb.open_db(fleet) as db:
        r = db.create_rollout(rollout.new_rollout(F, 4, "cd", b"b", rollout.parse_waves("50%,100%"),
                                                  int(time.time())))
        db.update_rollout(r.id, lambda x: rollout.abort(x, int(time.time()), "test"))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    code, out, _ = run(capsys, "fleet", "watch", "--db", fleet, "--fleet", F)
    assert code == 1 and "aborted" in out and "━" in out and "not reached" in out


def _subcommands(parser: argparse.ArgumentParser, name: str) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    group = action.choices[name]
    inner = next(a for a in group._actions if isinstance(a, argparse._SubParsersAction))
    return {f"{name} {n}": p for n, p in inner.choices.items()}


def test_every_option_and_positional_of_rollout_and_fleet_has_help_text():
    parser = cli.build_parser()
    missing = [f"{cmd} {a.option_strings[-1] if a.option_strings else a.dest}"
               for group in ("rollout", "fleet") for cmd, p in _subcommands(parser, group).items()
               for a in p._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []
