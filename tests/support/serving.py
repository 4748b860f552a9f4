"""serve as the tests run it: a FleetServer on a background thread, or a `trustfleet serve` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.waiting import wait_for

CONSOLE_LINE = "fleet console: "


class RecordingLink:
    """Stands in for serve's broker link (FleetServer.link) in tests that call its steps directly:
    keeps what serve publishes. `client_id` is the worker's name in the lease and the audit trail."""

    connected = False

    def __init__(self, client_id: str = "recorder") -> None:
        self.client_id = client_id
        self.published: list[tuple[str, bytes]] = []

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        self.published.extend(messages)


class ServerThread:
    """Runs `srv.run(duration=...)` on a daemon thread; what it raises is kept in `errors`."""

    def __init__(self, srv: Any, duration: float = 120.0) -> None:
        self.srv = srv
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(duration,), daemon=True)
        self.thread.start()

    def _run(self, duration: float) -> None:
        try:
            self.srv.run(duration=duration)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(exc)


@contextmanager
def running(srv: Any, db: Any, what: str = "the server to connect", *, duration: float = 120.0,
            join: float = 30.0) -> Iterator[ServerThread]:
    """Start `srv`, wait until it has read the retained statuses, and at the end stop it,
    close `db` and fail the test if the server did not stop or raised."""
    run = ServerThread(srv, duration)
    try:
        wait_for(lambda: srv.synced or run.errors, what)
        yield run
    finally:
        srv.stop()
        run.thread.join(join)
        db.close()
    assert not run.thread.is_alive(), "the server did not stop"
    assert not run.errors, run.errors


class ServeProcess:
    """One `python -m trustfleet_server.cli serve` process: its --json summary goes to
    <workdir>/<name>.json and its log to <workdir>/<name>.log; the name is its client id."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.out, self.err = workdir / f"{name}.json", workdir / f"{name}.log"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "trustfleet_server.cli", "serve", *argv,
                                          "--client-id", name, "--json"],
                                         stdout=out, stderr=err, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def console_url(self) -> str | None:
        """The address `serve --http` printed once its console runs (on stderr: stdout holds only
        the --json summary); None until then. AssertionError when serve has exited."""
        for line in self.log().splitlines():
            if line.startswith(CONSOLE_LINE):
                return line[len(CONSOLE_LINE):].strip()
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()[-3000:]}")
        return None

    def stop(self) -> dict | None:
        """SIGTERM, then the summary it printed (None when it printed none: killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = self.out.read_text()
        return json.loads(text) if text.strip() else None
