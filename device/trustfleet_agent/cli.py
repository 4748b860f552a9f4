"""`trustfleet-agent`: the CPython device agent (Raspberry Pi).

Exit codes: 0 done, 1 the document was refused (reason on one line),
2 usage error or unusable state directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trustfleet_device.agent import Config
from trustfleet_device.errors import BundleError, DeviceError
from trustfleet_device.limits import DEFAULT

from .local import LocalDevice

EPILOG = """\
examples:
  trustfleet-agent init --state /var/lib/trustfleet --root root.cose --bundle factory.cose
  trustfleet-agent install --state /var/lib/trustfleet bundle-v8.cose
  trustfleet-agent status --state /var/lib/trustfleet --json
"""


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(DEFAULT.max_document + 1)
    if len(data) > DEFAULT.max_document:
        raise BundleError(f"{path}: larger than the {DEFAULT.max_document}-byte document limit")
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trustfleet-agent", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="set up the factory state: trusted root, optional first bundle")
    p.add_argument("--state", type=Path, required=True, help="state directory (created 0700)")
    p.add_argument("--root", type=Path, required=True, help="the fleet's signed root document")
    p.add_argument("--bundle", type=Path, help="factory bundle to install right away")
    p.add_argument("--force", action="store_true", help="re-initialise an existing state directory")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("install", help="install a signed bundle from a file (same path as network delivery)")
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("status", help="show the installed store and its freshness")
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    if (args.state / "root.cose").exists() and not args.force:
        print(f"trustfleet-agent: error: {args.state} is already initialised (use --force)", file=sys.stderr)
        return 2
    LocalDevice.initialise(args.state, _read(args.root), Config())
    print(f"initialised {args.state}")
    if args.bundle:
        return _install(args.state, args.bundle, as_json=False)
    return 0


def _install(state: Path, file: Path, as_json: bool) -> int:
    device = LocalDevice(state, Config())
    outcome = device.install(_read(file))
    result = {"installed": outcome.committed is not None, "version": outcome.committed,
              "reverted": outcome.reverted, "reason": outcome.reason(), "status": device.status()}
    if as_json:
        print(json.dumps(result))
    elif result["installed"]:
        print(f"installed bundle v{outcome.committed}")
    else:
        print(f"refused: {result['reason']}", file=sys.stderr)
    return 0 if result["installed"] else 1


def cmd_install(args: argparse.Namespace) -> int:
    return _install(args.state, args.file, args.json)


def cmd_status(args: argparse.Namespace) -> int:
    status = LocalDevice(args.state, Config()).status()
    if args.json:
        print(json.dumps(status))
    else:
        version = "none" if status["version"] is None else f"v{status['version']}"
        print(f"state {status['state']}, bundle {version}, root v{status['root_version']}, "
              f"floor {status['floor']}")
        for reason in status["reasons"]:
            print(f"  {reason}")
        if status["bad"]:
            print(f"  refused as bad: {', '.join(map(str, status['bad']))}")
        if status["last_revert"]:
            print(f"  last revert: {status['last_revert']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BundleError as exc:
        print(f"trustfleet-agent: refused: {exc}", file=sys.stderr)
        return 1
    except (DeviceError, OSError) as exc:
        print(f"trustfleet-agent: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
