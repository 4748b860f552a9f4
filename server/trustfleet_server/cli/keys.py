"""`trustfleet key generate|show|list` and `trustfleet pin`: key files, token keys and SPKI pins.

Handlers only parse arguments, call `keys` / `x509util` (and, for
`pin --connect`, one TLS handshake with verification off) and print. stdout
carries the result alone (a kid, a pin, or JSON) so it can be piped or
diffed; notes for the operator go to stderr. Passphrases come from
--passphrase-file, --ask-passphrase or $TRUSTFLEET_PASSPHRASE and are never
printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any, NamedTuple

from trustfleet_server import keys, lint, times, tlsfetch, x509util
from trustfleet_server.errors import UsageError

GENERATE_DESCRIPTION = """\
Generate an ECDSA P-256 signing key.

Writes the private key as PKCS#8 PEM with mode 0600 (encrypted when a
passphrase is given) and the public key as SubjectPublicKeyInfo PEM with
mode 0644, then prints the key id (kid): SHA-256 of the public key's DER
SubjectPublicKeyInfo, in hex. Missing folders are created (mode 0700).
Existing files are never overwritten without --force.

With --pkcs11 URI the key pair is generated inside a PKCS#11 token
(sensitive, not extractable, for signing only); it prints the kid and the
URI to sign with, and --out (optional then) writes the PUBLIC key PEM.
"""

GENERATE_EPILOG = """\
examples:
  trustfleet key generate --out keys/root-1.pem --ask-passphrase
      writes keys/root-1.pem (encrypted) and keys/root-1.pub.pem
  trustfleet key generate --out k.pem --passphrase-file /run/secrets/k --json
      {"kid": "…", "private_key": "k.pem", "public_key": "k.pub.pem"}
  trustfleet key generate --pkcs11 'pkcs11:token=root-a?pin-source=file:/run/pin' \
      --label root-1 --out keys/root-1.pub.pem
      the key stays in the token; sign with the URI it prints
"""

SHOW_DESCRIPTION = """\
Show what a key file holds: its kid, curve, and whether it is a private
key (and if so whether it is encrypted), a public key or a certificate.
An encrypted private key shows its kid only when given the passphrase.
"""

PIN_DESCRIPTION = """\
Print the SPKI SHA-256 pin (base64) of a certificate, chain, public key or
private key, in PEM or DER, or of the chain a live TLS server sends.

For a single certificate or key the output is exactly the pin and a newline,
the same bytes as:
  openssl x509 -in CERT -pubkey -noout | openssl pkey -pubin -outform der \\
    | openssl dgst -sha256 -binary | openssl enc -base64
For a chain (or a directory of certificates) each line is "<pin>  <subject>".

--long (and --connect, always) lists each certificate's subject, issuer,
expiry and pin, and whether its key is yours to pin: "public" marks public CA
infrastructure (a public root, or a CA certificate whose issuer chain reaches
a public root through the certificates shown), which you must never pin;
"yours" is a private CA, a self-signed certificate or a server key. Public
roots are certifi's Mozilla roots unless --public-roots names a file.

--connect HOST:PORT does a real TLS handshake with verification OFF, only to
see what the server sends: nothing is validated (trust, hostname, expiry).
"""

PIN_EPILOG = """\
examples:
  trustfleet pin server.crt
  trustfleet pin fullchain.pem --json
  trustfleet pin --connect api.acme.example:443
  trustfleet pin --connect 10.0.0.7:8883 --servername mqtt.acme.example --json
"""

CONNECT_NOTE = (
    "NOT VALIDATED: the chain was collected with verification off; nothing here "
    "says the server, its name or its chain is trustworthy"
)


def register(sub: Any) -> None:
    """Add the `key` group and the `pin` command to the top-level subparsers."""
    _register_key(sub)
    _register_pin(sub)


def add_passphrase_arguments(parser: argparse.ArgumentParser, *, purpose: str) -> None:
    """Add the mutually exclusive --passphrase-file / --ask-passphrase options.

    Args:
        parser: the subcommand parser.
        purpose: finishes "the passphrase ..." in the help, e.g. "to encrypt the new key".
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=(
            f"read the passphrase {purpose} from the first line of FILE "
            f"(default: ${keys.PASSPHRASE_ENV} when set)"
        ),
    )
    group.add_argument(
        "--ask-passphrase",
        action="store_true",
        help=f"prompt on the terminal for the passphrase {purpose}",
    )


