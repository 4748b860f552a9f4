"""`trustfleet publish`, `serve`, `rollout start|status|pause|resume|abort`, `fleet status|watch`.

Everything that touches the broker or the fleet store. Documents are
verified against the operator's root chain before anything is published or
stored: the broker is untrusted, but we never hand it something a device
would refuse.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from trustfleet_device import policy, topics
from trustfleet_device.errors import RollbackError, TrustfleetError
from trustfleet_server import documents, keys, mqtturl, publish, render, rollout, times
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.times import iso

RAW = argparse.RawDescriptionHelpFormatter
DEFAULT_WAVES = "1%,10%,50%,100%"

PUBLISH_EPILOG = """\
examples:
  trustfleet publish --broker mqtt://broker:1883 --root root.cose root.cose bundle-v7.cose
  trustfleet publish --broker mqtts://ops@broker --root root.cose --to group:canary bundle-v8.cose
  trustfleet publish --broker mqtt://broker --root root.cose root-v2.cose   # a rotation: v2 must follow v1

Topics (docs/topics.md): roots on tf/<fleet>/root/<version>, bundles on
tf/<fleet>/bundle (or .../bundle/group/<name>, .../bundle/bucket/<nn>),
timestamps on tf/<fleet>/timestamp; all retained, QoS 1.
Staged delivery is `trustfleet rollout start`; publish --to fleet reaches everyone at once.
The broker password may come from $TRUSTFLEET_MQTT_PASSWORD.
"""

SERVE_EPILOG = """\
examples:
  trustfleet serve --broker mqtt://broker:1883 --fleet acme --root root.cose --db fleet.db \\
      --timestamp-key keys/timestamp.pem --timestamp-every 300
  trustfleet serve --broker mqtt://broker --fleet acme --root root.cose \\
      --db postgresql://trustfleet@db/fleet            # several workers may share one PostgreSQL
  trustfleet serve ... --once                         # one round: ingest, step, timestamp, exit

On MQTT 5 brokers the ingest uses the shared subscription
$share/trustfleet/tf/<fleet>/status/+ so several `serve` workers split the
load; on MQTT 3.1.1 run one worker. Stop with SIGTERM or Ctrl-C.
"""

ROLLOUT_EPILOG = """\
examples:
  trustfleet rollout start --db fleet.db --fleet acme --root root.cose --bundle bundle-v8.cose
  trustfleet rollout start ... --groups canary,beta,all --success 0.95 --wave-deadline 30m
  trustfleet rollout status --db fleet.db --fleet acme
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

gates:
  A wave passes when --success of its counted devices run the new version (state ok or
  stale). It halts, and its topics are cleared, when more than --max-failure of them
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

FLEET_EPILOG = """\
examples:
  trustfleet fleet status --db fleet.db --fleet acme
  trustfleet fleet status --db postgresql://trustfleet@db/fleet --fleet acme --json
  trustfleet fleet watch --db fleet.db --fleet acme     # exit 0 when done, 1 halted/aborted
"""


def register(sub: argparse._SubParsersAction) -> None:
    _register_publish(sub)
    _register_serve(sub)
    _register_rollout(sub)
    _register_fleet(sub)


# --------------------------------------------------------------------------- shared


def _db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, metavar="PATH_OR_URL",
                   help="fleet store: a SQLite file (created if missing) or a postgresql:// URL")


def _fleet_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fleet", required=True, help="fleet name (as in the root)")


def _root_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, action="append", required=True, metavar="ROOT",
                   help="trusted root (signed); repeat to walk a rotation chain, oldest first")


def _check_fleet(fleet: str) -> str:
    try:
        return topics.check_name(fleet, "fleet")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _open(target: str) -> fleetdb.FleetDB:
    return fleetdb.open_db(target)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=None, sort_keys=False, default=str))


# --------------------------------------------------------------------------- publish


def _register_publish(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish signed roots, bundles and timestamps to the broker",
                       description="Publish signed documents, retained at QoS 1, after verifying each "
                                   "against the root chain exactly as a device would. A root must be "
                                   "one of the --root chain or exactly the next version; a bundle "
                                   "must be signed by a threshold of bundle keys and unexpired.",
                       epilog=PUBLISH_EPILOG, formatter_class=RAW)
    p.add_argument("--broker", required=True, metavar="URL",
                   help="mqtt://[user[:password]@]host[:port] or mqtts://...")
    _root_argument(p)
    p.add_argument("--to", default="fleet", metavar="TARGET",
                   help="where bundles go: fleet (default), group:NAME or bucket:N (0-99)")
    p.add_argument("--json", action="store_true", help="print what was published as JSON")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="signed root, bundle or timestamp")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    url = mqtturl.parse(args.broker)
    plan = publish.plan_publish(args.root, args.files, args.to, int(time.time()))
    from trustfleet_server.serve.link import publish_retained

    protocol = publish_retained(url, [(p["topic"], p["raw"]) for p in plan])
    for p in plan:
        del p["raw"]
    if args.json:
        _print_json({"broker": str(url), "protocol": protocol, "published": plan})
        return 0
    for p in plan:
        what = f"{p['type']} v{p['version']}" if "version" in p else f"timestamp {p['time']}"
        print(f"published {what} -> {p['topic']} ({p['bytes']} bytes, retained, QoS 1)")
    return 0


