"""Strict, bounded DER parser for X.509 certificates (RFC 5280), device side.

What it trusts: nothing. Certificates come from TLS servers (the leaf and
whatever intermediates they send) and from bundles; every byte is checked.

What it refuses, always as CertificateError (a DecodeError) or LimitError:
- anything that is not DER: indefinite or non-minimal lengths, high tag
  numbers, non-minimal INTEGERs, BOOLEANs other than 0x00/0xFF, trailing
  bytes after any element, elements that overrun their parent;
- certificates over MAX_CERT bytes (checked first, before any work), names
  over MAX_NAME bytes, more than MAX_SAN subjectAltName entries, DNS names
  over MAX_DNS_NAME characters, nesting deeper than MAX_DEPTH;
- a subjectAltName iPAddress that is not 4 (IPv4) or 16 (IPv6) bytes
  (RFC 5280, 4.2.1.6);
- version 2 certificates, extensions in version 1 ones, duplicate
  extensions, an outer signatureAlgorithm that differs from the one inside
  tbsCertificate (RFC 5280, 4.1.1.2), algorithm parameters other than those
  RFC 4055/5758 allow for the algorithms we know, malformed ECDSA
  signature values, impossible dates.

What it does not do: verify signatures (sigcheck), build paths, match host
names or decide anything (trust). Extensions it understands: basicConstraints,
keyUsage, subjectAltName, extKeyUsage, and the key identifiers (parsed as
opaque: they only help path building, which does not need them). Any other
critical extension is listed in `unknown_critical`; so is nameConstraints
whatever its criticality, because ignoring a constraint would widen what a
CA may sign. The caller must reject a chain with a non-empty list.

Order of work: size cap, then the outer SEQUENCE, then tbsCertificate field
by field, then the signature; dates are converted with our own civil-day
arithmetic (no datetime on MicroPython).
"""

from trustfleet_device.errors import DecodeError, LimitError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


MAX_CERT = const(16384)
MAX_NAME = const(1024)
MAX_SAN = const(100)
MAX_DNS_NAME = const(253)
MAX_DEPTH = const(8)
MAX_EXTENSIONS = const(64)
MAX_EKU = const(32)
_MAX_OID = const(64)
_MAX_SERIAL = const(32)

_SEQUENCE = const(0x30)
_SET = const(0x31)
_INTEGER = const(0x02)
_BIT_STRING = const(0x03)
_OCTET_STRING = const(0x04)
_NULL = const(0x05)
_OID = const(0x06)
_BOOLEAN = const(0x01)
_UTC_TIME = const(0x17)
_GENERALIZED_TIME = const(0x18)
_CTX0 = const(0xA0)
_CTX1_PRIM = const(0x81)
_CTX2_PRIM = const(0x82)
_CTX3 = const(0xA3)
_DNS_NAME = const(0x82)
_IP_ADDRESS = const(0x87)

OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_EXT_KEY_USAGE = "2.5.29.37"
OID_NAME_CONSTRAINTS = "2.5.29.30"
OID_SUBJECT_KEY_ID = "2.5.29.14"
OID_AUTHORITY_KEY_ID = "2.5.29.35"

OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_ECDSA_SHA384 = "1.2.840.10045.4.3.3"
OID_ECDSA_SHA512 = "1.2.840.10045.4.3.4"
OID_RSA_SHA256 = "1.2.840.113549.1.1.11"
OID_RSA_SHA384 = "1.2.840.113549.1.1.12"
OID_RSA_SHA512 = "1.2.840.113549.1.1.13"
OID_RSA_PSS = "1.2.840.113549.1.1.10"
OID_ED25519 = "1.3.101.112"

SIG_NAMES = {
    OID_ECDSA_SHA256: "ecdsa-with-SHA256",
    OID_ECDSA_SHA384: "ecdsa-with-SHA384",
    OID_ECDSA_SHA512: "ecdsa-with-SHA512",
    OID_RSA_SHA256: "sha256WithRSAEncryption",
    OID_RSA_SHA384: "sha384WithRSAEncryption",
    OID_RSA_SHA512: "sha512WithRSAEncryption",
    OID_RSA_PSS: "RSASSA-PSS",
    OID_ED25519: "Ed25519",
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
}

