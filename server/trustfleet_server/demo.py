"""`trustfleet demo`: the whole offline flow, one real command at a time.

Every step prints the command line it runs and then runs exactly that
command in-process, so the output doubles as a tutorial:
keys -> root -> bundle spec -> build -> sign twice -> verify -> device
init -> install -> refused rollback -> newer bundle -> status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustfleet_agent import cli as agent_cli

from . import cli


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the offline flow end to end in a scratch directory",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="scratch directory (replaced)")
    p.set_defaults(func=cmd_demo)


class Step:
    def __init__(self, out: Path):
        self.out = out
        self.n = 0

    def title(self, text: str) -> None:
        self.n += 1
        print(f"\n== {self.n}. {text}")

    def run(self, prog: str, args: list[str], expect: int = 0) -> int:
        print(f"$ {prog} " + " ".join(shlex.quote(a) for a in args))
        sys.stdout.flush()
        main = cli.main if prog == "trustfleet" else agent_cli.main
        rc = main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        if rc != expect:
            raise SystemExit(f"demo: step {self.n} exited {rc}, expected {expect}")
        return rc


def _sample_ca(out: Path, name: str) -> Path:
    """A self-signed P-256 CA certificate standing in for the operator's servers' root."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Demo Fleet Inc"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = out / (name.lower().replace(" ", "-") + ".pem")
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


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
domain = "api.demo-fleet.example"
include_subdomains = true
pin_files = ["certs/demo-fleet-root-ca.pem", "certs/demo-fleet-backup-ca.pem"]
expires = "180d"
mode = "enforce"
report_to = ["mqtt:demo-fleet/reports"]
{extra}
"""


def cmd_demo(args: argparse.Namespace) -> int:
    out: Path = args.out
    started = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    (out / "keys").mkdir(parents=True)
    (out / "certs").mkdir()
    s = Step(out)
    k = out / "keys"

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
    primary = _sample_ca(out / "certs", "Demo Fleet Root CA")
    _sample_ca(out / "certs", "Demo Fleet Backup CA")
    s.run("trustfleet", ["pin", str(primary)])

    s.title("Build bundle v1 from a TOML spec (unsigned), then sign it on two 'offline machines'")
    spec = out / "bundle.toml"
    spec.write_text(SPEC.format(version=1, extra=""))
    v1 = str(out / "bundle-v1.cose")
    s.run("trustfleet", ["bundle", "build", str(spec), "-o", v1])
    s.run("trustfleet", ["bundle", "verify", "--root", root, v1], expect=1)
    for name in ("bundle-1", "bundle-2"):
        s.run("trustfleet", ["bundle", "sign", "--key", str(k / f"{name}.pem"), v1])
    s.run("trustfleet", ["bundle", "verify", "--root", root, v1])
    s.run("trustfleet", ["bundle", "inspect", v1])

    s.title("A device: factory state with the root, then the offline install (A/B slots)")
    state = str(out / "device-state")
    s.run("trustfleet-agent", ["init", "--state", state, "--root", root])
    s.run("trustfleet-agent", ["install", "--state", state, v1])
    s.run("trustfleet-agent", ["status", "--state", state])

    s.title("Rollback refused: the same (or an older) version never installs again")
    s.run("trustfleet-agent", ["install", "--state", state, v1], expect=1)

    s.title("Bundle v2 distrusts the backup CA's key; diff, sign, install")
    spec.write_text(SPEC.format(version=2, extra='\n[distrust]\nfiles = ["certs/demo-fleet-backup-ca.pem"]\n')
                    .replace('pin_files = ["certs/demo-fleet-root-ca.pem", "certs/demo-fleet-backup-ca.pem"]',
                             'pin_files = ["certs/demo-fleet-root-ca.pem"]\nallow_single_pin = true'))
    v2 = str(out / "bundle-v2.cose")
    s.run("trustfleet", ["bundle", "build", str(spec), "-o", v2])
    s.run("trustfleet", ["bundle", "diff", v1, v2])
    for name in ("bundle-1", "bundle-2"):
        s.run("trustfleet", ["bundle", "sign", "--key", str(k / f"{name}.pem"), v2])
    s.run("trustfleet-agent", ["install", "--state", state, v2])
    s.run("trustfleet-agent", ["status", "--state", state])

    print(f"\ndemo finished in {time.monotonic() - started:.1f} s; everything is in {out}/")
    return 0
