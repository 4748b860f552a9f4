"""`trustfleet export nsc|trustkit` and `trustfleet import nsc`: the bundle's pins for mobile apps.

The logic is in `mobile.py`; this module reads files, writes outputs
atomically and prints warnings (stderr) and a summary. Outputs go to stdout
unless -o is given. Exit codes follow cli.py: 0 written, 1 refused (the
bundle or NSC file cannot be expressed or is malformed), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trustfleet_device._cpython.files import read_capped, write_atomic
from trustfleet_server import documents, mobile, spec, x509util
from trustfleet_server.errors import UsageError

SOURCE_HELP = ("a bundle (unsigned payload or signed COSE document; signatures are NOT checked: "
               "run `bundle verify` first) or a bundle spec ending in .toml")

NSC_EPILOG = """\
mapping (see docs/mobile.md):
  pin-set (enforce)        -> <domain-config> with <domain includeSubdomains>, <pin-set expiration>
  pin-set (mode "report")  -> LEFT OUT with a warning: NSC has no report-only mode
  pin expiry (epoch s)     -> expiration="yyyy-MM-dd" (the UTC date, rounded down)
  report_to, distrust      -> not expressible; warned
  anchors                  -> <base-config><trust-anchors>: system, @raw/<name> per
                              whole-certificate anchor (--anchors bundle|both), or both;
                              compact anchors hold no certificate and are counted in a warning
example:
  trustfleet export nsc bundle-v7.cose --anchors both --raw-dir app/src/main/res/raw \\
      -o app/src/main/res/xml/network_security_config.xml
"""

TRUSTKIT_EPILOG = """\
formats:
  plist    TrustKit (iOS/macOS >= 1.6.0) configuration dictionary, an XML property list
  json     the same dictionary as JSON
  android  TrustKit-Android network_security_config.xml (<pin-set> + <trustkit-config>)
