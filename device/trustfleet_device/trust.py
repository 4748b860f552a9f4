"""Trust decisions for TLS server chains: TrustStore.evaluate(host, chain, now).

What it trusts: the Bundle (already verified by policy), the device's own
enterprise anchors when the bundle allows them and the device is managed,
and the caller's `now` (the agent's trusted time). The chain is the
server's and trusted for nothing until it validates.

The host is a DNS name or an IP address literal (ip_bytes: IPv4 as four
decimal octets without leading zeros, IPv6 in any RFC 4291 form, no zone,
no brackets). An IP host is matched only against the leaf's iPAddress
entries, byte for byte, and never against a dNSName or the CN; a DNS name
never matches an iPAddress. A host that is neither, or whose last label is
a number (a malformed IP such as 127.0.0.01 or 256.1.1.1, which resolvers
may still read as an address), matches nothing. Pin-set domains are DNS
names, so an IP host matches no pin-set: IP endpoints are CA-validated
(and checked against distrust) only, never pinned.

Order of work in evaluate (the same on MicroPython and CPython):
1. The leaf: it parses; its subjectAltName dNSNames match the host (exact,
   or a `*.` wildcard as the whole left-most label that stands for exactly
   one label; RFC 6125 6.4; no CN fallback), or for an IP host one of its
   iPAddress entries equals the address; it is valid at `now`; it has
   no unknown critical extension; extKeyUsage, if present, allows
   serverAuth.
2. The path, built upward from the leaf, anchors first (the ESP-IDF
   certificate-bundle method): stop when the current certificate's issuer
   is an anchor's name and the anchor key verifies its signature, or when
   the current certificate is itself an anchor (the same bytes as a full
   anchor, or the same subject and SPKI as a compact one). Otherwise try
   every certificate the server sent whose subject is the issuer: it must
   be valid at `now`, a CA (basicConstraints cA; keyCertSign if keyUsage
   is present), within every pathLenConstraint, free of unknown critical
   extensions (nameConstraints counts as unknown: we cannot enforce it),
   and its key must verify the signature. Depth-first with backtracking,
   at most MAX_DEPTH chain certificates and MAX_VERIFIES signature checks.
   Extra or unordered certificates off the path are ignored.
   An expired anchor is not used (OpenSSL and mbedTLS refuse them too).
3. Distrust: the SPKI SHA-256 of any path certificate or of the anchor in
   bundle.distrust rejects the chain, pinned or not, enterprise or not.
4. Pins: the longest matching pin-set (exact domain, or a parent domain
   with subdomains). Past its expiry pins are not enforced and the answer
   is "accept-fail-open" (the chain was still validated: never fail open
   to no validation). Before it, some SPKI on the path, the anchor's
   included, must be pinned; otherwise an enterprise anchor (when allowed)
   overrides the pins like Android's overridePins, a "report" pin-set
   accepts and reports, and an "enforce" one rejects.

Reports (TrustKit's fields) are made only for pinned hosts, for every
outcome but a clean pin match or an enterprise override; ReportQueue
deduplicates and rate-limits them. No revocation checking (no CRL/OCSP)
and no name-constraint processing: both are known gaps.
"""

import binascii
import hashlib

from trustfleet_device import VERSION, ct, sigcheck, x509
from trustfleet_device.errors import DecodeError, SignatureError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


MAX_CHAIN = const(16)
_LOADED_MAX = const(8)   # stored anchors kept loaded at once
MAX_DEPTH = const(8)
MAX_VERIFIES = const(24)
_MAX_NAMES_SHOWN = const(4)

ACCEPT = "accept"
REJECT = "reject"
FAIL_OPEN = "accept-fail-open"

# Result codes (Decision.result, and a report's validation-result).
OK = "ok"
PIN_MATCH = "pin-match"
ENTERPRISE_OVERRIDE = "enterprise-override"
REPORT_ONLY = "report-only-mismatch"
FAIL_OPEN_EXPIRED = "expired-pins-fail-open"
PIN_MISMATCH = "pin-mismatch"
CHAIN_INVALID = "chain-invalid"
HOST_MISMATCH = "hostname-mismatch"
UNSUPPORTED = "unsupported-algorithm"
DISTRUSTED = "distrusted"

_OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
_OID_ANY_EKU = "2.5.29.37.0"


class Decision:
    """The answer for one connection.

    verdict: "accept", "reject" or "accept-fail-open". result: a code above.
    reason: one line. pinset: the matched pin-set's domain or None.
    anchor: label of the anchor the chain ended in, or None.
    report: a TrustKit-style report dict or None. path: parsed certificates
    of the validated path, leaf first (empty when validation failed).
    """

    def __init__(self, verdict, result, reason, pinset, anchor, report, path):
        self.verdict = verdict
        self.result = result
        self.reason = reason
        self.pinset = pinset
        self.anchor = anchor
        self.report = report
        self.path = path

    def accepted(self):
        return self.verdict != REJECT

    def __repr__(self):
        return "Decision(%s, %s: %s)" % (self.verdict, self.result, self.reason)


class TrustAnchor:
    """An anchor ready for matching.

    name (subject DER), spki, not_before (None for compact anchors),
    not_after, label, user (an enterprise anchor). For a full anchor also
    der (the certificate, for the byte-identical test) and the constraints
    read from it: version, is_ca, key_cert_sign, path_len, unknown_critical.
    The parsed certificate itself is not kept: RAM on a board.
    """

    def __init__(self, name, spki, not_before, not_after, label, user):
        self.name = name
        self.spki = spki
        self.not_before = not_before
        self.not_after = not_after
        self.label = label
        self.user = user
        self.spki_sha256 = hashlib.sha256(spki).digest()
        self.der = None
        self.version = None
        self.is_ca = False
        self.key_cert_sign = None
        self.path_len = None
        self.unknown_critical = []


def _make_anchor(value, user, where):
    """Return a TrustAnchor from a bundle Anchor or certificate DER bytes. Raises: DecodeError."""
    if isinstance(value, (bytes, bytearray)):
        der = value
        label = None
    else:
        der = value.der
        label = value.label
    if der is None:
        # A compact anchor carries a label only when its name does not say it.
        return TrustAnchor(bytes(value.name), bytes(value.spki), None, value.not_after,
                           label or x509.name_label(value.name) or where, user)
    cert = x509.parse(der)
    a = TrustAnchor(cert.subject, cert.spki, cert.not_before, cert.not_after,
                    label or cert.label() or where, user)
    a.der = cert.der
    a.version = cert.version
    a.is_ca = cert.is_ca
    a.key_cert_sign = cert.key_cert_sign
    a.path_len = cert.path_len
    a.unknown_critical = cert.unknown_critical
    return a


def _name_key(name):
    """24 bits of SHA-256(subject DER) as a small int: a stored anchor's index entry costs no
    object of its own on any port. Equal keys are told apart by the names themselves."""
    d = hashlib.sha256(name).digest()
    return (d[0] << 16) | (d[1] << 8) | d[2]