_ECDSA_SIGS = (OID_ECDSA_SHA256, OID_ECDSA_SHA384, OID_ECDSA_SHA512)
_RSA_PKCS1_SIGS = (OID_RSA_SHA256, OID_RSA_SHA384, OID_RSA_SHA512, "1.2.840.113549.1.1.5")

# Extensions whose meaning we apply (or that are safe to ignore when critical).
_HANDLED = (OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, OID_SUBJECT_ALT_NAME, OID_EXT_KEY_USAGE,
            OID_SUBJECT_KEY_ID, OID_AUTHORITY_KEY_ID)

_OID_CN = "2.5.4.3"
_OID_O = "2.5.4.10"


class CertificateError(DecodeError):
    """A certificate is not a well-formed DER X.509 certificate of a kind we accept."""


def sig_name(oid):
    """Return a readable name for a signature algorithm OID (the OID itself when unknown)."""
    return SIG_NAMES.get(oid, oid)


# ------------------------------------------------------------------- DER


class _Cursor:
    """Reads the DER elements inside one constructed element, in order, within [pos, end)."""

    def __init__(self, buf, pos, end, depth, where):
        if depth > MAX_DEPTH:
            raise LimitError("certificate: %s: nesting deeper than %d" % (where, MAX_DEPTH))
        self.buf = buf
        self.pos = pos
        self.end = end
        self.depth = depth
        self.where = where

    def fail(self, what):
        if self.where:
            raise CertificateError("certificate: %s: %s" % (self.where, what))
        raise CertificateError("certificate: %s" % what)

    def at_end(self):
        return self.pos >= self.end

    def peek(self):
        """Return the tag of the next element, or None at the end."""
        if self.pos >= self.end:
            return None
        return self.buf[self.pos]

    def element(self):
        """Return (tag, start, stop, header_start) of the next element and move past it."""
        buf = self.buf
        pos = self.pos
        end = self.end
        if end - pos < 2:
            self.fail("truncated element at offset %d" % pos)
        start = pos
        tag = buf[pos]
        if tag & 0x1F == 0x1F:
            self.fail("high tag number form at offset %d" % pos)
        n = buf[pos + 1]
        pos += 2
        if n < 0x80:
            length = n
        elif n == 0x81:
            if pos + 1 > end:
                self.fail("truncated length at offset %d" % start)
            length = buf[pos]
            pos += 1
            if length < 0x80:
                self.fail("non-minimal length at offset %d" % start)
        elif n == 0x82:
            if pos + 2 > end:
                self.fail("truncated length at offset %d" % start)
            length = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            if length < 0x100:
                self.fail("non-minimal length at offset %d" % start)
        elif n == 0x80:
            self.fail("indefinite length at offset %d (BER, not DER)" % start)
        else:
            raise LimitError("certificate: %s: length field of %d bytes at offset %d"
                             % (self.where, n & 0x7F, start))
        if length > end - pos:
            self.fail("element at offset %d overruns its container (%d bytes, %d left)"
                      % (start, length, end - pos))
        self.pos = pos + length
        return tag, pos, pos + length, start

    def expect(self, tag, what):
        """Return element() of the next element, which must be there and have this tag."""
        got = self.peek()
        if got is None:
            self.fail("missing %s" % what)
        if got != tag:
            self.fail("%s: expected tag 0x%02x, got 0x%02x" % (what, tag, got))
        return self.element()

    def take(self, tag, what):
        """Return (start, stop) of the next element's content, which must have this tag."""
        _, start, stop, _ = self.expect(tag, what)
        return start, stop

    def take_raw(self, tag, what):
        """Like take, but return (header_start, stop): the whole element."""
        _, _, stop, head = self.expect(tag, what)
        return head, stop

    def enter(self, tag, what):
        """Return a cursor over the content of the next element, which must have this tag."""
        start, stop = self.take(tag, what)
        where = self.where + "." + what if self.where else what
        return _Cursor(self.buf, start, stop, self.depth + 1, where)

    def done(self):
        if self.pos != self.end:
            self.fail("%d unexpected trailing bytes" % (self.end - self.pos))

    # -- primitives

    def integer(self, what, max_len):
        """Return the content bytes of a minimal DER INTEGER of at most max_len bytes."""
        start, stop = self.take(_INTEGER, what)
        buf = self.buf
        n = stop - start
        if n == 0:
            self.fail("%s: empty INTEGER" % what)
        if n > max_len:
            raise LimitError("certificate: %s: %s is %d bytes, limit is %d"
                             % (self.where, what, n, max_len))
        if n > 1:
            b0 = buf[start]
            b1 = buf[start + 1]
            if (b0 == 0 and b1 < 0x80) or (b0 == 0xFF and b1 >= 0x80):
                self.fail("%s: non-minimal INTEGER" % what)
        return bytes(buf[start:stop])

    def small_uint(self, what):
        """Return a non-negative INTEGER below 2^31."""
        raw = self.integer(what, 4)
        if raw[0] & 0x80:
            self.fail("%s: negative" % what)
        return int.from_bytes(raw, "big")

    def boolean(self, what):
        start, stop = self.take(_BOOLEAN, what)
        if stop - start != 1:
            self.fail("%s: BOOLEAN of %d bytes" % (what, stop - start))
        v = self.buf[start]
        if v == 0xFF:
            return True
        if v == 0:
            return False
        self.fail("%s: BOOLEAN 0x%02x is not DER (0x00 or 0xff)" % (what, v))

    def oid(self, what):
        start, stop = self.take(_OID, what)
        return _oid_text(self, self.buf, start, stop, what)

    def bit_string(self, what, whole_bytes):
        """Return (unused_bits, content bytes without the leading count)."""
        start, stop = self.take(_BIT_STRING, what)
        if stop == start:
            self.fail("%s: empty BIT STRING" % what)
        unused = self.buf[start]
        if unused > 7 or (unused and stop - start == 1):
            self.fail("%s: bad unused-bit count %d" % (what, unused))
        if whole_bytes and unused:
            self.fail("%s: %d unused bits, expected whole bytes" % (what, unused))
        return unused, bytes(self.buf[start + 1:stop])


