"""Mobile exports of a bundle's pins: Android NSC, TrustKit (iOS plist/JSON, TrustKit-Android), NSC import.

The element and attribute tables below are written from the platforms' own
documentation, not from trustfleet's code, so a typo or an invented name in
the exporter fails here:
- Android: "Network security configuration", section "Configuration file format",
  https://developer.android.com/privacy-and-security/security-config#FileFormat
  (formerly https://developer.android.com/training/articles/security-config).
- TrustKit-Android: docs/getting-started.md ("Configuring a Pinning Policy") of
  https://github.com/datatheorem/TrustKit-Android, which extends the NSC file with
  <trustkit-config enforcePinning disableDefaultReportUri><report-uri>.
- TrustKit (iOS): TrustKit/public/TSKTrustKitConfig.h of
  https://github.com/datatheorem/TrustKit (key names and types; TSKPublicKeyAlgorithms
  is deprecated since 1.6.0 and not written).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import plistlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography import x509

from support import fleetkit as fk
from trustfleet_server import mobile, spec

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
DAY = fk.DAY

# element -> (allowed attributes, allowed child elements), from the Android page above.
ANDROID_NSC = {
    "network-security-config": (set(), {"base-config", "domain-config", "debug-overrides"}),
    "base-config": ({"cleartextTrafficPermitted"}, {"trust-anchors", "certificateTransparency"}),
    "domain-config": ({"cleartextTrafficPermitted"},
                      {"domain", "trust-anchors", "pin-set", "domain-config",
                       "certificateTransparency"}),
    "domain": ({"includeSubdomains"}, set()),
    "debug-overrides": (set(), {"trust-anchors"}),
    "trust-anchors": (set(), {"certificates"}),
    "certificates": ({"src", "overridePins"}, set()),
    "pin-set": ({"expiration"}, {"pin"}),
    "pin": ({"digest"}, set()),
    "certificateTransparency": ({"enabled"}, set()),
}
# TrustKit-Android's additions inside <domain-config> (getting-started.md above).
TRUSTKIT_ANDROID_EXTRA = {
    "trustkit-config": ({"enforcePinning", "disableDefaultReportUri"}, {"report-uri"}),
    "report-uri": (set(), set()),
}
# TrustKit (iOS) keys and value types (TSKTrustKitConfig.h above).
TRUSTKIT_GLOBAL = {"TSKSwizzleNetworkDelegates": bool, "TSKPinnedDomains": dict,
                   "TSKIgnorePinningForUserDefinedTrustAnchors": bool}
TRUSTKIT_DOMAIN = {"TSKPublicKeyHashes": list, "TSKEnforcePinning": bool,
                   "TSKIncludeSubdomains": bool, "TSKExcludeSubdomainFromParentPolicy": bool,
                   "TSKReportUris": list, "TSKDisableDefaultReportUri": bool,
                   "TSKExpirationDate": str}
BOOL = {"true", "false"}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SRC = re.compile(r"^(system|user|@raw/[a-z][a-z0-9_]*)$")


# --------------------------------------------------------------------------- fixtures


def bundle_map(pinsets: list | None = None, anchors: list | None = None, **over) -> dict:
    acme, beta, gamma = fk.chain("acme"), fk.chain("beta"), fk.chain("gamma")
    value = {
        "type": "bundle", "spec": 1, "fleet": "acme-sensors", "version": 7,
        "issued_at": fk.NOW, "expires_at": fk.NOW + 90 * DAY,
        "anchors": anchors if anchors is not None else [fk.full_anchor(acme.ca),
                                                        fk.compact_anchor(beta.ca),
                                                        fk.full_anchor(gamma.ca)],
        "pinsets": pinsets if pinsets is not None else [
            fk.pinset(acme.domain, acme.pins, expires=fk.NOW + 180 * DAY, subdomains=True,
                      report_to=["https://reports.acme.example/pins", "mqtt:reports"]),
            fk.pinset(gamma.domain, [*gamma.pins, fk.pin(gamma.ca)], expires=fk.NOW + 400 * DAY,
                      subdomains=False),
            fk.pinset(beta.domain, beta.pins, mode="report", subdomains=True),
        ],
        "distrust": [],
        "policy": {"user_anchors": False, "max_timestamp_age": 2 * DAY},
    }
    value.update(over)
    fk.encode(value)  # the device parser accepts it
    return value


def single_pin_map() -> dict:
    acme = fk.chain("acme")
    return bundle_map(pinsets=[fk.pinset(acme.domain, acme.pins[:1], allow_single_pin=True)])


def date_of(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def shape(pinsets) -> list[tuple]:
    return sorted((p["domain"], p["subdomains"], tuple(p["pins"]), date_of(p["expires"]))
                  for p in pinsets)


def check_schema(text: str, schema: dict) -> ET.Element:
    """Well-formed, and every element/attribute/child is one the documentation names."""
    root = ET.fromstring(text)
    assert root.tag == "network-security-config"

    def walk(el: ET.Element) -> None:
        assert el.tag in schema, f"undocumented element <{el.tag}>"
        attrs, children = schema[el.tag]
        assert set(el.attrib) <= attrs, f"<{el.tag}> has undocumented attributes {set(el.attrib) - attrs}"
        for child in el:
            assert child.tag in children, f"<{child.tag}> is not documented inside <{el.tag}>"
            walk(child)

    walk(root)
    for el in root.iter():
        for name in ("includeSubdomains", "overridePins", "cleartextTrafficPermitted",
                     "enforcePinning", "disableDefaultReportUri"):
            assert el.get(name, "true") in BOOL
        if el.tag == "pin":
            assert el.get("digest") == "SHA-256"
            assert len(base64.b64decode(el.text, validate=True)) == 32
        if el.tag == "pin-set":
            assert DATE.match(el.get("expiration"))
        if el.tag == "certificates":
            assert SRC.match(el.get("src")), el.get("src")
    return root


def tf(cwd: Path, *args, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trustfleet_server.cli", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"
    return proc


# --------------------------------------------------------------------------- NSC export and import


def test_nsc_round_trip_gives_the_same_pinsets():
    value = bundle_map()
    out = mobile.nsc_xml(value)
    back = mobile.read_nsc(out.text.encode())
    enforced = [p for p in value["pinsets"] if p["mode"] == "enforce"]
    assert shape(back.pinsets) == shape(enforced)
    assert all(p["mode"] == "enforce" for p in back.pinsets)
    assert back.warnings == []


def test_import_fragment_builds_into_a_spec_with_the_same_pinsets(tmp_path):
    value = bundle_map()
    nsc = mobile.read_nsc(mobile.nsc_xml(value).text.encode())
    fk.write_pem(tmp_path / "ca.pem", fk.chain("acme").ca)
    header = 'fleet = "acme-sensors"\nversion = 1\nexpires = "30d"\nissued_at = 2026-01-01T00:00:00Z\n' \
             '[[anchors]]\nfiles = ["ca.pem"]\n'
    (tmp_path / "bundle.toml").write_text(header + mobile.pinsets_toml(nsc.pinsets, "nsc.xml"))
    payload, _ = spec.load_spec(tmp_path / "bundle.toml")
    enforced = [p for p in value["pinsets"] if p["mode"] == "enforce"]
    assert [(p["domain"], p["subdomains"], p["pins"], p["expires"]) for p in payload["pinsets"]] == \
           [(p["domain"], p["subdomains"], p["pins"], p["expires"]) for p in enforced]


def test_nsc_uses_only_documented_names():
    debug = fk.der(fk.chain("beta").intermediate)
    out = mobile.nsc_xml(bundle_map(), anchors="both", debug_cas=[debug], cleartext_permitted=False)
    root = check_schema(out.text, ANDROID_NSC)
    assert root.find("base-config").get("cleartextTrafficPermitted") == "false"
    srcs = [c.get("src") for c in root.find("base-config/trust-anchors")]
    assert srcs[0] == "system" and len(srcs) == 3  # system + the two full anchors
    dbg = root.findall("debug-overrides/trust-anchors/certificates")
    assert len(dbg) == 1 and dbg[0].get("overridePins") == "true"
    assert {r.name for r in out.raw} == {s.removeprefix("@raw/") for s in srcs[1:]} | \
           {dbg[0].get("src").removeprefix("@raw/")}


def test_nsc_one_domain_config_per_enforced_pinset():
    value = bundle_map()
    root = ET.fromstring(mobile.nsc_xml(value).text)
    configs = root.findall("domain-config")
    assert [c.find("domain").text for c in configs] == [p["domain"] for p in value["pinsets"][:2]]
    assert [c.find("domain").get("includeSubdomains") for c in configs] == ["true", "false"]
    assert len(configs[1].findall("pin-set/pin")) == 3


def test_nsc_skips_report_only_with_a_warning():
    beta = fk.chain("beta")
    out = mobile.nsc_xml(bundle_map())
    assert beta.domain not in out.text
    assert any(beta.domain in w and "report-only" in w for w in out.warnings)
    assert out.pinsets == 2


def test_nsc_anchors_write_pem_of_full_anchors_only_and_count_compact():
    value = bundle_map()
    out = mobile.nsc_xml(value, anchors="bundle")
    certs = [x509.load_pem_x509_certificate(r.pem) for r in out.raw]
    assert sorted(fk.der(c) for c in certs) == sorted(a for a in value["anchors"] if isinstance(a, bytes))
    assert any(w.startswith("1 compact anchor") for w in out.warnings)
    root = ET.fromstring(out.text)
    assert "system" not in [c.get("src") for c in root.iter("certificates")]


def test_nsc_leaves_out_distrusted_anchors():
    gamma = fk.chain("gamma")
    out = mobile.nsc_xml(bundle_map(distrust=[fk.pin(gamma.ca)]), anchors="both")
    assert len(out.raw) == 1
    assert any("distrusted" in w for w in out.warnings)


def test_nsc_bundle_anchors_refused_when_none_can_be_exported():
    value = bundle_map(anchors=[fk.compact_anchor(fk.chain("beta").ca)])
    with pytest.raises(mobile.ExportRefused, match="--anchors bundle"):
        mobile.nsc_xml(value, anchors="bundle")
    assert mobile.nsc_xml(value, anchors="both").raw == []


def test_nsc_expiry_rounds_down_to_the_utc_date():
    acme = fk.chain("acme")
    noon = fk.NOW + 10 * DAY + DAY // 2
    out = mobile.nsc_xml(bundle_map(pinsets=[fk.pinset(acme.domain, acme.pins, expires=noon)]))
    assert ET.fromstring(out.text).find("domain-config/pin-set").get("expiration") == date_of(noon)
    assert any("stop being enforced from" in w for w in out.warnings)


def test_duplicate_domains_refused():
    acme = fk.chain("acme")
    value = bundle_map(pinsets=[fk.pinset(acme.domain, acme.pins),
                                fk.pinset(acme.domain, acme.pins, subdomains=False)])
    for export in (mobile.nsc_xml, mobile.trustkit_plist, mobile.trustkit_android_xml):
        with pytest.raises(mobile.ExportRefused, match=re.escape(acme.domain)):
            export(value)


def test_nsc_import_nested_domain_config_inherits_pins():
    acme = fk.chain("acme")
    pins = "".join(f'<pin digest="SHA-256">{fk.b64(p)}</pin>' for p in acme.pins)
    xml = (f'<network-security-config><domain-config><domain includeSubdomains="true">a.example</domain>'
           f'<pin-set expiration="2027-01-02">{pins}</pin-set>'
           '<domain-config><domain>b.a.example</domain><trust-anchors><certificates src="system"/>'
           '</trust-anchors></domain-config></domain-config></network-security-config>')
    got = mobile.read_nsc(xml.encode())
    assert shape(got.pinsets) == [("a.example", True, tuple(acme.pins), "2027-01-02"),
                                  ("b.a.example", False, tuple(acme.pins), "2027-01-02")]


# --------------------------------------------------------------------------- hostile and malformed NSC

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<network-security-config><domain-config><domain>&lol3;</domain></domain-config></network-security-config>
"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE n [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<network-security-config><domain-config><domain>&xxe;</domain></domain-config></network-security-config>
"""
EXTERNAL_DTD = b'<!DOCTYPE n SYSTEM "http://127.0.0.1:1/x.dtd"><network-security-config/>'
PARAMETER_ENTITY = b'<!DOCTYPE n [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><network-security-config/>'


