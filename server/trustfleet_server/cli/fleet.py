"""`trustfleet fleet status|watch|device|events|prune`: what the fleet runs, from the statuses `trustfleet serve`
ingested; `prune` applies report retention (the options of common.retention_arguments, which
`serve` takes too)."""

from __future__ import annotations

import argparse
import sys
import time

from trustfleet_server import fleetops, render, rollout, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.times import iso

FLEET_EPILOG = """\
examples:
  trustfleet fleet status --db fleet.db --fleet acme
  trustfleet fleet status --db postgresql://trustfleet@db/fleet --fleet acme --json
  trustfleet fleet watch --db fleet.db --fleet acme     # exit 0 when done, 1 halted/aborted
  trustfleet fleet prune --db fleet.db --per-device 200 --max-age 7d
"""
DEVICE_EPILOG = """\
examples:
  trustfleet fleet device quarantine pi-17 --db fleet.db --fleet acme --reason "claims v2^62"
  trustfleet fleet device release pi-17 --db fleet.db --fleet acme --reason "re-provisioned"
  trustfleet fleet device forget pi-17 --db fleet.db --fleet acme --reason "decommissioned" --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("fleet", help="fleet state: devices by version and state, live rollout",
                           description="What the fleet runs, from the statuses `trustfleet serve` "
                                       "ingested.", epilog=FLEET_EPILOG, formatter_class=common.RAW)
    fsub = group.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = fsub.add_parser("status", help="devices by version and state; stale, fail-open, offline; reports",
                        epilog=FLEET_EPILOG, formatter_class=common.RAW)
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--silent-after", default="24h", metavar="DURATION",
                   help="list devices not heard from for this long (default 24h)")
    p.add_argument("--limit", type=int, default=20, help="devices listed per section (default 20)")
    p.add_argument("--json", action="store_true", help="the whole summary as JSON")
    p.set_defaults(func=cmd_fleet_status)

    p = fsub.add_parser("watch", help="live rollout progress, one bar per wave",
                        description="Follow the fleet's latest rollout: a progress bar per wave, "
                                    "redrawn in place on a terminal, one line per change otherwise. "
                                    "Exits 0 when it is done, 1 when halted or aborted.",
                        epilog=FLEET_EPILOG, formatter_class=common.RAW)
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--id", type=int, help="rollout id (default: the latest of the fleet)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.set_defaults(func=cmd_fleet_watch)

    p = fsub.add_parser("device", help="set one device aside: quarantine, release or forget (audited)",
                        description="Quarantine a device (its statuses are still stored, rollouts "
                                    "never count it), release it, or forget its row (it comes back "
                                    "if it publishes again). Each is an audit event: who, when, why.",
                        epilog=DEVICE_EPILOG, formatter_class=common.RAW)
    p.add_argument("action", choices=fleetops.DEVICE_ACTIONS)
    p.add_argument("device", metavar="ID", help="device id")
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    p.add_argument("--by", help="who (default: user@host)")
    p.add_argument("--json", action="store_true", help="print the audit event as JSON")
    p.set_defaults(func=cmd_fleet_device)

    p = fsub.add_parser("events", help="the audit trail of device actions: quarantine, release, forget, "
                                       "and serve's fences",
                        description="Device events, oldest first: quarantine, release and forget by "
                                    "operators; fence and unfence by serve (a flooding device "
                                    "disabled at the broker, and enabled again).",
                        epilog="examples:\n  trustfleet fleet events --db fleet.db --fleet acme\n"
                               "  trustfleet fleet events --db fleet.db --fleet acme --device pi-17 --json\n",
                        formatter_class=common.RAW)
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--device", metavar="ID", help="only this device's events")
    p.add_argument("--limit", type=int, default=50, help="the newest N events (default 50)")
    p.add_argument("--json", action="store_true", help="print the events as JSON")
    p.set_defaults(func=cmd_fleet_events)

    p = fsub.add_parser("prune", help="apply report retention now (per device, total, age)",
                        description="Delete the failure reports beyond the retention limits (every "
                                    "fleet of the store). Ingest applies the same limits as it goes; "
                                    "this applies them at once, e.g. after lowering them.",
                        epilog=FLEET_EPILOG, formatter_class=common.RAW)
    common.db_argument(p)
    common.retention_arguments(p)
    p.add_argument("--json", action="store_true", help="print {deleted, left} as JSON")
    p.set_defaults(func=cmd_fleet_prune)


def cmd_fleet_prune(args: argparse.Namespace) -> int:
    retention = common.retention_from(args)
    with fleetdb.open_db(args.db, retention=retention) as db:
        deleted = db.prune_reports(int(time.time()))
        left = db.report_count()
    if args.json:
        common.print_json({"deleted": deleted, "left": left})
    else:
        print(f"deleted {deleted:,} reports; {left:,} left")
    return 0


def cmd_fleet_device(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    who = args.by or fleetops.operator_name()
    with fleetdb.open_db(args.db) as db:
        db.require_fleet(fleet)
        event = fleetops.device_action(db, fleet, args.device, args.action, who, args.reason,
                                       int(time.time()))
    if args.json:
        common.print_json(event)
    else:
        print(f"{iso(event['time'])} {args.action} {event['device']} of fleet {fleet} by {event['who']}: "
              f"{event['why']}")
    return 0


def cmd_fleet_events(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with fleetdb.open_db(args.db) as db:
        db.require_fleet(fleet)
        events = db.device_events(fleet, args.device, args.limit)
    if args.json:
        common.print_json({"fleet": fleet, "events": events})
        return 0
    if not events:
        print(f"no device events in fleet {fleet}" + (f" for {args.device}" if args.device else ""))
    for e in events:
        print(f"{iso(e['time'])} {e['action']:<10} {e['device']} by {e['who']}: {e['why']}")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    now = int(time.time())
    silent = int(times.positive_seconds(args.silent_after, "--silent-after"))
    with fleetdb.open_db(args.db) as db:
        db.require_fleet(fleet)
        s = fleetops.fleet_summary(db, fleet, now, silent, args.limit)
    if args.json:
        common.print_json(s)
        return 0
    print("\n".join(render.render_summary(s, now)))
    return 0


def cmd_fleet_watch(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    tty = sys.stdout.isatty()
    shown: list[str] = []
    try:
        with fleetdb.open_db(args.db) as db:
            db.require_fleet(fleet)
            while True:
                now = int(time.time())
                r = fleetops.find_rollout(db, fleet, args.id)
                lines = render.render_rollout(r, rollout.progress(r, db.devices(fleet), now), now, tty)
                if tty:
                    if shown:  # back to the first line drawn, and clear below it
                        sys.stdout.write(f"\x1b[{len(shown)}F\x1b[J")
                    sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in lines))
                    sys.stdout.flush()
                    shown = lines
                else:
                    # Plain output: print the lines that changed (deadlines tick, so drop them).
                    stable = [line.split(", deadline in")[0] for line in lines]
                    for line, old in zip(stable, shown + [None] * len(stable), strict=False):
                        if line != old:
                            print(f"{iso(now)} {line.strip()}", flush=True)
                    shown = stable
                if r.state in rollout.FINAL:
                    return 0 if r.state == rollout.DONE else 1
                time.sleep(args.interval)
    except KeyboardInterrupt:
        if tty:
            print()
        return 130
