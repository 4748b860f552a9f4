"""The staged-rollout engine: pure decisions, no I/O and no clock.

A rollout carries one signed bundle (already verified when it was started)
to the fleet in waves. The caller (`trustfleet serve`) passes the rollout,
the fleet's device rows (fleetdb.devices) and `now`; `step` returns the new
rollout and the actions to carry out, in order:

    ("publish_wave", wave, topics)   publish the bundle, retained, QoS 1, on each topic
    ("clear_waves", topics)          publish an empty retained message on each topic
    ("halt", reason, failing)        the rollout stopped itself; failing = [{"device", "reason"}]
    ("done",)                        every wave passed; the fleet topic carries the bundle
    ("note", text)                   something worth recording in the rollout's events

Waves (docs/topics.md): a wave is cumulative. {"name", "buckets": P} means
hash buckets [0, P) (`topics.bucket_bundle`); {"name", "groups": [...]}
means those rollout groups (`topics.group_bundle`). The wave that reaches
100 % also publishes the fleet topic (`topics.bundle`). The devices of wave
i are every device reached by waves 0..i, so a failure in an early wave
keeps counting. The last wave must reach the whole fleet (100 %).

Verdict of one device of the wave, for target version T, in this order:

1. success: `version >= T` and state "ok", "stale" or "behind" (a timestamp names an
   even newer version: the device still runs T);
2. failure: T is in `bad`, or the last event is "reverted" for T (detail
   "bundle vT: ..."; not when the reason is that its health endpoints were
   unreachable, agent.UNREACHABLE: that device is pending and tries again),
   or, once the wave's deadline has passed, the device still reports
   "no-store" (it was offered the bundle for a whole wave);
3. offline: state "offline" (its last will): counts as neither;
4. silent: after the deadline only, a device not heard from since the wave
   started: counts as neither;
5. pending: everything else (trial, older version, not reported yet).

Ratios are over the *counted* devices = success + failure + pending
(offline and silent ones are left out of numerator and denominator):

- failure ratio > max_failure, at any time: halt, naming the failing
  devices and their reasons, and clear every topic the rollout published;
- success ratio >= success: the wave passes; the next wave is published
  (or, after the last, the rollout is done and the bucket and group topics
  are cleared: the fleet topic carries the bundle);
- deadline (wave_started + deadline) reached without passing: halt. A wave
  whose counted set is empty at the deadline halts too (no evidence), but a
  wave with no devices at all passes at once (nothing to gate on).

A paused rollout does nothing (its topics stay as they are) and its
deadline clock stops. Halted, aborted and done are final: `step` then only
clears topics still recorded as published, and never publishes a wave
again. Going back is never a lower version: it is a new rollout of a
higher version carrying the old content.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustfleet_device import topics
from trustfleet_device.agent import UNREACHABLE

RUNNING, PAUSED, HALTED, ABORTED, DONE = "running", "paused", "halted", "aborted", "done"
STATES = (RUNNING, PAUSED, HALTED, ABORTED, DONE)
FINAL = (HALTED, ABORTED, DONE)
ACTIVE = (RUNNING, PAUSED)

OK, FAILED, PENDING, OFFLINE, SILENT = "ok", "failed", "pending", "offline", "silent"

DEFAULT_SUCCESS = 0.9
DEFAULT_MAX_FAILURE = 0.2
DEFAULT_DEADLINE = 600
MAX_FAILING_LISTED = 50

_WAVE_NAME = re.compile(r"^[A-Za-z0-9_.%+-]{1,64}$")


class RolloutError(ValueError):
    """A rollout plan or transition that makes no sense (bad waves, resume of a halted rollout)."""


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Wave:
    """One wave: cumulative bucket percent, or rollout groups."""

    name: str
    buckets: int | None = None
    groups: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        if self.buckets is not None:
            return {"name": self.name, "buckets": self.buckets}
        return {"name": self.name, "groups": list(self.groups or ())}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Wave:
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
            raise RolloutError(f"wave {value!r}: expected {{'name', 'buckets' | 'groups'}}")
        if "buckets" in value and value["buckets"] is not None:
            return cls(value["name"], buckets=value["buckets"])
        return cls(value["name"], groups=tuple(value.get("groups") or ()))


def parse_waves(text: str) -> list[Wave]:
    """Waves from "1%,10%,50%,100%" (cumulative bucket percents). Raises: RolloutError."""
    waves = []
    for part in _split(text, "--waves"):
        number = part[:-1] if part.endswith("%") else part
        if not number.isdigit():
            raise RolloutError(f"--waves: {part!r} is not a percent like 10%")
        waves.append(Wave(f"{int(number)}%", buckets=int(number)))
    check_waves(waves)
    return waves


def parse_groups(text: str) -> list[Wave]:
    """Waves from "canary,beta+gamma,50%,all": one wave per item, '+' joins groups, N% is a bucket wave.

    Group names cannot hold '%', so "canary,50%,100%" mixes a group wave with
    bucket waves unambiguously; `all` is 100 %.
    """
    waves = []
    for part in _split(text, "--groups"):
        if part == "all":
            waves.append(Wave("all", buckets=100))
            continue
        if part.endswith("%"):
            if not part[:-1].isdigit():
                raise RolloutError(f"--groups: {part!r} is not a percent like 50%")
            waves.append(Wave(f"{int(part[:-1])}%", buckets=int(part[:-1])))
            continue
        try:
            names = tuple(topics.check_name(g, "group") for g in part.split("+"))
        except ValueError as exc:
            raise RolloutError(f"--groups: {exc}") from None
        waves.append(Wave(part, groups=names))
    check_waves(waves)
    return waves


def _split(text: str, option: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise RolloutError(f"{option}: expected a comma-separated list, got {text!r}")
    return parts


def check_waves(waves: Sequence[Wave]) -> None:
    """Percents strictly increase within 1..100; groups are valid names; the last wave is 100 %."""
    if not waves:
        raise RolloutError("a rollout needs at least one wave")
    last = 0
    for w in waves:
        if not _WAVE_NAME.match(w.name):
            raise RolloutError(f"wave name {w.name!r}: letters, digits and -_.%+ only")
        if w.buckets is not None:
            if isinstance(w.buckets, bool) or not isinstance(w.buckets, int) or not 1 <= w.buckets <= 100:
                raise RolloutError(f"wave {w.name}: buckets must be a percent 1..100, got {w.buckets!r}")
            if w.buckets <= last:
                raise RolloutError(f"wave {w.name}: {w.buckets}% does not grow past {last}%")
            last = w.buckets
        elif not w.groups:
            raise RolloutError(f"wave {w.name}: needs buckets or groups")
        else:
            for g in w.groups:
                topics.check_name(g, "group")
    if waves[-1].buckets != 100:
        raise RolloutError(f"the last wave must reach the whole fleet (100% or `all`), "
                           f"got {waves[-1].name}")


def wave_topics(fleet: str, waves: Sequence[Wave], index: int) -> list[str]:
    """The topics wave `index` adds: its groups, or buckets [previous %, its %) (+ fleet at 100 %)."""
    w = waves[index]
    if w.groups:
        return [topics.group_bundle(fleet, g) for g in w.groups]
    start = max((v.buckets or 0 for v in waves[:index]), default=0)
    out = [topics.bucket_bundle(fleet, n) for n in range(start, w.buckets or 0)]
    if w.buckets == 100:
        out.append(topics.bundle(fleet))
    return out


def in_wave(device: Mapping[str, Any], waves: Sequence[Wave], index: int) -> bool:
    """Whether waves 0..index reach this device (by its bucket or its group)."""
    bucket = device.get("bucket")
    group = device.get("group")
    for w in waves[: index + 1]:
        if w.buckets is not None and isinstance(bucket, int) and bucket < w.buckets:
            return True
        if w.groups and group in w.groups:
            return True
    return False


def reach(waves: Sequence[Wave], devices: Iterable[Mapping[str, Any]], target: int) -> list[dict]:
    """How many devices each wave reaches, as `rollout start` of version `target` sees the fleet now.

    Per wave: {"name", "devices": counted members (cumulative, as the gates count
    them), "new": members no earlier wave reached, "excluded": members the gates
    will not count (quarantined, or suspect of a version above `target`: starting
    the rollout publishes `target`, which clears the suspicion of devices at or
    below it), "unknown_groups": groups the wave names that no device is in}.
    """
    devices = list(devices)
    known = {d.get("group") for d in devices}

    def excluded(d: Mapping[str, Any]) -> bool:
        version = _int(d.get("version"))
        return bool(d.get("quarantined")) or (bool(d.get("suspect")) and (version or 0) > target)

    out, before = [], 0
    for i, w in enumerate(waves):
        members = [d for d in devices if in_wave(d, waves, i)]
        counted = sum(1 for d in members if not excluded(d))
        out.append({"name": w.name, "devices": counted, "new": counted - before,
                    "excluded": len(members) - counted,
                    "unknown_groups": [g for g in (w.groups or ()) if g not in known]})
        before = counted
    return out


def known_groups(devices: Iterable[Mapping[str, Any]]) -> list[str]:
    """The rollout groups devices of the fleet are in, sorted."""
    return sorted({d["group"] for d in devices if isinstance(d.get("group"), str)})


def empty_wave_problem(reached: Sequence[dict], groups: Sequence[str]) -> str | None:
    """The first reason to refuse a plan: a wave naming a group no device is in, or a wave
    reaching no (counted) device, which `step` would pass at once; None when every wave gates."""
    known = ", ".join(groups) if groups else "none: no device reports a group"
    for w in reached:
        if w["unknown_groups"]:
            names = ", ".join(w["unknown_groups"])
            return (f"wave {w['name']}: no device is in group {names} (known groups: {known}); "
                    f"an empty wave passes at once and the next one goes out unguarded")
    for w in reached:
        if w["devices"] == 0:
            return (f"wave {w['name']}: reaches no device of the fleet"
                    + (f" ({w['excluded']} suspect or quarantined)" if w["excluded"] else "")
                    + "; an empty wave passes at once and the next one goes out unguarded")
    return None


def halt_rule(r: Rollout) -> str:
    """The gates of a rollout in one sentence (`rollout start --dry-run`)."""
    return (f"a wave passes when {r.success:.2f} of its counted devices run v{r.version} (ok, stale or behind); "
            f"it halts and its topics are cleared when more than {r.max_failure:.2f} of them reverted, "
            f"marked v{r.version} bad or have no trust store at the deadline, or when {r.deadline} s "
            f"pass without success; offline devices, and devices silent past the deadline, are not counted")


# --------------------------------------------------------------------------- rollout


@dataclass(frozen=True)
class Rollout:
    """One rollout's whole state. `current` is -1 until the first wave is published.

    `published` lists every topic that may hold this rollout's bundle (what a
    halt or abort must clear). `revision` is the store's optimistic-lock counter.
    """

    fleet: str
    version: int
    sha256: str
    bundle: bytes
    waves: tuple[Wave, ...]
    success: float = DEFAULT_SUCCESS
    max_failure: float = DEFAULT_MAX_FAILURE
    deadline: int = DEFAULT_DEADLINE
    state: str = RUNNING
    current: int = -1
    started: int = 0
    wave_started: int | None = None
    paused_at: int | None = None
    finished: int | None = None
    halt_reason: str | None = None
    failing: tuple[dict, ...] = ()
    published: tuple[str, ...] = ()
    id: int | None = None
    revision: int = 0

    @property
    def wave(self) -> Wave | None:
        return self.waves[self.current] if 0 <= self.current < len(self.waves) else None

    def thresholds(self) -> dict:
        return {"success": self.success, "max_failure": self.max_failure, "deadline": self.deadline}


def new_rollout(fleet: str, version: int, sha256: str, bundle: bytes, waves: Iterable[Wave], now: int,
                success: float = DEFAULT_SUCCESS, max_failure: float = DEFAULT_MAX_FAILURE,
                deadline: int = DEFAULT_DEADLINE) -> Rollout:
    """A running rollout whose first wave `step` publishes.

    Raises:
        RolloutError: bad waves or thresholds.
    """
    waves = tuple(waves)
    check_waves(waves)
    if not 0.0 < success <= 1.0:
        raise RolloutError(f"success ratio must be in (0, 1], got {success}")
    if not 0.0 <= max_failure < 1.0:
        raise RolloutError(f"max failure ratio must be in [0, 1), got {max_failure}")
    if isinstance(deadline, bool) or not isinstance(deadline, int) or deadline <= 0:
        raise RolloutError(f"wave deadline must be a positive number of seconds, got {deadline!r}")
    topics.check_name(fleet, "fleet")
    return Rollout(fleet, version, sha256, bundle, waves, success, max_failure, deadline,
                   started=now)


def pause(r: Rollout, now: int) -> Rollout:
    """Stop advancing; the published topics stay. Raises: RolloutError unless running."""
    if r.state != RUNNING:
        raise RolloutError(f"rollout {r.id} is {r.state}; only a running rollout can be paused")
    return dataclasses.replace(r, state=PAUSED, paused_at=now)


def resume(r: Rollout, now: int) -> Rollout:
    """Continue a paused rollout; the wave's deadline is extended by the time spent paused."""
    if r.state != PAUSED:
        raise RolloutError(f"rollout {r.id} is {r.state}; only a paused rollout can be resumed "
                           f"(a halted or aborted one is final: start a new rollout)")
    started = r.wave_started
    if started is not None and r.paused_at is not None:
        started += max(0, now - r.paused_at)
    return dataclasses.replace(r, state=RUNNING, paused_at=None, wave_started=started)


