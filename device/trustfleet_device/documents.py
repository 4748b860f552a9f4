"""Turn verified payloads into plain objects: Root, Bundle, Timestamp.

Only call these on payload bytes whose signatures policy has already
checked. They still trust nothing about the shape: every field is
type-checked and bounded, unknown fields are refused by name, and every
failure is a DecodeError (or LimitError) whose message names the field.
The schema is docs/format.md (CDDL); keep the two in step.
"""

import hashlib

from trustfleet_device import cbor
from trustfleet_device.errors import DecodeError, LimitError, PolicyError
from trustfleet_device.limits import DEFAULT

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

SPEC = const(1)
MAX_FLEET_ID = const(64)
MAX_DOMAIN = const(253)
MAX_LABEL = const(128)
MAX_REPORT_URIS = const(4)
MAX_URI = const(512)
# The highest bundle or root version: a small int on a 32-bit MicroPython; at one
# bundle a minute it lasts 2,000 years. A version at the top could never be followed,
# so a builder refuses to get near it and a device refuses anything above it.
MAX_VERSION = const(0x3FFFFFFF)
# How far a timestamp (signed by the online key) may move trusted time past the newest
# time the offline keys vouch for: the root's policy.max_time_lead, else this.
DEFAULT_TIME_LEAD = const(30 * 86400)
MIN_TIME_LEAD = const(3600)
MAX_TIME_LEAD = const(400 * 86400)

ROLES = ("root", "bundle", "timestamp")
MODES = ("enforce", "report")

_DNS_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-."

ROOT_FIELDS = ("type", "spec", "fleet", "version", "expires", "keys", "roles", "policy")
ROOT_POLICY_FIELDS = ("max_time_lead",)
BUNDLE_FIELDS = ("type", "spec", "fleet", "version", "issued_at", "expires_at",
                 "anchors", "pinsets", "distrust", "policy")
PINSET_FIELDS = ("domain", "subdomains", "pins", "expires", "mode", "report_to",
                 "allow_single_pin")
POLICY_FIELDS = ("user_anchors", "max_timestamp_age")
TIMESTAMP_FIELDS = ("type", "spec", "fleet", "time", "bundle_version", "bundle_sha256")


class Fields:
    """Reads one CBOR map field by field; done() refuses leftovers by name."""

    def __init__(self, value, where, known):
        if type(value) is not dict:
            raise DecodeError("%s: expected a map" % where)
        self.value = value
        self.where = where
        self.known = known
        self.seen = 0

    def _get(self, key, optional):
        if key not in self.value:
            if optional:
                return None
            raise DecodeError("%s: missing field %r" % (self.where, key))
        self.seen += 1
        return self.value[key]

    def _fail(self, key, expected):
        raise DecodeError("%s.%s: expected %s" % (self.where, key, expected))

    def uint(self, key, optional=False):
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if type(v) is not int or v < 0:
            self._fail(key, "an unsigned integer")
        return v

    def text(self, key, max_len, optional=False):
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if type(v) is not str:
            self._fail(key, "a text string")
        if len(v) > max_len:
            raise LimitError("%s.%s: %d characters, limit is %d" % (self.where, key, len(v), max_len))
        return v

    def boolean(self, key, optional=False):
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if v is not True and v is not False:
            self._fail(key, "true or false")
        return v

    def array(self, key, max_len, optional=False):
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if type(v) is not list:
            self._fail(key, "an array")
        if len(v) > max_len:
            raise LimitError("%s.%s: %d entries, limit is %d" % (self.where, key, len(v), max_len))
        return v

    def version(self):
        """The document's "version": 1..MAX_VERSION."""
        v = self.uint("version")
        if v < 1 or v > MAX_VERSION:
            raise DecodeError("%s.version: %d is not in 1..%d" % (self.where, v, MAX_VERSION))
        return v

    def raw(self, key, optional=False):
        return self._get(key, optional)

    def done(self):
        """Refuse any field the schema does not name. Raises: DecodeError."""
        if self.seen == len(self.value):
            return
        for key in self.value:
            if key not in self.known:
                raise DecodeError("%s: unknown field %r" % (self.where, key))


