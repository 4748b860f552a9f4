"""`trustfleet broker run`: the embedded MQTT broker in the foreground (demos and tests).

Production fleets use Mosquitto or a clustered broker (docs/brokers.md);
this command exists so the demo runs on a machine without one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from trustfleet_server.broker import packets
from trustfleet_server.broker.embedded import Broker
from trustfleet_server.errors import UsageError

DESCRIPTION = """\
Run trustfleet's embedded MQTT broker (MQTT 3.1.1 and 5, QoS 0/1, retained
messages, wills, shared subscriptions) in the foreground until Ctrl-C.

It is meant for demos and tests: one process, everything in memory, no
persistence, no QoS 2, no per-topic access control. It listens on loopback
only unless --allow-remote; passwords only with --password-file. Caps bound
what clients can make it hold (connections, unfinished packets, retained
messages, idle time). Production fleets should use Mosquitto, or a cluster
(EMQX, HiveMQ, VerneMQ, NATS) for large fleets; see docs/brokers.md."""


def register(sub) -> None:
    broker = sub.add_parser(
        "broker", help="embedded MQTT broker for demos and tests",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = broker.add_subparsers(dest="broker_command", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run", help="run the embedded broker in the foreground (demos/tests only)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1; a loopback address "
                          "unless --allow-remote)")
    run.add_argument("--allow-remote", action="store_true",
                     help="allow a non-loopback --host (demos on a trusted network only; "
                          "use --password-file too)")
    run.add_argument("--port", type=int, default=1883, help="TCP port (default 1883; 0 = any free)")
    run.add_argument("--max-packet", type=int, default=packets.DEFAULT_MAX_PACKET,
                     metavar="BYTES",
                     help=f"largest MQTT packet accepted (default {packets.DEFAULT_MAX_PACKET})")
    run.add_argument("--max-connections", type=int, default=10_000, metavar="N",
                     help="open connections; more are closed at once (default 10000)")
    run.add_argument("--max-partial-bytes", type=int, default=64 << 20, metavar="BYTES",
                     help="unfinished packet bytes held for all clients together; the client "
                          "going over is closed (default 64 MiB)")
    run.add_argument("--max-retained", type=int, default=100_000, metavar="N",
                     help="retained messages stored (default 100000)")
    run.add_argument("--max-retained-bytes", type=int, default=64 << 20, metavar="BYTES",
                     help="bytes of retained messages stored (default 64 MiB); a retained "
                          "publish over either cap is refused")
    run.add_argument("--max-keepalive", type=int, default=3600, metavar="SECONDS",
                     help="keep-alive given to clients asking 0 or more; idle clients are "
                          "closed after 1.5 x it (default 3600)")
    run.add_argument("--password-file", metavar="FILE",
                     help="require username/password from this Mosquitto password file "
                          "($7$ hashes, as broker-config writes); default: anonymous")
    run.add_argument("-v", "--verbose", action="store_true", help="log connections and refusals")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not in 0..65535")
    if not 16 <= args.max_packet <= packets.MAX_REMAINING:
        raise UsageError(f"--max-packet {args.max_packet}: not in 16..{packets.MAX_REMAINING}")
    try:
        broker = Broker(args.host, args.port, max_packet=args.max_packet,
                        allow_remote=args.allow_remote, max_connections=args.max_connections,
                        max_partial_bytes=args.max_partial_bytes, max_retained=args.max_retained,
                        max_retained_bytes=args.max_retained_bytes,
                        max_keepalive=args.max_keepalive, password_file=args.password_file)
    except ValueError as exc:
        raise UsageError(str(exc).replace("allow_remote=True", "--allow-remote")) from None
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        asyncio.run(_serve(broker))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                           "(another broker running? try --port)") from None
    return 0


async def _serve(broker: Broker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await broker.start()
    print(f"trustfleet broker: listening on mqtt://{broker.host}:{broker.port} "
          "(demo/test broker; Ctrl-C to stop)", flush=True)
    try:
        await stop.wait()
    finally:
        print(f"trustfleet broker: stopping ({broker.clients} clients connected)", flush=True)
        await broker.stop()
