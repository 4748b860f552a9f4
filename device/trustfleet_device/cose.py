"""COSE_Sign (tag 98) and COSE_Sign1 (tag 18) parsing and ES256 checks (RFC 9052).

Trusts nothing: the envelope is decoded strictly (see cbor), every header
map is checked, and signatures are checked over the Sig_structure built
from the protected-header bytes exactly as received (RFC 9052 section 4.4),
never over a re-encoding of the decoded headers.

The one normalisation is RFC 9052 section 4.4's: when a protected bucket
holds no attributes (the empty map h'A0'), the Sig_structure carries a
zero-length string, as it does for h''. Both mean "nothing protected".

Order of work:
1. parse(): decode the envelope, check its shape, decode the protected
   headers. Problems with the message as a whole (wrong tag, bad shape,
   unknown critical header in the body) raise DecodeError. Problems with
   one signer (unsupported algorithm, its own unknown critical header,
   malformed kid) are recorded on that Signer as `problem`, so one bad
   signer cannot veto a threshold that the others meet.
2. verify_signer(): ECDSA P-256 over SHA-256(Sig_structure).

Deciding which signers count, and how many are needed, is policy's job.
"""

import hashlib

from trustfleet_device import cbor, p256
from trustfleet_device.errors import DecodeError, LimitError
from trustfleet_device.limits import DEFAULT

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

TAG_SIGN = const(98)
TAG_SIGN1 = const(18)

ALG_ES256 = const(-7)

HDR_ALG = const(1)
HDR_CRIT = const(2)
HDR_CONTENT_TYPE = const(3)
HDR_KID = const(4)

# Labels whose meaning we implement; a `crit` naming anything else is refused.
UNDERSTOOD = (HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID)


class Signer:
    """One signature with its headers. `problem` is None or why it cannot count."""

    def __init__(self, protected_raw, protected, unprotected, signature):
        self.protected_raw = protected_raw
        self.protected = protected
        self.unprotected = unprotected
        self.signature = signature
        self.alg = None
        self.kid = None
        self.problem = None


class Message:
    """A parsed COSE_Sign or COSE_Sign1. The payload is still unverified.

    `unverified_payload` holds the payload bytes, or None when the message
    was parsed from a source; then `payload_offset` and
    `payload_length` locate it in `source`.
    """

    def __init__(self, tag, protected_raw, protected, unprotected, payload, signers):
        self.tag = tag
        self.protected_raw = protected_raw
        self.protected = protected
        self.unprotected = unprotected
        self.signers = signers
        if type(payload) is PayloadRef:
            self.unverified_payload = None
            self.source = payload.source
            self.payload_offset = payload.offset
            self.payload_length = payload.length
        else:
            self.unverified_payload = payload
            self.source = None
            self.payload_offset = 0
            self.payload_length = len(payload)


class PayloadRef:
    """Where a payload lies in a source, when it was not read into memory."""

    def __init__(self, source, offset, length):
        self.source = source
        self.offset = offset
        self.length = length


PROTECTED_ES256 = b"\xa1\x01\x26"  # {1: -7}, what every trustfleet signer writes


def _header_map(raw, limits, where):
    # RFC 9052 section 3: an empty protected bucket is the zero-length string,
    # and a non-empty one must hold a map.
    if len(raw) == 0:
        return {}
    if raw == PROTECTED_ES256:
        return {HDR_ALG: ALG_ES256}
    value = cbor.decode(raw, limits)
    if type(value) is not dict:
        raise DecodeError("%s protected header is not a map" % where)
    return value


def _check_buckets(protected, unprotected, where):
    if type(unprotected) is not dict:
        raise DecodeError("%s unprotected header is not a map" % where)
    for label in unprotected:
        if label in protected:
            raise DecodeError("%s header label %r is in both buckets" % (where, label))
    if HDR_CRIT in unprotected:
        raise DecodeError("%s crit header must be protected" % where)


def _crit_problem(protected):
    """Return why the crit header is unacceptable, or None (RFC 9052 section 3.1)."""
    if HDR_CRIT not in protected:
        return None
    crit = protected[HDR_CRIT]
    if type(crit) is not list or not crit:
        return "crit header is not a non-empty array"
    for label in crit:
        if label not in UNDERSTOOD:
            return "unknown critical header %r" % (label,)
        if label not in protected:
            return "critical header %r is not in the protected bucket" % (label,)
    return None


