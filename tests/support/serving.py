"""A FleetServer on a background thread, as the serve tests run it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from support.waiting import wait_for


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
