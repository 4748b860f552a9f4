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
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustfleet_device import cbor, cose
from trustfleet_device._cpython.files import read_capped
from trustfleet_device.errors import TrustfleetError
from trustfleet_device.limits import DEFAULT
from trustfleet_server import lint, spec, x509util
from trustfleet_server.errors import UsageError

DESCRIPTION = """\
Lint a bundle spec (TOML) or a bundle for the mistakes that brick a fleet or
quietly void its pins: no backup pin, pins that never expire or already did,
pins that match none of your chains, pins on public CA infrastructure,
anchors that expire before the bundle, duplicates, distrusted keys still in
use. Each finding has a stable code (TF101-TF110, listed in docs/lints.md), a
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

DEFAULT_HORIZON = "400d"


def register(sub: Any) -> None:
    """Add the `lint` command to the top-level subparsers."""
    p = sub.add_parser("lint", help="check a bundle spec or bundle for risky pins and anchors",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", type=Path, metavar="SPEC_OR_BUNDLE",
                   help="bundle spec (TOML), unsigned bundle payload or signed bundle")
    add_lint_arguments(p)
    p.add_argument("--at", metavar="TIME",
                   help="judge expiry at this time (date, RFC 3339 or epoch seconds; default now)")
    p.add_argument("--public-roots", metavar="FILE",
                   help="certificates to treat as the public roots (default: certifi's Mozilla roots)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead")
    p.set_defaults(func=cmd_lint)


def add_lint_arguments(p: argparse.ArgumentParser) -> None:
    """--chain, --horizon and --strict, shared with `bundle build`."""
    p.add_argument("--chain", action="append", default=[], metavar="FILE",
                   help="a chain (or certificate, or public key) your servers use or will use; "
                        "each pin should match one (TF106). Repeat for several")
    p.add_argument("--horizon", default=DEFAULT_HORIZON, metavar="DURATION",
                   help=f"pins expiring further out than this after issue are flagged (TF105; "
                        f"default {DEFAULT_HORIZON})")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")


def horizon_seconds(text: str) -> int:
    seconds = spec.parse_duration(text, "--horizon")
    if seconds <= 0:
        raise UsageError("--horizon: must be longer than zero")
    return seconds


def load_chains(paths: Sequence[str | Path]) -> list[lint.Chain]:
    """Read --chain files: certificates (a chain, or a directory) or a public key each."""
    return [lint.Chain(str(p), x509util.load_pin_subject(p)) for p in paths]


def public_roots(path: str | Path | None = None) -> lint.PublicRoots:
    """The public roots: certificates from `path`, else certifi's Mozilla roots."""
    if path:
        return lint.PublicRoots(x509util.load_certificates(path))
    certs, _ = x509util.certifi_certificates_with_skipped()
    return lint.PublicRoots(certs)


def spec_chains(report: spec.BuildReport) -> dict[int, list[lint.Chain]]:
    """The per-pin-set `chains = [...]` of a spec, as lint chains."""
    return {i: [lint.Chain(name, subjects) for name, subjects in chains]
            for i, chains in report.pinset_chains.items()}


def lint_built(payload: dict, report: spec.BuildReport, *, chain_files: Sequence[str | Path],
               horizon: str, now: int | None = None) -> list[lint.Finding]:
    """The lints `bundle build` runs on the payload it just built."""
    return lint.lint_payload(payload, now=int(time.time()) if now is None else now,
                             horizon=horizon_seconds(horizon), chains=load_chains(chain_files),
                             pinset_chains=spec_chains(report), public_roots=public_roots())


def printable(text: str) -> str:
    """Escape control characters: labels and domains come from certificates and files."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _looks_like_cbor(data: bytes) -> bool:
    # A payload is a CBOR map (major type 5); a signed document is tag 98 or 18.
    return bool(data) and (0xA0 <= data[0] <= 0xBF or data[:2] == b"\xd8\x62" or data[0] == 0xD2)


def read_target(path: Path, now: int) -> tuple[str, dict, dict[int, list[lint.Chain]], list[str]]:
    """(kind "spec" or "bundle", payload map, per-pin-set chains, notes) of a lint target."""
    data = read_capped(path, DEFAULT.max_document)
    if not _looks_like_cbor(data):
        payload, report = spec.load_spec(path, now=now, lint=True)
        return "spec", payload, spec_chains(report), list(report.warnings)
    try:
        body = cose.parse(data, DEFAULT).unverified_payload if data[0] in (0xD8, 0xD2) else data
        payload = cbor.decode(body, DEFAULT)
    except TrustfleetError as exc:
        raise UsageError(f"{path}: not a bundle spec (TOML) or a readable bundle: {exc}") from None
    if not isinstance(payload, dict) or payload.get("type") != "bundle":
        kind = payload.get("type") if isinstance(payload, dict) else None
        raise UsageError(f"{path}: a {kind or 'non-trustfleet'} document, not a bundle")
    return "bundle", payload, {}, ["the bundle was read without verifying its signatures"]


def cmd_lint(args: argparse.Namespace) -> int:
    """Handle `trustfleet lint`."""
    now = spec.parse_time(args.at, "--at") if args.at else int(time.time())
    horizon = horizon_seconds(args.horizon)
    chains = load_chains(args.chain)
    roots = public_roots(args.public_roots)
    kind, payload, pinset_chains, notes = read_target(args.target, now)
    findings = lint.lint_payload(payload, now=now, horizon=horizon, chains=chains,
                                 pinset_chains=pinset_chains, public_roots=roots)
    failed = lint.failed(findings, strict=args.strict)
    totals = lint.counts(findings)
    if args.json:
        print(json.dumps({
            "file": str(args.target), "kind": kind,
            "checked_at": dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "horizon_days": horizon // 86400, "chains": [c.name for c in chains],
            "strict": args.strict, "ok": not failed,
            "errors": totals[lint.ERROR], "warnings": totals[lint.WARNING],
            "findings": [f.as_dict() for f in findings], "notes": notes,
        }, indent=2, ensure_ascii=False))
        return 1 if failed else 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for f in findings:
        print(printable(f"{f.code} [{f.severity}] {f.location}: {f.message}"))
        print(f"  fix: {f.fix}")
    if findings:
        print(f"{args.target}: {totals[lint.ERROR]} error(s), {totals[lint.WARNING]} warning(s)")
    else:
        print(f"{args.target}: no findings")
    return 1 if failed else 0
