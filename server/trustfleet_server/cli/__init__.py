"""The `trustfleet` operator command line.

Each command group lives in its own module exposing ``register(subparsers)``
and ``cmd_*`` handlers that parse arguments, call the library and print. The
groups never import each other; common.py holds the options they share. This
file only wires them together: it reads the operator config (trustfleet.toml,
TRUSTFLEET_*) before building the parser, and turns typed errors into one-line
messages and exit codes (the table is in README.md, "Command-line conventions"):

    0    success
    1    refused: a bad document, a failed verification, a lint error, a failed check
    2    could not do the job: usage, a missing or unsuitable file, the broker or the store
    130  interrupted (Ctrl-C)

With --json, an error is also one JSON object on stdout,
{"error": {"exit": N, "kind": "usage" | "refused" | "interrupted", "message": "..."}},
so a script reads stdout whatever happens.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

import trustfleet_device
from trustfleet_device._cpython.jsonout import JsonErrorParser, error_object, wants_json
from trustfleet_device.errors import TrustfleetError
from trustfleet_server import config
from trustfleet_server.cli import (
    airgap,
    audit,
    board,
    broker,
    brokerconfig,
    bundle,
    common,
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
GROUPS = (keys, root, bundle, airgap, lint, export, publish, serve, rollout, fleet, audit, simulate,
          broker, brokerconfig, device, board, doctor)


def package_version() -> str:
    """The installed distribution's version; the source tree's when it is not installed."""
    try:
        return importlib.metadata.version("trustfleet")
    except importlib.metadata.PackageNotFoundError:
        return trustfleet_device.VERSION


def build_parser() -> argparse.ArgumentParser:
    parser = JsonErrorParser(
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
    parser.add_argument("--config", metavar="FILE",
                        help=f"operator config (default: ./{config.FILE_NAME} if present, or "
                             f"${config.CONFIG_ENV}); give it before the command")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    completion.register(sub, build_parser)
    demo.register(sub, main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    JsonErrorParser.json_errors = wants_json(argv)

    def fail(code: int, kind: str, message: str) -> int:
        print(f"trustfleet: {'refused' if code == 1 else 'error'}: {message}", file=sys.stderr)
        if JsonErrorParser.json_errors:
            print(error_object(code, kind, message), flush=True)
        return code

    try:
        explicit, argv = config.split_config_option(argv)
        try:
            common.use_config(config.load(explicit))
            bad_config = None
        except OperatorError as exc:  # --help and --version still answer; every command stops here
            common.use_config(config.OperatorConfig())
            bad_config = exc
        args = build_parser().parse_args(argv)
        if bad_config is not None:
            raise bad_config
        common.apply_config(args)
        return int(args.func(args) or 0)
    except OperatorError as exc:
        return fail(2, "usage", str(exc))
    except TrustfleetError as exc:
        return fail(1, "refused", str(exc))
    except BrokenPipeError:
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(2, "usage", f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt as exc:
        message = str(exc) or "interrupted"
        print(f"trustfleet: {message}", file=sys.stderr)
        if JsonErrorParser.json_errors:
            print(error_object(130, "interrupted", message), flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
