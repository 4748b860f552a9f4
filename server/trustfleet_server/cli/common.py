"""Options and handlers that several command groups share.

`bundle` and `root` both sign and inspect documents; `bundle build` and
`lint` take the same lint options. This module imports no other cli module,
so the command groups never import each other.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from trustfleet_device import cbor
from trustfleet_device import documents as device_docs
from trustfleet_device._cpython.files import write_atomic
from trustfleet_server import config, describe, documents, keys, lint, mqtturl, signreq, times
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb

DEFAULT_HORIZON = f"{lint.DEFAULT_HORIZON // 86400}d"


def add_lint_arguments(p: argparse.ArgumentParser) -> None:
    """--chain, --horizon and --strict, shared with `bundle build`."""
    p.add_argument("--chain", action="append", default=[], metavar="FILE",
                   help="a chain (or certificate, or public key) your servers use or will use; "
                        "each pin should match one (TF106). Repeat for several")
    p.add_argument("--horizon", default=DEFAULT_HORIZON, metavar="DURATION",
                   help=f"pins expiring further out than this after issue are flagged (TF105; "
                        f"default {DEFAULT_HORIZON})")
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--allow", action="append", default=[], metavar="CODE",
                   help="let findings of this rule pass (e.g. --allow TF106 while the backup key's "
                        "chain is not at hand); they are still printed, marked allowed. Repeat for "
                        "several")
    p.add_argument("--allow-future", action="store_true",
                   help=f"accept an issued_at more than {lint.FUTURE_TOLERANCE // 60} minutes ahead of "
                        f"this machine's clock (TF111); devices then count the bundle's issued_at as "
                        f"vouched time, so only for a bundle meant to be dated ahead")
    p.add_argument("--root", dest="lint_root", type=Path, action="append", metavar="ROOT",
                   help="the fleet's signed root (repeat for a rotation chain, oldest first): pin-sets "
                        "expiring within its max_time_lead of issue are flagged (TF112)"
                        + configured_hint("root"))
    configured(p, "lint_root", "root", "--root", required=False, convert=_paths)


ROOT_CHECK_HELP = ("the fleet's signed root (repeat for a rotation chain, oldest first): refuse a key that "
                   "is not one of its {role}, writing nothing. Without it that check cannot be made "
                   "here; a wrong key shows only at verify or on the devices")


UNCHECKED_ROLE = ("note: the key's role was not checked; give --root (or set root in trustfleet.toml) "
                  "to refuse a key that is not a {role} key of the fleet's root")


def add_sign_arguments(p: argparse.ArgumentParser, role: str, future: bool = False,
                       root: bool = False) -> None:
    """Options of `bundle sign` and `root sign` (`role`: the key's role, for the configured key);
    `future` adds --allow-future (bundles only), `root` adds --root (the key's role is checked against
    it; the configured root when not given)."""
    if root:
        p.add_argument("--root", dest="sign_root", type=Path, action="append", metavar="ROOT",
                       help=ROOT_CHECK_HELP.format(role="keys for the document's role (bundle keys "
                                                        "for a bundle)") + configured_hint("root"))
        configured(p, "sign_root", "root", "--root", required=False, convert=_paths)
    if future:
        p.add_argument("--allow-future", action="store_true",
                       help=f"sign a bundle whose issued_at is more than {lint.FUTURE_TOLERANCE // 60} "
                            f"minutes ahead of this machine's clock (devices count issued_at as vouched "
                            f"time, so a bundle dated ahead moves their time forward)")
    key_argument(p, role, required=False, help="private key: a PKCS#8 PEM file or a pkcs11: URI (docs/operations.md)")
    p.add_argument("--passphrase-file", help=f"passphrase file (else ${keys.PASSPHRASE_ENV})")
    p.add_argument("--ask-passphrase", action="store_true", help="prompt for the passphrase")
    airgap = p.add_mutually_exclusive_group()
    airgap.add_argument("--request", type=Path, metavar="OUT",
                        help="sign on an offline machine instead: write a signing request to OUT "
                             "(no key needed here; see trustfleet review and trustfleet sign-request)")
    airgap.add_argument("--attach", type=Path, metavar="SIGFILE",
                        help="add the signature file of trustfleet sign-request, after checking it is "
                             "for this document, verifies and is by a key of the right role")
    if not root:
        p.add_argument("--root", dest="attach_root", type=Path, action="append", metavar="ROOT",
                       help="with --attach: the current signed root (repeat for a chain, oldest "
                            "first), whose root keys may also sign this next root; without it only "
                            "this root's own root keys may")
    p.add_argument("--signer", metavar="NAME",
                   help="your name, put in this signature's protected header (signed with it; "
                        "devices ignore it, the audit trail shows it beside the key id)")
    p.add_argument("file", type=Path, help="unsigned payload or signed document")
    p.add_argument("-o", "--out", type=Path, help="output file (default: replace the input)")
    p.add_argument("--json", action="store_true",
                   help="print {out, type, kid, signatures, bytes} as JSON")


def cmd_sign(args: argparse.Namespace) -> int:
    if args.request is not None or args.attach is not None:
        return _cmd_sign_airgap(args)
    if getattr(args, "attach_root", None):
        raise UsageError("--root: only with --attach (a local root sign checks nothing against it)")
    if args.key is None:
        raise missing_key(args.command)
    if args.signer is not None:
        documents.check_signer(args.signer)
    passphrase = keys.read_passphrase(args.passphrase_file, confirm=False, ask=args.ask_passphrase)
    key = keys.load_private_key(args.key, passphrase)
    # `root sign` signs roots only, `bundle sign` bundles only (the only one with --root).
    raw, doc = documents.read_document_file(args.file, args.command)
    check_not_future(doc, args.file, getattr(args, "allow_future", False))
    if getattr(args, "sign_root", None):
        check_key_role(key, args.key, args.sign_root, doc.doc_type)
    signed = documents.add_signature(raw, key, args.signer)
    out = args.out or args.file
    write_atomic(out, signed)
    doc = documents.read_document(signed)
    kid = keys.kid_hex(key)
    if args.json:
        print(json.dumps({"out": str(out), "type": doc.doc_type, "kid": kid,
                          "signatures": len(doc.kids), "bytes": len(signed)}))
    else:
        print(f"signed {doc.doc_type} with {kid[:16]}...; it now has {len(doc.kids)} signature(s) -> {out}")
    if hasattr(args, "sign_root") and not args.sign_root:
        print(UNCHECKED_ROLE.format(role=doc.doc_type), file=sys.stderr)
    return 0


def missing_key(role: str) -> UsageError:
    """The error for a --key given nowhere (optional when signing goes through a request)."""
    env = config.SETTINGS[f"keys.{role}"][0]
    return UsageError(f"--key is required: give it, or set [keys] {role} in {config.FILE_NAME} or {env}")


def _cmd_sign_airgap(args: argparse.Namespace) -> int:
    """`sign --request OUT` and `sign --attach SIGFILE` (signreq)."""
    what = "--request" if args.request is not None else "--attach"
    if args.signer is not None or args.ask_passphrase or args.passphrase_file:
        raise UsageError(f"{what}: --signer and passphrases belong to trustfleet sign-request, on the "
                         f"machine holding the key")
    raw, doc = documents.read_document_file(args.file, args.command)
    check_not_future(doc, args.file, getattr(args, "allow_future", False))
    if args.request is not None:
        with documents.naming(args.file):
            req = signreq.make_request(raw)
        write_atomic(args.request, signreq.encode_request(req))
        if args.json:
            print(json.dumps({"request": str(args.request), "type": req.doc_type, "role": req.role,
                              "sha256": req.sha256.hex()}))
        else:
            print(f"signing request for {req.doc_type} {args.file} (a {req.role} key signs; payload "
                  f"sha256 {req.sha256.hex()[:16]}...) -> {args.request}")
            print(f"next, offline: trustfleet review {args.request.name}; trustfleet sign-request "
                  f"{args.request.name} --key KEY -o SIGFILE; then here: --attach SIGFILE")
        return 0
    s = signreq.read_signature(args.attach)
    if doc.doc_type == "root":
        this = device_docs.parse_root(doc.payload)
        allowed = signreq.role_keys(this, "root")
        who = f"a root key of this root (v{this.version})"
        if args.attach_root:
            previous = documents.load_root_chain(args.attach_root)
            allowed.update(signreq.role_keys(previous, "root"))
            who = f"a root key of this root (v{this.version}) or of root v{previous.version}"
    else:
        if not args.sign_root:
            raise UsageError("--attach: give --root (or set root in trustfleet.toml): the signature "
                             "is checked against the root's bundle keys")
        root = documents.load_root_chain(args.sign_root)
        allowed = signreq.role_keys(root, doc.doc_type)
        who = f"a {doc.doc_type} key of root v{root.version} of fleet {root.fleet}"
    signed = signreq.attach(raw, s, allowed, who, str(args.attach))
    out = args.out or args.file
    write_atomic(out, signed)
    doc = documents.read_document(signed)
    if args.json:
        print(json.dumps({"out": str(out), "type": doc.doc_type, "kid": s.kid.hex(),
                          "signatures": len(doc.kids), "bytes": len(signed)}))
    else:
        print(f"attached {s.kid.hex()[:16]}...'s signature to the {doc.doc_type}; it now has "
              f"{len(doc.kids)} signature(s) -> {out}")
    return 0


def check_key_role(key: Any, key_path: Path, root_paths: list[Path], role: str) -> None:
    """Refuse a key that is not one of the root's keys for `role`.

    Raises: UsageError naming the key's kid and the role; TrustfleetError when the root does
    not verify.
    """
    root = documents.load_root_chain(root_paths)
    kid = keys.kid_of(key)
    if kid not in root.roles[role].kids:
        raise UsageError(f"{key_path}: key {kid.hex()[:16]} is not a {role} key of root v{root.version} "
                         f"of fleet {root.fleet}; nothing written")


def check_not_future(doc: documents.Document, path: Path, allow: bool, now: int | None = None) -> None:
    """Refuse to sign a bundle dated more than lint.FUTURE_TOLERANCE ahead of the clock (TF111).

    Raises: UsageError, unless `allow`.
    """
    if allow or doc.doc_type != "bundle":
        return
    issued_at = cbor.decode(doc.payload).get("issued_at")
    now = int(time.time()) if now is None else now
    if isinstance(issued_at, int) and issued_at > now + lint.FUTURE_TOLERANCE:
        raise UsageError(f"{path}: not signed: {lint.future_message(issued_at, now)}; pass --allow-future "
                         f"if it is meant to be dated ahead")


def cmd_inspect(args: argparse.Namespace) -> int:
    # `root inspect` shows roots; `bundle inspect` any document (timestamps too)
    raw, doc = documents.read_document_file(args.file, "root" if args.command == "root" else None)
    info = describe.describe(doc, raw)
    print(json.dumps(info, indent=2) if args.json else describe.render(info))
    return 0


# --------------------------------------------------------------------------- the operator config

# The config in force (trustfleet.toml, TRUSTFLEET_*): main() loads it before it builds the parser, so
# --help shows the configured defaults.
_CONFIG = config.OperatorConfig()
_MARK = "_configured__"


def use_config(cfg: config.OperatorConfig) -> None:
    global _CONFIG
    _CONFIG = cfg


def active_config() -> config.OperatorConfig:
    return _CONFIG


def configured_hint(name: str) -> str:
    """' (default: VALUE, from SOURCE)' for help text when the config sets `name`, else ''."""
    s = _CONFIG.get(name)
    if s is None:
        return ""
    return f" (default: {', '.join(s.as_list())}, from {s.source})"


def configured(p: argparse.ArgumentParser, dest: str, name: str, option: str, required: bool,
               convert: Any) -> None:
    """Let `dest` default to config setting `name` (converted by `convert(Setting)`), checked by
    apply_config after parsing; `required` options with no value anywhere are a usage error."""
    p.set_defaults(**{_MARK + dest: (name, option, required, convert)})


def apply_config(args: argparse.Namespace) -> None:
    """Fill options the command line left out from the config. Raises: UsageError for a required
    option given nowhere, naming the setting and the variable that would give it."""
    for key in [k for k in vars(args) if k.startswith(_MARK)]:
        name, option, required, convert = getattr(args, key)
        delattr(args, key)
        dest = key[len(_MARK):]
        if getattr(args, dest, None) not in (None, []):
            continue
        setting = _CONFIG.get(name)
        if setting is not None:
            setattr(args, dest, convert(setting))
        elif required:
            env = config.SETTINGS[name][0]
            where = f"[keys] {name.split('.', 1)[1]}" if name.startswith("keys.") else name
            raise UsageError(f"{option} is required: give it, or set {where} in {config.FILE_NAME} "
                             f"or {env}")
        else:
            setattr(args, dest, None)


def _paths(setting: config.Setting) -> list[Path]:
    return [Path(v) for v in setting.as_list()]


# --------------------------------------------------------------------------- fleet store and broker commands

RAW = argparse.RawDescriptionHelpFormatter


# The commands that create the fleet store when it is missing (docs/operations.md); every other
# command that takes --db refuses a store that does not exist, so a typo creates nothing.
CREATES_DB = ("serve", "rollout start", "publish")


def db_argument(p: argparse.ArgumentParser, create: bool | None = None, required: bool = True) -> None:
    """--db; `create` (default: the command is in CREATES_DB) lets the command create the store."""
    if create is None:
        create = p.prog.split(" ", 1)[-1] in CREATES_DB
    what = "created if missing" if create else "must exist: serve, rollout start or publish --db create it"
    p.add_argument("--db", metavar="PATH_OR_URL", type=lambda text: fleetdb.Target.of(text, create),
                   help=f"fleet store: a SQLite file ({what}) or a postgresql:// URL" + configured_hint("db"))
    configured(p, "db", "db", "--db", required, lambda s: fleetdb.Target.of(s.as_list()[0], create))


def fleet_argument(p: argparse.ArgumentParser, required: bool = True,
                   help: str = "fleet name (as in the root)") -> None:
    p.add_argument("--fleet", help=help + configured_hint("fleet"))
    configured(p, "fleet", "fleet", "--fleet", required, lambda s: s.as_list()[0])


def root_argument(p: argparse.ArgumentParser, required: bool = True, chain: bool = True,
                  help: str = "trusted root (signed); repeat to walk a rotation chain, oldest first") -> None:
    """--root: a chain (a list of paths) when `chain`, else one path (the newest configured root)."""
    if chain:
        p.add_argument("--root", type=Path, action="append", metavar="ROOT", help=help + configured_hint("root"))
        configured(p, "root", "root", "--root", required, _paths)
    else:
        p.add_argument("--root", type=Path, metavar="ROOT", help=help + configured_hint("root"))
        configured(p, "root", "root", "--root", required, lambda s: Path(s.as_list()[-1]))


def broker_argument(p: argparse.ArgumentParser, required: bool = True, metavar: str = "URL",
                    help: str = "the broker: mqtt://[user[:password]@]host[:port] or mqtts://...",
                    several: bool = False) -> None:
    """--broker: one URL (a configured list gives its first), or with `several` a list of URLs
    (repeat --broker, or separate them with commas; see broker_urls)."""
    if several:
        p.add_argument("--broker", metavar=metavar, action="append",
                       help=help + "; repeat it (or separate URLs with commas) for the nodes of a "
                                   "cluster" + configured_hint("broker"))
        configured(p, "broker", "broker", "--broker", required, lambda s: s.as_list())
    else:
        p.add_argument("--broker", metavar=metavar, help=help + configured_hint("broker"))
        configured(p, "broker", "broker", "--broker", required, lambda s: s.as_list()[0])


def broker_urls(values: list[str]) -> list[mqtturl.BrokerURL]:
    """The brokers of a several-URL --broker: each value may hold comma-separated URLs.

    Raises: UsageError (a bad URL, none at all, one listed twice, or mqtt:// mixed with mqtts://,
    which would let a failover drop TLS)."""
    texts = [t.strip() for v in values for t in v.split(",") if t.strip()]
    if not texts:
        raise UsageError("--broker: give at least one broker URL")
    urls = [mqtturl.parse(t) for t in texts]
    if len({(u.host, u.port) for u in urls}) != len(urls):
        raise UsageError(f"--broker: a broker is listed twice ({', '.join(texts)})")
    if len({u.tls for u in urls}) > 1:
        raise UsageError("--broker: mqtt:// and mqtts:// mixed; list only one kind (a failover "
                         "must not fall back to plain TCP)")
    return urls


def key_argument(p: argparse.ArgumentParser, role: str, required: bool = True, option: str = "--key",
                 help: str = "private key: a PKCS#8 PEM file or a pkcs11: URI") -> None:
    """A signing key of `role`; the default is the config's [keys] entry for that role."""
    dest = option.lstrip("-").replace("-", "_")
    p.add_argument(option, dest=dest, type=Path, metavar="KEY", help=help + configured_hint(f"keys.{role}"))
    configured(p, dest, f"keys.{role}", option, required, lambda s: Path(s.as_list()[0]))


def print_json(value: Any) -> None:
    """One JSON object on stdout, epoch-second fields of the fleet store written by the JSON time
    convention (times.json_times)."""
    print(json.dumps(times.json_times(value), indent=None, sort_keys=False, default=str), flush=True)


def retention_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--[prefix]per-device, --[prefix]total, --[prefix]max-age: report retention (0 turns one
    off; defaults: fleetdb.Retention)."""
    d = fleetdb.Retention()
    p.add_argument(f"--{prefix}per-device", type=int, default=d.per_device, metavar="N",
                   help=f"newest reports kept per device (default {d.per_device:,}; 0: no limit)")
    p.add_argument(f"--{prefix}total", type=int, default=d.total, metavar="N",
                   help=f"newest reports kept in all (default {d.total:,}; 0: no limit)")
    p.add_argument(f"--{prefix}max-age", default=f"{d.max_age // 86_400}d", metavar="DURATION",
                   help=f"drop reports older than this (default {d.max_age // 86_400}d; 0: keep)")


def retention_from(args: argparse.Namespace, prefix: str = "") -> fleetdb.Retention:
    """The Retention of retention_arguments' options. Raises: UsageError."""
    dest = prefix.replace("-", "_")
    per_device, total = getattr(args, f"{dest}per_device"), getattr(args, f"{dest}total")
    for option, value in ((f"--{prefix}per-device", per_device), (f"--{prefix}total", total)):
        if value < 0:
            raise UsageError(f"{option}: must be 0 (no limit) or more, got {value}")
    raw_age = getattr(args, f"{dest}max_age")
    max_age = times.parse_duration(raw_age, f"--{prefix}max-age", strict=False)
    if max_age < 0:
        raise UsageError(f"--{prefix}max-age: must be 0 (keep) or more, got {raw_age}")
    return fleetdb.Retention(per_device=per_device, total=total, max_age=int(max_age))