class TrustStore:
    """Anchors, pin-sets and distrust from one bundle, ready to evaluate TLS chains.

    user_anchors: the device's enterprise anchors (certificate DER or bundle
    Anchor objects); used only when bundle.policy.user_anchors is true and
    `managed` is True. Anchors that do not parse are skipped and described
    in `skipped` rather than failing the whole store: one bad anchor must
    not brick every connection.
    """

    def __init__(self, bundle, user_anchors=None, managed=False):
        self.bundle = bundle
        self.managed = managed is True
        self.user_anchors_active = bundle.policy.user_anchors is True and self.managed
        self._anchors = []
        self.skipped = []
        self._by_name = {}
        # Anchors left in flash (documents.StoredItems) are indexed by a short
        # digest of their subject (a small int, to a small int) and loaded when
        # a chain names them, so a 150-root store costs a few KB of RAM.
        self._lazy = type(bundle.anchors) is not list
        self._index = {}
        self._loaded = {}
        for i in range(len(bundle.anchors)):
            if self._lazy:
                self._index_stored(i)
            else:
                self._add(bundle.anchors[i], False, "anchor %d" % i)
        if user_anchors and self.user_anchors_active:
            for i in range(len(user_anchors)):
                self._add(user_anchors[i], True, "user anchor %d" % i)
        self._distrust = set()
        for d in bundle.distrust:
            self._distrust.add(bytes(d))

    def _index_stored(self, i):
        try:
            a = _make_anchor(self.bundle.anchors[i], False, "anchor %d" % i)
        except DecodeError as e:
            self.skipped.append("anchor %d: %s" % (i, e))
            return
        key = _name_key(a.name)
        same = self._index.get(key)
        if same is None:
            self._index[key] = i  # the common case: a small int, nothing allocated
        elif type(same) is int:
            self._index[key] = [same, i]
        else:
            same.append(i)

    @property
    def anchors(self):
        """Every usable anchor (bundle, then enterprise). From flash, each is read now: meant for exports."""
        if not self._lazy:
            return self._anchors
        out = []
        for i in range(len(self.bundle.anchors)):
            try:
                out.append(_make_anchor(self.bundle.anchors[i], False, "anchor %d" % i))
            except DecodeError:
                pass  # listed in self.skipped when the store was built
        return out + self._anchors

    def anchors_named(self, name):
        """Anchors (bundle and enterprise) whose subject is exactly `name`."""
        found = self._by_name.get(name, ())
        if not self._lazy:
            return found
        hits = self._index.get(_name_key(name))
        if hits is None:
            return found
        if type(hits) is int:
            hits = (hits,)
        out = list(found)
        for i in hits:
            a = self._loaded.get(i)
            if a is None:
                a = _make_anchor(self.bundle.anchors[i], False, "anchor %d" % i)
                if len(self._loaded) >= _LOADED_MAX:
                    self._loaded = {}
                self._loaded[i] = a
            if a.name == name:
                out.append(a)
        return out

    def _add(self, value, user, where):
        try:
            a = _make_anchor(value, user, where)
        except DecodeError as e:
            self.skipped.append("%s: %s" % (where, e))
            return
        self._anchors.append(a)
        same = self._by_name.get(a.name)
        if same is None:
            self._by_name[a.name] = [a]
        else:
            same.append(a)

    def pinset_for(self, host):
        """Return the pin-set with the longest domain matching the normalized host, or None.

        None for an IP address (or a malformed one): pin-sets name DNS domains only.
        """
        if ip_bytes(host) is not None or _numeric_tail(host):
            return None
        best = None
        for ps in self.bundle.pinsets:
            d = ps.domain
            if host == d or (ps.subdomains and host.endswith("." + d)):
                if best is None or len(d) > len(best.domain):
                    best = ps
        return best

    def evaluate(self, host, chain, now, port=443):
        """Decide on the server chain (DER certificates, leaf first) for host at time now.

        Raises:
            ValueError: host, chain, now or port have the wrong type (a caller mistake).
        """
        _check_arguments(host, chain, now, port)
        ip = ip_bytes(host)
        if ip is not None:
            # Never pinned: see the module docstring.
            return _Evaluation(self, ip_text(ip), chain, now, port, None, ip).run()
        name = normalize_host(host)
        if name is None:
            return Decision(REJECT, HOST_MISMATCH, "host %r is neither a DNS name nor an IP"
                            " address" % host, None, None, None, [])
        if _numeric_tail(name):
            return Decision(REJECT, HOST_MISMATCH, "host %r is not a valid IP address (and a DNS"
                            " name does not end in a number)" % host, None, None, None, [])
        pinset = self.pinset_for(name)
        ev = _Evaluation(self, name, chain, now, port, pinset, None)
        return ev.run()


def _check_arguments(host, chain, now, port):
    if type(host) is not str:
        raise ValueError("host must be a str")
    if type(chain) is not list and type(chain) is not tuple:
        raise ValueError("chain must be a list of DER certificates")
    if type(now) is not int or type(port) is not int:
        raise ValueError("now and port must be int")


def normalize_host(host):
    """Return the host in lower case without a trailing dot, or None if it is not an ASCII DNS name."""
    for ch in host:
        if ord(ch) > 0x7E:
            return None  # before lower(): CPython would fold e.g. U+212A to "k"
    h = host.lower()
    if h.endswith("."):
        h = h[:-1]
    if not h or len(h) > 253:
        return None
    for label in h.split("."):
        if not label or len(label) > 63:
            return None
        for ch in label:
            if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "-" or ch == "_"):
                return None
    return h