def _digest32(v, where):
    if type(v) is not bytes or len(v) != 32:
        raise DecodeError("%s: expected a 32-byte SHA-256 value" % where)
    return v


def _header(f, kind, fleet):
    doc_type = f.text("type", 16)
    if doc_type != kind:
        raise DecodeError("%s: document type is %r, expected %r" % (f.where, doc_type, kind))
    spec = f.uint("spec")
    if spec != SPEC:
        raise DecodeError("%s: format version %d is not supported (this agent reads %d)"
                          % (f.where, spec, SPEC))
    got = f.text("fleet", MAX_FLEET_ID)
    if fleet is not None and got != fleet:
        raise PolicyError("%s: fleet is %r, this device belongs to %r" % (f.where, got, fleet))
    return got


def _payload_map(payload, limits, where, known):
    return Fields(cbor.decode(payload, limits), where, known)


# ------------------------------------------------------------------- root


class Role:
    """Key ids allowed to sign one role, and how many must."""

    def __init__(self, kids, threshold):
        self.kids = kids
        self.threshold = threshold


class Root:
    """Keys and thresholds for every role. `keys` maps kid to a 65-byte P-256 point."""

    def __init__(self, fleet, version, expires, keys, roles, spki, time_lead=DEFAULT_TIME_LEAD):
        self.fleet = fleet
        self.version = version
        self.expires = expires
        self.keys = keys
        self.roles = roles
        self.spki = spki
        self.time_lead = time_lead


def parse_root(payload, limits=DEFAULT, fleet=None):
    """Parse a verified root payload. Raises: DecodeError."""
    from trustfleet_device import p256

    f = _payload_map(payload, limits, "root", ROOT_FIELDS)
    fleet = _header(f, "root", fleet)
    version = f.version()
    expires = f.uint("expires")
    spkis = f.array("keys", limits.max_keys)
    if not spkis:
        raise DecodeError("root.keys: expected at least one SPKI")
    keys = {}
    spki = {}
    for der in spkis:
        if type(der) is not bytes:
            raise DecodeError("root.keys: SPKI is not a byte string")
        kid = hashlib.sha256(der).digest()
        if kid in keys:
            raise DecodeError("root.keys: key %s listed twice" % kid_text(kid))
        keys[kid] = p256.spki_to_point(der)
        spki[kid] = der
    roles_map = Fields(f.raw("roles"), "root.roles", ROLES)
    roles = {}
    for name in ROLES:
        roles[name] = _parse_role(roles_map.raw(name), "root.roles." + name, keys, limits)
    roles_map.done()
    lead = DEFAULT_TIME_LEAD
    pol = f.raw("policy", True)
    if pol is not None:
        p = Fields(pol, "root.policy", ROOT_POLICY_FIELDS)
        lead = p.uint("max_time_lead")
        p.done()
        if lead < MIN_TIME_LEAD or lead > MAX_TIME_LEAD:
            raise DecodeError("root.policy.max_time_lead: %d s is not in %d..%d"
                              % (lead, MIN_TIME_LEAD, MAX_TIME_LEAD))
    f.done()
    return Root(fleet, version, expires, keys, roles, spki, lead)


def _parse_role(value, where, keys, limits):
    f = Fields(value, where, ("keys", "threshold"))
    kids = f.array("keys", limits.max_keys)
    threshold = f.uint("threshold")
    f.done()
    seen = []
    for kid in kids:
        _digest32(kid, where + ".keys")
        if kid not in keys:
            raise DecodeError("%s.keys: key %s is not in root.keys" % (where, kid_text(kid)))
        if kid in seen:
            raise DecodeError("%s.keys: key %s listed twice" % (where, kid_text(kid)))
        seen.append(kid)
    if threshold < 1 or threshold > len(kids):
        raise DecodeError("%s.threshold: %d cannot be met by %d keys (need 1..%d)"
                          % (where, threshold, len(kids), len(kids)))
    return Role(seen, threshold)


