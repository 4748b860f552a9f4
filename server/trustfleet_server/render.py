"""Fleet summaries and rollouts as text and JSON: `trustfleet fleet`, `rollout` and the demo."""

from __future__ import annotations

from typing import Any

from trustfleet_server import rollout
from trustfleet_server.times import iso


def rollout_json(r: rollout.Rollout, waves: list[rollout.WaveProgress] | None = None,
                  events: list[dict] | None = None) -> dict:
    out = {"id": r.id, "fleet": r.fleet, "version": r.version, "sha256": r.sha256, "state": r.state,
           "current_wave": r.current, "wave": r.wave.name if r.wave else None,
           "waves": [w.to_json() for w in r.waves], "thresholds": r.thresholds(),
           "started": r.started, "wave_started": r.wave_started, "finished": r.finished,
           "halt_reason": r.halt_reason, "failing": list(r.failing), "published": list(r.published)}
    if waves is not None:
        out["progress"] = [w.to_json() for w in waves]
    if events is not None:
        out["events"] = events
    return out


def _ago(now: int, ts: int | None) -> str:
    if ts is None:
        return "never"
    d = max(0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return f"{d // size}{unit} ago"
    return f"{d}s ago"


def summary_sections(now: int) -> tuple[tuple[str, str, Any], ...]:
    """(key, title, detail(device) -> text) of each device list `fleet status` shows."""
    return (("stale", "stale", lambda d: "; ".join(d["reasons"]) or "-"),
            ("behind", "behind (the latest timestamp names a newer bundle than it holds)",
             lambda d: f"last seen {_ago(now, d['last_seen'])}"),
            ("fail_open", "fail-open (pins expired, CA validation only)",
             lambda d: ", ".join(d["domains"])),
            ("offline", "offline", lambda d: f"last seen {_ago(now, d['last_seen'])}"),
            ("silent", "silent", lambda d: f"{d['state']}, last seen {_ago(now, d['last_seen'])}"),
            ("suspect", "suspect (claims a version the fleet never published; rollouts skip it)",
             lambda d: f"last seen {_ago(now, d['last_seen'])}"),
            ("quarantined", "quarantined (rollouts skip it)",
             lambda d: f"last seen {_ago(now, d['last_seen'])}"))


def render_summary(s: dict, now: int) -> list[str]:
    lines = [f"fleet {s['fleet']}: {s['devices']} device(s)"]
    if s["table"]:
        states = sorted({t["state"] for t in s["table"]})
        versions: dict[Any, dict[str, int]] = {}
        for t in s["table"]:
            versions.setdefault(t["version"], {})[t["state"]] = t["count"]
        header = f"  {'version':>8}" + "".join(f"{st:>10}" for st in states) + f"{'total':>8}"
        lines.append(header)
        for v in sorted(versions, key=lambda x: -1 if x is None else x, reverse=True):
            row = versions[v]
            label = "-" if v is None else f"v{v}"
            lines.append(f"  {label:>8}" + "".join(f"{row.get(st, 0):>10}" for st in states)
                         + f"{sum(row.values()):>8}")
    if "rollout" in s:
        ro_ = s["rollout"]
        lines.append(f"rollout {ro_['id']}: v{ro_['version']} {ro_['state']}"
                     + (f", wave {ro_['wave']}" if ro_["wave"] else ""))
    for key, title, detail in summary_sections(now):
        count = s.get(f"{key}_count", 0)
        if not count:
            continue
        lines.append(f"{title}: {count}")
        for d in s[key]:
            v = "-" if d["version"] is None else f"v{d['version']}"
            lines.append(f"  {d['device']:<24} {v:>6}  {detail(d)}")
        if count > len(s[key]):
            lines.append(f"  ... and {count - len(s[key])} more")
    lines.extend(_report_overview(s.get("report_overview"), now))
    if s["reports"]:
        lines.append("recent reports:")
        for rep in s["reports"]:
            body = rep["report"]
            what = body.get("reason") or body.get("noted-hostname") or ""
            lines.append(f"  {iso(rep['time'])}  {rep['device']:<20} {_safe(rep['kind'], 64)}  {_safe(what, 80)}")
    return lines


def _safe(value: Any, width: int) -> str:
    """Device-supplied text for a terminal: control characters escaped, clipped to width."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)[:width]


def _report_overview(o: dict | None, now: int) -> list[str]:
    """The reports section of `fleet status`: by kind, then by domain."""
    if not o or not o["reports"]:
        return []
    dup = f", {o['duplicates']} duplicate(s) not counted" if o["duplicates"] else ""
    lines = [f"reports: {o['reports']} from {o['devices']} device(s), newest {_ago(now, o['newest'])}{dup}",
             f"  {'kind':<28} {'reports':>8} {'devices':>8}  newest"]
    for k in o["kinds"]:
        lines.append(f"  {_safe(k['kind'], 28):<28} {k['reports']:>8} {k['devices']:>8}  {iso(k['newest'])}")
    lines.append(f"  {'by domain (hostname / noted-hostname)':<44} {'kind':<22} {'reports':>8} "
                 f"{'devices':>8}  newest")
    for d in o["domains"]:
        host, noted = _safe(d["hostname"], 60), _safe(d["noted"], 60)
        where = host if host == noted else f"{host} / {noted}"
        lines.append(f"  {where[:44]:<44} {_safe(d['kind'], 22):<22} {d['reports']:>8} {d['devices']:>8}  "
                     f"{iso(d['newest'])}")
    if o["domains_count"] > len(o["domains"]):
        lines.append(f"  ... and {o['domains_count'] - len(o['domains'])} more")
    return lines


BAR = 30


def _bar(p: rollout.WaveProgress) -> str:
    total = p.members or 1
    ok = round(BAR * p.succeeded / total)
    bad = min(BAR - ok, round(BAR * p.failed / total))
    return "[" + "#" * ok + "!" * bad + "." * (BAR - ok - bad) + "]"


def wave_counts(p: rollout.WaveProgress) -> str:
    """'3/5 ok, 1 failed, 1 pending' for a wave, or '-' when it has no counts (not recorded)."""
    if p.source == "not recorded":
        return "-"
    counts = f"{p.succeeded}/{p.members} ok"
    if p.failed:
        counts += f", {p.failed} failed"
    if p.pending:
        counts += f", {p.pending} pending"
    if p.offline or p.silent:
        counts += f", {p.offline + p.silent} offline/silent"
    if p.excluded:
        counts += f", {p.excluded} excluded (suspect or quarantined)"
    return counts


def wave_tail(p: rollout.WaveProgress, now: int, absolute: bool = False) -> str:
    """The wave's status: 'passed', 'halted 2026-...Z', 'running, deadline in 30s', ...

    `absolute` names the deadline's time instead of counting down (a line that only changes
    when something happens: `fleet watch` off a terminal)."""
    tail = p.status
    if p.source == "recorded" and p.ended is not None and p.status != "passed":
        tail += f" {iso(p.ended)}"
    elif p.source == "not recorded" and p.status != rollout.NOT_REACHED:
        tail += ", counts not recorded"
    if p.status == "running" and p.deadline_at is not None:
        tail += f", deadline {iso(p.deadline_at)}" if absolute else \
            f", deadline in {max(0, p.deadline_at - now)}s"
    return tail


def render_rollout(r: rollout.Rollout, waves: list[rollout.WaveProgress], now: int,
                   tty: bool = True, absolute: bool = False) -> list[str]:
    """Header plus one line (with a bar) per wave, then the failing devices: those of the wave
    the rollout halted on as recorded then (rollout.history), else the rollout's own list."""
    head = f"rollout {r.id}: bundle v{r.version} for {r.fleet}, {r.state}"
    if r.wave is not None:
        head += f", wave {r.current + 1}/{len(r.waves)} ({r.wave.name})"
    if r.halt_reason:
        head += f" - {r.halt_reason}"
    lines = [head]
    width = max(len(w.name) for w in r.waves)
    for p in waves:
        lines.append(f"  {p.name:<{width}} {_bar(p)} {wave_counts(p)}  ({wave_tail(p, now, absolute)})")
    for f in failing_devices(r, waves)[:10]:
        lines.append(f"  failing: {f['device']}: {f['reason']}")
    return lines


