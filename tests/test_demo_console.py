"""`trustfleet demo --keep`: the fleet console and /metrics while the demo runs.

The demo runs as a subprocess (as `make demo` does, with --keep so it stays up
after its last step). Port 8080 is held by this test, so the demo must say so
and take a free port. While it runs, /metrics is scraped with urllib (0.05 s
between scrapes) and parsed with the Prometheus text parser: the v2 rollout's
trustfleet_rollout_wave goes 0, 1, 2 (-1 before its first wave is out) and
the rollout ends done; the v3 rollout halts
(trustfleet_rollout_state{state="halted"} 1) with failed devices in its wave.
During --keep the console's overview answers; Ctrl-C (SIGINT) then stops the
demo cleanly. The scraped rollout samples are saved to
test-artifacts/demo-metrics.txt.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.waiting import wait_for
from trustfleet_server.broker.mosquitto import port_open

TIMEOUT = 180
REPO = Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "test-artifacts" / "demo-metrics.txt"


class DemoRun:
    """`trustfleet demo` as a child process, its output collected line by line; with terminal=True
    its stdin, stdout and stderr are one pseudo-terminal (as in a shell), else pipes."""

    def __init__(self, out: Path, *extra: str, terminal: bool = False) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "trustfleet_server.cli", "demo", "--out", str(out), *extra]
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.master: int | None = None
        if terminal:
            self.master, slave = pty.openpty()
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
            os.close(slave)
            streams = [(os.fdopen(self.master, "r", errors="replace", closefd=False), self.lines)]
        else:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=env)
            streams = [(self.proc.stdout, self.lines), (self.proc.stderr, self.errors)]
        self._readers = [threading.Thread(target=self._read, args=pair, daemon=True) for pair in streams]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        try:
            for line in stream:
                into.append(line.replace("\r\n", "\n"))
        except OSError:  # the terminal's other side closed (EIO)
            pass

    def type(self, text: str) -> None:
        """Type into the demo's terminal."""
        os.write(self.master, text.encode())

    @property
    def stdout(self) -> str:
        return "".join(self.lines)

    def output(self) -> str:
        return f"{self.stdout[-4000:]}\n--- stderr ---\n{''.join(self.errors)[-4000:]}"

    def find(self, pattern: str, what: str, timeout: float = 60) -> re.Match:
        def found() -> re.Match | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited {self.proc.returncode} before {what}\n{self.output()}")
            return re.search(pattern, self.stdout, re.M)

        return wait_for(found, what, timeout)

    def stop(self) -> None:
        """Ctrl-C if it still runs (it stops its broker and devices), killed if that does not end it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for t in self._readers:
            t.join(5)
        if self.master is not None:
            os.close(self.master)
            self.master = None


def scrape(url: str) -> tuple[str, list[tuple[str, dict[str, str], float]]]:
    """/metrics as text and as (sample name, labels, value), parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
               for s in family.samples]
    return text, samples


def value(samples, name: str, **labels: str) -> float | None:
    for n, have, v in samples:
        if n == name and all(have.get(k) == want for k, want in labels.items()):
            return v
    return None


def rollout_of(samples, version: int) -> str | None:
    """The rollout id whose trustfleet_rollout_info has this bundle version."""
    for n, labels, _ in samples:
        if n == "trustfleet_rollout_info" and labels.get("version") == str(version):
            return labels["rollout"]
    return None


def rollout_lines(samples) -> dict[str, float]:
    """The rollout samples as {'name{label="value",...}': value}."""
    return {f"{n}{{{','.join(f'{k}={v!r}' for k, v in sorted(labels.items()))}}}": v
            for n, labels, v in samples if n.startswith("trustfleet_rollout")}


def hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:port so nobody else can (None when someone already does)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
    except OSError:
        sock.close()
        return None
    return sock