def kid_text(kid):
    """A key id for messages: its first 4 bytes in hex (a public identifier, never key material)."""
    if kid is None:
        return "(no kid)"
    return "".join("%02x" % b for b in kid[:4])


# ----------------------------------------------------------------- bundle


class Anchor:
    """A trust anchor: a whole certificate (`der`) or the compact fields.

    For a compact anchor `der` is None and `spki` is the SPKI DER (rebuilt
    from the algorithm code and key on first use). For a full one, name/spki/not_after are
    None here; the certificate parser supplies them when a check needs them.
    """

    def __init__(self, der, name, spki, not_after, label):
        self.der = der
        self.name = name
        self._spki = spki
        self.not_after = not_after
        self.label = label

    @property
    def spki(self):
        value = self._spki
        if type(value) is tuple:
            value = self._spki = spki_from_parts(value[0], value[1])
        return value


class PinSet:
    """Pins for one domain pattern, enforced until `expires`."""

    def __init__(self, domain, subdomains, pins, expires, mode, report_to, allow_single_pin):
        self.domain = domain
        self.subdomains = subdomains
        self.pins = pins
        self.expires = expires
        self.mode = mode
        self.report_to = report_to
        self.allow_single_pin = allow_single_pin


class Policy:
    """Bundle-wide switches."""

    def __init__(self, user_anchors, max_timestamp_age):
        self.user_anchors = user_anchors
        self.max_timestamp_age = max_timestamp_age


class Bundle:
    """The trust content the device installs."""

    def __init__(self, fleet, version, issued_at, expires_at, anchors, pinsets, distrust, policy):
        self.fleet = fleet
        self.version = version
        self.issued_at = issued_at
        self.expires_at = expires_at
        self.anchors = anchors
        self.pinsets = pinsets
        self.distrust = distrust
        self.policy = policy


# Well-known SPKI AlgorithmIdentifiers (DER). A compact anchor stores one of
# these as a small code plus the key bits; the device rebuilds the exact SPKI
# DER, so pins and signatures work on the same bytes as a full certificate.
SPKI_ALGS = {
    1: b"\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01\x05\x00",  # rsaEncryption
    2: b"\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07",  # P-256
    3: b"\x30\x10\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x05\x2b\x81\x04\x00\x22",  # P-384
    4: b"\x30\x10\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x05\x2b\x81\x04\x00\x23",  # P-521
}


def _der_len(n):
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    if n < 0x10000:
        return bytes((0x82, n >> 8, n & 0xFF))
    return bytes((0x83, n >> 16, (n >> 8) & 0xFF, n & 0xFF))


def spki_from_parts(code, key):
    """Rebuild SPKI DER: SEQUENCE { AlgorithmIdentifier(code), BIT STRING (0 unused bits) key }."""
    alg = SPKI_ALGS[code]
    bits = b"\x03" + _der_len(len(key) + 1) + b"\x00" + key
    return b"\x30" + _der_len(len(alg) + len(bits)) + alg + bits


def split_spki(spki_der):
    """(code, key) for an SPKI with a well-known algorithm, else (0, the whole DER)."""
    for code in SPKI_ALGS:
        alg = SPKI_ALGS[code]
        i = spki_der.find(alg)
        if 0 < i <= 4:
            key = spki_der[i + len(alg):]
            # BIT STRING header, then the 0 "unused bits" byte.
            j = 2 if key[1] < 0x80 else 2 + (key[1] & 0x7F)
            if key[0] == 0x03 and key[j] == 0 and spki_from_parts(code, key[j + 1:]) == spki_der:
                return code, key[j + 1:]
    return 0, spki_der


def compact_anchor(name, spki_der, not_after, label=None):
    """The compact anchor array the builder writes; the label only when it says something the name does not."""
    code, key = split_spki(spki_der)
    out = [name, code, key, not_after]
    if label:
        out.append(label)
    return out