@pytest.mark.parametrize("raw", [
    BILLION_LAUGHS, XXE, EXTERNAL_DTD, PARAMETER_ENTITY,
    BILLION_LAUGHS.decode().replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
    .encode("utf-16"),
], ids=["billion-laughs", "xxe", "external-dtd", "parameter-entity", "utf16-doctype"])
def test_hostile_xml_refused(raw):
    with pytest.raises(mobile.NscImportError, match="DOCTYPE"):
        mobile.read_nsc(raw)


@pytest.mark.parametrize(("raw", "names"), [
    (b"<network-security-config><domain-config>", "not well-formed"),
    (b"<network-security-config>&undeclared;</network-security-config>", "undefined entity"),
    (b"<manifest/>", "<manifest>"),
    (b'<network-security-config><domain-config><domain>a.example</domain><pin-set expiration="2030-01-01">'
     b'<pin digest="SHA-1">AAAAAAAAAAAAAAAAAAAAAAAAAAA=</pin></pin-set></domain-config></network-security-config>',
     "<pin digest='SHA-1'>: unknown digest"),
    (b'<network-security-config><domain-config><domain>a.example</domain><pin-set expiration="2030-01-01">'
     b'<pin digest="SHA-256">AAAA</pin></pin-set></domain-config></network-security-config>', "<pin>: 3 bytes"),
    (b'<network-security-config><domain-config><domain>a.example</domain>'
     b'<pin-set expiration="01/02/2030"/></domain-config></network-security-config>', "<pin-set expiration="),
    (b'<network-security-config><domain-config><pin-set/></domain-config></network-security-config>',
     "no <domain>"),
    (b'<network-security-config><domain-config><domain>A_B</domain></domain-config></network-security-config>',
     "<domain>"),
    (b'<network-security-config><domain-config><domain>a.example</domain></domain-config>'
     b'<domain-config><domain>a.example</domain></domain-config></network-security-config>', "twice"),
    (b'<network-security-config><base-config><pin-set/></base-config></network-security-config>',
     "<base-config>: <pin-set>"),
    (b"<network-security-config>" + b"<domain-config>" * 40 + b"</domain-config>" * 40
     + b"</network-security-config>", "nested"),
])
def test_malformed_nsc_refused_naming_the_element(raw, names):
    with pytest.raises(mobile.NscImportError) as info:
        mobile.read_nsc(raw)
    assert names in str(info.value)