def failing_devices(r: rollout.Rollout, waves: list[rollout.WaveProgress]) -> list[dict]:
    """The failing devices to show: the halted (or aborted) wave's as recorded, else r.failing."""
    for p in waves:
        if p.status in ("halted", "aborted") and p.source == "recorded" and p.failing:
            return list(p.failing)
    return list(r.failing)


# --------------------------------------------------------------------------- rollout list


def waves_done(r: rollout.Rollout) -> int:
    """How many waves passed: all of a done rollout, else those before the current one."""
    return len(r.waves) if r.state == rollout.DONE else max(r.current, 0)


def rollout_row(r: rollout.Rollout) -> dict:
    """One rollout as `rollout list` shows it (and its --json)."""
    return {"id": r.id, "fleet": r.fleet, "version": r.version, "state": r.state,
            "waves_done": waves_done(r), "waves": len(r.waves),
            "wave": r.wave.name if r.wave else None,
            "started": r.started, "finished": r.finished, "halt_reason": r.halt_reason}


ROLLOUT_COLUMNS = ("id", "fleet", "version", "state", "waves", "started", "finished", "halt reason")


def rollout_cells(row: dict) -> list[str]:
    """The text cells of a rollout_row, in ROLLOUT_COLUMNS order."""
    return [str(row["id"]), row["fleet"], f"v{row['version']}", row["state"],
            f"{row['waves_done']}/{row['waves']}", iso(row["started"]),
            iso(row["finished"]) if row["finished"] is not None else "-",
            _safe(row["halt_reason"], 10_000) if row["halt_reason"] else "-"]


