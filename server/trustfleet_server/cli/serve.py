"""`trustfleet serve`: the fleet server (serve/server.py) from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from trustfleet_server import documents, keys, mqtturl, times
from trustfleet_server.cli import common
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.fleetops import check_fleet

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
Broker outages never end serve: it reconnects with backoff (1 s doubling to
60 s) and then publishes again the retained documents the broker lost.
Under systemd: tools/systemd/trustfleet-serve.service.
"""

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the fleet server: ingest statuses, timestamps, rollouts",
                       description="Ingest device statuses and reports into the fleet store, publish "
                                   "signed timestamps on a schedule, and drive staged rollouts.",
                       epilog=SERVE_EPILOG, formatter_class=common.RAW)
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://... or mqtts://...")
    common.fleet_argument(p)
    common.root_argument(p)
    common.db_argument(p)
    p.add_argument("--timestamp-key", type=Path, metavar="KEY",
                   help="the online timestamp key (PKCS#8 PEM); without it no timestamps are published")
    p.add_argument("--passphrase-file", help=f"passphrase of the timestamp key (else ${keys.PASSPHRASE_ENV})")
    p.add_argument("--timestamp-every", default="300", metavar="DURATION",
                   help="seconds (or 5m, 1h) between timestamps (default 300)")
    p.add_argument("--step-every", default="5", metavar="DURATION",
                   help="seconds between rollout steps (default 5)")
    p.add_argument("--client-id",
                   help="MQTT client id (default: tfserve-<fleet>-<host name>, stable across restarts "
                        "so a restarted worker takes back its MQTT 5 session at once; give each "
                        "worker on one host its own id)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true",
                   help="one round: read retained statuses, ingest, step the rollout, one timestamp, exit")
    g.add_argument("--duration", metavar="DURATION", help="run this long (e.g. 30s, 10m), then exit")
    p.add_argument("--json", action="store_true", help="print the final counters as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from trustfleet_server.serve.server import FleetServer, log_to_stderr

    url = mqtturl.parse(args.broker)
    fleet = check_fleet(args.fleet)
    key = None
    if args.timestamp_key:
        passphrase = keys.read_passphrase(args.passphrase_file, confirm=False)
        key = keys.load_private_key(args.timestamp_key, passphrase)
    every = times.positive_seconds(args.timestamp_every, "--timestamp-every")
    step = times.positive_seconds(args.step_every, "--step-every")
    duration = times.positive_seconds(args.duration, "--duration") if args.duration else None
    log_to_stderr(args.verbose)
    with fleetdb.open_db(args.db) as db:
        server = FleetServer(url, fleet, [documents.read_file(p) for p in args.root], db, key, every, step,
                             client_id=args.client_id)
        stats = server.run(once=args.once, duration=duration)
    summary = {"statuses": stats.statuses, "ignored": stats.ignored, "rejected": stats.rejected,
               "reports": stats.reports, "timestamps": stats.timestamps, "waves": stats.waves,
               "cleared": stats.cleared, "restored": stats.restored, "rate_limited": stats.rate_limited,
               "coalesced": stats.coalesced, "dropped": stats.dropped, "protocol": stats.protocol,
               "shared": stats.shared, "events": stats.events}
    if args.json:
        common.print_json(summary)
    elif args.once or duration:
        print(f"ingested {stats.statuses} status(es) ({stats.ignored} unchanged, {stats.rejected} "
              f"rejected) and {stats.reports} report(s); published {stats.timestamps} timestamp(s), "
              f"{stats.waves} wave(s); cleared {stats.cleared} topic(s) [{stats.protocol}]")
        if stats.rate_limited or stats.dropped:
            print(f"dropped {stats.rate_limited} message(s) over a device's rate limit and "
                  f"{stats.dropped} report(s) over the pending cap")
        for e in stats.events:
            print(e)
    return 0
