"""What a test reads about its fleet: typed snapshots, never JSON to parse.

`FleetState` is one moment: every simulated device (`DeviceState`), the
version the fleet last published (`target`), the newest rollout as the
server's store holds it (`RolloutState`) and the reports the server stored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trustfleet_server import rollout as ro
from trustfleet_server.sim.report import DeviceResult, unsettled_reason


@dataclass(frozen=True)
class Refusal:
    """A document the device refused: `kind` is root, bundle or timestamp."""

    kind: str
    reason: str


@dataclass(frozen=True)
class Revert:
    """A bundle the device installed on trial and reverted (its health check refused it)."""

    version: int | None
    reason: str


@dataclass(frozen=True)
class DeviceState:
    """One simulated device as it is now.

    state: ok, trial (a new store waits for its health check), behind, stale,
    no-store, or bricked (it could not boot: always a finding).
    """

    id: str
    group: str | None
    faults: tuple[str, ...]
    online: bool
    state: str
    version: int | None
    bad: tuple[int, ...]
    refusals: tuple[Refusal, ...]
    reverts: tuple[Revert, ...]
    bricked: str | None = None   # why it could not boot, when state is "bricked"

    @classmethod
    def of(cls, d: DeviceResult) -> DeviceState:
        refusals = tuple(Refusal(e[1], e[2]) for e in d.events if e[0] == "refused")
        reverts = tuple(Revert(e[1], e[2]) for e in d.events if e[0] == "reverted")
        return cls(d.id, d.group, tuple(d.faults), d.online, d.state, d.version, tuple(d.bad),
                   refusals, reverts, d.bricked)

    def runs(self, version: int) -> bool:
        """Runs `version` or newer, online and not on trial."""
        return self.online and self.state != "trial" and (self.version or 0) >= version


@dataclass(frozen=True)
class RolloutState:
    """A staged rollout as the server's store holds it.

    state: running, paused, done, halted or aborted. failing: the devices
    the halt named (empty unless halted by its failure threshold).
    """

    id: int
    version: int
    state: str
    wave: str | None
    waves: tuple[str, ...]
    halt_reason: str | None
    failing: tuple[str, ...]

    @classmethod
    def of(cls, r: ro.Rollout) -> RolloutState:
        wave = r.wave
        return cls(r.id, r.version, r.state, wave.name if wave is not None else None,
                   tuple(w.name for w in r.waves), r.halt_reason,
                   tuple(f["device"] for f in (r.failing or ())))

    @property
    def done(self) -> bool:
        return self.state == ro.DONE

    @property
    def halted(self) -> bool:
        return self.state == ro.HALTED

    @property
    def final(self) -> bool:
        return self.state in ro.FINAL


@dataclass(frozen=True)
class Report:
    """A report a device sent and the server stored (a pin failure, a refused document)."""

    device: str
    kind: str
    time: int
    body: dict[str, Any]


@dataclass(frozen=True)
class FleetState:
    """The fleet at one moment (Fleet.state(), and what Fleet.wait hands its condition)."""

    devices: tuple[DeviceState, ...]
    target: int | None
    rollout: RolloutState | None = None
    reports: tuple[Report, ...] = field(default=())

    @property
    def versions(self) -> dict[int | None, int]:
        """How many devices run each version (None: no store yet)."""
        return dict(Counter(d.version for d in self.devices))

    @property
    def states(self) -> dict[str, int]:
        return dict(Counter(d.state for d in self.devices))

    @property
    def online(self) -> int:
        return sum(1 for d in self.devices if d.online)

    @property
    def converged(self) -> bool:
        """Every device is online, not on trial, and runs the last published version or newer,
        or (an injected health-fail fault) has reverted it and marked it bad. The rule is
        `trustfleet simulate`'s own (sim.report.unsettled_reason), so the two never disagree."""
        return (self.target is not None and bool(self.devices)
                and all(self.unsettled(d) is None for d in self.devices))

    def unsettled(self, d: DeviceState) -> str | None:
        """Why `d` does not count towards convergence on the target (None: it does)."""
        return unsettled_reason(d, self.target)

    @property
    def reverted(self) -> tuple[DeviceState, ...]:
        """Devices that reverted a bundle at least once."""
        return tuple(d for d in self.devices if d.reverts)

    @property
    def refused(self) -> tuple[DeviceState, ...]:
        """Devices that refused a document at least once."""
        return tuple(d for d in self.devices if d.refusals)

    def running(self, version: int) -> tuple[DeviceState, ...]:
        """Devices that run `version` (exactly)."""
        return tuple(d for d in self.devices if d.version == version)

    def in_group(self, group: str | None) -> tuple[DeviceState, ...]:
        return tuple(d for d in self.devices if d.group == group)

    def device(self, ident: str) -> DeviceState:
        """Raises: KeyError for an id no simulated device has."""
        for d in self.devices:
            if d.id == ident:
                return d
        raise KeyError(ident)

    def describe(self, limit: int = 5) -> str:
        """One paragraph for a failed wait: counts, the rollout, and a few devices that lag."""
        versions = ", ".join(f"{'none' if v is None else f'v{v}'}: {n}"
                             for v, n in sorted(self.versions.items(), key=lambda x: x[0] or -1))
        states = ", ".join(f"{k}: {n}" for k, n in sorted(self.states.items()))
        parts = [f"{len(self.devices)} devices, {self.online} online; versions {versions or '-'}; "
                 f"states {states or '-'}; last published "
                 f"{'nothing' if self.target is None else f'v{self.target}'}"]
        if self.rollout is not None:
            r = self.rollout
            parts.append(f"rollout {r.id} of v{r.version}: {r.state}"
                         + (f" at wave {r.wave}" if r.wave and not r.final else "")
                         + (f" ({r.halt_reason})" if r.halt_reason else ""))
        lagging = [d for d in self.devices if self.unsettled(d) is not None]
        for d in lagging[:limit]:
            why = d.reverts[-1].reason if d.reverts else (d.refusals[-1].reason if d.refusals else "")
            parts.append(f"{d.id}: {self.unsettled(d)}"
                         + (f", faults {','.join(d.faults)}" if d.faults else "")
                         + (f"; last: {why}" if why else ""))
        if len(lagging) > limit:
            parts.append(f"... and {len(lagging) - limit} more unsettled")
        return "; ".join(parts[:1]) + ("\n  " + "\n  ".join(parts[1:]) if parts[1:] else "")
