"""Acceptance of signed roots, bundles and timestamps, named by the attack or rule.

Documents are real: built and signed by tests/support/fleetkit.py with real P-256
keys and certificates, then verified by the device core (policy.py) as a
board would. Every refusal checks the error class and that the message
names the value at fault. The rules are those of docs/format.md.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import fleetkit as fk
from trustfleet_device import cbor, cose, limits, policy
from trustfleet_device.errors import (
    DecodeError,
    ExpiredError,
    LimitError,
    OlderError,
    PolicyError,
    RollbackError,
    SignatureError,
)
from trustfleet_server import documents, keys
from trustfleet_server.describe import describe
from trustfleet_server.documents import read_document


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    """Root 2-of-2, bundle 2-of-3, timestamp 1-of-1. Do not rotate it (see fresh_repo)."""
    return fk.Repo()


@pytest.fixture(scope="module")
def root(repo):
    return policy.load_trusted_root(repo.root_raw)


@pytest.fixture
def fresh_repo() -> fk.Repo:
    return fk.Repo()


def refused(error, fn, *args, **kwargs) -> str:
    """Call fn, require it to raise exactly `error` (not merely a subclass), return the message."""
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return str(info.value)


# --------------------------------------------------------------------------- a valid bundle


def test_accepts_bundle_signed_by_threshold_of_bundle_keys(repo, root):
    b = policy.verify_bundle(root, repo.bundle(version=3), installed_version=2, now=fk.NOW)
    acme = fk.chain("acme")
    assert (b.fleet, b.version, b.issued_at, b.expires_at) == (repo.fleet, 3, fk.NOW, fk.NOW + 90 * fk.DAY)
    compact, full = b.anchors
    assert compact.der is None and compact.spki == fk.spki(acme.ca) and compact.label == "acme Root CA"
    assert full.der == fk.der(fk.chain("backup").ca)
    assert [(p.domain, p.pins, p.allow_single_pin) for p in b.pinsets] == [(acme.domain, acme.pins, False)]


# --------------------------------------------------------------------------- thresholds


def test_rejects_bundle_signed_below_threshold(repo, root):
    raw = repo.bundle(signers=repo.keys["bundle"][:1])
    msg = refused(SignatureError, policy.verify_bundle, root, raw)
    assert "has 1 valid bundle signature(s), needs 2" in msg


def test_rejects_bundle_after_one_signature_is_dropped(repo, root):
    msg = refused(SignatureError, policy.verify_bundle, root, fk.drop_signature(repo.bundle()))
    assert "needs 2" in msg


def test_signature_from_same_key_counts_once(repo, root):
    k = repo.keys["bundle"][0]
    fresh_twice = repo.bundle(signers=[k, k])  # two different valid signatures by one key
    replayed = fk.duplicate_signature(repo.bundle(signers=[k]))  # the same signature bytes twice
    for raw in (fresh_twice, replayed):
        msg = refused(SignatureError, policy.verify_bundle, root, raw)
        assert "has 1 valid bundle signature(s), needs 2" in msg
        assert "same key again, counted once" in msg


def test_signature_from_unknown_key_is_ignored_when_threshold_met(repo, root):
    raw = fk.add_signature(repo.bundle(), keys.generate_key())
    assert policy.verify_bundle(root, raw).version == 1
    got, notes = policy.count_signatures(cose.parse(raw), root, "bundle")
    assert got == 2 and len(notes) == 1 and "not a bundle key" in notes[0]


def test_invalid_signature_does_not_veto_a_met_threshold(repo, root):
    raw = repo.bundle(signers=repo.keys["bundle"])  # all three
    entries = fk.open_sign(raw)[3]
    entries[1][2] = bytes(64)  # one signature zeroed
    assert policy.verify_bundle(root, fk.with_entries(raw, entries)).version == 1


def test_rejects_bundle_signed_by_root_key_not_bundle_key(repo, root):
    # Role separation: root keys are trusted, but not to sign bundles.
    raw = repo.bundle(signers=repo.keys["root"])
    msg = refused(SignatureError, policy.verify_bundle, root, raw)
    assert "has 0 valid bundle signature(s)" in msg and "not a bundle key" in msg


def test_rejects_bundle_topped_up_with_timestamp_key(repo, root):
    raw = fk.add_signature(repo.bundle(signers=repo.keys["bundle"][:1]), repo.keys["timestamp"][0])
    assert "has 1 valid bundle signature(s), needs 2" in refused(SignatureError, policy.verify_bundle, root, raw)


def test_signature_under_kid_of_another_bundle_key_does_not_count(repo, root):
    b0, b1, _ = repo.keys["bundle"]
    raw = fk.add_signature(repo.bundle(signers=[b0]), b1, kid=keys.kid_of(b0))
    msg = refused(SignatureError, policy.verify_bundle, root, raw)
    assert "has 1 valid" in msg


def test_signature_with_kid_matching_no_key_is_skipped(repo, root):
    b0, b1, _ = repo.keys["bundle"]
    wrong_kid = fk.add_signature(repo.bundle(signers=[b0]), b1, kid=bytes(32))
    assert "00000000: not a bundle key" in refused(SignatureError, policy.verify_bundle, root, wrong_kid)
    no_kid = fk.add_signature(repo.bundle(signers=[b0]), b1, kid=None)
    assert "(no kid): not a bundle key" in refused(SignatureError, policy.verify_bundle, root, no_kid)


@pytest.fixture(scope="module")
def signer_pool(repo):
    """For each of 5 keys (3 bundle, 1 root, 1 stranger): two valid signature entries and a forged one."""
    payload = fk.encode(repo.bundle_map(version=9))
    pool = repo.keys["bundle"] + [repo.keys["root"][0], keys.generate_key()]
    entries = []
    for key in pool:
        a, b = (fk.signature_entry(payload, key) for _ in range(2))
        forged = [a[0], a[1], a[2][:32] + bytes(31) + b"\x01"]
        entries.append((a, b, forged))
    return payload, entries


@settings(max_examples=150, deadline=None)
@given(picks=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2)), min_size=1, max_size=10))
def test_accepted_iff_distinct_valid_bundle_keys_meet_threshold(root, signer_pool, picks):
    payload, entries = signer_pool
    raw = fk.cose_sign(payload, [entries[k][v] for k, v in picks])
    distinct = len({k for k, v in picks if k < 3 and v < 2})  # keys 0-2 are bundle keys, v 2 is forged
    if distinct >= 2:
        assert policy.verify_bundle(root, raw).version == 9
    else:
        msg = refused(SignatureError, policy.verify_bundle, root, raw)
        assert f"has {distinct} valid bundle signature(s), needs 2" in msg


# --------------------------------------------------------------------------- tampering


def test_rejects_tampered_payload(repo, root):
    raw = repo.bundle()
    for offset in (0, 40, -1):
        msg = refused(SignatureError, policy.verify_bundle, root, fk.flip_payload_byte(raw, offset))
        assert "has 0 valid" in msg and "signature does not verify" in msg


def test_rejects_payload_swapped_under_valid_signatures(repo, root):
    raw = repo.bundle(version=2)
    forged = fk.replace_payload(raw, fk.encode(repo.bundle_map(version=99)))
    assert "has 0 valid" in refused(SignatureError, policy.verify_bundle, root, forged)


def test_rejects_untagged_or_unsigned_document(repo, root):
    payload = fk.encode(repo.bundle_map())
    assert "not signed" in refused(DecodeError, policy.verify_bundle, root, payload)
    untagged = cbor.encode(list(fk.open_sign(repo.bundle())))
    assert "not a tagged COSE" in refused(DecodeError, policy.verify_bundle, root, untagged)


# --------------------------------------------------------------------------- headers (RFC 9052)


def test_rejects_unknown_critical_header(repo, root):
    payload = fk.encode(repo.bundle_map())
    b0, b1, _ = repo.keys["bundle"]
    crit = {cose.HDR_ALG: cose.ALG_ES256, cose.HDR_CRIT: [99], 99: 1}
    # In one signer's protected header: that signer cannot count.
    raw = fk.cose_sign(payload, [fk.signature_entry(payload, b0),
                                 fk.signature_entry(payload, b1, protected=crit)])
    msg = refused(SignatureError, policy.verify_bundle, root, raw)
    assert "unknown critical header 99" in msg and "has 1 valid" in msg
    # In the body's protected header: the whole message is refused.
    body = cbor.encode({cose.HDR_CRIT: [99], 99: 1})
    raw = fk.sign(payload, [b0, b1], body_protected=body)
    assert "unknown critical header 99" in refused(DecodeError, policy.verify_bundle, root, raw)


def test_rejects_alg_in_unprotected_header_only(repo, root):
    payload = fk.encode(repo.bundle_map())
    b0, b1, _ = repo.keys["bundle"]
    sneaky = fk.signature_entry(payload, b1, protected={}, unprotected={cose.HDR_ALG: cose.ALG_ES256})
    raw = fk.cose_sign(payload, [fk.signature_entry(payload, b0), sneaky])
    msg = refused(SignatureError, policy.verify_bundle, root, raw)
    assert "no protected alg header" in msg and "has 1 valid" in msg


@pytest.mark.parametrize("unprotected", [{cose.HDR_ALG: cose.ALG_ES256}, {cose.HDR_CRIT: [1]}])
def test_one_malformed_signer_header_does_not_veto_a_met_threshold(repo, root, unprotected):
    raw = fk.add_signature(repo.bundle(), keys.generate_key(), unprotected=unprotected)
    assert policy.verify_bundle(root, raw).version == 1


def test_rejects_unsupported_algorithm(repo, root):
    payload = fk.encode(repo.bundle_map())
    b0, b1, _ = repo.keys["bundle"]
    es384 = fk.signature_entry(payload, b1, protected={cose.HDR_ALG: -35})
    raw = fk.cose_sign(payload, [fk.signature_entry(payload, b0), es384])
    assert "unsupported algorithm -35" in refused(SignatureError, policy.verify_bundle, root, raw)


# --------------------------------------------------------------------------- versions and time


def test_rejects_rollback_to_older_or_equal_version(repo, root):
    raw = repo.bundle(version=5)
    for installed, error in ((5, RollbackError), (6, OlderError)):
        msg = refused(error, policy.verify_bundle, root, raw, installed_version=installed)
        assert f"bundle version 5 is not newer than installed version {installed}" in msg
    assert policy.verify_bundle(root, raw, installed_version=4).version == 5


def test_rejects_expired_bundle(repo, root):
    raw = repo.bundle(version=2)
    expires = fk.NOW + 90 * fk.DAY
    assert policy.verify_bundle(root, raw, now=expires - 1).version == 2
    msg = refused(ExpiredError, policy.verify_bundle, root, raw, now=expires)
    assert f"bundle v2 expired at {expires}, trusted time is {expires}" in msg


def test_rejects_bundle_expiring_before_it_was_issued(repo, root):
    raw = repo.bundle(check=False, expires_at=fk.NOW)
    assert f"expires_at: {fk.NOW} is not after issued_at {fk.NOW}" in refused(
        DecodeError, policy.verify_bundle, root, raw)


def test_timestamp_is_accepted_and_names_latest_bundle(repo, root):
    b = repo.bundle(version=4)
    ts = policy.verify_timestamp(root, repo.timestamp(b, time=fk.NOW + 60), last_time=fk.NOW + 60)
    assert (ts.time, ts.bundle_version, ts.bundle_sha256) == (fk.NOW + 60, 4, fk.documents.sha256(b))


def test_timestamp_older_than_last_is_rejected(repo, root):
    raw = repo.timestamp(time=fk.NOW)
    msg = refused(RollbackError, policy.verify_timestamp, root, raw, last_time=fk.NOW + 1)
    assert f"timestamp time {fk.NOW} is older than the last accepted {fk.NOW + 1}" in msg


def test_rejects_timestamp_signed_by_bundle_key(repo, root):
    raw = repo.timestamp(key=repo.keys["bundle"][0])
    assert "has 0 valid timestamp signature(s), needs 1" in refused(
        SignatureError, policy.verify_timestamp, root, raw)


# --------------------------------------------------------------------------- mix and match


def test_rejects_timestamp_signed_as_bundle(repo, root):
    # A timestamp payload carrying a threshold of bundle signatures is still not a bundle.
    raw = repo.sign(fk.encode(repo.timestamp_map()), repo.signers("bundle"))
    assert "document type is 'timestamp', expected 'bundle'" in refused(
        DecodeError, policy.verify_bundle, root, raw)
    # And the real timestamp, presented as a bundle, has no bundle signatures at all.
    assert "has 0 valid bundle" in refused(SignatureError, policy.verify_bundle, root, repo.timestamp())


def test_rejects_bundle_signed_as_timestamp(repo, root):
    raw = fk.sign1(fk.encode(repo.bundle_map()), repo.keys["timestamp"][0])
    assert "document type is 'bundle', expected 'timestamp'" in refused(
        DecodeError, policy.verify_timestamp, root, raw)


def test_rejects_root_presented_as_bundle():
    r = fk.Repo(sizes={"root": (1, 1), "bundle": (1, 1), "timestamp": (1, 1)})
    r.keys["bundle"] = r.keys["root"]  # even when one key holds both roles
    root = policy.load_trusted_root(r.sign(fk.encode(r.root_map()), r.signers("root")))
    assert "document type is 'root', expected 'bundle'" in refused(
        DecodeError, policy.verify_bundle, root, r.sign(fk.encode(r.root_map()), r.signers("root")))


def test_rejects_bundle_for_another_fleet(repo, root):
    raw = repo.bundle(fleet="other-fleet")
    msg = refused(PolicyError, policy.verify_bundle, root, raw)
    assert "fleet is 'other-fleet', this device belongs to 'acme-sensors'" in msg


def test_rejects_timestamp_for_another_fleet(repo, root):
    raw = repo.timestamp(fleet="other-fleet")
    assert "'other-fleet'" in refused(PolicyError, policy.verify_timestamp, root, raw)


# --------------------------------------------------------------------------- schema


def test_rejects_unsupported_spec_version(repo, root):
    raw = repo.bundle(check=False, spec=2)
    assert "format version 2 is not supported (this agent reads 1)" in refused(
        DecodeError, policy.verify_bundle, root, raw)


@pytest.mark.parametrize("where, change", [
    ("bundle: unknown field 'priority'", lambda m: m.update(priority=1)),
    ("bundle.policy: unknown field 'allow_http'", lambda m: m["policy"].update(allow_http=True)),
    ("bundle.pinsets[0]: unknown field 'include_subdomain'",
     lambda m: m["pinsets"][0].update(include_subdomain=True)),
])
def test_refuses_unknown_field_by_name(repo, root, where, change):
    value = repo.bundle_map()
    change(value)
    raw = repo.sign(fk.encode(value, check=False), repo.signers("bundle"))
    assert where in refused(DecodeError, policy.verify_bundle, root, raw)


def test_refuses_unknown_root_field_by_name(repo):
    raw = repo.sign(fk.encode(repo.root_map(mirrors=["x"]), check=False), repo.signers("root"))
    assert "root: unknown field 'mirrors'" in refused(DecodeError, policy.load_trusted_root, raw)


def test_refuses_missing_field_by_name(repo, root):
    value = repo.bundle_map()
    del value["distrust"]
    raw = repo.sign(fk.encode(value, check=False), repo.signers("bundle"))
    assert "bundle: missing field 'distrust'" in refused(DecodeError, policy.verify_bundle, root, raw)


def test_refuses_pinset_with_one_pin_without_override(repo, root):
    acme = fk.chain("acme")
    for extra in ({}, {"allow_single_pin": False}):
        raw = repo.bundle(check=False, pinsets=[fk.pinset(acme.domain, acme.pins[:1], **extra)])
        msg = refused(DecodeError, policy.verify_bundle, root, raw)
        assert "bundle.pinsets[0].pins: 1 pin(s); at least 2 are required" in msg


def test_refuses_pinset_whose_backup_pin_repeats_the_primary(repo, root):
    p = fk.chain("acme").pins[0]
    raw = repo.bundle(check=False, pinsets=[fk.pinset("api.acme.example", [p, p])])
    refused(DecodeError, policy.verify_bundle, root, raw)


def test_refuses_pinset_without_pins_even_with_override(repo, root):
    raw = repo.bundle(check=False, pinsets=[fk.pinset("api.acme.example", [], allow_single_pin=True)])
    assert "0 pin(s)" in refused(DecodeError, policy.verify_bundle, root, raw)


def test_accepts_single_pin_override_and_it_is_visible(repo, root):
    acme = fk.chain("acme")
    raw = repo.bundle(pinsets=[fk.pinset(acme.domain, acme.pins[:1], allow_single_pin=True)])
    b = policy.verify_bundle(root, raw)
    assert b.pinsets[0].allow_single_pin is True and b.pinsets[0].pins == acme.pins[:1]
    # The override is part of the signed payload, and inspect shows it.
    assert cbor.decode(fk.payload_of(raw))["pinsets"][0]["allow_single_pin"] is True
    assert describe(read_document(raw), raw)["pinsets"][0]["allow_single_pin"] is True


def test_refuses_wildcard_or_upper_case_domain(repo, root):
    for domain in ("*.acme.example", "API.acme.example", "acme..example"):
        raw = repo.bundle(check=False, pinsets=[fk.pinset(domain, fk.chain("acme").pins)])
        assert repr(domain) in refused(DecodeError, policy.verify_bundle, root, raw)


def test_caps_on_anchor_count_and_string_length(repo, root):
    small = limits.SMALL
    one = fk.compact_anchor(fk.chain("acme").ca)
    raw = repo.bundle(anchors=[one] * (small.max_anchors + 1))
    assert policy.verify_bundle(root, raw).version == 1  # fine under the default caps
    msg = refused(LimitError, policy.verify_bundle, root, raw, small)
    assert f"bundle.anchors: {small.max_anchors + 1} entries, limit is {small.max_anchors}" in msg

    big_der = b"\x30" + bytes(small.max_string)  # one byte over the string cap
    raw = repo.bundle(anchors=[big_der])
    msg = refused(LimitError, policy.verify_bundle, root, raw, small)
    assert f"string of {small.max_string + 1} bytes, limit is {small.max_string}" in msg

    raw = repo.bundle(check=False, pinsets=[fk.pinset("a" * 254, fk.chain("acme").pins)])
    assert "bundle.pinsets[0].domain: 254 characters, limit is 253" in refused(
        LimitError, policy.verify_bundle, root, raw)


def test_caps_on_document_size(repo, root):
    raw = repo.bundle(anchors=[fk.full_anchor(fk.chain("acme").ca)] * 500)
    assert len(raw) > limits.SMALL.max_document
    msg = refused(LimitError, policy.verify_bundle, root, raw, limits.SMALL)
    assert f"limit is {limits.SMALL.max_document}" in msg


def test_caps_on_signature_count(repo, root):
    raw = repo.bundle(signers=repo.keys["bundle"] * 3)  # 9 signatures, SMALL allows 8
    msg = refused(LimitError, policy.verify_bundle, root, raw, limits.SMALL)
    assert "9 signatures, limit is 8" in msg


def test_signature_count_cap_is_a_limit_error(repo, root):
    raw = repo.bundle(signers=repo.keys["bundle"] * 3)
    refused(LimitError, policy.verify_bundle, root, raw, limits.SMALL)


# --------------------------------------------------------------------------- roots


def test_rejects_root_below_its_own_threshold(repo):
    raw = fk.drop_signature(repo.root_raw)
    assert "root v1 has 1 valid root signature(s), needs 2" in refused(
        SignatureError, policy.load_trusted_root, raw)


def test_root_rotation_of_bundle_keys_takes_effect(fresh_repo):
    r = fresh_repo
    trusted = policy.load_trusted_root(r.root_raw)
    retired = r.keys["bundle"][0]
    new = policy.verify_root_update(trusted, r.rotate("bundle", new_keys=1, remove=1))
    assert new.version == 2
    # The retired key no longer counts; the new set does.
    old_pair = r.bundle(signers=[retired, r.keys["bundle"][0]])
    assert policy.verify_bundle(trusted, old_pair).version == 1
    assert "has 1 valid" in refused(SignatureError, policy.verify_bundle, new, old_pair)
    assert policy.verify_bundle(new, r.bundle()).version == 1


def test_root_rotation_requires_old_and_new_thresholds(fresh_repo):
    r = fresh_repo
    trusted = policy.load_trusted_root(r.root_raw)
    old = list(r.keys["root"])
    new = r.keys["root"] = [keys.generate_key(), keys.generate_key()]  # replace both root keys
    payload = fk.encode(r.root_map(version=2))
    only_new = r.sign(payload, new)
    msg = refused(SignatureError, policy.verify_root_update, trusted, only_new)
    assert "new root (checked with root v1 keys) has 0 valid root signature(s), needs 2" in msg
    only_old = r.sign(payload, old)
    msg = refused(SignatureError, policy.verify_root_update, trusted, only_old)
    assert "new root v2 (checked with its own keys) has 0 valid root signature(s), needs 2" in msg
    half_new = r.sign(payload, old + new[:1])
    assert "has 1 valid" in refused(SignatureError, policy.verify_root_update, trusted, half_new)
    assert policy.verify_root_update(trusted, r.sign(payload, old + new)).version == 2


def test_root_rotation_requires_exactly_next_version(fresh_repo):
    r = fresh_repo
    trusted = policy.load_trusted_root(r.root_raw)
    skip = r.sign(fk.encode(r.root_map(version=3)), r.signers("root"))
    assert "root version 3 skips versions: expected 2" in refused(
        PolicyError, policy.verify_root_update, trusted, skip)
    replay = r.root_raw
    assert "root version 1 is not newer than trusted version 1" in refused(
        RollbackError, policy.verify_root_update, trusted, replay)


def test_root_rotation_cannot_move_to_another_fleet(fresh_repo):
    r = fresh_repo
    trusted = policy.load_trusted_root(r.root_raw)
    raw = r.sign(fk.encode(r.root_map(version=2, fleet="other-fleet")), r.signers("root"))
    assert "'other-fleet'" in refused(PolicyError, policy.verify_root_update, trusted, raw)


def test_root_chain_walk_follows_each_rotation(fresh_repo):
    r = fresh_repo
    trusted = policy.load_trusted_root(r.root_raw)
    chain = [r.rotate("root", new_keys=1, remove=1), r.rotate("bundle", new_keys=1, remove=1),
             r.rotate("root", new_keys=2, remove=2, threshold=1)]
    last = policy.walk_root_chain(trusted, chain)
    assert last.version == 4 and last.roles["root"].threshold == 1
    assert policy.verify_bundle(last, r.bundle()).version == 1
    # With a step missing, v3 is not signed by v1's root keys: the walk stops there.
    assert "new root (checked with root v1 keys) has 1 valid" in refused(
        SignatureError, policy.walk_root_chain, trusted, chain[1:])


def test_root_chain_walk_is_capped(fresh_repo):
    r = fresh_repo
    trusted = policy.load_trusted_root(r.root_raw)
    chain = [r.rotate("bundle", new_keys=1, remove=1) for _ in range(3)]
    capped = limits.DEFAULT.replace(max_root_steps=2)
    assert "3 root updates at once, limit is 2" in refused(
        PolicyError, policy.walk_root_chain, trusted, chain, capped)
    assert policy.walk_root_chain(trusted, chain[:2], capped).version == 3


def test_operator_signature_added_to_empty_protected_map_body_verifies(repo, root):
    """The signer builds the Sig_structure with the device's own builder (h'A0' signs as h'')."""
    payload = fk.payload_of(repo.bundle(version=9))
    first = fk.signature_entry(payload, repo.keys["bundle"][0], body_protected=b"\xa0")
    raw = fk.cose_sign(payload, [first], body_protected=b"\xa0")
    signed = documents.add_signature(raw, repo.keys["bundle"][1])
    assert policy.verify_bundle(root, signed, now=fk.NOW).version == 9