Refused (exit 1, naming the domain): a pin-set with fewer than two pins, which both
libraries reject at start. Report-only pin-sets become TSKEnforcePinning = false
(plist/json) and are left out of the android format (Android 7+ would enforce them).
"""


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("export", help="export the bundle's pins for mobile apps (Android, iOS)",
                           description="Export a bundle's pin-sets (and anchors) for mobile apps.")
    esub = group.add_subparsers(dest="export_command", metavar="FORMAT", required=True)

    p = esub.add_parser(
        "nsc", help="Android Network Security Configuration XML",
        description="Write an Android network_security_config.xml: one <domain-config> per\n"
                    "enforced pin-set. Report-only pin-sets cannot be expressed in NSC (it has\n"
                    "no report-only mode): they are SKIPPED with a warning.",
        epilog=NSC_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="BUNDLE_OR_SPEC", type=Path, help=SOURCE_HELP)
    p.add_argument("-o", "--out", type=Path, help="output file (default: stdout)")
    p.add_argument("--anchors", choices=mobile.ANCHOR_CHOICES, default="system",
                   help="base-config trust anchors (default: system)")
    p.add_argument("--raw-dir", type=Path,
                   help="write the referenced certificates (PEM) here, e.g. app/src/main/res/raw")
    p.add_argument("--raw-prefix", default="trustfleet",
                   help="resource name prefix (default: trustfleet)")
    p.add_argument("--debug-overrides", type=Path, nargs="+", action="extend", default=[],
                   metavar="CA.pem", help="CA certificates trusted (overriding pins) in debuggable "
                                          "builds only")
    p.add_argument("--cleartext-permitted", choices=("true", "false"),
                   help="base-config cleartextTrafficPermitted (default: not set)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_export_nsc)

    p = esub.add_parser(
        "trustkit", help="TrustKit configuration (iOS plist/JSON, TrustKit-Android XML)",
        description="Write the TrustKit configuration for the bundle's pin-sets.",
        epilog=TRUSTKIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="BUNDLE_OR_SPEC", type=Path, help=SOURCE_HELP)
    p.add_argument("--format", choices=("plist", "json", "android"), default="plist",
                   help="plist (default), json or android: see formats below")
    p.add_argument("-o", "--out", type=Path, help="output file (default: stdout)")
    p.add_argument("--swizzle", action="store_true",
                   help="set TSKSwizzleNetworkDelegates = true (default false)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_export_trustkit)

    group = sub.add_parser("import", help="import pins from a mobile app configuration",
                           description="Read pins from a mobile app configuration into a bundle spec.")
    isub = group.add_subparsers(dest="import_command", metavar="FORMAT", required=True)
    p = isub.add_parser(
        "nsc", help="pin-sets of an Android network_security_config.xml",
        description="Read the pin-sets of an Android Network Security Configuration and print "
                    "them as a [[pinsets]] TOML fragment for a bundle spec (or JSON). Every "
                    "pin-set is mode \"enforce\". DOCTYPEs, entities, malformed XML and digests "
                    "other than SHA-256 are refused.")
    p.add_argument("file", type=Path, help="network_security_config.xml")
    p.add_argument("-o", "--out", type=Path, help="output file (default: stdout)")
    p.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    p.add_argument("--expires", help="expiry for a <pin-set> without expiration "
                                     "(date or duration like 180d; default: refuse)")
    p.set_defaults(func=cmd_import_nsc)


JSON_HELP = ("print one JSON object: what was written where (out, certificates), the counts and the "
             "warnings; without -o it holds the document as `text`")


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_atomic(out, text.encode("utf-8"))


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def cmd_export_nsc(args: argparse.Namespace) -> int:
    if not mobile.RAW_NAME.match(args.raw_prefix):
        raise UsageError(f"--raw-prefix {args.raw_prefix!r}: use lower-case letters, digits and "
                           "'_', starting with a letter (Android resource names)")
    payload, warnings = mobile.load_bundle_payload(args.source)
    _warn(warnings)
    debug_cas = [x509util.cert_der(c) for f in args.debug_overrides
                 for c in x509util.load_certificates(f)]
    cleartext = None if args.cleartext_permitted is None else args.cleartext_permitted == "true"
    result = mobile.nsc_xml(payload, anchors=args.anchors, debug_cas=debug_cas,
                            cleartext_permitted=cleartext, raw_prefix=args.raw_prefix,
                            now=int(time.time()))
    _warn(result.warnings)
    if result.raw and args.raw_dir is None:
        print(f"note: the file references {len(result.raw)} @raw resource(s) "
              f"({', '.join(r.name for r in result.raw)}); give --raw-dir to write them",
              file=sys.stderr)
    if args.raw_dir is not None:
        args.raw_dir.mkdir(parents=True, exist_ok=True)
        for r in result.raw:
            write_atomic(args.raw_dir / f"{r.name}.pem", r.pem)
    if args.out is not None or not args.json:
        _emit(result.text, args.out)
    if args.json:
        certificates = [str(args.raw_dir / f"{r.name}.pem") for r in result.raw] if args.raw_dir else []
        print(json.dumps({"format": "nsc", "out": None if args.out is None else str(args.out),
                          "domain_configs": result.pinsets, "raw_resources": len(result.raw),
                          "raw_dir": None if args.raw_dir is None else str(args.raw_dir),
                          "certificates": certificates, "warnings": warnings + result.warnings,
                          **({"text": result.text} if args.out is None else {})}))
    elif args.out is not None:
        raw = f", {len(result.raw)} certificate(s) in {args.raw_dir}" if args.raw_dir else ""
        print(f"wrote {args.out}: {result.pinsets} domain-config(s){raw}", file=sys.stderr)
    return 0


def cmd_export_trustkit(args: argparse.Namespace) -> int:
    payload, warnings = mobile.load_bundle_payload(args.source)
    _warn(warnings)
    now = int(time.time())
    if args.format == "android":
        result = mobile.trustkit_android_xml(payload, now=now)
    elif args.format == "json":
        result = mobile.trustkit_json(payload, swizzle=args.swizzle, now=now)
    else:
        result = mobile.trustkit_plist(payload, swizzle=args.swizzle, now=now)
    _warn(result.warnings)
    if args.out is not None or not args.json:
        _emit(result.text, args.out)
    if args.json:
        print(json.dumps({"format": f"trustkit-{args.format}",
                          "out": None if args.out is None else str(args.out),
                          "pinned_domains": result.pinsets, "warnings": warnings + result.warnings,
                          **({"text": result.text} if args.out is None else {})}))
    elif args.out is not None:
        print(f"wrote {args.out}: {result.pinsets} pinned domain(s) ({args.format})", file=sys.stderr)
    return 0


def cmd_import_nsc(args: argparse.Namespace) -> int:
    default_expires = None
    if args.expires is not None:
        now = int(time.time())
        default_expires = spec.parse_time(args.expires, "--expires", now)
        if default_expires <= now:
            raise UsageError("--expires: the date is in the past")
    raw = read_capped(args.file, mobile.MAX_NSC_BYTES)
    with documents.naming(args.file):
        result = mobile.read_nsc(raw, default_expires=default_expires)
    _warn(result.warnings)
    if not result.pinsets:
        print(f"warning: {args.file}: no pin-set found", file=sys.stderr)
    text = mobile.pinsets_json(result) if args.json else mobile.pinsets_toml(result.pinsets, args.file.name)
    _emit(text, args.out)
    return 0
