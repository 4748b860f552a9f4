"""`trustfleet rollout start|status|pause|resume|abort`: staged rollouts in the fleet store (fleetops.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trustfleet_server import fleetops, mqtturl, render, rollout, terminal, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.times import iso

ROLLOUT_EPILOG = """\
examples:
  trustfleet rollout start --db fleet.db --fleet acme --root root.cose --bundle bundle-v8.cose
  trustfleet rollout start ... --groups canary,beta,all --success 0.95 --wave-deadline 30m
  trustfleet rollout status --db fleet.db --fleet acme
  trustfleet rollout list --db fleet.db --state halted
  trustfleet rollout pause --db fleet.db --fleet acme
  trustfleet rollout abort --db fleet.db --fleet acme --broker mqtt://broker   # clear topics now

`trustfleet serve` drives the rollout: it publishes each wave, watches the
device statuses, and halts by itself past the failure ratio.
"""

START_EPILOG = """\
waves:
  --waves 1%,10%,50%,100%    cumulative shares of the fleet by hash bucket (the default);
                             a device's bucket is SHA-256(device id) mod 100, stable
  --groups canary,beta,all   rollout groups, one wave each ('a+b' puts two groups in one
                             wave); `all` is the whole fleet and must come last
  The last wave must reach 100% of the fleet; it also publishes tf/<fleet>/bundle.
  A wave naming a group no device is in, or reaching no device, is refused: it would
  pass at once (--allow-empty-waves to start anyway). --dry-run shows each wave's
  devices and the halt rule, and publishes and stores nothing.

gates:
  A wave passes when --success of its counted devices run the new version (state ok,
  stale or behind). It halts, and its topics are cleared, when more than --max-failure of them
  reverted, marked the version bad, or still have no trust store at the deadline, or
  when --wave-deadline passes without success. Offline devices are not counted; devices
  silent since the wave began are not counted once the deadline has passed.

going back:
  There is no rollback to a lower version: devices never accept one. To undo a bundle,
  build the old content again with a HIGHER version and roll that out:
    trustfleet bundle build old.toml --version 9 -o bundle-v9.cose   # v8 was the bad one
    trustfleet bundle sign --key ... bundle-v9.cose
    trustfleet rollout start --db fleet.db --fleet acme --root root.cose --bundle bundle-v9.cose