def test_nsc_without_expiration_needs_a_default():
    acme = fk.chain("acme")
    pins = "".join(f'<pin digest="SHA-256">{fk.b64(p)}</pin>' for p in acme.pins)
    xml = (f"<network-security-config><domain-config><domain>a.example</domain><pin-set>{pins}"
           "</pin-set></domain-config></network-security-config>").encode()
    with pytest.raises(mobile.NscImportError, match="expiration"):
        mobile.read_nsc(xml)
    assert mobile.read_nsc(xml, default_expires=fk.NOW).pinsets[0]["expires"] == fk.NOW


# --------------------------------------------------------------------------- TrustKit


def test_trustkit_plist_has_the_documented_keys_and_types():
    value = bundle_map()
    config = plistlib.loads(mobile.trustkit_plist(value).text.encode())
    assert set(config) <= set(TRUSTKIT_GLOBAL)
    assert config["TSKSwizzleNetworkDelegates"] is False
    for key, typ in TRUSTKIT_GLOBAL.items():
        assert isinstance(config.get(key, typ()), typ)
    domains = config["TSKPinnedDomains"]
    assert set(domains) == {p["domain"] for p in value["pinsets"]}
    for p in value["pinsets"]:
        entry = domains[p["domain"]]
        assert set(entry) <= set(TRUSTKIT_DOMAIN), set(entry) - set(TRUSTKIT_DOMAIN)
        for key, typ in TRUSTKIT_DOMAIN.items():
            assert isinstance(entry.get(key, typ()), typ)
        assert [base64.b64decode(h) for h in entry["TSKPublicKeyHashes"]] == p["pins"]
        assert entry["TSKIncludeSubdomains"] is p["subdomains"]
        assert entry["TSKExpirationDate"] == date_of(p["expires"])
        assert entry["TSKDisableDefaultReportUri"] is True
    acme = domains[fk.chain("acme").domain]
    assert acme["TSKReportUris"] == ["https://reports.acme.example/pins"]  # mqtt: left out


