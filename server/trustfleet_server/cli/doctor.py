"""`trustfleet doctor`: a self-check that says what is missing, one line per check.

Each check answers ok, warn or fail, and every warn or fail carries the fix.
Checks: the config in use, the broker (one connection, a short timeout), each
signing key (exists, mode 0600, parses, its kid, and whether the root lists it
for its role), the fleet store (opened, never created), the root (verifies,
threshold met, not expired nor near expiry) and, when given, the latest bundle
and timestamp. Exit 0 when no check fails, 1 when one does.
"""

from __future__ import annotations

import argparse
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trustfleet_device import documents as device_docs
from trustfleet_device import policy
from trustfleet_device.errors import TrustfleetError
from trustfleet_server import config, documents, keys, mqtturl, pkcs11keys, times
from trustfleet_server.cli import common
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb

OK, WARN, FAIL = "ok", "warn", "fail"
NEAR_EXPIRY = 30 * 86_400  # a root, bundle or key listing expiring within this is a warning
BROKER_TIMEOUT = 3.0  # seconds for the broker check's connect and CONNACK

EPILOG = """\
Prints one line per check: ok, warn or fail, what was found, and for warn
and fail the fix. Exit 0 when nothing fails (warnings allowed), 1 when a
check fails, 2 on a usage error. Options default to trustfleet.toml and
TRUSTFLEET_* environment variables like every other command's.

examples:
  trustfleet doctor --broker mqtt://localhost --root root.cose --db fleet.db --fleet acme \\
      --key bundle=keys/bundle-1.pem --key timestamp=keys/ts.pem
  trustfleet doctor --root root.cose --bundle bundle-v7.cose --json
"""


@dataclass(frozen=True)
class VerifiedBundle:
    """What the timestamp check needs of the bundle given with --bundle, once it verified."""

    sha256: bytes
    max_timestamp_age: int


@dataclass
class Check:
    """One line of the report."""

    check: str
    status: str
    message: str
    fix: str | None = None

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.status:<4}  {self.check:<13} {self.message}{fix}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="self-check: broker, keys, fleet store, root, bundle; says what to fix",
                       description=__doc__, epilog=EPILOG, formatter_class=common.RAW)
    broker_argument = getattr(common, "broker_argument", None)
    if broker_argument is not None:
        broker_argument(p, required=False)
    else:
        p.add_argument("--broker", metavar="URL",
                       help="the broker to reach: mqtt://[user[:password]@]host[:port] or mqtts://...")
    common.root_argument(p, required=False)
    common.db_argument(p, create=False, required=False)
    common.fleet_argument(p, required=False)
    p.add_argument("--key", action="append", default=[], metavar="ROLE=PATH",
                   help="a private signing key to check, with the root role it signs for "
                        "(root, bundle or timestamp); repeatable (default: the config's [keys])")
    p.add_argument("--passphrase-file", metavar="FILE",
                   help=f"passphrase of encrypted keys (default: ${keys.PASSPHRASE_ENV} when set); "
                        f"without one an encrypted key is checked for everything but its kid")
    p.add_argument("--bundle", type=Path, metavar="FILE",
                   help="the latest signed bundle: verified against the root, expiry checked")
    p.add_argument("--timestamp", type=Path, metavar="FILE",
                   help="the latest signed timestamp: verified against the root and the bundle")
    p.add_argument("--timeout", type=float, default=BROKER_TIMEOUT, metavar="SECONDS",
                   help=f"broker connect and CONNACK timeout (default {BROKER_TIMEOUT:g})")
    p.add_argument("--json", action="store_true",
                   help='print {"ok", "counts", "checks": [{check, status, message, fix}]} as JSON')
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise UsageError(f"--timeout: must be more than 0 seconds, got {args.timeout:g}")
    now = int(time.time())
    checks: list[Check] = [check_config()]
    checks.append(check_broker(args.broker, args.timeout))
    root, root_checks = check_root(args.root or [], args.fleet, now)
    checks.extend(root_checks)
    given = {spec.partition("=")[0] for spec in args.key}
    specs = args.key + [s for s in configured_keys() if s.partition("=")[0] not in given]
    checks.extend(check_keys(specs, args.passphrase_file, root))
    checks.append(check_store(args.db, args.fleet or (root.fleet if root else None)))
    bundle = None
    if args.bundle is not None:
        check, bundle = check_bundle(args.bundle, root, now)
        checks.append(check)
    if args.timestamp is not None:
        checks.append(check_timestamp(args.timestamp, root, bundle, now))
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    if args.json:
        common.print_json({"ok": counts[FAIL] == 0, "counts": counts, "checks": [asdict(c) for c in checks]})
    else:
        for c in checks:
            print(c.line())
        print(f"{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed")
    return 1 if counts[FAIL] else 0