def abort(r: Rollout, now: int, reason: str = "aborted by the operator") -> Rollout:
    """Stop for good; the next `step` clears every published topic. Raises: RolloutError when final."""
    if r.state not in ACTIVE:
        raise RolloutError(f"rollout {r.id} is already {r.state}")
    return dataclasses.replace(r, state=ABORTED, halt_reason=reason, finished=now, paused_at=None)


# --------------------------------------------------------------------------- verdicts


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def verdict(device: Mapping[str, Any], target: int, wave_started: int | None,
            past_deadline: bool) -> tuple[str, str]:
    """(OK | FAILED | PENDING | OFFLINE | SILENT, reason) for one device of the wave."""
    state = device.get("state")
    version = _int(device.get("version"))
    if version is not None and version >= target and state in ("ok", "stale", "behind"):
        return OK, f"runs v{version}"
    bad = device.get("bad") or ()
    if target in bad:
        why = device.get("last_revert")
        return FAILED, f"marked v{target} bad" + (f": {why}" if why else "")
    detail = device.get("detail")
    if device.get("event") == "reverted" and isinstance(detail, str) \
            and detail.startswith(f"bundle v{target}:"):
        if detail.startswith(f"bundle v{target}: {UNREACHABLE}"):
            # Its health endpoints were down, not its trust store: it tries again.
            return PENDING, f"reverted, will try again: {detail}"
        return FAILED, f"reverted: {detail}"
    if state == "offline":
        return OFFLINE, "offline"
    if state == "no-store" and past_deadline:
        return FAILED, "no trust store after the wave deadline"
    seen = _int(device.get("last_seen"))
    if past_deadline and (seen is None or wave_started is None or seen < wave_started):
        return SILENT, "not heard from since the wave started"
    if state == "trial":
        return PENDING, f"on trial with v{version}"
    return PENDING, f"{state}, v{version}" if version is not None else f"{state}"


