"""Human and JSON views of documents, for `inspect` and `diff`.

Works on unverified documents too (inspect shows what a file claims, and
says that it did not verify it); nothing here decides trust.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography import x509

from trustfleet_device import cbor
from trustfleet_device import documents as device_docs
from trustfleet_device import x509 as x509_device
from trustfleet_server.documents import Document
from trustfleet_server.times import iso


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _anchor(a: device_docs.Anchor) -> dict[str, Any]:
    if a.der is None:
        label = a.label or name_label(a.name)
        return {"form": "compact", "label": label, "not_after": iso(a.not_after),
                "spki_sha256": b64(hashlib.sha256(a.spki).digest()), "bytes": len(a.name) + len(a.spki)}
    try:
        cert = x509.load_der_x509_certificate(a.der)
        from trustfleet_server import x509util

        label = x509util.subject_label(cert.subject)
        not_after = iso(cert.not_valid_after_utc)
        pin = x509util.pin_b64(cert)
    except ValueError:
        label, not_after, pin = "(unparseable certificate)", None, None
    return {"form": "full", "label": label, "not_after": not_after, "spki_sha256": pin, "bytes": len(a.der)}


def name_label(name_der: bytes) -> str:
    """The label a compact anchor leaves out: the subject's CN, else its O (the device's own rule)."""
    return x509_device.name_label(name_der) or "(no CN or O)"


def _pinset(p: device_docs.PinSet) -> dict[str, Any]:
    out = {"domain": p.domain, "include_subdomains": p.subdomains, "pins": [b64(x) for x in p.pins],
           "expires": iso(p.expires), "mode": p.mode, "report_to": p.report_to}
    if p.allow_single_pin:
        out["allow_single_pin"] = True
    return out


def describe(doc: Document, raw: bytes) -> dict[str, Any]:
    """A JSON-able description of a document (payload fields plus envelope facts)."""
    out: dict[str, Any] = {"type": doc.doc_type, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                           "signed": doc.signed, "signers": [k.hex() for k in doc.kids]}
    if doc.message is not None:
        out["envelope"] = "COSE_Sign" if doc.message.tag == 98 else "COSE_Sign1"
    if doc.doc_type == "bundle":
        b = device_docs.parse_bundle(doc.payload)
        out.update({
            "fleet": b.fleet, "version": b.version, "issued_at": iso(b.issued_at),
            "expires_at": iso(b.expires_at),
            "anchors": [_anchor(a) for a in b.anchors],
            "pinsets": [_pinset(p) for p in b.pinsets],
            "distrust": [b64(d) for d in b.distrust],
            "policy": {"user_anchors": b.policy.user_anchors,
                       "max_timestamp_age": b.policy.max_timestamp_age},
        })
    elif doc.doc_type == "root":
        r = device_docs.parse_root(doc.payload)
        policy = cbor.decode(doc.payload).get("policy")
        out.update({
            "fleet": r.fleet, "version": r.version, "expires": iso(r.expires),
            # How far a timestamp may move device time past what the offline keys vouch for.
            "max_time_lead": r.time_lead,
            "max_time_lead_default": not (isinstance(policy, dict) and "max_time_lead" in policy),
            "keys": [k.hex() for k in r.keys],
            "roles": {name: {"threshold": role.threshold, "keys": [k.hex() for k in role.kids]}
                      for name, role in r.roles.items()},
        })
    else:
        t = device_docs.parse_timestamp(doc.payload)
        out.update({"fleet": t.fleet, "time": iso(t.time), "bundle_version": t.bundle_version,
                    "bundle_sha256": t.bundle_sha256.hex()})
    return out


def render(info: dict[str, Any]) -> str:
    """Plain-text rendering of describe() output."""
    lines = [f"{info['type']} v{info.get('version', '-')}  fleet {info.get('fleet')}  "
             f"{info['bytes']} bytes  sha256 {info['sha256'][:16]}..."]
    if info["signed"]:
        lines.append(f"  {info['envelope']}, {len(info['signers'])} signature(s): "
                     + ", ".join(k[:8] for k in info["signers"]) + "  (not verified here: use verify)")
    else:
        lines.append("  unsigned payload (sign it with `trustfleet bundle sign`)")
    if info["type"] == "bundle":
        lines.append(f"  issued {info['issued_at']}, expires {info['expires_at']}")
        pol = info["policy"]
        lines.append(f"  policy: user anchors {'allowed' if pol['user_anchors'] else 'refused'}, "
                     f"stale after {pol['max_timestamp_age'] // 3600} h without a timestamp")
        lines.append(f"  anchors ({len(info['anchors'])}):")
        for a in info["anchors"]:
            lines.append(f"    {a['form']:<7} {a['label'][:48]:<48} until {a['not_after']}  {a['spki_sha256']}")
        lines.append(f"  pin-sets ({len(info['pinsets'])}):")
        for p in info["pinsets"]:
            scope = "*." if p["include_subdomains"] else ""
            extra = "  SINGLE PIN (override)" if p.get("allow_single_pin") else ""
            lines.append(f"    {scope}{p['domain']}  {p['mode']}  until {p['expires']}{extra}")
            for pin in p["pins"]:
                lines.append(f"      sha256/{pin}")
        lines.append(f"  distrust ({len(info['distrust'])}):")
        for d in info["distrust"]:
            lines.append(f"    sha256/{d}")
    elif info["type"] == "root":
        lines.append(f"  expires {info['expires']}, {len(info['keys'])} key(s)")
        lead = info["max_time_lead"]
        shown = f"{lead // 86400} days" if lead % 86400 == 0 else f"{lead // 3600} h" if lead % 3600 == 0 \
            else f"{lead} s"
        lines.append(f"  max_time_lead {shown}" + (" (the default)" if info["max_time_lead_default"] else "")
                     + ": how far a timestamp may move device time past what offline keys vouch for")
        for name, role in info["roles"].items():
            lines.append(f"    {name:<10} {role['threshold']} of {len(role['keys'])}: "
                         + ", ".join(k[:8] for k in role["keys"]))
    else:
        lines.append(f"  time {info['time']}, latest bundle v{info['bundle_version']} "
                     f"sha256 {info['bundle_sha256'][:16]}...")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    """A field's value in a diff line: 'absent' for a field the bundle does not carry, a list as
    its items ('none' when empty)."""
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "absent" if value is None else str(value)


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Differences between two bundle descriptions, one line each ('+' added, '-' removed, '~' changed)."""
    out: list[str] = []
    for key in ("fleet", "version", "issued_at", "expires_at"):
        if a.get(key) != b.get(key):
            out.append(f"~ {key}: {_shown(a.get(key))} -> {_shown(b.get(key))}")
    if a.get("policy") != b.get("policy"):
        out.append(f"~ policy: {a.get('policy')} -> {b.get('policy')}")

    def keyed(items: list[dict], key: str) -> dict[str, dict]:
        return {str(i[key]): i for i in items}

    anchors_a, anchors_b = keyed(a.get("anchors", []), "spki_sha256"), keyed(b.get("anchors", []), "spki_sha256")
    for k in sorted(anchors_a.keys() - anchors_b.keys()):
        out.append(f"- anchor {anchors_a[k]['label']} ({k})")
    for k in sorted(anchors_b.keys() - anchors_a.keys()):
        out.append(f"+ anchor {anchors_b[k]['label']} ({k})")
    for k in sorted(anchors_a.keys() & anchors_b.keys()):
        if anchors_a[k] != anchors_b[k]:
            out.append(f"~ anchor {anchors_b[k]['label']}: {anchors_a[k]['form']} -> {anchors_b[k]['form']}")
    pins_a, pins_b = keyed(a.get("pinsets", []), "domain"), keyed(b.get("pinsets", []), "domain")
    for k in sorted(pins_a.keys() - pins_b.keys()):
        out.append(f"- pin-set {k}")
    for k in sorted(pins_b.keys() - pins_a.keys()):
        out.append(f"+ pin-set {k} ({len(pins_b[k]['pins'])} pins, until {pins_b[k]['expires']})")
    for k in sorted(pins_a.keys() & pins_b.keys()):
        pa, pb = pins_a[k], pins_b[k]
        for field in ("include_subdomains", "expires", "mode", "report_to", "allow_single_pin"):
            if pa.get(field) != pb.get(field):
                out.append(f"~ pin-set {k} {field}: {_shown(pa.get(field))} -> {_shown(pb.get(field))}")
        for pin in sorted(set(pa["pins"]) - set(pb["pins"])):
            out.append(f"- pin-set {k} pin sha256/{pin}")
        for pin in sorted(set(pb["pins"]) - set(pa["pins"])):
            out.append(f"+ pin-set {k} pin sha256/{pin}")
    for d in sorted(set(a.get("distrust", [])) - set(b.get("distrust", []))):
        out.append(f"- distrust sha256/{d}")
    for d in sorted(set(b.get("distrust", [])) - set(a.get("distrust", []))):
        out.append(f"+ distrust sha256/{d}")
    return out
