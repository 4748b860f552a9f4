"""Lints for a bundle payload: the mistakes that brick a fleet or quietly void its pins.

The rules are pure functions: given the payload map (as `spec.load_spec`
builds it, or as a bundle file decodes), the chains the operator supplied,
the public roots and the time, they return findings. Only the last section
(inputs) reads files, certifi and the clock, for `trustfleet lint` and
`bundle build`.

Every rule has a stable code (TF1xx), a fixed severity and a one-line fix;
docs/lints.md lists them. A code never changes meaning: new checks get new
codes.

"Public infrastructure" is decided the same way for `trustfleet pin` and for
TF107: a certificate is public when its key is a public (Mozilla, certifi)
root's, or when it is a CA certificate whose issuer chain reaches a public
root through the certificates at hand (names match and signatures verify).
An end-entity certificate is the server's own key, never "infrastructure".
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from trustfleet_device import cbor, cose
from trustfleet_device import documents as device_docs
from trustfleet_device.errors import TrustfleetError
from trustfleet_device.limits import DEFAULT
from trustfleet_server import describe, documents, spec, x509util
from trustfleet_server.errors import UsageError
from trustfleet_server.times import iso

ERROR = "error"
WARNING = "warning"
DEFAULT_HORIZON = 400 * 86400  # a little over the longest public TLS lifetime (398 days)
# How far a bundle's issued_at may be ahead of the clock that builds, signs or lints it (clock skew).
FUTURE_TOLERANCE = 300


class Rule(NamedTuple):
    code: str
    severity: str
    title: str
    fix: str


RULES: dict[str, Rule] = {r.code: r for r in (
    Rule("TF101", ERROR, "pin-set without a backup pin from a different key",
         "add the pin of a backup key you hold offline and do not use yet (not the primary's key); "
         "then drop allow_single_pin"),
    Rule("TF102", ERROR, "backup pin equal to the primary",
         "replace the repeated pin with the pin of a different, unused backup key"),
    Rule("TF103", ERROR, "pin-set without an expiry",
         "set expires = a date or a duration like \"180d\", within the horizon"),
    Rule("TF104", WARNING, "pin-set expiry in the past",
         "move expires to a future date (pins past it are not enforced), or remove the pin-set"),
    Rule("TF105", WARNING, "pin-set expiry beyond the horizon",
         "bring expires within the horizon and renew the pin-set in a later bundle"),
    Rule("TF106", ERROR, "pin matching no chain the operator supplied",
         "correct the pin, or supply the chain, certificate or public key that holds it "
         "(--chain FILE, or chains = [...] in the pin-set)"),
    Rule("TF107", ERROR, "pin on a public CA or CDN intermediate",
         "never pin infrastructure you do not control: pin your own CA or server key, plus a backup key"),
    Rule("TF108", WARNING, "anchor expires before the bundle does",
         "add the anchor's successor (and keep both until it expires), or shorten the bundle's expires"),
    Rule("TF109", WARNING, "duplicate anchor (same key or same certificate)",
         "remove the duplicate from [[anchors]]"),
    Rule("TF110", ERROR, "distrusted key still pinned or still an anchor",
         "remove that pin or anchor, or take the key off the distrust list"),
    Rule("TF111", ERROR, "issued_at ahead of the signer's clock",
         "leave issued_at out (the build uses the clock) or set it to now, and check this machine's "
         "clock; --allow-future only for a bundle meant to be dated ahead"),
    Rule("TF112", WARNING, "pin-set expires less than the root's max_time_lead after issue",
         "make the pin-set expire at least the root's max_time_lead after issued_at, or give the root "
         "a shorter max_time_lead (root rotate --max-time-lead)"),
)}


@dataclass(frozen=True)
class Finding:
    """One lint finding: where, what and how to fix it."""

    code: str
    severity: str
    location: str  # "pinsets[0] api.acme.example" / "anchors[3] ISRG Root X1"
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "location": self.location,
                "message": self.message, "fix": self.fix}

    def line(self) -> str:
        """The finding on one line: `TF101 [error] pinsets[0] api.example: message; fix: ...`."""
        return f"{self.code} [{self.severity}] {self.location}: {self.message}; fix: {self.fix}"


def _finding(code: str, location: str, message: str) -> Finding:
    rule = RULES[code]
    return Finding(code, rule.severity, location, message, rule.fix)


class Chain(NamedTuple):
    """What the operator supplied for a pin-set: a file's certificates (a chain) or key."""

    name: str
    subjects: Sequence[x509util.PinSubject]

    @property
    def certificates(self) -> list[x509.Certificate]:
        return [s.cert for s in self.subjects if s.cert is not None]

    def pins(self) -> set[bytes]:
        return {x509util.spki_sha256(s.public_key) for s in self.subjects}