def _numeric_tail(name):
    """Return True when the last label of a normalized name is a number, decimal or 0x-hex.

    URL parsers (WHATWG) and inet_aton read such a host as an IPv4 address, and
    no top-level domain is numeric: it is a malformed IP address, not a name.
    """
    last = name[name.rfind(".") + 1:]
    digits = "0123456789"
    if last[:2] == "0x":
        last = last[2:]
        digits = "0123456789abcdef"
    for ch in last:
        if ch not in digits:
            return False
    return True


def _ipv4(text):
    """Return the 4 bytes of a dotted-quad IPv4 address, or None.

    Exactly four decimal octets 0..255 without leading zeros (RFC 3986's
    dec-octet): "010" would be octal to inet_aton, so it is refused.
    """
    parts = text.split(".")
    if len(parts) != 4:
        return None
    out = bytearray(4)
    for i in range(4):
        p = parts[i]
        if not p or (p[0] == "0" and len(p) > 1):
            return None
        v = 0
        for ch in p:
            if ch < "0" or ch > "9":
                return None
            v = v * 10 + ord(ch) - 48
            if v > 255:
                return None
        out[i] = v
    return bytes(out)


_HEX = "0123456789abcdefABCDEF"


def _groups(text):
    """Return the values of colon-separated 16-bit hex groups ([] for ""), or None."""
    if not text:
        return []
    out = []
    for g in text.split(":"):
        if not g or len(g) > 4:
            return None
        v = 0
        for ch in g:
            d = _HEX.find(ch)
            if d < 0:
                return None
            if d > 15:
                d -= 6  # A..F
            v = v * 16 + d
        out.append(v)
    return out


def _ipv6(text):
    """Return the 16 bytes of an IPv6 address in an RFC 4291 (2.2) text form, or None."""
    if "." in text:
        # A dotted IPv4 address as the last 32 bits: rewrite it as two hex groups.
        cut = text.rfind(":") + 1
        v4 = _ipv4(text[cut:])
        if v4 is None:
            return None
        text = "%s%x:%x" % (text[:cut], (v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3])
    halves = text.split("::")
    if len(halves) > 2:
        return None
    groups = _groups(halves[0])
    if groups is None:
        return None
    if len(halves) == 2:
        tail = _groups(halves[1])
        if tail is None:
            return None
        n = len(groups) + len(tail)
        if n > 7:
            return None  # "::" stands for at least one zero group
        groups = groups + [0] * (8 - n) + tail
    elif len(groups) != 8:
        return None
    out = bytearray(16)
    for i in range(8):
        out[2 * i] = groups[i] >> 8
        out[2 * i + 1] = groups[i] & 0xFF
    return bytes(out)


def ip_bytes(text):
    """Return the 4 (IPv4) or 16 (IPv6) bytes of an IP address literal, or None.

    IPv4: four decimal octets, no leading zeros. IPv6: any RFC 4291 text form
    (hex in either case, "::", a dotted IPv4 tail), without brackets or a
    %zone. Anything else (a DNS name, a malformed address) gives None. Pure
    Python: MicroPython has no `ipaddress` module.
    """
    if ":" in text:
        return _ipv6(text)
    return _ipv4(text)


def ip_text(ip):
    """Return 4 or 16 address bytes as text: a dotted quad, or IPv6 as RFC 5952 recommends
    (lower-case hex, no leading zeros, the first longest run of two or more zero groups as "::")."""
    if len(ip) == 4:
        return "%d.%d.%d.%d" % (ip[0], ip[1], ip[2], ip[3])
    groups = []
    for i in range(0, 16, 2):
        groups.append("%x" % ((ip[i] << 8) | ip[i + 1]))
    best_len = 1  # a single zero group is not shortened
    run = 0
    for i in range(8):
        if groups[i] == "0":
            run += 1
            if run > best_len:
                best = i + 1 - run  # set whenever best_len grows, read only then
                best_len = run
        else:
            run = 0
    if best_len == 1:
        return ":".join(groups)
    return ":".join(groups[:best]) + "::" + ":".join(groups[best + best_len:])


