"""An in-memory trustfleet repository for tests (after python-tuf's repository_simulator).

`Repo` holds the operator's keys per role and builds real signed documents:
roots (and rotations signed by the old and the new root keys), bundles with
real certificates, and timestamps. Every document is real CBOR/COSE signed
with real P-256 keys, so tests exercise the device code exactly as a board
would, with nothing mocked.

Tamper helpers work on the signed bytes, the way an attacker on the broker
would: flip a payload byte, swap the payload, drop or duplicate a
signature, add a signature by any key (also one that already signed).

    repo = Repo()
    root = policy.load_trusted_root(repo.root_raw)
    raw = repo.bundle(version=2)
    policy.verify_bundle(root, drop_signature(raw))   # SignatureError

Times are fixed (NOW) so that messages and expiry checks are reproducible.
What users' tests need (a fleet, chains with live validity, a broker, devices)
is the public trustfleet_server.testing; this module keeps what only our suite
needs: fixed-time certificates and the attacker's tools on signed bytes.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustfleet_device import cbor, cose
from trustfleet_device import documents as device_docs
from trustfleet_server import documents, keys

# Pins and encodings are the public testing API's (users' tests get the same functions).
from trustfleet_server.testing.pki import b64, der, pem, pin, spki  # noqa: F401 - re-exported

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
ROLES = ("root", "bundle", "timestamp")
ES256 = {cose.HDR_ALG: cose.ALG_ES256}


# --------------------------------------------------------------------------- certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fleetkit Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _at(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def make_cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None = None,
              issuer_key: ec.EllipticCurvePrivateKey | None = None, *, ca: bool = True,
              not_after: int = NOW + 3650 * DAY, dns: str | None = None) -> x509.Certificate:
    """A P-256 certificate: self-signed when no issuer is given."""
    issuer_name = issuer.subject if issuer is not None else _name(cn)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(issuer_name)
               .public_key(key.public_key())
               .serial_number(int.from_bytes(hashlib.sha256(cn.encode()).digest()[:8], "big"))
               .not_valid_before(_at(NOW - 365 * DAY)).not_valid_after(_at(not_after))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@dataclass(frozen=True)
class Chain:
    """A CA, an intermediate and a leaf for `domain`, plus a spare key for the backup pin."""

    domain: str
    ca: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    backup_key: ec.EllipticCurvePrivateKey

    @property
    def pins(self) -> list[bytes]:
        """Primary (intermediate SPKI) and backup pin, as an operator would pin them."""
        return [pin(self.intermediate), pin(self.backup_key)]


@functools.cache
def chain(name: str = "acme") -> Chain:
    """A certificate chain for api.<name>.example (cached: one per name per session)."""
    ca_key, int_key, leaf_key = (keys.generate_key() for _ in range(3))
    ca = make_cert(f"{name} Root CA", ca_key)
    intermediate = make_cert(f"{name} Issuing CA", int_key, ca, ca_key, not_after=NOW + 1825 * DAY)
    domain = f"api.{name}.example"
    leaf = make_cert(domain, leaf_key, intermediate, int_key, ca=False,
                     not_after=NOW + 90 * DAY, dns=domain)
    return Chain(domain, ca, intermediate, leaf, keys.generate_key())


def full_anchor(cert: x509.Certificate) -> bytes:
    """A bundle anchor carrying the whole certificate (DER)."""
    return der(cert)


def compact_anchor(cert: x509.Certificate, label: str | None = None) -> list:
    """A compact bundle anchor, as the operator's builder writes it (see bundle.compact_anchor)."""
    return device_docs.compact_anchor(cert.subject.public_bytes(), spki(cert),
                                        int(cert.not_valid_after_utc.timestamp()), label)


def pinset(domain: str, pins: Sequence[bytes], *, expires: int = NOW + 180 * DAY,
           subdomains: bool = True, mode: str = "enforce", **extra: Any) -> dict:
    """A pin-set map as it appears in a bundle payload."""
    return {"domain": domain, "subdomains": subdomains, "pins": list(pins), "expires": expires,
            "mode": mode, "report_to": [], **extra}


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(pem(c) for c in certs))
    return path


# --------------------------------------------------------------------------- COSE building


def encode(value: dict, check: bool = True) -> bytes:
    """Payload bytes; `check=False` skips the device parser so invalid documents can be made."""
    return documents.encode_payload(value) if check else cbor.encode(value)


