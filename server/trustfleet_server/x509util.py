"""Certificates and SPKI pins for the operator side.

Trusts: nothing in the files it reads. Certificates are parsed by
`cryptography`, and each one's public key is decoded at load time, so a
certificate that would fail later (unknown key algorithm, bad encoding)
fails here, naming its file.

Refuses: a file or directory in which no certificate parses, and any
certificate in an operator-supplied file that does not parse (silently
dropping a trust anchor would be worse than stopping). The certifi bundle is
the one exception: certificates `cryptography` cannot read are skipped and
counted, because the operator does not control that file.

Pins are SHA-256 over the DER SubjectPublicKeyInfo (RFC 7469 section 2.4),
base64 with padding. The SPKI is re-encoded from the parsed key, which is
what `openssl x509 -pubkey | openssl pkey -pubin -outform der` does too, so
the two agree byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import certifi
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from trustfleet_server import keys
from trustfleet_server.errors import UsageError

log = logging.getLogger(__name__)

CERT_SUFFIXES = (".pem", ".crt", ".cer", ".der")
MAX_CERT_FILE_BYTES = 16 << 20  # the whole Mozilla store as PEM is about 300 KiB
LABEL_MAX_CHARS = 64


class CertificateFileError(UsageError):
    """A certificate file or directory holds no usable certificate (exit code 2)."""


class AnchorFields(NamedTuple):
    """What a compact trust anchor records about a root certificate."""

    subject_der: bytes
    spki_der: bytes
    not_after: int  # seconds since the epoch, UTC
    label: str


class PinSubject(NamedTuple):
    """Something `trustfleet pin` can pin: a label, its public key, and its certificate if any."""

    label: str
    public_key: Any
    cert: x509.Certificate | None


# --------------------------------------------------------------------------- loading


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Load certificates from a PEM file (one or many), a DER file, or a directory.

    A directory contributes every regular *.pem, *.crt, *.cer and *.der file
    directly inside it (not recursively), in name order.

    Args:
        path: file or directory.

    Raises:
        CertificateFileError: a file holds no certificate or one that does
            not parse, or the directory has no certificate files.
        OSError: a file cannot be read.

    Returns:
        The certificates, in file order.
    """
    path = Path(path)
    if path.is_dir():
        return _certificates_from_directory(path)
    return _certificates_from_file(path)


def _certificates_from_directory(directory: Path) -> list[x509.Certificate]:
    files = sorted(
        (p for p in directory.iterdir() if p.suffix.lower() in CERT_SUFFIXES and p.is_file()),
        key=lambda p: p.name,
    )
    if not files:
        raise CertificateFileError(
            f"{directory}: no certificate files ({', '.join('*' + s for s in CERT_SUFFIXES)})"
        )
    certs: list[x509.Certificate] = []
    for file in files:
        certs.extend(_certificates_from_file(file))
    return certs


def _certificates_from_file(path: Path) -> list[x509.Certificate]:
    data = keys.read_file_limited(path, MAX_CERT_FILE_BYTES, CertificateFileError)
    certs, _ = parse_certificates(data, str(path), strict=True)
    return certs


def parse_certificates(
    data: bytes, name: str, *, strict: bool = True
) -> tuple[list[x509.Certificate], int]:
    """Parse PEM (any number of CERTIFICATE blocks) or a single DER certificate.

    Args:
        data: file contents.
        name: used in error messages (normally the file name).
        strict: raise on a certificate that does not parse; otherwise skip it.

    Raises:
        CertificateFileError: nothing parses, or (strict) one certificate does not.

    Returns:
        The certificates and how many were skipped.
    """
    if not keys.looks_like_pem(data):
        if not data.strip():
            raise CertificateFileError(f"{name}: not a PEM file or a DER certificate (the file is empty)")
        return [
            _parse_one(
                name, x509.load_der_x509_certificate, data, "not a PEM file or a DER certificate"
            )
        ], 0
    blocks = [b for b in keys.split_pem(data) if b.label in ("CERTIFICATE", "X509 CERTIFICATE")]
    if not blocks:
        raise CertificateFileError(f"{name}: no PEM CERTIFICATE block found")
    certs: list[x509.Certificate] = []
    skipped = 0
    for index, block in enumerate(blocks, start=1):
        try:
            certs.append(
                _parse_one(
                    name,
                    x509.load_pem_x509_certificate,
                    block.data,
                    f"certificate #{index} does not parse",
                )
            )
        except CertificateFileError:
            if strict:
                raise
            skipped += 1
    if not certs:
        raise CertificateFileError(f"{name}: none of {len(blocks)} certificates parses")
    return certs, skipped


