"""Output on a terminal, through rich: tables for `fleet status|devices` and `rollout list|status`,
progress bars for `fleet watch`.

Off a terminal the commands print render.py's plain lines instead (stable, one record per line,
never cut) and `--json` is for scripts; `is_terminal()` decides. Every cell is a rich Text, so
device-supplied text is never read as markup, and control characters are escaped (render._safe).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trustfleet_server import render, rollout
from trustfleet_server.times import iso

_STYLE = {"passed": "green", "ok": "green", "done": "green", "running": "cyan", "paused": "yellow",
          "halted": "bold red", "aborted": "red", "waiting": "dim", rollout.NOT_REACHED: "dim"}


def is_terminal() -> bool:
    """Whether stdout is a terminal (rich tables and bars) rather than a pipe or file (plain lines)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def console() -> Console:
    """A console on the current sys.stdout, drawing as on a terminal."""
    return Console(file=sys.stdout, force_terminal=True, highlight=False)


def text(value: Any, style: str = "") -> Text:
    """A cell: '-' for None, control characters escaped, never markup."""
    return Text("-" if value is None else render._safe(value, 100_000), style=style)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold", expand=False)
    for name in columns:
        t.add_column(name, overflow="fold")  # a narrow terminal wraps a cell, never cuts it
    for row in rows:
        t.add_row(*(c if isinstance(c, Text | ProgressBar) else text(c) for c in row))
    return t


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    console().print(table(columns, rows, title))


# --------------------------------------------------------------------------- rollouts


def rollout_view(r: rollout.Rollout, waves: list[rollout.WaveProgress], now: int,
                 events: list[dict] | None = None) -> RenderableType:
    """The header, one row per wave with its progress bar, the failing devices, the events."""
    head = Text.assemble(Text(f"rollout {r.id}: bundle v{r.version} for {r.fleet}, "),
                         Text(r.state, style=_STYLE.get(r.state, "")))
    if r.wave is not None:
        head.append(f", wave {r.current + 1}/{len(r.waves)} ({r.wave.name})")
    if r.halt_reason:
        head.append(" - ").append(text(r.halt_reason))
    t = Table(header_style="bold")
    for name in ("wave", "progress", "ok", "failed", "pending", "offline/silent", "excluded", "status"):
        t.add_column(name, overflow="fold")
    for p in waves:
        counted = p.source != "not recorded"
        t.add_row(text(p.name), ProgressBar(total=max(p.members, 1), completed=p.succeeded, width=24,
                                            complete_style="red" if p.status == "halted" else "green"),
                  *(text(f"{v}" if counted else "-") for v in
                    (f"{p.succeeded}/{p.members}", p.failed, p.pending, p.offline + p.silent, p.excluded)),
                  text(render.wave_tail(p, now), _STYLE.get(p.status, "")))
    parts: list[RenderableType] = [head, t]
    failing = render.failing_devices(r, waves)
    if failing:
        parts.append(table(("failing device", "reason"), [(f["device"], f["reason"]) for f in failing[:50]]))
    if events:
        parts.append(table(("time", "event"), [(iso(e["time"]), e["text"]) for e in events]))
    return Group(*parts)


def print_rollout(r: rollout.Rollout, waves: list[rollout.WaveProgress], now: int,
                  events: list[dict] | None = None) -> None:
    console().print(rollout_view(r, waves, now, events))


@contextmanager
def live() -> Iterator[Any]:
    """A live region redrawn in place (`fleet watch`); yields update(renderable)."""
    with Live(console=console(), auto_refresh=False, transient=False) as region:
        yield lambda renderable: region.update(renderable, refresh=True)


# --------------------------------------------------------------------------- fleet status


def print_summary(s: dict, now: int) -> None:
    """`fleet status` on a terminal: versions by state, the rollout, each section, the reports."""
    out = console()
    out.print(Text(f"fleet {s['fleet']}: {s['devices']} device(s)", style="bold"))
    if s["table"]:
        states = sorted({t["state"] for t in s["table"]})
        versions: dict[Any, dict[str, int]] = {}
        for t in s["table"]:
            versions.setdefault(t["version"], {})[t["state"]] = t["count"]
        rows = [["-" if v is None else f"v{v}", *(str(versions[v].get(st, 0)) for st in states),
                 str(sum(versions[v].values()))]
                for v in sorted(versions, key=lambda x: -1 if x is None else x, reverse=True)]
        out.print(table(("version", *states, "total"), rows))
    if "rollout" in s:
        ro_ = s["rollout"]
        out.print(text(f"rollout {ro_['id']}: v{ro_['version']} {ro_['state']}"
                       + (f", wave {ro_['wave']}" if ro_["wave"] else ""), _STYLE.get(ro_["state"], "")))
    for key, title, detail in render.summary_sections(now):
        count = s.get(f"{key}_count", 0)
        if not count:
            continue
        rows = [(d["device"], "-" if d["version"] is None else f"v{d['version']}", detail(d)) for d in s[key]]
        if count > len(s[key]):
            rows.append((f"... and {count - len(s[key])} more", "", ""))
        out.print(text(f"{title}: {count}", "bold"))
        out.print(table(("device", "version", "detail"), rows))
    for line in render._report_overview(s.get("report_overview"), now):
        out.print(text(line))
    if s["reports"]:
        rows = [(iso(rep["time"]), rep["device"], rep["kind"],
                 rep["report"].get("reason") or rep["report"].get("noted-hostname") or "")
                for rep in s["reports"]]
        out.print(table(("time", "device", "kind", "what"), rows, title="recent reports"))
