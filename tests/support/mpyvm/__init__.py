"""Run code inside the real MicroPython VM (WebAssembly build) from pytest.

A Node.js child process (``runner.mjs`` next to this file) loads the npm
package ``@micropython/micropython-webassembly-pyscript``, copies the device
package ``device/trustfleet_device`` to ``/lib/trustfleet_device`` in the
VM's in-memory filesystem, and answers JSON-line requests. Each request is
one ``runPython`` call, so interpreter state (globals, imported modules, VM
files) persists between requests until :meth:`MicroPythonVM.reset`.

    with MicroPythonVM() as vm:
        vm.run("import trustfleet_device")
        out = vm.run("print(trustfleet_device.VERSION)")
"""

from __future__ import annotations

import base64
import collections
import json
import os
import queue
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_HEAP",
    "DEFAULT_TIMEOUT",
    "NPM_PACKAGE",
    "REPO_ROOT",
    "HarnessError",
    "MicroPythonError",
    "MicroPythonTimeout",
    "MicroPythonVM",
    "available",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
RUNNER = Path(__file__).resolve().with_name("runner.mjs")
PACKAGE_DIR = REPO_ROOT / "device" / "trustfleet_device"
NPM_PACKAGE = "@micropython/micropython-webassembly-pyscript"
DEFAULT_HEAP = 256 * 1024
DEFAULT_TIMEOUT = 120.0
START_TIMEOUT = 60.0

_MARK = "\x1empyvm-mem"  # prefix of the line mem_alloc_between() appends


class HarnessError(RuntimeError):
    """The harness itself failed: node died, protocol broke, VM filesystem error."""


class MicroPythonTimeout(HarnessError):
    """A request took longer than the timeout; the node process was killed."""


class MicroPythonError(Exception):
    """Code run inside the VM raised. ``str(exc)`` is MicroPython's traceback."""

    def __init__(self, traceback: str, *, type: str = "", stdout: str = "") -> None:
        super().__init__(traceback)
        self.traceback = traceback
        self.type = type  # exception class name, e.g. "ValueError"
        self.stdout = stdout  # what the code printed before raising


def _npm_entry(repo_root: Path) -> Path:
    return repo_root / "node_modules" / NPM_PACKAGE / "micropython.mjs"


