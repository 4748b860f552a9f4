"""`trustfleet bundle build|sign|verify|inspect|diff` and `trustfleet timestamp create`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trustfleet_device import documents as device_docs
from trustfleet_device import policy
from trustfleet_device._cpython.files import write_atomic
from trustfleet_device.errors import TrustfleetError
from trustfleet_server import describe, documents, keys, lint, signreq, spec, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError

EXAMPLE_SPEC = """\
example spec (bundle.toml):
  fleet = "acme-sensors"
  version = 7
  expires = "90d"                    # from issued_at; or a date "2027-03-01"

  [policy]
  user_anchors = false               # enterprise anchors on managed devices
  max_timestamp_age = "48h"          # stale without a fresh timestamp

  [[anchors]]
  files = ["certs/acme-root.pem"]    # file or folder; form = "compact" (default) or "full"
  [[anchors]]
  certifi = true                     # Mozilla roots via certifi
  match = ["ISRG Root"]              # subject substring or SHA-256 fingerprint

  [[pinsets]]
  domain = "api.acme.example"
  include_subdomains = true
  pins = ["<base64 primary>", "<base64 backup>"]   # from `trustfleet pin`
  expires = "2027-06-01"
  mode = "enforce"                   # or "report"
  report_to = ["mqtt:reports"]

  [distrust]
  pins = ["<base64 SPKI SHA-256>"]
