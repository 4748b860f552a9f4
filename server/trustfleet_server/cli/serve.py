"""`trustfleet serve`: the fleet server (serve/server.py) from the command line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from trustfleet_server import documents, keys, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.fleetops import check_fleet
from trustfleet_server.serve.limits import Limits

if TYPE_CHECKING:
    from trustfleet_server.console.web import ConsoleServer

SERVE_EPILOG = """\
examples:
  trustfleet serve --broker mqtt://broker:1883 --fleet acme --root root.cose --db fleet.db \\
      --timestamp-key keys/timestamp.pem --timestamp-every 300
  trustfleet serve --broker mqtt://broker --fleet acme --root root.cose \\
      --db postgresql://trustfleet@db/fleet            # several workers may share one PostgreSQL
  trustfleet serve ... --once                         # one round: ingest, step, timestamp, exit
  trustfleet serve --broker mqtt://n1:1883,mqtt://n2:1883,mqtt://n3:1883 ...   # a clustered broker

On MQTT 5 brokers the ingest uses the shared subscription
$share/trustfleet/tf/<fleet>/status/+ so several `serve` workers split the
load; on MQTT 3.1.1 run one worker. Of several workers on one store, one at a
time leads the fleet (a lease in the store): it alone publishes timestamps,
steps rollouts and repairs retained documents; another takes over within 10 s
when it dies. Stop with SIGTERM or Ctrl-C.
With several --broker URLs (the nodes of one clustered broker) serve uses one
at a time and moves to the next when it cannot connect or loses the
connection. On a broker without shared subscriptions (MQTT 3.1.1, e.g. NATS)
only the leader subscribes to statuses and reports, so each is ingested once.
Broker outages never end serve: it reconnects with backoff (1 s doubling to
60 s) and then publishes again the retained documents the broker lost.
A device over its limits has the excess dropped; one that keeps flooding is
disabled at the broker for --fence-for (Mosquitto's dynamic security plugin,
as broker-config sets it up), then enabled again.
Under systemd: tools/systemd/trustfleet-serve.service.

fleet console (docs/console.md):
  trustfleet serve ... --http 127.0.0.1:8080                  # read-only page + /metrics
  trustfleet serve ... --http 127.0.0.1:8080 --token-file ops.tokens   # pause/resume/abort too
  trustfleet serve ... --http 0.0.0.0:8443 --http-cert c.pem --http-key k.pem --token-file ops.tokens
