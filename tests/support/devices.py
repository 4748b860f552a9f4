"""The device agent on in-memory flash (MemStorage, which can cut power after any
operation), with a fake clock and a scripted health check; no sockets, no sleeping.
"""

from __future__ import annotations

from support.fleetkit import DAY, NOW, Repo
from trustfleet_device import agent as core
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage, PowerCut

FIRMWARE_TIME = NOW - 30 * DAY


class Clock:
    def __init__(self, t: int = NOW) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


class Health:
    """A scripted health check: answers from a list, records what it was asked."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked: list[int] = []

    def __call__(self, bundle, trusted_time: int) -> tuple[bool, str]:
        self.asked.append(bundle.version)
        ok = self.answers.pop(0) if self.answers else True
        return ok, "endpoints reachable" if ok else "TLS to api.acme.example failed"


def config(repo: Repo) -> core.Config:
    return core.Config(fleet=repo.fleet, firmware_time=FIRMWARE_TIME, health_timeout=60)


def fresh_device(repo: Repo, health=runner.no_endpoints, clock=None, storage=None):
    storage = storage or MemStorage()
    runner.initialise(storage, repo.root_raw, config(repo))
    return runner.Device(storage, config(repo), health, clock or Clock()), storage


def reboot(storage: MemStorage, repo: Repo, health=runner.no_endpoints, clock=None) -> runner.Device:
    return runner.Device(storage.reboot(), config(repo), health, clock or Clock())


def cut_points(repo, bundles, health_answers):
    """Run one install of v2 over committed v1 with power cut after k ops, for every k."""
    base, _ = fresh_device(repo, Health(True))
    base.offer("bundle", bundles[1])
    snapshot = dict(base.store.storage.files)
    outcomes = []
    k = 0
    while True:
        storage = MemStorage(snapshot, cut_after=k)
        try:
            device = runner.Device(storage, config(repo), Health(*health_answers), Clock())
            device.offer("bundle", bundles[2])
            cut = False
        except PowerCut:
            cut = True
        after = runner.Device(storage.reboot(), config(repo), Health(True), Clock())
        status = after.status()
        # The invariant: a verified store, old or new, and a consistent state.
        assert status["state"] == "ok", (k, status)
        assert status["version"] in (1, 2), (k, status)
        assert after.agent.bundle is not None and after.agent.bundle.version == status["version"]
        assert not after.agent.state["trial"]
        assert status["floor"] == status["version"], (k, status)
        outcomes.append((k, status["version"]))
        if not cut:
            return outcomes
        k += 1
