"""The Pi agent's TLS tests' world: CA hierarchies valid around today, loopback TLS
servers that serve them, signed bundles that pin them, and the agent CLI.

Certificates are valid around the real current time (T0), so OpenSSL and the
device agree. Keys come from support.pki's cache (numbers from 100 up).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from support import fleetkit as fk
from support.pki import key, make_cert, pin
from trustfleet_server.demo.tlsserver import LoopbackTLSServer, http_answer

T0 = int(time.time()) // 86_400 * 86_400  # today, 00:00 UTC
DAY = 86_400
HOST = "api.example.com"
NAMES = (HOST, "localhost")
REPO_DIR = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO_DIR / 'device'}{os.pathsep}{REPO_DIR / 'server'}"}


# --------------------------------------------------------------------------- PKI and servers


class Hierarchy:
    """root CA -> issuing CA -> leaf for api.example.com and localhost, P-256, valid around T0.

    `base` picks the cached keys (support.pki.key("ec", base..base+3)), so two
    hierarchies with the same names but other keys are possible (a rogue CA).
    """

    def __init__(self, tag: str = "TLS Test", base: int = 100):
        self.root_key, self.inter_key, self.leaf_key = (key("ec", base + i) for i in range(3))
        self.spare_key = key("ec", base + 3)
        self.root = make_cert(f"{tag} Root CA", self.root_key, ca=True,
                              not_before=T0 - 365 * DAY, not_after=T0 + 3650 * DAY)
        self.inter = make_cert(f"{tag} Issuing CA", self.inter_key, self.root, self.root_key,
                               ca=True, path_len=0, not_before=T0 - 30 * DAY,
                               not_after=T0 + 1825 * DAY)
        self.leaf = make_cert(HOST, self.leaf_key, self.inter, self.inter_key, sans=list(NAMES),
                              not_before=T0 - DAY, not_after=T0 + 365 * DAY)

    @property
    def served(self) -> list:
        return [self.leaf, self.inter]

    def pins(self) -> list[bytes]:
        """Primary (the issuing CA's key) and backup (a spare key) pins."""
        return [pin(self.inter), pin(self.spare_key)]


PKI = Hierarchy()
OTHER = Hierarchy("Other", base=110)         # an unrelated CA
ROGUE = Hierarchy("TLS Test", base=120)      # same names as PKI, other keys


def tls_server(hierarchy: Hierarchy) -> LoopbackTLSServer:
    """A loopback TLS server sending `hierarchy`'s leaf and issuing CA, answering one HTTP
    request per connection with "hello"."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in hierarchy.served)
    key_pem = hierarchy.leaf_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
    return LoopbackTLSServer(chain, key_pem, answer=http_answer(b"hello"))


# --------------------------------------------------------------------------- bundles


def anchor(cert, form: str = "compact"):
    return fk.full_anchor(cert) if form == "full" else fk.compact_anchor(cert, "TLS Test Root")


def pinsets(pins: list[bytes], expires: int = T0 + 180 * DAY) -> list[dict]:
    return [fk.pinset(name, pins, expires=expires, subdomains=False) for name in NAMES]


def make_bundle(repo: fk.Repo, version: int = 1, *, form: str = "compact", pins=None,
                expires: int = T0 + 180 * DAY, anchors=None, distrust=()) -> bytes:
    return repo.bundle(version, anchors=anchors or [anchor(PKI.root, form)],
                       pinsets=pinsets(PKI.pins() if pins is None else pins, expires),
                       distrust=list(distrust))


# --------------------------------------------------------------------------- the agent CLI


def agent(*args: object, code: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trustfleet_pi.cli", *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"
    return proc
