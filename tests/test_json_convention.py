"""One JSON convention for both commands (issue 13, README "Command-line conventions").

A real operator flow (keys, root, bundle, timestamp, exports, broker identities, a rollout on a
store with devices, the agent) runs with --json on every step, and each output is checked against
the convention: one JSON object on stdout (JSON Lines for `fleet watch`), snake_case keys, times
as RFC 3339 UTC strings with `<name>_epoch` integers beside them, and an error as
{"error": {"exit", "kind", "message"}} with the exit code it reports.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from support import fleetkit as fk
from trustfleet_pi import cli as agent_cli
from trustfleet_server import cli
from trustfleet_server.fleet import db as fleetdb

KEY = re.compile(r"^[a-z][a-z0-9_]*$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# Fields that hold a moment: an RFC 3339 string (or null), never a bare number.
TIME_FIELDS = {"time", "issued_at", "expires_at", "expires", "checked_at", "not_after", "not_before",
               "last_seen", "first_seen", "started", "wave_started", "finished", "paused_at", "ended",
               "trusted_time", "last_timestamp"}
# Objects whose keys are data (device ids, state names, file roles), not field names.
DATA_MAPS = {"by_state", "by_version", "states", "versions", "counts", "files", "updated", "roles",
             "thresholds"}


def check_object(value: Any, where: str = "$") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            at = f"{where}.{key}"
            if where.rsplit(".", 1)[-1].split("[")[0] not in DATA_MAPS:
                assert KEY.match(key), f"{at}: key is not snake_case"
            if key in TIME_FIELDS and key not in ("expires",) or key.endswith("_at"):
                assert item is None or (isinstance(item, str) and RFC3339.match(item)), \
                    f"{at}: a time must be an RFC 3339 UTC string, got {item!r}"
            if key == "expires" and not isinstance(item, dict | list):  # import nsc: a date string
                assert item is None or isinstance(item, str), f"{at}: {item!r}"
            if key.endswith("_epoch"):
                assert isinstance(item, int) and not isinstance(item, bool), f"{at}: {item!r}"
                base = key.removesuffix("_epoch")
                assert base in value, f"{at}: an epoch field stands beside its RFC 3339 field"
            check_object(item, at)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_object(item, f"{where}[{i}]")


def run_json(main, *args) -> tuple[int, list[Any]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args] + ["--json"])
        except SystemExit as exc:
            code = exc.code
    assert "Traceback" not in err.getvalue()
    text = out.getvalue()
    assert text.strip(), f"{args}: nothing on stdout (stderr: {err.getvalue()!r})"
    docs = [json.loads(line) for line in text.splitlines() if line.strip()] if text.count("\n") > 1 \
        and not text.lstrip().startswith(("{\n", "[\n")) else [json.loads(text)]
    for doc in docs:
        assert isinstance(doc, dict), f"{args}: one JSON object, got {type(doc).__name__}"
        check_object(doc, " ".join(str(a) for a in args[:2]))
    return code, docs


def status(device: str, version: int) -> dict:
    return {"device": device, "fleet": "acme", "group": "canary", "bucket": 9, "state": "ok",
            "version": version, "floor": version, "bad": [], "last_revert": None, "reasons": [],
            "root_version": 1, "trusted_time": int(time.time()), "last_timestamp": None, "fail_open": [],
            "agent_version": "0.1.0", "time": int(time.time()), "seq": 1}


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("json")
    acme = fk.chain("acme")
    fk.write_pem(d / "acme.pem", acme.ca)
    fk.write_pem(d / "backup.pem", fk.chain("backup").ca)
    fk.write_pem(d / "chain.pem", acme.leaf, acme.intermediate)
    (d / "b.toml").write_text(
        f'fleet = "acme"\nversion = 2\nexpires = "90d"\n[[anchors]]\nfiles = ["{d / "acme.pem"}"]\n'
        f'form = "full"\n[[pinsets]]\ndomain = "api.acme.example"\n'
        f'pin_files = ["{d / "acme.pem"}", "{d / "backup.pem"}"]\nexpires = "180d"\n')
    with fleetdb.open_db(d / "fleet.db") as db:
        db.ingest_statuses([("acme", f"pi-{i}", status(f"pi-{i}", 1), int(time.time())) for i in range(3)])
    return SimpleNamespace(dir=d)


def steps(d: Path) -> list[tuple[Any, tuple]]:
    k = d / "keys"
    return [
        (cli.main, ("key", "generate", "--out", k / "r.pem")),
        (cli.main, ("key", "generate", "--out", k / "b.pem")),
        (cli.main, ("key", "generate", "--out", k / "t.pem")),
        (cli.main, ("key", "show", k / "r.pem")),
        (cli.main, ("pin", d / "acme.pem")),
        (cli.main, ("root", "create", "--fleet", "acme", "--key", f"root={k / 'r.pub.pem'}",
                    "--key", f"bundle={k / 'b.pub.pem'}", "--key", f"timestamp={k / 't.pub.pem'}",
                    "-o", d / "root.cose")),
        (cli.main, ("root", "sign", "--key", k / "r.pem", d / "root.cose")),
        (cli.main, ("root", "verify", d / "root.cose")),
        (cli.main, ("root", "inspect", d / "root.cose")),
        (cli.main, ("lint", d / "b.toml")),
        (cli.main, ("bundle", "build", d / "b.toml", "-o", d / "b.cose")),
        (cli.main, ("bundle", "sign", "--key", k / "b.pem", "--root", d / "root.cose", d / "b.cose")),
        (cli.main, ("bundle", "verify", "--root", d / "root.cose", d / "b.cose")),
        (cli.main, ("bundle", "inspect", d / "b.cose")),
        (cli.main, ("bundle", "diff", d / "b.cose", d / "b.cose")),
        (cli.main, ("timestamp", "create", "--bundle", d / "b.cose", "--key", k / "t.pem",
                    "-o", d / "ts.cose")),
        (cli.main, ("bundle", "inspect", d / "ts.cose")),
        (cli.main, ("export", "nsc", d / "b.cose", "-o", d / "nsc.xml")),
        (cli.main, ("export", "trustkit", d / "b.cose", "-o", d / "tk.json")),
        (cli.main, ("import", "nsc", d / "nsc.xml")),
        (cli.main, ("broker-config", "--fleet", "acme", "--out", d / "broker")),
        (cli.main, ("device", "add", "--fleet", "acme", "--id", "pi-9", "--broker-dir", d / "broker",
                    "--out", d / "pi-9.json")),
        (cli.main, ("rollout", "start", "--db", d / "fleet.db", "--fleet", "acme", "--root", d / "root.cose",
                    "--bundle", d / "b.cose", "--groups", "100%")),
        (cli.main, ("rollout", "status", "--db", d / "fleet.db", "--fleet", "acme")),
        (cli.main, ("rollout", "list", "--db", d / "fleet.db")),
        (cli.main, ("rollout", "pause", "--db", d / "fleet.db", "--fleet", "acme")),
        (cli.main, ("fleet", "status", "--db", d / "fleet.db", "--fleet", "acme")),
        (cli.main, ("fleet", "devices", "--db", d / "fleet.db", "--fleet", "acme")),
        (cli.main, ("fleet", "device", "quarantine", "pi-1", "--db", d / "fleet.db", "--fleet", "acme",
                    "--reason", "json test")),
        (cli.main, ("fleet", "events", "--db", d / "fleet.db", "--fleet", "acme")),
        (cli.main, ("rollout", "abort", "--db", d / "fleet.db", "--fleet", "acme")),
        (cli.main, ("fleet", "watch", "--db", d / "fleet.db", "--fleet", "acme")),
        (cli.main, ("fleet", "prune", "--db", d / "fleet.db")),
        (cli.main, ("doctor", "--root", d / "root.cose", "--db", d / "fleet.db")),
        (agent_cli.main, ("init", "--state", d / "st", "--root", d / "root.cose")),
        (agent_cli.main, ("install", "--state", d / "st", d / "b.cose")),
        (agent_cli.main, ("status", "--state", d / "st")),
        (agent_cli.main, ("export", "--state", d / "st", "--pem", d / "ca.pem", "--pins", d / "pins.json")),
    ]


# The flow's steps that end non-zero by design (a halted/aborted rollout watched to its end).
EXPECTED_CODES = {("fleet", "watch"): 1}


def test_every_step_of_an_operator_flow_prints_one_conventional_json_object(flow, monkeypatch):
    monkeypatch.delenv("TRUSTFLEET_PASSPHRASE", raising=False)
    seen = []
    for main, args in steps(flow.dir):
        code, docs = run_json(main, *args)
        name = tuple(str(a) for a in args[:2])
        assert code == EXPECTED_CODES.get(name, 0), f"{name}: exit {code}: {docs}"
        assert "error" not in docs[0], f"{name}: {docs[0]}"
        seen.append(name)
    assert len(seen) == len(steps(flow.dir))


@pytest.mark.parametrize("main, args, code, kind", [
    (cli.main, ("bundle", "inspect", "{d}/missing.cose"), 2, "usage"),
    (cli.main, ("root", "verify", "{d}/b.toml"), 1, "refused"),  # not a document: refused
    (cli.main, ("fleet", "status", "--db", "{d}/typo.db", "--fleet", "acme"), 2, "usage"),
    (cli.main, ("bundle", "verify", "--root", "{d}/missing-root.cose", "{d}/b.toml"), 2, "usage"),
    (cli.main, ("bundle", "build", "{d}/b.toml", "--no-such-option"), 2, "usage"),
    (agent_cli.main, ("status", "--state", "{d}/no-such-state"), 2, "usage"),
    (agent_cli.main, ("install", "--state", "{d}/no-such-state", "{d}/b.toml"), 2, "usage"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_an_error_with_json_is_one_error_object_with_its_exit_code(flow, main, args, code, kind):
    args = tuple(a.format(d=flow.dir) for a in args)
    got, docs = run_json(main, *args)
    assert got == code
    assert len(docs) == 1 and set(docs[0]) == {"error"}
    error = docs[0]["error"]
    assert error == {"exit": code, "kind": kind, "message": error["message"]} and error["message"]
