"""`trustfleet-agent ARGS` as a subprocess whose stderr lines are collected as they come, for
tests that watch a long-running agent command and then end it with a signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from support.tlsagent import ENV

WAIT = 20.0


class AgentProcess:
    """The agent running `args`; `lines` holds its stderr so far."""

    def __init__(self, *args: object):
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "trustfleet_pi.cli", *map(str, args)],
                                     env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, fragment: str) -> None:
        """Until a stderr line holds `fragment`; AssertionError after WAIT s or when it exits first."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(fragment in line for line in self.lines):
                return
            time.sleep(0.05)
        raise AssertionError(f"no line {fragment!r}: {self.lines}")

    def end(self, signum: int) -> int:
        """Send `signum` (if it still runs) and return its exit code; killed after WAIT s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=5)

    def interrupt(self) -> int:
        return self.end(signal.SIGINT)

    def stop(self) -> int:
        return self.end(signal.SIGTERM)
