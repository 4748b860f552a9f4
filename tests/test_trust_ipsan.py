"""IP endpoints in the device trust store (issue 12): an IP host against iPAddress SANs only.

A health check against `https://127.0.0.1:8443` or `[::1]` used to be refused
as "not a DNS name", and a certificate whose dNSName was the text "127.0.0.1"
would have matched it. Now TrustStore.evaluate takes an IPv4 or IPv6 literal
and matches it byte for byte against the leaf's iPAddress entries, never a
dNSName or the CN; a DNS name never matches an iPAddress; a malformed
literal (127.0.0.01, 256.1.1.1, ::1::) matches nothing; an IP host matches no
pin-set (pin-set domains are DNS names) and is CA-validated only.

Certificates are real (tests/support/pki.py, signed with `cryptography`);
every story runs on CPython and, the same device code, on the native
MicroPython unix port (`.venv/bin/micropython`, tests/support/mpunix.py).
The rule-by-rule cases (each boundary of ip_bytes, ip_text, the numeric
last label, the x509 iPAddress lengths) are in test_trust_rules.py and
test_x509_rules.py, where tools/mutate.py runs them.
"""

from __future__ import annotations

import ipaddress
import json

import pytest
from cryptography import x509 as cx509

from support import mpunix
from support.pki import NOW, der, pin, pki
from support.scenarios import scenario
from support.truststores import LATER, bundle, full, pinset, store
from trustfleet_device import trust, x509

SAN_V4 = "192.0.2.10"
SAN_V6 = "2001:db8::10"


def ip_leaf(*entries, cn="ip leaf", **kw):
    """A leaf signed by the EC issuing CA whose subjectAltName holds exactly `entries`
    (text with a leading "dns:" is a dNSName, anything else an iPAddress)."""
    p = pki("ec")
    names = [cx509.DNSName(e[4:]) if e.startswith("dns:") else
             cx509.IPAddress(ipaddress.ip_address(e)) for e in entries]
    extra = [(cx509.SubjectAlternativeName(names), False)] if names else []
    return p.leaf(sans=(), cn=cn, extra=extra, **kw)


def decide(host, leaf, pinsets=(), distrust=()):
    p = pki("ec")
    return trust.TrustStore(bundle([full(p.root)], pinsets, distrust)).evaluate(
        host, p.chain(leaf), NOW)


def outcome(d):
    return (d.verdict, d.result)


# --------------------------------------------------------------------------- CPython


def test_ipv4_endpoint_is_accepted_against_its_ip_san():
    leaf = ip_leaf(SAN_V4, SAN_V6)
    d = decide(SAN_V4, leaf)
    assert outcome(d) == ("accept", "ok")
    assert d.reason == "chain to anchor 'EC Root CA' is valid; 192.0.2.10 is not pinned"
    assert [c.label() for c in d.path] == ["ip leaf", "EC Issuing CA"]


@pytest.mark.parametrize("host", ["2001:db8::10", "2001:DB8::10", "2001:0db8:0:0:0:0:0:0010",
                                  "2001:db8:0::0:10", "2001:db8::0.0.0.16"])
def test_ipv6_endpoint_in_any_text_form_matches_its_ip_san(host):
    d = decide(host, ip_leaf(SAN_V4, SAN_V6))
    assert outcome(d) == ("accept", "ok")
    assert d.reason == "chain to anchor 'EC Root CA' is valid; 2001:db8::10 is not pinned"


@pytest.mark.parametrize("host, shown", [
    ("192.0.2.11", "192.0.2.11"), ("2001:db8::11", "2001:db8::11"),
    # The IPv4-mapped IPv6 address is other bytes than the IPv4 one.
    ("::ffff:192.0.2.10", "::ffff:c000:20a"),
])
def test_ip_endpoint_not_in_the_ip_sans_is_a_hostname_mismatch(host, shown):
    d = decide(host, ip_leaf(SAN_V4, SAN_V6))
    assert outcome(d) == ("reject", "hostname-mismatch")
    assert d.reason == (f"host {shown} does not match the certificate's IP addresses "
                        "(192.0.2.10, 2001:db8::10)")
    assert d.path == [] and d.report is None


