"""Unsigned payloads, COSE envelopes and adding signatures, on the operator side.

The build step writes a bare, deterministic CBOR payload (never signed).
`sign` wraps it in a COSE_Sign (tag 98) with one signature, or appends a
signature to an existing COSE_Sign, so each key can live on its own offline
machine. Timestamps, signed by one online key, may use COSE_Sign1.

Every signature uses the protected header {alg: ES256} and carries the kid
(SHA-256 of the key's SPKI) in the unprotected header: the kid is only a
hint for finding the key; verification never trusts it beyond that.
`sign --signer NAME` adds the signer's stated name to that signature's
protected header (label "signer", not critical): covered by the signature,
ignored by devices, read back by `signers` for the audit trail.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from trustfleet_device import cbor, cose, documents, policy
from trustfleet_device._cpython.files import read_capped
from trustfleet_device.errors import DecodeError, LimitError, PolicyError, TrustfleetError
from trustfleet_device.limits import DEFAULT, Limits
from trustfleet_server import keys
from trustfleet_server.errors import OperatorError, UsageError

PROTECTED_ES256 = cose.PROTECTED_ES256  # {alg: ES256}
SIGNER_LABEL = "signer"  # protected header label: the signer's stated name (docs/format.md)
SIGNER_MAX = 128

KNOWN_TYPES = {"root": documents.parse_root, "bundle": documents.parse_bundle,
               "timestamp": documents.parse_timestamp}


@dataclass
class Document:
    """A document as read from a file: its payload and, if signed, its envelope."""

    payload: bytes
    doc_type: str
    message: cose.Message | None

    @property
    def signed(self) -> bool:
        return self.message is not None

    @property
    def kids(self) -> list[bytes]:
        if self.message is None:
            return []
        return [s.kid for s in self.message.signers if s.kid is not None]


def encode_payload(value: dict) -> bytes:
    """Deterministic CBOR of a payload map, checked against the device parser."""
    payload = cbor.encode(value)
    parse = KNOWN_TYPES.get(value.get("type"))
    if parse is None:
        raise ValueError(f"unknown document type {value.get('type')!r}")
    parse(payload)  # the device must be able to read what we build
    return payload


def read_document(raw: bytes, limits: Limits = DEFAULT) -> Document:
    """Read a bare payload or a COSE-signed document. Raises: DecodeError."""
    if len(raw) > limits.max_document:
        raise DecodeError(f"document is {len(raw)} bytes, limit is {limits.max_document}")
    message = None
    try:
        if raw[:1] in (b"\xd8", b"\xd2"):  # tag 98 (0xd8 0x62) or tag 18 (0xd2)
            message = cose.parse(raw, limits)
            payload = message.unverified_payload
        else:
            payload = raw
        value = cbor.decode(payload, limits)
    except LimitError:
        raise
    except DecodeError as exc:
        raise DecodeError(f"not a trustfleet document ({exc})") from None
    doc_type = value.get("type") if isinstance(value, dict) else None
    if doc_type not in KNOWN_TYPES:
        raise DecodeError(f"not a trustfleet document (type {doc_type!r})")
    KNOWN_TYPES[doc_type](payload, limits)
    return Document(payload, doc_type, message)


def check_signer(name: str) -> str:
    """A signer's stated name: 1 to SIGNER_MAX printable characters. Raises: UsageError."""
    if not 0 < len(name) <= SIGNER_MAX or not name.isprintable() or name != name.strip():
        raise UsageError(f"--signer {name!r}: expected 1 to {SIGNER_MAX} printable characters, "
                         f"without leading or trailing spaces")
    return name


def _signature_entry(payload: bytes, body_protected: bytes, key: ec.EllipticCurvePrivateKey,
                     signer: str | None = None) -> list:
    protected = (PROTECTED_ES256 if signer is None
                 else cbor.encode({cose.HDR_ALG: cose.ALG_ES256, SIGNER_LABEL: signer}))
    # The device's own Sig_structure builder, so signer and verifier cannot drift apart.
    tbs = cose.sig_structure_prefix(cose.TAG_SIGN, body_protected, protected, b"", len(payload))
    sig = keys.sign(key, tbs + payload)
    return [protected, {cose.HDR_KID: keys.kid_of(key)}, sig]