def test_an_accepted_root_prepares_its_bundle_keys_on_the_pure_path(fresh_repo, monkeypatch):
    """On a board (no OpenSSL) the root's bundle keys get their P-256 tables when the root is
    accepted, so the first bundle install verifies warm; a root update prepares its own."""
    from trustfleet_device import p256

    monkeypatch.setattr(p256, "BACKEND", "pure")
    monkeypatch.setattr(p256, "_Q_CACHE_MAX", 8)
    monkeypatch.setattr(p256, "_q_cache", {})
    r = fresh_repo
    trusted = policy.load_trusted_root(r.root_raw)
    bundle_keys = {trusted.keys[k] for k in trusted.roles["bundle"].kids}
    assert set(p256._q_cache) == bundle_keys and len(bundle_keys) == 3
    new = policy.verify_root_update(trusted, r.rotate("bundle", new_keys=1, remove=1))
    assert set(p256._q_cache) == {new.keys[k] for k in new.roles["bundle"].kids} != bundle_keys
    # With OpenSSL there is nothing to prepare.
    monkeypatch.setattr(p256, "BACKEND", "cryptography")
    monkeypatch.setattr(p256, "_q_cache", {})
    policy.load_trusted_root(r.root_raw)
    assert p256._q_cache == {}



# Values for each pin-set field: the first is good, the rest are what each check refuses.
PIN_A, PIN_B = b"\x01" * 32, b"\x02" * 32
PINSET_VALUES = {
    "domain": ["api.acme.example", "a", "", ".acme.example", "acme.example.", "a..b", "API.acme",
               "a" * 253, "a" * 254, b"acme.example", None],
    "subdomains": [False, True, 0, None],
    "pins": [[PIN_A, PIN_B], [PIN_A], [], [PIN_A, PIN_A], [PIN_A, PIN_B[:31]], [PIN_A, "x" * 32],
             [PIN_B[:31], PIN_A], [PIN_A, PIN_B, b"\x03" * 32], [PIN_A, PIN_B, PIN_A],
             [bytes([i]) * 32 for i in range(9)], [bytes([i]) * 32 for i in range(17)],
             (PIN_A, PIN_B), None],
    "expires": [1_900_000_000, 0, -1, True, "1", None],
    "mode": ["enforce", "report", "audit", b"enforce", None],
    "report_to": [[], ["https://r.example/x"], ["u"] * 4, ["u"] * 5, ["x" * 512], ["x" * 513], [1],
                  "u", None],
    "allow_single_pin": [None, True, False, 1],
}