def name_matches(pattern, host):
    """Return True when a SAN dNSName pattern matches the normalized host (RFC 6125, 6.4)."""
    p = pattern.lower()
    if "*" not in p:
        return p == host
    if not p.startswith("*.") or "*" in p[2:]:
        return False  # partial or non-left-most wildcards never match
    suffix = p[1:]
    # "*.com" and the like: a wildcard needs at least two labels under it.
    if suffix.count(".") < 2:
        return False
    if not host.endswith(suffix):
        return False
    first = host[:len(host) - len(suffix)]
    return first != "" and "." not in first


def pem(der):
    """Return a certificate as PEM text."""
    b64 = binascii.b2a_base64(der).decode().strip()
    lines = ["-----BEGIN CERTIFICATE-----"]
    for i in range(0, len(b64), 64):
        lines.append(b64[i:i + 64])
    lines.append("-----END CERTIFICATE-----")
    return "\n".join(lines) + "\n"


def pin_text(pin):
    """Return an SPKI SHA-256 pin as "sha256/<base64>"."""
    return "sha256/" + binascii.b2a_base64(pin).decode().strip()


def _show(label):
    return "'%s'" % label if label else "(no name)"


def _intermediates(path, stop):
    """Count non-self-issued certificates in path[1:stop] (RFC 5280, 6.1.4 (l))."""
    n = 0
    for i in range(1, stop):
        c = path[i]
        if c.subject != c.issuer:
            n += 1
    return n


def _cert_problem(cert, now, role):
    """Return why a certificate cannot be on the path at time now, or None."""
    who = "%s %s" % (role, _show(cert.label()))
    if now < cert.not_before:
        return "%s is not valid before %s" % (who, x509.format_time(cert.not_before))
    if now > cert.not_after:
        return "%s expired at %s" % (who, x509.format_time(cert.not_after))
    if cert.unknown_critical:
        oid = cert.unknown_critical[0]
        if oid == x509.OID_NAME_CONSTRAINTS:
            return "%s has name constraints, which this device cannot enforce" % who
        return "%s has an unsupported critical extension %s" % (who, oid)
    eku = cert.ext_key_usage
    if eku is not None and _OID_SERVER_AUTH not in eku and _OID_ANY_EKU not in eku:
        return "%s is not allowed for TLS servers (extKeyUsage)" % who
    return None


def _ca_problem(cert, path, who):
    """Return why cert (a Certificate or TrustAnchor) may not sign path[-1], or None."""
    if not cert.is_ca:
        return "%s is not a CA (basicConstraints)" % who
    if cert.key_cert_sign is False:
        return "%s may not sign certificates (keyUsage lacks keyCertSign)" % who
    if cert.path_len is not None:
        below = _intermediates(path, len(path))
        if below > cert.path_len:
            return "%s allows %d intermediate(s) below it, the path has %d" % (
                who, cert.path_len, below)
    return None


