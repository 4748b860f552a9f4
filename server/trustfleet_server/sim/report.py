"""What a simulation found: the fleet's progress added up over workers, the report and its text."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trustfleet_server.sim.config import FLAG_NAMES
from trustfleet_server.sim.config import HEALTH_FAIL as HEALTH_FAIL_FLAG


@dataclass
class Progress:
    """The fleet, added up over workers, at one moment."""

    devices: int
    online: int
    off: int
    versions: Counter
    states: Counter
    verified: list[int]
    settled: dict[int, int]
    commits: dict[int, list]
    first_seen: dict[int, float]
    t0: float | None
    counters: Counter
    elapsed: float = 0.0
    last_error: str | None = None
    oldest_connect: float | None = None   # wall time of the oldest connection still up
    refusal: str | None = None   # the first health check a trial store itself refused

    @classmethod
    def add(cls, snaps: list[dict], elapsed: float = 0.0) -> Progress:
        versions: Counter = Counter()
        states: Counter = Counter()
        counters: Counter = Counter()
        settled: Counter = Counter()
        verified: set[int] = set()
        commits: dict[int, list] = {}
        first: dict[int, float] = {}
        t0s = []
        connects = [s["oldest_connect"] for s in snaps if s.get("oldest_connect") is not None]
        for s in snaps:
            versions.update(s["versions"])
            states.update(s["states"])
            counters.update(s["counters"])
            settled.update(s["settled"])
            verified.update(s["verified"])
            for v, (n, lo, hi) in s["commits"].items():
                c = commits.setdefault(v, [0, lo, hi])
                c[0] += n
                c[1], c[2] = min(c[1], lo), max(c[2], hi)
            for v, t in s["first_seen"].items():
                first[v] = min(first.get(v, t), t)
            if s["t0"] is not None:
                t0s.append(s["t0"])
        return cls(sum(s["devices"] for s in snaps), sum(s["online"] for s in snaps),
                   sum(s["off"] for s in snaps), versions, states, sorted(verified), dict(settled),
                   commits, first, min(t0s) if t0s else None, counters, elapsed,
                   next((s["last_error"] for s in snaps if s.get("last_error")), None),
                   min(connects) if connects else None,
                   next((s["refusal"] for s in snaps if s.get("refusal")), None))

    def target(self, until: int | None) -> int | None:
        if until is not None:
            return until
        return max(self.verified) if self.verified else None

    def line(self, until: int | None) -> str:
        target = self.target(until)
        parts = [f"[{self.elapsed:6.1f}s]", f"online {self.online}/{self.devices}"]
        if target is not None:
            runs = sum(n for v, n in self.versions.items() if v is not None and v >= target)
            parts.append(f"v{target}: {runs} run it, {self.settled.get(target, 0)} settled")
        for state in ("trial", "rebooting"):
            if self.states.get(state):
                parts.append(f"{self.states[state]} {'on trial' if state == 'trial' else state}")
        if self.off:
            parts.append(f"{self.off} powered off")
        for key in ("power_cuts", "reordered", "duplicated"):
            if self.counters.get(key):
                parts.append(f"{key.replace('_', ' ')} {self.counters[key]}")
        return "  ".join(parts)


@dataclass
class DeviceResult:
    id: str
    group: str | None
    faults: tuple[str, ...]
    online: bool
    state: str
    version: int | None
    bad: list[int]
    commits: dict[int, float]
    cuts: int
    after_cut: list[tuple[Any, Any]]
    bricked: str | None
    events: list[tuple] = field(default_factory=list)   # newest refusals and reverts (worker.py)


@dataclass
class Report:
    """What a simulation found. `to_json()` is what `simulate --json` prints."""

    devices: list[DeviceResult]
    target: int | None
    converged: bool
    convergence_s: float | None
    from_publish_s: float | None
    committed: int
    online: int
    states: dict[str, int]
    versions: dict[str, int]
    faults: dict[str, Any]
    elapsed_s: float
    peak_rss_kb: dict[str, Any]
    broker: str
    processes: int
    t0: float | None = None
    last_commit: float | None = None
    reverted: list[dict] = field(default_factory=list)
    why: dict | None = None   # set when not converged: which devices, in what state, after which fault
    refused: int = 0   # devices that reverted the target with no health-fail fault injected
    refusal: str | None = None   # the first such health check's reason

    def by_fault(self, name: str) -> list[DeviceResult]:
        return [d for d in self.devices if name in d.faults]

    def to_json(self) -> dict:
        return {"devices": len(self.devices), "processes": self.processes, "broker": self.broker,
                "target_version": self.target, "converged": self.converged,
                "convergence_s": _round(self.convergence_s), "from_publish_s": _round(self.from_publish_s),
                "committed": self.committed, "refused_by_health_check": self.refused,
                "online": self.online, "states": self.states,
                "versions": self.versions, "faults": self.faults, "reverted": self.reverted[:50],
                "not_converged": self.why,
                "elapsed_s": _round(self.elapsed_s), "peak_rss_kb": self.peak_rss_kb}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# --------------------------------------------------------------------------- output


def render(report: Report) -> list[str]:
    """The report as text lines (what `simulate` prints without --json)."""
    n = len(report.devices)
    lines = [f"{n} devices on {report.broker}, {report.processes} process(es), "
             f"{report.elapsed_s:.1f} s"]
    if report.target is None:
        lines.append("no bundle reached the devices: nothing to converge on")
    else:
        head = "converged" if report.converged else "NOT converged"
        conv = f" in {report.convergence_s:.2f} s" if report.convergence_s is not None else ""
        pub = f" ({report.from_publish_s:.2f} s from the publish)" if report.from_publish_s is not None else ""
        lines.append(f"{head}: {report.committed}/{n} devices run v{report.target}{conv}{pub}; "
                     f"{report.online} online at the end")
    lines.append("states:   " + ", ".join(f"{k} {v}" for k, v in sorted(report.states.items())))
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(report.versions.items())))
    for name, value in report.faults.items():
        text = (", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
                if isinstance(value, dict) else str(value))
        lines.append(f"fault {name}: {text}")
    shown = [] if report.refused else report.reverted  # else listed below, with the reason
    for r in shown[:10]:
        was = f"v{r['version']}" if r["version"] is not None else "no bundle"
        lines.append(f"  reverted: {r['device']} ({r['group'] or 'no group'}) stays on {was}")
    if len(shown) > 10:
        lines.append(f"  ... and {len(shown) - 10} more reverted")
    if report.why:
        lines.append(f"why not converged: {report.why['reason']}")
        limit = 3 if len(report.why["by_reason"]) == 1 else 10  # one reason: a few examples do
        for d in report.why["devices"][:limit]:
            lines.append(f"  {d['device']}: {d['why']}"
                         + (f" (faults: {', '.join(d['faults'])})" if d["faults"] else ""))
        if report.why["unsettled"] > limit:
            lines.append(f"  ... and {report.why['unsettled'] - limit} more")
    rss = report.peak_rss_kb
    mem = f"peak RSS {rss['total'] / 1024:.0f} MB (coordinator {rss['coordinator'] / 1024:.0f} MB"
    if "workers" in rss:
        mem += ", workers " + " + ".join(f"{w / 1024:.0f}" for w in rss["workers"])
    mem += ")"
    if "broker" in rss:
        mem += f"; broker {rss['broker'] / 1024:.0f} MB"
    lines.append(mem)
    return lines


# --------------------------------------------------------------------------- why not converged


# The injected fault: a revert it causes is the expected end of that device's run.
HEALTH_FAIL = FLAG_NAMES[HEALTH_FAIL_FLAG]


def unsettled_reason(d: DeviceResult, target: int | None) -> str | None:
    """Why this device does not count as settled on `target` at the end (None: it does)."""
    if d.bricked:
        return f"bricked: {d.bricked}"
    if not d.online:
        return f"offline at the end (store: {'v' + str(d.version) if d.version else 'none'})"
    if target is None:
        return "no bundle newer than the factory image reached it"
    if d.state == "trial":
        return f"still on trial of a bundle (store v{d.version})"
    if (d.version or 0) >= target:
        return None
    if target in d.bad:
        return None if HEALTH_FAIL in d.faults else refused_reason(target)
    return f"still on v{d.version}: never received or never installed v{target}"


def refused_reason(target: int) -> str:
    return f"reverted v{target}: its health check refused the new store"


def explain(report: Report, cause: str, pending: list[str]) -> dict:
    """The not_converged object of the JSON report: the run's cause, the faults that had not
    happened yet, and every unsettled device (the first 50) with its state and faults."""
    rows = []
    kinds: dict[str, int] = {}
    for d in report.devices:
        why = unsettled_reason(d, report.target)
        if why is None:
            continue
        kind = why.split(":")[0].split(" (")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        rows.append({"device": d.id, "group": d.group, "online": d.online, "state": d.state,
                     "version": d.version, "faults": list(d.faults), "why": why})
    parts = [cause]
    if pending:
        parts.append("faults not yet applied: " + ", ".join(pending))
    if rows:
        parts.append(f"{len(rows)} of {len(report.devices)} devices unsettled ("
                     + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + ")")
    restart = report.faults.get("broker_restart")
    if restart and restart.get("restarts") and rows:
        parts.append(f"after the broker restart ({restart['signal']}) at t0+{restart['at_s']:g}s")
        behind = any(r["why"].startswith("still on v") for r in rows)
        if restart["signal"] == "kill" and not restart.get("republished") and behind:
            parts.append("a kill -9 loses the retained bundle: it must be published again "
                         "(--republish, or serve)")
    return {"reason": "; ".join(parts), "cause": cause, "faults_pending": pending,
            "unsettled": len(rows), "by_reason": kinds, "devices": rows[:50]}
