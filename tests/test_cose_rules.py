"""Every rule of device/trustfleet_device/cose.py, one test (or parametrized case) each.

The envelope rules of docs/format.md (rules 1 and 3 to 8), on the in-memory parser
(`cose.parse` on bytes) and the streamed one (`cose.parse` on a source) alike wherever they share
the rule. Pinned here:

- envelope: tag 98 or 18 is required (a bare payload map, an untagged array and
  another tag are refused, each with its own message); the tag must wrap an
  array of exactly 4 items; `untagged=` opts into untagged structures;
- body headers: protected bucket a byte string holding a map (or empty);
  unprotected bucket a map; no label in both buckets; `crit` only protected,
  a non-empty array, naming only understood labels that are present; an
  accepted `crit` lets the document through;
- payload: attached byte string only (nil, a detached payload, is refused);
- signatures: a non-empty array, at most `max_signatures` (exactly the cap
  passes, one more is a LimitError);
- per signer: every problem is recorded on `Signer.problem` and never vetoes
  the others. Where a role key signs, the problem is what decides the
  threshold: refused with the malformed signer, accepted with it fixed;
- streamed parser: size cap at and just over the boundary, a short read while
  parsing and while hashing, a truncated payload, trailing bytes, depth, and
  where the payload lies (Message fields);
- Sig_structure: built from the bytes as received, h'A0' entering as h'',
  the payload streamed through SHA-256 in chunks with the same digest.

Wire numbers are written out (tag 98 and 18, labels 1 alg, 2 crit, 3 content
type, 4 kid, alg -7) rather than taken from cose.py, so that a changed
constant there is a test failure, not a change on both sides.
"""

from __future__ import annotations

import hashlib

import pytest

from support import fleetkit as fk
from trustfleet_device import cbor, cose, policy
from trustfleet_device.cbor import Tag
from trustfleet_device.errors import BundleError, DecodeError, LimitError, SignatureError
from trustfleet_device.limits import DEFAULT, Limits
from trustfleet_device.source import BytesSource
from trustfleet_server import keys

SIGN, SIGN1 = 98, 18  # RFC 9052 section 2: COSE_Sign and COSE_Sign1 tags
ALG, CRIT, CTY, KID = 1, 2, 3, 4  # RFC 9052 section 3.1 header labels
ES256 = -7
PROTECTED = {ALG: ES256}


# --------------------------------------------------------------------------- fixtures and builders


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    """Root 2-of-2, bundle 2-of-3, timestamp 1-of-1 (fleetkit's defaults)."""
    return fk.Repo()


@pytest.fixture(scope="module")
def root(repo):
    return policy.load_trusted_root(repo.root_raw)


@pytest.fixture(scope="module")
def payload(repo) -> bytes:
    return fk.encode(repo.bundle_map())


def parse_in_memory(raw, limits=DEFAULT, **kw):
    return cose.parse(raw, limits, **kw)


def parse_streamed(raw, limits=DEFAULT, **kw):
    return cose.parse(BytesSource(raw), limits, **kw)


@pytest.fixture(params=[parse_in_memory, parse_streamed], ids=["memory", "streamed"])
def parse(request):
    """Each shared rule runs on both parsers."""
    return request.param


def verify_in_memory(root, raw):
    return policy.verify_bundle(root, raw)


def verify_streamed(root, raw):
    return policy.verify_bundle(root, BytesSource(raw))


@pytest.fixture(params=[verify_in_memory, verify_streamed], ids=["memory", "streamed"])
def verify(request):
    """policy.verify_bundle on bytes or on a source: the parser, hashing and the threshold."""
    return request.param


def tagged(tag, value) -> bytes:
    return cbor.encode(Tag(tag, value))


def entry(payload, key, protected=PROTECTED, unprotected=None, body_protected=b"") -> list:
    """A COSE_Signature by `key`, validly signed; the kid goes unprotected unless `unprotected` is given."""
    unprotected = {KID: keys.kid_of(key)} if unprotected is None else unprotected
    return fk.signature_entry(payload, key, body_protected=body_protected, protected=protected,
                              unprotected=unprotected, kid=None)


def sign(payload, entries, body_protected=b"", body_unprotected=None) -> bytes:
    return tagged(SIGN, [body_protected, {} if body_unprotected is None else body_unprotected,
                         payload, list(entries)])


