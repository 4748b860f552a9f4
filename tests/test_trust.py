"""Trust decisions on the device: path validation, distrust, pins, enterprise anchors, reports.

Chains are real certificates made by tests/support/pki.py; bundles are built
directly from trustfleet_device.documents objects (tests/support/truststores.py). Every
scenario here is also run with the pure signature path forced, and must
give the same decision (the MicroPython VM runs the core ones again in
test_micropython_trust.py).
"""

from __future__ import annotations

import base64
import hashlib
import random
import time

import pytest
from cryptography import x509 as cx509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

import trustfleet_device
from support.pki import DAY, NOW, Pki, der, key, make_cert, pin, pki, spki_der
from support.truststores import HOST, bundle, compact, evaluate, full, pinset, store
from trustfleet_device import sigcheck, trust
from trustfleet_device.documents import Anchor


@pytest.fixture(params=["ec", "rsa"])
def p(request) -> Pki:
    return pki(request.param)


@pytest.fixture(params=["cryptography", "pure"], autouse=True)
def backend(request, monkeypatch):
    """Run every test on both signature paths: they must decide the same."""
    monkeypatch.setattr(sigcheck, "BACKEND", request.param)
    return request.param


# --------------------------------------------------------------------------- path validation


def test_accepts_valid_chain_to_full_anchor_without_pins(p):
    d = evaluate(store([full(p.root)]), p.chain())
    assert (d.verdict, d.result, d.pinset, d.report) == ("accept", "ok", None, None)
    assert d.anchor == f"{p.kind.upper()} Root CA"
    assert [c.der for c in d.path] == p.chain()


def test_compact_anchor_validates_like_full_anchor(p):
    for anchors in ([compact(p.root, "Compact Root")], [full(p.root)]):
        d = evaluate(store(anchors, [pinset(pins=[pin(p.root)])]), p.chain())
        assert (d.verdict, d.result) == ("accept", "pin-match")
    assert evaluate(store([compact(p.root, "Compact Root")]), p.chain()).anchor == "Compact Root"
    # A compact anchor with the right name but another key does not validate.
    wrong = Anchor(None, p.root.subject.public_bytes(), spki_der(p.backup_root), 4_000_000_000,
                   "wrong")
    assert evaluate(store([wrong]), p.chain()).verdict == "reject"


def test_accepts_when_the_server_also_sends_the_anchor_certificate(p):
    for anchor in (full(p.root), compact(p.root)):
        d = evaluate(store([anchor]), p.chain(None, p.inter, p.root))
        assert d.verdict == "accept"
        assert len(d.path) == 2  # stopped at the intermediate: its issuer is the anchor


def test_stops_at_an_intermediate_that_is_itself_an_anchor(p):
    for anchor in (full(p.inter), compact(p.inter, "Issuing")):
        d = evaluate(store([anchor]), p.chain(None, p.inter, p.root))
        assert (d.verdict, d.result) == ("accept", "ok")
        assert len(d.path) == 1 and d.anchor in ("Issuing", f"{p.kind.upper()} Issuing CA")


def test_accepts_a_leaf_that_is_itself_an_anchor(p):
    leaf = make_cert(HOST, p.leaf_key, sans=[HOST])  # self-signed device server
    for anchor in (full(leaf), compact(leaf, "device")):
        d = evaluate(store([anchor]), [der(leaf)])
        assert (d.verdict, d.result) == ("accept", "ok")
        assert len(d.path) == 1
    # The same subject with another key is not the anchor.
    other = make_cert(HOST, p.backup_key, sans=[HOST])
    assert evaluate(store([compact(leaf)]), [der(other)]).verdict == "reject"


def test_ignores_extra_and_unordered_certificates(p):
    other = pki("rsa" if p.kind == "ec" else "ec")
    chain = [der(p.leaf_cert), der(other.inter), b"\x30\x03garbage", der(p.root), der(p.inter),
             der(other.root)]
    d = evaluate(store([full(p.root)]), chain)
    assert d.verdict == "accept"
    assert [c.der for c in d.path] == p.chain()