def _parse_one(name: str, loader: Any, data: bytes, what: str) -> x509.Certificate:
    try:
        cert = keys.load_certificate_quietly(loader, data)
        # Decode the lazily parsed parts now, so a bad certificate is reported here.
        cert.public_key()
        _ = cert.subject, cert.issuer, cert.not_valid_after_utc
    except (ValueError, UnsupportedAlgorithm) as exc:
        detail = "" if "error parsing asn1" in str(exc) else f" ({exc})"  # the parser's internals help no one
        raise CertificateFileError(f"{name}: {what}{detail}") from None
    return cert


def certifi_certificates_with_skipped() -> tuple[list[x509.Certificate], int]:
    """Return the certifi CA bundle and how many of its certificates were skipped as unparseable.

    Raises:
        CertificateFileError: the bundle has no parseable certificate.
        OSError: the bundle file cannot be read.
    """
    path = certifi.where()
    data = keys.read_file_limited(path, MAX_CERT_FILE_BYTES, CertificateFileError)
    return parse_certificates(data, path, strict=False)


def certifi_certificates() -> list[x509.Certificate]:
    """Return the certificates of the certifi CA bundle, logging a warning for any skipped.

    Raises:
        CertificateFileError: the bundle has no parseable certificate.
        OSError: the bundle file cannot be read.
    """
    certs, skipped = certifi_certificates_with_skipped()
    if skipped:
        log.warning("certifi bundle: skipped %d certificate(s) that cannot be parsed", skipped)
    return certs


# --------------------------------------------------------------------------- pins, fields


def _public_key_of(obj: Any) -> Any:
    if isinstance(obj, x509.Certificate):
        return obj.public_key()
    if hasattr(obj, "private_bytes"):
        return obj.public_key()
    return obj


def spki_der(obj: Any) -> bytes:
    """Return the DER SubjectPublicKeyInfo of a certificate, public key or private key."""
    return _public_key_of(obj).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256(obj: Any) -> bytes:
    """Return SHA-256 over the DER SubjectPublicKeyInfo of a certificate or key."""
    return hashlib.sha256(spki_der(obj)).digest()


def pin_b64(obj: Any) -> str:
    """Return the SPKI SHA-256 pin as standard base64 (the `pin-sha256` form of RFC 7469)."""
    return base64.b64encode(spki_sha256(obj)).decode("ascii")


def subject_label(name: x509.Name, max_chars: int | None = LABEL_MAX_CHARS) -> str:
    """Return a short human label: the CN, else the O, else the RFC 4514 string.

    The first attribute of the chosen type is used; `max_chars` truncates
    (None keeps it whole). An empty subject gives "".
    """
    label = name.rfc4514_string()
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        attributes = name.get_attributes_for_oid(oid)
        if attributes:
            value = attributes[0].value
            label = value if isinstance(value, str) else value.decode("utf-8", "replace")
            break
    return label if max_chars is None else label[:max_chars]


def compact_anchor_fields(cert: x509.Certificate) -> AnchorFields:
    """Return the fields a compact anchor keeps: subject DER, SPKI DER, notAfter, label.

    Returns:
        AnchorFields(subject_der, spki_der, not_after epoch seconds UTC,
        label of at most 64 characters).
    """
    return AnchorFields(
        subject_der=cert.subject.public_bytes(),
        spki_der=spki_der(cert),
        not_after=int(cert.not_valid_after_utc.timestamp()),
        label=subject_label(cert.subject),
    )


def cert_der(cert: x509.Certificate) -> bytes:
    """Return the certificate's DER encoding."""
    return cert.public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- pin subjects


def load_pin_subject(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> list[PinSubject]:
    """Read what to pin from a file: certificate(s), a public key, or a private key.

    A file holding certificates yields one subject per certificate (a chain
    keeps its order); otherwise the first key in it is used. Keys of any
    algorithm are accepted: pins are not limited to our signing keys. A
    directory yields every certificate, as `load_certificates` does.

    Args:
        path: PEM or DER certificate, chain, public key or private key, or a directory.
        passphrase: only needed for an encrypted private key.

    Raises:
        KeyFileError: nothing recognisable, or an encrypted key without
            (or with the wrong) passphrase.
        CertificateFileError: a directory without certificates.
        OSError: the file cannot be read.
    """
    if Path(path).is_dir():
        return [_certificate_subject(c) for c in load_certificates(path)]
    name = str(path)
    objects = keys.read_key_objects(path, passphrase, limit=MAX_CERT_FILE_BYTES)
    certs = [m.certificate for m in objects if m.certificate is not None]
    if certs:
        return [_certificate_subject(c) for c in certs]
    material = keys.require_unlocked(name, objects[0])
    return [PinSubject(material.kind, material.public_key, None)]


def _certificate_subject(cert: x509.Certificate) -> PinSubject:
    return PinSubject(subject_label(cert.subject, None), cert.public_key(), cert)
