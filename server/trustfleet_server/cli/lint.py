"""`trustfleet lint SPEC_OR_BUNDLE`: the checks of `lint.py`, from the command line.

The input is a bundle spec (TOML) or a bundle (unsigned payload or signed
document, read without verifying it). A spec is read in lint mode, so what
the builder would refuse outright (one pin, a repeated pin, no or past
expiry) is reported by code instead of stopping at the first error.

Exit codes: 0 no error findings (warnings allowed; none at all with
--strict), 1 findings that fail, 2 usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from trustfleet_server import lint, spec, times
from trustfleet_server.cli import common

DESCRIPTION = """\
Lint a bundle spec (TOML) or a bundle for the mistakes that brick a fleet or
quietly void its pins: no backup pin, pins that never expire or already did,
pins that match none of your chains, pins on public CA infrastructure,
anchors that expire before the bundle, duplicates, distrusted keys still in
use, a bundle dated ahead of the clock, pins a timestamp-key thief could expire
early. Each finding has a stable code (TF101-TF112, listed in docs/lints.md), a
severity, where it is, and a one-line fix. `bundle build` runs the same lints.

Exit 0 when no finding is an error (with --strict: no finding at all),
1 otherwise, 2 on a usage error or unreadable input.
"""

EPILOG = """\
examples:
  trustfleet lint bundle.toml
  trustfleet lint bundle.toml --chain served/api-fullchain.pem --chain keys/backup.pub.pem
  trustfleet lint bundle-v7.cose --horizon 180d --json
"""

def register(sub: Any) -> None:
    """Add the `lint` command to the top-level subparsers."""
    p = sub.add_parser("lint", help="check a bundle spec or bundle for risky pins and anchors",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="SPEC_OR_BUNDLE",
                   help="bundle spec (TOML), unsigned bundle payload or signed bundle")
    common.add_lint_arguments(p)
    p.add_argument("--at", metavar="TIME",
                   help="judge expiry at this time (date, RFC 3339 or epoch seconds; default now)")
    p.add_argument("--public-roots", metavar="FILE",
                   help="certificates to treat as the public roots (default: certifi's Mozilla roots)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    p.set_defaults(func=cmd_lint)


def cmd_lint(args: argparse.Namespace) -> int:
    """Handle `trustfleet lint`."""
    now = spec.parse_time(args.at, "--at") if args.at else int(time.time())
    horizon = lint.horizon_seconds(args.horizon)
    chains = lint.load_chains(args.chain)
    roots = lint.public_roots(args.public_roots)
    kind, payload, pinset_chains, notes = lint.read_target(args.target, now)
    findings = lint.lint_payload(payload, now=now, horizon=horizon, chains=chains,
                                 pinset_chains=pinset_chains, public_roots=roots,
                                 allow_future=args.allow_future,
                                 time_lead=lint.root_time_lead(args.lint_root))
    allow = lint.check_allow(args.allow)
    failed = lint.failed(findings, strict=args.strict, allow=allow)
    totals = lint.counts(findings)
    if args.json:
        print(json.dumps({
            "file": str(args.target), "kind": kind,
            "checked_at": times.iso(now),
            "horizon_days": horizon // 86400, "chains": [c.name for c in chains],
            "strict": args.strict, "allowed": sorted(allow), "ok": not failed,
            "errors": totals[lint.ERROR], "warnings": totals[lint.WARNING],
            "findings": [f.as_dict() for f in findings], "notes": notes,
        }, indent=2, ensure_ascii=False))
        return 1 if failed else 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for f in findings:
        print(lint.printable(f"{f.code} [{f.severity}] {f.location}: {f.message}"))
        print(f"  fix: {f.fix}")
    if findings:
        print(f"{args.target}: {totals[lint.ERROR]} error(s), {totals[lint.WARNING]} warning(s)")
    else:
        print(f"{args.target}: no findings")
    return 1 if failed else 0
