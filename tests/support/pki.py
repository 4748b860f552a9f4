"""X.509 test certificates made with `cryptography`, and raw DER parts for malformed ones.

Keys are generated once per (kind, n) and cached for the session, so every
module that asks for `key("ec", 0)` or `pki("rsa")` gets the same objects.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from trustfleet_server.testing.pki import der, pin  # noqa: F401 - re-exported
from trustfleet_server.testing.pki import spki as spki_der

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400

# --------------------------------------------------------------------------- PKI helpers


@functools.cache
def key(kind: str, n: int = 0):
    """A private key of `kind` ("ec", "rsa", "p384", "rsa1024", "ed25519"), cached by (kind, n)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if kind == "rsa1024":
        return rsa.generate_private_key(public_exponent=65537, key_size=1024)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def name(cn: str) -> cx509.Name:
    return cx509.Name([cx509.NameAttribute(NameOID.ORGANIZATION_NAME, "Trustfleet Test"),
                       cx509.NameAttribute(NameOID.COMMON_NAME, cn)])


def at(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _sign_hash(signer_key, hash_alg):
    if isinstance(signer_key, ed25519.Ed25519PrivateKey):
        return None
    if hash_alg is not None:
        return hash_alg
    if isinstance(signer_key, ec.EllipticCurvePrivateKey) and signer_key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def make_cert(cn, subject_key, issuer=None, issuer_key=None, *, ca=False, path_len=None,
              key_usage="default", sans=None, not_before=NOW - 30 * DAY, not_after=NOW + 90 * DAY,
              eku=None, extra=(), hash_alg=None, basic_constraints=True, serial=None,
              issuer_name=None):
    """Make a certificate; self-signed when no issuer is given.

    key_usage: "default" (keyCertSign|cRLSign for CAs, digitalSignature for leaves),
    None (no keyUsage), or "nosign" (a CA without keyCertSign).
    extra: (extension, critical) pairs added as they are.
    """
    subject = name(cn)
    if issuer_name is None:
        issuer_name = issuer.subject if issuer is not None else subject
    signer = issuer_key if issuer_key is not None else subject_key
    if serial is None:
        serial = int.from_bytes(hashlib.sha256(cn.encode() + spki_der(subject_key)).digest()[:8],
                                "big")
    b = (cx509.CertificateBuilder()
         .subject_name(subject).issuer_name(issuer_name)
         .public_key(subject_key.public_key())
         .serial_number(serial)
         .not_valid_before(at(not_before)).not_valid_after(at(not_after)))
    if basic_constraints:
        b = b.add_extension(cx509.BasicConstraints(ca=ca, path_length=path_len if ca else None),
                            critical=True)
    if key_usage is not None:
        sign = ca and key_usage != "nosign"
        b = b.add_extension(cx509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=sign, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    if sans:
        b = b.add_extension(cx509.SubjectAlternativeName([cx509.DNSName(s) for s in sans]),
                            critical=False)
    if eku is not None:
        b = b.add_extension(cx509.ExtendedKeyUsage(eku), critical=False)
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signer, _sign_hash(signer, hash_alg))


class Pki:
    """root CA -> intermediate -> leaf for api.example.com, in one key type ("ec" or "rsa").

    Also: a backup root (another key), and leaves made on demand by `leaf()`.
    `keys` offsets the cached key numbers, for a second hierarchy with other keys.
    """

    def __init__(self, kind: str, tag: str = "", keys: int = 0):
        self.kind = kind
        t = tag or kind.upper()
        self.root_key = key(kind, keys)
        self.inter_key = key(kind, keys + 1)
        self.leaf_key = key(kind, keys + 2)
        self.backup_key = key(kind, keys + 3)
        self.root = make_cert(f"{t} Root CA", self.root_key, ca=True,
                              not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
        self.inter = make_cert(f"{t} Issuing CA", self.inter_key, self.root, self.root_key,
                               ca=True, path_len=0, not_before=NOW - 365 * DAY,
                               not_after=NOW + 1825 * DAY)
        self.leaf_cert = self.leaf()
        self.backup_root = make_cert(f"{t} Backup Root CA", self.backup_key, ca=True,
                                     not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
        self.backup_inter = make_cert(f"{t} Backup Issuing CA", self.inter_key, self.backup_root,
                                      self.backup_key, ca=True, not_before=NOW - 365 * DAY,
                                      not_after=NOW + 1825 * DAY)

    def leaf(self, sans=("api.example.com",), **kw) -> cx509.Certificate:
        kw.setdefault("issuer", self.inter)
        kw.setdefault("issuer_key", self.inter_key)
        cn = kw.pop("cn", sans[0] if sans else "leaf")
        return make_cert(cn, self.leaf_key, sans=list(sans), **kw)

    def chain(self, leaf=None, *rest) -> list[bytes]:
        """DER chain: the leaf (default: api.example.com), then the intermediate (or `rest`)."""
        leaf = self.leaf_cert if leaf is None else leaf
        return [der(leaf)] + [der(c) for c in (rest or (self.inter,))]


@functools.cache
def pki(kind: str = "ec") -> Pki:
    return Pki(kind)


# --------------------------------------------------------------------------- raw DER


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        head = bytes([n])
    elif n < 0x100:
        head = bytes([0x81, n])
    else:
        head = bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + head + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for a in [arcs[0] * 40 + arcs[1]] + arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


ECDSA_SHA256 = seq(oid("1.2.840.10045.4.3.2"))
NAME = name("Raw").public_bytes()


def utc(text: str) -> bytes:
    return tlv(0x17, text.encode())


def ext(oid_text: str, value: bytes, critical: bool = False) -> bytes:
    return seq(oid(oid_text), tlv(0x01, b"\xff") if critical else b"", tlv(0x04, value))


def raw_tbs(version=b"default", serial=b"\x01", alg=ECDSA_SHA256, issuer=NAME,
            validity=None, subject=NAME, spki=None, extensions=None, tail=b"") -> bytes:
    if version == b"default":
        version = tlv(0xA0, tlv(0x02, b"\x02"))
    if validity is None:
        validity = seq(utc("250101000000Z"), utc("270101000000Z"))
    if spki is None:
        spki = spki_der(key("ec", 0))
    if extensions is None:
        extensions = [ext("2.5.29.19", seq(), critical=True)]
    ext_block = tlv(0xA3, seq(*extensions)) if extensions else b""
    return seq(version or b"", tlv(0x02, serial), alg, issuer, validity, subject, spki,
               ext_block, tail)


ECDSA_SIG = seq(tlv(0x02, b"\x01" * 32), tlv(0x02, b"\x02" * 32))


def raw_cert(tbs: bytes | None = None, alg: bytes = ECDSA_SHA256, sig: bytes = ECDSA_SIG,
             tail: bytes = b"") -> bytes:
    return seq(raw_tbs() if tbs is None else tbs, alg, tlv(0x03, b"\x00" + sig), tail)