def parse_anchor(value, limits=DEFAULT, index=0):
    """Parse one anchor entry (certificate DER or compact array). Raises: DecodeError."""
    n = len(value) if type(value) is list else 0
    if n == 4 or n == 5:
        name, code, key, not_after = value[0], value[1], value[2], value[3]
        label = value[4] if n == 5 else None
        # The common case in one expression; the precise reason only on failure.
        if (type(name) is bytes and name and name[0] == 0x30 and type(code) is int
                and (code in SPKI_ALGS or code == 0) and type(key) is bytes and key
                and (code or key[0] == 0x30) and type(not_after) is int and not_after >= 0
                and (label is None or (type(label) is str and 0 < len(label) <= MAX_LABEL))):
            return Anchor(None, name, (code, key) if code else key, not_after, label)
    return _anchor_other(value, index)


def _anchor_other(value, index):
    """A whole-certificate anchor, or the precise reason a compact one is malformed."""
    where = "bundle.anchors[%d]" % index
    if type(value) is bytes:
        if len(value) < 16 or value[0] != 0x30:
            raise DecodeError("%s: certificate is not DER" % where)
        return Anchor(value, None, None, None, None)
    if type(value) is not list or not 4 <= len(value) <= 5:
        raise DecodeError("%s: expected certificate DER or [name, alg, key, not_after, ? label]" % where)
    name, code, key, not_after = value[0], value[1], value[2], value[3]
    if type(name) is not bytes or not name or name[0] != 0x30:
        raise DecodeError("%s: subject name is not a DER sequence" % where)
    if type(code) is not int or not (code == 0 or code in SPKI_ALGS):
        raise DecodeError("%s: SPKI algorithm code %r is not 0..%d" % (where, code, len(SPKI_ALGS)))
    if type(key) is not bytes or not key or (code == 0 and key[0] != 0x30):
        raise DecodeError("%s: key is not %s" % (where, "SPKI DER" if code == 0 else "a byte string"))
    if type(not_after) is not int or not_after < 0:
        raise DecodeError("%s: not_after is not an unsigned integer" % where)
    raise DecodeError("%s: label is not a text string of 1 to %d characters" % (where, MAX_LABEL))


def parse_pinset(value, limits=DEFAULT, index=0):
    """Parse one pin-set map. Raises: DecodeError."""
    # The common case in one pass, with no message built; anything it does not
    # accept goes through _pinset_fields, which accepts exactly the same maps and
    # names what is wrong.
    if type(value) is dict:
        domain = value.get("domain")
        subdomains = value.get("subdomains")
        pins = value.get("pins")
        expires = value.get("expires")
        mode = value.get("mode")
        report_to = value.get("report_to")
        single = value.get("allow_single_pin")
        if (len(value) == (6 if single is None else 7)
                and type(domain) is str and 0 < len(domain) <= MAX_DOMAIN and domain[0] != "."
                and domain[-1] != "." and ".." not in domain and not domain.strip(_DNS_CHARS)
                and (subdomains is True or subdomains is False)
                and type(pins) is list  # most often a primary and a backup pin
                and (_pins_ok(pins, limits.max_pins, single) if len(pins) != 2 or limits.max_pins < 2
                     else (type(pins[0]) is bytes and type(pins[1]) is bytes and len(pins[0]) == 32
                           and len(pins[1]) == 32 and pins[0] != pins[1]))
                and type(expires) is int and expires >= 0
                and type(mode) is str and mode in MODES
                and type(report_to) is list and len(report_to) <= MAX_REPORT_URIS
                and (not report_to or _uris_ok(report_to))
                and (single is None or single is True or single is False)):
            return PinSet(domain, subdomains, pins, expires, mode, report_to, single is True)
    return _pinset_fields(value, limits, index)


def _pins_ok(pins, most, single):
    """True for 2..most distinct 32-byte pins (or one, when allow_single_pin is true)."""
    n = len(pins)
    if n > most or n == 0 or (n == 1 and single is not True):
        return False
    for i in range(n):
        pin = pins[i]
        if type(pin) is not bytes or len(pin) != 32 or pins.index(pin) != i:
            return False
    return True


def _uris_ok(uris):
    for uri in uris:
        if type(uri) is not str or len(uri) > MAX_URI:
            return False
    return True