@dataclass
class WaveProgress:
    """Counts for one wave (cumulative device set) at `now`."""

    index: int
    name: str
    status: str  # "waiting", "running", "passed", "halted"
    members: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    offline: int = 0
    silent: int = 0
    excluded: int = 0  # suspect (claims a version never published) or quarantined: not counted
    failing: list[dict] = field(default_factory=list)
    deadline_at: int | None = None
    # "live": counted now from the devices' statuses; "recorded": the counts stored when the
    # wave ended (fleetdb.record_wave); "not recorded": it ended before the store kept results
    # (schema v2) or was never reached, so there are no counts to show.
    source: str = "live"
    ended: int | None = None  # when the wave moved on, halted or was aborted
    reason: str | None = None  # why it ended (the gate's note, the halt or abort reason)

    @property
    def counted(self) -> int:
        return self.succeeded + self.failed + self.pending

    @property
    def success_ratio(self) -> float | None:
        return self.succeeded / self.counted if self.counted else None

    @property
    def failure_ratio(self) -> float | None:
        return self.failed / self.counted if self.counted else None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(counted=self.counted, success_ratio=self.success_ratio,
                   failure_ratio=self.failure_ratio)
        return out


def wave_progress(r: Rollout, devices: Iterable[Mapping[str, Any]], now: int, index: int) -> WaveProgress:
    """Verdicts of the devices of wave `index`, counted."""
    if index < r.current or (index == r.current and r.state == DONE):
        status = "passed"
    elif index == r.current:
        status = {HALTED: "halted", ABORTED: "aborted", PAUSED: "paused"}.get(r.state, "running")
    else:
        status = "waiting"
    current = index == r.current and r.wave_started is not None
    started = r.wave_started if current else None
    deadline_at = started + r.deadline if started is not None else None
    if current and r.state == PAUSED and r.paused_at is not None:
        now = r.paused_at  # the deadline clock stopped
    past = deadline_at is not None and now >= deadline_at
    p = WaveProgress(index, r.waves[index].name, status, deadline_at=deadline_at)
    for d in devices:
        if not in_wave(d, r.waves, index):
            continue
        if d.get("suspect") or d.get("quarantined"):
            # A claim the published history does not back, or a device set aside by hand.
            p.excluded += 1
            continue
        p.members += 1
        kind, reason = verdict(d, r.version, started, past)
        if kind == OK:
            p.succeeded += 1
        elif kind == FAILED:
            p.failed += 1
            if len(p.failing) < MAX_FAILING_LISTED:
                p.failing.append({"device": d.get("device"), "reason": reason})
        elif kind == OFFLINE:
            p.offline += 1
        elif kind == SILENT:
            p.silent += 1
        else:
            p.pending += 1
    return p


