"""The pytest plugin's fixtures, run the way a user runs them: a test file outside the
repository, a pytest of its own (support.userfleet.run_user_pytest).

Issue 17's promise checked here: fixtures tear down cleanly. A test that fails in the
middle of a staged rollout leaves no process running (the private Mosquitto, the device
worker processes) and no temporary file behind: the inner pytest gets a fresh empty
TMPDIR, so everything the fixtures make lands there, and it must be empty at the end.
Also: --tf-broker embedded, indirect parametrization of tf_devices, the tf_fleet marker.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

from support.environment import require_tool
from support.userfleet import outcome_count, run_user_pytest, write_user_tests

# The inner tests record what the fixtures started, as (pid, start time) pairs: the
# start time (field 22 of /proc/PID/stat) tells the same process from a later one
# that got its PID.
STARTED = '''
def started(pid):
    """(pid, start time) of a running process."""
    return [pid, open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]]
'''

MID_ROLLOUT = STARTED + '''
import json
import os

import pytest

RECORD = os.environ["TF_RECORD"]


@pytest.mark.tf_devices(12, groups={"canary": 0.25}, processes=2)
def test_fails_mid_rollout(tf_broker, tf_fleet, tf_devices):
    tf_fleet.publish(tf_fleet.bundle(1))
    tf_fleet.wait(lambda s: s.converged, timeout=30)
    tf_fleet.rollout(tf_fleet.bundle(2), "canary,50%,100%", wave_deadline=600)
    tf_fleet.wait(lambda s: s.rollout.state == "running" and s.rollout.wave == "canary")
    assert tf_broker.kind == "mosquitto"
    workers = [started(link.proc.pid) for link in tf_devices.sim.sim.links]
    assert len(workers) == 2
    with open(RECORD, "w") as f:
        json.dump({"broker": started(tf_broker.mosquitto.proc.pid), "workers": workers,
                   "workdir": str(tf_fleet.workdir), "broker_dir": str(tf_broker.dir)}, f)
    assert False, "mid-rollout"


@pytest.mark.tf_devices(3)
def test_next_test_runs_on_the_same_broker(tf_broker, tf_fleet, tf_devices):
    with open(RECORD) as f:
        record = json.load(f)
    assert started(tf_broker.mosquitto.proc.pid) == record["broker"]
    assert not os.path.exists(record["workdir"])
    for pid, start in record["workers"]:
        try:
            assert started(pid)[1] != start, f"worker {pid} outlived its test"
        except FileNotFoundError:
            pass
    tf_fleet.publish(tf_fleet.bundle(1))
    assert tf_fleet.wait(lambda s: s.converged, timeout=30).versions == {1: 3}
'''

INTERRUPTED = STARTED + '''
import json
import os
import signal
import time

import pytest


@pytest.mark.tf_devices(6, groups={"canary": 0.5}, processes=2)
def test_interrupted_mid_rollout(tf_broker, tf_fleet, tf_devices):
    tf_fleet.publish(tf_fleet.bundle(1))
    tf_fleet.wait(lambda s: s.converged, timeout=30)
    tf_fleet.rollout(tf_fleet.bundle(2), "canary,100%", wave_deadline=600)
    tf_fleet.wait(lambda s: s.rollout.state == "running" and s.rollout.wave == "canary")
    workers = [started(link.proc.pid) for link in tf_devices.sim.sim.links]
    with open(os.environ["TF_RECORD"], "w") as f:
        json.dump({"broker": started(tf_broker.mosquitto.proc.pid), "workers": workers,
                   "workdir": str(tf_fleet.workdir)}, f)
    os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C
    time.sleep(30)
'''

OPTIONS = '''
import pytest


def test_broker_is_embedded(tf_broker):
    assert tf_broker.kind == "embedded"


@pytest.mark.parametrize("tf_devices", [3, {"count": 5, "faults": {"stuck_2000": 1.0}}],
                         indirect=True)
def test_devices_parametrized(tf_fleet, tf_devices, request):
    devices = tf_fleet.state().devices
    if request.node.callspec.params["tf_devices"] == 3:
        assert len(devices) == 3 and not any(d.faults for d in devices)
    else:
        assert len(devices) == 5 and all("stuck-2000" in d.faults for d in devices)


@pytest.mark.tf_fleet(thresholds={"bundle": 3})
@pytest.mark.tf_devices(4)
def test_bundle_threshold_from_marker(tf_fleet, tf_devices):
    assert tf_fleet.thresholds["bundle"] == 3 and len(tf_fleet.keys["bundle"]) == 3
    tf_fleet.publish(tf_fleet.bundle(1, signers=tf_fleet.keys["bundle"][:2]))
    s = tf_fleet.wait(lambda s: len(s.refused) == 4, timeout=30)
    for d in s.devices:
        reasons = [r.reason for r in d.refusals if r.kind == "bundle"]
        assert reasons and all("signature" in r and "needs 3" in r for r in reasons), d
    assert s.versions == {None: 4}
    tf_fleet.publish(tf_fleet.bundle(2))
    assert tf_fleet.wait(lambda s: s.converged, timeout=30).versions == {2: 4}
'''


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")


def _still_running(pid: int, start: str) -> str | None:
    """The state letter of the process (pid, start) if it still exists (a zombie counts)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0] if fields[19] == start else None