def _oid_text(cur, buf, start, stop, what):
    """Return the dotted text of OID content buf[start:stop]."""
    n = stop - start
    if n == 0:
        cur.fail("%s: empty OID" % what)
    if n > _MAX_OID:
        raise LimitError("certificate: %s: OID of %d bytes, limit is %d" % (cur.where, n, _MAX_OID))
    arcs = []
    value = 0
    fresh = True
    for i in range(start, stop):
        b = buf[i]
        if fresh and b == 0x80:
            cur.fail("%s: non-minimal OID arc" % what)
        value = (value << 7) | (b & 0x7F)
        fresh = not (b & 0x80)
        if fresh:
            arcs.append(value)
            value = 0
    if not fresh:
        cur.fail("%s: truncated OID" % what)
    first = arcs[0]
    if first < 40:
        head = "0.%d" % first
    elif first < 80:
        head = "1.%d" % (first - 40)
    else:
        head = "2.%d" % (first - 80)
    parts = [head]
    for a in arcs[1:]:
        parts.append("%d" % a)
    return ".".join(parts)


# ------------------------------------------------------------------- time


def _is_leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def days_from_civil(y, m, d):
    """Return days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z):
    """Return (year, month, day) for days since 1970-01-01; inverse of days_from_civil."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400
    if m <= 2:
        y += 1
    return y, m, d


def format_time(epoch):
    """Return epoch seconds as an ISO 8601 UTC string, e.g. 2026-01-01T00:00:00Z."""
    days, secs = divmod(epoch, 86400)
    y, m, d = civil_from_days(days)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, secs // 3600, secs // 60 % 60, secs % 60)


def _digits(cur, buf, start, n, what):
    v = 0
    for i in range(start, start + n):
        c = buf[i]
        if c < 0x30 or c > 0x39:
            cur.fail("%s: non-digit in time" % what)
        v = v * 10 + c - 0x30
    return v