def progress(r: Rollout, devices: Iterable[Mapping[str, Any]], now: int) -> list[WaveProgress]:
    """Progress of every wave, every one counted now from the devices (see `history`)."""
    devices = list(devices)
    return [wave_progress(r, devices, now, i) for i in range(len(r.waves))]


ENDED = {DONE: "passed", HALTED: "halted", ABORTED: "aborted"}
NOT_REACHED = "not reached"


def wave_ended(r: Rollout, index: int) -> bool:
    """Whether wave `index` of `r` has ended: passed, or the one the rollout stopped on."""
    return 0 <= index < r.current or (index == r.current and r.state in FINAL)


def ended_wave(old: Rollout, new: Rollout, devices: Iterable[Mapping[str, Any]], now: int,
               note: str | None = None) -> WaveProgress | None:
    """The result of the wave `old` was on, when `new` leaves it (moved on, done, halted or
    aborted), counted from the same devices and time the decision was made on; None when no
    wave ends (nothing published yet, still on it, or already final)."""
    if old.current < 0 or old.state in FINAL:
        return None
    if new.current == old.current and new.state not in FINAL:
        return None
    p = wave_progress(old, list(devices), now, old.current)
    p.status = ENDED.get(new.state, "passed")
    p.source, p.ended = "recorded", now
    p.reason = new.halt_reason if new.state in (HALTED, ABORTED) else note
    return p


