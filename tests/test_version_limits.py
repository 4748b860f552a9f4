"""Dead ends in the version space (issue 12): the builders refuse what devices would refuse.

`bundle build --version 18446744073709551616` printed a traceback, and 2^63-1 or 2^64-1
built a bundle after which no bundle could ever follow. Now every version input (the
--version flag, the spec's `version`, `bundle verify --installed-version`, the version
`root rotate` would write) is a whole number up to documents.MAX_VERSION = 2^30 - 1, or
one line on stderr, exit 2, and no file written. Through the real CLI in a subprocess,
so a traceback anywhere would show.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import fleetkit as fk
from support.fleetkit import Repo
from trustfleet_device import documents as device_docs
from trustfleet_device import policy
from trustfleet_server import keys

REPO = Path(__file__).resolve().parents[1]
MAX = device_docs.MAX_VERSION


def tf(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
    return subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def spec_dir(tmp_path):
    ca_key = keys.generate_key()
    fk.write_pem(tmp_path / "ca.pem", fk.make_cert("Version Test CA", ca_key))
    return tmp_path


def spec(version: str) -> str:
    return f'fleet = "acme"\nversion = {version}\nexpires = "90d"\n[[anchors]]\nfiles = ["ca.pem"]\n'


@pytest.mark.parametrize("version", [
    str(2**64), str(2**64 - 1), str(2**63 - 1), str(MAX + 1), "-1", "0", "abc", "1.5", "1e3", "",
    "9" * 5000,
])
def test_bundle_build_refuses_a_version_flag_devices_would_refuse_in_one_line(spec_dir, version):
    (spec_dir / "b.toml").write_text(spec("1"))
    line = one_line(tf(spec_dir, "bundle", "build", "b.toml", "-o", "out.cbor", f"--version={version}"))
    assert line.startswith("trustfleet: error: --version: ") and f"1 to {MAX}" in line
    assert len(line) < 300 and not (spec_dir / "out.cbor").exists()


@pytest.mark.parametrize("version", [str(2**64), str(2**63 - 1), str(MAX + 1), "-5", "0", '"7"',
                                     "7.0", "true"])
def test_bundle_build_refuses_such_a_version_in_the_spec_file(spec_dir, version):
    (spec_dir / "b.toml").write_text(spec(version))
    line = one_line(tf(spec_dir, "bundle", "build", "b.toml", "-o", "out.cbor"))
    assert line.startswith("trustfleet: error: version: ") and f"1 to {MAX}" in line
    assert not (spec_dir / "out.cbor").exists()


def test_the_highest_version_builds_and_one_below_it_leaves_room_for_a_successor(spec_dir):
    (spec_dir / "b.toml").write_text(spec(str(MAX)))
    proc = tf(spec_dir, "bundle", "build", "b.toml", "-o", "out.cbor")
    assert proc.returncode == 0, proc.stderr
    assert f"bundle v{MAX} " in proc.stdout


def test_bundle_verify_refuses_a_bad_installed_version_in_one_line(tmp_path):
    repo = Repo(fleet="acme", now=int(time.time()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    (tmp_path / "b.cose").write_bytes(repo.bundle(3))
    for bad in (str(2**64), "-1", "x"):
        line = one_line(tf(tmp_path, "bundle", "verify", "--root", "root.cose", "b.cose",
                           f"--installed-version={bad}"))
        assert "--installed-version: " in line and f"0 to {MAX}" in line
    ok = tf(tmp_path, "bundle", "verify", "--root", "root.cose", "b.cose", "--installed-version=0")
    assert ok.returncode == 0, ok.stderr
    older = tf(tmp_path, "bundle", "verify", "--root", "root.cose", "b.cose", "--installed-version=3")
    assert older.returncode == 1 and "Traceback" not in older.stderr


def test_root_rotate_refuses_to_write_a_root_above_the_highest_version(tmp_path):
    repo = Repo(fleet="acme", now=int(time.time()))
    (tmp_path / "top.cose").write_bytes(repo.rotate("bundle", version=MAX))
    assert policy.load_trusted_root((tmp_path / "top.cose").read_bytes()).version == MAX
    line = one_line(tf(tmp_path, "root", "rotate", "--from", "top.cose", "-o", "next.cbor"))
    assert f"root v{MAX + 1}: versions run from 1 to {MAX}" in line
    assert not (tmp_path / "next.cbor").exists()
    (tmp_path / "below.cose").write_bytes(repo.rotate("bundle", version=MAX - 1))
    proc = tf(tmp_path, "root", "rotate", "--from", "below.cose", "-o", "next.cbor")
    assert proc.returncode == 0 and f"unsigned root v{MAX}" in proc.stdout, proc.stderr


def test_simulate_refuses_a_target_version_devices_would_refuse(tmp_path):
    (tmp_path / "root.cose").write_bytes(Repo(fleet="acme", now=int(time.time())).root_raw)
    for bad in (str(2**64), "0", "v2"):
        line = one_line(tf(tmp_path, "simulate", "--broker", "mqtt://127.0.0.1:1", "--fleet", "acme",
                           "--root", "root.cose", "--devices", "2", f"--until-version={bad}"))
        assert "--until-version: " in line and f"1 to {MAX}" in line
