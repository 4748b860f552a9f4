"""Read an operator's bundle spec (TOML) into a bundle payload map.

The spec names certificates by file, folder or the certifi (Mozilla) store,
pin-sets with their expiry, a distrust list and the policy. Relative paths
are relative to the spec file. Every table is checked for unknown keys so a
typo ("include_subdomain") is an error naming the key, not a silent default.

Build-time rules enforced here (the device enforces the same ones again):
- every pin-set has at least two distinct pins (primary and backup) unless
  it sets allow_single_pin = true, which is then written into the bundle;
- pin expiry and bundle expiry are given explicitly, as a date or as a
  duration from issued_at ("90d", "12h").
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustfleet_device import documents as device_docs
from trustfleet_server import times, x509util
from trustfleet_server.errors import UsageError


class SpecError(UsageError):
    """The bundle spec is invalid; the message names the key (exit code 2)."""


# The highest document version a device accepts (docs/operations.md, "Versions"). A version at
# the top could never be followed, so builders refuse anything above it with one line.
MAX_VERSION: int = device_docs.MAX_VERSION

TOP_KEYS = {"fleet", "version", "issued_at", "expires", "policy", "anchors", "pinsets", "distrust"}
POLICY_KEYS = {"user_anchors", "max_timestamp_age"}
ANCHOR_KEYS = {"files", "certifi", "match", "form", "labels"}
PINSET_KEYS = {"domain", "include_subdomains", "pins", "pin_files", "expires", "mode",
               "report_to", "allow_single_pin", "chains"}
DISTRUST_KEYS = {"pins", "files"}


@dataclass
class BuildReport:
    """What the build did, for the CLI to print."""

    anchors_full: int = 0
    anchors_compact: int = 0
    certifi_skipped: int = 0
    warnings: list[str] = field(default_factory=list)
    # Per pin-set index: the chains its `chains = [...]` names, as (file name,
    # the certificates or key in it). For the lint (TF106, TF107); never in the bundle.
    pinset_chains: dict[int, list[tuple[str, list[x509util.PinSubject]]]] = field(default_factory=dict)


def parse_time(value: Any, where: str, base: int | None = None) -> int:
    """Seconds since the epoch from a TOML date/datetime, an RFC 3339 string, an int, or a duration."""
    if isinstance(value, bool):
        raise SpecError(f"{where}: expected a date, a duration like '90d', or seconds")
    if isinstance(value, int):
        if value < 0:
            raise SpecError(f"{where}: negative time {value}")
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp())
    if isinstance(value, str):
        if times.is_duration(value):
            if base is None:
                raise SpecError(f"{where}: a duration needs a reference time")
            return base + parse_duration(value, where)
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(f"{where}: {value!r} is not a date, datetime or duration like '90d'") from None
        return parse_time(parsed, where)
    raise SpecError(f"{where}: expected a date, a duration like '90d', or seconds")


def parse_version(value: Any, where: str, lowest: int = 1) -> int:
    """A document version: a whole number from `lowest` (1; 0 for "none installed") to MAX_VERSION,
    given as an int (TOML) or decimal text (a command-line flag). Raises: SpecError."""
    if isinstance(value, str) and where.startswith("--") and re.fullmatch(r"[+-]?[0-9]{1,400}", value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= MAX_VERSION:
        shown = value if isinstance(value, int) and len(str(value)) <= 40 else repr(value)[:40]
        raise SpecError(f"{where}: {shown} is not a version: expected a whole number from {lowest} to "
                        f"{MAX_VERSION}, the highest version devices accept")
    return value


def parse_duration(value: Any, where: str) -> int:
    """Seconds from an int or a string like '48h' (times.parse_duration, strict)."""
    return times.parse_duration(value, where, error=SpecError)


def decode_pin(text: Any, where: str) -> bytes:
    """A base64 SPKI SHA-256 pin (as `trustfleet pin` prints), or 'sha256/<base64>'."""
    if not isinstance(text, str):
        raise SpecError(f"{where}: expected a base64 pin string")
    body = text.strip().removeprefix("sha256/")
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError:
        raise SpecError(f"{where}: {text!r} is not base64") from None
    if len(raw) != 32:
        raise SpecError(f"{where}: pin is {len(raw)} bytes, an SPKI SHA-256 pin is 32")
    return raw


def _check_keys(table: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return table


def _require(table: dict, key: str, where: str) -> Any:
    if key not in table:
        raise SpecError(f"{where}: missing required key {key!r}")
    return table[key]


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where}: expected a string or a list of strings")
    return value


def _resolve(base: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def _certifi_matches(cert, patterns: list[str]) -> bool:
    if not patterns:
        return True
    subject = cert.subject.rfc4514_string().lower()
    fingerprint = x509util.cert_der(cert)
    import hashlib

    fp_hex = hashlib.sha256(fingerprint).hexdigest()
    for pattern in patterns:
        p = pattern.lower().replace(":", "")
        if re.fullmatch(r"[0-9a-f]{64}", p):
            if p == fp_hex:
                return True
        elif p in subject:
            return True
    return False


def _anchor_entries(spec: list, base: Path, report: BuildReport, lint: bool = False) -> list:
    entries = []
    seen: set[bytes] = set()
    for i, table in enumerate(spec):
        where = f"anchors[{i}]"
        _check_keys(table, ANCHOR_KEYS, where)
        form = table.get("form", "compact")
        if form not in ("compact", "full"):
            raise SpecError(f"{where}.form: {form!r} is not 'compact' or 'full'")
        labels = table.get("labels", False)
        if not isinstance(labels, bool):
            raise SpecError(f"{where}.labels: expected true or false")
        certs = []
        if "files" in table:
            for name in _str_list(table["files"], where + ".files"):
                certs.extend(x509util.load_certificates(_resolve(base, name)))
        if table.get("certifi"):
            store, skipped = x509util.certifi_certificates_with_skipped()
            report.certifi_skipped += skipped
            patterns = _str_list(table.get("match", []), where + ".match")
            chosen = [c for c in store if _certifi_matches(c, patterns)]
            if patterns and not chosen:
                raise SpecError(f"{where}.match: no certificate in the certifi store matches {patterns}")
            certs.extend(chosen)
        elif "match" in table:
            raise SpecError(f"{where}.match: only applies with certifi = true")
        if not certs:
            raise SpecError(f"{where}: give files = [...] or certifi = true")
        for cert in certs:
            der = x509util.cert_der(cert)
            if der in seen and not lint:  # kept for the lint to report (TF109)
                report.warnings.append(f"{where}: duplicate anchor {x509util.subject_label(cert.subject)} skipped")
                continue
            seen.add(der)
            if form == "full":
                entries.append(der)
                report.anchors_full += 1
            else:
                f = x509util.compact_anchor_fields(cert)
                # The label is the subject's CN or O, which the name already holds:
                # store it only when asked (labels = true), to keep flash small.
                entries.append(device_docs.compact_anchor(f.subject_der, f.spki_der, f.not_after,
                                                            f.label if labels else None))
                report.anchors_compact += 1
    return entries


def _pinset(table: Any, i: int, base: Path, issued_at: int, report: BuildReport,
            lint: bool = False) -> dict:
    where = f"pinsets[{i}]"
    _check_keys(table, PINSET_KEYS, where)
    domain = _require(table, "domain", where)
    if not isinstance(domain, str):
        raise SpecError(f"{where}.domain: expected a string")
    domain = domain.strip().lower().rstrip(".")
    if domain.startswith("*."):
        raise SpecError(f"{where}.domain: use the parent name with include_subdomains = true, not {domain!r}")
    pins: list[bytes] = []
    for j, text in enumerate(table.get("pins", [])):
        pins.append(decode_pin(text, f"{where}.pins[{j}]"))
    for name in _str_list(table.get("pin_files", []), where + ".pin_files"):
        for subject in x509util.load_pin_subject(_resolve(base, name)):
            pins.append(x509util.spki_sha256(subject.public_key))
    if len(set(pins)) != len(pins) and not lint:
        raise SpecError(f"{where}.pins: the same pin is listed twice; the backup must be a different key")
    single = table.get("allow_single_pin", False)
    if not isinstance(single, bool):
        raise SpecError(f"{where}.allow_single_pin: expected true or false")
    if len(pins) < 2 and not single and not lint:
        raise SpecError(
            f"{where}.pins: {len(pins)} pin(s) for {domain}; give a primary and a backup pin from a "
            f"different key, or set allow_single_pin = true to override (it is recorded in the bundle)"
        )
    if not pins and not lint:
        raise SpecError(f"{where}.pins: no pins")
    if lint and "expires" not in table:
        expires = None  # TF103
    else:
        expires = parse_time(_require(table, "expires", where), where + ".expires", issued_at)
        if expires <= issued_at and not lint:
            raise SpecError(f"{where}.expires: pin-set already expired at issue time")
    mode = table.get("mode", "enforce")
    if mode not in device_docs.MODES:
        raise SpecError(f"{where}.mode: {mode!r} is not 'enforce' or 'report'")
    subdomains = table.get("include_subdomains", False)
    if not isinstance(subdomains, bool):
        raise SpecError(f"{where}.include_subdomains: expected true or false")
    out = {
        "domain": domain,
        "subdomains": subdomains,
        "pins": pins,
        "expires": expires,
        "mode": mode,
        "report_to": _str_list(table.get("report_to", []), where + ".report_to"),
    }
    if single:
        out["allow_single_pin"] = True
    chains = [(name, x509util.load_pin_subject(_resolve(base, name)))
              for name in _str_list(table.get("chains", []), where + ".chains")]
    if chains:
        report.pinset_chains[i] = chains
    return out


def _distrust(table: Any, base: Path) -> list[bytes]:
    _check_keys(table, DISTRUST_KEYS, "distrust")
    out = [decode_pin(p, f"distrust.pins[{i}]") for i, p in enumerate(table.get("pins", []))]
    for name in _str_list(table.get("files", []), "distrust.files"):
        for subject in x509util.load_pin_subject(_resolve(base, name)):
            out.append(x509util.spki_sha256(subject.public_key))
    return sorted(set(out))


def load_spec(path: Path, *, version: int | None = None, now: int | None = None,
              lint: bool = False) -> tuple[dict, BuildReport]:
    """Read a TOML bundle spec and return (bundle payload map, report).

    Args:
        path: the spec file.
        version: overrides the spec's version (e.g. from CI).
        now: issued_at when the spec does not fix it (defaults to the clock).
        lint: for `trustfleet lint` only: the pin-set rules the lint reports by
            code (rule of two, repeated pin, missing or past expiry: TF101-TF104;
            a repeated anchor: TF109) are left in the map instead of refused or
            skipped, and a missing pin-set expiry is None.
            Such a map is for the lint to read; it is never built.

    Raises:
        SpecError: the spec is invalid (message names the key).
        CertificateFileError: a referenced certificate file is unusable.
    """
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file; expected a TOML bundle spec") from None
    _check_keys(spec, TOP_KEYS, str(path))
    base = path.parent
    report = BuildReport()
    fleet = _require(spec, "fleet", f"{path}: spec")
    if not isinstance(fleet, str) or not fleet:
        raise SpecError("fleet: expected a non-empty string")
    version = parse_version(version if version is not None else _require(spec, "version", f"{path}: spec"),
                            "--version" if version is not None else "version")
    issued_at = parse_time(spec["issued_at"], "issued_at") if "issued_at" in spec else int(now or time.time())
    expires_at = parse_time(_require(spec, "expires", f"{path}: spec"), "expires", issued_at)
    if expires_at <= issued_at:
        raise SpecError("expires: the bundle would already be expired at issue time")
    policy = _check_keys(spec.get("policy", {}), POLICY_KEYS, "policy")
    user_anchors = policy.get("user_anchors", False)
    if not isinstance(user_anchors, bool):
        raise SpecError("policy.user_anchors: expected true or false")
    payload = {
        "type": "bundle",
        "spec": device_docs.SPEC,
        "fleet": fleet,
        "version": version,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "anchors": _anchor_entries(spec.get("anchors", []), base, report, lint),
        "pinsets": [_pinset(t, i, base, issued_at, report, lint)
                    for i, t in enumerate(spec.get("pinsets", []))],
        "distrust": _distrust(spec.get("distrust", {}), base),
        "policy": {
            "user_anchors": user_anchors,
            "max_timestamp_age": parse_duration(policy.get("max_timestamp_age", "48h"),
                                                "policy.max_timestamp_age"),
        },
    }
    if not payload["anchors"]:
        raise SpecError("anchors: a bundle without trust anchors would lock devices out; add [[anchors]]")
    return payload, report