def _time(cur, what):
    """Read UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ); return epoch seconds."""
    tag = cur.peek()
    if tag == _UTC_TIME:
        start, stop = cur.take(_UTC_TIME, what)
        if stop - start != 13:
            cur.fail("%s: UTCTime must be YYMMDDHHMMSSZ" % what)
        y = _digits(cur, cur.buf, start, 2, what)
        # RFC 5280, 4.1.2.5.1: YY >= 50 is 19YY, otherwise 20YY.
        y += 1900 if y >= 50 else 2000
        pos = start + 2
    elif tag == _GENERALIZED_TIME:
        start, stop = cur.take(_GENERALIZED_TIME, what)
        if stop - start != 15:
            cur.fail("%s: GeneralizedTime must be YYYYMMDDHHMMSSZ" % what)
        y = _digits(cur, cur.buf, start, 4, what)
        pos = start + 4
    else:
        cur.fail("%s: expected UTCTime or GeneralizedTime" % what)
    buf = cur.buf
    if buf[stop - 1] != 0x5A:  # "Z"
        cur.fail("%s: time is not in UTC (no trailing Z)" % what)
    mo = _digits(cur, buf, pos, 2, what)
    d = _digits(cur, buf, pos + 2, 2, what)
    h = _digits(cur, buf, pos + 4, 2, what)
    mi = _digits(cur, buf, pos + 6, 2, what)
    s = _digits(cur, buf, pos + 8, 2, what)
    if mo < 1 or mo > 12:
        cur.fail("%s: month %d" % (what, mo))
    dim = _MONTH_DAYS[mo - 1] + (1 if mo == 2 and _is_leap(y) else 0)
    if d < 1 or d > dim or h > 23 or mi > 59 or s > 59:
        cur.fail("%s: impossible date or time" % what)
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


# ------------------------------------------------------------------- names


def _name(cur, what, non_empty):
    """Check a Name's structure and return its raw DER (header included)."""
    head, stop = cur.take_raw(_SEQUENCE, what)
    if stop - head > MAX_NAME:
        raise LimitError("certificate: %s: %s is %d bytes, limit is %d"
                         % (cur.where, what, stop - head, MAX_NAME))
    # Re-read it as a cursor to check RDNSequence -> SET -> AttributeTypeAndValue.
    inner = _Cursor(cur.buf, head, stop, cur.depth + 1, cur.where)
    rdns = inner.enter(_SEQUENCE, what)
    if non_empty and rdns.at_end():
        rdns.fail("empty name")
    while not rdns.at_end():
        rdn = rdns.enter(_SET, "RDN")
        if rdn.at_end():
            rdn.fail("empty RDN")
        while not rdn.at_end():
            atv = rdn.enter(_SEQUENCE, "attribute")
            atv.oid("attribute type")
            if atv.at_end():
                atv.fail("attribute without a value")
            atv.element()
            atv.done()
    return bytes(cur.buf[head:stop])


def name_label(name_der):
    """Return a short label for a Name: its first CN, else its first O, else "". Never raises."""
    try:
        return _name_label(name_der)
    except DecodeError:
        return ""


def _name_label(name_der):
    buf = bytes(name_der)
    top = _Cursor(buf, 0, len(buf), 0, "name")
    rdns = top.enter(_SEQUENCE, "name")
    found = {}
    while not rdns.at_end():
        rdn = rdns.enter(_SET, "RDN")
        while not rdn.at_end():
            atv = rdn.enter(_SEQUENCE, "attribute")
            oid = atv.oid("type")
            _, start, stop, _ = atv.element()
            if (oid == _OID_CN or oid == _OID_O) and oid not in found:
                found[oid] = _printable(buf[start:stop])
    if _OID_CN in found:
        return found[_OID_CN]
    return found.get(_OID_O, "")


def _printable(raw):
    """Return raw bytes as text, with anything outside printable ASCII shown as '?'."""
    out = []
    for b in raw[:64]:
        out.append(chr(b) if 0x20 <= b < 0x7F else "?")
    return "".join(out)


