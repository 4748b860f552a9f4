"""`trustfleet demo --offline`: the whole offline flow, one real command at a time.

Every step prints the command line it runs and then runs exactly that
command in-process, so the output doubles as a tutorial:
keys -> root -> bundle spec -> build -> sign twice -> verify -> device
init -> install with a TLS health check -> refused rollback -> a bad bundle
reverted by its health check -> pins past their expiry failing open to CA
validation, never to none -> status.

Two TLS servers run on loopback for the length of the demo: the fleet's
server (a leaf for `localhost` from the demo CA) and a rogue one (a
self-signed `localhost` leaf). Nothing is left running.
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustfleet_pi import cli as agent_cli
from trustfleet_server.demo import prepare_out
from trustfleet_server.demo.tlsserver import LoopbackTLSServer


class Step:
    """Numbered titles, and each command printed as a shell line, then run in-process."""

    def __init__(self, out: Path, trustfleet: Callable[[list[str]], int]):
        self.out = out
        self.trustfleet = trustfleet  # the `trustfleet` command's main(), handed in by the CLI
        self.n = 0

    def title(self, text: str) -> None:
        self.n += 1
        print(f"\n== {self.n}. {text}")

    def run(self, prog: str, args: list[str], expect: int = 0) -> int:
        print(f"$ {prog} " + " ".join(shlex.quote(a) for a in args))
        sys.stdout.flush()
        main = self.trustfleet if prog == "trustfleet" else agent_cli.main
        rc = main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        if rc != expect:
            raise SystemExit(f"demo: step {self.n} exited {rc}, expected {expect}")
        return rc


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Demo Fleet Inc"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn: str, key, issuer: x509.Certificate | None, issuer_key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(issuer.subject if issuer is not None else _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=3650 if ca else 90))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                                        critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write_pem(path: Path, *items) -> Path:
    data = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            data += item.public_bytes(serialization.Encoding.PEM)
        else:
            data += item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    path.write_bytes(data)
    return path


def _pki(certs: Path) -> dict[str, Path]:
    """The demo CA, a backup CA (the rule of two), a server leaf, and a rogue self-signed leaf."""
    ca_key, backup_key, leaf_key, rogue_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("Demo Fleet Root CA", ca_key, None, None, ca=True)
    backup = _cert("Demo Fleet Backup CA", backup_key, None, None, ca=True)
    leaf = _cert("localhost", leaf_key, ca, ca_key, ca=False)
    rogue = _cert("localhost", rogue_key, None, None, ca=False)
    return {
        "ca": _write_pem(certs / "demo-fleet-root-ca.pem", ca),
        "backup": _write_pem(certs / "demo-fleet-backup-ca.pem", backup),
        "server": _write_pem(certs / "server.pem", leaf, leaf_key),
        "rogue": _write_pem(certs / "rogue.pem", rogue, rogue_key),
    }


SPEC = """\
fleet = "demo-fleet"
version = {version}
expires = "90d"

[policy]
user_anchors = false
max_timestamp_age = "48h"

[[anchors]]
files = ["certs/demo-fleet-root-ca.pem"]

[[anchors]]
certifi = true
match = ["ISRG Root X1", "ISRG Root X2"]

[[pinsets]]
domain = "localhost"
pin_files = {pins}
expires = "{pin_expiry}"
mode = "enforce"
report_to = ["mqtt:demo-fleet/reports"]
{extra}
"""

GOOD_PINS = '["certs/demo-fleet-root-ca.pem", "certs/demo-fleet-backup-ca.pem"]'


def run(out: Path, trustfleet: Callable[[list[str]], int]) -> int:
    """The offline walkthrough in `out` (see demo/__init__.py); `trustfleet` is the CLI's main()."""
    started = time.monotonic()
    prepare_out(out)
    (out / "keys").mkdir()
    (out / "certs").mkdir()
    pki = _pki(out / "certs")
    with LoopbackTLSServer(pki["server"]) as server, LoopbackTLSServer(pki["rogue"]) as rogue:
        _run(Step(out, trustfleet), out, server.port, rogue.port)
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s; everything is in {out}/ "
          "(both TLS servers stopped)")
    return 0


def _bundle(s: Step, out: Path, version: int, *, pins: str = GOOD_PINS, pin_expiry: str = "180d",
            extra: str = "") -> str:
    spec = out / f"bundle-v{version}.toml"
    spec.write_text(SPEC.format(version=version, pins=pins, pin_expiry=pin_expiry, extra=extra))
    path = str(out / f"bundle-v{version}.cose")
    s.run("trustfleet", ["bundle", "build", str(spec), "-o", path])
    return path