def passphrase_from_args(args: argparse.Namespace, *, confirm: bool = False) -> bytes | None:
    """Return the passphrase selected by `add_passphrase_arguments` options, or None.

    Raises:
        KeyFileError: the passphrase file is unreadable or empty.
        UsageError: prompted passphrases are empty or do not match.
    """
    return keys.read_passphrase(args.passphrase_file, confirm=confirm, ask=args.ask_passphrase)


# --------------------------------------------------------------------------- key


def _register_key(sub: Any) -> None:
    key_parser = sub.add_parser(
        "key",
        help="generate and inspect ECDSA P-256 signing keys",
        description="Generate and inspect ECDSA P-256 signing keys.",
    )
    key_sub = key_parser.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    _register_generate(key_sub)
    _register_show(key_sub)
    _register_list(key_sub)


def _register_generate(key_sub: Any) -> None:
    parser = key_sub.add_parser(
        "generate",
        help="generate a P-256 key pair and print its kid",
        description=GENERATE_DESCRIPTION,
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", metavar="PATH",
                        help="private key file to create (with --pkcs11: the public key PEM file)")
    parser.add_argument("--pkcs11", metavar="URI",
                        help="generate inside the PKCS#11 token this pkcs11: URI names (token=, "
                             "module-path=, pin-source=); the private key never leaves it")
    parser.add_argument("--label", metavar="LABEL",
                        help="with --pkcs11: the new key's label (default: the URI's object=)")
    parser.add_argument(
        "--public-out",
        metavar="PATH",
        help="public key file (default: PATH with .pem replaced by .pub.pem)",
    )
    add_passphrase_arguments(parser, purpose="to encrypt the new key")
    parser.add_argument(
        "--force", action="store_true", help="replace existing key files (atomically)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    parser.set_defaults(func=cmd_key_generate)


def _register_show(key_sub: Any) -> None:
    parser = key_sub.add_parser(
        "show",
        help="print a key file's kid, curve and kind",
        description=SHOW_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="PATH", help="private key, public key or certificate")
    add_passphrase_arguments(parser, purpose="of an encrypted key")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    parser.set_defaults(func=cmd_key_show)


def _register_list(key_sub: Any) -> None:
    parser = key_sub.add_parser(
        "list",
        help="list the private keys on a PKCS#11 token with their kids",
        description="List the private keys on a PKCS#11 token: label, id, kind, kid and the "
                    "URI to sign with. object= or id= in the URI narrow the list.",
    )
    parser.add_argument("--pkcs11", metavar="URI", required=True,
                        help="pkcs11: URI of the token (token=, module-path=, pin-source=)")
    parser.add_argument("--json", action="store_true", help='print {"keys": [...]} as JSON instead')
    parser.set_defaults(func=cmd_key_list)


def default_public_path(private_path: str) -> str:
    """Return where `key generate` puts the public key by default: x.pem -> x.pub.pem."""
    stem = private_path.removesuffix(".pem")
    return f"{stem}.pub.pem"


def _check_outputs(private_path: str, public_path: str, force: bool) -> None:
    if os.path.abspath(private_path) == os.path.abspath(public_path):
        raise UsageError(f"{public_path}: the public key cannot go to the private key's file")
    # Checked up front so nothing is prompted for or written when an output cannot be made.
    for path in (private_path, public_path):
        if os.path.isdir(path) or path.endswith(("/", os.sep)):
            raise keys.KeyFileError(f"{path}: is a folder; give the key's file name, "
                                    f"e.g. {os.path.join(path, 'root-1.pem')}")
        blocker = _file_in_the_way(path)
        if blocker:
            raise keys.KeyFileError(f"{path}: cannot create it: {blocker} is a file, not a folder")
    if force:
        return
    # Checked up front so nothing is written (or prompted for) when either
    # file exists; the O_EXCL create still guards against a race.
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise keys.KeyFileError(
                f"{path}: already exists; refusing to overwrite it (pass --force to replace it)"
            )


def _file_in_the_way(path: str) -> str | None:
    """The nearest existing ancestor of `path` when it is not a folder, else None."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent):
        return None
    shown = os.path.relpath(parent) if not os.path.isabs(path) else parent
    return shown


def cmd_key_generate(args: argparse.Namespace) -> int:
    """Handle `trustfleet key generate`."""
    if args.pkcs11 is not None:
        return _generate_in_token(args)
    if args.label is not None:
        raise UsageError("--label only applies with --pkcs11")
    if args.out is None:
        raise UsageError("--out is required: the private key file to create")
    private_path = args.out
    public_path = args.public_out or default_public_path(private_path)
    _check_outputs(private_path, public_path, args.force)
    passphrase = passphrase_from_args(args, confirm=True)
    key = keys.generate_key()
    keys.write_private_key(private_path, key, passphrase, overwrite=args.force)
    keys.write_public_key(public_path, key.public_key(), overwrite=args.force)
    kid = keys.kid_hex(key)
    state = "encrypted" if passphrase else "NOT encrypted: no passphrase given"
    print(f"wrote private key {private_path} ({state})", file=sys.stderr)
    print(f"wrote public key {public_path}", file=sys.stderr)
    if args.json:
        _print_json({"kid": kid, "private_key": private_path, "public_key": public_path})
    else:
        print(kid)
    return 0


def _generate_in_token(args: argparse.Namespace) -> int:
    from trustfleet_server import pkcs11keys

    if args.public_out is not None or args.passphrase_file or args.ask_passphrase:
        raise UsageError("--public-out and passphrases do not apply with --pkcs11 (--out is the "
                         "public key; the token's PIN protects the private key)")
    if args.out is not None:
        # Checked before the token makes a key that would then have no public key file.
        if os.path.isdir(args.out) or args.out.endswith(("/", os.sep)):
            raise keys.KeyFileError(f"{args.out}: is a folder; give the public key's file name")
        if not args.force and os.path.lexists(args.out):
            raise keys.KeyFileError(f"{args.out}: already exists; refusing to overwrite it (pass "
                                    f"--force to replace it)")
    made, public = pkcs11keys.generate(args.pkcs11, args.label)
    if args.out is not None:
        keys.write_public_key(args.out, public, overwrite=args.force)
        print(f"wrote public key {args.out}", file=sys.stderr)
    print(f"generated {made.kind} key {made.label!r} in the token (sensitive, not extractable)",
          file=sys.stderr)
    if args.json:
        _print_json({**made.as_json(), "public_key": args.out})
    else:
        print(made.kid)
        print(made.uri)
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    """Handle `trustfleet key list --pkcs11 URI`."""
    from trustfleet_server import pkcs11keys

    found = pkcs11keys.list_keys(args.pkcs11)
    if args.json:
        _print_json({"keys": [k.as_json() for k in found]})
        return 0
    if not found:
        print("no private keys on the token", file=sys.stderr)
    for k in found:
        flags = "sensitive" if k.sensitive else "NOT sensitive"
        flags += ", extractable" if k.extractable else ", not extractable"
        print(f"{k.label}  id={k.id.hex() or '-'}  {k.kind}  kid={k.kid or 'unknown'}  ({flags})")
        print(f"    {k.uri}")
    return 0


def cmd_key_show(args: argparse.Namespace) -> int:
    """Handle `trustfleet key show`."""
    material = keys.inspect_key_file(args.path, passphrase_from_args(args))
    if not material.locked:
        keys.check_p256(args.path, material.public_key)
    report = {
        "path": args.path,
        "kid": None if material.locked else keys.kid_hex(material.public_key),
        "curve": None if material.locked else keys.curve_name(material.public_key.curve),
        "kind": material.kind,
        "encrypted": material.encrypted,
    }
    if args.json:
        _print_json(report)
        return 0
    locked_note = f"unknown (encrypted key needs a passphrase: {keys.PASSPHRASE_HINT})"
    print(f"kid: {report['kid'] or locked_note}")
    print(f"curve: {report['curve'] or 'unknown'}")
    print(f"kind: {material.kind}")
    print(f"encrypted: {'yes' if material.encrypted else 'no'}")
    return 0


# --------------------------------------------------------------------------- pin


def _register_pin(sub: Any) -> None:
    parser = sub.add_parser(
        "pin",
        help="print the SPKI SHA-256 pin of a certificate, key or live TLS server",
        description=PIN_DESCRIPTION,
        epilog=PIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "target",
        metavar="CERT_OR_KEY",
        nargs="?",
        help="certificate, chain, public key or private key (PEM or DER), or a directory",
    )
    parser.add_argument(
        "--connect",
        metavar="HOST:PORT",
        help="pin the chain a TLS server sends (port 443 when omitted); nothing is validated",
    )
    parser.add_argument(
        "--servername",
        metavar="NAME",
        help="with --connect: the SNI name to send (default: HOST unless it is an IP address)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --connect: connect and handshake timeout (default 10)",
    )
    add_passphrase_arguments(parser, purpose="of an encrypted private key")
    parser.add_argument(
        "--all",
        action="store_true",
        help='always print "<pin>  <subject>" lines, even for a single certificate or key',
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="list subject, issuer, expiry, pin and yours/public for each (always with --connect)",
    )
    parser.add_argument(
        "--public-roots",
        metavar="FILE",
        help="certificates to treat as the public roots (default: certifi's Mozilla roots)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead")
    parser.set_defaults(func=cmd_pin)


class _Connection(NamedTuple):
    address: str
    servername: str | None
    tls_version: str | None


def _pin_subjects(args: argparse.Namespace) -> tuple[list[x509util.PinSubject], _Connection | None]:
    # The single place that decides where subjects come from.
    if args.connect:
        if args.target:
            raise UsageError("give a file or --connect HOST:PORT, not both")
        if not args.timeout > 0:
            raise UsageError("--timeout: must be more than 0 seconds")
        host, port = tlsfetch.parse_address(args.connect)
        certs, sni, version = tlsfetch.fetch_chain(host, port, args.servername, args.timeout)
        subjects = [
            x509util.PinSubject(x509util.subject_label(c.subject, None), c.public_key(), c)
            for c in certs
        ]
        return subjects, _Connection(tlsfetch.format_address(host, port), sni, version)
    if args.servername:
        raise UsageError("--servername only applies with --connect")
    if not args.target:
        raise UsageError("give a certificate or key file, or --connect HOST:PORT")
    return x509util.load_pin_subject(args.target, passphrase_from_args(args)), None


def cmd_pin(args: argparse.Namespace) -> int:
    """Handle `trustfleet pin`."""
    subjects, connection = _pin_subjects(args)
    rich = args.json or args.long or connection is not None
    if not rich:
        if len(subjects) == 1 and not args.all:
            print(x509util.pin_b64(subjects[0].public_key))
        else:
            for subject in subjects:
                print(f"{x509util.pin_b64(subject.public_key)}  {lint.printable(subject.label)}")
        return 0
    owners = lint.classify(subjects, lint.public_roots(args.public_roots))
    records = [_pin_record(s, o, i) for i, (s, o) in enumerate(zip(subjects, owners, strict=True))]
    if args.json:
        if connection is None:
            _print_json({"file": str(args.target), "certificates": records})
        else:
            _print_json(
                {
                    "connect": connection.address,
                    "servername": connection.servername,
                    "tls_version": connection.tls_version,
                    "validated": False,
                    "note": CONNECT_NOTE,
                    "certificates": records,
                }
            )
        return 0
    if connection is not None:
        sni = f"SNI {connection.servername}" if connection.servername else "no SNI"
        print(
            f"# {connection.address} ({sni}, {connection.tls_version}) sent "
            f"{len(records)} certificate(s)"
        )
        print(f"# {CONNECT_NOTE}")
    for record in records:
        _print_long(record)
    return 0


def _pin_record(
    subject: x509util.PinSubject, owner: dict[str, str], position: int
) -> dict[str, Any]:
    cert = subject.cert
    return {
        "position": position,
        "subject": cert.subject.rfc4514_string() if cert else None,
        "issuer": cert.issuer.rfc4514_string() if cert else None,
        "not_after": times.iso(cert.not_valid_after_utc) if cert else None,
        "pin_sha256": x509util.pin_b64(subject.public_key),
        "kind": owner["kind"],
        "owner": owner["owner"],
        "why": owner["why"],
    }


def _print_long(record: dict[str, Any]) -> None:
    mark = (
        "public CA infrastructure: not yours, do not pin"
        if record["owner"] == "public"
        else "yours"
    )
    print(f"[{record['position']}] {record['kind']}: {mark} ({record['why']})")
    if record["subject"] is not None:
        expired = ""
        not_after = dt.datetime.strptime(record["not_after"], "%Y-%m-%dT%H:%M:%SZ")
        if not_after.replace(tzinfo=dt.UTC) <= dt.datetime.now(dt.UTC):
            expired = " (EXPIRED)"
        print(f"    subject  {lint.printable(record['subject'])}")
        print(f"    issuer   {lint.printable(record['issuer'])}")
        print(f"    expires  {record['not_after']}{expired}")
    print(f"    pin      {record['pin_sha256']}")


# --------------------------------------------------------------------------- output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))
