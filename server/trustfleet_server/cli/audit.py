"""`trustfleet audit`: the audit trail of the fleet store, newest first (FleetDB.audit_entries)."""

from __future__ import annotations

import argparse
import json

from trustfleet_server import fleetops, render, terminal
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.times import iso

AUDIT_EPILOG = """\
examples:
  trustfleet audit --db fleet.db
  trustfleet audit --db fleet.db --fleet acme --action rollout-pause
  trustfleet audit --db postgresql://trustfleet@db/fleet --fleet acme --limit 500 --json | jq '.entries[]'

Actions: publish (topics, type, version, sha256, signers: key id and stated name),
rollout-start, rollout-pause, rollout-resume, rollout-abort, rollout-halt, rollout-done,
wave-publish, wave-clear, device-quarantine, device-release, device-forget.
Source: cli (actor $TRUSTFLEET_OPERATOR, else the login user), console (the operator its
token names) or serve (serve:<worker id>). The store refuses changes to past entries.
"""

COLUMNS = ("id", "time", "fleet", "action", "actor", "host", "source", "detail")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="the audit trail: who published, signed, started, paused, "
                                     "resumed or aborted what, from where",
                       description="The audit trail kept in the fleet store, newest first.\n"
                                   "On a terminal a table; otherwise a header and one tab-separated\n"
                                   "line per entry.",
                       epilog=AUDIT_EPILOG, formatter_class=common.RAW)
    common.db_argument(p, create=False)
    p.add_argument("--fleet", help="only this fleet's entries")
    p.add_argument("--action", metavar="ACTION", help="only entries of this action (e.g. publish)")
    p.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
    p.add_argument("--json", action="store_true",
                   help='print {"entries": [{id, time, fleet, action, actor, host, source, detail}]}')
    p.set_defaults(func=cmd_audit)


def detail_text(detail: dict) -> str:
    """One line for an entry's detail: signers as name (kid prefix), the rest as key=value."""
    parts = []
    for key, value in detail.items():
        if key == "signers":
            value = ", ".join(f"{s.get('name') or '?'} ({(s.get('kid') or '?')[:16]})" for s in value)
        elif key in ("topics", "waves", "cleared") and isinstance(value, list):
            value = ",".join(map(str, value))
        elif key == "sha256" and isinstance(value, str):
            value = value[:16]
        elif not isinstance(value, str):
            value = json.dumps(value)
        parts.append(f"{key}={value}")
    return " ".join(parts)


def cells(e: dict) -> list[str]:
    """The text cells of an entry, in COLUMNS order (control characters escaped)."""
    return [str(e["id"]), iso(e["time"]), *(render._safe(e[k], 10_000) for k in
                                             ("fleet", "action", "actor", "host", "source")),
            render._safe(detail_text(e["detail"]), 10_000)]


def cmd_audit(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet) if args.fleet else None
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with fleetdb.open_db(args.db) as db:
        if fleet is not None:
            db.require_fleet(fleet)
        entries = db.audit_entries(fleet, limit=args.limit, action=args.action)
    if args.json:
        common.print_json({"entries": entries})
    elif not entries:
        print("no audit entries" + (f" for fleet {fleet}" if fleet else "")
              + (f" with action {args.action}" if args.action else ""))
    elif terminal.is_terminal():
        terminal.print_table(COLUMNS, [cells(e) for e in entries])
    else:
        print("\n".join(render.plain_lines(COLUMNS, [cells(e) for e in entries])))
    return 0