def _signer_headers(signer, require_protected_alg):
    """Fill signer.alg/kid or set signer.problem."""
    problem = _crit_problem(signer.protected)
    if problem:
        signer.problem = problem
        return
    alg = signer.protected.get(HDR_ALG)
    if alg is None and not require_protected_alg:
        alg = signer.unprotected.get(HDR_ALG)
    if alg is None:
        signer.problem = "no protected alg header"
        return
    signer.alg = alg
    if alg != ALG_ES256 or type(alg) is not int:
        signer.problem = "unsupported algorithm %r (only ES256, -7)" % (alg,)
        return
    kid = signer.protected.get(HDR_KID, signer.unprotected.get(HDR_KID))
    if kid is not None and type(kid) is not bytes:
        signer.problem = "kid is not a byte string"
        return
    signer.kid = kid
    if type(signer.signature) is not bytes or len(signer.signature) != 64:
        signer.problem = "ES256 signature is not 64 bytes"


def _expect_array(value, n, where):
    if type(value) is not list or len(value) != n:
        raise DecodeError("%s is not an array of %d items" % (where, n))
    return value


def parse(raw, limits=DEFAULT, untagged=None, require_protected_alg=True):
    """Parse a COSE_Sign or COSE_Sign1 message, given as bytes or as a source. Raises: DecodeError.

    From a source (an object with `size` and `read_at`) the payload is
    located, not read: Message.unverified_payload is None and verification
    streams it through SHA-256 (tbs_digest). The checks are the same.
    untagged: None to require the tag (trustfleet documents), or TAG_SIGN /
    TAG_SIGN1 to accept that structure without its tag (RFC 9052 section 2
    leaves tagging to the application; the COSE WG examples use both);
    bytes only, a source must be tagged.
    """
    if hasattr(raw, "read_at"):
        return _parse_source(raw, limits, require_protected_alg)
    value = cbor.decode(raw, limits.envelope(), (TAG_SIGN, TAG_SIGN1))
    if isinstance(value, cbor.Tag):
        tag = value.number
        value = value.value
    elif untagged is not None:
        tag = untagged
    elif type(value) is dict:
        raise DecodeError(_BARE)
    else:
        raise DecodeError(_UNTAGGED)
    where = "COSE_Sign" if tag == TAG_SIGN else "COSE_Sign1"
    _expect_array(value, 4, where)
    return _message(tag, value, limits, require_protected_alg)


_BARE = "not signed: a bare payload, not a COSE_Sign (98) or COSE_Sign1 (18) message"
_UNTAGGED = "not a tagged COSE_Sign (98) or COSE_Sign1 (18) message"


def _parse_source(source, limits, require_protected_alg):
    if source.size > limits.max_document:
        raise LimitError("document is %d bytes, limit is %d" % (source.size, limits.max_document))
    env = limits.envelope()
    d = cbor.StreamDecoder(source, 0, source.size, env)
    major, tag = d.head()
    if major != 6 or (tag != TAG_SIGN and tag != TAG_SIGN1):
        raise DecodeError(_BARE if major == 5 else _UNTAGGED)
    where = "COSE_Sign" if tag == TAG_SIGN else "COSE_Sign1"
    major, n = d.head()
    if major != 4 or n != 4:
        raise DecodeError("%s is not an array of 4 items" % where)
    protected_raw = d.item(2)
    unprotected = d.item(2)
    major, length = d.head()
    if major != 2:
        raise DecodeError("%s payload is not an attached byte string" % where)
    if length > d.remaining():
        raise DecodeError("truncated input: payload of %d bytes at offset %d" % (length, d.tell()))
    payload = PayloadRef(source, d.tell(), length)
    d.skip(length)
    last = d.item(2)
    if d.remaining():
        raise DecodeError("%d trailing bytes after the data item" % d.remaining())
    return _message(tag, [protected_raw, unprotected, payload, last], limits, require_protected_alg)


def _message(tag, value, limits, require_protected_alg):
    where = "COSE_Sign" if tag == TAG_SIGN else "COSE_Sign1"
    protected_raw, unprotected, payload, last = value
    if type(protected_raw) is not bytes:
        raise DecodeError("%s protected header is not a byte string" % where)
    if type(payload) is not bytes and type(payload) is not PayloadRef:
        # nil would be a detached payload, which trustfleet never uses.
        raise DecodeError("%s payload is not an attached byte string" % where)
    protected = _header_map(protected_raw, limits, where)
    _check_buckets(protected, unprotected, where)
    if tag == TAG_SIGN1:
        signer = Signer(protected_raw, protected, unprotected, last)
        _signer_headers(signer, require_protected_alg)
        signers = [signer]
    else:
        problem = _crit_problem(protected)
        if problem:
            raise DecodeError("COSE_Sign body: " + problem)
        signers = _parse_signers(last, limits, require_protected_alg)
    return Message(tag, protected_raw, protected, unprotected, payload, signers)


