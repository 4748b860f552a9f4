"""Air-gapped signing: signing requests and signature files (docs/format.md, "Signing requests").

The online machine writes a request holding exactly what a signer's Sig_structure covers (the
document's payload and body-protected bytes), the payload's SHA-256, a summary for review and the
role whose key must sign. The offline machine checks the request against its own bytes (the
summary is recomputed, never trusted), signs, and writes a signature file: the signature's
protected header, the signature, its kid and the payload's SHA-256. The online machine then
attaches it after checking it is for this document, verifies, and is by a key of the right role.

Both files are JSON (format names FORMAT and SIG_FORMAT, version VERSION), byte strings in base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustfleet_device import cbor, cose
from trustfleet_device import documents as device_docs
from trustfleet_device._cpython.files import read_capped
from trustfleet_device.errors import LimitError, PolicyError, TrustfleetError
from trustfleet_server import describe, documents, keys
from trustfleet_server.errors import UsageError

FORMAT = "trustfleet-sign-request"
SIG_FORMAT = "trustfleet-signature"
VERSION = 1
MAX_FILE = 4 * 1024 * 1024  # a request is its document in base64 plus a summary
SIGN = "COSE_Sign"
SIGN1 = "COSE_Sign1"


@dataclass
class Request:
    """A checked signing request: every field agrees with the payload bytes."""

    doc_type: str
    role: str
    envelope: str  # SIGN (bundles, roots) or SIGN1 (timestamps)
    payload: bytes
    body_protected: bytes
    summary: dict[str, Any]

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.payload).digest()


@dataclass
class Signature:
    """A signature file's content, not yet checked against any document."""

    doc_type: str
    sha256: bytes
    kid: bytes
    protected: bytes
    signature: bytes


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise UsageError(f"{where}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{where}: not valid base64") from None