def test_ip_endpoint_never_matches_a_dns_name_or_the_cn_spelling_the_address():
    # A CA may sign dNSName "127.0.0.1" (or a CN of it) for anyone: it is text, not an address.
    leaf = ip_leaf("dns:127.0.0.1", "dns:::1", "dns:api.example.com", cn="127.0.0.1")
    for host in ("127.0.0.1", "::1"):
        d = decide(host, leaf)
        assert outcome(d) == ("reject", "hostname-mismatch"), host
        assert d.reason == f"host {host} does not match the certificate's IP addresses (none)"


def test_dns_endpoint_never_matches_an_ip_san():
    leaf = ip_leaf("127.0.0.1", "::1", cn="localhost")
    for host in ("localhost", "api.example.com"):
        d = decide(host, leaf)
        assert outcome(d) == ("reject", "hostname-mismatch"), host
        assert d.reason == f"host {host} does not match the certificate's DNS names (none)"
    # Both kinds in one certificate: each host kind reads its own list.
    both = ip_leaf("dns:api.example.com", "127.0.0.1")
    assert outcome(decide("api.example.com", both)) == ("accept", "ok")
    assert outcome(decide("127.0.0.1", both)) == ("accept", "ok")


@pytest.mark.parametrize("host", ["127.0.0.01", "0127.0.0.1", "256.0.0.1", "127.1", "127.0.0.1.",
                                  "1.2.3.4.5", "0x7f.0.0.1", "127.0.0.0x1", "4294967297"])
def test_malformed_ipv4_literals_match_nothing(host):
    # The certificate names the very text, as a dNSName, and the address it may stand for.
    leaf = ip_leaf(f"dns:{host.rstrip('.')}", "127.0.0.1")
    d = decide(host, leaf)
    assert outcome(d) == ("reject", "hostname-mismatch")
    assert d.reason == (f"host {host!r} is not a valid IP address "
                        "(and a DNS name does not end in a number)")
    assert trust.ip_bytes(host) is None


@pytest.mark.parametrize("host", ["::1::", "1:2:3:4:5:6:7:8:9", "12345::1", "::g", "fe80::1%eth0",
                                  "[::1]", "::1.2.3.04", "::256.0.0.1", ":::1", "1:2:3:4:5:6:7:1.2.3.4"])
def test_malformed_ipv6_literals_match_nothing(host):
    d = decide(host, ip_leaf("::1", "fe80::1", "dns:api.example.com"))
    assert outcome(d) == ("reject", "hostname-mismatch")
    assert d.reason == f"host {host!r} is neither a DNS name nor an IP address"
    assert trust.ip_bytes(host) is None


def test_ip_endpoint_is_ca_validated_but_never_pinned():
    p = pki("ec")
    leaf = ip_leaf("127.0.0.1")
    # A pin-set whose "domain" spells the address, with pins nothing matches.
    wrong = pinset("127.0.0.1", [pin(p.backup_key), pin(p.backup_root)])
    d = decide("127.0.0.1", leaf, [wrong])
    assert outcome(d) == ("accept", "ok") and d.pinset is None and d.report is None
    st = trust.TrustStore(bundle([full(p.root)], [wrong]))
    assert st.pinset_for("127.0.0.1") is None and st.pinset_for("::1") is None
    # CA validation and distrust still apply in full.
    assert outcome(decide("127.0.0.1", ip_leaf("127.0.0.1", not_after=NOW - 1))) == \
        ("reject", "chain-invalid")
    assert outcome(decide("127.0.0.1", ip_leaf("127.0.0.1", issuer_key=p.backup_key))) == \
        ("reject", "chain-invalid")
    assert outcome(decide("127.0.0.1", leaf, distrust=[pin(p.inter)])) == ("reject", "distrusted")
    # Unknown anchor: no path.
    other = store([full(pki("rsa").root)])
    assert outcome(other.evaluate("127.0.0.1", p.chain(leaf), NOW)) == ("reject", "chain-invalid")


def test_the_parser_keeps_ip_sans_as_their_bytes():
    got = x509.parse(der(ip_leaf("dns:a.example", "10.0.0.1", "::1", "dns:b.example")))
    assert got.dns_names == ["a.example", "b.example"]
    assert got.ip_addresses == [b"\x0a\x00\x00\x01", b"\x00" * 15 + b"\x01"]


