"""`trustfleet demo` (what `make demo` runs): the fleet demo end to end, as a subprocess.

It must exit 0 well within its timeout, show the staged rollout finishing
and the bad bundle halted on the canary wave with the failing devices
named, and leave nothing behind: no process that belongs to it, and the
broker's port closed. Run with the default broker, which must be a private
Mosquitto here (missing mosquitto skips the test, or fails it under CI=true;
it never quietly runs on the embedded broker instead), and with the
embedded broker asked for by name. The default's fallback to the embedded
broker when mosquitto is absent is checked on its own, without a demo run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.environment import require_tool
from trustfleet_server.broker.mosquitto import mosquitto_binary, port_open
from trustfleet_server.sim import brokers

TIMEOUT = 120


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (e.g. the demo's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def run_demo(out: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", "demo", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def check_run(out: Path, stdout: str) -> None:
    # The staged rollout passes wave after wave and finishes.
    assert re.search(r"canary \[#+\] 5/5 ok\s+\(passed\)", stdout), stdout
    assert re.search(r"50%\s+\[#+\] \d+/\d+ ok\s+\(passed\)", stdout), stdout
    assert "rollout 1 done: 50/50 devices run v2" in stdout
    # The bad bundle fails the canary's health checks and the rollout halts by itself.
    assert re.search(r"rollout 2 HALTED by itself: wave canary: 5 of 5 devices failed", stdout), stdout
    assert re.search(r"failing: dev-\d{5}: marked v3 bad: health check failed: .*no key matches the pins",
                     stdout), stdout
    assert "50/50 devices run v2, 0 run v3; the wave topics were cleared" in stdout
    # The fleet table, and the commands printed along the way.
    assert "$ trustfleet fleet status" in stdout and re.search(r"v2\s+50\s+50", stdout)
    for command in ("$ trustfleet serve ", "$ trustfleet simulate --devices 50 ", "$ trustfleet publish "):
        assert command in stdout
    # Nothing left: no process mentions the demo's directory, the broker's port is closed.
    m = re.search(r"broker stopped \(port (\d+) closed\)", stdout)
    assert m, stdout[-2000:]
    assert not port_open("127.0.0.1", int(m.group(1)))
    assert processes_mentioning(str(out)) == []


@pytest.mark.timeout(TIMEOUT + 30)
def test_fleet_demo_rolls_out_then_halts_a_bad_bundle_on_a_private_mosquitto(tmp_path):
    # What `make demo` runs: no --broker, so a private Mosquitto when one is installed.
    require_tool("mosquitto", "apt-get install mosquitto", ["/usr/sbin/mosquitto"])
    assert mosquitto_binary(), "the demo would not find the mosquitto found here"
    out = tmp_path / "demo-out"
    stdout = run_demo(out)
    check_run(out, stdout)
    assert "broker: private Mosquitto on 127.0.0.1:" in stdout


def test_default_broker_is_the_embedded_one_when_mosquitto_is_missing(monkeypatch):
    monkeypatch.setattr(brokers, "mosquitto_binary", lambda: None)
    handle = brokers.open_broker("auto")
    try:
        assert handle.kind == "embedded"
        assert port_open(handle.url.host, handle.url.port)
    finally:
        handle.stop()


@pytest.mark.timeout(TIMEOUT + 30)
def test_fleet_demo_on_the_embedded_broker(tmp_path):
    out = tmp_path / "demo-out"
    stdout = run_demo(out, "--broker", "embedded")
    check_run(out, stdout)
    assert "broker: embedded broker on 127.0.0.1:" in stdout


@pytest.mark.timeout(TIMEOUT + 30)
def test_offline_walkthrough_is_still_there(tmp_path):
    out = tmp_path / "offline"
    stdout = run_demo(out, "--offline")
    assert "Pins past their expiry fail open to CA validation" in stdout
    assert "(both TLS servers stopped)" in stdout
