"""Certificates for test servers: a CA, an issuing CA and a leaf per domain, and their pins.

    api = Chain.create("api.acme.example")
    api.pins              # [issuing CA's pin, spare key's pin]: a primary and a backup
    api.pem, api.key_pem  # what a TLS server loads (leaf first)
    moved = api.rotate()  # the issuing CA moves to the spare key; a new spare is made

Every key is P-256 and every certificate is valid from a year ago for ten
years (the leaf: one year), so devices whose clock is wrong by months, or
that only know their firmware's build time, still judge them valid.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustfleet_server import keys

DAY = 86_400


def spki(obj: Any) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate, a private key or a public key."""
    if isinstance(obj, x509.Certificate):
        obj = obj.public_key()
    if hasattr(obj, "private_bytes"):
        obj = obj.public_key()
    return obj.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def pin(obj: Any) -> bytes:
    """The 32-byte SPKI SHA-256 pin of a certificate or key (what a bundle's pin-sets hold)."""
    return hashlib.sha256(spki(obj)).digest()


def b64(raw: bytes) -> str:
    """Standard base64, the form `trustfleet pin` prints and a bundle spec's pins use."""
    return base64.b64encode(raw).decode("ascii")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None = None,
              issuer_key: ec.EllipticCurvePrivateKey | None = None, *, ca: bool = True,
              not_before: int, not_after: int, dns: str | None = None,
              org: str = "trustfleet test") -> x509.Certificate:
    """A P-256 certificate (self-signed when no issuer is given), valid for the given epoch
    seconds. A CA gets keyCertSign; a leaf gets digitalSignature and, with `dns`, its name."""
    issuer_name = issuer.subject if issuer is not None else _name(cn, org)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn, org)).issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(int.from_bytes(secrets.token_bytes(8), "big") >> 1)
               .not_valid_before(dt.datetime.fromtimestamp(not_before, dt.UTC))
               .not_valid_after(dt.datetime.fromtimestamp(not_after, dt.UTC))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=not ca, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                   encipher_only=False, decipher_only=False), critical=True))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]),
                                        critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@dataclass(frozen=True)
class Chain:
    """A server's certificate chain for `domain`: root CA -> issuing CA -> leaf, with the keys.

    `spare_key` is the key the operator keeps for the next issuing CA: its pin
    is the backup pin, so a bundle pinning `pins` survives `rotate()`.
    """

    domain: str
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    issuing: x509.Certificate
    issuing_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey
    spare_key: ec.EllipticCurvePrivateKey
    now: int

    @classmethod
    def create(cls, domain: str, now: int | None = None) -> Chain:
        """A new chain for `domain` (fresh keys); `now` (epoch s) sets the validity window."""
        import time

        now = int(time.time()) if now is None else now
        label = (domain.split(".")[1] if domain.count(".") >= 2 else domain)[:24]
        root_key = keys.generate_key()
        root = make_cert(f"{label} Root CA", root_key, not_before=now - 365 * DAY,
                         not_after=now + 3650 * DAY)
        return cls._issued(domain, root, root_key, keys.generate_key(), keys.generate_key(), now)

    @classmethod
    def _issued(cls, domain: str, root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey,
                issuing_key: ec.EllipticCurvePrivateKey, spare_key: ec.EllipticCurvePrivateKey,
                now: int) -> Chain:
        label = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.replace(" Root CA", "")
        issuing = make_cert(f"{label} Issuing CA {pin(issuing_key).hex()[:8]}", issuing_key, root,
                            root_key, not_before=now - 365 * DAY, not_after=now + 1825 * DAY)
        leaf_key = keys.generate_key()
        leaf = make_cert(domain[:64], leaf_key, issuing, issuing_key, ca=False, dns=domain,
                         not_before=now - 30 * DAY, not_after=now + 365 * DAY)
        return cls(domain, root, root_key, issuing, issuing_key, leaf, leaf_key, spare_key, now)

    def rotate(self) -> Chain:
        """The next chain of the same root: the issuing CA now uses the spare key (so the old
        backup pin matches it), a new leaf under it, and a fresh spare key for the next backup."""
        return self._issued(self.domain, self.root, self.root_key, self.spare_key,
                            keys.generate_key(), self.now)

    @property
    def pins(self) -> list[bytes]:
        """[primary, backup]: the issuing CA's pin and the spare key's pin (the rule of two)."""
        return [pin(self.issuing), pin(self.spare_key)]

    @property
    def pem(self) -> bytes:
        """The chain a server sends, leaf first (PEM)."""
        return pem(self.leaf, self.issuing)

    @property
    def ders(self) -> tuple[bytes, ...]:
        """The chain a server sends, leaf first (DER)."""
        return der(self.leaf), der(self.issuing)

    @property
    def key_pem(self) -> bytes:
        """The leaf's private key (PKCS#8 PEM, unencrypted: test material only)."""
        return self.leaf_key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())


def pins_of(items: Sequence[Any]) -> list[bytes]:
    """Pins from 32-byte digests, base64 text, certificates or keys, in order."""
    out = []
    for item in items:
        if isinstance(item, bytes) and len(item) == 32:
            out.append(item)
        elif isinstance(item, str):
            raw = base64.b64decode(item, validate=True)
            if len(raw) != 32:
                raise ValueError(f"pin {item!r} is not a base64 SHA-256 digest")
            out.append(raw)
        else:
            out.append(pin(item))
    return out
