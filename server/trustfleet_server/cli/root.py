"""`trustfleet root create|sign|rotate|verify|inspect`.

A root lists the keys allowed to sign each role (root, bundle, timestamp)
and how many must sign. The first root is installed on devices at the
factory; every later one must be signed by a threshold of the previous
root's root keys AND of its own, and carry exactly the next version.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from trustfleet_device import cbor, policy
from trustfleet_device import documents as device_docs
from trustfleet_device._cpython.files import write_atomic
from trustfleet_server import documents, roots, spec, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("root", help="create, sign, rotate and verify the fleet root",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = group.add_subparsers(dest="root_command", metavar="ACTION", required=True)

    p = rsub.add_parser("create", help="create an UNSIGNED version-1 root",
                        epilog="example: trustfleet root create --fleet acme --expires 365d "
                               "--key root=r1.pub.pem --key root=r2.pub.pem --threshold root=2 "
                               "--key bundle=b1.pub.pem --key bundle=b2.pub.pem --threshold bundle=2 "
                               "--key timestamp=t.pub.pem -o root.cbor")
    common.fleet_argument(p, help="fleet id (lower-case name)")
    _add_role_arguments(p, required=True)
    p.add_argument("--expires", default="365d", help="expiry: date or duration (default 365d)")
    _add_lead_argument(p, "absent: devices use 30d")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="where to write the unsigned root (sign it next: root sign)")
    p.add_argument("--json", action="store_true",
                   help="print {out, version, signed, roles, max_time_lead} as JSON")
    p.set_defaults(func=cmd_create)

    p = rsub.add_parser("sign", help="add ONE signature to a root (run once per key)",
                        description="Add one signature. A rotated root needs signatures from a "
                                    "threshold of the OLD root keys and of the NEW root keys.")
    common.add_sign_arguments(p, "root")
    p.set_defaults(func=common.cmd_sign)

    p = rsub.add_parser("rotate", help="make the next UNSIGNED root from the current one",
                        epilog="example: trustfleet root rotate --from root-v1.cbor "
                               "--remove-key bundle=3fa2c1d0 --key bundle=b3.pub.pem -o root-v2.cbor")
    p.add_argument("--from", dest="previous", type=Path, required=True, help="the current signed root")
    _add_role_arguments(p, required=False)
    p.add_argument("--remove-key", action="append", default=[], metavar="ROLE=KID",
                   help="remove a key from a role (kid hex prefix, at least 8 characters)")
    p.add_argument("--expires", default="365d",
                   help="expiry of the new root: date or duration from now (default 365d)")
    _add_lead_argument(p, "default: the current root's")
    p.add_argument("-o", "--out", type=Path, required=True,
                   help="where to write the next root, unsigned (sign it with old and new root keys)")
    p.add_argument("--json", action="store_true",
                   help="print {out, version, signed, roles, max_time_lead} as JSON")
    p.set_defaults(func=cmd_rotate)

    p = rsub.add_parser("verify", help="verify a root, or a rotation chain",
                        description="With one file: check it is signed by a threshold of its own "
                                    "root keys. With several, oldest first: check each rotation.")
    p.add_argument("files", type=Path, nargs="+", metavar="ROOT",
                   help="signed root, or a rotation chain oldest first")
    p.add_argument("--json", action="store_true",
                   help="print {valid, version, fleet, expires, expired} as JSON (errors too)")
    p.set_defaults(func=cmd_verify)

    p = rsub.add_parser("inspect", help="show a root's keys and thresholds")
    p.add_argument("file", type=Path, help="a root, signed or not (signatures are not checked)")
    p.add_argument("--json", action="store_true", help="print what it holds as JSON")
    p.set_defaults(func=common.cmd_inspect)


def _add_role_arguments(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--key", action="append", default=[], metavar="ROLE=PUBKEY", required=required,
                   help="add a public key file to a role (root, bundle or timestamp); repeatable")
    p.add_argument("--threshold", action="append", default=[], metavar="ROLE=N",
                   help="signatures required for a role (default 1)")


def _add_lead_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--max-time-lead", metavar="DURATION",
                   help=f"how far a timestamp (online key) may move device time past what the offline "
                        f"keys vouch for, 1h to 400d ({default}); written as policy.max_time_lead")


def _report(args: argparse.Namespace, payload: bytes, version: int, roles: dict,
            time_lead: int | None = None) -> int:
    write_atomic(args.out, payload)
    if args.json:
        print(json.dumps({"out": str(args.out), "version": version, "signed": False,
                          "roles": {n: {"threshold": r["threshold"], "keys": [k.hex() for k in r["keys"]]}
                                    for n, r in roles.items()},
                          "max_time_lead": time_lead}))
    else:
        print(f"unsigned root v{version} -> {args.out}")
        for name, r in roles.items():
            print(f"  {name:<10} {r['threshold']} of {len(r['keys'])}")
        if time_lead is not None:
            print(f"  max_time_lead {time_lead} s ({time_lead / 86400:g} days)")
        print(f"next: trustfleet root sign --key KEY {args.out}   (once per signing key)")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    if not args.fleet or len(args.fleet) > device_docs.MAX_FLEET_ID:
        raise UsageError(f"--fleet: 1 to {device_docs.MAX_FLEET_ID} characters")
    now = int(time.time())
    keymap: dict[bytes, bytes] = {}
    roles = {name: {"keys": [], "threshold": 1} for name in device_docs.ROLES}
    roots.apply_changes(keymap, roles, add=args.key, remove=getattr(args, "remove_key", []),
                        thresholds=args.threshold)
    expires = spec.parse_time(args.expires, "--expires", now)
    lead = roots.parse_time_lead(args.max_time_lead) if args.max_time_lead else None
    payload = roots.root_payload(args.fleet, 1, expires, keymap, roles, lead)
    return _report(args, payload, 1, roles, lead)


def cmd_rotate(args: argparse.Namespace) -> int:
    raw, _ = documents.read_document_file(args.previous, "root")
    with documents.naming(args.previous):
        old = policy.load_trusted_root(raw)
    keymap = dict(old.spki)
    roles = {name: {"keys": list(r.kids), "threshold": r.threshold} for name, r in old.roles.items()}
    roots.apply_changes(keymap, roles, add=args.key, remove=getattr(args, "remove_key", []),
                        thresholds=args.threshold)
    version = old.version + 1
    expires = spec.parse_time(args.expires, "--expires", int(time.time()))
    if args.max_time_lead:
        lead = roots.parse_time_lead(args.max_time_lead)
    else:  # keep the current root's policy
        kept = cbor.decode(documents.read_document(raw).payload).get("policy")
        lead = kept.get("max_time_lead") if isinstance(kept, dict) else None
    payload = roots.root_payload(old.fleet, version, expires, keymap, roles, lead)
    return _report(args, payload, version, roles, lead)


def cmd_verify(args: argparse.Namespace) -> int:
    root = documents.load_root_chain(args.files)
    info = {"valid": True, "version": root.version, "fleet": root.fleet,
            "expires": times.iso(root.expires), "expired": root.expires <= time.time()}
    if args.json:
        print(json.dumps(info))
    else:
        chain = f" (chain of {len(args.files)})" if len(args.files) > 1 else ""
        note = "  EXPIRED" if info["expired"] else ""
        print(f"valid: root v{root.version} for fleet {root.fleet}{chain}, expires {info['expires']}{note}")
    return 0
