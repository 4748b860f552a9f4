"""The `trustfleet` operator command line.

Each command group lives in its own module exposing ``register(subparsers)``
and ``cmd_*`` handlers that parse arguments, call the library and print. The
groups never import each other; common.py holds the options they share. This
file only wires them together and turns typed errors into one-line messages
and exit codes:

    0  success
    1  the input was refused (bad document, failed verification, lint error)
    2  usage error (argparse) or a missing/unreadable file
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

import trustfleet_device
from trustfleet_device.errors import TrustfleetError
from trustfleet_server.cli import (
    board,
    broker,
    brokerconfig,
    bundle,
    completion,
    demo,
    device,
    doctor,
    export,
    fleet,
    keys,
    lint,
    publish,
    rollout,
    root,
    serve,
    simulate,
)
from trustfleet_server.errors import OperatorError

# In `trustfleet --help` order. `demo` comes last: its steps run this CLI's main().
GROUPS = (keys, root, bundle, lint, export, publish, serve, rollout, fleet, simulate, broker, brokerconfig,
          device, board, doctor)


def package_version() -> str:
    """The installed distribution's version; the source tree's when it is not installed."""
    try:
        return importlib.metadata.version("trustfleet")
    except importlib.metadata.PackageNotFoundError:
        return trustfleet_device.VERSION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustfleet",
        description=(
            "Build, sign and verify trustfleet documents (root, bundle, timestamp).\n"
            "Typical flow: key generate -> root create -> bundle build -> "
            "bundle sign (once per key) -> bundle verify."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the version of trustfleet and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    completion.register(sub, build_parser)
    demo.register(sub, main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OperatorError as exc:
        print(f"trustfleet: error: {exc}", file=sys.stderr)
        return 2
    except TrustfleetError as exc:
        print(f"trustfleet: refused: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"trustfleet: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