"""

def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("rollout", help="staged rollouts: start, status, list, pause, resume, abort",
                           description="Staged rollouts of a signed bundle, wave by wave, gated on "
                                       "device reports. `trustfleet serve` carries them out.",
                           epilog=ROLLOUT_EPILOG, formatter_class=common.RAW)
    rsub = group.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)

    p = rsub.add_parser("start", help="start a rollout of a signed bundle",
                        description="Start a staged rollout. The bundle must verify against the root "
                                    "chain and be newer than every version the fleet runs.",
                        epilog=START_EPILOG, formatter_class=common.RAW)
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--bundle", type=Path, required=True, help="the signed bundle to roll out")
    common.root_argument(p)
    w = p.add_mutually_exclusive_group()
    w.add_argument("--waves", help="cumulative bucket percents (default 1%%,10%%,50%%,100%%)")
    w.add_argument("--groups", help="rollout groups, one wave each, ending with `all`")
    p.add_argument("--success", type=float, default=rollout.DEFAULT_SUCCESS,
                   help="share of a wave's devices that must run the version (default 0.9)")
    p.add_argument("--max-failure", type=float, default=rollout.DEFAULT_MAX_FAILURE,
                   help="halt when more than this share failed (default 0.2)")
    p.add_argument("--wave-deadline", default=str(rollout.DEFAULT_DEADLINE), metavar="DURATION",
                   help="time for a wave to pass, seconds or 10m/1h (default 600)")
    p.add_argument("--allow-empty-waves", action="store_true",
                   help="start even when a wave names a group no device is in, or reaches no device "
                        "(such a wave passes at once: the next one goes out unguarded)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the waves, the devices each reaches now and the halt rule; "
                        "publish nothing, store nothing")
    p.add_argument("--json", action="store_true", help="print the new rollout (or the dry run) as JSON")
    p.set_defaults(func=cmd_rollout_start)

    p = rsub.add_parser("status", help="show the latest (or a given) rollout and its waves",
                        description="A rollout and its waves: each ended wave as recorded when it "
                                    "ended (moved on, halted, aborted), the running wave counted "
                                    "now from the devices' statuses.")
    common.db_argument(p)
    common.fleet_argument(p)
    p.add_argument("--id", type=int, help="rollout id (default: the latest of the fleet)")
    p.add_argument("--json", action="store_true", help="rollout, per-wave progress and events as JSON")
    p.set_defaults(func=cmd_rollout_status)

    p = rsub.add_parser("list", help="every rollout, newest first",
                        description="Every rollout of the store (or of one fleet), newest first: id, "
                                    "fleet, version, state, waves passed of all, started, finished "
                                    "and the halt or abort reason.")
    common.db_argument(p)
    common.fleet_argument(p, required=False, help="only this fleet's rollouts (default: every fleet)")
    p.add_argument("--state", metavar="STATE",
                   help=f"only rollouts in this state: {', '.join(rollout.STATES)}")
    p.add_argument("--json", action="store_true", help="print {rollouts: [...]} as JSON")
    p.set_defaults(func=cmd_rollout_list)

    for name, helptext in (("pause", "stop advancing; published waves stay"),
                           ("resume", "continue a paused rollout"),
                           ("abort", "stop for good and clear the wave topics")):
        p = rsub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        common.db_argument(p)
        common.fleet_argument(p)
        p.add_argument("--id", type=int, help="rollout id (default: the fleet's active rollout)")
        if name == "abort":
            p.add_argument("--reason", default="aborted by the operator",
                           help="recorded with the rollout and shown by `rollout status`")
            common.broker_argument(p, required=False,
                                   help="clear the wave topics now (else `serve` clears them on its next step)")
        p.add_argument("--json", action="store_true", help="print the rollout as JSON")
        p.set_defaults(func=cmd_rollout_change, action=name)


def cmd_rollout_list(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet) if args.fleet else None
    if args.state is not None and args.state not in rollout.STATES:
        raise UsageError(f"--state: unknown state {args.state!r}; one of {', '.join(rollout.STATES)}")
    with fleetdb.open_db(args.db) as db:
        if fleet is not None:
            db.require_fleet(fleet)
        rows = [render.rollout_row(r) for r in db.all_rollouts(fleet, args.state)]
    if args.json:
        common.print_json({"rollouts": rows})
    elif terminal.is_terminal():
        terminal.print_table(render.ROLLOUT_COLUMNS, [render.rollout_cells(r) for r in rows])
    else:
        print("\n".join(render.plain_lines(render.ROLLOUT_COLUMNS, [render.rollout_cells(r) for r in rows])))
    return 0


def cmd_rollout_start(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    now = int(time.time())
    deadline = int(times.positive_seconds(args.wave_deadline, "--wave-deadline"))
    plan = fleetops.plan_rollout(fleet, args.root, args.bundle, now, waves=args.waves, groups=args.groups,
                                 success=args.success, max_failure=args.max_failure, deadline=deadline)
    if args.dry_run:
        return _dry_run(args, plan)
    with fleetdb.open_db(args.db) as db:
        fleetops.check_floor(db, plan, args.bundle)
        fleetops.check_reach(plan, db.devices(fleet), args.allow_empty_waves)
        r = fleetops.start_rollout(db, plan, args.bundle, now)
    if args.json:
        common.print_json(render.rollout_json(r))
    else:
        names = ", ".join(w.name for w in r.waves)
        print(f"rollout {r.id} started: bundle v{r.version} for fleet {fleet} in {len(r.waves)} "
              f"waves ({names}); `trustfleet serve` publishes the first wave on its next step")
        print(f"watch it: trustfleet fleet watch --db {args.db} --fleet {fleet}")
    return 0


def _dry_run(args: argparse.Namespace, plan: rollout.Rollout) -> int:
    """What `rollout start` would do, from the store as it is; nothing is published or stored."""
    if fleetdb_exists(args.db):
        with fleetdb.open_db(args.db) as db:
            devices = db.devices(plan.fleet)
            floor = fleetops.check_floor(db, plan, args.bundle)
    else:
        devices, floor = [], 0  # no store yet: an empty fleet, and no file is created
    reached = fleetops.check_reach(plan, devices, args.allow_empty_waves)
    rule = rollout.halt_rule(plan)
    waves = [{**w.to_json(), **reach, "topics": len(rollout.wave_topics(plan.fleet, plan.waves, i))}
             for i, (w, reach) in enumerate(zip(plan.waves, reached, strict=True))]
    if args.json:
        common.print_json({"dry_run": True, "fleet": plan.fleet, "version": plan.version,
                           "sha256": plan.sha256, "floor": floor, "fleet_devices": len(devices),
                           "waves": waves, "thresholds": plan.thresholds(), "halt_rule": rule})
        return 0
    print(f"dry run: bundle v{plan.version} for fleet {plan.fleet} ({len(devices)} device(s) known); "
          f"nothing published, nothing stored")
    width = max(len(w["name"]) for w in waves)
    for i, w in enumerate(waves, 1):
        extra = f", {w['excluded']} excluded (suspect or quarantined)" if w["excluded"] else ""
        print(f"  wave {i} {w['name']:<{width}}  {w['devices']:>6} device(s), {w['new']} new{extra}; "
              f"{w['topics']} topic(s)")
    print(f"halt rule: {rule}")
    return 0


def fleetdb_exists(target: str) -> bool:
    """False for a SQLite path with no file yet (a dry run must not create it)."""
    return "://" in target or Path(target).exists()


def cmd_rollout_status(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    now = int(time.time())
    with fleetdb.open_db(args.db) as db:
        db.require_fleet(fleet)
        r = fleetops.find_rollout(db, fleet, args.id)
        waves = rollout.history(r, db.devices(fleet), now, db.wave_results(r.id))
        events = db.events(r.id, 10)
    if args.json:
        common.print_json(render.rollout_json(r, waves, events))
        return 0
    if terminal.is_terminal():
        terminal.print_rollout(r, waves, now, events)
        return 0
    print("\n".join(render.render_rollout(r, waves, now, tty=False)))
    if events:
        print("events:")
        for e in events:
            print(f"  {iso(e['time'])}  {e['text']}")
    return 0


def cmd_rollout_change(args: argparse.Namespace) -> int:
    fleet = fleetops.check_fleet(args.fleet)
    now = int(time.time())
    url = mqtturl.parse(args.broker) if getattr(args, "broker", None) else None
    with fleetdb.open_db(args.db) as db:
        db.require_fleet(fleet)
        r, cleared = fleetops.change_rollout(db, fleet, args.id, args.action, now,
                                             getattr(args, "reason", ""), url)
    if args.json:
        common.print_json({**render.rollout_json(r), "cleared": cleared})
        return 0
    print(f"rollout {r.id} (v{r.version}) is {r.state}")
    if args.action == "abort":
        if cleared:
            print(f"cleared {len(cleared)} wave topic(s)")
        elif r.published:
            print(f"{len(r.published)} wave topic(s) still hold the bundle: `trustfleet serve` clears "
                  f"them on its next step (or run this again with --broker)")
    return 0
