"""The certificates the README's commands name, made with the openssl command line.

certs/acme-root-ca.pem     the operator's private root CA ("yours")
certs/acme-backup-ca.pem   a second CA whose key is not in use yet (the backup pin)
certs/api-chain.pem        what api.acme.example sends: leaf, then the root CA
certs/api.acme.example.key the leaf's key (for the local TLS server only)

openssl is asked for by the caller (support.environment.require_tool).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HOST = "api.acme.example"


def _openssl(openssl: str, *args: str, cwd: Path) -> None:
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {proc.stderr.strip()}")


def _ca(openssl: str, certs: Path, name: str, cn: str) -> None:
    _openssl(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "3650",
             "-subj", f"/O=Acme/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=certs)


def make_certs(openssl: str, folder: Path) -> Path:
    """Create folder/certs with the files above; returns the certs folder."""
    certs = folder / "certs"
    certs.mkdir(parents=True)
    _ca(openssl, certs, "acme-root-ca", "Acme Root CA")
    _ca(openssl, certs, "acme-backup-ca", "Acme Backup CA")
    _openssl(openssl, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{HOST}.key", "-out", "api.csr", "-subj", f"/O=Acme/CN={HOST}", cwd=certs)
    (certs / "api.ext").write_text(f"subjectAltName=DNS:{HOST}\nbasicConstraints=critical,CA:FALSE\n"
                                   "extendedKeyUsage=serverAuth\n")
    _openssl(openssl, "x509", "-req", "-in", "api.csr", "-CA", "acme-root-ca.pem",
             "-CAkey", "acme-root-ca.key", "-CAcreateserial", "-days", "90",
             "-extfile", "api.ext", "-out", "api-leaf.pem", cwd=certs)
    (certs / "api-chain.pem").write_bytes((certs / "api-leaf.pem").read_bytes()
                                          + (certs / "acme-root-ca.pem").read_bytes())
    for name in ("api.csr", "api.ext", "api-leaf.pem", "acme-root-ca.srl",
                 "acme-root-ca.key", "acme-backup-ca.key"):
        (certs / name).unlink(missing_ok=True)
    return certs