# --------------------------------------------------------------------------- checks


def reason(exc: BaseException, path: object = None) -> str:
    """The error's words without a leading `path: ` (the check's line names the file once)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    return text.removeprefix(f"{path}: ") if path is not None else text


def check_config(cfg: config.OperatorConfig | None = None) -> Check:
    """The config in use: the file read and each setting with where it came from (TRUSTFLEET_* variable
    names, never their values' secrets: the config holds paths and names only)."""
    cfg = cfg if cfg is not None else common.active_config()
    if not cfg.settings:
        where = f"{cfg.path} sets nothing" if cfg.path else f"no {config.FILE_NAME} here"
        return Check("config", OK, f"{where} and no TRUSTFLEET_* settings: only the options given are checked")
    by_source: dict[str, list[str]] = {}
    for name, s in sorted(cfg.settings.items()):
        by_source.setdefault(s.source, []).append(name)
    shown = "; ".join(f"{', '.join(names)} from {source}" for source, names in by_source.items())
    return Check("config", OK, shown)


def configured_keys(cfg: config.OperatorConfig | None = None) -> list[str]:
    """ROLE=PATH for each [keys] entry of the config in use."""
    cfg = cfg if cfg is not None else common.active_config()
    return [f"{name.split('.', 1)[1]}={s.as_list()[0]}" for name, s in sorted(cfg.settings.items())
            if name.startswith("keys.")]


def check_broker(url_text: str | None, timeout: float) -> Check:
    """Connect once (MQTT 5, else 3.1.1) with the URL's credentials and TLS, then disconnect."""
    if not url_text:
        return Check("broker", WARN, "no broker given",
                     "pass --broker mqtt://HOST[:PORT] (or set it in trustfleet.toml)")
    try:
        url = mqtturl.parse(url_text)
    except TrustfleetError as exc:
        return Check("broker", FAIL, str(exc), "use mqtt://[user[:password]@]host[:port] or mqtts://...")
    from trustfleet_server.serve.link import Link

    link = Link(url, session_expiry=0)
    try:
        link.open(timeout=timeout)
    except TrustfleetError as exc:
        message = str(exc)
        if "refused the connection" in message:
            fix = (f"check the user name and password ({mqtturl.PASSWORD_ENV} holds the password) "
                   f"and the broker's ACL")
        elif url.tls:
            fix = "check the broker's TLS listener, its certificate and the host name"
        else:
            fix = f"start the broker, or check the host and port of {url}"
        return Check("broker", FAIL, message, fix)
    finally:
        link.close()
    protocol = "MQTT 5" if link.mqtt5 else "MQTT 3.1.1"
    return Check("broker", OK, f"{url} reachable ({protocol}{', TLS' if url.tls else ''})")


def check_root(paths: list[Path], fleet: str | None, now: int) -> tuple[device_docs.Root | None, list[Check]]:
    """The root chain verifies (threshold of its root keys), names --fleet, and is not near expiry."""
    if not paths:
        return None, [Check("root", WARN, "no root given: keys, bundle and timestamp are not checked "
                                          "against it", "pass --root ROOT.cose (repeat for a rotation chain)")]
    shown = ", ".join(str(p) for p in paths)
    try:
        root = documents.load_root_chain(paths)
    except (TrustfleetError, OSError) as exc:
        return None, [Check("root", FAIL, f"{shown}: {reason(exc, shown)}",
                            "give the fleet's signed root (trustfleet root sign once per root key "
                            "until the threshold is met; trustfleet root verify shows why)")]
    what = f"root v{root.version} of fleet {root.fleet} ({shown})"
    checks = []
    if fleet and fleet != root.fleet:
        checks.append(Check("root", FAIL, f"{what} is not for fleet {fleet}",
                            f"pass the root of fleet {fleet}, or --fleet {root.fleet}"))
        return root, checks
    left = root.expires - now
    expiry = f"expires {times.iso(root.expires)}"
    if left <= 0:
        checks.append(Check("root", FAIL, f"{what} EXPIRED {times.iso(root.expires)}",
                            "rotate to a new root: trustfleet root rotate --from ROOT, then root sign"))
    elif left < NEAR_EXPIRY:
        checks.append(Check("root", WARN, f"{what} {expiry}, in {-(-left // 86_400)} day(s)",
                            "rotate soon: trustfleet root rotate --from ROOT --expires 365d, then root sign"))
    else:
        thresholds = ", ".join(f"{name} {r.threshold} of {len(r.kids)}" for name, r in root.roles.items())
        checks.append(Check("root", OK, f"{what} verifies ({thresholds}), {expiry}"))
    return root, checks


def check_keys(specs: list[str], passphrase_file: str | None, root: device_docs.Root | None) -> list[Check]:
    """One check per ROLE=PATH."""
    checks = []
    passphrase: bytes | None = None
    passphrase_error: str | None = None
    try:
        passphrase = keys.read_passphrase(passphrase_file, confirm=False)
    except TrustfleetError as exc:
        passphrase_error = str(exc)
    for spec in specs:
        role, sep, path = spec.partition("=")
        if not sep or role not in device_docs.ROLES or not path:
            checks.append(Check("key", FAIL, f"--key {spec!r}: expected ROLE=PATH with ROLE one of "
                                             f"{', '.join(device_docs.ROLES)}",
                                "write e.g. --key bundle=keys/bundle-1.pem"))
            continue
        checks.append(check_key(role, Path(path), passphrase, passphrase_error, root))
    return checks


def check_token_key(name: str, text: str) -> Check:
    """A key in a PKCS#11 token: the URI parses and its module is there. The token is not opened
    (that asks for its PIN): signing does that."""
    try:
        uri = pkcs11keys.parse_uri(text)
        module = pkcs11keys.module_path(uri)
    except UsageError as exc:
        return Check(name, FAIL, str(exc), "fix the pkcs11: URI (docs/operations.md, PKCS#11)")
    if not Path(module).is_file():
        return Check(name, FAIL, f"PKCS#11 module {module}: no such file",
                     f"install the token's PKCS#11 module, or give module-path= or ${pkcs11keys.MODULE_ENV}")
    return Check(name, OK, f"in a PKCS#11 token, module {module} (the token opens when signing)")


def check_key(role: str, path: Path, passphrase: bytes | None, passphrase_error: str | None,
              root: device_docs.Root | None) -> Check:
    """One signing key: exists, a file of mode 0600, a P-256 private key, and one of the root's `role` keys."""
    name = f"key {role}"
    if pkcs11keys.is_uri(str(path)):
        return check_token_key(name, str(path))
    try:
        info = path.stat()
    except FileNotFoundError:
        return Check(name, FAIL, f"{path}: no such file",
                     f"give the {role} key's path, or make one: trustfleet key generate --out {path}")
    except OSError as exc:
        return Check(name, FAIL, f"{path}: cannot read it: {exc.strerror or exc}",
                     "check the file's folder permissions")
    if not stat.S_ISREG(info.st_mode):
        return Check(name, FAIL, f"{path}: not a file", f"give the {role} key's file")
    try:
        material = keys.inspect_key_file(path, passphrase)
    except (TrustfleetError, OSError) as exc:
        return Check(name, FAIL, f"{path}: {reason(exc, path)}", f"give the {role} key's PKCS#8 PEM file (trustfleet key show "
                                           f"tells what a file holds)")
    if material.kind != keys.KIND_PRIVATE:
        return Check(name, FAIL, f"{path}: holds a {material.kind}, not a private key",
                     f"give the {role} private key (the .pem beside the .pub.pem)")
    loose = stat.S_IMODE(info.st_mode) & 0o077
    mode_fix = f"chmod 600 {path}" if loose else None
    mode_note = f", mode {stat.S_IMODE(info.st_mode):04o} (others can read it)" if loose else ""
    if material.locked:
        why = passphrase_error or f"no passphrase given ({keys.PASSPHRASE_HINT})"
        return Check(name, WARN, f"{path}: encrypted private key; kid not checked: {why}{mode_note}",
                     mode_fix or f"give the passphrase with {keys.PASSPHRASE_HINT} to check it against the root")
    if not keys.is_p256(material.public_key):
        return Check(name, FAIL, f"{path}: not an EC P-256 key", "generate one: trustfleet key generate")
    kid = keys.kid_of(material.public_key)
    what = f"{path}: kid {kid.hex()[:16]}"
    if root is not None:
        if kid not in root.roles[role].kids:
            also = [r for r, v in root.roles.items() if kid in v.kids]
            other = f" (it is a {' and '.join(also)} key)" if also else ""
            return Check(name, FAIL, f"{what} is not a {role} key of root v{root.version}{other}{mode_note}",
                         f"give one of the root's {role} keys, or add it: trustfleet root rotate "
                         f"--key {role}=PUB.pem")
        what += f", a {role} key of root v{root.version}"
    else:
        what += f" (role {role} not checked: no root)"
    if loose:
        return Check(name, WARN, what + mode_note, mode_fix)
    return Check(name, OK, what + ", mode 0600")


def check_store(target: str | None, fleet: str | None) -> Check:
    """Open the store without creating it; opening writes (schema check in a write transaction)."""
    if not target:
        return Check("store", WARN, "no fleet store given",
                     "pass --db PATH_OR_URL (serve, rollout start and publish --db create one)")
    try:
        with fleetdb.open_db(target, create=False) as db:
            fleets = db.fleets()
    except TrustfleetError as exc:
        message = str(exc)
        if "no such fleet database" in message or "no trustfleet tables" in message:
            fix = f"check --db; serve, rollout start or publish --db {target} create the store"
        else:
            fix = "check the path or URL, its permissions, and that the database is up"
        return Check("store", FAIL, message, fix)
    known = f"fleets: {', '.join(fleets)}" if fleets else "no fleet recorded yet"
    if fleet and fleets and fleet not in fleets:
        return Check("store", WARN, f"{target} opens and is writable, but fleet {fleet} is not in it ({known})",
                     "check --fleet, or run trustfleet serve for this fleet")
    return Check("store", OK, f"{target} opens and is writable ({known})")


def check_bundle(path: Path, root: device_docs.Root | None, now: int) -> tuple[Check, VerifiedBundle | None]:
    """Verify a bundle as a device would; warn when it expires within NEAR_EXPIRY."""
    try:
        raw = documents.read_file(path)
    except (TrustfleetError, OSError) as exc:
        return Check("bundle", FAIL, f"{path}: {reason(exc, path)}", "give the latest signed bundle"), None
    if root is None:
        return Check("bundle", WARN, f"{path}: not verified: no root", "pass --root ROOT.cose"), None
    try:
        b: Any = policy.verify_bundle(root, raw, now=now)
    except TrustfleetError as exc:
        return Check("bundle", FAIL, f"{path}: {reason(exc, path)}",
                     "sign it with a threshold of the root's bundle keys (trustfleet bundle verify "
                     "shows why), or build a new one"), None
    verified = VerifiedBundle(documents.sha256(raw), b.policy.max_timestamp_age)
    left = b.expires_at - now
    what = f"{path}: bundle v{b.version} verifies, expires {times.iso(b.expires_at)}"
    if left < NEAR_EXPIRY:
        return Check("bundle", WARN, f"{what}, in {-(-left // 86_400)} day(s)",
                     "build, sign and publish the next bundle"), verified
    return Check("bundle", OK, what), verified


def check_timestamp(path: Path, root: device_docs.Root | None, bundle: VerifiedBundle | None, now: int) -> Check:
    """Verify a timestamp against the root and, when a verified bundle is given, that it names that
    bundle and is younger than its max_timestamp_age (else devices call their store stale)."""
    try:
        raw = documents.read_file(path)
    except (TrustfleetError, OSError) as exc:
        return Check("timestamp", FAIL, f"{path}: {reason(exc, path)}", "give the latest signed timestamp")
    if root is None:
        return Check("timestamp", WARN, f"{path}: not verified: no root", "pass --root ROOT.cose")
    try:
        ts = policy.verify_timestamp(root, raw)
    except TrustfleetError as exc:
        return Check("timestamp", FAIL, f"{path}: {reason(exc, path)}",
                     "sign timestamps with the root's timestamp key (trustfleet timestamp create)")
    what = f"{path}: time {times.iso(ts.time)} for bundle v{ts.bundle_version}"
    if bundle is not None and ts.bundle_sha256 != bundle.sha256:
        return Check("timestamp", FAIL, f"{what} names another bundle than --bundle",
                     "create a timestamp for the latest bundle: trustfleet timestamp create --bundle ...")
    if ts.time > now + 300:
        return Check("timestamp", WARN, f"{what}, {ts.time - now} s ahead of this machine's clock",
                     "check this machine's clock and the timestamp signer's")
    if bundle is not None and now - ts.time > bundle.max_timestamp_age:
        return Check("timestamp", WARN, f"{what} is {(now - ts.time) // 3600} h old, more than the bundle's "
                                        f"max_timestamp_age ({bundle.max_timestamp_age // 3600} h): devices "
                                        f"that have nothing newer report their store stale",
                     "keep trustfleet serve --timestamp-key running, or trustfleet timestamp create "
                     "and publish")
    return Check("timestamp", OK, what)