# ------------------------------------------------------------- extensions


def _ext_basic_constraints(cert, cur):
    seq = cur.enter(_SEQUENCE, "basicConstraints")
    is_ca = False
    path_len = None
    if seq.peek() == _BOOLEAN:
        is_ca = seq.boolean("cA")
    if seq.peek() == _INTEGER:
        path_len = seq.small_uint("pathLenConstraint")
    seq.done()
    cert.is_ca = is_ca
    # RFC 5280, 4.2.1.9: pathLenConstraint means nothing unless cA is set.
    cert.path_len = path_len if is_ca else None


def _ext_key_usage(cert, cur):
    _, bits = cur.bit_string("keyUsage", False)
    # keyCertSign is bit 5 (RFC 5280, 4.2.1.3), in the first byte.
    cert.key_cert_sign = bool(bits) and bool(bits[0] & 0x04)


def _ext_subject_alt_name(cert, cur):
    seq = cur.enter(_SEQUENCE, "subjectAltName")
    if seq.at_end():
        seq.fail("empty GeneralNames")
    names = []
    ips = []
    count = 0
    while not seq.at_end():
        count += 1
        if count > MAX_SAN:
            raise LimitError("certificate: subjectAltName has more than %d entries" % MAX_SAN)
        tag, start, stop, _ = seq.element()
        if tag & 0xC0 != 0x80 or tag & 0x1F > 8:
            seq.fail("GeneralName with tag 0x%02x" % tag)
        n = stop - start
        if tag == _IP_ADDRESS:
            if n != 4 and n != 16:
                seq.fail("iPAddress of %d bytes (4 for IPv4, 16 for IPv6)" % n)
            ips.append(bytes(seq.buf[start:stop]))
            continue
        if tag != _DNS_NAME:
            continue
        if n == 0 or n > MAX_DNS_NAME:
            seq.fail("dNSName of %d characters (1..%d)" % (n, MAX_DNS_NAME))
        buf = seq.buf
        for i in range(start, stop):
            c = buf[i]
            if c <= 0x20 or c >= 0x7F:
                seq.fail("dNSName holds a byte 0x%02x outside printable ASCII" % c)
        names.append(bytes(buf[start:stop]).decode())
    cert.dns_names = names
    cert.ip_addresses = ips


def _ext_ext_key_usage(cert, cur):
    seq = cur.enter(_SEQUENCE, "extKeyUsage")
    usages = []
    while not seq.at_end():
        if len(usages) >= MAX_EKU:
            raise LimitError("certificate: extKeyUsage has more than %d entries" % MAX_EKU)
        usages.append(seq.oid("KeyPurposeId"))
    if not usages:
        seq.fail("empty extKeyUsage")
    cert.ext_key_usage = usages


_EXTENSION_PARSERS = {
    OID_BASIC_CONSTRAINTS: _ext_basic_constraints,
    OID_KEY_USAGE: _ext_key_usage,
    OID_SUBJECT_ALT_NAME: _ext_subject_alt_name,
    OID_EXT_KEY_USAGE: _ext_ext_key_usage,
}


def _extensions(cert, tbs):
    outer = tbs.enter(_CTX3, "extensions")
    seq = outer.enter(_SEQUENCE, "Extensions")
    outer.done()
    if seq.at_end():
        seq.fail("empty extensions")
    seen = []
    while not seq.at_end():
        if len(seen) >= MAX_EXTENSIONS:
            raise LimitError("certificate: more than %d extensions" % MAX_EXTENSIONS)
        ext = seq.enter(_SEQUENCE, "Extension")
        oid = ext.oid("extnID")
        critical = False
        if ext.peek() == _BOOLEAN:
            critical = ext.boolean("critical")
        start, stop = ext.take(_OCTET_STRING, "extnValue")
        ext.done()
        if oid in seen:
            seq.fail("extension %s appears twice" % oid)
        seen.append(oid)
        parser = _EXTENSION_PARSERS.get(oid)
        if parser is not None:
            value = _Cursor(seq.buf, start, stop, seq.depth + 1, "extension " + oid)
            parser(cert, value)
            value.done()
        elif oid == OID_NAME_CONSTRAINTS or (critical and oid not in _HANDLED):
            cert.unknown_critical.append(oid)