def test_ip_bytes_agrees_with_the_ipaddress_module_for_what_it_accepts():
    for text in ("0.0.0.0", "255.255.255.255", SAN_V4, "::", "::1", SAN_V6, "::ffff:1.2.3.4",
                 "1:2:3:4:5:6:7:8", "FE80::A:b:C:d", "1:2:3:4:5:6:1.2.3.4", "1::"):
        packed = ipaddress.ip_address(text).packed
        assert trust.ip_bytes(text) == packed, text
        # ip_text is RFC 5952's form (hex groups; no mixed IPv4 notation).
        assert trust.ip_bytes(trust.ip_text(packed)) == packed


# --------------------------------------------------------------------------- MicroPython unix port

# Runs unchanged on the port: the scenario's decide(spec), plus ip_bytes/ip_text over a list.
UNIX_DRIVER = scenario("trust_decide.py") + """
import sys

def _ip(text):
    b = trust.ip_bytes(text)
    if b is None:
        return None
    return [_hex(b), trust.ip_text(b)]

spec = _load(sys.argv[-1])
out = {"decisions": [decide(c) for c in spec["cases"]], "ips": [_ip(t) for t in spec["texts"]]}
print(MARK + json.dumps(out))
"""

IP_TEXTS = ["127.0.0.1", "0.0.0.0", "255.255.255.255", "256.0.0.1", "01.2.3.4", "1.2.3", "::",
            "::1", "2001:DB8::10", "2001:db8:0:0:1:0:0:1", "0:0:1:0:0:0:1:0", "::ffff:1.2.3.4",
            "1::2::3", "::1%lo", "[::1]", "abcd:ef01:2345:6789:abcd:ef01:2345:6789", "1:2:3:4:5:6:7:8:9"]


def _case(host, leaf, pinsets=()):
    p = pki("ec")
    return {"host": host, "now": NOW, "chain": [c.hex() for c in p.chain(leaf)],
            "anchors": [{"der": der(p.root).hex()}],
            "pinsets": [{"domain": d, "subdomains": False, "pins": [x.hex() for x in pins],
                         "expires": LATER, "mode": "enforce", "report_to": []}
                        for d, pins in pinsets],
            "distrust": [], "user_anchors": [], "allow": False, "managed": False}


def test_the_micropython_unix_port_decides_ip_endpoints_like_cpython(tmp_path):
    port = mpunix.require()
    p = pki("ec")
    leaf = ip_leaf(SAN_V4, SAN_V6, "dns:127.0.0.1")
    wrong = [("127.0.0.1", [pin(p.backup_key)]), (SAN_V4, [pin(p.backup_key)])]
    cases = [_case(h, leaf, wrong) for h in (SAN_V4, "2001:DB8:0::10", "192.0.2.11", "127.0.0.1",
                                             "::ffff:192.0.2.10", "192.0.2.010", "::1::")]
    cases.append(_case("127.0.0.1", ip_leaf("dns:localhost", "127.0.0.1"), wrong))
    cases.append(_case("localhost", ip_leaf("127.0.0.1", cn="localhost")))
    (tmp_path / "spec.json").write_text(json.dumps({"cases": cases, "texts": IP_TEXTS}))
    got = port.run_json(f"MARK = {mpunix.RESULT_MARK!r}\n" + UNIX_DRIVER,
                        path=[mpunix.DEVICE_DIR], args=[str(tmp_path / "spec.json")])
    ns: dict = {}
    exec(scenario("trust_decide.py"), ns)
    assert got["decisions"] == json.loads(json.dumps([ns["decide"](c) for c in cases]))
    assert [(g["verdict"], g["result"]) for g in got["decisions"]] == [
        ("accept", "ok"), ("accept", "ok"), ("reject", "hostname-mismatch"),
        ("reject", "hostname-mismatch"), ("reject", "hostname-mismatch"),
        ("reject", "hostname-mismatch"), ("reject", "hostname-mismatch"),
        ("accept", "ok"), ("reject", "hostname-mismatch")]
    assert all(g["pinset"] is None and g["report"] is None for g in got["decisions"])
    want = []
    for t in IP_TEXTS:
        b = trust.ip_bytes(t)
        want.append(None if b is None else [b.hex(), trust.ip_text(b)])
    assert got["ips"] == want
    assert want[9] == [ipaddress.ip_address("2001:db8::1:0:0:1").packed.hex(), "2001:db8::1:0:0:1"]
    assert sum(w is None for w in want) == 7