def _parse_signers(value, limits, require_protected_alg):
    if type(value) is not list or not value:
        raise DecodeError("COSE_Sign signatures is not a non-empty array")
    if len(value) > limits.max_signatures:
        raise LimitError("%d signatures, limit is %d" % (len(value), limits.max_signatures))
    signers = []
    for entry in value:
        signers.append(_parse_signer(entry, limits, require_protected_alg))
    return signers


def _parse_signer(entry, limits, require_protected_alg):
    """One COSE_Signature. Anything wrong with it makes it not count; it never vetoes the others."""
    if type(entry) is not list or len(entry) != 3:
        signer = Signer(b"", {}, {}, None)
        signer.problem = "COSE_Signature is not an array of 3 items"
        return signer
    protected_raw, unprotected, signature = entry
    signer = Signer(protected_raw, {}, {}, signature)
    try:
        if type(protected_raw) is not bytes:
            raise DecodeError("protected header is not a byte string")
        signer.protected = _header_map(protected_raw, limits, "COSE_Signature")
        _check_buckets(signer.protected, unprotected, "COSE_Signature")
        signer.unprotected = unprotected
    except DecodeError as exc:
        signer.problem = str(exc)
        return signer
    _signer_headers(signer, require_protected_alg)
    return signer


def _sig_bucket(raw):
    # RFC 9052 section 4.4: "If there are no protected attributes, a
    # zero-length byte string is used." h'A0' is the only empty map we accept.
    return b"" if raw == b"\xa0" else raw


def sig_structure_prefix(tag, body_protected, sign_protected, external_aad, payload_length):
    """The Sig_structure (RFC 9052 section 4.4) up to and including the payload's string head.

    The one builder for signing (server) and verifying (device); sign_protected
    is ignored for COSE_Sign1. The payload comes last in both structures, so
    a device can hash this prefix and then stream the payload from flash.
    """
    body = _sig_bucket(body_protected)
    if tag == TAG_SIGN:
        sign = _sig_bucket(sign_protected)
        parts = (_SIGN_CONTEXT, cbor.head(2, len(body)), body, cbor.head(2, len(sign)), sign)
    else:
        parts = (_SIGN1_CONTEXT, cbor.head(2, len(body)), body)
    return b"".join(parts) + cbor.head(2, len(external_aad)) + external_aad + cbor.head(2, payload_length)


# The Sig_structure's array head and context string, encoded once.
_SIGN_CONTEXT = b"\x85\x69Signature"
_SIGN1_CONTEXT = b"\x84\x6aSignature1"


def tbs_prefix(msg, signer, external_aad=b""):
    """The Sig_structure prefix for one signer of a parsed message (see sig_structure_prefix)."""
    return sig_structure_prefix(msg.tag, msg.protected_raw, signer.protected_raw, external_aad,
                                msg.payload_length)


_CHUNK = const(1024)


def tbs_digest(msg, signer, external_aad=b""):
    """SHA-256 of the Sig_structure for `signer` (RFC 9052 section 4.4), streaming the payload if needed."""
    h = hashlib.sha256(tbs_prefix(msg, signer, external_aad))
    if msg.unverified_payload is not None:
        h.update(msg.unverified_payload)
        return h.digest()
    offset = msg.payload_offset
    stop = offset + msg.payload_length
    while offset < stop:
        n = stop - offset if stop - offset < _CHUNK else _CHUNK
        chunk = msg.source.read_at(offset, n)
        if len(chunk) != n:
            raise DecodeError("source ended early at offset %d" % offset)
        h.update(chunk)
        offset += n
    return h.digest()


def verify_signer(msg, signer, point, external_aad=b""):
    """True when signer's ES256 signature is valid under the 65-byte P-256 point. Raises: DecodeError (bad key)."""
    if signer.problem is not None:
        return False
    return p256.verify_digest(point, tbs_digest(msg, signer, external_aad), signer.signature)