# ------------------------------------------------------------ algorithms


def _algorithm(cur, what):
    """Read an AlgorithmIdentifier; return (oid, raw parameters or b"", whole element DER)."""
    head, stop = cur.take_raw(_SEQUENCE, what)
    inner = _Cursor(cur.buf, head, stop, cur.depth, cur.where)
    alg = inner.enter(_SEQUENCE, what)
    oid = alg.oid("algorithm")
    params = b""
    if not alg.at_end():
        _, _, pstop, phead = alg.element()
        params = bytes(cur.buf[phead:pstop])
    alg.done()
    return oid, params, bytes(cur.buf[head:stop])


def _check_sig_params(cur, oid, params):
    # RFC 5758, 3.2: ECDSA parameters are absent. RFC 4055, 5: PKCS#1 v1.5
    # parameters are NULL, and implementations accept them absent too.
    if oid in _ECDSA_SIGS and params:
        cur.fail("%s: parameters must be absent" % sig_name(oid))
    if oid in _RSA_PKCS1_SIGS and params and params != b"\x05\x00":
        cur.fail("%s: parameters must be NULL" % sig_name(oid))
    if oid == OID_ED25519 and params:
        cur.fail("Ed25519: parameters must be absent")


def _ecdsa_raw(cur, der):
    """Return r||s for a DER Ecdsa-Sig-Value, each padded to 32, 48 or 66 bytes."""
    top = _Cursor(der, 0, len(der), cur.depth + 1, "Certificate.signatureValue")
    seq = top.enter(_SEQUENCE, "Ecdsa-Sig-Value")
    top.done()
    r = seq.integer("r", 67)
    s = seq.integer("s", 67)
    seq.done()
    if r[0] & 0x80 or s[0] & 0x80:
        seq.fail("negative r or s")
    if r[0] == 0:
        r = r[1:]
    if s[0] == 0:
        s = s[1:]
    longest = max(len(r), len(s))
    width = 32 if longest <= 32 else (48 if longest <= 48 else 66)
    if longest > width:
        seq.fail("r or s longer than 66 bytes")
    return b"\x00" * (width - len(r)) + r + b"\x00" * (width - len(s)) + s


# ------------------------------------------------------------ certificate


class Certificate:
    """A parsed certificate. Byte fields are exactly as received (compare them bytewise).

    der: the whole certificate. tbs: tbsCertificate, header included (what is signed).
    sig_alg: signature algorithm OID (dotted). sig_params: its raw parameters (b"" if absent).
    signature: for ECDSA raw r||s (32, 48 or 66 bytes each), else the BIT STRING bytes.
    signature_der: the BIT STRING bytes as signed (the DER Ecdsa-Sig-Value for ECDSA).
    issuer, subject: raw Name DER. not_before, not_after: epoch seconds (UTC).
    spki: raw SubjectPublicKeyInfo DER; spki_alg: its algorithm OID.
    version: 1 or 3. serial: INTEGER content bytes.
    is_ca, path_len: basicConstraints (False/None if absent).
    key_cert_sign: keyUsage keyCertSign bit, None if there is no keyUsage.
    dns_names: subjectAltName dNSName entries as text.
    ip_addresses: subjectAltName iPAddress entries, 4 or 16 bytes each.
    ext_key_usage: OIDs or None.
    unknown_critical: OIDs of critical extensions we do not implement, and nameConstraints.
    """

    def __init__(self, der):
        self.der = der
        self.tbs = b""
        self.sig_alg = ""
        self.sig_params = b""
        self.signature = b""
        self.signature_der = b""
        self.issuer = b""
        self.subject = b""
        self.not_before = 0
        self.not_after = 0
        self.spki = b""
        self.spki_alg = ""
        self.version = 1
        self.serial = b""
        self.is_ca = False
        self.path_len = None
        self.key_cert_sign = None
        self.dns_names = []
        self.ip_addresses = []
        self.ext_key_usage = None
        self.unknown_critical = []

    def label(self):
        """Return the subject's CN (or O) for messages."""
        return name_label(self.subject)