def history(r: Rollout, devices: Iterable[Mapping[str, Any]], now: int,
            recorded: Mapping[int, WaveProgress]) -> list[WaveProgress]:
    """Every wave as `rollout status` shows it: an ended wave as recorded when it ended
    (`recorded`, by wave index), the running (or paused) wave and the waves still to come
    counted live, and the waves a finished rollout never reached as "not reached"."""
    devices = list(devices)
    out = []
    for i, w in enumerate(r.waves):
        if wave_ended(r, i):
            p = recorded.get(i)
            if p is None:  # ended before results were recorded: no counts to show
                status = "passed" if i < r.current else ENDED[r.state]
                p = WaveProgress(i, w.name, status, source="not recorded", ended=None,
                                 failing=list(r.failing) if status != "passed" else [],
                                 reason=r.halt_reason if status != "passed" else None)
            out.append(p)
        elif r.state in FINAL:
            out.append(WaveProgress(i, w.name, NOT_REACHED, source="not recorded"))
        else:
            out.append(wave_progress(r, devices, now, i))
    return out


# --------------------------------------------------------------------------- step


def step(r: Rollout, devices: Iterable[Mapping[str, Any]], now: int) -> tuple[Rollout, list[tuple]]:
    """Decide what happens next. Returns (new rollout, actions); never mutates `r`."""
    if r.state in FINAL:
        return _clear_leftovers(r)
    if r.state == PAUSED:
        return r, []
    if r.current < 0:
        return _publish(r, 0, now, [])
    p = wave_progress(r, list(devices), now, r.current)
    if p.failure_ratio is not None and p.failure_ratio > r.max_failure:
        reason = (f"wave {p.name}: {p.failed} of {p.counted} devices failed "
                  f"({p.failure_ratio:.2f} > {r.max_failure:.2f})")
        return halt(r, now, reason, p.failing)
    if p.members == 0:
        return _advance(r, now, f"wave {p.name}: no devices in this wave; moving on")
    if p.success_ratio is not None and p.success_ratio >= r.success:
        return _advance(r, now, f"wave {p.name}: {p.succeeded} of {p.counted} devices run "
                                f"v{r.version} ({p.success_ratio:.2f} >= {r.success:.2f})"
                                + (f"; {p.offline + p.silent} offline or silent not counted"
                                   if p.offline + p.silent else ""))
    if p.deadline_at is not None and now >= p.deadline_at:
        if p.counted == 0:
            reason = f"wave {p.name}: no device of {p.members} reported within {r.deadline} s"
        else:
            reason = (f"wave {p.name}: only {p.succeeded} of {p.counted} devices run v{r.version} "
                      f"after {r.deadline} s ({p.success_ratio:.2f} < {r.success:.2f})")
        return halt(r, now, reason, p.failing)
    return r, []


