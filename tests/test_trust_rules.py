"""One test per rule of trust.py, each boundary from both sides (issue 8).

test_trust.py tells the main stories; this file pins the rules one at a
time so that tools/mutate.py finds no check that could change unnoticed:
argument and host-name checks, validity of leaf, intermediates and
anchors at the trusted time exactly and one second either side, CA
constraints of full anchors (none for compact or v1 ones), path length
with self-issued certificates, the signature budget, pin-set expiry (fail
open to CA validation, never to none), distrust, enterprise anchors,
reports, and anchors left in flash (documents.StoredItems).

Certificates are real (tests/support/pki.py); bundles are built
with tests/support/truststores.py. Like test_trust.py every test runs on both signature
paths (the pure one forced, then cryptography).
"""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from support.pki import (
    DAY,
    NOW,
    Pki,
    der,
    key,
    make_cert,
    name,
    pin,
    pki,
    raw_cert,
    raw_tbs,
    seq,
    spki_der,
    utc,
)
from support.truststores import HOST, LATER, bundle, compact, evaluate, full, pinset, store
from trustfleet_device import cbor, sigcheck, trust
from trustfleet_device import documents as device_docs
from trustfleet_device.documents import Anchor, Bundle, Policy, StoredAnchors, StoredItems
from trustfleet_device.limits import DEFAULT
from trustfleet_device.source import BytesSource


@pytest.fixture(params=["pure", "cryptography"], autouse=True)
def backend(request, monkeypatch):
    """Every rule holds on both signature paths."""
    monkeypatch.setattr(sigcheck, "BACKEND", request.param)
    return request.param


@pytest.fixture
def p() -> Pki:
    return pki("ec")


@pytest.fixture
def checks(monkeypatch):
    """Record every signature check trust.py asks for: (certificate label, issuer SPKI)."""
    seen = []
    real = sigcheck.verify_certificate

    def counting(cert, spki, backend=None):
        seen.append((cert.label(), spki))
        return real(cert, spki, backend)

    monkeypatch.setattr(sigcheck, "verify_certificate", counting)
    return seen


def root_store(p, *pinsets, **kw):
    return store([full(p.root)], list(pinsets), **kw)


def signed_raw(tbs: bytes, signer) -> bytes:
    """A whole certificate around a hand-made tbsCertificate, really signed (ECDSA SHA-256)."""
    return raw_cert(tbs, sig=signer.sign(tbs, ec.ECDSA(hashes.SHA256())))


def v1_root(cn: str, k) -> bytes:
    """A version 1 self-signed root (no extensions at all), as old roots still are."""
    n = name(cn).public_bytes()
    tbs = raw_tbs(version=None, serial=b"\x05", issuer=n, subject=n, spki=spki_der(k), extensions=[],
                  validity=seq(utc("250101000000Z"), utc("300101000000Z")))
    return signed_raw(tbs, k)


# --------------------------------------------------------------------------- caller mistakes


def test_chain_may_be_a_list_or_a_tuple_and_nothing_else(p):
    st = root_store(p)
    assert st.evaluate(HOST, tuple(p.chain()), NOW).verdict == "accept"
    assert st.evaluate(HOST, list(p.chain()), NOW).verdict == "accept"
    for bad in (der(p.leaf_cert), "chain", None, {0: der(p.leaf_cert)}, iter(p.chain())):
        with pytest.raises(ValueError, match="chain must be a list of DER certificates"):
            st.evaluate(HOST, bad, NOW)


def test_host_must_be_text_and_now_and_port_plain_ints(p):
    st = root_store(p)
    with pytest.raises(ValueError, match="host must be a str"):
        st.evaluate(HOST.encode(), p.chain(), NOW)
    for now, port in ((float(NOW), 443), (True, 443), (None, 443), (NOW, "443"), (NOW, True),
                      (NOW, 443.0)):
        with pytest.raises(ValueError, match="now and port must be int"):
            st.evaluate(HOST, p.chain(), now, port)
    assert st.evaluate(HOST, p.chain(), NOW, 8443).verdict == "accept"


# --------------------------------------------------------------------------- host names


