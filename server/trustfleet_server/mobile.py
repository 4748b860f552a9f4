"""A bundle's pins for mobile apps: Android Network Security Configuration and TrustKit.

Pure functions, no file I/O: a bundle payload map in, text (or a dict) out;
an NSC file's bytes in, pin-set maps out. The CLI is `cmd_export.py`.

Exports:
- `nsc_xml`: Android's network_security_config.xml. One <domain-config> per
  enforced pin-set; trust anchors in <base-config> (system, the bundle's
  whole-certificate anchors as @raw resources, or both); optional
  <debug-overrides>. NSC has no report-only mode, so report-only pin-sets
  are left out with a warning.
- `trustkit_config` / `trustkit_plist` / `trustkit_json`: the TrustKit (iOS)
  configuration dictionary. Report-only pin-sets become
  TSKEnforcePinning = false.
- `trustkit_android_xml`: the NSC dialect TrustKit-Android reads, with a
  <trustkit-config> in each <domain-config>.

Both TrustKit libraries refuse a domain with fewer than two pins (no backup
pin), so the TrustKit exports refuse such a pin-set too (ExportRefused,
naming the domain) instead of writing a file that fails when the app starts.

Import: `read_nsc` reads an existing NSC file into pin-set maps. It uses
expat with a handler that refuses any DOCTYPE before its internal subset is
read, so entity declarations (billion laughs, external entities) never get a
chance to expand; undeclared entity references are not well-formed XML.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import plistlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

from cryptography import x509

from trustfleet_device import cbor
from trustfleet_device import documents as device_docs
from trustfleet_device.errors import DecodeError, TrustfleetError
from trustfleet_server import documents, spec, x509util
from trustfleet_server.times import iso

ANCHOR_CHOICES = ("system", "bundle", "both")
NSC_DIGEST = "SHA-256"
MAX_NSC_BYTES = 1 << 20
MAX_XML_DEPTH = 32
RAW_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
FULL_FORM_HINT = 'use form = "full" in the bundle spec for anchors an app must trust'


class MobileError(TrustfleetError):
    """A bundle cannot be exported for mobile apps, or an NSC file cannot be imported (exit 1)."""


class ExportRefused(MobileError):
    """The export would produce a configuration the target platform rejects or misreads."""


class NscImportError(MobileError):
    """An NSC file is malformed, hostile, or uses something trustfleet cannot represent."""


@dataclass
class RawResource:
    """A certificate for res/raw/<name>.pem, referenced as @raw/<name>."""

    name: str
    pem: bytes


@dataclass
class Export:
    """What an export produced: the text, raw resources to write, and what was left out."""

    text: str
    warnings: list[str] = field(default_factory=list)
    raw: list[RawResource] = field(default_factory=list)
    pinsets: int = 0


# --------------------------------------------------------------------------- shared


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def pin_date(expires: int) -> str:
    """The yyyy-MM-dd date an expiry second falls on (UTC), rounded down.

    NSC and TrustKit stop enforcing pins from the start of that date; rounding
    down never keeps pins enforced after trustfleet would have stopped.
    """
    return dt.datetime.fromtimestamp(expires, dt.UTC).date().isoformat()


def date_epoch(text: str) -> int:
    """Seconds since the epoch of 00:00 UTC on a yyyy-MM-dd date. Raises: ValueError."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(text)
    day = dt.date.fromisoformat(text)
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _bundle(payload: dict) -> device_docs.Bundle:
    """The typed bundle for a payload map, checked by the device parser. Raises: DecodeError."""
    if not isinstance(payload, dict) or payload.get("type") != "bundle":
        raise DecodeError("not a bundle payload")
    return device_docs.bundle_from_map(payload)


def _common_warnings(b: device_docs.Bundle, pinsets: Sequence[device_docs.PinSet], target: str,
                     now: int | None) -> list[str]:
    """Warnings about what the target cannot say: the distrust list, and expiry to the second."""
    out = []
    if b.distrust:
        out.append(f"{len(b.distrust)} distrusted key(s) cannot be expressed in {target}; "
                   "the app keeps trusting CAs with those keys")
    for p in pinsets:
        if p.expires % 86400:
            out.append(f"{p.domain}: pins expire at {iso(p.expires)}; {target} takes a date, "
                       f"so they stop being enforced from {pin_date(p.expires)} 00:00")
        if now is not None and p.expires <= now:
            out.append(f"{p.domain}: the pin-set already expired ({pin_date(p.expires)}); "
                       "the app will not enforce it")
    return out