"""


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("bundle", help="build, sign, verify and inspect trust bundles",
                           description="Build, sign, verify and inspect trust bundles.")
    bsub = group.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    p = bsub.add_parser("build", help="build an UNSIGNED bundle payload from a TOML spec",
                        description="Build an unsigned bundle payload from a TOML spec. "
                                    "Signing is always a separate step (bundle sign).",
                        epilog=EXAMPLE_SPEC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="bundle spec (TOML)")
    p.add_argument("-o", "--out", type=Path, required=True, help="where to write the unsigned payload")
    p.add_argument("--version", help=f"override the spec's version (1 to {spec.MAX_VERSION})")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    common.add_lint_arguments(p)  # lints run on every build (trustfleet lint --help)
    p.set_defaults(func=cmd_build)

    p = bsub.add_parser("sign", help="add ONE signature to a bundle (run once per key)",
                        description="Add one signature to a bundle (a root: `root sign`). The first "
                                    "signature wraps the unsigned payload in a COSE_Sign; each later "
                                    "one is appended, so every key can stay on its own offline machine.",
                        epilog="example: trustfleet bundle sign --key k1.pem bundle.cbor "
                               "&& trustfleet bundle sign --key k2.pem bundle.cbor")
    common.add_sign_arguments(p, "bundle", future=True, root=True)
    p.set_defaults(func=common.cmd_sign)

    p = bsub.add_parser("verify", help="verify a signed bundle against a root",
                        description="Verify a signed bundle exactly as a device would: envelope, "
                                    "threshold of bundle keys from the root, schema, expiry. "
                                    "Exit 0 when valid, 1 with a one-line reason when not.")
    common.root_argument(p)
    p.add_argument("file", type=Path, help="signed bundle")
    p.add_argument("--at", metavar="TIME",
                   help="check expiry at this time: epoch seconds (1796515999) or an ISO date "
                        "(2026-12-06, 2026-12-06T00:13:19Z); default now")
    p.add_argument("--installed-version", help="also refuse versions not above this")
    p.add_argument("--json", action="store_true", help="print {valid, version, reason, ...} as JSON")
    p.set_defaults(func=cmd_verify)

    p = bsub.add_parser("inspect", help="show what a document contains (does not verify)")
    p.add_argument("file", type=Path, help="a bundle, root or timestamp, signed or not")
    p.add_argument("--json", action="store_true", help="print what it holds as JSON")
    p.set_defaults(func=common.cmd_inspect)

    p = bsub.add_parser("diff", help="show what changed between two bundles")
    p.add_argument("a", type=Path, metavar="OLD", help="the earlier bundle (signed or not)")
    p.add_argument("b", type=Path, metavar="NEW", help="the later bundle (signed or not)")
    p.add_argument("--json", action="store_true", help='print {"changes": [...]} as JSON')
    p.set_defaults(func=cmd_diff)

    ts = sub.add_parser("timestamp", help="create signed timestamps",
                        description="Timestamps give devices authenticated time and tell them the "
                                    "latest bundle version and digest without downloading it.")
    tsub = ts.add_subparsers(dest="timestamp_command", metavar="ACTION", required=True)
    p = tsub.add_parser("create", help="sign a timestamp for the latest bundle (COSE_Sign1)")
    p.add_argument("--bundle", type=Path, help="the latest signed bundle")
    common.key_argument(p, "timestamp", required=False, help="the online timestamp key: a PKCS#8 PEM file or a pkcs11: URI")
    p.add_argument("--request", type=Path, metavar="REQUEST",
                   help="sign on an offline machine instead: write a signing request (no key needed; "
                        "see trustfleet sign-request); with --attach, the request that was signed")
    p.add_argument("--attach", type=Path, metavar="SIGFILE",
                   help="with --request: write the timestamp signed by this signature file of "
                        "trustfleet sign-request, after checking it verifies and is by a timestamp "
                        "key of --root")
    p.add_argument("--passphrase-file", help=f"passphrase file of the key (else ${keys.PASSPHRASE_ENV})")
    p.add_argument("--time", metavar="TIME",
                   help="timestamp time: epoch seconds (1796515999) or an ISO date (2026-12-06, "
                        "2026-12-06T00:13:19Z); default now")
    common.root_argument(p, required=False, help=common.ROOT_CHECK_HELP.format(role="timestamp keys"))
    p.add_argument("--allow-future", action="store_true",
                   help=f"sign a --time more than {lint.FUTURE_TOLERANCE // 60} minutes ahead of this "
                        f"machine's clock (devices move their time to it, up to the root's "
                        f"max_time_lead past what the offline keys vouch for)")
    p.add_argument("-o", "--out", type=Path, help="where to write the signed timestamp")
    p.add_argument("--json", action="store_true",
                   help="print {out, time, epoch, bundle, bundle_version, kid, bytes} as JSON")
    p.set_defaults(func=cmd_timestamp)


def cmd_build(args: argparse.Namespace) -> int:
    now = int(time.time())
    payload_map, report = spec.load_spec(args.spec, version=args.version, now=now)
    payload = documents.encode_payload(payload_map)
    findings = lint.lint_built(payload_map, report, chain_files=args.chain, horizon=args.horizon,
                               now=now, allow_future=args.allow_future,
                               time_lead=lint.root_time_lead(args.lint_root))
    future = [f for f in findings if f.code == "TF111"]
    if future:
        reason = (f"{future[0].message}; nothing written (fix issued_at, or --allow-future to build it "
                  f"dated ahead)")
        if args.json:
            print(json.dumps({"out": None, "refused": reason, "lint": [f.as_dict() for f in findings]}))
        print(lint.printable(f"trustfleet: refused: {reason}"), file=sys.stderr)
        return 1
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    allow = lint.check_allow(args.allow)
    blocking = [f for f in findings if lint.blocks_build(f, payload_map, strict=args.strict, allow=allow)]
    for f in findings:
        label = "error" if f in blocking else "allowed" if f.severity == lint.ERROR else "warning"
        print(lint.printable(f"{label}: {f.line()}"), file=sys.stderr)
    if blocking:
        codes = " ".join(f"--allow {c}" for c in sorted({f.code for f in blocking}))
        reason = (f"{len(blocking)} lint finding(s) with --strict; nothing written" if args.strict else
                  f"{len(blocking)} lint error(s); nothing written (fix the spec, or {codes} to build "
                  f"it anyway; docs/lints.md)")
        print(f"trustfleet: refused: {reason}", file=sys.stderr)
        if args.json:
            print(json.dumps({"out": None, "refused": reason, "lint": [f.as_dict() for f in findings]}))
        return 1
    write_atomic(args.out, payload)
    summary = {"out": str(args.out), "bytes": len(payload), "version": payload_map["version"],
               "fleet": payload_map["fleet"], "anchors": len(payload_map["anchors"]),
               "pinsets": len(payload_map["pinsets"]), "distrust": len(payload_map["distrust"]),
               "certifi_skipped": report.certifi_skipped, "warnings": report.warnings,
               "lint": [f.as_dict() for f in findings], "signed": False}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"built unsigned bundle v{summary['version']} for {summary['fleet']}: "
              f"{summary['anchors']} anchors, {summary['pinsets']} pin-sets, "
              f"{summary['distrust']} distrusted, {summary['bytes']} bytes -> {args.out}")
        print(f"next: trustfleet bundle sign --key KEY {args.out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    now = times.parse_moment(args.at, "--at") if args.at else int(time.time())
    installed = (spec.parse_version(args.installed_version, "--installed-version", lowest=0)
                 if args.installed_version is not None else None)
    raw = None
    result = {"valid": False, "version": None, "reason": None, "file": str(args.file)}
    root = documents.load_root_chain(args.root)  # a bad root is refused, not a verdict on the bundle
    try:
        raw = documents.read_file(args.file)
        with documents.naming(args.file):
            b = policy.verify_bundle(root, raw, installed_version=installed, now=now)
    except TrustfleetError as exc:
        result["reason"] = str(exc)
        if raw is not None:
            result["version"] = documents.claimed_version(raw)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"invalid: {exc}", file=sys.stderr)
        return 1
    result.update({"valid": True, "version": b.version, "fleet": b.fleet,
                   "issued_at": times.iso(b.issued_at), "expires_at": times.iso(b.expires_at),
                   "root_version": root.version, "sha256": documents.sha256(raw).hex(), "warnings": []})
    if b.issued_at > now + lint.FUTURE_TOLERANCE:
        # The device installs it (its issued_at moves trusted time at most the root's lead), but
        # it was dated ahead: say so, as build, sign and lint do.
        result["warnings"].append(f"TF111: {lint.future_message(b.issued_at, now)}")
    if args.json:
        print(json.dumps(result))
    else:
        for w in result["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print(f"valid: bundle v{b.version} for fleet {b.fleet}, signed by a threshold of root "
              f"v{root.version}'s bundle keys, expires {result['expires_at']}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    infos = []
    for path in (args.a, args.b):
        raw, doc = documents.read_document_file(path, "bundle")
        infos.append(describe.describe(doc, raw))
    changes = describe.diff(*infos)
    if args.json:
        print(json.dumps({"changes": changes}))
    else:
        print("\n".join(changes) if changes else "no differences in content")
    return 0


def cmd_timestamp(args: argparse.Namespace) -> int:
    if args.attach is not None:
        return _attach_timestamp(args)
    if args.bundle is None:
        raise UsageError("--bundle is required")
    if args.request is not None:
        return _request_timestamp(args)
    if args.key is None:
        raise common.missing_key("timestamp")
    if args.out is None:
        raise UsageError("-o/--out is required")
    passphrase = keys.read_passphrase(args.passphrase_file, confirm=False)
    key = keys.load_private_key(args.key, passphrase)
    if args.root:
        common.check_key_role(key, args.key, args.root, "timestamp")
    when = _moment(args)
    with documents.naming(args.bundle):
        signed, b = documents.sign_timestamp(documents.read_file(args.bundle), when, key, str(args.bundle))
    write_atomic(args.out, signed)
    if args.json:
        print(json.dumps({"out": str(args.out), "time": times.iso(when), "time_epoch": when,
                          "bundle": str(args.bundle), "bundle_version": b.version,
                          "kid": keys.kid_hex(key), "bytes": len(signed)}))
    else:
        print(f"timestamp {times.iso(when)} for bundle v{b.version} -> {args.out}")
    if not args.root:
        print(common.UNCHECKED_ROLE.format(role="timestamp"), file=sys.stderr)
    return 0


def _moment(args: argparse.Namespace) -> int:
    """--time (default now). Raises: UsageError when ahead of the clock without --allow-future."""
    now = int(time.time())
    when = times.parse_moment(args.time, "--time") if args.time else now
    if when > now + lint.FUTURE_TOLERANCE and not args.allow_future:
        raise UsageError(f"--time {times.iso(when)} is {when - now} s ahead of this machine's clock "
                         f"({times.iso(now)}): devices would move their time to it; pass --allow-future "
                         f"if that is meant")
    return when


def _request_timestamp(args: argparse.Namespace) -> int:
    if args.out is not None:
        raise UsageError("--request: writes a signing request only; -o belongs to the --attach step")
    when = _moment(args)
    with documents.naming(args.bundle):
        req, b = signreq.timestamp_request(documents.read_file(args.bundle), when, str(args.bundle))
    write_atomic(args.request, signreq.encode_request(req))
    if args.json:
        print(json.dumps({"request": str(args.request), "type": "timestamp", "role": "timestamp",
                          "time": times.iso(when), "time_epoch": when, "sha256": req.sha256.hex()}))
    else:
        print(f"signing request for a timestamp {times.iso(when)} of bundle v{b.version} (a timestamp "
              f"key signs) -> {args.request}")
    return 0


def _attach_timestamp(args: argparse.Namespace) -> int:
    if args.request is None or args.out is None or not args.root:
        raise UsageError("--attach: give --request (the signed request), -o and --root")
    if args.bundle is not None or args.time is not None:
        raise UsageError("--attach: the request holds the timestamp; leave out --bundle and --time")
    req = signreq.read_request(args.request)
    if req.doc_type != "timestamp":
        raise UsageError(f"{args.request}: is a {req.doc_type} request; attach it with "
                         f"`{req.doc_type} sign --attach`")
    root = documents.load_root_chain(args.root)
    s = signreq.read_signature(args.attach)
    signed = signreq.attach_sign1(req, s, signreq.role_keys(root, "timestamp"),
                                  f"a timestamp key of root v{root.version} of fleet {root.fleet}",
                                  str(args.attach))
    t = device_docs.parse_timestamp(req.payload)
    write_atomic(args.out, signed)
    if args.json:
        print(json.dumps({"out": str(args.out), "time": times.iso(t.time), "time_epoch": t.time,
                          "bundle_version": t.bundle_version, "kid": s.kid.hex(), "bytes": len(signed)}))
    else:
        print(f"timestamp {times.iso(t.time)} for bundle v{t.bundle_version}, signed by "
              f"{s.kid.hex()[:16]}... -> {args.out}")
    return 0