def test_pinset_fast_path_accepts_and_refuses_exactly_like_the_field_by_field_parse():
    """parse_pinset checks the usual pin-set in one pass and leaves the rest to _pinset_fields:
    for every change of one or two fields, with a field dropped or an unknown one added, both
    give the same PinSet or the same error with the same message."""
    from trustfleet_device import documents as device_docs

    changes = [(k, v) for k, vs in PINSET_VALUES.items() for v in vs]
    good = {k: vs[0] for k, vs in PINSET_VALUES.items() if vs[0] is not None}

    def outcome(parse, value, caps):
        try:
            p = parse(dict(value), caps, 3)
        except DecodeError as exc:
            return type(exc).__name__, str(exc)
        return p.domain, p.subdomains, p.pins, p.expires, p.mode, p.report_to, p.allow_single_pin

    seen = set()
    for i, (k1, v1) in enumerate(changes):
        for k2, v2 in changes[i:]:
            for extra in (None, "extra", *good):
                value = dict(good)
                value[k1] = v1
                value[k2] = v2
                if extra == "extra":
                    value["extra"] = 1
                elif extra is not None:
                    del value[extra]
                for caps in (limits.DEFAULT, limits.SMALL):
                    got = outcome(device_docs.parse_pinset, value, caps)
                    assert got == outcome(device_docs._pinset_fields, value, caps), value
                    seen.add(len(got))
    assert seen == {2, 7}  # both accepted and refused pin-sets were met