def _sign(s: Step, k: Path, path: str) -> None:
    for name in ("bundle-1", "bundle-2"):
        s.run("trustfleet", ["bundle", "sign", "--key", str(k / f"{name}.pem"), path])


def _run(s: Step, out: Path, port: int, rogue_port: int) -> None:
    k = out / "keys"
    server, rogue = f"localhost:{port}", f"localhost:{rogue_port}"

    s.title("Operator keys: two root keys, two bundle keys, one online timestamp key")
    for name in ("root-1", "root-2", "bundle-1", "bundle-2", "timestamp"):
        s.run("trustfleet", ["key", "generate", "--out", str(k / f"{name}.pem")])

    s.title("The fleet root: which keys sign what, and how many must (2 of 2 for root and bundle)")
    root = str(out / "root.cose")
    s.run("trustfleet", ["root", "create", "--fleet", "demo-fleet", "--expires", "365d",
                         "--key", f"root={k / 'root-1.pub.pem'}", "--key", f"root={k / 'root-2.pub.pem'}",
                         "--threshold", "root=2",
                         "--key", f"bundle={k / 'bundle-1.pub.pem'}", "--key", f"bundle={k / 'bundle-2.pub.pem'}",
                         "--threshold", "bundle=2",
                         "--key", f"timestamp={k / 'timestamp.pub.pem'}", "-o", root])
    for name in ("root-1", "root-2"):
        s.run("trustfleet", ["root", "sign", "--key", str(k / f"{name}.pem"), root])
    s.run("trustfleet", ["root", "verify", root])

    s.title("Pins: SPKI SHA-256 of the servers' CA and of a backup CA (rule of two)")
    s.run("trustfleet", ["pin", str(out / "certs" / "demo-fleet-root-ca.pem")])

    s.title("Build bundle v1 from a TOML spec (unsigned), then sign it on two 'offline machines'")
    v1 = _bundle(s, out, 1)
    s.run("trustfleet", ["bundle", "verify", "--root", root, v1], expect=1)
    _sign(s, k, v1)
    s.run("trustfleet", ["bundle", "verify", "--root", root, v1])
    s.run("trustfleet", ["bundle", "inspect", v1])

    s.title(f"A device: factory state, then install v1; the health check reaches {server} with the new store")
    state = str(out / "device-state")
    s.run("trustfleet-agent", ["init", "--state", state, "--root", root])
    s.run("trustfleet-agent", ["install", "--state", state, "--endpoint", server, v1])
    s.run("trustfleet-agent", ["check", "--state", state, server])
    s.run("trustfleet-agent", ["check", "--state", state, rogue], expect=1)

    s.title("The same bundle again changes nothing (a retained copy after a restart, a retried install)")
    s.run("trustfleet-agent", ["install", "--state", state, v1])

    s.title("A bad bundle: v2 pins only the backup CA, so the health check fails and the device reverts")
    v2 = _bundle(s, out, 2, pins='["certs/demo-fleet-backup-ca.pem"]', extra="allow_single_pin = true")
    s.run("trustfleet", ["bundle", "diff", v1, v2])
    _sign(s, k, v2)
    s.run("trustfleet-agent", ["install", "--state", state, "--endpoint", server, v2], expect=1)
    s.run("trustfleet-agent", ["status", "--state", state])
    s.run("trustfleet-agent", ["install", "--state", state, "--endpoint", server, v2], expect=1)

    s.title("Pins past their expiry fail open to CA validation, never to none")
    v3 = _bundle(s, out, 3, pins='["certs/demo-fleet-backup-ca.pem"]', pin_expiry="1s",
                 extra="allow_single_pin = true")
    time.sleep(1.5)  # let v3's pin-set expire: its pins are no longer enforced
    _sign(s, k, v3)
    s.run("trustfleet-agent", ["install", "--state", state, "--endpoint", server, v3])
    s.run("trustfleet-agent", ["check", "--state", state, server])
    s.run("trustfleet-agent", ["check", "--state", state, rogue], expect=1)
    s.run("trustfleet-agent", ["status", "--state", state])

    s.title("Rollback refused: an older version never installs again")
    s.run("trustfleet-agent", ["install", "--state", state, v1], expect=1)