def _leftovers(tmpdir: Path) -> list[str]:
    return sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))


def _run_on_mosquitto(tmp_path: Path, name: str, text: str) -> tuple[str, dict, Path]:
    """Run a user's test file on a private Mosquitto with a fresh TMPDIR; (its output, what it
    recorded of the processes and directories the fixtures made, that TMPDIR)."""
    require_tool("mosquitto", "apt-get install mosquitto", ["/usr/sbin/mosquitto"])
    user, tmpdir, record = tmp_path / "user", tmp_path / "tmp", tmp_path / "record.json"
    tmpdir.mkdir()
    _write(user, name, text)
    run = run_user_pytest(sys.executable, user, "--tf-broker", "mosquitto",
                          env={"TMPDIR": str(tmpdir), "TF_RECORD": str(record)})
    out = f"exit {run.returncode}\n{run.stdout}{run.stderr}"
    assert record.exists(), out
    return out, json.loads(record.read_text()), tmpdir


def _assert_nothing_left(recorded: dict, tmpdir: Path) -> None:
    """No recorded process exists any more (a zombie counts) and TMPDIR is empty."""
    processes = [recorded["broker"], *recorded["workers"]]
    assert len(processes) == 3
    alive = {pid: state for pid, start in processes
             if (state := _still_running(pid, start)) is not None}
    assert not alive, f"processes the fixtures started still exist (pid: state): {alive}"
    assert not Path(recorded["workdir"]).exists()
    assert not _leftovers(tmpdir), f"left in TMPDIR: {_leftovers(tmpdir)}"


def test_failed_test_mid_rollout_leaves_no_process_and_no_file(tmp_path: Path) -> None:
    """A test fails while a rollout runs on 12 devices in 2 worker processes; the next test
    still gets the session's Mosquitto, and after the run no process and no file is left."""
    out, recorded, tmpdir = _run_on_mosquitto(tmp_path, "test_mid_rollout.py", MID_ROLLOUT)
    assert "1 failed, 1 passed" in out and "mid-rollout" in out, out
    section = out.partition("- trustfleet fleet -")[2]
    assert re.search(r"\n  rollout \d+ of v2: running at wave \w+\n", section), out
    # Both temporary directories were made in TMPDIR, so an empty TMPDIR means both are gone.
    assert {Path(recorded[d]).parent for d in ("workdir", "broker_dir")} == {tmpdir}
    _assert_nothing_left(recorded, tmpdir)


def test_ctrl_c_mid_rollout_leaves_no_process_and_no_file(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) while a rollout runs: pytest stops, and the fixtures' teardown still
    stops the broker and both worker processes and removes every file."""
    out, recorded, tmpdir = _run_on_mosquitto(tmp_path, "test_interrupted.py", INTERRUPTED)
    assert out.startswith("exit 2\n") and "KeyboardInterrupt" in out, out
    _assert_nothing_left(recorded, tmpdir)


def test_embedded_broker_indirect_devices_and_fleet_marker(tmp_path: Path) -> None:
    """--tf-broker embedded runs the docs' examples; tf_devices parametrized indirectly with a
    count or a dict; tf_fleet(thresholds=...) makes a root whose bundle threshold is 3."""
    user, tmpdir = tmp_path / "user", tmp_path / "tmp"
    tmpdir.mkdir()
    user.mkdir()
    write_user_tests(user)
    _write(user, "test_options.py", OPTIONS)
    run = run_user_pytest(sys.executable, user, "--tf-broker", "embedded", "-rA",
                          env={"TMPDIR": str(tmpdir)})
    out = run.stdout + run.stderr
    assert run.returncode == 0 and outcome_count(run, "passed") == 7, out
    for case in ("test_devices_parametrized[3]", "test_devices_parametrized[tf_devices1]",
                 "test_bundle_threshold_from_marker", "test_bad_bundle_halts_at_canary"):
        assert re.search(rf"PASSED \S+::{re.escape(case)}", out), out
    assert not _leftovers(tmpdir), f"left in TMPDIR: {_leftovers(tmpdir)}"