def sign1(payload, key, protected=None, unprotected=None, signature=None) -> bytes:
    """A COSE_Sign1; the Sig_structure is built here, not by cose.py, and signed by keys.sign_digest."""
    protected_raw = cbor.encode({ALG: ES256, KID: keys.kid_of(key)}) if protected is None else protected
    tbs = cbor.encode(["Signature1", protected_raw, b"", payload])
    if signature is None:
        signature = keys.sign_digest(key, hashlib.sha256(tbs).digest())
    return tagged(SIGN1, [protected_raw, {} if unprotected is None else unprotected, payload, signature])


def refusal(error, fn, *args, **kwargs) -> str:
    """Require exactly `error` (not a subclass, not a TypeError from a broken check); return the message."""
    with pytest.raises(BundleError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return str(info.value)


# --------------------------------------------------------------------------- envelope: tag and shape


def test_tag_98_and_tag_18_are_the_two_envelopes(parse, repo, payload):
    b0, b1, _ = repo.keys["bundle"]
    msg = parse(sign(payload, [entry(payload, b0), entry(payload, b1)]))
    assert msg.tag == 98 and len(msg.signers) == 2
    assert [s.kid for s in msg.signers] == [keys.kid_of(b0), keys.kid_of(b1)]
    assert all(s.problem is None and s.alg == ES256 for s in msg.signers)
    t = repo.keys["timestamp"][0]
    msg = parse(sign1(payload, t))
    assert msg.tag == 18 and len(msg.signers) == 1
    assert msg.signers[0].kid == keys.kid_of(t) and msg.signers[0].problem is None


def test_bare_payload_map_is_refused_as_not_signed(parse, payload):
    assert refusal(DecodeError, parse, payload).startswith("not signed: a bare payload")


def test_untagged_array_is_refused(parse, repo, payload):
    raw = cbor.encode([b"", {}, payload, [entry(payload, repo.keys["bundle"][0])]])
    assert refusal(DecodeError, parse, raw) == cose._UNTAGGED
    assert "not a tagged COSE_Sign (98) or COSE_Sign1 (18)" in cose._UNTAGGED


def test_untagged_integer_is_refused(parse):
    assert refusal(DecodeError, parse, cbor.encode(98)).startswith("not a tagged COSE_Sign")


def test_another_tag_is_refused(repo, payload):
    value = [b"", {}, payload, [entry(payload, repo.keys["bundle"][0])]]
    for tag in (17, 19, 97, 99):
        assert f"unsupported tag {tag}" in refusal(DecodeError, parse_in_memory, tagged(tag, value))
        assert refusal(DecodeError, parse_streamed, tagged(tag, value)).startswith("not a tagged COSE_Sign")


def test_untagged_structures_are_accepted_only_when_asked_for(repo, payload):
    b0 = repo.keys["bundle"][0]
    raw = cbor.encode([b"", {}, payload, [entry(payload, b0)]])
    msg = cose.parse(raw, untagged=SIGN)
    assert msg.tag == 98 and msg.signers[0].kid == keys.kid_of(b0)
    inner = cbor.decode(sign1(payload, b0), tags=(SIGN1,)).value
    msg = cose.parse(cbor.encode(inner), untagged=SIGN1)
    assert msg.tag == 18 and msg.signers[0].kid == keys.kid_of(b0)
    # A tag still wins over `untagged`, and a map is still not an array.
    assert cose.parse(sign1(payload, b0), untagged=SIGN).tag == 18
    assert refusal(DecodeError, cose.parse, payload, untagged=SIGN) == "COSE_Sign is not an array of 4 items"


@pytest.mark.parametrize("tag, name", [(SIGN, "COSE_Sign"), (SIGN1, "COSE_Sign1")])
@pytest.mark.parametrize("value", [{1: 2, 3: 4, 5: 6, 7: 8}, "four", b"four", 4],
                         ids=["map of 4", "text of 4", "bytes of 4", "int 4"])
def test_tag_around_a_non_array_is_refused(parse, tag, name, value):
    assert refusal(DecodeError, parse, tagged(tag, value)) == name + " is not an array of 4 items"


@pytest.mark.parametrize("tag, name", [(SIGN, "COSE_Sign"), (SIGN1, "COSE_Sign1")])
@pytest.mark.parametrize("extra", [-1, 1], ids=["3 items", "5 items"])
def test_tag_around_an_array_of_the_wrong_length_is_refused(parse, payload, tag, name, extra):
    value = [b"", {}, payload, bytes(64), b""][:4 + extra]
    assert refusal(DecodeError, parse, tagged(tag, value)) == name + " is not an array of 4 items"


# --------------------------------------------------------------------------- body headers


@pytest.mark.parametrize("tag, name", [(SIGN, "COSE_Sign"), (SIGN1, "COSE_Sign1")])
@pytest.mark.parametrize("protected", [{}, "", None, [b"\xa1\x01\x26"]], ids=["map", "text", "nil", "array"])
def test_body_protected_bucket_must_be_a_byte_string(parse, payload, tag, name, protected):
    raw = tagged(tag, [protected, {}, payload, bytes(64) if tag == SIGN1 else [[b"", {}, bytes(64)]]])
    assert refusal(DecodeError, parse, raw) == name + " protected header is not a byte string"


@pytest.mark.parametrize("tag, name", [(SIGN, "COSE_Sign"), (SIGN1, "COSE_Sign1")])
@pytest.mark.parametrize("inner", [[1, -7], -7, b"\xa1\x01\x26", "alg"], ids=["array", "int", "bytes", "text"])
def test_body_protected_bucket_must_hold_a_map(parse, payload, tag, name, inner):
    raw = tagged(tag, [cbor.encode(inner), {}, payload, bytes(64) if tag == SIGN1 else [[b"", {}, bytes(64)]]])
    assert refusal(DecodeError, parse, raw) == name + " protected header is not a map"


def test_body_protected_bucket_must_be_well_formed_cbor(parse, repo, payload):
    b0 = repo.keys["bundle"][0]
    for bad, why in ((b"\xa1\x01", "truncated"), (b"\xa1\x01\x26\x00", "1 trailing bytes"),
                     (b"\xa1\x01\x38\x06", "non-shortest")):
        raw = sign(payload, [entry(payload, b0, body_protected=bad)], body_protected=bad)
        assert why in refusal(DecodeError, parse, raw)


@pytest.mark.parametrize("tag, name", [(SIGN, "COSE_Sign"), (SIGN1, "COSE_Sign1")])
@pytest.mark.parametrize("unprotected", [[], b"", None, 0], ids=["array", "bytes", "nil", "int"])
def test_body_unprotected_bucket_must_be_a_map(parse, repo, payload, tag, name, unprotected):
    key = repo.keys["bundle"][0]
    if tag == SIGN:
        raw = tagged(SIGN, [b"", unprotected, payload, [entry(payload, key)]])
    else:
        value = cbor.decode(sign1(payload, key), tags=(SIGN1,)).value
        value[1] = unprotected
        raw = tagged(SIGN1, value)
    assert refusal(DecodeError, parse, raw) == name + " unprotected header is not a map"


def test_body_label_in_both_buckets_is_refused(parse, repo, payload):
    b0, b1, _ = repo.keys["bundle"]
    body = cbor.encode({CTY: 60})
    entries = [entry(payload, k, body_protected=body) for k in (b0, b1)]
    raw = sign(payload, entries, body_protected=body, body_unprotected={CTY: 60})
    assert refusal(DecodeError, parse, raw) == "COSE_Sign header label 3 is in both buckets"
    # Different labels in the two buckets are fine.
    assert parse(sign(payload, entries, body_protected=body, body_unprotected={5: 1})).tag == 98
    # COSE_Sign1: its one bucket pair is the signer's, and the same rule holds.
    t = repo.keys["timestamp"][0]
    raw = sign1(payload, t, unprotected={KID: keys.kid_of(t)})
    assert refusal(DecodeError, parse, raw) == "COSE_Sign1 header label 4 is in both buckets"


def test_body_crit_in_the_unprotected_bucket_is_refused(parse, repo, payload):
    b0, b1, _ = repo.keys["bundle"]
    raw = sign(payload, [entry(payload, b0), entry(payload, b1)], body_unprotected={CRIT: [CTY], CTY: 60})
    assert refusal(DecodeError, parse, raw) == "COSE_Sign crit header must be protected"
    t = repo.keys["timestamp"][0]
    raw = sign1(payload, t, unprotected={CRIT: [ALG]})
    assert refusal(DecodeError, parse, raw) == "COSE_Sign1 crit header must be protected"


@pytest.mark.parametrize(
    "body, problem",
    [
        ({CRIT: []}, "crit header is not a non-empty array"),
        ({CRIT: CTY, CTY: 60}, "crit header is not a non-empty array"),
        ({CRIT: {CTY: 1}, CTY: 60}, "crit header is not a non-empty array"),
        ({CRIT: [99], 99: 0}, "unknown critical header 99"),
        ({CRIT: [CTY, "x"], CTY: 60, "x": 0}, "unknown critical header 'x'"),
        ({CRIT: [CTY]}, "critical header 3 is not in the protected bucket"),
        ({CRIT: [CTY, KID], CTY: 60}, "critical header 4 is not in the protected bucket"),
    ],
    ids=["empty", "int", "map", "unknown label", "unknown text label", "absent", "second absent"],
)
def test_body_crit_must_name_understood_labels_that_are_present(verify, root, repo, payload, body, problem):
    """Refused as a whole, though a threshold of role keys signed it."""
    b0, b1, _ = repo.keys["bundle"]
    body_raw = cbor.encode(body)
    raw = sign(payload, [entry(payload, k, body_protected=body_raw) for k in (b0, b1)], body_raw)
    assert refusal(DecodeError, verify, root, raw) == "COSE_Sign body: " + problem


@pytest.mark.parametrize("body", [{CRIT: [CTY], CTY: 60}, {CRIT: [CRIT, CTY], CTY: "application/cbor"}],
                         ids=["content type", "crit itself"])
def test_body_crit_naming_understood_present_labels_is_accepted(verify, root, repo, payload, body):
    b0, b1, _ = repo.keys["bundle"]
    body_raw = cbor.encode(body)
    raw = sign(payload, [entry(payload, k, body_protected=body_raw) for k in (b0, b1)], body_raw)
    assert verify(root, raw).version == 1


# --------------------------------------------------------------------------- payload


@pytest.mark.parametrize("tag, name", [(SIGN, "COSE_Sign"), (SIGN1, "COSE_Sign1")])
@pytest.mark.parametrize("value", [None, "text", [b"x"], 0], ids=["nil (detached)", "text", "array", "int"])
def test_payload_must_be_an_attached_byte_string(parse, tag, name, value):
    raw = tagged(tag, [b"", {}, value, bytes(64) if tag == SIGN1 else [[b"", {}, bytes(64)]]])
    assert refusal(DecodeError, parse, raw) == name + " payload is not an attached byte string"


def test_payload_location_is_recorded_on_the_message(repo, payload):
    raw = sign(payload, [entry(payload, repo.keys["bundle"][0])])
    msg = cose.parse(raw)
    assert (msg.unverified_payload, msg.source, msg.payload_offset, msg.payload_length) == (
        payload, None, 0, len(payload))
    src = BytesSource(raw)
    msg = cose.parse(src)
    assert msg.unverified_payload is None and msg.source is src
    assert (msg.payload_offset, msg.payload_length) == (raw.index(payload), len(payload))


def test_body_headers_are_recorded_on_the_message(parse, repo, payload):
    body = cbor.encode({CTY: 60})
    b0 = repo.keys["bundle"][0]
    msg = parse(sign(payload, [entry(payload, b0, body_protected=body)], body, {5: "note"}))
    assert (msg.protected_raw, msg.protected, msg.unprotected) == (body, {CTY: 60}, {5: "note"})
    signer = msg.signers[0]
    assert (signer.protected_raw, signer.protected, signer.unprotected) == (
        b"\xa1\x01\x26", {ALG: ES256}, {KID: keys.kid_of(b0)})


# --------------------------------------------------------------------------- signatures array


@pytest.mark.parametrize("signatures", [[], {}, b"\xa1", {KID: b"x"}, 7, None, "sig"],
                         ids=["empty array", "empty map", "bytes", "map", "int", "nil", "text"])
def test_signatures_must_be_a_non_empty_array(parse, payload, signatures):
    raw = tagged(SIGN, [b"", {}, payload, signatures])
    assert refusal(DecodeError, parse, raw) == "COSE_Sign signatures is not a non-empty array"


@pytest.mark.parametrize("limits", [DEFAULT, Limits(max_signatures=2)], ids=["default 16", "2"])
def test_max_signatures_is_allowed_and_one_more_is_a_limit_error(parse, repo, payload, limits):
    one = entry(payload, repo.keys["bundle"][0])
    cap = limits.max_signatures
    assert len(parse(sign(payload, [one] * cap), limits).signers) == cap
    msg = refusal(LimitError, parse, sign(payload, [one] * (cap + 1)), limits)
    assert msg == f"{cap + 1} signatures, limit is {cap}"


# --------------------------------------------------------------------------- one signer


def good(payload, key):
    return entry(payload, key)


def not_three_items(payload, key):
    return good(payload, key)[:2]


def four_items(payload, key):
    return good(payload, key) + [b""]


def protected_a_map(payload, key):
    return [PROTECTED, {KID: keys.kid_of(key)}, good(payload, key)[2]]


def protected_not_a_map(payload, key):
    return entry(payload, key, protected=[ALG, ES256])


def unprotected_not_a_map(payload, key):
    e = good(payload, key)
    return [e[0], [KID, keys.kid_of(key)], e[2]]


def label_in_both(payload, key):
    return entry(payload, key, protected={ALG: ES256, KID: keys.kid_of(key)})


def crit_unprotected(payload, key):
    return entry(payload, key, unprotected={CRIT: [ALG], KID: keys.kid_of(key)})


def crit_empty(payload, key):
    return entry(payload, key, protected={ALG: ES256, CRIT: []})


def crit_int(payload, key):
    return entry(payload, key, protected={ALG: ES256, CRIT: ALG})


def crit_unknown(payload, key):
    return entry(payload, key, protected={ALG: ES256, CRIT: [99], 99: 0})


def crit_absent(payload, key):
    return entry(payload, key, protected={ALG: ES256, CRIT: [KID]})


def alg_missing(payload, key):
    return entry(payload, key, protected={})


def alg_unprotected(payload, key):
    return entry(payload, key, protected={}, unprotected={ALG: ES256, KID: keys.kid_of(key)})


def alg_es384(payload, key):
    return entry(payload, key, protected={ALG: -35})


def alg_text(payload, key):
    return entry(payload, key, protected={ALG: "ES256"})


def kid_int(payload, key):
    return entry(payload, key, unprotected={KID: 7})


def kid_text(payload, key):
    return entry(payload, key, unprotected={KID: keys.kid_of(key).hex()})


def signature_short(payload, key):
    e = good(payload, key)
    return [e[0], e[1], e[2][:63]]


def signature_long(payload, key):
    e = good(payload, key)
    return [e[0], e[1], e[2] + b"\x00"]


def signature_text(payload, key):
    e = good(payload, key)
    return [e[0], e[1], "x" * 64]


def signature_nil(payload, key):
    e = good(payload, key)
    return [e[0], e[1], None]


MALFORMED_SIGNERS = [
    (not_three_items, "COSE_Signature is not an array of 3 items"),
    (four_items, "COSE_Signature is not an array of 3 items"),
    (protected_a_map, "protected header is not a byte string"),
    (protected_not_a_map, "COSE_Signature protected header is not a map"),
    (unprotected_not_a_map, "COSE_Signature unprotected header is not a map"),
    (label_in_both, "COSE_Signature header label 4 is in both buckets"),
    (crit_unprotected, "COSE_Signature crit header must be protected"),
    (crit_empty, "crit header is not a non-empty array"),
    (crit_int, "crit header is not a non-empty array"),
    (crit_unknown, "unknown critical header 99"),
    (crit_absent, "critical header 4 is not in the protected bucket"),
    (alg_missing, "no protected alg header"),
    (alg_unprotected, "no protected alg header"),
    (alg_es384, "unsupported algorithm -35 (only ES256, -7)"),
    (alg_text, "unsupported algorithm 'ES256' (only ES256, -7)"),
    (kid_int, "kid is not a byte string"),
    (kid_text, "kid is not a byte string"),
    (signature_short, "ES256 signature is not 64 bytes"),
    (signature_long, "ES256 signature is not 64 bytes"),
    (signature_text, "ES256 signature is not 64 bytes"),
    (signature_nil, "ES256 signature is not 64 bytes"),
]
SIGNER_IDS = [f.__name__ for f, _ in MALFORMED_SIGNERS]


def recorded_kid(make, key):
    """The kid is recorded once alg and kid passed: only a bad signature keeps it."""
    return keys.kid_of(key) if make.__name__.startswith("signature_") else None


@pytest.mark.parametrize("make, problem", MALFORMED_SIGNERS, ids=SIGNER_IDS)
def test_malformed_signer_is_recorded_and_does_not_stop_the_parse(parse, repo, payload, make, problem):
    b0, b1, _ = repo.keys["bundle"]
    msg = parse(sign(payload, [good(payload, b0), make(payload, b1), good(payload, b0)]))
    first, bad, last = msg.signers
    assert bad.problem == problem
    assert bad.kid == recorded_kid(make, b1)
    assert cose.verify_signer(msg, bad, b"not even a key") is False  # no ECDSA work for it
    for ok in (first, last):
        assert ok.problem is None and ok.kid == keys.kid_of(b0) and ok.alg == ES256


@pytest.mark.parametrize("make, problem", MALFORMED_SIGNERS, ids=SIGNER_IDS)
def test_malformed_signer_of_a_role_key_does_not_count_towards_the_threshold(verify, root, repo,
                                                                            payload, make, problem):
    b0, b1, _ = repo.keys["bundle"]
    raw = sign(payload, [good(payload, b0), make(payload, b1)])
    kid = recorded_kid(make, b1)
    note = ("(no kid)" if kid is None else kid[:4].hex()) + ": " + problem
    msg = refusal(SignatureError, verify, root, raw)
    assert msg == "bundle has 1 valid bundle signature(s), needs 2; " + note
    # The same key, signing properly, meets the threshold.
    assert verify(root, sign(payload, [good(payload, b0), good(payload, b1)])).version == 1


def test_signer_records_the_algorithm_it_refuses(parse, repo, payload):
    b0 = repo.keys["bundle"][0]
    msg = parse(sign(payload, [alg_es384(payload, b0), alg_text(payload, b0), alg_missing(payload, b0)]))
    assert [s.alg for s in msg.signers] == [-35, "ES256", None]


def crit_alg(payload, key):
    return entry(payload, key, protected={ALG: ES256, CRIT: [ALG]})


def crit_crit_and_alg(payload, key):
    return entry(payload, key, protected={ALG: ES256, CRIT: [CRIT, ALG]})


def crit_protected_kid(payload, key):
    return entry(payload, key, protected={ALG: ES256, CRIT: [KID], KID: keys.kid_of(key)}, unprotected={})


def crit_content_type(payload, key):
    return entry(payload, key, protected={ALG: ES256, CTY: 60, CRIT: [CTY]})


@pytest.mark.parametrize("make", [crit_alg, crit_crit_and_alg, crit_protected_kid, crit_content_type],
                         ids=lambda f: f.__name__)
def test_signer_crit_naming_understood_present_labels_counts(verify, root, repo, payload, make):
    b0, b1, _ = repo.keys["bundle"]
    assert verify(root, sign(payload, [good(payload, b0), make(payload, b1)])).version == 1


def test_kid_may_sit_in_the_protected_bucket_and_may_be_absent(parse, repo, payload):
    b0 = repo.keys["bundle"][0]
    kid = keys.kid_of(b0)
    msg = parse(sign(payload, [entry(payload, b0, protected={ALG: ES256, KID: kid}, unprotected={}),
                               entry(payload, b0, unprotected={})]))
    protected_kid, no_kid = msg.signers
    assert protected_kid.problem is None and protected_kid.kid == kid
    assert no_kid.problem is None and no_kid.kid is None and no_kid.alg == ES256


def test_unprotected_alg_counts_only_when_the_caller_allows_it(parse, repo, payload):
    b0 = repo.keys["bundle"][0]
    raw = sign(payload, [alg_unprotected(payload, b0), good(payload, b0), alg_es384(payload, b0)])
    strict, protected, es384 = parse(raw).signers
    assert strict.problem == "no protected alg header" and strict.alg is None
    assert protected.problem is None and protected.alg == ES256
    lenient, protected, es384 = parse(raw, require_protected_alg=False).signers
    assert lenient.problem is None and lenient.alg == ES256 and lenient.kid == keys.kid_of(b0)
    # A protected alg is still read from the protected bucket.
    assert protected.problem is None and protected.alg == ES256
    assert es384.problem == "unsupported algorithm -35 (only ES256, -7)"
    # And no alg anywhere is still no alg.
    msg = parse(sign(payload, [alg_missing(payload, b0)]), require_protected_alg=False)
    assert msg.signers[0].problem == "no protected alg header"


def test_sign1_signer_problems_are_recorded_not_raised(repo, root, payload):
    """In a COSE_Sign1 the body buckets are the signer's: its problems make it not count."""
    t = repo.keys["timestamp"][0]
    ts = fk.encode(repo.timestamp_map())
    cases = [
        (cbor.encode({ALG: ES256, CRIT: [99], 99: 0}), {KID: keys.kid_of(t)}, None,
         "unknown critical header 99"),
        (b"", {ALG: ES256, KID: keys.kid_of(t)}, None, "no protected alg header"),
        (cbor.encode({ALG: -35}), {KID: keys.kid_of(t)}, None, "unsupported algorithm -35 (only ES256, -7)"),
        (None, None, bytes(63), "ES256 signature is not 64 bytes"),
    ]
    for protected, unprotected, signature, problem in cases:
        raw = sign1(ts, t, protected, unprotected, signature)
        for parsed in (parse_in_memory(raw), parse_streamed(raw)):
            assert parsed.signers[0].problem == problem
        who = "(no kid)" if signature is None else keys.kid_of(t)[:4].hex()
        msg = refusal(SignatureError, policy.verify_timestamp, root, raw)
        assert msg == f"timestamp has 0 valid timestamp signature(s), needs 1; {who}: {problem}"
    assert policy.verify_timestamp(root, sign1(ts, t)).time == fk.NOW


# --------------------------------------------------------------------------- streamed parser only


def test_document_size_cap_at_and_just_over_the_boundary(parse, repo, payload):
    raw = sign(payload, [entry(payload, repo.keys["bundle"][0])])
    assert parse(raw, Limits(max_document=len(raw))).tag == 98
    msg = refusal(LimitError, parse, raw, Limits(max_document=len(raw) - 1))
    assert msg == f"document is {len(raw)} bytes, limit is {len(raw) - 1}"


def test_streamed_size_cap_is_checked_before_reading(repo, payload):
    class Unreadable(BytesSource):
        def read_at(self, offset, n):
            raise AssertionError("read before the size check")

    raw = sign(payload, [entry(payload, repo.keys["bundle"][0])])
    with pytest.raises(LimitError, match=f"document is {len(raw)} bytes"):
        cose.parse(Unreadable(raw), Limits(max_document=len(raw) - 1))


def test_streamed_source_shorter_than_its_size_is_refused(repo, payload):
    raw = sign(payload, [entry(payload, repo.keys["bundle"][0])])
    src = BytesSource(raw[:40])
    src.size = len(raw)
    assert refusal(DecodeError, cose.parse, src) == "source ended early at offset 0"


def test_truncated_payload_is_refused(parse, repo, payload):
    raw = sign(payload, [entry(payload, repo.keys["bundle"][0])])
    start = raw.index(payload)
    cut = raw[:start + len(payload) - 1]
    assert "truncated input" in refusal(DecodeError, parse, cut)
    msg = refusal(DecodeError, parse_streamed, cut)
    assert msg == f"truncated input: payload of {len(payload)} bytes at offset {start}"
    # Cut right after the payload: the payload is whole, the signatures are what is missing.
    msg = refusal(DecodeError, parse_streamed, raw[:start + len(payload)])
    assert msg.startswith(f"truncated input: need 1 bytes at offset {start + len(payload)}")


def test_trailing_bytes_are_refused(parse, repo, payload):
    raw = sign(payload, [entry(payload, repo.keys["bundle"][0])])
    assert refusal(DecodeError, parse, raw + b"\x00") == "1 trailing bytes after the data item"
    assert refusal(DecodeError, parse, raw + b"\xf6\xf6") == "2 trailing bytes after the data item"


def test_envelope_items_sit_at_depth_2(parse, repo, payload):
    """Tag at depth 0, its array at 1, the four items at 2: a COSE_Sign1 with an empty
    unprotected map needs max_depth 2 and no more, on both parsers."""
    t = repo.keys["timestamp"][0]
    raw = sign1(payload, t)
    assert parse(raw, Limits(max_depth=2)).signers[0].kid == keys.kid_of(t)
    assert refusal(LimitError, parse, raw, Limits(max_depth=1)) == "nesting deeper than 1"


def test_depth_cap_inside_a_header_bucket(parse, repo, payload):
    b0 = repo.keys["bundle"][0]

    def nested(levels):  # the unprotected map sits at depth 2, its value at 3
        value = 0
        for _ in range(levels):
            value = [value]
        return value

    at_cap = nested(DEFAULT.max_depth - 3)
    assert parse(sign(payload, [entry(payload, b0)], body_unprotected={5: at_cap})).tag == 98
    raw = sign(payload, [entry(payload, b0)], body_unprotected={5: [at_cap]})
    assert refusal(LimitError, parse, raw) == f"nesting deeper than {DEFAULT.max_depth}"
    # The signatures array sits at depth 2 as well: its entries' unprotected maps at 4.
    deep = entry(payload, b0, unprotected={KID: keys.kid_of(b0), 5: nested(DEFAULT.max_depth - 5)})
    assert parse(sign(payload, [deep])).signers[0].problem is None
    deeper = entry(payload, b0, unprotected={KID: keys.kid_of(b0), 5: nested(DEFAULT.max_depth - 4)})
    assert refusal(LimitError, parse, sign(payload, [deeper])) == f"nesting deeper than {DEFAULT.max_depth}"


class ShortInPayload(BytesSource):
    """Reads fine outside [start, stop); inside it, hands back one byte less than asked."""

    def __init__(self, data, start, stop):
        BytesSource.__init__(self, data)
        self.start, self.stop = start, stop

    def read_at(self, offset, n):
        chunk = BytesSource.read_at(self, offset, n)
        return chunk[:-1] if self.start <= offset < self.stop else chunk


@pytest.mark.parametrize("two_chunks", [False, True], ids=["bundle payload", "1500 bytes"])
def test_short_read_while_hashing_the_payload_is_refused(repo, root, two_chunks):
    payload = bytes(range(250)) * 6 if two_chunks else fk.encode(repo.bundle_map())
    b0, b1, _ = repo.keys["bundle"]
    raw = sign(payload, [good(payload, b0), good(payload, b1)])
    start = raw.index(payload)
    src = ShortInPayload(raw, start, start + len(payload))
    msg = cose.parse(src)
    assert refusal(DecodeError, cose.tbs_digest, msg, msg.signers[0]) == f"source ended early at offset {start}"
    assert refusal(DecodeError, policy.verify_bundle, root, src) == (
        f"source ended early at offset {start}")
    # Short only from the second 1024-byte chunk on: the offset named is that chunk's.
    src = ShortInPayload(raw, start + 1024, start + len(payload))
    msg = cose.parse(src)
    if two_chunks:
        assert refusal(DecodeError, cose.tbs_digest, msg, msg.signers[0]) == (
            f"source ended early at offset {start + 1024}")
    else:
        assert cose.tbs_digest(msg, msg.signers[0]) == cose.tbs_digest(cose.parse(raw), msg.signers[0])


# --------------------------------------------------------------------------- Sig_structure and digests


@pytest.mark.parametrize("length", [0, 1, 1023, 1024, 1025, 2048, 3000])
def test_streamed_digest_equals_the_in_memory_digest_and_the_rfc_structure(repo, length):
    payload = bytes(i * 7 % 251 for i in range(length))
    b0 = repo.keys["bundle"][0]
    raw = sign(payload, [good(payload, b0)], body_protected=b"\xa0")
    expected = hashlib.sha256(cbor.encode(["Signature", b"", b"\xa1\x01\x26", b"", payload])).digest()
    in_memory = cose.parse(raw)
    streamed = cose.parse(BytesSource(raw))
    assert cose.tbs_digest(in_memory, in_memory.signers[0]) == expected
    assert cose.tbs_digest(streamed, streamed.signers[0]) == expected
    aad = b"external"
    expected = hashlib.sha256(cbor.encode(["Signature", b"", b"\xa1\x01\x26", aad, payload])).digest()
    assert cose.tbs_digest(streamed, streamed.signers[0], aad) == expected
    assert cose.tbs_digest(in_memory, in_memory.signers[0], aad) == expected


def test_sig_structure_prefix_is_rfc_9052_section_4_4(repo):
    payload = b"payload"
    for body, sign_prot, body_in, sign_in in ((b"", b"\xa1\x01\x26", b"", b"\xa1\x01\x26"),
                                               (b"\xa0", b"\xa0", b"", b""),
                                               (b"\xa1\x03\x00", b"\xa1\x01\x26", b"\xa1\x03\x00",
                                                b"\xa1\x01\x26")):
        whole = cbor.encode(["Signature", body_in, sign_in, b"aad", payload])
        assert cose.sig_structure_prefix(98, body, sign_prot, b"aad", len(payload)) + payload == whole
        whole = cbor.encode(["Signature1", body_in, b"aad", payload])
        assert cose.sig_structure_prefix(18, body, None, b"aad", len(payload)) + payload == whole


def test_signatures_verify_over_the_protected_bytes_as_received(verify, root, repo, payload):
    """Body protected h'A0' is signed as h''; any other spelling is signed as it is."""
    b0, b1, _ = repo.keys["bundle"]
    for body in (b"", b"\xa0", cbor.encode({CTY: 60})):
        raw = sign(payload, [entry(payload, k, body_protected=body) for k in (b0, b1)], body)
        assert verify(root, raw).version == 1
    # Signed over h'' but sent with another body bucket: nothing verifies.
    body = cbor.encode({CTY: 60})
    raw = sign(payload, [entry(payload, k) for k in (b0, b1)], body)
    assert refusal(SignatureError, verify, root, raw).startswith("bundle has 0 valid")


def test_a_sign1_made_here_verifies_with_its_key(parse, repo, payload):
    t = repo.keys["timestamp"][0]
    msg = parse(sign1(payload, t))
    point = keys.spki_der(t)[-65:]
    assert cose.verify_signer(msg, msg.signers[0], point) is True
    assert cose.verify_signer(msg, msg.signers[0], point, b"aad") is False
    other = keys.spki_der(repo.keys["bundle"][0])[-65:]
    assert cose.verify_signer(msg, msg.signers[0], other) is False
