"""`trustfleet demo`: the fleet demo (demo/fleet.py) or, with --offline, the walkthrough (demo/offline.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from trustfleet_server.demo import fleet as fleet_demo
from trustfleet_server.demo import offline as offline_demo


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
    p.set_defaults(func=lambda args: cmd_demo(args, trustfleet))


def cmd_demo(args: argparse.Namespace, trustfleet: Callable[[list[str]], int]) -> int:
    if args.offline:
        return offline_demo.run(args.out, trustfleet)
    if args.devices < 10:
        raise SystemExit("demo: --devices must be at least 10 (the canary wave is 10 %)")
    return fleet_demo.FleetDemo(args.out, args.broker or "auto", args.devices, trustfleet).run()
