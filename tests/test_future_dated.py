"""Future-dated documents and the root's time lead, on the operator's side (issue 12).

A bundle issued ten years ahead built, signed, linted clean and verified, and a device that
installed it moved its trusted time to 2036. Now `bundle build` and `bundle sign` refuse an
issued_at more than 5 minutes ahead of this machine's clock (one line, nothing written)
unless --allow-future, `trustfleet lint` reports it as TF111 (an error), `bundle verify`
warns, and `timestamp create --time` that far ahead needs --allow-future too.

The root gains policy.max_time_lead (`root create|rotate --max-time-lead`, 1h..400d), shown
by `root inspect`; with the root given, lint warns (TF112) about a pin-set that expires
within that lead of issue, which a timestamp-key thief could expire early.
All through the real CLI in a subprocess, with real keys and signatures.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import fleetkit as fk
from support.fleetkit import Repo
from trustfleet_device import policy
from trustfleet_server import keys

REPO = Path(__file__).resolve().parents[1]
DAY = 86_400
YEAR = 365 * DAY


def tf(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *map(str, argv)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def refused(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


PINS = [base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2)]


def spec_text(issued_at: int | None = None, pin_expires: str = "180d") -> str:
    issued = f'issued_at = "{iso(issued_at)}"\n' if issued_at is not None else ""
    return (f'fleet = "acme"\nversion = 3\n{issued}expires = "90d"\n[[anchors]]\nfiles = ["ca.pem"]\n'
            f'[[pinsets]]\ndomain = "api.acme.example"\npins = ["{PINS[0]}", "{PINS[1]}"]\n'
            f'expires = "{pin_expires}"\n')


@pytest.fixture
def work(tmp_path):
    repo = Repo(fleet="acme", now=int(time.time()))
    fk.write_pem(tmp_path / "ca.pem", fk.make_cert("Future Test CA", keys.generate_key()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    for i, k in enumerate(repo.keys["bundle"][:2]):
        keys.write_private_key(tmp_path / f"bundle{i}.pem", k)
    return tmp_path


def test_bundle_build_refuses_an_issued_at_ten_years_ahead_unless_allowed(work):
    ahead = int(time.time()) + 10 * YEAR
    (work / "b.toml").write_text(spec_text(ahead))
    line = refused(tf(work, "bundle", "build", "b.toml", "-o", "b.cbor"), 1)
    assert line.startswith(f"trustfleet: refused: issued_at {iso(ahead)} is ")
    assert "ahead of this clock" in line and "--allow-future" in line and "nothing written" in line
    assert not (work / "b.cbor").exists()
    proc = tf(work, "bundle", "build", "b.toml", "-o", "b.cbor", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["out"] is None
    proc = tf(work, "bundle", "build", "b.toml", "-o", "b.cbor", "--allow-future", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "TF111" not in proc.stderr and (work / "b.cbor").exists()


def test_a_few_minutes_of_clock_skew_is_tolerated(work):
    (work / "b.toml").write_text(spec_text(int(time.time()) + 240))
    proc = tf(work, "bundle", "build", "b.toml", "-o", "b.cbor")
    assert proc.returncode == 0 and "TF111" not in proc.stderr, proc.stderr


def test_bundle_sign_refuses_a_future_dated_payload_and_leaves_the_file_alone(work):
    (work / "b.toml").write_text(spec_text(int(time.time()) + 2 * DAY))
    assert tf(work, "bundle", "build", "b.toml", "-o", "b.cbor", "--allow-future").returncode == 0
    before = (work / "b.cbor").read_bytes()
    line = refused(tf(work, "bundle", "sign", "--key", "bundle0.pem", "b.cbor"), 2)
    assert line.startswith("trustfleet: error: b.cbor: not signed: issued_at ") and "--allow-future" in line
    assert (work / "b.cbor").read_bytes() == before
    for k in ("bundle0.pem", "bundle1.pem"):
        proc = tf(work, "bundle", "sign", "--key", k, "b.cbor", "--allow-future")
        assert proc.returncode == 0, proc.stderr
    # A second signature on an already signed document is checked the same way.
    proc = tf(work, "bundle", "sign", "--key", "bundle0.pem", "b.cbor", "-o", "again.cose")
    assert proc.returncode == 2 and not (work / "again.cose").exists()

    # verify: valid (devices install it, with their time bounded) but it says it.
    proc = tf(work, "bundle", "verify", "--root", "root.cose", "b.cbor")
    assert proc.returncode == 0 and proc.stdout.startswith("valid: bundle v3")
    assert proc.stderr.startswith("warning: TF111: issued_at ") and "ahead of this clock" in proc.stderr
    proc = tf(work, "bundle", "verify", "--root", "root.cose", "b.cbor", "--json")
    report = json.loads(proc.stdout)
    assert report["valid"] is True and report["warnings"][0].startswith("TF111: ")

    # lint reads the signed bundle: TF111, an error, unless --allow-future.
    proc = tf(work, "lint", "b.cbor", "--json")
    found = json.loads(proc.stdout)
    assert proc.returncode == 1 and [f["code"] for f in found["findings"]] == ["TF111"]
    assert found["findings"][0]["severity"] == "error" and found["findings"][0]["location"] == "issued_at"
    proc = tf(work, "lint", "b.cbor", "--json", "--allow-future")
    assert proc.returncode == 0 and json.loads(proc.stdout)["findings"] == []


def test_lint_of_a_spec_dated_ahead_of_the_lint_time(work):
    (work / "b.toml").write_text(spec_text(int(time.time()) + 30 * DAY))
    proc = tf(work, "lint", "b.toml")
    assert proc.returncode == 1 and proc.stdout.startswith("TF111 [error] issued_at: issued_at ")
    # Judged at a time after issue (--at), the same spec is fine.
    proc = tf(work, "lint", "b.toml", "--at", iso(int(time.time()) + 31 * DAY), "--json")
    assert "TF111" not in [f["code"] for f in json.loads(proc.stdout)["findings"]]


def test_timestamp_create_needs_allow_future_for_a_time_ahead(work):
    repo = Repo(fleet="acme", now=int(time.time()))
    keys.write_private_key(work / "ts.pem", repo.keys["timestamp"][0])
    (work / "b.cose").write_bytes(repo.bundle(2))
    later = int(time.time()) + 45 * DAY
    args = ("timestamp", "create", "--bundle", "b.cose", "--key", "ts.pem", "-o", "ts.cose")
    line = refused(tf(work, *args, "--time", iso(later)), 2)
    assert f"--time {iso(later)} is " in line and "--allow-future" in line
    assert not (work / "ts.cose").exists()
    assert tf(work, *args, "--time", iso(int(time.time()) + 120)).returncode == 0
    proc = tf(work, *args, "--time", iso(later), "--allow-future")
    assert proc.returncode == 0, proc.stderr
    ts = policy.verify_timestamp(policy.load_trusted_root(repo.root_raw), (work / "ts.cose").read_bytes())
    assert ts.time == later


# --------------------------------------------------------------------------- the root's time lead


def make_root(work: Path, *extra: str) -> subprocess.CompletedProcess:
    names = {"root": 2, "bundle": 2, "timestamp": 1}
    argv = ["root", "create", "--fleet", "acme", "-o", "root.cbor", *extra]
    for role, n in names.items():
        for i in range(n):
            k = keys.generate_key()
            keys.write_private_key(work / f"{role}{i}.key.pem", k)
            (work / f"{role}{i}.pub.pem").write_bytes(keys.public_key_pem(k))
            argv += ["--key", f"{role}={role}{i}.pub.pem"]
    proc = tf(work, *argv)
    if proc.returncode == 0:
        for i in range(2):
            assert tf(work, "root", "sign", "--key", f"root{i}.key.pem", "root.cbor").returncode == 0
    return proc


def test_root_create_writes_max_time_lead_and_inspect_shows_it(work):
    proc = make_root(work, "--max-time-lead", "200d", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["max_time_lead"] == 200 * DAY
    info = json.loads(tf(work, "root", "inspect", "root.cbor", "--json").stdout)
    assert (info["max_time_lead"], info["max_time_lead_default"]) == (200 * DAY, False)
    text = tf(work, "root", "inspect", "root.cbor").stdout
    assert "max_time_lead 200 days:" in text
    root = policy.load_trusted_root((work / "root.cbor").read_bytes())  # a device takes it
    assert root.time_lead == 200 * DAY
    # A rotation keeps it, or sets another.
    proc = tf(work, "root", "rotate", "--from", "root.cbor", "-o", "v2.cbor", "--json")
    assert json.loads(proc.stdout)["max_time_lead"] == 200 * DAY
    proc = tf(work, "root", "rotate", "--from", "root.cbor", "-o", "v2.cbor", "--max-time-lead", "2h",
              "--json")
    assert json.loads(proc.stdout)["max_time_lead"] == 7200


def test_root_without_a_lead_shows_the_device_default(work):
    assert make_root(work).returncode == 0
    info = json.loads(tf(work, "root", "inspect", "root.cbor", "--json").stdout)
    assert (info["max_time_lead"], info["max_time_lead_default"]) == (30 * DAY, True)
    assert "max_time_lead 30 days (the default)" in tf(work, "root", "inspect", "root.cbor").stdout


@pytest.mark.parametrize("lead", ["59m", "401d", "0", "-1d", "soon", str(2**64)])
def test_root_create_refuses_a_lead_out_of_range_in_one_line(work, lead):
    line = refused(make_root(work, f"--max-time-lead={lead}"), 2)
    assert line.startswith("trustfleet: error: --max-time-lead: ")
    assert not (work / "root.cbor").exists()


def test_lint_warns_when_pins_expire_within_the_roots_time_lead(work):
    assert make_root(work, "--max-time-lead", "200d").returncode == 0
    (work / "b.toml").write_text(spec_text(pin_expires="180d"))
    proc = tf(work, "lint", "b.toml", "--root", "root.cbor", "--json")
    found = json.loads(proc.stdout)
    assert proc.returncode == 0 and [f["code"] for f in found["findings"]] == ["TF112"]
    f = found["findings"][0]
    assert f["severity"] == "warning" and f["location"] == "pinsets[0] api.acme.example"
    assert "180 days after issue" in f["message"] and "(200 days)" in f["message"]
    # Without the root, lint cannot know the lead; with pins outliving it, nothing to say.
    assert json.loads(tf(work, "lint", "b.toml", "--json").stdout)["findings"] == []
    (work / "b.toml").write_text(spec_text(pin_expires="300d"))
    assert json.loads(tf(work, "lint", "b.toml", "--root", "root.cbor", "--json").stdout)["findings"] == []
    # bundle build takes --root too; a warning does not stop it (--strict does).
    (work / "b.toml").write_text(spec_text(pin_expires="180d"))
    proc = tf(work, "bundle", "build", "b.toml", "-o", "b.cbor", "--root", "root.cbor")
    assert proc.returncode == 0 and "TF112 [warning]" in proc.stderr
    proc = tf(work, "bundle", "build", "b.toml", "-o", "b2.cbor", "--root", "root.cbor", "--strict")
    assert proc.returncode == 1 and not (work / "b2.cbor").exists()