# --------------------------------------------------------------------------- fleet devices

# The names `fleet status` uses: a device's own state, and the sections it lists devices in.
EXTRA_STATES = ("fail-open", "silent", "suspect", "quarantined")


def device_states(d: dict, now: int, silent_after: int) -> list[str]:
    """The device's state and every `fleet status` section it is in."""
    out = [d["state"]]
    if d.get("fail_open"):
        out.append("fail-open")
    if d["state"] != "offline" and d.get("last_seen", now) < now - silent_after:
        out.append("silent")
    if d.get("suspect"):
        out.append("suspect")
    if d.get("quarantined"):
        out.append("quarantined")
    return out


def last_problem(d: dict) -> str | None:
    """The device's last refusal or revert, from its last event or its last revert reason."""
    if d.get("event") in ("refused", "reverted") and d.get("detail"):
        return f"{d['event']}: {d['detail']}"
    if d.get("last_revert"):
        return f"reverted: {d['last_revert']}"
    return None


def device_row(d: dict, now: int, silent_after: int) -> dict:
    """One device as `fleet devices` shows it (and its --json)."""
    return {"device": d["device"], "version": d["version"], "state": d["state"],
            "states": device_states(d, now, silent_after), "group": d.get("group"),
            "bucket": d.get("bucket"), "last_seen": d.get("last_seen"), "last_problem": last_problem(d),
            "fail_open": list(d.get("fail_open") or [])}


DEVICE_COLUMNS = ("device", "version", "state", "group", "bucket", "last seen", "last refusal/revert")


def device_cells(row: dict) -> list[str]:
    """The text cells of a device_row, in DEVICE_COLUMNS order; device text escaped, never cut."""
    return [_safe(row["device"], 10_000), "-" if row["version"] is None else f"v{row['version']}",
            ",".join(row["states"]), _safe(row["group"], 10_000) if row["group"] else "-",
            str(row["bucket"]), iso(row["last_seen"]) if row["last_seen"] is not None else "-",
            _safe(row["last_problem"], 10_000) if row["last_problem"] else "-"]


def plain_lines(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """A header and one tab-separated line per record (tabs and newlines in a cell escaped)."""
    def cell(text: str) -> str:
        return text.replace("\t", " ").replace("\n", " ") or "-"
    return ["\t".join(columns)] + ["\t".join(cell(c) for c in row) for row in rows]
