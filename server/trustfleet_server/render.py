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
    sections = (("stale", "stale", lambda d: "; ".join(d["reasons"]) or "-"),
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
    for key, title, detail in sections:
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


def render_rollout(r: rollout.Rollout, waves: list[rollout.WaveProgress], now: int,
                   tty: bool = True) -> list[str]:
    """Header plus one line (with a bar) per wave."""
    head = f"rollout {r.id}: bundle v{r.version} for {r.fleet}, {r.state}"
    if r.wave is not None:
        head += f", wave {r.current + 1}/{len(r.waves)} ({r.wave.name})"
    if r.halt_reason:
        head += f" - {r.halt_reason}"
    lines = [head]
    width = max(len(w.name) for w in r.waves)
    for p in waves:
        counts = f"{p.succeeded}/{p.members} ok"
        if p.failed:
            counts += f", {p.failed} failed"
        if p.pending:
            counts += f", {p.pending} pending"
        if p.offline or p.silent:
            counts += f", {p.offline + p.silent} offline/silent"
        if p.excluded:
            counts += f", {p.excluded} excluded (suspect or quarantined)"
        tail = p.status
        if p.status == "running" and p.deadline_at is not None:
            tail += f", deadline in {max(0, p.deadline_at - now)}s"
        lines.append(f"  {p.name:<{width}} {_bar(p)} {counts}  ({tail})")
    for f in r.failing[:10]:
        lines.append(f"  failing: {f['device']}: {f['reason']}")
    return lines