def test_trustkit_json_equals_the_plist():
    value = bundle_map()
    as_plist = plistlib.loads(mobile.trustkit_plist(value, swizzle=True).text.encode())
    as_json = json.loads(mobile.trustkit_json(value, swizzle=True).text)
    assert as_json == as_plist
    assert as_json["TSKSwizzleNetworkDelegates"] is True


def test_trustkit_report_only_is_not_enforced():
    config, _ = mobile.trustkit_config(bundle_map())
    domains = config["TSKPinnedDomains"]
    assert domains[fk.chain("beta").domain]["TSKEnforcePinning"] is False
    assert domains[fk.chain("acme").domain]["TSKEnforcePinning"] is True


@pytest.mark.parametrize("export", [mobile.trustkit_plist, mobile.trustkit_json,
                                    mobile.trustkit_android_xml])
def test_trustkit_refuses_fewer_than_two_pins(export):
    with pytest.raises(mobile.ExportRefused, match=re.escape(fk.chain("acme").domain)):
        export(single_pin_map())


def test_nsc_accepts_the_single_pin_override_with_a_warning():
    out = mobile.nsc_xml(single_pin_map())
    assert out.pinsets == 1
    assert any("single pin" in w for w in out.warnings)


def test_trustkit_android_uses_only_documented_names():
    out = mobile.trustkit_android_xml(bundle_map())
    root = check_schema(out.text, {**ANDROID_NSC, **TRUSTKIT_ANDROID_EXTRA,
                                   "domain-config": (ANDROID_NSC["domain-config"][0],
                                                     ANDROID_NSC["domain-config"][1] | {"trustkit-config"})})
    configs = root.findall("domain-config")
    assert len(configs) == 2  # report-only left out: Android 7+ enforces every pin-set
    tk = configs[0].find("trustkit-config")
    assert tk.get("enforcePinning") == "true" and tk.get("disableDefaultReportUri") == "true"
    assert [u.text for u in tk.findall("report-uri")] == ["https://reports.acme.example/pins"]
    assert any("report-only" in w for w in out.warnings)
    assert shape(mobile.read_nsc(out.text.encode()).pinsets) == \
           shape([p for p in bundle_map()["pinsets"] if p["mode"] == "enforce"])


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def work(tmp_path):
    repo = fk.Repo()
    (tmp_path / "bundle.cose").write_bytes(repo.bundle(pinsets=bundle_map()["pinsets"],
                                                       anchors=bundle_map()["anchors"]))
    (tmp_path / "single.cbor").write_bytes(fk.encode(single_pin_map()))
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    fk.write_pem(tmp_path / "debug.pem", fk.chain("beta").intermediate)
    return tmp_path


