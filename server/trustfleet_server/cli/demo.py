"""`trustfleet demo`: the fleet demo (demo/fleet.py) or, with --offline, the walkthrough (demo/offline.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from trustfleet_server import times
from trustfleet_server.demo import fleet as fleet_demo
from trustfleet_server.demo import offline as offline_demo
from trustfleet_server.errors import UsageError


def register(sub: argparse._SubParsersAction, trustfleet: Callable[[list[str]], int]) -> None:
    """Add `demo`; its steps run `trustfleet` commands in-process through `trustfleet` (main)."""
    p = sub.add_parser("demo", help="the fleet demo: broker, 50 devices and a MicroPython board, "
                                    "staged rollout, a bad bundle halted",
                       description=fleet_demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo-out"),
                   help="folder for the demo's files (default demo-out), created if missing; a non-empty "
                        "folder is used only if a demo made it (it holds .trustfleet-demo)")
    p.add_argument("--offline", action="store_true",
                   help="the offline walkthrough instead: keys, bundle, install with a TLS health check")
    p.add_argument("--broker", metavar="URL|embedded|mosquitto",
                   help="default: a private Mosquitto if installed, else the embedded broker")
    p.add_argument("--devices", type=int, default=fleet_demo.DEVICES,
                   help=f"simulated devices (default {fleet_demo.DEVICES})")
    p.add_argument("--keep", metavar="SECONDS",
                   help="after the last step keep the broker, devices, server and fleet console up this "
                        "long (e.g. 300 or 5m; Enter or Ctrl-C stops sooner). Without it the demo waits "
                        "for Enter on a terminal and stops at once otherwise (scripts, CI)")
    p.set_defaults(func=lambda args: cmd_demo(args, trustfleet))


def cmd_demo(args: argparse.Namespace, trustfleet: Callable[[list[str]], int]) -> int:
    if args.offline:
        if args.keep is not None:
            raise UsageError("--keep: the offline walkthrough has nothing to keep up (no broker, no console)")
        return offline_demo.run(args.out, trustfleet)
    if args.devices < 10:
        raise SystemExit("demo: --devices must be at least 10 (the canary wave is 10 %)")
    keep = None if args.keep is None else times.parse_duration(args.keep, "--keep", strict=False)
    return fleet_demo.FleetDemo(args.out, args.broker or "auto", args.devices, trustfleet, keep=keep).run()