def _pinset_fields(value, limits, index):
    """parse_pinset field by field, with the precise reason for a refusal."""
    where = "bundle.pinsets[%d]" % index
    f = Fields(value, where, PINSET_FIELDS)
    domain = f.text("domain", MAX_DOMAIN)
    check_domain_pattern(domain, where + ".domain")
    subdomains = f.boolean("subdomains")
    pins = f.array("pins", limits.max_pins)
    for i in range(len(pins)):
        _digest32(pins[i], "%s.pins[%d]" % (where, i))
        if pins[i] in pins[:i]:
            raise DecodeError("%s.pins[%d]: repeats an earlier pin; a backup pin must be a different key"
                              % (where, i))
    expires = f.uint("expires")
    mode = f.text("mode", 16)
    if mode not in MODES:
        raise DecodeError("%s.mode: %r is not 'enforce' or 'report'" % (where, mode))
    report_to = f.array("report_to", MAX_REPORT_URIS)
    for uri in report_to:
        if type(uri) is not str or len(uri) > MAX_URI:
            raise DecodeError("%s.report_to: expected URIs of at most %d characters" % (where, MAX_URI))
    single = f.boolean("allow_single_pin", True)
    f.done()
    # The rule of two: a backup pin from another key, unless the operator
    # overrode it in the signed document itself, where everyone can see it.
    if not pins or (len(pins) < 2 and single is not True):
        raise DecodeError("%s.pins: %d pin(s); at least 2 are required (primary and backup)"
                          % (where, len(pins)))
    return PinSet(domain, subdomains, pins, expires, mode, report_to, single is True)


def check_domain_pattern(domain, where):
    """Refuse anything but a lower-case DNS name (no wildcards: use subdomains). Raises: DecodeError."""
    if not domain or domain[0] == "." or domain[-1] == "." or ".." in domain:
        raise DecodeError("%s: %r is not a DNS name" % (where, domain))
    # strip() removes every allowed character; anything left is not allowed.
    if domain.strip(_DNS_CHARS):
        raise DecodeError("%s: %r is not a lower-case DNS name" % (where, domain))


def parse_policy(value):
    """Parse the policy map. Raises: DecodeError."""
    f = Fields(value, "bundle.policy", POLICY_FIELDS)
    user = f.boolean("user_anchors")
    age = f.uint("max_timestamp_age")
    f.done()
    return Policy(user, age)


def parse_bundle(payload, limits=DEFAULT, fleet=None, offset=0, length=None):
    """Parse a verified bundle payload: bytes, or `length` bytes at `offset` in a source. Raises: DecodeError.

    Bytes are decoded in one go (offset and length unused). From a source
    (flash) only one item is in memory at a time; anchors and pin-sets are
    checked as they pass and then kept as offsets (StoredItems).
    """
    if hasattr(payload, "read_at"):
        if length is None:
            length = payload.size - offset
        return _parse_bundle_source(payload, offset, length, limits, fleet)
    return bundle_from_map(cbor.decode(payload, limits), limits, fleet)


def bundle_from_map(value, limits=DEFAULT, fleet=None, anchors=None, pinsets=None):
    """Check a decoded bundle map and build the Bundle. `anchors`, `pinsets`: already checked
    (streaming). Raises: DecodeError."""
    f = Fields(value, "bundle", BUNDLE_FIELDS)
    fleet = _header(f, "bundle", fleet)
    version = f.version()
    issued_at = f.uint("issued_at")
    expires_at = f.uint("expires_at")
    if expires_at <= issued_at:
        raise DecodeError("bundle.expires_at: %d is not after issued_at %d" % (expires_at, issued_at))
    raw_anchors = f.array("anchors", limits.max_anchors)
    if anchors is None:
        anchors = [parse_anchor(raw_anchors[i], limits, i) for i in range(len(raw_anchors))]
    raw_pinsets = f.array("pinsets", limits.max_pinsets)
    if pinsets is None:
        pinsets = [parse_pinset(raw_pinsets[i], limits, i) for i in range(len(raw_pinsets))]
    distrust = f.array("distrust", limits.max_distrust)
    for i in range(len(distrust)):
        _digest32(distrust[i], "bundle.distrust[%d]" % i)
    policy = parse_policy(f.raw("policy"))
    f.done()
    return Bundle(fleet, version, issued_at, expires_at, anchors, pinsets, distrust, policy)


