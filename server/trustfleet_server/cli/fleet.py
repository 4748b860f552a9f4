"""`trustfleet fleet status|devices|watch|device|events|prune`: what the fleet runs, from the statuses `trustfleet serve`
ingested; `prune` applies report retention (the options of common.retention_arguments, which
`serve` takes too)."""

from __future__ import annotations

import argparse
import json
import time

from trustfleet_device import status as status_schema
from trustfleet_server import audit, fleetops, render, rollout, terminal, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.times import iso

FLEET_EPILOG = """\
examples:
  trustfleet fleet status --db fleet.db --fleet acme
  trustfleet fleet status --db postgresql://trustfleet@db/fleet --fleet acme --json
  trustfleet fleet devices --db fleet.db --fleet acme --version 7 --state stale
  trustfleet fleet watch --db fleet.db --fleet acme     # exit 0 when done, 1 halted/aborted
  trustfleet fleet watch --db fleet.db --fleet acme --json | jq .state
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

    p = fsub.add_parser("devices", help="one row per device: version, state, group, bucket, last seen, "
                                        "last refusal or revert",
                        description="Every device of the fleet, one row each, filtered by version,\n"
                                    "state and group (the filters combine). States are the names\n"
                                    f"`fleet status` uses: {', '.join(DEVICE_STATES)};\n"
                                    "a device can be in several (ok,fail-open). On a terminal a table;\n"
                                    "otherwise a header and one tab-separated line per device.",
                        epilog=FLEET_EPILOG, formatter_class=common.RAW)
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--version", dest="device_version", type=_version, metavar="N", default=argparse.SUPPRESS,
                   help="only devices running bundle vN (`none`: devices without a bundle)")
    p.add_argument("--state", metavar="STATE", help=f"only devices in this state: {', '.join(DEVICE_STATES)}")
    p.add_argument("--group", metavar="GROUP", help="only devices of this rollout group (`none`: no group)")
    p.add_argument("--silent-after", default="24h", metavar="DURATION",
                   help="a device not heard from for this long is `silent` (default 24h)")
    p.add_argument("--json", action="store_true", help="print {fleet, devices: [...]} as JSON")
    p.set_defaults(func=cmd_fleet_devices)

    p = fsub.add_parser("watch", help="live rollout progress, one bar per wave",
                        description="Follow the fleet's latest rollout: a progress bar per wave,\n"
                                    "redrawn in place on a terminal; otherwise each line that changed,\n"
                                    "in full and stamped with the time (--json: one JSON object per\n"
                                    "change). Exits 0 when it is done, 1 when halted or aborted.",
                        epilog=FLEET_EPILOG, formatter_class=common.RAW)
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--id", type=int, help="rollout id (default: the latest of the fleet)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines: one object per change (the rollout and its waves, as rollout "
                        "status --json)")
    p.set_defaults(func=cmd_fleet_watch)

    p = fsub.add_parser("device", help="set one device aside: quarantine, release or forget (audited)",
                        description="Quarantine a device (its statuses are still stored, rollouts "
                                    "never count it), release it, or forget its row (it comes back "
                                    "if it publishes again). Each is an audit event: who, when, why.",
                        epilog=DEVICE_EPILOG, formatter_class=common.RAW)
    p.add_argument("action", choices=fleetops.DEVICE_ACTIONS,
                   help="quarantine (rollouts skip it), release (count it again) or forget (delete its row)")
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
    who = args.by or audit.operator_name()
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


DEVICE_STATES = (*status_schema.STATES, *render.EXTRA_STATES)


def _version(text: str) -> int | None:
    """--version: N, vN or none. Raises: argparse.ArgumentTypeError."""
    if text.lower() == "none":
        return None
    digits = text[1:] if text[:1] in "vV" else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"expected a bundle version like 7 or v7 (or none), got {text!r}")
    return int(digits)


def cmd_fleet_devices(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    if args.state is not None and args.state not in DEVICE_STATES:
        raise UsageError(f"--state: unknown state {args.state!r}; one of {', '.join(DEVICE_STATES)}")
    now = int(time.time())
    silent = int(times.positive_seconds(args.silent_after, "--silent-after"))
    with fleetdb.open_db(args.db) as db:
        db.require_fleet(fleet)
        devices = db.devices(fleet)
    rows = [render.device_row(d, now, silent) for d in devices]
    if "device_version" in vars(args):  # given (None: devices without a bundle)
        rows = [r for r in rows if r["version"] == args.device_version]
    if args.state is not None:
        rows = [r for r in rows if args.state in r["states"]]
    if args.group is not None:
        group = None if args.group.lower() == "none" else args.group
        rows = [r for r in rows if r["group"] == group]
    if args.json:
        common.print_json({"fleet": fleet, "time": now, "devices": rows})
    elif terminal.is_terminal():
        terminal.print_table(render.DEVICE_COLUMNS, [render.device_cells(r) for r in rows],
                             title=f"fleet {fleet}: {len(rows)} of {len(devices)} device(s)")
    else:
        print("\n".join(render.plain_lines(render.DEVICE_COLUMNS, [render.device_cells(r) for r in rows])))
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
    elif terminal.is_terminal():
        terminal.print_summary(s, now)
    else:
        print("\n".join(render.render_summary(s, now)))
    return 0


def cmd_fleet_watch(args: argparse.Namespace) -> int:
    """Follow the rollout until it is final: rich bars on a terminal, else a full line per wave
    whose line changed (the deadline as a time, so a line changes only when something happens),
    or with --json one JSON object per change."""
    fleet = fleetops.check_fleet(args.fleet)
    if args.interval <= 0:
        raise UsageError(f"--interval must be more than 0 seconds, got {args.interval:g}")
    tty = terminal.is_terminal() and not args.json
    try:
        with fleetdb.open_db(args.db) as db:
            db.require_fleet(fleet)
            if tty:
                with terminal.live() as update:
                    return _watch(db, fleet, args, lambda r, waves, now: update(
                        terminal.rollout_view(r, waves, now)))
            return _watch(db, fleet, args, _json_update() if args.json else _plain_update())
    except KeyboardInterrupt:
        return 130


def _watch(db: fleetdb.FleetDB, fleet: str, args: argparse.Namespace, show) -> int:
    """Show the rollout every --interval until it is final; 0 done, 1 halted or aborted."""
    while True:
        now = int(time.time())
        r = fleetops.find_rollout(db, fleet, args.id)
        show(r, rollout.history(r, db.devices(fleet), now, db.wave_results(r.id)), now)
        if r.state in rollout.FINAL:
            return 0 if r.state == rollout.DONE else 1
        time.sleep(args.interval)


def _plain_update():
    """Plain output: each line that changed, whole, stamped with the time."""
    shown: list[str] = []

    def show(r: rollout.Rollout, waves: list[rollout.WaveProgress], now: int) -> None:
        nonlocal shown
        lines = render.render_rollout(r, waves, now, tty=False, absolute=True)
        for line, old in zip(lines, shown + [None] * len(lines), strict=False):
            if line != old:
                print(f"{iso(now)} {line.strip()}", flush=True)
        shown = lines
    return show


def _json_update():
    """JSON Lines: the rollout and its waves, one object each time something but the clock changed."""
    last: str | None = None

    def show(r: rollout.Rollout, waves: list[rollout.WaveProgress], now: int) -> None:
        nonlocal last
        body = render.rollout_json(r, waves)
        key = json.dumps(body, sort_keys=True, default=str)
        if key != last:
            common.print_json({"time": now, **body})
            last = key
    return show