def test_cli_export_nsc_writes_xml_and_raw_certificates(work):
    proc = tf(work, "export", "nsc", "bundle.cose", "--anchors", "both", "--raw-dir", "res/raw",
              "--debug-overrides", "debug.pem", "--cleartext-permitted", "false", "-o", "nsc.xml")
    root = check_schema((work / "nsc.xml").read_text(), ANDROID_NSC)
    names = sorted(c.get("src").removeprefix("@raw/") for c in root.iter("certificates")
                   if c.get("src").startswith("@raw/"))
    assert sorted(p.stem for p in (work / "res/raw").iterdir()) == names
    for p in (work / "res/raw").iterdir():
        x509.load_pem_x509_certificate(p.read_bytes())
    assert "report-only" in proc.stderr and "compact anchor" in proc.stderr

    back = tf(work, "import", "nsc", "nsc.xml", "--json")
    got = json.loads(back.stdout)["pinsets"]
    enforced = [p for p in bundle_map()["pinsets"] if p["mode"] == "enforce"]
    assert [(p["domain"], p["include_subdomains"], p["pins"], p["expires"]) for p in got] == \
           [(p["domain"], p["subdomains"], [fk.b64(x) for x in p["pins"]], date_of(p["expires"]))
            for p in enforced]
    toml = tf(work, "import", "nsc", "nsc.xml", "-o", "fragment.toml")
    assert toml.stdout == "" and "[[pinsets]]" in (work / "fragment.toml").read_text()