@pytest.mark.parametrize("host, want", [
    ("a" * 63 + ".example", "a" * 63 + ".example"),              # longest label
    ("a" * 64 + ".example", None),
    (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253
    (".".join(["a" * 63] * 3 + ["b" * 62]), None),                # 254
    (".".join(["a" * 63] * 3 + ["b" * 61]) + ".", ".".join(["a" * 63] * 3 + ["b" * 61])),
    ("az09-_.example", "az09-_.example"),                          # every allowed class, edges
    ("AZ.Example.", "az.example"),
    ("", None), (".", None), ("a..b", None), (".a", None), ("a.b..", None),
    ("a`.example", None), ("a{.example", None), ("a/.example", None), ("a:.example", None),
    ("a@.example", None), ("a[.example", None), ("a~.example", None), ("a\x7f.example", None),
    ("a b.example", None), ("a*.example", None), ("caf\u00e9.example", None),
])
def test_normalize_host_accepts_exactly_ascii_dns_names(host, want):
    assert trust.normalize_host(host) == want


def test_a_host_that_is_not_a_dns_name_is_rejected_without_looking_at_the_chain(p):
    d = root_store(p, pinset(pins=[pin(p.inter), pin(p.backup_key)])).evaluate("api example", p.chain(), NOW)
    assert (d.verdict, d.result, d.path, d.report) == ("reject", "hostname-mismatch", [], None)
    assert d.reason == "host 'api example' is neither a DNS name nor an IP address"


@pytest.mark.parametrize("pattern, host, ok", [
    ("api.example.com", "api.example.com", True),
    ("API.example.COM", "api.example.com", True),
    ("api.example.com", "www.example.com", False),
    ("*.a.b", "x.a.b", True),                 # two labels under the wildcard: the minimum
    ("*.b", "x.b", False),
    ("*.wild.example", "a.wild.example", True),
    ("*.WILD.example", "a.wild.example", True),
    ("*.wild.example", "a.other.example", False),
    ("*.wild.example", "wild.example", False),
    ("*.wild.example", "a.b.wild.example", False),
    ("*.wild.example", ".wild.example", False),
    ("*oo.wild.example", "foo.wild.example", False),
    ("f*.wild.example", "foo.wild.example", False),
    ("a.*.wild.example", "a.b.wild.example", False),
])
def test_name_matches_each_rule(pattern, host, ok):
    assert trust.name_matches(pattern, host) is ok


@pytest.mark.parametrize("sans, shown", [
    ((), "none"),
    (("a.test",), "a.test"),
    (tuple(f"n{i}.test" for i in range(4)), "n0.test, n1.test, n2.test, n3.test"),
    (tuple(f"n{i}.test" for i in range(5)), "n0.test, n1.test, n2.test, n3.test and 1 more"),
    (tuple(f"n{i}.test" for i in range(7)), "n0.test, n1.test, n2.test, n3.test and 3 more"),
])
def test_host_mismatch_names_at_most_four_certificate_names(p, sans, shown):
    leaf = p.leaf(sans=sans, cn=HOST)
    d = evaluate(root_store(p), p.chain(leaf))
    assert (d.verdict, d.result) == ("reject", "hostname-mismatch")
    assert d.reason == f"host {HOST} does not match the certificate's DNS names ({shown})"


def test_the_host_may_match_any_san_not_only_the_first(p):
    leaf = p.leaf(sans=("a.test", HOST, "b.test"))
    assert evaluate(root_store(p), p.chain(leaf)).verdict == "accept"


# --------------------------------------------------------------------------- validity


def test_intermediate_validity_bounds_are_inclusive_to_the_second(p):
    inter = make_cert("Short CA", p.inter_key, p.root, p.root_key, ca=True, not_before=NOW,
                      not_after=NOW + 10)
    leaf = p.leaf(issuer=inter, not_before=NOW - DAY, not_after=NOW + DAY)
    st = root_store(p)
    for now, ok in ((NOW - 1, False), (NOW, True), (NOW + 10, True), (NOW + 11, False)):
        d = evaluate(st, p.chain(leaf, inter), now=now)
        assert d.verdict == ("accept" if ok else "reject"), now
    assert "intermediate 'Short CA' is not valid before 2026-01-01T00:00:00Z" in \
        evaluate(st, p.chain(leaf, inter), now=NOW - 1).reason
    assert "intermediate 'Short CA' expired at 2026-01-01T00:00:10Z" in \
        evaluate(st, p.chain(leaf, inter), now=NOW + 11).reason


def test_full_anchor_validity_bounds_are_inclusive_to_the_second(p):
    root = make_cert("Brief Root", p.root_key, ca=True, not_before=NOW, not_after=NOW + 10)
    inter = make_cert("Brief CA", p.inter_key, root, p.root_key, ca=True)
    leaf = p.leaf(issuer=inter)
    st = store([full(root)])
    for now, ok in ((NOW - 1, False), (NOW, True), (NOW + 10, True), (NOW + 11, False)):
        assert evaluate(st, p.chain(leaf, inter), now=now).verdict == ("accept" if ok else "reject"), now
    d = evaluate(st, p.chain(leaf, inter), now=NOW - 1)
    assert d.result == "chain-invalid"
    assert d.reason == "anchor 'Brief Root' is not valid before 2026-01-01T00:00:00Z"
    assert evaluate(st, p.chain(leaf, inter), now=NOW + 11).reason == \
        "anchor 'Brief Root' expired at 2026-01-01T00:00:10Z"


def test_compact_anchor_has_no_not_before_and_expires_after_its_not_after(p):
    root = make_cert("Brief Root", p.root_key, ca=True, not_before=NOW, not_after=NOW + 10)
    inter = make_cert("Brief CA", p.inter_key, root, p.root_key, ca=True)
    leaf = p.leaf(issuer=inter)
    st = store([compact(root, "brief")])
    for now, ok in ((NOW - 1, True), (NOW + 10, True), (NOW + 11, False)):
        assert evaluate(st, p.chain(leaf, inter), now=now).verdict == ("accept" if ok else "reject"), now
    assert evaluate(st, p.chain(leaf, inter), now=NOW + 11).reason == \
        "anchor 'brief' expired at 2026-01-01T00:00:10Z"


def test_an_anchor_that_is_the_certificate_itself_must_be_valid_too(p):
    # The compact anchor's own not_after counts, even when the certificate is still valid.
    tired = Anchor(None, p.inter.subject.public_bytes(), spki_der(p.inter), NOW - 1, "Issuing")
    d = evaluate(store([tired]), p.chain())
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert d.reason == "anchor 'Issuing' expired at 2025-12-31T23:59:59Z"


# --------------------------------------------------------------------------- extensions


def test_extended_key_usage_applies_to_intermediates_too(p):
    inter = make_cert("Client CA", p.inter_key, p.root, p.root_key, ca=True,
                      eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    d = evaluate(root_store(p), p.chain(p.leaf(issuer=inter), inter))
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert d.reason == "intermediate 'Client CA' is not allowed for TLS servers (extKeyUsage)"


@pytest.mark.parametrize("eku", [[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
                                 [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
                                 [ExtendedKeyUsageOID.SERVER_AUTH]])
def test_extended_key_usage_with_server_auth_or_any_is_accepted(p, eku):
    assert evaluate(root_store(p), p.chain(p.leaf(eku=eku))).verdict == "accept"


def test_leaf_extended_key_usage_without_server_auth_names_the_leaf(p):
    d = evaluate(root_store(p), p.chain(p.leaf(eku=[ExtendedKeyUsageOID.CODE_SIGNING])))
    assert d.reason == "leaf 'api.example.com' is not allowed for TLS servers (extKeyUsage)"


def test_unknown_critical_extension_and_name_constraints_have_their_own_reasons(p):
    unknown = cx509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.9"), b"\x05\x00")
    d = evaluate(root_store(p), p.chain(p.leaf(extra=[(unknown, True)])))
    assert d.reason == "leaf 'api.example.com' has an unsupported critical extension 1.3.6.1.4.1.55555.9"
    nc = cx509.NameConstraints(permitted_subtrees=[cx509.DNSName("example.com")], excluded_subtrees=None)
    inter = make_cert("NC CA", p.inter_key, p.root, p.root_key, ca=True, extra=[(nc, False)])
    d = evaluate(root_store(p), p.chain(p.leaf(issuer=inter), inter))
    assert d.reason == "intermediate 'NC CA' has name constraints, which this device cannot enforce"


# --------------------------------------------------------------------------- anchor constraints


def test_full_anchor_must_be_a_ca_to_issue(p):
    boss = make_cert("Not CA Root", p.root_key, ca=False)
    inter = make_cert("Under CA", p.inter_key, boss, p.root_key, ca=True)
    chain = p.chain(p.leaf(issuer=inter), inter)
    d = evaluate(store([full(boss)]), chain)
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert d.reason == "anchor 'Not CA Root' is not a CA (basicConstraints)"
    # The same key as a compact anchor carries no constraints at all.
    assert evaluate(store([compact(boss, "boss")]), chain).verdict == "accept"


def test_full_anchor_key_usage_must_allow_certificate_signing(p):
    boss = make_cert("No Sign Root", p.root_key, ca=True, key_usage="nosign")
    inter = make_cert("Under CA", p.inter_key, boss, p.root_key, ca=True)
    d = evaluate(store([full(boss)]), p.chain(p.leaf(issuer=inter), inter))
    assert d.reason == "anchor 'No Sign Root' may not sign certificates (keyUsage lacks keyCertSign)"
    # No keyUsage at all is fine.
    free = make_cert("Free Root", p.root_key, ca=True, key_usage=None)
    inter = make_cert("Under CA", p.inter_key, free, p.root_key, ca=True)
    assert evaluate(store([full(free)]), p.chain(p.leaf(issuer=inter), inter)).verdict == "accept"


def test_full_anchor_with_unknown_critical_extension_is_not_used(p):
    unknown = cx509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.3"), b"\x05\x00")
    odd = make_cert("Odd Root", p.root_key, ca=True, extra=[(unknown, True)])
    inter = make_cert("Under CA", p.inter_key, odd, p.root_key, ca=True)
    d = evaluate(store([full(odd)]), p.chain(p.leaf(issuer=inter), inter))
    assert d.reason == "anchor 'Odd Root' has an unsupported critical extension 1.3.6.1.4.1.55555.3"


def test_version_1_root_is_an_anchor_without_ca_constraints(p):
    root = v1_root("V1 Root", p.root_key)
    leaf = make_cert(HOST, p.leaf_key, issuer_key=p.root_key, issuer_name=name("V1 Root"), sans=[HOST])
    d = evaluate(store([Anchor(root, None, None, None, None)]), [der(leaf)])
    assert (d.verdict, d.result, d.anchor) == ("accept", "ok", "V1 Root")


@pytest.mark.parametrize("where", ["anchor", "intermediate"])
def test_path_length_one_allows_exactly_one_intermediate_below(p, where):
    top = make_cert("Top CA", key("ec", 6), p.root, p.root_key, ca=True, path_len=1)
    mid = make_cert("Mid CA", key("ec", 5), top, key("ec", 6), ca=True)
    low = make_cert("Low CA", key("ec", 7), mid, key("ec", 5), ca=True)
    one = p.leaf(issuer=mid, issuer_key=key("ec", 5))
    two = p.leaf(issuer=low, issuer_key=key("ec", 7))
    st = store([full(top)]) if where == "anchor" else root_store(p)
    rest = () if where == "anchor" else (top,)
    assert evaluate(st, p.chain(one, mid, *rest)).verdict == "accept"
    d = evaluate(st, p.chain(two, low, mid, *rest))
    assert d.verdict == "reject"
    assert d.reason == f"{where} 'Top CA' allows 1 intermediate(s) below it, the path has 2"


def test_self_issued_intermediates_do_not_count_against_path_length(p):
    # A key rollover certificate: subject == issuer == the root's name, another key.
    root = make_cert("Roll Root", p.root_key, ca=True, path_len=0)
    rollover = make_cert("Roll Root", key("ec", 8), root, p.root_key, ca=True)
    leaf = p.leaf(issuer=rollover, issuer_key=key("ec", 8))
    d = evaluate(store([full(root)]), p.chain(leaf, rollover))
    assert d.verdict == "accept" and len(d.path) == 2
    # An ordinary intermediate in its place does count.
    other = make_cert("Other CA", key("ec", 8), root, p.root_key, ca=True)
    d = evaluate(store([full(root)]), p.chain(p.leaf(issuer=other, issuer_key=key("ec", 8)), other))
    assert d.reason == "anchor 'Roll Root' allows 0 intermediate(s) below it, the path has 1"


def test_a_reissued_certificate_is_not_its_full_anchor(p):
    # Same subject and key, other bytes: a full anchor matches byte for byte only, and as
    # an issuer this non-CA self-signed anchor may not vouch for it.
    mine = make_cert(HOST, p.leaf_key, sans=[HOST], serial=1)
    again = make_cert(HOST, p.leaf_key, sans=[HOST], serial=2)
    assert evaluate(store([full(mine)]), [der(mine)]).verdict == "accept"
    d = evaluate(store([full(mine)]), [der(again)])
    assert d.reason == "anchor 'api.example.com' is not a CA (basicConstraints)"
    # A compact anchor matches by subject and key.
    assert evaluate(store([compact(mine, "mine")]), [der(again)]).anchor == "mine"


def test_compact_anchor_label_falls_back_to_the_name_then_the_position(p):
    plain = Anchor(None, p.root.subject.public_bytes(), spki_der(p.root), 4_000_000_000, None)
    assert evaluate(store([plain]), p.chain()).anchor == "EC Root CA"
    nameless = cx509.Name([cx509.NameAttribute(NameOID.COUNTRY_NAME, "NZ")])
    root = make_cert("x", p.root_key, ca=True)
    unnamed = Anchor(None, nameless.public_bytes(), spki_der(root), 4_000_000_000, None)
    inter = make_cert("Under CA", p.inter_key, None, p.root_key, ca=True, issuer_name=nameless)
    d = evaluate(store([full(p.backup_root), unnamed]), p.chain(p.leaf(issuer=inter), inter))
    assert (d.verdict, d.anchor) == ("accept", "anchor 1")


# --------------------------------------------------------------------------- path building


def test_two_anchors_with_one_name_are_both_tried(p):
    expired = make_cert("EC Root CA", p.backup_key, ca=True, not_before=NOW - 900 * DAY,
                        not_after=NOW - DAY)
    rekeyed = make_cert("EC Root CA", p.backup_key, ca=True)
    for first in (expired, rekeyed):
        for anchors in ([full(first), full(p.root)], [compact(first, "first"), compact(p.root, "second")]):
            d = evaluate(store(anchors), p.chain())
            assert d.verdict == "accept", d.reason


def test_the_first_failure_at_the_deepest_level_is_the_reason(p):
    expired = make_cert("EC Root CA", p.backup_key, ca=True, not_before=NOW - 900 * DAY,
                        not_after=NOW - DAY)
    rekeyed = make_cert("EC Root CA", key("ec", 9), ca=True)
    d = evaluate(store([full(expired), full(rekeyed)]), p.chain())
    assert d.reason == "anchor 'EC Root CA' expired at 2025-12-31T00:00:00Z"
    d = evaluate(store([full(rekeyed), full(expired)]), p.chain())
    assert d.reason == "signature on 'EC Issuing CA' does not verify with the key of anchor 'EC Root CA'"


def test_a_failing_candidate_does_not_stop_the_next_one(p, checks):
    expired = make_cert("EC Issuing CA", p.inter_key, p.root, p.root_key, ca=True,
                        not_before=NOW - 900 * DAY, not_after=NOW - DAY)
    other_key = make_cert("EC Issuing CA", key("ec", 9), p.root, p.root_key, ca=True)
    stray_root = make_cert("Stray Root", key("ec", 10), ca=True)
    dead_end = make_cert("EC Issuing CA", p.inter_key, stray_root, key("ec", 10), ca=True)
    for first in (expired, other_key, dead_end):
        d = evaluate(root_store(p), p.chain(None, first, p.inter))
        assert d.verdict == "accept"
        assert [c.der for c in d.path] == p.chain()


def test_each_signature_is_checked_once_per_evaluation(p, checks):
    # A dead-end copy of the intermediate with the same key: the leaf's signature under
    # that key is checked once, not again for the good copy.
    stray_root = make_cert("Stray Root", key("ec", 10), ca=True)
    dead_end = make_cert("EC Issuing CA", p.inter_key, stray_root, key("ec", 10), ca=True)
    d = evaluate(root_store(p), p.chain(None, dead_end, p.inter))
    assert d.verdict == "accept"
    assert checks == [("api.example.com", spki_der(p.inter)), ("EC Issuing CA", spki_der(p.root))]


def test_a_certificate_sent_twice_is_one_candidate(p, checks):
    d = evaluate(store([full(p.backup_root)]), p.chain(None, p.inter, p.root, p.root))
    assert d.reason == "no trusted anchor or certificate in the chain issued 'EC Root CA'"
    assert len(checks) == 2  # leaf by intermediate, intermediate by root; no self-signature


def test_unparseable_extras_anywhere_are_ignored_and_left_out_of_reports(p):
    st = root_store(p, pinset(pins=[pin(p.backup_key), pin(p.backup_root)]))
    d = evaluate(st, [der(p.leaf_cert), b"\x30\x03\x02\x01\x00", der(p.inter)])
    assert (d.verdict, d.result) == ("reject", "pin-mismatch")
    d = evaluate(st, [der(p.leaf_cert), b"junk"])
    assert d.result == "chain-invalid"
    assert len(d.report["validated-certificate-chain"]) == 1
    assert evaluate(root_store(p), [der(p.leaf_cert), b"junk", der(p.inter)]).verdict == "accept"


def test_at_most_sixteen_certificates(p):
    st = root_store(p)
    assert evaluate(st, p.chain() + [der(p.root)] * 14).verdict == "accept"
    d = evaluate(st, p.chain() + [der(p.root)] * 15)
    assert (d.verdict, d.result, d.reason) == ("reject", "chain-invalid",
                                               "the server sent 17 certificates, limit is 16")


@pytest.mark.parametrize("wrong, ok", [(22, True), (23, False)])
def test_at_most_twenty_four_signature_checks(p, wrong, ok):
    # `wrong` anchors share the intermediate's name with other keys: each costs a check on
    # the leaf, then the intermediate and the root take two more.
    decoys = [Anchor(None, p.inter.subject.public_bytes(), spki_der(key("ec", 100 + i)), LATER,
                     f"decoy {i}") for i in range(wrong)]
    d = evaluate(store(decoys + [full(p.root)]), p.chain())
    if ok:
        assert d.verdict == "accept"
    else:
        assert (d.verdict, d.result) == ("reject", "chain-invalid")
        assert d.reason == "gave up after 24 signature checks"


def test_issuer_key_problems_are_reasons_not_crashes(p):
    weak_key = key("rsa1024")
    weak = make_cert("Weak Root", weak_key, ca=True)
    leaf = make_cert(HOST, p.leaf_key, weak, weak_key, sans=[HOST])
    d = evaluate(store([full(weak)]), [der(leaf)])
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert d.reason.startswith("signature on 'api.example.com': key of anchor 'Weak Root': ")
    assert "1024" in d.reason
    broken = Anchor(None, p.inter.subject.public_bytes(), b"\x30\x03\x02\x01\x01", LATER, "broken")
    d = evaluate(store([broken]), [der(p.leaf_cert)])
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert d.reason.startswith("signature on 'api.example.com': key of anchor 'broken': ")


def test_a_self_signed_root_the_store_lacks_ends_the_search(p):
    d = evaluate(store([full(p.backup_root)]), p.chain(None, p.inter, p.root))
    assert d.reason == "no trusted anchor or certificate in the chain issued 'EC Root CA'"


# --------------------------------------------------------------------------- distrust and pins


def test_distrust_names_the_certificate_or_the_anchor(p):
    d = evaluate(root_store(p, distrust=[pin(p.leaf_cert)]), p.chain())
    assert d.reason == "the key of 'api.example.com' is distrusted by the bundle"
    d = evaluate(root_store(p, distrust=[pin(p.root)]), p.chain())
    assert d.reason == "the key of anchor 'EC Root CA' is distrusted by the bundle"
    assert d.report is None  # no pin-set: no report


def test_pin_expiry_boundary_fails_open_to_ca_validation_only(p):
    expires = NOW + 1
    wrong = pinset(pins=[pin(p.backup_key), pin(p.backup_root)], expires=expires)
    right = pinset(pins=[pin(p.inter), pin(p.backup_key)], expires=expires)
    assert evaluate(root_store(p, wrong), p.chain(), now=expires - 1).result == "pin-mismatch"
    assert evaluate(root_store(p, right), p.chain(), now=expires - 1).result == "pin-match"
    for now in (expires, expires + 1):
        for ps in (wrong, right):
            d = evaluate(root_store(p, ps), p.chain(), now=now)
            assert (d.verdict, d.result) == ("accept-fail-open", "expired-pins-fail-open")
            assert d.reason == ("pins for api.example.com expired at 2026-01-01T00:00:01Z; chain to "
                                "anchor 'EC Root CA' is valid, pins not enforced")
            assert d.report["validation-result"] == "expired-pins-fail-open"
            assert d.accepted() and d.path
        # Failing open never means not validating: a chain to no anchor stays rejected.
        d = evaluate(store([full(p.backup_root)], [wrong]), p.chain(), now=now)
        assert (d.verdict, d.result) == ("reject", "chain-invalid") and not d.accepted()


def test_reports_only_for_pinned_hosts_and_never_for_a_clean_match(p):
    corp = Pki("ec", tag="Corp", keys=10)
    cases = [
        (root_store(p, pinset(pins=[pin(p.inter), pin(p.backup_key)])), p.chain(), "pin-match", False),
        (root_store(p, pinset(pins=[pin(p.backup_key), pin(p.backup_root)], mode="report")),
         p.chain(), "report-only-mismatch", True),
        (root_store(p, pinset(pins=[pin(p.backup_key), pin(p.backup_root)]), user_anchors=[der(corp.root)],
                    allow=True, managed=True), corp.chain(), "enterprise-override", False),
        (root_store(p, pinset(pins=[pin(p.inter), pin(p.backup_key)])), p.chain(p.leaf(sans=("x.test",))),
         "hostname-mismatch", True),
        (root_store(p), p.chain(p.leaf(sans=("x.test",))), "hostname-mismatch", False),
        (root_store(p), p.chain(), "ok", False),
    ]
    for st, chain, result, reported in cases:
        d = evaluate(st, chain)
        assert d.result == result
        assert (d.report is not None) is reported, result
        if reported:
            assert d.report["validation-result"] == result and d.report["port"] == 443
    ok = evaluate(root_store(p), p.chain())
    assert (ok.pinset, ok.anchor, ok.accepted()) == (None, "EC Root CA", True)


def test_first_of_two_pinsets_for_one_domain_applies(p):
    right = pinset(pins=[pin(p.inter), pin(p.backup_key)])
    wrong = pinset(pins=[pin(p.backup_key), pin(p.backup_root)])
    assert evaluate(root_store(p, right, wrong), p.chain()).result == "pin-match"
    assert evaluate(root_store(p, wrong, right), p.chain()).result == "pin-mismatch"


def test_pinset_for_exact_and_subdomain_matching(p):
    st = trust.TrustStore(bundle([], [pinset("example.com", [pin(p.root)], subdomains=False),
                                      pinset("sub.example.com", [pin(p.root)], subdomains=True)]))
    assert st.pinset_for("example.com").domain == "example.com"
    assert st.pinset_for("a.example.com") is None
    assert st.pinset_for("sub.example.com").domain == "sub.example.com"
    assert st.pinset_for("a.sub.example.com").domain == "sub.example.com"
    assert st.pinset_for("asub.example.com") is None


def test_pem_and_pin_text_are_the_standard_forms(p):
    for cert in (p.leaf_cert, p.root, pki("rsa").inter):
        assert trust.pem(der(cert)) == cert.public_bytes(serialization.Encoding.PEM).decode()
    assert trust.pin_text(b"\x00" * 32) == "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


# --------------------------------------------------------------------------- enterprise anchors


def test_enterprise_anchors_need_managed_true_and_policy_true_exactly(p):
    corp = Pki("ec", tag="Corp", keys=10)
    for allow, managed in ((1, True), (True, 1), (True, "yes")):
        st = trust.TrustStore(Bundle("fleet", 1, NOW - DAY, NOW + DAY, [full(p.root)], [], [],
                                     Policy(allow, DAY)), [der(corp.root)], managed)
        assert not st.user_anchors_active
        assert evaluate(st, corp.chain()).verdict == "reject"
        assert [a.label for a in st.anchors] == ["EC Root CA"]
    # Not saying `managed` at all means unmanaged.
    st = trust.TrustStore(bundle([full(p.root)], user_anchors=True), [der(corp.root)])
    assert (st.managed, st.user_anchors_active) == (False, False)
    assert evaluate(st, corp.chain()).verdict == "reject"
    st = store([full(p.root)], user_anchors=[der(corp.root)], allow=True, managed=True)
    assert st.user_anchors_active and st.managed is True
    assert [(a.label, a.user) for a in st.anchors] == [("EC Root CA", False), ("Corp Root CA", True)]
    assert store([full(p.root)], allow=True, managed=True).anchors[0].user is False


# --------------------------------------------------------------------------- anchors in flash


class CountingSource(BytesSource):
    def __init__(self, data):
        super().__init__(data)
        self.reads = 0

    def read_at(self, offset, n):
        self.reads += 1
        return BytesSource.read_at(self, offset, n)


def stored(values: list) -> StoredItems:
    """Anchors as they sit in flash: their CBOR one after another, read back by offset."""
    data = b""
    offsets = []
    for v in values:
        offsets.append(len(data))
        data += cbor.encode(v)
    offsets.append(len(data))
    return StoredAnchors(CountingSource(data), offsets, DEFAULT)


def flash_store(values, pinsets=(), **kw):
    anchors = stored(values)
    b = Bundle("fleet", 1, NOW - DAY, NOW + DAY, anchors, list(pinsets), [], Policy(kw.pop("allow", False), DAY))
    return trust.TrustStore(b, **kw), anchors.source


def flash_compact(cert, label=None):
    return device_docs.compact_anchor(cert.subject.public_bytes(), spki_der(cert),
                                        int(cert.not_valid_after_utc.timestamp()), label)


def test_stored_anchors_are_read_when_named_and_kept_while_few(p):
    st, source = flash_store([flash_compact(pki("rsa").root, "rsa"), der(p.root)])
    built = source.reads
    d = evaluate(st, p.chain())
    assert (d.verdict, d.anchor) == ("accept", "EC Root CA")
    assert source.reads > built  # read back from flash when the chain named it
    again = source.reads
    assert evaluate(st, p.chain()).verdict == "accept"
    assert source.reads == again  # still loaded


def test_at_most_eight_stored_anchors_are_kept_loaded(p):
    roots = [make_cert(f"Flash Root {i}", key("ec", 100 + i), ca=True) for i in range(10)]
    st, _ = flash_store([flash_compact(r, f"r{i}") for i, r in enumerate(roots)])
    for r in roots:
        assert [a.label for a in st.anchors_named(r.subject.public_bytes())] != []
        assert len(st._loaded) <= 8


def test_stored_anchors_sharing_a_name_are_all_found(p):
    rekeyed = make_cert("EC Root CA", p.backup_key, ca=True)
    st, _ = flash_store([der(rekeyed), flash_compact(p.root, "real")])
    assert [a.label for a in st.anchors_named(p.root.subject.public_bytes())] == ["EC Root CA", "real"]
    assert evaluate(st, p.chain()).anchor == "real"


def test_three_stored_anchors_sharing_a_name_are_all_found(p):
    """A CA re-keyed twice under one name: the index keeps all three (int, then a list)."""
    old = [make_cert("EC Root CA", key("ec", 300 + i), ca=True) for i in range(2)]
    st, _ = flash_store([der(old[0]), der(old[1]), flash_compact(p.root, "real")])
    named = st.anchors_named(p.root.subject.public_bytes())
    assert [a.label for a in named] == ["EC Root CA", "EC Root CA", "real"]
    assert evaluate(st, p.chain()).anchor == "real"


def test_stored_anchors_are_bundle_anchors_not_enterprise_ones(p):
    corp = Pki("ec", tag="Corp", keys=10)
    ps = pinset(pins=[pin(p.backup_key), pin(p.backup_root)])
    st, _ = flash_store([der(p.root)], [ps], user_anchors=[der(corp.root)], allow=True, managed=True)
    assert evaluate(st, p.chain()).result == "pin-mismatch"
    assert evaluate(st, corp.chain()).result == "enterprise-override"
    assert [(a.label, a.user) for a in st.anchors] == [("EC Root CA", False), ("Corp Root CA", True)]


def test_a_stored_anchor_that_does_not_parse_is_skipped(p):
    st, _ = flash_store([b"\x30" + b"\x00" * 20, der(p.root)])
    assert len(st.skipped) == 1 and st.skipped[0].startswith("anchor 0: certificate")
    assert [a.label for a in st.anchors] == ["EC Root CA"]
    assert evaluate(st, p.chain()).verdict == "accept"


def test_two_bundle_anchors_sharing_a_name_in_memory(p):
    rekeyed = make_cert("EC Root CA", p.backup_key, ca=True)
    st = store([full(rekeyed), compact(p.root, "real")])
    assert [a.label for a in st.anchors_named(p.root.subject.public_bytes())] == ["EC Root CA", "real"]
    assert evaluate(st, p.chain()).anchor == "real"


# --------------------------------------------------------------------------- IP address hosts (issue 12)


def _ip_leaf(p, *entries, **kw):
    """A leaf whose subjectAltName is exactly `entries`: "dns:name", else an IP address."""
    names = [cx509.DNSName(e[4:]) if e.startswith("dns:") else
             cx509.IPAddress(ipaddress.ip_address(e)) for e in entries]
    return p.leaf(sans=(), cn="ip leaf", extra=[(cx509.SubjectAlternativeName(names), False)], **kw)


@pytest.mark.parametrize("text, want", [
    ("0.0.0.0", "00000000"), ("9.9.9.9", "09090909"), ("1.2.3.4", "01020304"),
    ("255.255.255.255", "ffffffff"), ("10.20.199.250", "0a14c7fa"),
    ("256.0.0.1", None), ("1.2.3.256", None), ("1000.0.0.1", None), ("01.2.3.4", None),
    ("1.2.3.00", None), ("1.2.3", None), ("1.2.3.4.5", None), ("1..3.4", None), ("1.2.3.", None),
    ("1.2.3./", None), ("1.2.3.a", None), ("", None), ("a.b.c.d", None),
    ("::", "0" * 32), ("::1", "0" * 31 + "1"), ("1::", "0001" + "0" * 28),
    ("1::8", "0001" + "0" * 24 + "0008"),
    ("1:2:3:4:5:6:7:8", "00010002000300040005000600070008"),
    ("1:2:3:4:5:6:7::", "00010002000300040005000600070000"),
    ("::2:3:4:5:6:7:8", "00000002000300040005000600070008"),
    ("1:2:3:4:5:6:7:8::", None), ("::1:2:3:4:5:6:7:8", None), ("1:2:3:4::5:6:7:8", None),
    ("1:2:3:4:5:6:7", None), ("1:2:3:4:5:6:7:8:9", None), ("1::2::3", None), ("1:::2", None),
    ("1:2:3:4:5:6:7:8::1::2", None),  # eight groups before a second "::"
    (":1:2:3:4:5:6:7", None), ("1:2:3:4:5:6:7:", None),
    ("abcd:ef01:2345:6789:ABCD:EF01:2345:6789", "abcdef0123456789abcdef0123456789"),
    ("f::", "000f" + "0" * 28), ("A::", "000a" + "0" * 28), ("fF::", "00ff" + "0" * 28),
    ("ffff::", "ffff" + "0" * 28), ("0000:0:0:0:0:0:0:1", "0" * 31 + "1"), ("10000::", None),
    ("::g", None), ("::G", None), ("::1%lo", None), ("[::1]", None), ("::-1", None),
    ("::1.2.3.4", "0" * 24 + "01020304"), ("::ffff:255.254.253.252", "0" * 20 + "fffffffefdfc"),
    ("1:2:3:4:5:6:1.2.3.4", "000100020003000400050006" + "01020304"),
    ("1.2.3.4::", None), ("::1.2.3", None), ("::1.2.3.256", None), ("::1.2.3.04", None),
    ("::1.2.3.4:5", None), ("1:2:3:4:5:6:7:1.2.3.4", None),
])
def test_ip_bytes_reads_exactly_the_ip_literals(text, want):
    got = trust.ip_bytes(text)
    assert (got.hex() if got is not None else None) == want


@pytest.mark.parametrize("packed, text", [
    ("01020304", "1.2.3.4"), ("ff000ac8", "255.0.10.200"),
    ("0" * 32, "::"), ("0" * 31 + "1", "::1"), ("0001" + "0" * 28, "1::"),
    ("00010000000200030004000500060007", "1:0:2:3:4:5:6:7"),    # one zero group stays
    ("00010000000000020003000400050006", "1::2:3:4:5:6"),      # two are the shortest run
    ("00010000000000020000000000030004", "1::2:0:0:3:4"),      # the first of equal runs
    ("00010000000000020000000000000003", "1:0:0:2::3"),        # the longest run
    ("00000000000100000000000000020003", "0:0:1::2:3"),        # runs are counted afresh
    ("abcdef0123456789000000000000000f", "abcd:ef01:2345:6789::f"),
    ("20010db8000000000000000000000010", "2001:db8::10"),
])
def test_ip_text_is_the_dotted_quad_or_rfc_5952(packed, text):
    assert trust.ip_text(bytes.fromhex(packed)) == text
    assert trust.ip_bytes(text) == bytes.fromhex(packed)


@pytest.mark.parametrize("host, shown", [
    ("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("2001:DB8::10", "2001:db8::10"),
    ("::ffff:1.2.3.4", "::ffff:102:304"),
])
def test_an_ip_host_matches_its_ip_san_byte_for_byte(p, host, shown):
    leaf = _ip_leaf(p, "dns:api.example.com", "10.0.0.1", host, "fe80::1")
    d = evaluate(root_store(p), p.chain(leaf), host=host)
    assert (d.verdict, d.result, d.pinset, d.report) == ("accept", "ok", None, None)
    assert d.reason == f"chain to anchor 'EC Root CA' is valid; {shown} is not pinned"


@pytest.mark.parametrize("entries, shown", [
    ((), "none"),
    (("dns:127.0.0.1", "dns:localhost"), "none"),
    (("10.0.0.1", "::ffff:127.0.0.1"), "10.0.0.1, ::ffff:7f00:1"),
    (tuple(f"10.0.0.{i}" for i in range(2, 6)), "10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5"),
    (tuple(f"10.0.0.{i}" for i in range(2, 8)),
     "10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5 and 2 more"),
])
def test_an_ip_host_mismatch_names_the_certificate_ip_addresses(p, entries, shown):
    leaf = _ip_leaf(p, *entries) if entries else p.leaf(sans=(), cn="127.0.0.1")
    d = evaluate(root_store(p), p.chain(leaf), host="127.0.0.1")
    assert (d.verdict, d.result, d.path) == ("reject", "hostname-mismatch", [])
    assert d.reason == f"host 127.0.0.1 does not match the certificate's IP addresses ({shown})"


def test_a_dns_host_never_reads_the_ip_sans(p):
    chain = p.chain(_ip_leaf(p, "127.0.0.1"))
    d = evaluate(root_store(p), chain, host="localhost")
    assert d.reason == "host localhost does not match the certificate's DNS names (none)"
    assert evaluate(root_store(p), chain, host="127.0.0.1").result == "ok"


def test_an_ip_host_is_never_pinned_and_still_validated(p):
    wrong = [pin(p.backup_key), pin(p.backup_root)]
    st = root_store(p, pinset("127.0.0.1", wrong), pinset("10.0.0.1", wrong, subdomains=True))
    leaf = _ip_leaf(p, "127.0.0.1")
    d = evaluate(st, p.chain(leaf), host="127.0.0.1")
    assert (d.verdict, d.result, d.pinset, d.report) == ("accept", "ok", None, None)
    d = evaluate(st, p.chain(leaf), host="127.0.0.1", now=NOW + 91 * DAY)
    assert (d.verdict, d.result) == ("reject", "chain-invalid")
    assert d.reason == "leaf 'ip leaf' expired at 2026-04-01T00:00:00Z"


def test_pinset_for_an_ip_or_a_numeric_name_is_none(p):
    pins = [pin(p.root)]
    st = trust.TrustStore(bundle([], [pinset(d, pins, subdomains=True)
                                      for d in ("127.0.0.1", "::1", "a.1", "x1", "example.com")]))
    for host in ("127.0.0.1", "::1", "a.1", "b.a.1", "127.0.0.01"):
        assert st.pinset_for(host) is None, host
    assert st.pinset_for("x1").domain == "x1"
    assert st.pinset_for("b.example.com").domain == "example.com"


@pytest.mark.parametrize("name, numeric", [
    ("10.0.0.01", True), ("a.1", True), ("1", True), ("a.0x", True), ("a.0x1f", True),
    ("0x7f", True), ("a.0123456789", True),
    ("a.0xg1", False), ("a.x1", False), ("x1", False), ("a.1x", False), ("example.com", False),
    ("a.0y1", False), ("1.a", False),
])
def test_a_name_whose_last_label_is_a_number_is_a_malformed_ip(p, name, numeric):
    assert trust._numeric_tail(name) is numeric
    leaf = p.leaf(sans=(name, "127.0.0.1"))
    d = evaluate(root_store(p), p.chain(leaf), host=name)
    if numeric:
        assert (d.verdict, d.result, d.path) == ("reject", "hostname-mismatch", [])
        assert d.reason == (f"host {name!r} is not a valid IP address "
                            "(and a DNS name does not end in a number)")
    else:
        assert (d.verdict, d.result) == ("accept", "ok")