class StoredItems:
    """A bundle's anchors or pin-sets left where they are (a file in flash); each is read back
    and parsed again when used, so a large bundle costs a few bytes of RAM per entry.

    Every entry was fully checked while the bundle streamed past
    (parse_bundle from a source), so reading one back cannot fail unless the
    flash changed under us, which raises DecodeError.
    """

    def __init__(self, source, offsets, limits, parse):
        self.source = source
        self.offsets = offsets  # start of each entry, then the end of the last
        self.limits = limits
        self.parse = parse      # parse_anchor or parse_pinset

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        n = len(self.offsets) - 1
        if i < 0:
            i += n
        if i < 0 or i >= n:
            raise IndexError("index out of range")
        d = cbor.StreamDecoder(self.source, self.offsets[i], self.offsets[i + 1], self.limits)
        return self.parse(d.decode_all(), self.limits, i)

    def __iter__(self):
        for i in range(len(self.offsets) - 1):
            yield self[i]


def StoredAnchors(source, offsets, limits):
    """Anchors left in flash (StoredItems of parse_anchor)."""
    return StoredItems(source, offsets, limits, parse_anchor)


def _parse_bundle_source(source, offset, length, limits, fleet):
    if length > limits.max_document:
        raise LimitError("bundle payload is %d bytes, limit is %d" % (length, limits.max_document))
    d = cbor.StreamDecoder(source, offset, offset + length, limits)
    major, n = d.head()
    if major != 5:
        raise DecodeError("bundle: expected a map")
    d._count()
    if n > limits.max_items:
        raise LimitError("map of %d entries, limit is %d" % (n, limits.max_items))
    value = {}
    anchors = pinsets = None
    previous = None
    for _ in range(n):
        key, previous = d.map_key(1, previous)
        if key == "anchors":
            anchors = _stream_items(d, source, limits, "anchors", limits.max_anchors, parse_anchor)
            value[key] = []  # checked already; Fields only needs its type
        elif key == "pinsets":
            pinsets = _stream_items(d, source, limits, "pinsets", limits.max_pinsets, parse_pinset)
            value[key] = []
        else:
            value[key] = d.item(1)
    if d.remaining():
        raise DecodeError("%d trailing bytes after the bundle" % d.remaining())
    return bundle_from_map(value, limits, fleet, anchors, pinsets)


def _stream_items(d, source, limits, what, most, parse):
    """Check each entry of the array `what` as it passes; keep only where each one starts."""
    major, n = d.head()
    if major != 4:
        raise DecodeError("bundle.%s: expected an array" % what)
    if n > most:
        raise LimitError("bundle.%s: %d entries, limit is %d" % (what, n, most))
    d._count()
    offsets = []
    for i in range(n):
        offsets.append(d.tell())
        parse(d.item(2), limits, i)
    offsets.append(d.tell())
    return StoredItems(source, offsets, limits, parse)


# -------------------------------------------------------------- timestamp


class Timestamp:
    """Signed heartbeat: the time, and the latest bundle's version and digest."""

    def __init__(self, fleet, time, bundle_version, bundle_sha256):
        self.fleet = fleet
        self.time = time
        self.bundle_version = bundle_version
        self.bundle_sha256 = bundle_sha256


def parse_timestamp(payload, limits=DEFAULT, fleet=None):
    """Parse a verified timestamp payload. Raises: DecodeError."""
    f = _payload_map(payload, limits, "timestamp", TIMESTAMP_FIELDS)
    fleet = _header(f, "timestamp", fleet)
    time = f.uint("time")
    version = f.uint("bundle_version")
    if version > MAX_VERSION:
        raise DecodeError("timestamp.bundle_version: %d is above %d" % (version, MAX_VERSION))
    digest = _digest32(f.raw("bundle_sha256"), "timestamp.bundle_sha256")
    f.done()
    return Timestamp(fleet, time, version, digest)
