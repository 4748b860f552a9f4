"""Drive the device core against a state directory on Linux.

The core (trustfleet_device.agent) decides; this module carries out its
actions: persistence through the A/B store, health checks through a
caller-supplied function, reports into a list.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trustfleet_device import agent as core
from trustfleet_device import policy, store
from trustfleet_device.storage import DirStorage

HealthCheck = Callable[[int], tuple[bool, str]]


def no_endpoints(version: int) -> tuple[bool, str]:
    """Health check used when no endpoints are configured: nothing to lose touch with."""
    return True, "no endpoints configured"


@dataclass
class Outcome:
    """What one step did: refusals, reports and whether a bundle was committed."""

    refused: list[tuple[str, str]] = field(default_factory=list)
    reports: list[dict] = field(default_factory=list)
    committed: int | None = None
    reverted: int | None = None


class LocalDevice:
    """One device whose state lives in a directory."""

    def __init__(self, state_dir: str | os.PathLike[str], config: core.Config | None = None,
                 health_check: HealthCheck = no_endpoints, clock: Callable[[], float] = time.time):
        self.state_dir = os.fspath(state_dir)
        self.config = config or core.Config()
        self.health_check = health_check
        self.clock = clock
        self.store = store.Store(DirStorage(self.state_dir))
        self.agent = core.Agent(self.config)
        self.boot_outcome = Outcome()
        root = self.store.read_root()
        if root is None:
            raise FileNotFoundError(f"{self.state_dir}: not initialised (no root.cose); run init")
        actions = self.agent.boot(root, self.store.load_state(), self.store.read_slots(), self.now())
        self._run(actions, self.boot_outcome)

    @classmethod
    def initialise(cls, state_dir: str | os.PathLike[str], root_raw: bytes,
                   config: core.Config | None = None) -> None:
        """Write the factory state: a verified root and a fresh state file."""
        config = config or core.Config()
        policy.load_trusted_root(root_raw, config.limits, config.fleet)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        s = store.Store(DirStorage(os.fspath(state_dir)))
        s.apply((store.WRITE_ROOT, root_raw))
        s.apply((store.SAVE, store.fresh_state()))

    def now(self) -> int:
        return int(self.clock())

    def install(self, raw: bytes) -> Outcome:
        """Offer a bundle, run its health check and commit or revert."""
        outcome = Outcome()
        self._run(self.agent.offer_bundle(raw, self.now()), outcome)
        return outcome

    def offer(self, kind: str, raw: bytes) -> Outcome:
        outcome = Outcome()
        handler = {"bundle": self.agent.offer_bundle, "root": self.agent.offer_root,
                   "timestamp": self.agent.offer_timestamp}[kind]
        self._run(handler(raw, self.now()), outcome)
        return outcome

    def status(self) -> dict:
        return self.agent.status(self.now())

    def _run(self, actions: list, outcome: Outcome) -> None:
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            if self.store.apply(action):
                if action[0] == store.COMMIT:
                    outcome.committed = action[1]["version"]
                elif action[0] == store.REVERT:
                    outcome.reverted = action[1]["bad"][-1] if action[1]["bad"] else None
                continue
            kind = action[0]
            if kind == core.HEALTH_CHECK:
                ok, detail = self.health_check(action[1])
                pending[:0] = self.agent.health(ok, detail, self.now())
            elif kind == core.REFUSED:
                outcome.refused.append((action[1], action[2]))
            elif kind == core.REPORT:
                outcome.reports.append(action[1])
