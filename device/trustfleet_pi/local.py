"""The device core on a Linux state directory (Raspberry Pi)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from trustfleet_device.agent import Config
from trustfleet_device.documents import Bundle
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import DirStorage


class LocalDevice(runner.Device):
    """One device whose state lives in a directory."""

    def __init__(self, state_dir: str | os.PathLike[str], config: Config | None = None,
                 health_check: Callable[[Bundle, int], tuple[bool, str]] = runner.no_endpoints,
                 clock: Callable[[], float] = time.time):
        self.state_dir = os.fspath(state_dir)
        super().__init__(DirStorage(self.state_dir), config or Config(), health_check, clock)

    @classmethod
    def initialise(cls, state_dir: str | os.PathLike[str], root_raw: bytes,
                   config: Config | None = None) -> None:
        """Create the directory (0700) and write the factory state."""
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        runner.initialise(DirStorage(os.fspath(state_dir)), root_raw, config or Config())

    def install(self, raw: bytes) -> runner.Result:
        return self.offer("bundle", raw)