# --------------------------------------------------------------------------- public infrastructure


class PublicRoots:
    """The public (Mozilla) roots, indexed by key and by subject."""

    def __init__(self, certs: Iterable[x509.Certificate]) -> None:
        self.certs = list(certs)
        self.pins = {x509util.spki_sha256(c) for c in self.certs}
        self._by_subject: dict[bytes, list[x509.Certificate]] = {}
        for cert in self.certs:
            self._by_subject.setdefault(cert.subject.public_bytes(), []).append(cert)

    def issuers_of(self, cert: x509.Certificate) -> list[x509.Certificate]:
        return self._by_subject.get(cert.issuer.public_bytes(), [])


def is_ca(cert: x509.Certificate) -> bool:
    """True for a certificate whose basicConstraints say cA (a root or an intermediate)."""
    try:
        return bool(cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def is_self_issued(cert: x509.Certificate) -> bool:
    return cert.subject.public_bytes() == cert.issuer.public_bytes()


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s name is `cert`'s issuer and its key verifies `cert`'s signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def reaches_public_root(certs: Sequence[x509.Certificate], roots: PublicRoots) -> list[bool]:
    """For each certificate: is it a public root, or does its issuer chain reach one?

    The chain may run through any of `certs` (in any order) and end at a
    certificate whose key is a public root's, or at a certificate signed
    directly by a public root that was not sent.
    """
    memo: dict[int, bool] = {}

    def reaches(i: int, visiting: frozenset[int]) -> bool:
        if i in memo:
            return memo[i]
        cert = certs[i]
        result = x509util.spki_sha256(cert) in roots.pins or any(
            issued_by(cert, root) for root in roots.issuers_of(cert))
        if not result:
            for j, other in enumerate(certs):
                if j != i and j not in visiting and issued_by(cert, other) \
                        and reaches(j, visiting | {i}):
                    result = True
                    break
        memo[i] = result
        return result

    return [reaches(i, frozenset()) for i in range(len(certs))]


def classify(subjects: Sequence[x509util.PinSubject], roots: PublicRoots) -> list[dict[str, Any]]:
    """Who controls each subject's key, for `trustfleet pin` and TF107.

    Returns, per subject, {"kind": "root" | "ca" | "leaf" | "key", "owner":
    "public" | "yours", "why": a short reason}.
    """
    certs = [s.cert for s in subjects if s.cert is not None]
    reached = dict(zip(map(id, certs), reaches_public_root(certs, roots), strict=True))
    out = []
    for subject in subjects:
        cert = subject.cert
        pin = x509util.spki_sha256(subject.public_key)
        if cert is None:
            kind = "key"
        elif is_self_issued(cert):
            kind = "root"
        else:
            kind = "ca" if is_ca(cert) else "leaf"
        if pin in roots.pins:
            owner, why = "public", "a public (Mozilla) root's key"
        elif cert is None:
            owner, why = "yours", "a key that is not a public root's"
        elif not reached[id(cert)]:
            owner, why = "yours", ("self-signed, not a public root" if kind == "root"
                                   else "private CA: its chain reaches no public root")
        elif kind == "leaf":
            owner, why = "yours", "server key issued by a public CA; not yours if a CDN terminates TLS"
        else:
            owner, why = "public", "CA certificate chaining to a public root"
        out.append({"kind": kind, "owner": owner, "why": why})
    return out


def infrastructure_pins(chains: Iterable[Chain], roots: PublicRoots) -> dict[bytes, str]:
    """Pins of public infrastructure: every public root, and every CA certificate in the
    operator's chains that reaches one. Maps pin -> what it is."""
    found = {x509util.spki_sha256(root): f"the key of the public root {x509util.subject_label(root.subject)}"
             for root in roots.certs}
    for chain in chains:
        subjects = list(chain.subjects)
        for subject, info in zip(subjects, classify(subjects, roots), strict=True):
            if info["owner"] == "public" and subject.cert is not None:
                pin = x509util.spki_sha256(subject.public_key)
                found.setdefault(pin, f"the key of {x509util.subject_label(subject.cert.subject)} "
                                      f"in {chain.name}, a CA chaining to a public root")
    return found


# --------------------------------------------------------------------------- the lint


def _b64(pin: bytes) -> str:
    return base64.b64encode(pin).decode("ascii")


def _days(seconds: int) -> str:
    return f"{seconds // 86400} days"


def _span(seconds: int) -> str:
    """A duration in the largest whole unit that fits: days, hours, minutes or seconds."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} seconds"


def future_message(issued_at: int, now: int) -> str:
    """Why a bundle dated ahead of the clock is refused (TF111, build, sign, verify)."""
    return (f"issued_at {iso(issued_at)} is {_span(issued_at - now)} ahead of this clock ({iso(now)}); "
            f"devices take issued_at as time the offline keys vouch for, so a bundle dated ahead "
            f"moves their time forward (pins expire early, the next normal bundle looks expired)")


def _is_time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _pins_of(pinset: Mapping[str, Any]) -> list[bytes]:
    pins = pinset.get("pins")
    return [p for p in pins if isinstance(p, bytes)] if isinstance(pins, list) else []


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    except (x509.ExtensionNotFound, ValueError):
        return []


def _name_covers(name: str, domain: str, subdomains: bool) -> bool:
    if name.startswith("*."):
        parent = name[2:]
        head, _, rest = domain.partition(".")
        return (rest == parent and bool(head)) or (subdomains and parent.endswith("." + domain))
    return name == domain or (subdomains and name.endswith("." + domain))


def chain_concerns(chain: Chain, pinset: Mapping[str, Any]) -> bool:
    """Does a chain given with --chain belong to this pin-set? Yes when its end-entity
    certificate names the pin-set's domain (or a subdomain it covers), or when it holds
    a key the pin-set pins."""
    if chain.pins() & set(_pins_of(pinset)):
        return True
    domain = str(pinset.get("domain", ""))
    subdomains = pinset.get("subdomains") is True
    return any(_name_covers(n, domain, subdomains)
               for c in chain.certificates if not is_ca(c) for n in _dns_names(c))


class _Anchor(NamedTuple):
    label: str
    spki_pin: bytes | None
    identity: Any  # the certificate's DER; for a compact anchor, (name, key, not_after)
    not_after: int | None


def _anchor_info(entry: Any) -> _Anchor | None:
    if isinstance(entry, bytes):
        try:
            cert = x509.load_der_x509_certificate(entry)
            return _Anchor(x509util.subject_label(cert.subject), x509util.spki_sha256(cert), entry,
                           int(cert.not_valid_after_utc.timestamp()))
        except (ValueError, UnsupportedAlgorithm):
            return _Anchor("(unparseable certificate)", None, entry, None)
    if isinstance(entry, list) and 4 <= len(entry) <= 5:
        name, code, key, not_after = entry[:4]
        label = entry[4] if len(entry) == 5 and isinstance(entry[4], str) else None
        if not isinstance(name, bytes) or not isinstance(key, bytes):
            return None
        try:
            spki = device_docs.spki_from_parts(code, key) if code else key
        except (KeyError, TypeError):
            spki = None
        return _Anchor(label or describe.name_label(name),
                       hashlib.sha256(spki).digest() if spki else None, (name, spki, not_after),
                       not_after if _is_time(not_after) else None)
    return None


def lint_payload(payload: Mapping[str, Any], *, now: int, horizon: int = DEFAULT_HORIZON,
                 chains: Sequence[Chain] = (),
                 pinset_chains: Mapping[int, Sequence[Chain]] | None = None,
                 public_roots: PublicRoots | None = None, allow_future: bool = False,
                 time_lead: int | None = None) -> list[Finding]:
    """Lint a bundle payload map; return the findings (empty when clean).

    Args:
        payload: the bundle payload map (from `spec.load_spec` or a decoded bundle).
            Malformed fields are skipped, not raised on: the device parser judges those.
        now: the time to judge expiry against (seconds since the epoch).
        horizon: TF105 fires for pins expiring more than this after issued_at.
        chains: chains supplied for the whole bundle (--chain); each applies to the
            pin-sets it concerns (`chain_concerns`).
        pinset_chains: chains per pin-set index (the spec's `chains = [...]`).
        public_roots: the public roots for TF107 (certifi's, normally); None skips TF107.
        allow_future: skip TF111 (issued_at more than FUTURE_TOLERANCE past `now`).
        time_lead: the root's max_time_lead in seconds, when the root is known (TF112).

    Returns:
        Findings in order: issued_at, pin-sets (in order), then anchors.
    """
    pinset_chains = pinset_chains or {}
    roots = public_roots or PublicRoots(())
    all_chains = list(chains) + [c for cs in pinset_chains.values() for c in cs]
    infra = infrastructure_pins(all_chains, roots) if public_roots is not None else {}
    distrust = {d for d in payload.get("distrust", []) if isinstance(d, bytes)}
    issued_at = payload.get("issued_at")
    base = issued_at if _is_time(issued_at) else now
    findings: list[Finding] = []
    if _is_time(issued_at) and issued_at > now + FUTURE_TOLERANCE and not allow_future:
        findings.append(_finding("TF111", "issued_at", future_message(issued_at, now)))

    pinsets = payload.get("pinsets", [])
    for i, pinset in enumerate(pinsets if isinstance(pinsets, list) else []):
        if not isinstance(pinset, dict):
            continue
        own = list(pinset_chains.get(i, ()))
        applicable = own + [c for c in chains if chain_concerns(c, pinset)]
        findings.extend(_lint_pinset(i, pinset, now=now, base=base, horizon=horizon,
                                     chains=applicable, infra=infra, distrust=distrust))
        expires = pinset.get("expires")
        if time_lead is not None and _is_time(expires) and base < expires < base + time_lead:
            findings.append(_finding(
                "TF112", f"pinsets[{i}] {pinset.get('domain', '?')}",
                f"pins expire {iso(expires)}, {_span(expires - base)} after issue, within the root's "
                f"max_time_lead ({_span(time_lead)}): a timestamp may move a device's time that far past "
                f"issued_at, so whoever holds the online timestamp key could make devices treat these "
                f"pins as expired and fail open before their time"))

    findings.extend(_lint_anchors(payload, now=now, distrust=distrust))
    return findings


def _lint_pinset(i: int, pinset: Mapping[str, Any], *, now: int, base: int, horizon: int,
                 chains: Sequence[Chain], infra: Mapping[bytes, str],
                 distrust: set[bytes]) -> list[Finding]:
    where = f"pinsets[{i}] {pinset.get('domain', '?')}"
    pins = _pins_of(pinset)
    distinct = list(dict.fromkeys(pins))
    out = []
    if len(distinct) < 2:
        override = " (allow_single_pin overrides the rule of two)" if pinset.get("allow_single_pin") else ""
        out.append(_finding("TF101", where, f"{len(distinct)} distinct pin(s){override}: when that key "
                            "must be replaced, devices enforcing this pin-set cannot reach the server"))
    for pin in distinct:
        if pins.count(pin) > 1:
            out.append(_finding("TF102", where, f"pin {_b64(pin)} is listed {pins.count(pin)} times: "
                                "the backup is the primary's key, so there is no backup"))
    expires = pinset.get("expires")
    if not _is_time(expires):
        out.append(_finding("TF103", where, "no expiry: pins would be enforced forever, and devices "
                            "that miss an update stay pinned to old keys"))
    elif expires <= now:
        out.append(_finding("TF104", where, f"pins expired at {iso(expires)}: they are no longer "
                            "enforced (devices fall back to CA validation)"))
    elif expires > base + horizon:
        out.append(_finding("TF105", where, f"pins expire {iso(expires)}, {_days(expires - base)} "
                            f"after issue; the horizon is {_days(horizon)}"))
    if chains:
        held = set().union(*(c.pins() for c in chains))
        names = ", ".join(c.name for c in chains)
        for pin in distinct:
            if pin not in held:
                out.append(_finding("TF106", where, f"pin {_b64(pin)} matches no certificate or key "
                                    f"in the chains supplied ({names})"))
    for pin in distinct:
        if pin in infra:
            out.append(_finding("TF107", where, f"pin {_b64(pin)} is {infra[pin]}: public infrastructure "
                                "rotates without notice and is not yours to pin"))
    for pin in distinct:
        if pin in distrust:
            out.append(_finding("TF110", where, f"pin {_b64(pin)} is on the distrust list: devices "
                                "reject that key everywhere, so this pin can never match"))
    return out


def _lint_anchors(payload: Mapping[str, Any], *, now: int, distrust: set[bytes]) -> list[Finding]:
    out = []
    expires_at = payload.get("expires_at")
    seen_pins: dict[bytes, int] = {}
    seen_ids: dict[Any, int] = {}
    anchors = payload.get("anchors", [])
    for i, entry in enumerate(anchors if isinstance(anchors, list) else []):
        info = _anchor_info(entry)
        if info is None:
            continue
        where = f"anchors[{i}] {info.label}"
        if info.not_after is not None and _is_time(expires_at) and info.not_after < expires_at:
            already = " (already expired)" if info.not_after <= now else ""
            out.append(_finding("TF108", where, f"expires {iso(info.not_after)}{already}, before the "
                                f"bundle ({iso(expires_at)}): devices lose this anchor while the "
                                "bundle is still current"))
        if info.identity in seen_ids:
            out.append(_finding("TF109", where, f"the same certificate as anchors[{seen_ids[info.identity]}]"))
        elif info.spki_pin is not None and info.spki_pin in seen_pins:
            out.append(_finding("TF109", where, f"the same key as anchors[{seen_pins[info.spki_pin]}] "
                                f"(SPKI {_b64(info.spki_pin)})"))
        seen_ids.setdefault(info.identity, i)
        if info.spki_pin is not None:
            seen_pins.setdefault(info.spki_pin, i)
            if info.spki_pin in distrust:
                out.append(_finding("TF110", where, f"the anchor's key {_b64(info.spki_pin)} is on the "
                                    "distrust list"))
    return out


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """{"error": n, "warning": m}."""
    out = {ERROR: 0, WARNING: 0}
    for f in findings:
        out[f.severity] += 1
    return out


def check_allow(codes: Sequence[str]) -> frozenset[str]:
    """The --allow codes, upper-cased. Raises: UsageError for a code that is not a rule."""
    out = frozenset(c.strip().upper() for c in codes)
    unknown = sorted(out - set(RULES))
    if unknown:
        raise UsageError(f"--allow {unknown[0]}: no such lint rule; rules: {', '.join(sorted(RULES))}")
    return out


def blocks_build(finding: Finding, payload: Mapping[str, Any], *, strict: bool,
                 allow: frozenset[str] = frozenset()) -> bool:
    """Does this finding stop `bundle build`? Every error does (every finding with strict),
    except a code the operator allowed by name (--allow TF106) and TF101 on a pin-set whose
    spec says allow_single_pin: those are explicit overrides, and the build keeps them (lint
    still reports them)."""
    if finding.code in allow:
        return False
    if strict:
        return True
    if finding.severity != ERROR:
        return False
    if finding.code == "TF101":
        index = finding.location.split("]", 1)[0].removeprefix("pinsets[")
        pinsets = payload.get("pinsets")
        if index.isdigit() and isinstance(pinsets, list) and int(index) < len(pinsets):
            pinset = pinsets[int(index)]
            return not (isinstance(pinset, Mapping) and pinset.get("allow_single_pin") is True)
    return True


def failed(findings: Sequence[Finding], *, strict: bool, allow: frozenset[str] = frozenset()) -> bool:
    """True when the findings should fail the command: any error, or any finding with strict,
    leaving out the codes in `allow`."""
    return any((strict or f.severity == ERROR) and f.code not in allow for f in findings)


# --------------------------------------------------------------------------- inputs


def horizon_seconds(text: str) -> int:
    """--horizon as seconds: a duration like '400d', longer than zero. Raises: UsageError."""
    seconds = spec.parse_duration(text, "--horizon")
    if seconds <= 0:
        raise UsageError("--horizon: must be longer than zero")
    return seconds


def load_chains(paths: Sequence[str | Path]) -> list[Chain]:
    """Read --chain files: certificates (a chain, or a directory) or a public key each."""
    return [Chain(str(p), x509util.load_pin_subject(p)) for p in paths]


def public_roots(path: str | Path | None = None) -> PublicRoots:
    """The public roots: certificates from `path`, else certifi's Mozilla roots."""
    if path:
        return PublicRoots(x509util.load_certificates(path))
    certs, _ = x509util.certifi_certificates_with_skipped()
    return PublicRoots(certs)


def spec_chains(report: spec.BuildReport) -> dict[int, list[Chain]]:
    """The per-pin-set `chains = [...]` of a spec, as lint chains."""
    return {i: [Chain(name, subjects) for name, subjects in chains]
            for i, chains in report.pinset_chains.items()}


def lint_built(payload: dict, report: spec.BuildReport, *, chain_files: Sequence[str | Path],
               horizon: str, now: int | None = None, allow_future: bool = False,
               time_lead: int | None = None) -> list[Finding]:
    """The lints `bundle build` runs on the payload it just built."""
    return lint_payload(payload, now=int(time.time()) if now is None else now,
                        horizon=horizon_seconds(horizon), chains=load_chains(chain_files),
                        pinset_chains=spec_chains(report), public_roots=public_roots(),
                        allow_future=allow_future, time_lead=time_lead)


def root_time_lead(root_paths: Sequence[str | Path] | None) -> int | None:
    """The max_time_lead of the root (chain) given with --root, or None without one. Raises: UsageError
    (unreadable), TrustfleetError (the chain does not verify)."""
    if not root_paths:
        return None
    root = documents.load_root_chain(list(root_paths))
    return root.time_lead


def printable(text: str) -> str:
    """Escape control characters: labels and domains come from certificates and files."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _looks_like_cbor(data: bytes) -> bool:
    # A payload is a CBOR map (major type 5); a signed document is tag 98 or 18.
    return bool(data) and (0xA0 <= data[0] <= 0xBF or data[:2] == b"\xd8\x62" or data[0] == 0xD2)


def read_target(path: Path, now: int) -> tuple[str, dict, dict[int, list[Chain]], list[str]]:
    """(kind "spec" or "bundle", payload map, per-pin-set chains, notes) of a lint target."""
    data = documents.read_file(path)
    if not _looks_like_cbor(data):
        payload, report = spec.load_spec(path, now=now, lint=True)
        return "spec", payload, spec_chains(report), list(report.warnings)
    try:
        body = cose.parse(data, DEFAULT).unverified_payload if data[0] in (0xD8, 0xD2) else data
        payload = cbor.decode(body, DEFAULT)
    except TrustfleetError as exc:
        raise UsageError(f"{path}: not a bundle spec (TOML) or a readable bundle: {exc}") from None
    if not isinstance(payload, dict) or payload.get("type") != "bundle":
        kind = payload.get("type") if isinstance(payload, dict) else None
        raise UsageError(f"{path}: a {kind or 'non-trustfleet'} document, not a bundle")
    return "bundle", payload, {}, ["the bundle was read without verifying its signatures"]