def test_cli_export_trustkit_formats(work):
    as_plist = plistlib.loads(tf(work, "export", "trustkit", "bundle.cose").stdout.encode())
    as_json = json.loads(tf(work, "export", "trustkit", "bundle.cose", "--format", "json").stdout)
    assert as_plist == as_json
    android = tf(work, "export", "trustkit", "bundle.cose", "--format", "android").stdout
    assert "<trustkit-config" in android


@pytest.mark.parametrize("args", [
    ("export", "trustkit", "single.cbor"),
    ("export", "trustkit", "single.cbor", "--format", "json"),
    ("export", "trustkit", "single.cbor", "--format", "android"),
])
def test_cli_trustkit_refusal_is_one_line_exit_1(work, args):
    proc = tf(work, *args, code=1)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fk.chain("acme").domain in lines[0] and "two pins" in lines[0]
    assert proc.stdout == ""


def test_cli_hostile_and_bad_inputs(work):
    (work / "laughs.xml").write_bytes(BILLION_LAUGHS)
    assert "DOCTYPE" in tf(work, "import", "nsc", "laughs.xml", code=1).stderr
    (work / "bad.xml").write_bytes(b"<network-security-config>")
    tf(work, "import", "nsc", "bad.xml", code=1)
    tf(work, "export", "nsc", "root.cose", code=1)           # a root, not a bundle
    tf(work, "export", "nsc", "bad.xml", code=1)             # not a bundle at all
    tf(work, "export", "nsc", "missing.cose", code=2)
    tf(work, "import", "nsc", "missing.xml", code=2)
    tf(work, "export", "nsc", "bundle.cose", "--raw-prefix", "Bad-Name", code=2)
    tf(work, "export", "nsc", "bundle.cose", "--anchors", "nope", code=2)
    tf(work, "export", "trustkit", "bundle.cose", "--format", "yaml", code=2)


def test_cli_help_says_report_only_is_skipped(work):
    out = tf(work, "export", "nsc", "--help").stdout
    assert "report-only" in out and "SKIPPED" in out
