"""Generate the sample PKI shipped in server/trustfleet_server/samples/ (run once, commit the output).

    .venv/bin/python tools/make_samples.py [--out server/trustfleet_server/samples]

Four P-256 certificates, PEM, public parts only (the private keys are
thrown away: nothing can ever sign with them again):

    demo-fleet-root-ca.pem     Demo Fleet Root CA (self-signed), the anchor
    demo-fleet-backup-ca.pem   Demo Fleet Backup CA (self-signed), a key kept in
                               reserve: the backup pin (the "rule of two")
    demo-fleet-issuing-ca.pem  Demo Fleet Issuing CA 1, signed by the root, pathLen 0
    api.demo-fleet.example.pem the server leaf, signed by the issuing CA

plus server-chain.pem (leaf then issuing CA: what the server sends in its
handshake). The simulator (`trustfleet simulate`) and the fleet demo judge
that chain for api.demo-fleet.example with each device's trial store, so a
bundle that anchors the root and pins root + backup passes its health check,
and one that pins only the backup key fails it.

Validity: from 2025-01-01 for 20 years, so boards whose trusted time is an
old firmware build date still see the certificates as valid.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "server" / "trustfleet_server" / "samples"
HOST = "api.demo-fleet.example"
NOT_BEFORE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2045, 1, 1, tzinfo=dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Demo Fleet Inc"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                         crl_sign=True, encipher_only=False, decipher_only=False)


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                         crl_sign=False, encipher_only=False, decipher_only=False)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey | None, *, ca: bool, path_len: int | None = None,
          dns: str | None = None) -> x509.Certificate:
    issuer_name = issuer.subject if issuer is not None else _name(subject)
    signer = issuer_key or key
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
         .add_extension(_ca_usage() if ca else _leaf_usage(), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                        critical=False))
    if dns:
        b = (b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return b.sign(signer, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make(out: Path) -> list[Path]:
    """Write the sample certificates into `out`; returns the paths written."""
    root_key, backup_key, issuing_key, leaf_key = (ec.generate_private_key(ec.SECP256R1())
                                                   for _ in range(4))
    root = _cert("Demo Fleet Root CA", root_key, None, None, ca=True)
    backup = _cert("Demo Fleet Backup CA", backup_key, None, None, ca=True)
    issuing = _cert("Demo Fleet Issuing CA 1", issuing_key, root, root_key, ca=True, path_len=0)
    leaf = _cert(HOST, leaf_key, issuing, issuing_key, ca=False, dns=HOST)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "demo-fleet-root-ca.pem": _pem(root),
        "demo-fleet-backup-ca.pem": _pem(backup),
        "demo-fleet-issuing-ca.pem": _pem(issuing),
        f"{HOST}.pem": _pem(leaf),
        "server-chain.pem": _pem(leaf, issuing),
    }
    written = []
    for name, data in files.items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory (default {DEFAULT_OUT})")
    args = ap.parse_args()
    for path in make(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
