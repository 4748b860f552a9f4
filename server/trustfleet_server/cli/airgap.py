"""`trustfleet review REQUEST` and `trustfleet sign-request REQUEST`: the offline half of air-gapped
signing (signreq). The online half is `bundle sign`, `root sign` and `timestamp create` with
--request (write a request) and --attach (add the signature file made here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trustfleet_device._cpython.files import write_atomic
from trustfleet_server import documents, keys, signreq
from trustfleet_server.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="show what a signing request would have you sign",
                       description="Show what a signing request (bundle sign --request, root sign "
                                   "--request, timestamp create --request) asks a key to sign. Every "
                                   "field shown is computed from the request's bytes; a request whose "
                                   "own summary disagrees with them is refused.")
    p.add_argument("request", type=Path, metavar="REQUEST", help="the signing request")
    p.add_argument("--json", action="store_true",
                   help="print {type, role, envelope, sha256, bytes, summary} as JSON")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("sign-request", help="sign a signing request (on the offline machine)",
                       description="Check a signing request as review does, then sign what it holds "
                                   "and write a signature file for --attach on the online machine.",
                       epilog="example: trustfleet review bundle.req && trustfleet sign-request "
                              "bundle.req --key b1.pem --signer ada -o bundle-ada.sig")
    p.add_argument("request", type=Path, metavar="REQUEST", help="the signing request")
    p.add_argument("--key", required=True, metavar="KEY", help="private key: a PKCS#8 PEM file or a pkcs11: URI (docs/operations.md)")
    p.add_argument("--passphrase-file", help=f"passphrase file (else ${keys.PASSPHRASE_ENV})")
    p.add_argument("--ask-passphrase", action="store_true", help="prompt for the passphrase")
    p.add_argument("--signer", metavar="NAME",
                   help="your name, put in this signature's protected header (signed with it; "
                        "devices ignore it, the audit trail shows it beside the key id)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="SIGFILE",
                   help="where to write the signature file")
    p.add_argument("--json", action="store_true", help="print {out, type, role, kid, sha256} as JSON")
    p.set_defaults(func=cmd_sign_request)


def cmd_review(args: argparse.Namespace) -> int:
    req = signreq.read_request(args.request)
    if args.json:
        common.print_json({"type": req.doc_type, "role": req.role, "envelope": req.envelope,
                           "sha256": req.sha256.hex(), "bytes": len(req.payload),
                           "summary": req.summary})
    else:
        print(signreq.request_text(req))
    return 0


def cmd_sign_request(args: argparse.Namespace) -> int:
    if args.signer is not None:
        documents.check_signer(args.signer)
    req = signreq.read_request(args.request)
    passphrase = keys.read_passphrase(args.passphrase_file, confirm=False, ask=args.ask_passphrase)
    key = keys.load_private_key(args.key, passphrase)
    s = signreq.sign(req, key, args.signer)
    write_atomic(args.out, signreq.encode_signature(s))
    if args.json:
        print(json.dumps({"out": str(args.out), "type": req.doc_type, "role": req.role,
                          "kid": s.kid.hex(), "sha256": req.sha256.hex()}))
    else:
        print(f"signed the {req.doc_type} request (payload sha256 {req.sha256.hex()[:16]}...) with "
              f"{s.kid.hex()[:16]}... -> {args.out}; it must be a {req.role} key: --attach checks")
    return 0