class _Evaluation:
    """One evaluate() call: parse, build the path, then apply distrust and pins."""

    def __init__(self, store, host, chain, now, port, pinset, ip):
        self.store = store
        self.host = host
        self.ip = ip
        self.chain = chain
        self.now = now
        self.port = port
        self.pinset = pinset
        self.certs = []
        self.verifies = 0
        self.cache = {}
        self.note_depth = -1
        self.note_code = CHAIN_INVALID
        self.note_reason = None

    # -- outcome

    def decide(self, verdict, result, reason, path, anchor):
        report = None
        if self.pinset is not None and result != PIN_MATCH and result != ENTERPRISE_OVERRIDE:
            report = self.report(result, reason, path)
        label = anchor.label if anchor is not None else None
        domain = self.pinset.domain if self.pinset is not None else None
        return Decision(verdict, result, reason, domain, label, report, path)

    def report(self, result, reason, path):
        ps = self.pinset
        if path:
            ders = [c.der for c in path]
        else:
            ders = [c.der for c in self.certs if c is not None]
        return {
            "hostname": self.host,
            "port": self.port,
            "noted-hostname": ps.domain,
            "include-subdomains": ps.subdomains,
            "enforce-pinning": ps.mode == "enforce",
            "validated-certificate-chain": [pem(d) for d in ders],
            "known-pins": [pin_text(p) for p in ps.pins],
            "pin-expiry": x509.format_time(ps.expires),
            "validation-result": result,
            "reason": reason,
            "report-uri": list(ps.report_to),
            "date-time": x509.format_time(self.now),
            "agent-version": VERSION,
        }

    # -- main line

    def run(self):
        chain = self.chain
        if not chain:
            return self.decide(REJECT, CHAIN_INVALID, "the server sent no certificate", [], None)
        if len(chain) > MAX_CHAIN:
            return self.decide(REJECT, CHAIN_INVALID, "the server sent %d certificates, limit is %d"
                               % (len(chain), MAX_CHAIN), [], None)
        for i in range(len(chain)):
            try:
                self.certs.append(x509.parse(chain[i]))
            except DecodeError as e:
                if i == 0:
                    return self.decide(REJECT, CHAIN_INVALID, "leaf %s" % e, [], None)
                # An unparseable extra cannot be on any path: leave it out.
                self.certs.append(None)
        leaf = self.certs[0]
        problem = self.leaf_problem(leaf)
        if problem is not None:
            return self.decide(REJECT, problem[0], problem[1], [], None)
        path = [leaf]
        anchor = self.extend(path)
        if anchor is None:
            reason = self.note_reason or "no path to a trusted anchor"
            return self.decide(REJECT, self.note_code, reason, [], None)
        return self.apply_rules(path, anchor)

    def leaf_problem(self, leaf):
        if self.ip is None:
            matched = False
            for n in leaf.dns_names:
                if name_matches(n, self.host):
                    matched = True
                    break
            known = leaf.dns_names
            kind = "DNS names"
        else:
            matched = self.ip in leaf.ip_addresses
            known = [ip_text(b) for b in leaf.ip_addresses]
            kind = "IP addresses"
        if not matched:
            names = known[:_MAX_NAMES_SHOWN]
            more = len(known) - len(names)
            shown = ", ".join(names) if names else "none"
            if more > 0:
                shown += " and %d more" % more
            return (HOST_MISMATCH, "host %s does not match the certificate's %s (%s)"
                    % (self.host, kind, shown))
        problem = _cert_problem(leaf, self.now, "leaf")
        if problem is not None:
            return (CHAIN_INVALID, problem)
        return None

    def apply_rules(self, path, anchor):
        hashes = []
        for c in path:
            hashes.append(hashlib.sha256(c.spki).digest())
        hashes.append(anchor.spki_sha256)
        distrust = self.store._distrust
        for i in range(len(hashes)):
            if hashes[i] in distrust:
                who = "anchor %s" % _show(anchor.label) if i == len(path) else _show(path[i].label())
                return self.decide(REJECT, DISTRUSTED, "the key of %s is distrusted by the bundle"
                                   % who, path, anchor)
        where = "chain to anchor %s" % _show(anchor.label)
        ps = self.pinset
        if ps is None:
            return self.decide(ACCEPT, OK, "%s is valid; %s is not pinned" % (where, self.host),
                               path, anchor)
        if self.now >= ps.expires:
            return self.decide(FAIL_OPEN, FAIL_OPEN_EXPIRED,
                               "pins for %s expired at %s; %s is valid, pins not enforced"
                               % (ps.domain, x509.format_time(ps.expires), where), path, anchor)
        if _pinned(hashes, ps.pins):
            return self.decide(ACCEPT, PIN_MATCH, "%s is valid and matches the pins for %s"
                               % (where, ps.domain), path, anchor)
        if anchor.user:
            return self.decide(ACCEPT, ENTERPRISE_OVERRIDE,
                               "%s is valid; enterprise anchor overrides the pins for %s"
                               % (where, ps.domain), path, anchor)
        if ps.mode == "report":
            return self.decide(ACCEPT, REPORT_ONLY, "%s is valid but no key matches the pins for %s"
                               " (report-only)" % (where, ps.domain), path, anchor)
        return self.decide(REJECT, PIN_MISMATCH, "%s is valid but no key matches the pins for %s"
                           % (where, ps.domain), path, anchor)

    # -- path building

    def note(self, depth, code, reason):
        """Remember why a branch failed; the deepest branch explains the rejection best."""
        if depth > self.note_depth:
            self.note_depth = depth
            self.note_code = code
            self.note_reason = reason

    def signed_by(self, child, spki, who, depth):
        key = (id(child), spki)
        hit = self.cache.get(key)
        if hit is None:
            if self.verifies >= MAX_VERIFIES:
                self.note(depth, CHAIN_INVALID, "gave up after %d signature checks" % MAX_VERIFIES)
                return False
            self.verifies += 1
            what = "signature on %s" % _show(child.label())
            try:
                if sigcheck.verify_certificate(child, spki):
                    hit = (True, None, None)
                else:
                    hit = (False, CHAIN_INVALID, "%s does not verify with the key of %s" % (what, who))
            except sigcheck.UnsupportedAlgorithmError as e:
                hit = (False, UNSUPPORTED, "%s: %s" % (what, e))
            except (SignatureError, DecodeError) as e:
                hit = (False, CHAIN_INVALID, "%s: key of %s: %s" % (what, who, e))
            self.cache[key] = hit
        if not hit[0]:
            self.note(depth, hit[1], hit[2])
        return hit[0]

    def anchor_problem(self, a, path, as_issuer):
        now = self.now
        who = "anchor %s" % _show(a.label)
        if now > a.not_after:
            return "%s expired at %s" % (who, x509.format_time(a.not_after))
        if a.not_before is not None and now < a.not_before:
            return "%s is not valid before %s" % (who, x509.format_time(a.not_before))
        if a.unknown_critical:
            return "%s has an unsupported critical extension %s" % (who, a.unknown_critical[0])
        # Full v3 anchors keep their CA constraints; v1 roots and compact anchors have none.
        if as_issuer and a.version == 3:
            return _ca_problem(a, path, who)
        return None

    def extend(self, path):
        """Extend path (leaf first) to an anchor; return the anchor or None (path unchanged then)."""
        cur = path[-1]
        depth = len(path)
        store = self.store
        # The current certificate is itself an anchor.
        for a in store.anchors_named(cur.subject):
            if (a.der == cur.der) if a.der is not None else (a.spki == cur.spki):
                problem = self.anchor_problem(a, path, False)
                if problem is None:
                    return a
                self.note(depth, CHAIN_INVALID, problem)
        # Its issuer is an anchor.
        issuer_anchors = store.anchors_named(cur.issuer)
        for a in issuer_anchors:
            problem = self.anchor_problem(a, path, True)
            if problem is not None:
                self.note(depth, CHAIN_INVALID, problem)
                continue
            if self.signed_by(cur, a.spki, "anchor " + _show(a.label), depth):
                return a
        # Its issuer is another certificate the server sent.
        tried = False
        for cand in self.certs:
            if cand is None or cand.subject != cur.issuer or _on_path(path, cand):
                continue
            tried = True
            if depth >= MAX_DEPTH:
                self.note(depth, CHAIN_INVALID, "no trusted anchor within %d certificates" % MAX_DEPTH)
                break
            problem = _cert_problem(cand, self.now, "intermediate")
            if problem is None:
                problem = _ca_problem(cand, path, "intermediate " + _show(cand.label()))
            if problem is not None:
                self.note(depth, CHAIN_INVALID, problem)
                continue
            if not self.signed_by(cur, cand.spki, _show(cand.label()), depth):
                continue
            path.append(cand)
            a = self.extend(path)
            if a is not None:
                return a
            path.pop()
        if not tried and not issuer_anchors:
            self.note(depth, CHAIN_INVALID, "no trusted anchor or certificate in the chain issued %s"
                      % _show(x509.name_label(cur.issuer)))
        return None


def _on_path(path, cand):
    for c in path:
        if c is cand or c.der == cand.der:
            return True
    return False


def _pinned(hashes, pins):
    """Return True when any hash equals any pin (constant time per comparison)."""
    found = False
    for h in hashes:
        for p in pins:
            if ct.equal(h, p):
                found = True
    return found