def test_rejects_chain_to_an_unknown_root(p):
    other = pki("rsa" if p.kind == "ec" else "ec")
    d = evaluate(store([full(other.root)]), p.chain())
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert "no trusted anchor or certificate in the chain issued" in d.reason


def test_rejects_when_the_intermediate_is_missing(p):
    d = evaluate(store([full(p.root)]), [der(p.leaf_cert)])
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert f"'{p.kind.upper()} Issuing CA'" in d.reason


def test_rejects_expired_leaf(p):
    leaf = p.leaf(not_before=NOW - 100 * DAY, not_after=NOW - DAY)
    d = evaluate(store([full(p.root)]), p.chain(leaf))
    assert d.result == "chain-invalid" and "leaf 'api.example.com' expired at 2025-12-31" in d.reason


def test_rejects_leaf_that_is_not_yet_valid(p):
    leaf = p.leaf(not_before=NOW + DAY, not_after=NOW + 90 * DAY)
    d = evaluate(store([full(p.root)]), p.chain(leaf))
    assert d.result == "chain-invalid" and "not valid before 2026-01-02" in d.reason


def test_validity_bounds_are_inclusive(p):
    leaf = p.leaf(not_before=NOW, not_after=NOW + 10)
    st = store([full(p.root)])
    assert evaluate(st, p.chain(leaf), now=NOW).verdict == "accept"
    assert evaluate(st, p.chain(leaf), now=NOW + 10).verdict == "accept"
    assert evaluate(st, p.chain(leaf), now=NOW + 11).verdict == "reject"
    assert evaluate(st, p.chain(leaf), now=NOW - 1).verdict == "reject"