def _check_unique(pinsets: Sequence[device_docs.PinSet], target: str) -> None:
    seen: set[str] = set()
    for p in pinsets:
        if p.domain in seen:
            raise ExportRefused(f"{p.domain}: two pin-sets for the same domain; {target} allows "
                                "one configuration per domain")
        seen.add(p.domain)


def _check_two_pins(pinsets: Sequence[device_docs.PinSet]) -> None:
    for p in pinsets:
        if len(p.pins) < 2:
            raise ExportRefused(
                f"{p.domain}: {len(p.pins)} pin; TrustKit and TrustKit-Android refuse a pin-set "
                "without a backup pin (fewer than two pins), so the app would fail at start")


def _report_uris(p: device_docs.PinSet, warnings: list[str]) -> list[str]:
    """The pin-set's report URIs TrustKit can use (http and https URLs)."""
    keep = [u for u in p.report_to if u.lower().startswith(("https://", "http://"))]
    dropped = len(p.report_to) - len(keep)
    if dropped:
        warnings.append(f"{p.domain}: {dropped} report URI(s) are not http(s) URLs and are left "
                        "out (TrustKit posts reports over HTTP)")
    return keep


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines)
            + "\n-----END CERTIFICATE-----\n").encode("ascii")


def _raw_name(prefix: str, kind: str, der: bytes) -> str:
    return f"{prefix}_{kind}_{hashlib.sha256(der).hexdigest()[:12]}"


def _comment_text(text: str) -> str:
    """Text safe inside an XML comment (no '--', no trailing '-')."""
    return " " + re.sub(r"-{2,}", "-", text).rstrip("-") + " "


# --------------------------------------------------------------------------- NSC export