On loopback anyone on this machine may read the console; pause, resume and
abort need an operator token (a token file holds NAME:TOKEN lines, mode 600),
and each lands in the audit trail (`trustfleet audit`). Any other address
needs TLS, or --http-public for plain HTTP, and a token for every request.
"""

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the fleet server: ingest statuses, timestamps, rollouts",
                       description="Ingest device statuses and reports into the fleet store, publish "
                                   "signed timestamps on a schedule, and drive staged rollouts.",
                       epilog=SERVE_EPILOG, formatter_class=common.RAW)
    common.broker_argument(p, several=True)
    common.fleet_argument(p)
    common.root_argument(p)
    common.db_argument(p)
    common.key_argument(p, "timestamp", required=False, option="--timestamp-key",
                        help="the online timestamp key, a PKCS#8 PEM file or a pkcs11: URI; without it no timestamps "
                             "are published")
    p.add_argument("--passphrase-file", help=f"passphrase of the timestamp key (else ${keys.PASSPHRASE_ENV})")
    p.add_argument("--timestamp-every", default="300", metavar="DURATION",
                   help="seconds (or 5m, 1h) between timestamps (default 300)")
    p.add_argument("--step-every", default="5", metavar="DURATION",
                   help="seconds between rollout steps (default 5)")
    p.add_argument("--subscribe-qos", type=int, choices=(0, 1), default=1,
                   help="QoS of serve's subscriptions (default 1; 0 on a NATS cluster, whose QoS 1 "
                        "subscriptions depend on one node: docs/operations.md)")
    p.add_argument("--client-id",
                   help="MQTT client id (default: tfserve-<fleet>-<host name>, stable across restarts "
                        "so a restarted worker takes back its MQTT 5 session at once; give each "
                        "worker on one host its own id)")
    lim = Limits()
    p.add_argument("--status-limit", default=f"{lim.status_rate:g},{lim.status_burst:g}", metavar="RATE,BURST",
                   help="statuses taken from one device: per second, and at once (default %(default)s)")
    p.add_argument("--report-limit", default=f"{lim.report_rate:g},{lim.report_burst:g}", metavar="RATE,BURST",
                   help="reports taken from one device: per second, and at once (default %(default)s)")
    p.add_argument("--fence-after", type=int, default=lim.fence_after, metavar="N",
                   help="disable a device at the broker after N messages over its limits within "
                        "10 s (default %(default)s)")
    p.add_argument("--fence-for", default=f"{lim.fence_for:g}", metavar="DURATION",
                   help="how long a fenced device stays disabled (default %(default)s s; 0: never fence)")
    common.retention_arguments(p.add_argument_group(
        "report retention", "applied as reports arrive (as `trustfleet fleet prune` applies it at once)"),
        prefix="reports-")
    h = p.add_argument_group("fleet console", "a web page and Prometheus /metrics (docs/console.md)")
    h.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve the fleet console here (a bare port is on 127.0.0.1; off by default)")
    h.add_argument("--token-file", metavar="FILE",
                   help="operator tokens, NAME:TOKEN per line, mode 600 (a line ending in read-only: "
                        "a token that reads but cannot act, e.g. Prometheus's); needed for pause, resume "
                        "and abort, and for every request off loopback")
    h.add_argument("--http-cert", metavar="PEM", help="serve the console over TLS with this certificate chain")
    h.add_argument("--http-key", metavar="PEM", help="... and this private key")
    h.add_argument("--http-public", action="store_true",
                   help="allow plain HTTP on a non-loopback address (tokens cross the network in clear)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--once", action="store_true",
                   help="one round: read retained statuses, ingest, step the rollout, one timestamp, exit")
    g.add_argument("--duration", metavar="DURATION", help="run this long (e.g. 30s, 10m), then exit")
    p.add_argument("--json", action="store_true", help="print the final counters as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    p.set_defaults(func=cmd_serve)


def rate_and_burst(value: str, flag: str) -> tuple[float, float]:
    """"2,20" -> (2.0, 20.0). Raises: UsageError."""
    rate, sep, burst = value.partition(",")
    try:
        r, b = float(rate), float(burst if sep else rate)
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected RATE,BURST (e.g. 2,20)") from None
    if not (0 < r < 1e6 and 1 <= b < 1e6):
        raise UsageError(f"{flag} {value!r}: the rate must be above 0 and the burst at least 1")
    return r, b


def limits_from(args: argparse.Namespace) -> Limits:
    """The per-device limits from --status-limit, --report-limit, --fence-after and --fence-for."""
    status, report = rate_and_burst(args.status_limit, "--status-limit"), \
        rate_and_burst(args.report_limit, "--report-limit")
    if args.fence_after < 1:
        raise UsageError("--fence-after must be at least 1")
    fence_for = times.parse_duration(args.fence_for, "--fence-for", strict=False)
    if fence_for < 0:
        raise UsageError(f"--fence-for: must be 0 or more, got {args.fence_for}")
    return Limits(status[0], status[1], report[0], report[1], args.fence_after, fence_for)


def console_from(args: argparse.Namespace, fleet: str) -> ConsoleServer | None:
    """The console --http asks for, bound but not started (None without --http).
    Raises: UsageError (a bad address, a port taken, TLS files, tokens, exposure)."""
    from trustfleet_server import console
    from trustfleet_server.console import web

    if not args.http:
        for flag in ("token_file", "http_cert", "http_key"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')} needs --http")
        return None
    bind = web.parse_bind(args.http)
    entries = console.read_token_file(args.token_file) if args.token_file else {}
    tokens = {name: token for name, (token, _) in entries.items()}
    read_only = frozenset(name for name, (_, ro) in entries.items() if ro)
    tls = bool(args.http_cert or args.http_key)  # ConsoleServer loads and checks them before binding
    web.check_exposure(bind, tls, args.http_public, tokens)
    settings = console.ConsoleSettings(str(args.db), fleet, tokens, read_only, public=not bind.loopback,
                                       tls=tls)
    return web.ConsoleServer(settings, bind, args.http_cert, args.http_key)


def cmd_serve(args: argparse.Namespace) -> int:
    from trustfleet_server.serve.server import FleetServer, log_to_stderr

    urls = common.broker_urls(args.broker)
    url = urls[0] if len(urls) == 1 else urls
    fleet = check_fleet(args.fleet)
    key = None
    if args.timestamp_key:
        passphrase = keys.read_passphrase(args.passphrase_file, confirm=False)
        key = keys.load_private_key(args.timestamp_key, passphrase)
    every = times.positive_seconds(args.timestamp_every, "--timestamp-every")
    step = times.positive_seconds(args.step_every, "--step-every")
    duration = times.positive_seconds(args.duration, "--duration") if args.duration else None
    limits = limits_from(args)
    retention = common.retention_from(args, prefix="reports-")
    console = console_from(args, fleet)
    log_to_stderr(args.verbose)
    with fleetdb.open_db(args.db, retention=retention) as db:
        server = FleetServer(url, fleet, [documents.read_file(p) for p in args.root], db, key, every, step,
                             client_id=args.client_id, limits=limits)
        server.link.subscribe_qos = args.subscribe_qos
        if console is not None:
            console.settings.live = server.live
            console.start()
            # stdout carries only the summary under --json
            print(f"fleet console: {console.url}", flush=True, file=sys.stderr if args.json else sys.stdout)
        try:
            stats = server.run(once=args.once, duration=duration)
        finally:
            if console is not None:
                console.stop()
    summary = {"statuses": stats.statuses, "ignored": stats.ignored, "rejected": stats.rejected,
               "reports": stats.reports, "timestamps": stats.timestamps, "waves": stats.waves,
               "cleared": stats.cleared, "restored": stats.restored, "rate_limited": stats.rate_limited,
               "coalesced": stats.coalesced, "dropped": stats.dropped, "fenced": stats.fenced,
               "resyncs": stats.resyncs, "protocol": stats.protocol,
               "shared": stats.shared, "led": stats.led, "leaderships": stats.leaderships,
               "events": stats.events}
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