@pytest.mark.timeout(TIMEOUT + 60)
def test_demo_metrics_show_waves_progress_and_halt_and_the_console_stays_up_with_keep(tmp_path):
    out = tmp_path / "demo-out"
    held = hold(8080)  # taken either way: the demo must fall back to a free port and say so
    demo = DemoRun(out, "--keep", "120")
    try:
        demo.find(r"^# in another terminal: curl ", "the console's lines")
        m = demo.find(r"^fleet console: (http://127\.0\.0\.1:(\d+)/)", "the console's address")
        base, port = m.group(1), int(m.group(2))
        assert port != 8080
        text = demo.stdout
        assert re.search(rf"^# 127\.0\.0\.1:8080 is taken \(.+\): the console listens on free port {port} "
                         r"instead$", text, re.M), text
        # The serve line, the addresses, the token file and a ready curl line, before any rollout.
        before = text.split("rollout start", 1)[0]
        tokens = out / "keys" / "console.tokens"
        assert f"--http 127.0.0.1:{port} --token-file {tokens} &" in before, before
        assert f"metrics:       {base}metrics" in before
        assert f"operator token: {tokens}" in before
        assert f"curl -s {base}metrics | grep '^trustfleet_rollout'" in before
        assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
        assert re.search(r"^demo:\S{32}$", tokens.read_text(), re.M), "one demo:TOKEN line"

        # Scrape during the run until the v3 rollout has halted.
        started = time.monotonic()
        log: list[str] = []
        shown: dict[str, float] = {}
        waves: list[int] = []       # the v2 rollout's wave, each change once
        v2_states: list[str] = []
        halted = None
        while halted is None:
            assert demo.proc.poll() is None, f"the demo exited {demo.proc.returncode}\n{demo.output()}"
            assert time.monotonic() - started < TIMEOUT, f"no halted v3 rollout seen\n{demo.output()}"
            text, samples = scrape(f"{base}metrics")
            lines = rollout_lines(samples)
            if changed := sorted(f"{k} {v:g}" for k, v in lines.items() if shown.get(k) != v):
                log += [f"# {time.monotonic() - started:.1f} s: what changed", *changed]
            shown = lines
            if (r2 := rollout_of(samples, 2)) is not None:
                wave = value(samples, "trustfleet_rollout_wave", rollout=r2)
                if wave is not None and (not waves or waves[-1] != int(wave)):
                    waves.append(int(wave))
                state = next((lab["state"] for n, lab, v in samples if n == "trustfleet_rollout_state"
                              and lab.get("rollout") == r2 and v == 1), None)
                if state and (not v2_states or v2_states[-1] != state):
                    v2_states.append(state)
            r3 = rollout_of(samples, 3)
            if r3 is not None and value(samples, "trustfleet_rollout_state", rollout=r3, state="halted") == 1:
                halted = (r3, samples, text)
            time.sleep(0.05)
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text("# trustfleet_rollout_* samples scraped from the demo's /metrics\n"
                            + "\n".join(log) + "\n\n# the last scrape, whole\n" + halted[2])

        # v2: wave by wave, then done; v3: halted with failed devices, the fleet flagged halted.
        # (-1: before serve published the first wave.)
        # A wave that passes within one rollout step shows for about half a second; a scrape on a
        # loaded machine may miss it, so the scrapes must step forward, and the recorded result
        # of every wave must be there at the end.
        seen = [w for w in waves if w >= 0]
        assert waves[0] in (-1, 0) and seen == sorted(seen) and len(seen) >= 2 and seen[-1] == 2, \
            f"the v2 rollout's waves as scraped: {waves} (see {ARTIFACT})"
        assert v2_states[0] == "running" and v2_states[-1] == "done", v2_states
        r3, samples, _ = halted
        r2 = rollout_of(samples, 2)
        for wave in ("0", "1", "2"):
            done = [v for n, lab, v in samples if n == "trustfleet_rollout_wave_devices"
                    and lab.get("rollout") == r2 and lab.get("wave") == wave and lab.get("outcome") == "succeeded"]
            assert done and done[0] > 0, f"v2 wave {wave} has no recorded successes (see {ARTIFACT})"
        failed = [v for n, lab, v in samples if n == "trustfleet_rollout_wave_devices"
                  and lab.get("rollout") == r3 and lab.get("outcome") == "failed"]
        assert failed and sum(failed) > 0, f"no failed devices in the halted rollout (see {ARTIFACT})"
        assert value(samples, "trustfleet_rollout_halted", fleet="demo-fleet") == 1

        # After the last step, --keep holds everything up: the overview page answers.
        demo.find(r"^the broker, devices, server and fleet console \(.+\) stay up for 120 s; Ctrl-C stops sooner$",
                  "the --keep line", timeout=60)
        with urllib.request.urlopen(base, timeout=10) as resp:
            assert resp.status == 200
            assert "Overview" in resp.read().decode()
        assert demo.proc.poll() is None, "the demo stopped during --keep"

        # Ctrl-C ends the wait and the demo stops cleanly: exit 0, ports closed.
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(60) == 0, demo.output()
        demo.stop()
        assert "Ctrl-C: stopping" in demo.stdout
        assert re.search(r"demo finished in [\d.]+ s; devices disconnected, server and console stopped",
                         demo.stdout), demo.output()
        assert not port_open("127.0.0.1", port)
        if b := re.search(r"broker stopped \(port (\d+) closed\)", demo.stdout):
            assert not port_open("127.0.0.1", int(b.group(1)))
    finally:
        demo.stop()
        if held is not None:
            held.close()


def test_keep_is_refused_for_the_offline_walkthrough_and_must_be_a_duration(tmp_path):
    for args, says in ((["--offline", "--keep", "10"], "--keep: the offline walkthrough has nothing to keep up"),
                       (["--keep", "soon"], "--keep: 'soon' is not a duration")):
        proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", "demo", "--out",
                               str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.timeout(TIMEOUT)
def test_demo_on_a_terminal_stays_up_until_enter(tmp_path):
    out = tmp_path / "demo-out"
    demo = DemoRun(out, "--broker", "embedded", terminal=True)
    try:
        m = demo.find(r"^fleet console: (http://127\.0\.0\.1:\d+/)", "the console's address")
        demo.find(r"stay up until you press Enter \(or Ctrl-C\)$", "the wait for Enter", timeout=TIMEOUT)
        time.sleep(1)  # still waiting, not stopping
        assert demo.proc.poll() is None, demo.output()
        with urllib.request.urlopen(m.group(1), timeout=10) as resp:
            assert resp.status == 200
        demo.type("\n")
        assert demo.proc.wait(60) == 0, demo.output()
        demo.stop()
        assert "Ctrl-C: stopping" not in demo.stdout
        assert re.search(r"demo finished in [\d.]+ s; devices disconnected, server and console stopped",
                         demo.stdout), demo.output()
    finally:
        demo.stop()