# --------------------------------------------------------------------------- serve


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the fleet server: ingest statuses, timestamps, rollouts",
                       description="Ingest device statuses and reports into the fleet store, publish "
                                   "signed timestamps on a schedule, and drive staged rollouts.",
                       epilog=SERVE_EPILOG, formatter_class=RAW)
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://... or mqtts://...")
    _fleet_argument(p)
    _root_argument(p)
    _db_argument(p)
    p.add_argument("--timestamp-key", type=Path, metavar="KEY",
                   help="the online timestamp key (PKCS#8 PEM); without it no timestamps are published")
    p.add_argument("--passphrase-file", help=f"passphrase of the timestamp key (else ${keys.PASSPHRASE_ENV})")
    p.add_argument("--timestamp-every", default="300", metavar="DURATION",
                   help="seconds (or 5m, 1h) between timestamps (default 300)")
    p.add_argument("--step-every", default="5", metavar="DURATION",
                   help="seconds between rollout steps (default 5)")
    p.add_argument("--client-id", help="MQTT client id (default: random per process)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true",
                   help="one round: read retained statuses, ingest, step the rollout, one timestamp, exit")
    g.add_argument("--duration", metavar="DURATION", help="run this long (e.g. 30s, 10m), then exit")
    p.add_argument("--json", action="store_true", help="print the final counters as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    p.set_defaults(func=cmd_serve)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced, e.g. under pytest)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("trustfleet")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def cmd_serve(args: argparse.Namespace) -> int:
    from trustfleet_server.serve.server import FleetServer

    url = mqtturl.parse(args.broker)
    fleet = _check_fleet(args.fleet)
    key = None
    if args.timestamp_key:
        passphrase = keys.read_passphrase(args.passphrase_file, confirm=False)
        key = keys.load_private_key(args.timestamp_key, passphrase)
    every = times.positive_seconds(args.timestamp_every, "--timestamp-every")
    step = times.positive_seconds(args.step_every, "--step-every")
    duration = times.positive_seconds(args.duration, "--duration") if args.duration else None
    _setup_logging(args.verbose)
    with _open(args.db) as db:
        server = FleetServer(url, fleet, [documents.read_file(p) for p in args.root], db, key, every, step,
                             client_id=args.client_id)
        stats = server.run(once=args.once, duration=duration)
    summary = {"statuses": stats.statuses, "ignored": stats.ignored, "rejected": stats.rejected,
               "reports": stats.reports, "timestamps": stats.timestamps, "waves": stats.waves,
               "cleared": stats.cleared, "protocol": stats.protocol, "shared": stats.shared,
               "events": stats.events}
    if args.json:
        _print_json(summary)
    elif args.once or duration:
        print(f"ingested {stats.statuses} status(es) ({stats.ignored} unchanged, {stats.rejected} "
              f"rejected) and {stats.reports} report(s); published {stats.timestamps} timestamp(s), "
              f"{stats.waves} wave(s); cleared {stats.cleared} topic(s) [{stats.protocol}]")
        for e in stats.events:
            print(e)
    return 0


# --------------------------------------------------------------------------- rollout


def _register_rollout(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("rollout", help="staged rollouts: start, status, pause, resume, abort",
                           description="Staged rollouts of a signed bundle, wave by wave, gated on "
                                       "device reports. `trustfleet serve` carries them out.",
                           epilog=ROLLOUT_EPILOG, formatter_class=RAW)
    rsub = group.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)

    p = rsub.add_parser("start", help="start a rollout of a signed bundle",
                        description="Start a staged rollout. The bundle must verify against the root "
                                    "chain and be newer than every version the fleet runs.",
                        epilog=START_EPILOG, formatter_class=RAW)
    _db_argument(p)
    _fleet_argument(p)
    p.add_argument("--bundle", type=Path, required=True, help="the signed bundle to roll out")
    _root_argument(p)
    w = p.add_mutually_exclusive_group()
    w.add_argument("--waves", help="cumulative bucket percents (default 1%%,10%%,50%%,100%%)")
    w.add_argument("--groups", help="rollout groups, one wave each, ending with `all`")
    p.add_argument("--success", type=float, default=rollout.DEFAULT_SUCCESS,
                   help="share of a wave's devices that must run the version (default 0.9)")
    p.add_argument("--max-failure", type=float, default=rollout.DEFAULT_MAX_FAILURE,
                   help="halt when more than this share failed (default 0.2)")
    p.add_argument("--wave-deadline", default=str(rollout.DEFAULT_DEADLINE), metavar="DURATION",
                   help="time for a wave to pass, seconds or 10m/1h (default 600)")
    p.add_argument("--json", action="store_true", help="print the new rollout as JSON")
    p.set_defaults(func=cmd_rollout_start)

    p = rsub.add_parser("status", help="show the latest (or a given) rollout and its waves")
    _db_argument(p)
    _fleet_argument(p)
    p.add_argument("--id", type=int, help="rollout id (default: the latest of the fleet)")
    p.add_argument("--json", action="store_true", help="rollout, per-wave progress and events as JSON")
    p.set_defaults(func=cmd_rollout_status)

    for name, helptext in (("pause", "stop advancing; published waves stay"),
                           ("resume", "continue a paused rollout"),
                           ("abort", "stop for good and clear the wave topics")):
        p = rsub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        _db_argument(p)
        _fleet_argument(p)
        p.add_argument("--id", type=int, help="rollout id (default: the fleet's active rollout)")
        if name == "abort":
            p.add_argument("--reason", default="aborted by the operator",
                           help="recorded with the rollout and shown by `rollout status`")
            p.add_argument("--broker", metavar="URL",
                           help="clear the wave topics now (else `serve` clears them on its next step)")
        p.add_argument("--json", action="store_true", help="print the rollout as JSON")
        p.set_defaults(func=cmd_rollout_change, action=name)


def cmd_rollout_start(args: argparse.Namespace) -> int:
    fleet = _check_fleet(args.fleet)
    now = int(time.time())
    raw = documents.read_file(args.bundle)
    root = documents.load_root_chain(args.root)
    if root.fleet != fleet:
        raise UsageError(f"--fleet {fleet} does not match the root's fleet {root.fleet}")
    try:
        b = policy.verify_bundle(root, raw, now=now)
    except TrustfleetError as exc:
        raise publish.refused(args.bundle, exc) from None
    try:
        waves = rollout.parse_groups(args.groups) if args.groups else rollout.parse_waves(
            args.waves or DEFAULT_WAVES)
        deadline = int(times.positive_seconds(args.wave_deadline, "--wave-deadline"))
        plan = rollout.new_rollout(fleet, b.version, documents.sha256(raw).hex(), raw, waves, now,
                                   args.success, args.max_failure, deadline)
    except rollout.RolloutError as exc:
        raise UsageError(str(exc)) from None
    with _open(args.db) as db:
        running = db.max_version(fleet)
        done = db.latest_done(fleet)
        floor = max(v for v in (running, done.version if done else None, 0) if v is not None)
        if b.version <= floor:
            raise RollbackError(
                f"{args.bundle}: bundle v{b.version} is not newer than v{floor}, which the fleet "
                f"already runs; going back means a new bundle with a higher version and the old "
                f"content (see `trustfleet rollout start --help`)")
        r = db.create_rollout(plan)
        names = ", ".join(w.name for w in r.waves)
        db.add_event(r.id, now, f"started: v{r.version} in waves {names} (pass at "
                                f"{r.success:.2f} within {r.deadline} s, halt above {r.max_failure:.2f})")
    if args.json:
        _print_json(render.rollout_json(r))
    else:
        print(f"rollout {r.id} started: bundle v{r.version} for fleet {fleet} in {len(r.waves)} "
              f"waves ({names}); `trustfleet serve` publishes the first wave on its next step")
        print(f"watch it: trustfleet fleet watch --db {args.db} --fleet {fleet}")
    return 0


def _find_rollout(db: fleetdb.FleetDB, fleet: str, rollout_id: int | None,
                  active_only: bool = False) -> rollout.Rollout:
    if rollout_id is not None:
        r = db.rollout(rollout_id)
        if r.fleet != fleet:
            raise UsageError(f"rollout {rollout_id} belongs to fleet {r.fleet}, not {fleet}")
        return r
    r = db.rollout_to_drive(fleet) if active_only else db.latest_rollout(fleet)
    if r is None:
        raise UsageError(f"fleet {fleet} has no {'active ' if active_only else ''}rollout")
    return r


def cmd_rollout_status(args: argparse.Namespace) -> int:
    fleet = _check_fleet(args.fleet)
    now = int(time.time())
    with _open(args.db) as db:
        r = _find_rollout(db, fleet, args.id)
        waves = rollout.progress(r, db.devices(fleet), now)
        events = db.events(r.id, 10)
    if args.json:
        _print_json(render.rollout_json(r, waves, events))
        return 0
    print("\n".join(render.render_rollout(r, waves, now, tty=False)))
    if events:
        print("events:")
        for e in events:
            print(f"  {iso(e['time'])}  {e['text']}")
    return 0


def cmd_rollout_change(args: argparse.Namespace) -> int:
    fleet = _check_fleet(args.fleet)
    now = int(time.time())
    url = mqtturl.parse(args.broker) if getattr(args, "broker", None) else None
    with _open(args.db) as db:
        r = _find_rollout(db, fleet, args.id, active_only=True)
        change = {"pause": lambda x: rollout.pause(x, now), "resume": lambda x: rollout.resume(x, now),
                  "abort": lambda x: rollout.abort(x, now, args.reason)}[args.action]
        if not (args.action == "abort" and r.state in rollout.FINAL):
            try:
                r = db.update_rollout(r.id, change)
            except rollout.RolloutError as exc:
                raise UsageError(str(exc)) from None
            done = {"pause": "paused", "resume": "resumed", "abort": "aborted"}[args.action]
            db.add_event(r.id, now, f"{done} by the operator"
                         + (f": {args.reason}" if args.action == "abort" else ""))
        cleared = []
        if url is not None and r.published:
            from trustfleet_server.serve.link import publish_retained

            publish_retained(url, [(t, b"") for t in r.published])
            db.remove_published(r.id, list(r.published))
            db.add_event(r.id, now, f"cleared {len(r.published)} wave topic(s) from the command line")
            cleared = list(r.published)
            r = db.rollout(r.id)
    if args.json:
        _print_json({**render.rollout_json(r), "cleared": cleared})
        return 0
    print(f"rollout {r.id} (v{r.version}) is {r.state}")
    if args.action == "abort":
        if cleared:
            print(f"cleared {len(cleared)} wave topic(s)")
        elif r.published:
            print(f"{len(r.published)} wave topic(s) still hold the bundle: `trustfleet serve` clears "
                  f"them on its next step (or run this again with --broker)")
    return 0


# --------------------------------------------------------------------------- fleet status / watch


def _register_fleet(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("fleet", help="fleet state: devices by version and state, live rollout",
                           description="What the fleet runs, from the statuses `trustfleet serve` "
                                       "ingested.", epilog=FLEET_EPILOG, formatter_class=RAW)
    fsub = group.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = fsub.add_parser("status", help="devices by version and state; stale, fail-open, offline; reports",
                        epilog=FLEET_EPILOG, formatter_class=RAW)
    _db_argument(p)
    _fleet_argument(p)
    p.add_argument("--silent-after", default="24h", metavar="DURATION",
                   help="list devices not heard from for this long (default 24h)")
    p.add_argument("--limit", type=int, default=20, help="devices listed per section (default 20)")
    p.add_argument("--json", action="store_true", help="the whole summary as JSON")
    p.set_defaults(func=cmd_fleet_status)

    p = fsub.add_parser("watch", help="live rollout progress, one bar per wave",
                        description="Follow the fleet's latest rollout: a progress bar per wave, "
                                    "redrawn in place on a terminal, one line per change otherwise. "
                                    "Exits 0 when it is done, 1 when halted or aborted.",
                        epilog=FLEET_EPILOG, formatter_class=RAW)
    _db_argument(p)
    _fleet_argument(p)
    p.add_argument("--id", type=int, help="rollout id (default: the latest of the fleet)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    p.set_defaults(func=cmd_fleet_watch)


def cmd_fleet_status(args: argparse.Namespace) -> int:
    fleet = _check_fleet(args.fleet)
    now = int(time.time())
    silent = int(times.positive_seconds(args.silent_after, "--silent-after"))
    with _open(args.db) as db:
        s = db.summary(fleet, now, silent_after=silent, limit=args.limit)
        r = db.latest_rollout(fleet)
        if r is not None:
            s["rollout"] = {"id": r.id, "version": r.version, "state": r.state,
                            "wave": r.wave.name if r.wave else None}
    if args.json:
        _print_json(s)
        return 0
    print("\n".join(render.render_summary(s, now)))
    return 0


def cmd_fleet_watch(args: argparse.Namespace) -> int:
    fleet = _check_fleet(args.fleet)
    tty = sys.stdout.isatty()
    shown: list[str] = []
    try:
        with _open(args.db) as db:
            while True:
                now = int(time.time())
                r = _find_rollout(db, fleet, args.id)
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