def _unhex(value: Any, where: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise UsageError(f"{where}: expected {size * 2} hex digits")
    return raw


def summary_of(doc_type: str, payload: bytes) -> dict[str, Any]:
    """What a reviewer reads, computed from the payload alone (as `inspect` shows it), in its JSON
    form. Raises: DecodeError."""
    info = describe.describe(documents.Document(payload, doc_type, None), payload)
    for key in ("signed", "signers", "bytes", "sha256"):
        info.pop(key, None)
    return json.loads(json.dumps(info))


def make_request(raw: bytes) -> Request:
    """The request for one more signature on `raw` (a bare payload or a COSE_Sign; a timestamp
    payload gets a COSE_Sign1). Raises: DecodeError, UsageError (a COSE_Sign1 document)."""
    doc = documents.read_document(raw)
    if doc.message is not None and doc.message.tag != cose.TAG_SIGN:
        raise UsageError("a COSE_Sign1 cannot take another signature; request one for its bare payload")
    if doc.doc_type == "timestamp":
        if doc.message is not None:
            raise UsageError("a timestamp is signed once; request a signature for its bare payload")
        envelope, body_protected = SIGN1, cose.PROTECTED_ES256
    else:
        envelope = SIGN
        body_protected = b"" if doc.message is None else doc.message.protected_raw
    return Request(doc.doc_type, doc.doc_type, envelope, doc.payload, body_protected,
                   summary_of(doc.doc_type, doc.payload))


def timestamp_request(bundle_raw: bytes, when: int, where: str) -> tuple[Request, device_docs.Bundle]:
    """The request for a timestamp at `when` naming the signed bundle `bundle_raw` (`where` names
    it), and that bundle. Raises: UsageError (not a signed bundle), DecodeError."""
    doc = documents.read_document(bundle_raw)
    if doc.doc_type != "bundle" or not doc.signed:
        raise UsageError(f"{where}: expected a signed bundle")
    b = device_docs.parse_bundle(doc.payload)
    payload = documents.encode_payload({
        "type": "timestamp", "spec": device_docs.SPEC, "fleet": b.fleet, "time": when,
        "bundle_version": b.version, "bundle_sha256": documents.sha256(bundle_raw),
    })
    return make_request(payload), b


def encode_request(req: Request) -> bytes:
    value = {"format": FORMAT, "version": VERSION, "type": req.doc_type, "role": req.role,
             "envelope": req.envelope, "sha256": req.sha256.hex(), "summary": req.summary,
             "body_protected": _b64(req.body_protected), "payload": _b64(req.payload)}
    return (json.dumps(value, indent=2) + "\n").encode()


def _read_json(path: Path, fmt: str, what: str) -> dict[str, Any]:
    try:
        raw = read_capped(path, MAX_FILE)
    except LimitError:
        raise UsageError(f"{path}: over {MAX_FILE} bytes: not a {what}") from None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{path}: not a {what} (not JSON)") from None
    if not isinstance(value, dict) or value.get("format") != fmt:
        raise UsageError(f"{path}: not a {what} (format is not {fmt!r})")
    if value.get("version") != VERSION:
        raise UsageError(f"{path}: {what} version {value.get('version')!r}; this trustfleet reads "
                         f"version {VERSION}")
    return value


def read_request(path: Path) -> Request:
    """A request file, checked against its own bytes: the digest, type, role, envelope and every
    summary field are recomputed from the payload. Raises: UsageError, OSError."""
    value = _read_json(path, FORMAT, "signing request")
    payload = _unb64(value.get("payload"), f"{path}: payload")
    body_protected = _unb64(value.get("body_protected"), f"{path}: body_protected")
    if hashlib.sha256(payload).hexdigest() != value.get("sha256"):
        raise UsageError(f"{path}: the sha256 does not match the payload (altered request); "
                         f"nothing signed")
    try:
        doc = documents.read_document(payload)
    except TrustfleetError as exc:
        raise UsageError(f"{path}: the payload is not a document ({exc})") from None
    if doc.message is not None:
        raise UsageError(f"{path}: the payload is a signed envelope, not a bare payload")
    expected = (SIGN1, cose.PROTECTED_ES256) if doc.doc_type == "timestamp" else (SIGN, None)
    stated = {"type": value.get("type"), "role": value.get("role"), "envelope": value.get("envelope")}
    actual = {"type": doc.doc_type, "role": doc.doc_type, "envelope": expected[0]}
    summary = summary_of(doc.doc_type, payload)
    for field in stated:
        if stated[field] != actual[field]:
            raise UsageError(f"{path}: {field} says {stated[field]!r} but the payload is a "
                             f"{actual[field]!r} (altered request); nothing signed")
    if expected[1] is not None and body_protected != expected[1]:
        raise UsageError(f"{path}: body_protected is not {{alg: ES256}} as a timestamp's must be")
    if expected[1] is None and body_protected not in (b"", b"\xa0") and not isinstance(
            _decode_or_none(body_protected), dict):
        raise UsageError(f"{path}: body_protected is not a CBOR map")
    stated_summary = value.get("summary")
    if stated_summary != summary:
        fields = summary.keys() | (stated_summary.keys() if isinstance(stated_summary, dict) else set())
        bad = sorted(k for k in fields if not isinstance(stated_summary, dict)
                     or stated_summary.get(k) != summary.get(k))
        raise UsageError(f"{path}: the summary disagrees with the payload ({', '.join(bad)}; altered "
                         f"request); nothing signed")
    return Request(doc.doc_type, doc.doc_type, expected[0], payload, body_protected, summary)


def _decode_or_none(raw: bytes) -> Any:
    try:
        return cbor.decode(raw)
    except TrustfleetError:
        return None


def sign(req: Request, key: Any, signer: str | None = None) -> Signature:
    """`key`'s signature over the request's Sig_structure, with the protected header a local
    `sign` writes (alg ES256 and the optional signer name). Raises: UsageError."""
    if req.envelope == SIGN1:
        if signer is not None:
            raise UsageError("--signer: a timestamp (COSE_Sign1) has no per-signature header to "
                             "carry a name; leave it out")
        tbs = cose.sig_structure_prefix(cose.TAG_SIGN1, req.body_protected, None, b"", len(req.payload))
        protected, sig = req.body_protected, keys.sign(key, tbs + req.payload)
    else:
        if signer is not None:
            documents.check_signer(signer)
        protected, _, sig = documents._signature_entry(req.payload, req.body_protected, key, signer)
    return Signature(req.doc_type, req.sha256, keys.kid_of(key), protected, sig)


def encode_signature(s: Signature) -> bytes:
    value = {"format": SIG_FORMAT, "version": VERSION, "type": s.doc_type, "sha256": s.sha256.hex(),
             "kid": s.kid.hex(), "protected": _b64(s.protected), "signature": _b64(s.signature)}
    return (json.dumps(value, indent=2) + "\n").encode()


def read_signature(path: Path) -> Signature:
    """A signature file (its fields well formed; nothing checked against a document yet).
    Raises: UsageError, OSError."""
    value = _read_json(path, SIG_FORMAT, "signature file")
    doc_type = value.get("type")
    if doc_type not in documents.KNOWN_TYPES:
        raise UsageError(f"{path}: type {doc_type!r} is not a document type")
    return Signature(doc_type, _unhex(value.get("sha256"), f"{path}: sha256", 32),
                     _unhex(value.get("kid"), f"{path}: kid", 32),
                     _unb64(value.get("protected"), f"{path}: protected"),
                     _unb64(value.get("signature"), f"{path}: signature"))


def role_keys(root: device_docs.Root, role: str) -> dict[bytes, bytes]:
    """kid -> P-256 point of `root`'s keys for `role`."""
    return {kid: root.keys[kid] for kid in root.roles[role].kids}


def attach(raw: bytes, s: Signature, allowed: dict[bytes, bytes], who: str, where: str) -> bytes:
    """`raw` (a bare bundle or root, or a COSE_Sign of one) with the signature `s` added, exactly
    as a local `sign` adds one. `allowed` maps the kids that may sign to their points; `who` says
    whose keys they are, `where` names the signature file.

    Raises: UsageError (another document, another role's key, a signature that does not verify),
    PolicyError (this key already signed, as a local `sign` says), DecodeError.
    """
    doc = documents.read_document(raw)
    if doc.doc_type == "timestamp":
        raise UsageError("a timestamp takes its signature with `timestamp create --attach`")
    if s.doc_type != doc.doc_type or s.sha256 != hashlib.sha256(doc.payload).digest():
        raise UsageError(f"{where}: is for another document (a {s.doc_type} with sha256 "
                         f"{s.sha256.hex()[:16]}..., this {doc.doc_type}'s payload has "
                         f"{hashlib.sha256(doc.payload).hexdigest()[:16]}...); nothing written")
    if doc.message is not None and doc.message.tag != cose.TAG_SIGN:
        raise UsageError("cannot add a signature to a COSE_Sign1; sign the bare payload")
    if s.kid not in allowed:
        raise UsageError(f"{where}: key {s.kid.hex()[:16]} is not {who}; nothing written")
    if s.kid in doc.kids:
        raise PolicyError(f"key {s.kid.hex()[:8]} has already signed this document")
    body_protected = b"" if doc.message is None else doc.message.protected_raw
    signatures = ([] if doc.message is None else
                  [[x.protected_raw, x.unprotected, x.signature] for x in doc.message.signers])
    signatures.append([s.protected, {cose.HDR_KID: s.kid}, s.signature])
    signed = cbor.encode(cbor.Tag(cose.TAG_SIGN, [body_protected, {}, doc.payload, signatures]))
    _check_verifies(signed, allowed[s.kid], where)
    return signed


def attach_sign1(req: Request, s: Signature, allowed: dict[bytes, bytes], who: str,
                 where: str) -> bytes:
    """The COSE_Sign1 timestamp of request `req` signed with `s`. Raises: as attach."""
    if s.doc_type != req.doc_type or s.sha256 != req.sha256:
        raise UsageError(f"{where}: is for another document (a {s.doc_type} with sha256 "
                         f"{s.sha256.hex()[:16]}..., the request's {req.doc_type} has "
                         f"{req.sha256.hex()[:16]}...); nothing written")
    if s.kid not in allowed:
        raise UsageError(f"{where}: key {s.kid.hex()[:16]} is not {who}; nothing written")
    if s.protected != req.body_protected:
        raise UsageError(f"{where}: its protected header is not the request's; nothing written")
    signed = cbor.encode(cbor.Tag(cose.TAG_SIGN1, [req.body_protected, {cose.HDR_KID: s.kid},
                                                   req.payload, s.signature]))
    _check_verifies(signed, allowed[s.kid], where)
    return signed


def _check_verifies(signed: bytes, point: bytes, where: str) -> None:
    try:
        msg = cose.parse(signed)
        last = msg.signers[-1]
        good = last.problem is None and cose.verify_signer(msg, last, point)
    except TrustfleetError as exc:
        raise UsageError(f"{where}: unusable signature ({exc}); nothing written") from None
    if not good:
        raise UsageError(f"{where}: the signature does not verify for this document; nothing written")


def request_text(req: Request) -> str:
    """The plain-text review of a checked request."""
    info = {**req.summary, "type": req.doc_type, "signed": False, "signers": [],
            "bytes": len(req.payload), "sha256": req.sha256.hex()}
    lines = [f"signing request: a {req.role} key signs this {req.doc_type} ({req.envelope})",
             f"payload sha256 {req.sha256.hex()}",
             *(line for line in describe.render(info).splitlines() if "unsigned payload" not in line)]
    if req.doc_type == "root":  # whole kids, to compare with `key list` or the key files' kids
        lines.append("  keys:")
        for kid in req.summary["keys"]:
            roles = [name for name, role in req.summary["roles"].items() if kid in role["keys"]]
            lines.append(f"    {kid}  {', '.join(roles)}")
    return "\n".join(lines)