def parse(der):
    """Parse one DER certificate.

    Raises:
        CertificateError: the bytes are not a certificate we accept (a DecodeError).
        LimitError: a hard cap is exceeded.
    """
    if not isinstance(der, (bytes, bytearray)):
        raise CertificateError("certificate: expected bytes, got %s" % type(der).__name__)
    if len(der) > MAX_CERT:
        raise LimitError("certificate: %d bytes, limit is %d" % (len(der), MAX_CERT))
    if type(der) is not bytes:
        der = bytes(der)
    cert = Certificate(der)
    top = _Cursor(der, 0, len(der), 0, "")
    outer = top.enter(_SEQUENCE, "Certificate")
    top.done()
    tbs_head, tbs_stop = outer.take_raw(_SEQUENCE, "tbsCertificate")
    cert.tbs = der[tbs_head:tbs_stop]
    sig_oid, sig_params, sig_alg_der = _algorithm(outer, "signatureAlgorithm")
    _, sig_bits = outer.bit_string("signatureValue", True)
    outer.done()

    wrap = _Cursor(der, tbs_head, tbs_stop, 1, "Certificate")
    tbs = wrap.enter(_SEQUENCE, "tbsCertificate")
    wrap.done()
    _parse_tbs(cert, tbs, sig_alg_der)

    _check_sig_params(outer, sig_oid, sig_params)
    cert.sig_alg = sig_oid
    cert.sig_params = sig_params
    cert.signature_der = sig_bits
    if sig_oid in _ECDSA_SIGS:
        cert.signature = _ecdsa_raw(outer, sig_bits)
    else:
        cert.signature = sig_bits
    return cert


def _parse_tbs(cert, tbs, sig_alg_der):
    if tbs.peek() == _CTX0:
        ver = tbs.enter(_CTX0, "version")
        v = ver.small_uint("version")
        ver.done()
        if v != 2:
            # v1 is encoded by leaving the field out (DER DEFAULT); v2 we refuse.
            tbs.fail("version %d is not supported (only v1 and v3)" % (v + 1))
        cert.version = 3
    cert.serial = tbs.integer("serialNumber", _MAX_SERIAL)
    _, _, inner_alg = _algorithm(tbs, "signature")
    if inner_alg != sig_alg_der:
        tbs.fail("signature algorithm differs from the outer signatureAlgorithm")
    cert.issuer = _name(tbs, "issuer", True)
    validity = tbs.enter(_SEQUENCE, "validity")
    cert.not_before = _time(validity, "notBefore")
    cert.not_after = _time(validity, "notAfter")
    validity.done()
    cert.subject = _name(tbs, "subject", False)
    spki_head, spki_stop = tbs.take_raw(_SEQUENCE, "subjectPublicKeyInfo")
    cert.spki = bytes(tbs.buf[spki_head:spki_stop])
    spki = _Cursor(tbs.buf, spki_head, spki_stop, tbs.depth, tbs.where)
    key = spki.enter(_SEQUENCE, "subjectPublicKeyInfo")
    spki.done()
    cert.spki_alg, _, _ = _algorithm(key, "algorithm")
    key.bit_string("subjectPublicKey", True)
    key.done()
    # issuerUniqueID [1] and subjectUniqueID [2] (RFC 5280, 4.1.2.8): read past them.
    if tbs.peek() == _CTX1_PRIM or tbs.peek() == 0xA1:
        if cert.version != 3:
            tbs.fail("unique identifiers in a v1 certificate")
        tbs.element()
    if tbs.peek() == _CTX2_PRIM or tbs.peek() == 0xA2:
        if cert.version != 3:
            tbs.fail("unique identifiers in a v1 certificate")
        tbs.element()
    if tbs.peek() == _CTX3:
        if cert.version != 3:
            tbs.fail("extensions in a v1 certificate")
        _extensions(cert, tbs)
    tbs.done()