def signature_entry(payload: bytes, key: ec.EllipticCurvePrivateKey, *, body_protected: bytes = b"",
                    protected: dict | None = None, unprotected: dict | None = None,
                    kid: bytes | None | bool = True) -> list:
    """One COSE_Signature, validly signed over the Sig_structure (RFC 9052 section 4.4).

    protected: the signer's protected header map ({alg: ES256} by default; {} for none).
    kid: True for the key's own kid, None to leave it out, or bytes to lie about it.
    """
    prot = ES256 if protected is None else protected
    prot_raw = cbor.encode(prot) if prot else b""
    unprot = dict(unprotected or {})
    if kid is True:
        unprot[cose.HDR_KID] = keys.kid_of(key)
    elif kid is not None and kid is not False:
        unprot[cose.HDR_KID] = kid
    # RFC 9052 section 4.4: an empty protected map (h'A0') is signed as h''.
    body_signed = b"" if body_protected == b"\xa0" else body_protected
    tbs = cbor.encode(["Signature", body_signed, prot_raw, b"", payload])
    return [prot_raw, unprot, keys.sign_digest(key, hashlib.sha256(tbs).digest())]


def cose_sign(payload: bytes, entries: Sequence[list], body_protected: bytes = b"",
              body_unprotected: dict | None = None) -> bytes:
    """A tagged COSE_Sign (98) from ready signature entries."""
    return cbor.encode(cbor.Tag(cose.TAG_SIGN, [body_protected, body_unprotected or {}, payload,
                                                list(entries)]))


def sign(payload: bytes, signers: Iterable[ec.EllipticCurvePrivateKey], body_protected: bytes = b"") -> bytes:
    """A COSE_Sign with one signature per key, in order (a key may appear twice)."""
    return cose_sign(payload, [signature_entry(payload, k, body_protected=body_protected)
                               for k in signers], body_protected)


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    return documents.sign1(payload, key)


def open_sign(raw: bytes) -> tuple[bytes, dict, bytes, list]:
    """(body_protected, body_unprotected, payload, signature entries) of a COSE_Sign, unverified."""
    value = cbor.decode(raw, tags=(cose.TAG_SIGN,))
    if not isinstance(value, cbor.Tag) or value.number != cose.TAG_SIGN:
        raise ValueError("not a COSE_Sign")
    body_protected, body_unprotected, payload, entries = value.value
    return body_protected, body_unprotected, payload, list(entries)


def payload_of(raw: bytes) -> bytes:
    return cose.parse(raw).unverified_payload


# --------------------------------------------------------------------------- tampering


def with_entries(raw: bytes, entries: Sequence[list]) -> bytes:
    body_protected, body_unprotected, payload, _ = open_sign(raw)
    return cose_sign(payload, entries, body_protected, body_unprotected)


def drop_signature(raw: bytes, index: int = -1) -> bytes:
    entries = open_sign(raw)[3]
    del entries[index]
    return with_entries(raw, entries)


def duplicate_signature(raw: bytes, index: int = 0) -> bytes:
    """Append a byte-identical copy of one signature entry (replay of the same signature)."""
    entries = open_sign(raw)[3]
    return with_entries(raw, entries + [entries[index]])


def add_signature(raw: bytes, key: ec.EllipticCurvePrivateKey, **kw: Any) -> bytes:
    """Append a fresh, valid signature by `key`, even when it already signed (ECDSA is randomized).

    Unlike trustfleet_server.documents.add_signature, nothing is refused:
    this is the attacker's (or a confused operator's) tool. `kw` goes to signature_entry.
    """
    body_protected, _, payload, entries = open_sign(raw)
    return with_entries(raw, entries + [signature_entry(payload, key, body_protected=body_protected, **kw)])


def replace_payload(raw: bytes, payload: bytes) -> bytes:
    """Keep every signature, swap the payload (what a forger would like to work)."""
    body_protected, body_unprotected, _, entries = open_sign(raw)
    return cose_sign(payload, entries, body_protected, body_unprotected)


def flip_payload_byte(raw: bytes, offset: int = -1) -> bytes:
    """Flip the low bit of one payload byte, keeping the envelope and signatures intact."""
    payload = bytearray(open_sign(raw)[2])
    payload[offset] ^= 0x01
    return replace_payload(raw, bytes(payload))


# --------------------------------------------------------------------------- repository