def add_signature(raw: bytes, key: ec.EllipticCurvePrivateKey, signer: str | None = None) -> bytes:
    """Return `raw` (a bare payload or a COSE_Sign) with one more signature by `key`; `signer`,
    the signer's stated name, goes in that signature's protected header.

    Raises: PolicyError when this key already signed, or the input is a COSE_Sign1.
    """
    if signer is not None:
        check_signer(signer)
    doc = read_document(raw)
    kid = keys.kid_of(key)
    if doc.message is None:
        body_protected, signatures = b"", []
    else:
        if doc.message.tag != cose.TAG_SIGN:
            raise PolicyError("cannot add a signature to a COSE_Sign1; sign the bare payload")
        if kid in doc.kids:
            raise PolicyError(f"key {kid.hex()[:8]} has already signed this document")
        body_protected = doc.message.protected_raw
        signatures = [[s.protected_raw, s.unprotected, s.signature] for s in doc.message.signers]
    signatures.append(_signature_entry(doc.payload, body_protected, key, signer))
    return cbor.encode(cbor.Tag(cose.TAG_SIGN, [body_protected, {}, doc.payload, signatures]))


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign a payload as COSE_Sign1 (one signer, e.g. the online timestamp key)."""
    tbs = cose.sig_structure_prefix(cose.TAG_SIGN1, PROTECTED_ES256, None, b"", len(payload))
    sig = keys.sign(key, tbs + payload)
    return cbor.encode(cbor.Tag(cose.TAG_SIGN1, [PROTECTED_ES256, {cose.HDR_KID: keys.kid_of(key)},
                                                 payload, sig]))


def sign_timestamp(bundle_raw: bytes, when: int, key: ec.EllipticCurvePrivateKey,
                   where: str) -> tuple[bytes, documents.Bundle]:
    """A timestamp (COSE_Sign1 by `key`) naming the signed bundle `bundle_raw`, and that bundle.

    Raises: UsageError when `bundle_raw` is not a signed bundle (`where` names it), DecodeError.
    """
    doc = read_document(bundle_raw)
    if doc.doc_type != "bundle" or not doc.signed:
        raise UsageError(f"{where}: expected a signed bundle")
    b = documents.parse_bundle(doc.payload)
    payload = encode_payload({
        "type": "timestamp", "spec": documents.SPEC, "fleet": b.fleet, "time": when,
        "bundle_version": b.version, "bundle_sha256": sha256(bundle_raw),
    })
    return sign1(payload, key), b


def claimed_version(raw: bytes) -> int | None:
    """The version a document claims, unverified, for error reports; None when unreadable."""
    try:
        value = cbor.decode(cose.parse(raw).unverified_payload)
    except TrustfleetError:
        return None
    version = value.get("version") if isinstance(value, dict) else None
    return version if isinstance(version, int) else None


def sha256(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def read_file(path: Path) -> bytes:
    """A document file. Raises: OSError, LimitError (past the device's document size limit),
    UsageError (the file is empty)."""
    raw = read_capped(path, DEFAULT.max_document)
    if not raw:
        raise UsageError(f"{path}: the file is empty")
    return raw


@contextlib.contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """Put `path` in front of a refusal (a TrustfleetError, not an OperatorError) raised inside:
    say which file is bad."""
    try:
        yield
    except TrustfleetError as exc:
        if not isinstance(exc, OperatorError) and not str(exc).startswith(f"{path}: "):
            exc.args = (f"{path}: {exc}", *exc.args[1:])
        raise


def read_document_file(path: Path, expect: str | None = None) -> tuple[bytes, Document]:
    """A document file and what it holds; `expect` ("root", "bundle", "timestamp") refuses another
    type. Raises: OSError, UsageError (empty), DecodeError naming `path`."""
    raw = read_file(path)
    with naming(path):
        doc = read_document(raw)
        if expect is not None and doc.doc_type != expect:
            raise DecodeError(f"is a {doc.doc_type}, not a {expect}")
    return raw, doc


def load_root_chain(paths: Sequence[Path]) -> documents.Root:
    """The first root is trusted as given (self-consistent); later ones must chain from it.

    Raises: TrustfleetError naming the file when a root does not read or verify.
    """
    raw, _ = read_document_file(paths[0], "root")
    with naming(paths[0]):
        root = policy.load_trusted_root(raw)
    for p in paths[1:]:
        raw, _ = read_document_file(p, "root")
        with naming(p):
            root = policy.verify_root_update(root, raw)
    return root