def _xml_text(root: ET.Element) -> str:
    ET.indent(root, space="    ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _domain_config(root: ET.Element, p: device_docs.PinSet) -> ET.Element:
    dc = ET.SubElement(root, "domain-config")
    domain = ET.SubElement(dc, "domain", includeSubdomains="true" if p.subdomains else "false")
    domain.text = p.domain
    ps = ET.SubElement(dc, "pin-set", expiration=pin_date(p.expires))
    for raw in p.pins:
        ET.SubElement(ps, "pin", digest=NSC_DIGEST).text = b64(raw)
    return dc


def _enforced(b: device_docs.Bundle, warnings: list[str], why: str) -> list[device_docs.PinSet]:
    out = []
    for p in b.pinsets:
        if p.mode == "enforce":
            out.append(p)
        else:
            warnings.append(f"{p.domain}: report-only pin-set left out: {why}")
    return out


def _bundle_anchor_resources(b: device_docs.Bundle, prefix: str,
                             warnings: list[str]) -> list[RawResource]:
    compact = 0
    distrusted = 0
    out: list[RawResource] = []
    distrust = set(b.distrust)
    for i, a in enumerate(b.anchors):
        if a.der is None:
            compact += 1
            continue
        try:
            cert = x509.load_der_x509_certificate(a.der)
            key_pin = x509util.spki_sha256(cert)
        except ValueError:
            warnings.append(f"bundle.anchors[{i}]: the certificate does not parse; left out")
            continue
        if key_pin in distrust:
            distrusted += 1
            continue
        out.append(RawResource(_raw_name(prefix, "ca", a.der), _pem(a.der)))
    if compact:
        warnings.append(f"{compact} compact anchor(s) hold no certificate and cannot be exported; "
                        f"{FULL_FORM_HINT}")
    if distrusted:
        warnings.append(f"{distrusted} anchor(s) left out: their key is distrusted by the bundle")
    return out


def nsc_xml(payload: dict, *, anchors: str = "system", debug_cas: Sequence[bytes] = (),
            cleartext_permitted: bool | None = None, raw_prefix: str = "trustfleet",
            now: int | None = None) -> Export:
    """Android network_security_config.xml for a bundle payload map.

    Args:
        payload: the bundle payload map (spec.load_spec, or the decoded payload).
        anchors: base-config trust anchors: "system", "bundle" (the bundle's
            whole-certificate anchors as @raw resources) or "both".
        debug_cas: DER certificates for <debug-overrides> (debuggable builds
            only; they override pins, as Android does by default there).
        cleartext_permitted: base-config cleartextTrafficPermitted, or None to leave it out.
        raw_prefix: resource name prefix (lower-case letters, digits, '_').
        now: when given, warn about pin-sets that already expired.

    Raises:
        ExportRefused: duplicate domains, or --anchors bundle with no exportable anchor.
        DecodeError: the payload is not a valid bundle.
        ValueError: bad `anchors` or `raw_prefix`.
    """
    if anchors not in ANCHOR_CHOICES:
        raise ValueError(f"anchors must be one of {ANCHOR_CHOICES}")
    if not RAW_NAME.match(raw_prefix):
        raise ValueError("raw resource prefix must be lower-case letters, digits and '_', "
                         "starting with a letter")
    b = _bundle(payload)
    warnings: list[str] = []
    pinsets = _enforced(b, warnings, "NSC has no report-only mode (it would enforce the pins)")
    warnings[:0] = _common_warnings(b, pinsets, "NSC", now)
    _check_unique(pinsets, "NSC")
    for p in pinsets:
        if p.report_to:
            warnings.append(f"{p.domain}: report_to cannot be expressed in NSC; left out")
        if len(p.pins) < 2:
            warnings.append(f"{p.domain}: a single pin (allow_single_pin): the app has no backup pin")
    if b.policy.user_anchors:
        warnings.append('policy.user_anchors is not exported; add <certificates src="user"/> '
                        "yourself if managed devices need enterprise CAs")

    root = ET.Element("network-security-config")
    root.append(ET.Comment(_comment_text(
        f"generated by trustfleet from bundle v{b.version} of fleet {b.fleet}; regenerate, do not edit")))
    resources: list[RawResource] = []
    if anchors in ("bundle", "both"):
        resources = _bundle_anchor_resources(b, raw_prefix, warnings)
        if not resources and anchors == "bundle":
            raise ExportRefused("--anchors bundle: no anchor of the bundle can be exported, and an "
                                f"app trusting nothing can connect nowhere; {FULL_FORM_HINT}, or use "
                                "--anchors system|both")
    base_attrs = {}
    if cleartext_permitted is not None:
        base_attrs["cleartextTrafficPermitted"] = "true" if cleartext_permitted else "false"
    base = ET.SubElement(root, "base-config", base_attrs)
    ta = ET.SubElement(base, "trust-anchors")
    if anchors in ("system", "both"):
        ET.SubElement(ta, "certificates", src="system")
    for r in resources:
        ET.SubElement(ta, "certificates", src=f"@raw/{r.name}")

    for p in pinsets:
        _domain_config(root, p)

    if debug_cas:
        dbg = ET.SubElement(root, "debug-overrides")
        dta = ET.SubElement(dbg, "trust-anchors")
        seen: set[str] = set()
        for der in debug_cas:
            name = _raw_name(raw_prefix, "debug", der)
            if name in seen:
                continue
            seen.add(name)
            resources.append(RawResource(name, _pem(der)))
            ET.SubElement(dta, "certificates", src=f"@raw/{name}", overridePins="true")
    if not pinsets:
        warnings.append("no enforced pin-set to export; the file only sets trust anchors")
    return Export(_xml_text(root), warnings, resources, len(pinsets))


# --------------------------------------------------------------------------- TrustKit


def trustkit_config(payload: dict, *, swizzle: bool = False,
                    now: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The TrustKit configuration dictionary (TrustKit >= 1.6.0) and warnings.

    Keys: TSKSwizzleNetworkDelegates, TSKPinnedDomains -> domain ->
    TSKPublicKeyHashes, TSKIncludeSubdomains, TSKEnforcePinning,
    TSKExpirationDate, TSKDisableDefaultReportUri and, when there are http(s)
    report URIs, TSKReportUris. TSKPublicKeyAlgorithms is not written: it is
    deprecated since TrustKit 1.6.0 and the pins are plain SPKI SHA-256.
    The default report URI (Data Theorem's server) is always disabled.

    Raises: ExportRefused (fewer than two pins, duplicate domain, no pin-set), DecodeError.
    """
    b = _bundle(payload)
    _check_two_pins(b.pinsets)
    _check_unique(b.pinsets, "TrustKit")
    if not b.pinsets:
        raise ExportRefused("the bundle has no pin-set; TrustKit refuses a configuration "
                            "without pinned domains")
    warnings = _common_warnings(b, b.pinsets, "TrustKit", now)
    domains: dict[str, Any] = {}
    for p in b.pinsets:
        entry: dict[str, Any] = {
            "TSKPublicKeyHashes": [b64(x) for x in p.pins],
            "TSKIncludeSubdomains": p.subdomains,
            "TSKEnforcePinning": p.mode == "enforce",
            "TSKExpirationDate": pin_date(p.expires),
            "TSKDisableDefaultReportUri": True,
        }
        uris = _report_uris(p, warnings)
        if uris:
            entry["TSKReportUris"] = uris
        domains[p.domain] = entry
    return {"TSKSwizzleNetworkDelegates": swizzle, "TSKPinnedDomains": domains}, warnings


def trustkit_plist(payload: dict, **kw: Any) -> Export:
    """The TrustKit dictionary as an XML property list."""
    config, warnings = trustkit_config(payload, **kw)
    text = plistlib.dumps(config, fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")
    return Export(text, warnings, pinsets=len(config["TSKPinnedDomains"]))


def trustkit_json(payload: dict, **kw: Any) -> Export:
    """The TrustKit dictionary as JSON (the same values as the plist)."""
    config, warnings = trustkit_config(payload, **kw)
    return Export(json.dumps(config, indent=2, sort_keys=True) + "\n", warnings,
                  pinsets=len(config["TSKPinnedDomains"]))


def trustkit_android_xml(payload: dict, *, now: int | None = None) -> Export:
    """TrustKit-Android's network_security_config.xml: <pin-set> plus <trustkit-config>.

    Report-only pin-sets are left out with a warning: on Android 7+ the OS
    reads the same file and enforces every <pin-set> whatever
    enforcePinning says. Trust anchors are left to the platform default
    (use `nsc_xml` for anchors and debug overrides).

    Raises: ExportRefused (fewer than two pins, duplicate domain), DecodeError.
    """
    b = _bundle(payload)
    _check_two_pins(b.pinsets)
    warnings: list[str] = []
    pinsets = _enforced(b, warnings, "on Android 7+ the OS enforces every <pin-set> in this file, "
                                     "whatever TrustKit's enforcePinning says")
    warnings[:0] = _common_warnings(b, pinsets, "TrustKit-Android", now)
    _check_unique(pinsets, "TrustKit-Android")
    root = ET.Element("network-security-config")
    root.append(ET.Comment(_comment_text(
        f"generated by trustfleet from bundle v{b.version} of fleet {b.fleet} for TrustKit-Android")))
    for p in pinsets:
        dc = _domain_config(root, p)
        tk = ET.SubElement(dc, "trustkit-config", enforcePinning="true",
                           disableDefaultReportUri="true")
        for uri in _report_uris(p, warnings):
            ET.SubElement(tk, "report-uri").text = uri
    if not pinsets:
        warnings.append("no enforced pin-set to export")
    return Export(_xml_text(root), warnings, pinsets=len(pinsets))


# --------------------------------------------------------------------------- NSC import


@dataclass
class NscImport:
    """Pin-set maps read from an NSC file (pins as bytes, expires in epoch seconds)."""

    pinsets: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _refuse_dtd(name: Any = None, *_: Any) -> None:
    raise NscImportError(f"<!DOCTYPE {name}>: refused; an NSC file needs no DTD, and a DTD "
                         "carries entity expansion and external entity attacks")


def _refuse_entity(name: Any = None, *_: Any) -> None:
    raise NscImportError(f"entity declaration {name!r} refused")


def parse_xml_safely(raw: bytes) -> ET.Element:
    """An element tree from XML bytes with no DTD, no entities and bounded depth. Raises: NscImportError."""
    if len(raw) > MAX_NSC_BYTES:
        raise NscImportError(f"file is {len(raw)} bytes; an NSC file is at most {MAX_NSC_BYTES}")
    builder = ET.TreeBuilder()
    depth = 0

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_XML_DEPTH:
            raise NscImportError(f"<{name}>: elements nested more than {MAX_XML_DEPTH} deep")
        builder.start(name, attrs)

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(name)

    p = expat.ParserCreate()
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    p.StartDoctypeDeclHandler = _refuse_dtd
    p.EntityDeclHandler = _refuse_entity
    p.UnparsedEntityDeclHandler = _refuse_entity
    p.ExternalEntityRefHandler = _refuse_entity
    p.StartElementHandler = start
    p.EndElementHandler = end
    p.CharacterDataHandler = builder.data
    try:
        p.Parse(raw, True)
    except expat.ExpatError as exc:
        raise NscImportError(f"not well-formed XML: {expat.ErrorString(exc.code)} "
                             f"(line {exc.lineno}, column {exc.offset})") from None
    except RecursionError:
        raise NscImportError("XML nested too deeply") from None
    return builder.close()


def _bool_attr(el: ET.Element, name: str, default: bool) -> bool:
    value = el.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise NscImportError(f"<{el.tag} {name}={value!r}>: expected \"true\" or \"false\"")
    return value == "true"


def _text_only(el: ET.Element) -> str:
    if len(el):
        raise NscImportError(f"<{el.tag}>: contains element <{el[0].tag}>; expected text only")
    return (el.text or "").strip()


def _read_pin(el: ET.Element) -> bytes:
    digest = el.get("digest")
    if digest != NSC_DIGEST:
        raise NscImportError(f"<pin digest={digest!r}>: unknown digest algorithm "
                             f"(NSC pins use {NSC_DIGEST})")
    text = _text_only(el)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NscImportError(f"<pin>: {text!r} is not base64") from None
    if len(raw) != 32:
        raise NscImportError(f"<pin>: {len(raw)} bytes; a SHA-256 pin is 32")
    return raw


def _read_pin_set(el: ET.Element, warnings: list[str]) -> tuple[list[bytes], int | None]:
    expiration = el.get("expiration")
    expires = None
    if expiration is not None:
        try:
            expires = date_epoch(expiration)
        except ValueError:
            raise NscImportError(f"<pin-set expiration={expiration!r}>: not a yyyy-MM-dd date") from None
    pins: list[bytes] = []
    for child in el:
        if child.tag != "pin":
            warnings.append(f"<pin-set>: unknown element <{child.tag}> ignored")
            continue
        raw = _read_pin(child)
        if raw in pins:
            warnings.append(f"<pin-set>: pin {b64(raw)} listed twice; kept once")
            continue
        pins.append(raw)
    return pins, expires


_CONFIG_IGNORED = {"trust-anchors", "certificateTransparency"}


def _read_domain_config(el: ET.Element, inherited: tuple[list[bytes], int | None] | None,
                        out: NscImport, seen: set[str], default_expires: int | None) -> None:
    domains: list[tuple[str, bool]] = []
    own: tuple[list[bytes], int | None] | None = None
    nested: list[ET.Element] = []
    for child in el:
        if child.tag == "domain":
            name = _text_only(child).lower()
            try:
                device_docs.check_domain_pattern(name, "<domain>")
            except DecodeError as exc:
                raise NscImportError(str(exc)) from None
            if name in seen:
                raise NscImportError(f"<domain>{name}</domain>: specified twice (Android refuses this)")
            seen.add(name)
            domains.append((name, _bool_attr(child, "includeSubdomains", False)))
        elif child.tag == "pin-set":
            if own is not None:
                raise NscImportError("<pin-set>: more than one in a <domain-config>")
            own = _read_pin_set(child, out.warnings)
        elif child.tag == "domain-config":
            nested.append(child)
        elif child.tag == "trustkit-config":
            if child.get("enforcePinning") == "false":
                out.warnings.append("<trustkit-config enforcePinning=\"false\">: imported as mode "
                                    "\"enforce\" (Android 7+ enforces the <pin-set> anyway); set "
                                    "mode = \"report\" by hand if that is what you want")
        elif child.tag not in _CONFIG_IGNORED:
            out.warnings.append(f"<domain-config>: unknown element <{child.tag}> ignored")
    if not domains:
        raise NscImportError("<domain-config>: no <domain> element")
    effective = own if own is not None else inherited
    for name, subdomains in domains:
        if effective is None:
            out.warnings.append(f"{name}: no <pin-set>; not a pin-set")
            continue
        pins, expires = effective
        if not pins:
            out.warnings.append(f"{name}: <pin-set> without pins; not a pin-set")
            continue
        if expires is None:
            if default_expires is None:
                raise NscImportError(f"<pin-set> for {name}: no expiration; trustfleet pin-sets "
                                     "always expire: add expiration=\"yyyy-MM-dd\" or give --expires")
            expires = default_expires
        out.pinsets.append({"domain": name, "subdomains": subdomains, "pins": list(pins),
                            "expires": expires, "mode": "enforce", "report_to": []})
    for child in nested:
        _read_domain_config(child, effective, out, seen, default_expires)


def read_nsc(raw: bytes, *, default_expires: int | None = None) -> NscImport:
    """Pin-sets of an Android Network Security Configuration file.

    Nested <domain-config>s inherit their parent's <pin-set>, as on Android.
    Every pin-set is mode "enforce" (NSC has no other mode).

    Args:
        raw: the file's bytes.
        default_expires: expiry for a <pin-set> without expiration (else refused).

    Raises: NscImportError, naming the element at fault.
    """
    root = parse_xml_safely(raw)
    if root.tag != "network-security-config":
        raise NscImportError(f"<{root.tag}>: the root element must be <network-security-config>")
    out = NscImport()
    seen: set[str] = set()
    for child in root:
        if child.tag == "domain-config":
            _read_domain_config(child, None, out, seen, default_expires)
        elif child.tag in ("base-config", "debug-overrides"):
            for bad in ("pin-set", "domain", "domain-config"):
                if child.find(bad) is not None:
                    raise NscImportError(f"<{child.tag}>: <{bad}> is not allowed here")
        else:
            out.warnings.append(f"<network-security-config>: unknown element <{child.tag}> ignored")
    return out


def _toml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def pinsets_toml(pinsets: Sequence[dict], source: str | None = None) -> str:
    """A `[[pinsets]]` fragment for a bundle spec (the format spec.py reads)."""
    lines = [f"# pin-sets imported by trustfleet from {_comment_text(source or 'an NSC file').strip()}",
             "# NSC has no report-only mode or report URIs: every pin-set is mode = \"enforce\"."]
    for p in pinsets:
        lines += ["", "[[pinsets]]", f"domain = {_toml_str(p['domain'])}",
                  f"include_subdomains = {'true' if p['subdomains'] else 'false'}",
                  "pins = ["]
        lines += [f"    {_toml_str(b64(x))}," for x in p["pins"]]
        lines.append("]")
        if len(p["pins"]) < 2:
            lines.append("# only one pin: add a backup pin from another key "
                         "(or set allow_single_pin = true to override)")
        lines += [f"expires = {_toml_str(pin_date(p['expires']))}",
                  f"mode = {_toml_str(p['mode'])}"]
    return "\n".join(lines) + "\n"


def pinsets_json(result: NscImport) -> str:
    """The imported pin-sets (pins base64, expires yyyy-MM-dd) and warnings, as JSON."""
    return json.dumps({
        "pinsets": [{"domain": p["domain"], "include_subdomains": p["subdomains"],
                     "pins": [b64(x) for x in p["pins"]], "expires": pin_date(p["expires"]),
                     "mode": p["mode"]} for p in result.pinsets],
        "warnings": result.warnings,
    }, indent=2) + "\n"


def load_bundle_payload(path: Path) -> tuple[dict, list[str]]:
    """(bundle payload map, build warnings) of a spec (.toml) or a bundle document (not verified).

    Raises: DecodeError, SpecError, ExportRefused.
    """
    if path.suffix.lower() == ".toml":
        payload, report = spec.load_spec(path)
        return payload, list(report.warnings)
    try:
        doc = documents.read_document(documents.read_file(path))
    except DecodeError as exc:
        raise DecodeError(f"{path}: {exc}; a bundle spec must end in .toml") from None
    if doc.doc_type != "bundle":
        raise ExportRefused(f"{path}: is a {doc.doc_type}, not a bundle")
    return cbor.decode(doc.payload), []