@dataclass
class Repo:
    """The operator's side of one fleet: keys per role, the current root, document builders.

    `sizes` gives (number of keys, threshold) per role. `roots` is every
    signed root so far, oldest first; `root_raw` is the first (the factory trust).
    """

    fleet: str = "acme-sensors"
    sizes: dict = field(default_factory=lambda: {"root": (2, 2), "bundle": (3, 2), "timestamp": (1, 1)})
    now: int = NOW
    time_lead: int | None = None  # the root's policy.max_time_lead; None: the field is left out
    keys: dict = field(init=False)
    thresholds: dict = field(init=False)
    version: int = field(init=False, default=1)
    roots: list = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.keys = {role: [keys.generate_key() for _ in range(self.sizes[role][0])] for role in ROLES}
        self.thresholds = {role: self.sizes[role][1] for role in ROLES}
        self.roots.append(self.sign(encode(self.root_map()), self.signers("root")))

    # -- roots ---------------------------------------------------------------

    @property
    def root_raw(self) -> bytes:
        return self.roots[0]

    @property
    def latest_root(self) -> bytes:
        return self.roots[-1]

    def signers(self, role: str) -> list:
        """The first `threshold` keys of a role: the default signing set."""
        return self.keys[role][: self.thresholds[role]]

    def root_map(self, version: int | None = None, key_sets: dict | None = None,
                 thresholds: dict | None = None, **overrides: Any) -> dict:
        key_sets = key_sets or self.keys
        thresholds = thresholds or self.thresholds
        spkis = {keys.kid_of(k): spki(k) for role in ROLES for k in key_sets[role]}
        value = {
            "type": "root", "spec": 1, "fleet": self.fleet,
            "version": self.version if version is None else version,
            "expires": self.now + 365 * DAY, "keys": sorted(spkis.values()),
            "roles": {role: {"keys": [keys.kid_of(k) for k in key_sets[role]],
                             "threshold": thresholds[role]} for role in ROLES},
        }
        if self.time_lead is not None:
            value["policy"] = {"max_time_lead": self.time_lead}
        value.update(overrides)
        return value

    def rotate(self, role: str, new_keys: int | list = 0, remove: int = 0, threshold: int | None = None,
               signers: Iterable | None = None, version: int | None = None, **overrides: Any) -> bytes:
        """Make, sign and record the next root.

        The role loses its first `remove` keys and gains `new_keys` fresh keys
        (or the given list). By default the root is signed by a threshold of
        the old root keys and a threshold of the new ones, as the rule asks.
        """
        old_signers = self.signers("root")
        added = [keys.generate_key() for _ in range(new_keys)] if isinstance(new_keys, int) else new_keys
        self.keys[role] = self.keys[role][remove:] + list(added)
        if threshold is not None:
            self.thresholds[role] = threshold
        self.version += 1
        payload = encode(self.root_map(version, **overrides))
        if signers is None:
            signers = old_signers + [k for k in self.signers("root") if k not in old_signers]
        raw = self.sign(payload, signers)
        self.roots.append(raw)
        return raw

    # -- bundles and timestamps ------------------------------------------------

    def bundle_map(self, version: int = 1, **overrides: Any) -> dict:
        acme, backup = chain("acme"), chain("backup")
        value = {
            "type": "bundle", "spec": 1, "fleet": self.fleet, "version": version,
            "issued_at": self.now, "expires_at": self.now + 90 * DAY,
            "anchors": [compact_anchor(acme.ca, "acme Root CA"), full_anchor(backup.ca)],
            "pinsets": [pinset(acme.domain, acme.pins)],
            "distrust": [],
            "policy": {"user_anchors": False, "max_timestamp_age": 2 * DAY},
        }
        value.update(overrides)
        return value

    def bundle(self, version: int = 1, signers: Iterable | None = None, check: bool = True,
               **overrides: Any) -> bytes:
        """A bundle signed by `signers` (default: a threshold of bundle keys)."""
        payload = encode(self.bundle_map(version, **overrides), check)
        return self.sign(payload, self.signers("bundle") if signers is None else signers)

    def timestamp_map(self, bundle_raw: bytes | None = None, time: int | None = None, **overrides: Any) -> dict:
        bundle_raw = bundle_raw if bundle_raw is not None else self.bundle()
        version = cbor.decode(payload_of(bundle_raw))["version"]
        value = {"type": "timestamp", "spec": 1, "fleet": self.fleet,
                 "time": self.now if time is None else time, "bundle_version": version,
                 "bundle_sha256": hashlib.sha256(bundle_raw).digest()}
        value.update(overrides)
        return value

    def timestamp(self, bundle_raw: bytes | None = None, time: int | None = None,
                  key: ec.EllipticCurvePrivateKey | None = None, **overrides: Any) -> bytes:
        """A timestamp as COSE_Sign1 by the (first) timestamp key, as the online signer makes it."""
        payload = encode(self.timestamp_map(bundle_raw, time, **overrides))
        return sign1(payload, key or self.keys["timestamp"][0])

    @staticmethod
    def sign(payload: bytes, signers: Iterable) -> bytes:
        return sign(payload, list(signers))


def many_anchors(n: int) -> list:
    """n compact anchors with distinct names (keys reused: only parsing is exercised)."""
    base = compact_anchor(chain("acme").ca)
    out = []
    for i in range(n):
        name = base[0][:-2] + bytes([0x30 + i % 10, 0x30 + i // 10 % 10])
        out.append([name, base[1], base[2], base[3] + i])
    return out