def available(repo_root: Path | str = REPO_ROOT) -> tuple[bool, str]:
    """(True, description) if node is on PATH and the npm package is installed."""
    node = shutil.which("node")
    if node is None:
        return False, "`node` not found on PATH"
    entry = _npm_entry(Path(repo_root))
    if not entry.is_file():
        return False, f"{NPM_PACKAGE} not installed ({entry} missing)"
    try:
        version = json.loads((entry.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = "?"
    return True, f"node at {node}, {NPM_PACKAGE} {version}"


def _heap_from_env() -> int:
    text = os.environ.get("MPYVM_HEAP", "").strip().lower()
    if not text:
        return DEFAULT_HEAP
    m = re.fullmatch(r"(\d+)([km]?)", text)
    if not m:
        raise ValueError(f"bad MPYVM_HEAP: {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2)]


class MicroPythonVM:
    """One MicroPython VM in a Node.js child process.

    ``heap`` is the first GC arena in bytes (default: ``$MPYVM_HEAP`` or
    256 KiB); ``timeout`` bounds every request in seconds. A request that
    times out kills the process and raises :class:`MicroPythonTimeout`; if the
    process has died, the next request starts a fresh one (state is lost;
    ``restarts`` counts these).
    """

    def __init__(
        self,
        package_dir: Path | str | None = PACKAGE_DIR,
        *,
        heap: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        node: str = "node",
        repo_root: Path | str = REPO_ROOT,
    ) -> None:
        self.package_dir = Path(package_dir) if package_dir is not None else None
        self.heap = heap if heap is not None else _heap_from_env()
        self.timeout = timeout
        self.node = node
        self.repo_root = Path(repo_root)
        self.restarts = 0
        self.start_info: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._next_id = 0
        self._closed = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> MicroPythonVM:
        """Start node and wait until the VM is loaded. Idempotent."""
        if self._alive():
            return self
        self._closed = False
        cmd = [self.node, str(RUNNER), "--heap", str(self.heap)]
        if self.package_dir is not None:
            cmd += ["--package", str(self.package_dir)]
        self._lines = queue.Queue()
        self._stderr.clear()
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.repo_root,  # node resolves the npm package from here up
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        threading.Thread(
            target=self._pump_stdout, args=(self._proc, self._lines), daemon=True
        ).start()
        threading.Thread(target=self._pump_stderr, args=(self._proc,), daemon=True).start()
        ready = self._receive(0, min(self.timeout, START_TIMEOUT) if self.timeout else None)
        if not ready.get("ok"):
            self._kill()
            raise HarnessError(f"MicroPython VM failed to start: {ready.get('error')}")
        self.start_info = ready
        return self

    def close(self) -> None:
        """Close stdin (the runner then exits) and reap the process."""
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def __enter__(self) -> MicroPythonVM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    # -- transport ---------------------------------------------------------

    @staticmethod
    def _pump_stdout(proc: subprocess.Popen[bytes], lines: queue.Queue[bytes | None]) -> None:
        # Each process gets its own queue: a killed process's EOF must not
        # reach its successor.
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # EOF

    def _pump_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    def stderr_tail(self, n: int = 20) -> str:
        """The runner's last stderr lines (node warnings, js.console output)."""
        return "\n".join(list(self._stderr)[-n:])

    def _receive(self, req_id: int, timeout: float | None) -> dict[str, Any]:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self._kill()
                raise MicroPythonTimeout(
                    f"no answer from the MicroPython VM within {timeout} s; process killed"
                ) from None
            if line is None:
                proc = self._proc
                code = proc.wait() if proc is not None else None
                self._proc = None
                raise HarnessError(
                    f"MicroPython runner exited (code {code}) before answering\n"
                    f"{self.stderr_tail()}"
                )
            try:
                msg = json.loads(line)
            except ValueError:
                self._stderr.append("stdout (not JSON): " + line.decode("utf-8", "replace"))
                continue
            if msg.get("id") == req_id:
                return msg
            if msg.get("id") is None:
                raise HarnessError(f"runner rejected a request: {msg.get('error')}")
            # A stale answer (e.g. to a request abandoned earlier): skip it.

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one raw request and return the runner's answer (``ok`` may be False)."""
        if self._closed:
            raise HarnessError("MicroPythonVM is closed")
        if not self._alive():
            if self._proc is not None or self.start_info:
                self.restarts += 1
            self._proc = None
            self.start()
        assert self._proc is not None and self._proc.stdin is not None
        self._next_id += 1
        req_id = self._next_id
        data = json.dumps({"id": req_id, "op": op, **fields}).encode() + b"\n"
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except OSError as exc:
            self._kill()
            raise HarnessError(f"cannot write to the runner: {exc}\n{self.stderr_tail()}") from exc
        return self._receive(req_id, self.timeout if timeout is None else timeout)

    def _fs_request(self, op: str, **fields: Any) -> dict[str, Any]:
        resp = self.request(op, **fields)
        if not resp.get("ok"):
            err = resp.get("error", "")
            if resp.get("errno_name") == "ENOENT":
                raise FileNotFoundError(err)
            if resp.get("type") in ("ErrnoError", "HostError"):
                raise OSError(err)
            raise HarnessError(err)
        return resp

    # -- operations --------------------------------------------------------

    def run(self, code: str) -> str:
        """Run ``code`` in the VM's ``__main__``; return what it printed.

        Raises :class:`MicroPythonError` (with the MicroPython traceback) if
        the code raised, including ``SystemExit``.
        """
        resp = self.request("run", code=code)
        if not resp.get("ok"):
            if not resp.get("python"):  # a JS-side failure, e.g. a wasm trap
                raise HarnessError(resp.get("error", "run failed"))
            raise MicroPythonError(
                resp.get("error", ""), type=resp.get("type", ""), stdout=resp.get("stdout", "")
            )
        return resp.get("stdout", "")

    def run_json(self, code: str) -> Any:
        """Run ``code`` whose last printed line is JSON; return it parsed."""
        out = self.run(code)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if not lines:
            raise HarnessError("run_json: the code printed nothing")
        try:
            return json.loads(lines[-1])
        except ValueError as exc:
            raise HarnessError(f"run_json: last line is not JSON: {lines[-1]!r}") from exc

    def write(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` in the VM filesystem, creating parent dirs."""
        self._fs_request("write", path=path, data_b64=base64.b64encode(data).decode("ascii"))

    def read(self, path: str) -> bytes:
        """Read a file from the VM filesystem (``FileNotFoundError`` if absent)."""
        return base64.b64decode(self._fs_request("read", path=path)["data_b64"])

    def load_host(self, host_path: Path | str, vm_path: str) -> int:
        """Copy a host file (or directory tree) into the VM; returns bytes copied."""
        return self._fs_request("load_host", host_path=str(host_path), vm_path=vm_path)["bytes"]

    def reset(self) -> None:
        """Replace the interpreter with a fresh one (package copied again).

        Restarts the node process if it has died.
        """
        if not self._alive():
            self.request("ping")  # restarts the process: already fresh
            return
        resp = self.request("reset")
        if not resp.get("ok"):
            self._kill()
            raise HarnessError(resp.get("error", "reset failed"))

    def mem_alloc_between(self, setup_code: str, code: str) -> dict[str, Any]:
        """Measure the GC-heap allocation of ``code`` inside the VM.

        Requests, each its own ``runPython`` call: ``setup_code``;
        ``gc.collect()``; read ``mem_info``; read ``gc.mem_alloc()``
        (``before``); ``code`` with a line prepended and lines appended that
        read ``gc.mem_alloc()`` right before and after it runs and then
        ``micropython.mem_info()``; ``gc.collect()``; read ``gc.mem_alloc()``
        (``retained``).

        What the figures mean on this port (webassembly, v1.27): the heap
        grows on demand (``heap`` sets only the first arena) and the GC never
        runs inside a ``runPython`` call; a collection (explicit or forced by
        a full arena) is deferred until control returns to JS. So
        ``allocated`` is the *total* bytes allocated while ``code`` ran,
        garbage included: an upper bound on the peak live heap, not a proof
        that ``code`` fits a given heap (nothing here is a hard cap; test on
        a board or the unix port with a fixed heap for that). ``compile`` is
        what parsing/compiling ``code`` itself allocated: define functions in
        ``setup_code`` and only call them in ``code`` to keep it small.
        Tracebacks from ``code`` are off by one line (the prepended line).

        Returns ints: ``heap`` (first arena asked for), ``before``,
        ``compile`` (includes the two harness lines), ``allocated``,
        ``retained`` (live bytes left after a collection, relative to
        ``before``; negative if ``code`` dropped earlier objects),
        ``heap_total_before`` and ``heap_total_peak`` (GC heap size from
        ``micropython.mem_info()`` before, and at the end of ``code`` where
        it is largest; it exceeds the first arena when that overflowed), and
        the ``stdout`` of ``code``.
        """
        if setup_code:
            self.run(setup_code)
        self.run("import gc; gc.collect()")
        heap_before = self._mem_info()["total"]
        # Bind the helper names now, so that the measured call does not grow
        # the globals dict for them.
        before = int(
            self.run(
                "import gc as _mpyvm_gc, micropython\n"
                "_mpyvm_mi = micropython.mem_info\n"
                "_mpyvm_a0 = _mpyvm_a1 = 0\n"
                "print(_mpyvm_gc.mem_alloc())"
            ).split()[-1]
        )
        out = self.run(
            "_mpyvm_a0 = _mpyvm_gc.mem_alloc()\n"
            + code
            + "\n_mpyvm_a1 = _mpyvm_gc.mem_alloc()\n"
            + f"print({_MARK!r}, _mpyvm_a0, _mpyvm_a1)\n"
            + "_mpyvm_mi()\n"
        )
        head, sep, tail = out.rpartition(_MARK)
        if not sep:
            raise HarnessError("mem_alloc_between: measurement line missing")
        start, end = (int(x) for x in tail.split()[:2])
        heap_peak = self._parse_mem_info(tail)["total"]
        self.run("_mpyvm_gc.collect()")
        retained = int(self.run("print(_mpyvm_gc.mem_alloc())").split()[-1])
        return {
            "heap": self.heap,
            "before": before,
            "compile": start - before,
            "allocated": end - start,
            "retained": retained - before,
            "heap_total_before": heap_before,
            "heap_total_peak": heap_peak,
            "stdout": head,
        }

    def _mem_info(self) -> dict[str, int]:
        return self._parse_mem_info(self.run("import micropython\nmicropython.mem_info()"))

    @staticmethod
    def _parse_mem_info(text: str) -> dict[str, int]:
        m = re.search(r"GC: total: (\d+), used: (\d+), free: (\d+)", text)
        if not m:
            raise HarnessError(f"unexpected mem_info output: {text!r}")
        total, used, free = (int(g) for g in m.groups())
        return {"total": total, "used": used, "free": free}