def halt(r: Rollout, now: int, reason: str, failing: Sequence[dict] = ()) -> tuple[Rollout, list[tuple]]:
    """Stop the rollout by itself (also used when the bundle stops verifying) and clear its topics."""
    new = dataclasses.replace(r, state=HALTED, halt_reason=reason, failing=tuple(failing),
                              finished=now, published=())
    actions: list[tuple] = [("halt", reason, list(failing))]
    if r.published:
        actions.append(("clear_waves", list(r.published)))
    return new, actions


def _advance(r: Rollout, now: int, note: str) -> tuple[Rollout, list[tuple]]:
    notes = [("note", note)]
    if r.current + 1 < len(r.waves):
        return _publish(r, r.current + 1, now, notes)
    fleet_topic = topics.bundle(r.fleet)
    leftovers = [t for t in r.published if t != fleet_topic]
    new = dataclasses.replace(r, state=DONE, finished=now, published=())
    actions = notes + [("done",)]
    if leftovers:
        # The fleet topic now carries the bundle for everyone; the wave topics are redundant.
        actions.append(("clear_waves", leftovers))
    return new, actions


def _publish(r: Rollout, index: int, now: int, notes: list[tuple]) -> tuple[Rollout, list[tuple]]:
    added = wave_topics(r.fleet, r.waves, index)
    published = r.published + tuple(t for t in added if t not in r.published)
    new = dataclasses.replace(r, current=index, wave_started=now, published=published)
    return new, notes + [("publish_wave", r.waves[index], added)]


def _clear_leftovers(r: Rollout) -> tuple[Rollout, list[tuple]]:
    if not r.published:
        return r, []
    leftovers = list(r.published)
    if r.state == DONE:
        leftovers = [t for t in leftovers if t != topics.bundle(r.fleet)]
    new = dataclasses.replace(r, published=())
    return new, ([("clear_waves", leftovers)] if leftovers else [])