def test_rejects_expired_intermediate(p):
    inter = make_cert("Old Issuing CA", p.inter_key, p.root, p.root_key, ca=True,
                      not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    leaf = p.leaf(issuer=inter)
    d = evaluate(store([full(p.root)]), p.chain(leaf, inter))
    assert d.result == "chain-invalid" and "intermediate 'Old Issuing CA' expired" in d.reason


def test_expired_anchor_is_not_used(p):
    old_root = make_cert("Old Root", p.root_key, ca=True, not_before=NOW - 900 * DAY,
                         not_after=NOW - DAY)
    inter = make_cert("Mid CA", p.inter_key, old_root, p.root_key, ca=True)
    leaf = p.leaf(issuer=inter)
    for anchor in (full(old_root), compact(old_root, "Old Root")):
        d = evaluate(store([anchor]), p.chain(leaf, inter))
        assert d.result == "chain-invalid" and "anchor 'Old Root' expired" in d.reason


def test_prefers_a_valid_anchor_over_an_expired_cross_signed_copy(p):
    # Like ISRG Root X1 cross-signed by the expired DST Root CA X3: the server
    # still sends the old cross-sign, but the issuer is an anchor we hold.
    dst = make_cert("Old Cross Root", p.backup_key, ca=True, not_before=NOW - 5000 * DAY,
                    not_after=NOW - 100 * DAY)
    cross = make_cert(f"{p.kind.upper()} Root CA", p.root_key, dst, p.backup_key, ca=True,
                      not_before=NOW - 1000 * DAY, not_after=NOW - 10 * DAY)
    d = evaluate(store([full(p.root)]), p.chain(None, p.inter, cross))
    assert d.verdict == "accept" and len(d.path) == 2


def test_rejects_leaf_signed_by_the_wrong_key(p):
    leaf = p.leaf(issuer_key=p.backup_key)
    d = evaluate(store([full(p.root)]), p.chain(leaf))
    assert d.result == "chain-invalid"
    assert "signature on 'api.example.com' does not verify" in d.reason


def test_rejects_intermediate_without_ca_flag(p):
    inter = make_cert("Not A CA", p.inter_key, p.root, p.root_key, ca=False)
    d = evaluate(store([full(p.root)]), p.chain(p.leaf(issuer=inter), inter))
    assert d.result == "chain-invalid" and "'Not A CA' is not a CA" in d.reason
    no_bc = make_cert("No BC", p.inter_key, p.root, p.root_key, basic_constraints=False)
    d = evaluate(store([full(p.root)]), p.chain(p.leaf(issuer=no_bc), no_bc))
    assert d.result == "chain-invalid" and "is not a CA" in d.reason


def test_rejects_intermediate_whose_key_usage_lacks_key_cert_sign(p):
    inter = make_cert("No Sign CA", p.inter_key, p.root, p.root_key, ca=True, key_usage="nosign")
    d = evaluate(store([full(p.root)]), p.chain(p.leaf(issuer=inter), inter))
    assert "keyCertSign" in d.reason and d.verdict == "reject"


def test_respects_path_length_constraint(p):
    # inter has pathLen 0: a second intermediate below it is refused.
    sub = make_cert("Sub CA", key(p.kind, 5), p.inter, p.inter_key, ca=True)
    leaf = p.leaf(issuer=sub, issuer_key=key(p.kind, 5))
    d = evaluate(store([full(p.root)]), p.chain(leaf, sub, p.inter))
    assert d.verdict == "reject" and "allows 0 intermediate(s) below it, the path has 1" in d.reason
    # Trusting the intermediate directly puts nothing between it and its own pathLen... but
    # Sub CA is below it, so an anchor's own constraint applies too.
    d = evaluate(store([full(p.inter)]), p.chain(leaf, sub))
    assert d.verdict == "reject" and "anchor" in d.reason
    # Without a constraint, two intermediates are fine.
    top = make_cert("Top CA", key(p.kind, 6), p.root, p.root_key, ca=True)
    sub2 = make_cert("Sub CA 2", key(p.kind, 5), top, key(p.kind, 6), ca=True)
    leaf2 = p.leaf(issuer=sub2, issuer_key=key(p.kind, 5))
    assert evaluate(store([full(p.root)]), p.chain(leaf2, sub2, top)).verdict == "accept"


def test_rejects_path_longer_than_max_depth():
    k = key("ec", 0)
    root = make_cert("Deep Root", k, ca=True)
    certs = []
    issuer = root
    for i in range(trust.MAX_DEPTH):
        ca = make_cert(f"Deep CA {i}", k, issuer, k, ca=True)
        certs.append(ca)
        issuer = ca
    leaf = make_cert(HOST, k, issuer, k, sans=[HOST])
    chain = [der(leaf)] + [der(c) for c in reversed(certs)]
    d = evaluate(store([full(root)]), chain)
    assert d.verdict == "reject" and "within 8 certificates" in d.reason
    # One level less fits.
    leaf7 = make_cert(HOST, k, certs[-2], k, sans=[HOST])
    chain7 = [der(leaf7)] + [der(c) for c in reversed(certs[:-1])]
    assert evaluate(store([full(root)]), chain7).verdict == "accept"


def test_rejects_chain_with_a_critical_unknown_extension(p):
    unknown = cx509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.7"), b"\x05\x00")
    leaf = p.leaf(extra=[(unknown, True)])
    d = evaluate(store([full(p.root)]), p.chain(leaf))
    assert d.result == "chain-invalid" and "unsupported critical extension 1.3.6.1.4.1.55555.7" in d.reason
    inter = make_cert("Odd CA", p.inter_key, p.root, p.root_key, ca=True, extra=[(unknown, True)])
    d = evaluate(store([full(p.root)]), p.chain(p.leaf(issuer=inter), inter))
    assert d.verdict == "reject" and "Odd CA" in d.reason
    # Non-critical unknown extensions are fine.
    leaf = p.leaf(extra=[(unknown, False)])
    assert evaluate(store([full(p.root)]), p.chain(leaf)).verdict == "accept"


def test_rejects_name_constrained_intermediate_it_cannot_enforce(p):
    nc = cx509.NameConstraints(permitted_subtrees=[cx509.DNSName("example.com")],
                               excluded_subtrees=None)
    inter = make_cert("Constrained CA", p.inter_key, p.root, p.root_key, ca=True,
                      extra=[(nc, True)])
    d = evaluate(store([full(p.root)]), p.chain(p.leaf(issuer=inter), inter))
    assert d.verdict == "reject" and "name constraints" in d.reason


def test_rejects_leaf_whose_extended_key_usage_excludes_tls_servers(p):
    leaf = p.leaf(eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    d = evaluate(store([full(p.root)]), p.chain(leaf))
    assert d.verdict == "reject" and "extKeyUsage" in d.reason
    leaf = p.leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert evaluate(store([full(p.root)]), p.chain(leaf)).verdict == "accept"


def test_rejects_empty_oversized_and_unparseable_chains(p):
    st = store([full(p.root)])
    assert "no certificate" in evaluate(st, []).reason
    assert "limit is 16" in evaluate(st, p.chain() * 9).reason
    d = evaluate(st, [b"\x30\x00"] + p.chain()[1:])
    assert d.result == "chain-invalid" and d.reason.startswith("leaf certificate:")


def test_unparseable_anchor_is_skipped_not_fatal(p):
    st = store([Anchor(b"\x30" + b"\x00" * 20, None, None, None, None), full(p.root)])
    assert len(st.skipped) == 1 and "anchor 0" in st.skipped[0]
    assert evaluate(st, p.chain()).verdict == "accept"


# --------------------------------------------------------------------------- host names


@pytest.mark.parametrize("host, ok", [
    ("api.example.com", True),
    ("API.Example.COM", True),
    ("api.example.com.", True),
    ("www.example.com", False),
    ("example.com", False),
    ("api.example.com.evil", False),
])
def test_host_must_match_a_san_dns_name_exactly(p, host, ok):
    d = evaluate(store([full(p.root)]), p.chain(), host=host)
    assert d.verdict == ("accept" if ok else "reject")
    if not ok:
        assert d.result == "hostname-mismatch"


@pytest.mark.parametrize("host, ok", [
    ("a.wild.example", True),
    ("A.WILD.example", True),
    ("wild.example", False),          # never the bare parent
    ("a.b.wild.example", False),      # never more than one label
    (".wild.example", False),
])
def test_wildcard_matches_exactly_one_left_most_label(p, host, ok):
    leaf = p.leaf(sans=("*.wild.example",))
    d = evaluate(store([full(p.root)]), p.chain(leaf), host=host)
    assert d.verdict == ("accept" if ok else "reject"), d.reason


@pytest.mark.parametrize("pattern, host", [
    ("*.com", "example.com"),
    ("f*.example.com", "foo.example.com"),
    ("*oo.example.com", "foo.example.com"),
    ("a.*.example.com", "a.b.example.com"),
    ("**.example.com", "a.example.com"),
])
def test_partial_and_too_broad_wildcards_never_match(pattern, host):
    assert trust.name_matches(pattern, host) is False


def test_no_fallback_to_the_common_name(p):
    leaf = p.leaf(sans=("other.example.com",), cn=HOST)
    d = evaluate(store([full(p.root)]), p.chain(leaf))
    assert d.result == "hostname-mismatch" and "other.example.com" in d.reason


def test_non_ascii_host_is_refused_before_case_folding():
    # U+212A KELVIN SIGN lower-cases to "k" on CPython but not on MicroPython.
    assert trust.normalize_host("\u212aey.example") is None
    assert trust.normalize_host("Key.Example.") == "key.example"
    assert trust.normalize_host("a..b") is None


# --------------------------------------------------------------------------- distrust


def test_distrusted_key_rejected_even_when_pinned(p):
    st = store([full(p.root)], [pinset(pins=[pin(p.inter), pin(p.backup_key)])],
               distrust=[pin(p.inter)])
    d = evaluate(st, p.chain())
    assert (d.verdict, d.result) == ("reject", "distrusted")
    assert "Issuing CA" in d.reason and d.report["validation-result"] == "distrusted"


def test_distrusted_anchor_key_rejected_everywhere(p):
    for anchor in (full(p.root), compact(p.root, "R")):
        d = evaluate(store([anchor], distrust=[pin(p.root)]), p.chain())
        assert (d.verdict, d.result) == ("reject", "distrusted") and "anchor" in d.reason
        # ...even past pin expiry (no fail-open for distrust).
        st = store([anchor], [pinset(pins=[pin(p.root)], expires=NOW - 1)], distrust=[pin(p.root)])
        assert evaluate(st, p.chain()).result == "distrusted"


def test_distrusted_leaf_rejected_even_with_enterprise_anchor(p):
    st = store([], [pinset(pins=[pin(p.backup_key)])], distrust=[pin(p.leaf_cert)],
               user_anchors=[der(p.root)], allow=True, managed=True)
    assert evaluate(st, p.chain()).result == "distrusted"


# --------------------------------------------------------------------------- pins


@pytest.mark.parametrize("which", ["leaf", "inter", "root"])
def test_accepts_chain_when_any_path_key_matches_a_pin(p, which):
    obj = {"leaf": p.leaf_cert, "inter": p.inter, "root": p.root}[which]
    d = evaluate(store([full(p.root)], [pinset(pins=[pin(obj), pin(p.backup_key)])]), p.chain())
    assert (d.verdict, d.result, d.pinset, d.report) == ("accept", "pin-match", HOST, None)


def test_rejects_chain_when_pin_does_not_match(p):
    ps = pinset(pins=[pin(p.backup_key), pin(p.backup_root)])
    d = evaluate(store([full(p.root)], [ps]), p.chain())
    assert (d.verdict, d.result, d.pinset) == ("reject", "pin-mismatch", HOST)
    r = d.report
    assert r["validation-result"] == "pin-mismatch"
    assert r["hostname"] == HOST and r["port"] == 443 and r["noted-hostname"] == HOST
    assert r["known-pins"] == ["sha256/" + base64.b64encode(x).decode() for x in ps.pins]
    assert r["enforce-pinning"] is True and r["include-subdomains"] is False
    assert r["pin-expiry"] == "2027-01-01T00:00:00Z"
    assert r["date-time"] == "2026-01-01T00:00:00Z"
    assert r["agent-version"] == trustfleet_device.VERSION
    assert r["report-uri"] == ["https://reports.example/"]
    pems = r["validated-certificate-chain"]
    assert len(pems) == 2 and pems[0].startswith("-----BEGIN CERTIFICATE-----\n")
    assert cx509.load_pem_x509_certificate(pems[0].encode()) == p.leaf_cert


def test_pins_from_unrelated_keys_in_the_server_chain_do_not_count(p):
    # The pinned intermediate is sent but is not on the validated path.
    other = pki("rsa" if p.kind == "ec" else "ec")
    st = store([full(p.root)], [pinset(pins=[pin(other.inter), pin(other.root)])])
    d = evaluate(st, p.chain(None, p.inter, other.inter))
    assert d.result == "pin-mismatch"


def test_backup_ca_pin_accepts_chain_from_the_backup_ca(p):
    st = store([full(p.root), full(p.backup_root)], [pinset(pins=[pin(p.root), pin(p.backup_root)])])
    leaf = p.leaf(issuer=p.backup_inter)
    d = evaluate(st, p.chain(leaf, p.backup_inter))
    assert (d.verdict, d.result) == ("accept", "pin-match")
    assert d.anchor == f"{p.kind.upper()} Backup Root CA"


def test_fails_open_to_ca_validation_after_pin_expiry(p):
    ps = pinset(pins=[pin(p.backup_key), pin(p.backup_root)], expires=NOW)
    d = evaluate(store([full(p.root)], [ps]), p.chain())
    assert (d.verdict, d.result) == ("accept-fail-open", "expired-pins-fail-open")
    assert d.report["validation-result"] == "expired-pins-fail-open"
    # One second before expiry the pins still hold.
    assert evaluate(store([full(p.root)], [ps]), p.chain(), now=NOW - 1).result == "pin-mismatch"


def test_never_fails_open_when_chain_is_invalid(p):
    ps = pinset(pins=[pin(p.leaf_cert), pin(p.inter)], expires=NOW - DAY)
    bad_chains = {
        "wrong key": p.chain(p.leaf(issuer_key=p.backup_key)),
        "expired leaf": p.chain(p.leaf(not_before=NOW - 9 * DAY, not_after=NOW - DAY)),
        "no anchor": p.chain(p.leaf(issuer=p.backup_inter), p.backup_inter),
        "host": p.chain(p.leaf(sans=("other.example.com",))),
    }
    for why, chain in bad_chains.items():
        d = evaluate(store([full(p.root)], [ps]), chain)
        assert d.verdict == "reject", why
        assert d.report["validation-result"] in ("chain-invalid", "hostname-mismatch"), why
    # Even with pins that match the leaf: an invalid chain stays rejected.
    ps = pinset(pins=[pin(p.leaf_cert), pin(p.inter)])
    assert evaluate(store([full(p.root)], [ps]), bad_chains["no anchor"]).verdict == "reject"


def test_longest_domain_rule_wins(p):
    broad = pinset("example.com", [pin(p.backup_key), pin(p.backup_root)], subdomains=True)
    narrow = pinset("api.example.com", [pin(p.inter), pin(p.backup_key)])
    for order in ([broad, narrow], [narrow, broad]):
        d = evaluate(store([full(p.root)], order), p.chain())
        assert (d.result, d.pinset) == ("pin-match", "api.example.com")
    d = evaluate(store([full(p.root)], [broad]), p.chain())
    assert (d.result, d.pinset) == ("pin-mismatch", "example.com")


def test_pinset_without_subdomains_covers_only_its_own_host(p):
    ps = pinset("example.com", [pin(p.backup_key), pin(p.backup_root)], subdomains=False)
    d = evaluate(store([full(p.root)], [ps]), p.chain())
    assert (d.verdict, d.result, d.pinset) == ("accept", "ok", None)
    # "notexample.com" is not a subdomain of "example.com".
    st = trust.TrustStore(bundle([full(p.root)], [pinset("example.com", [pin(p.root)],
                                                         subdomains=True)]))
    assert st.pinset_for("notexample.com") is None
    assert st.pinset_for("a.b.example.com").domain == "example.com"


def test_report_only_pinset_accepts_and_reports(p):
    ps = pinset(pins=[pin(p.backup_key), pin(p.backup_root)], mode="report")
    d = evaluate(store([full(p.root)], [ps]), p.chain())
    assert (d.verdict, d.result) == ("accept", "report-only-mismatch")
    assert d.report["validation-result"] == "report-only-mismatch"
    assert d.report["enforce-pinning"] is False
    # Report-only never relaxes chain validation.
    d = evaluate(store([full(p.root)], [ps]), p.chain(p.leaf(issuer_key=p.backup_key)))
    assert d.verdict == "reject" and d.report["validation-result"] == "chain-invalid"


def test_report_carries_the_port_and_the_received_chain_on_failure(p):
    ps = pinset(pins=[pin(p.inter), pin(p.backup_key)])
    st = store([full(p.backup_root)], [ps])
    d = st.evaluate(HOST, p.chain(), NOW, port=8883)
    assert d.report["port"] == 8883 and d.result == "chain-invalid"
    assert len(d.report["validated-certificate-chain"]) == 2


# --------------------------------------------------------------------------- enterprise anchors


@pytest.mark.parametrize("allow, managed", [(True, True), (True, False), (False, True),
                                            (False, False)])
def test_enterprise_anchor_overrides_pins_only_when_managed_and_allowed(p, allow, managed):
    corp = Pki(p.kind, tag="Corp", keys=10)
    ps = pinset(pins=[pin(p.inter), pin(p.backup_key)])
    st = store([full(p.root)], [ps], user_anchors=[der(corp.root)], allow=allow, managed=managed)
    d = evaluate(st, corp.chain())  # an inspecting proxy's chain for api.example.com
    if allow and managed:
        assert (d.verdict, d.result, d.report) == ("accept", "enterprise-override", None)
        assert d.anchor == "Corp Root CA"
    else:
        assert (d.verdict, d.result) == ("reject", "chain-invalid")
    # The bundle's own chain is unaffected either way.
    assert evaluate(st, p.chain()).result == "pin-match"


def test_enterprise_anchor_accepts_unpinned_hosts_and_compact_user_anchors(p):
    corp = Pki(p.kind, tag="Corp", keys=10)
    st = store([], user_anchors=[compact(corp.root, "corp")], allow=True, managed=True)
    d = evaluate(st, corp.chain())
    assert (d.verdict, d.result, d.anchor) == ("accept", "ok", "corp")


def test_enterprise_anchor_does_not_override_pins_of_a_chain_to_a_bundle_anchor(p):
    corp = Pki(p.kind, tag="Corp", keys=10)
    ps = pinset(pins=[pin(p.backup_key), pin(p.backup_root)])
    st = store([full(p.root)], [ps], user_anchors=[der(corp.root)], allow=True, managed=True)
    assert evaluate(st, p.chain()).result == "pin-mismatch"


# --------------------------------------------------------------------------- robustness


def test_caller_mistakes_raise_value_error(p):
    st = store([full(p.root)])
    for args in ((b"host", p.chain(), NOW), (HOST, der(p.leaf_cert), NOW), (HOST, p.chain(), 1.5),
                 (HOST, p.chain(), True)):
        with pytest.raises(ValueError):
            st.evaluate(*args)


def test_evaluate_never_raises_on_mutated_chains():
    p = pki("ec")
    st = store([full(p.root)], [pinset(pins=[pin(p.inter), pin(p.backup_key)])])
    rng = random.Random(7)
    base = p.chain(None, p.inter, p.root)
    verdicts = set()
    for _ in range(300):
        chain = [bytearray(c) for c in base]
        c = rng.choice(chain)
        for _ in range(rng.randint(1, 3)):
            c[rng.randrange(len(c))] ^= 1 << rng.randrange(8)
        d = st.evaluate(HOST, [bytes(x) for x in chain], NOW)
        assert isinstance(d, trust.Decision) and d.reason
        verdicts.add(d.verdict)
    assert "reject" in verdicts


def test_pure_path_rejects_chains_it_cannot_check_with_a_distinct_reason(backend):
    p384 = Pki("p384")
    st = store([full(p384.root)])
    d = evaluate(st, p384.chain())
    if backend == "pure":
        assert (d.verdict, d.result) == ("reject", "unsupported-algorithm")
        assert "unsupported signature algorithm ecdsa-with-SHA384 on this runtime" in d.reason
    else:
        assert (d.verdict, d.result) == ("accept", "ok")


def test_decisions_are_the_same_on_both_signature_paths(p, backend):
    # The autouse fixture already runs everything twice; here both answers meet.
    scenarios = [
        ([full(p.root)], [pinset(pins=[pin(p.inter), pin(p.backup_key)])], p.chain()),
        ([full(p.root)], [pinset(pins=[pin(p.backup_key)])], p.chain()),
        ([compact(p.root)], [], p.chain(p.leaf(issuer_key=p.backup_key))),
    ]
    for anchors, pinsets, chain in scenarios:
        answers = []
        for b in ("pure", "cryptography"):
            sigcheck.BACKEND = b
            d = evaluate(store(anchors, pinsets), chain)
            answers.append((d.verdict, d.result, d.reason, d.anchor, d.pinset))
        sigcheck.BACKEND = backend
        assert answers[0] == answers[1]


def test_time_one_evaluate(p, backend, capsys):
    st = store([full(p.root)], [pinset(pins=[pin(p.inter), pin(p.backup_key)])])
    chain = p.chain()
    assert evaluate(st, chain).verdict == "accept"
    runs = 20
    t0 = time.perf_counter()
    for _ in range(runs):
        evaluate(st, chain)
    ms = (time.perf_counter() - t0) * 1000 / runs
    with capsys.disabled():
        print(f"\nevaluate() {p.kind} chain, {backend} path, CPython: {ms:.2f} ms")


def test_spki_hash_helper_agrees_with_cryptography(p):
    assert hashlib.sha256(spki_der(p.inter)).digest() == pin(p.inter)
