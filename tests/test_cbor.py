"""Strict deterministic CBOR: RFC 7049 appendix A, one test per strictness rule, caps,
deterministic encoding, and a fuzz invariant fed whole and one truncation at a time.

Every decoding test runs against both `cbor.decode` (on CPython the cbor2 fast path)
and `cbor.decode_pure`, which must give the same answer for every input: the same
value, or DecodeError. Any other exception from untrusted bytes is a bug.
"""

from __future__ import annotations

import ast
import random
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from support.vectors import cose_examples, load_json  # noqa: E402
from trustfleet_device import cbor  # noqa: E402
from trustfleet_device.cbor import Tag  # noqa: E402
from trustfleet_device.errors import DecodeError, LimitError  # noqa: E402
from trustfleet_device.limits import DEFAULT, SMALL, Limits  # noqa: E402

COSE_TAGS = (18, 98)

PROPERTY = settings(
    derandomize=True,
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(params=["decode", "decode_pure"])
def decode(request):
    """Each decoding test runs once per decoder."""
    return getattr(cbor, request.param)


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def refusal(decode, data: bytes, *, limits=DEFAULT, tags=()) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, limits, tags)
    return info.value


def shape(value):
    """A comparable form that keeps types apart (True is not 1, b"" is not "")."""
    if value is None or value is True or value is False:
        return ("simple", value)
    kind = type(value)
    if kind is int:
        return ("int", value)
    if kind is bytes:
        return ("bytes", value)
    if kind is str:
        return ("str", value)
    if kind is list:
        return ("list", tuple(shape(v) for v in value))
    if kind is dict:
        return ("map", tuple(sorted((shape(k), shape(v)) for k, v in value.items())))
    if kind is Tag:
        return ("tag", value.number, shape(value.value))
    raise AssertionError(f"decoder returned a {kind.__name__}: {value!r}")


def outcome(decode, data: bytes, tags=()):
    """("ok", shape) or ("refused", error class); any other exception propagates (a bug)."""
    try:
        return ("ok", shape(decode(data, DEFAULT, tags)))
    except DecodeError as exc:
        return ("refused", type(exc).__name__)


# --------------------------------------------------------------- appendix A

APPENDIX_A = load_json("cbor", "appendix_a.json")

# Exactly the entries our data model holds (ints, strings, arrays, maps, bools, null).
ACCEPTED = {
    "00", "01", "0a", "17", "1818", "1819", "1864", "1903e8", "1a000f4240",
    "1b000000e8d4a51000", "1bffffffffffffffff", "3bffffffffffffffff",
    "20", "29", "3863", "3903e7",
    "f4", "f5", "f6",
    "40", "4401020304",
    "60", "6161", "6449455446", "62225c", "62c3bc", "63e6b0b4", "64f0908591",
    "80", "83010203", "8301820203820405",
    "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
    "a0", "a201020304", "a26161016162820203", "826161a161626163",
    "a56161614161626142616361436164614461656145",
}  # fmt: skip

# Everything else, grouped by the reason it is refused (a fragment of the message).
REFUSED = {
    "floating-point": [
        "f90000", "f98000", "f93c00", "fb3ff199999999999a", "f93e00", "f97bff",
        "fa47c35000", "fa7f7fffff", "fb7e37e43c8800759c", "f90001", "f90400", "f9c400",
        "fbc010666666666666", "f97c00", "f97e00", "f9fc00", "fa7f800000", "fa7fc00000",
        "faff800000", "fb7ff0000000000000", "fb7ff8000000000000", "fbfff0000000000000",
    ],
    "simple value 23": ["f7"],  # undefined
    "simple value 16": ["f0"],
    "one-byte simple": ["f818", "f8ff"],
    "unsupported tag 0": ["c074323031332d30332d32315432303a30343a30305a"],
    "unsupported tag 1": ["c11a514b67b0", "c1fb41d452d9ec200000"],
    "unsupported tag 2": ["c249010000000000000000"],
    "unsupported tag 3": ["c349010000000000000000"],
    "unsupported tag 23": ["d74401020304"],
    "unsupported tag 24": ["d818456449455446"],
    "unsupported tag 32": ["d82076687474703a2f2f7777772e6578616d706c652e636f6d"],
    "indefinite-length": [
        "5f42010243030405ff", "7f657374726561646d696e67ff", "9fff",
        "9f018202039f0405ffff", "9f01820203820405ff", "83018202039f0405ff",
        "83019f0203ff820405",
        "9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff",
        "bf61610161629f0203ffff", "826161bf61626163ff", "bf6346756ef563416d7421ff",
    ],
}  # fmt: skip


def appendix_value(entry):
    """The value an entry stands for: "decoded", or the diagnostic for bytes and int-keyed maps."""
    if "decoded" in entry:
        return entry["decoded"]
    diag = entry["diagnostic"]
    if diag.startswith("h'"):
        return bytes.fromhex(diag[2:-1])
    return ast.literal_eval(diag)  # "{1: 2, 3: 4}"


def test_appendix_a_tables_cover_every_entry_once():
    refused = [x for group in REFUSED.values() for x in group]
    assert len(refused) == len(set(refused))
    assert not ACCEPTED & set(refused)
    assert ACCEPTED | set(refused) == {e["hex"] for e in APPENDIX_A}
    assert (len(APPENDIX_A), len(ACCEPTED), len(refused)) == (82, 37, 45)


def test_appendix_a_accepts_exactly_our_data_model(decode):
    accepted, refused = set(), {}
    for entry in APPENDIX_A:
        try:
            decode(h(entry["hex"]))
        except DecodeError as exc:
            refused[entry["hex"]] = str(exc)
        else:
            accepted.add(entry["hex"])
    assert accepted == ACCEPTED
    for reason, group in REFUSED.items():
        for hx in group:
            assert reason in refused[hx], (hx, refused[hx])


@pytest.mark.parametrize(
    "entry", [e for e in APPENDIX_A if e["hex"] in ACCEPTED], ids=lambda e: e["hex"][:24]
)
def test_appendix_a_decodes_to_the_published_value(decode, entry):
    value = decode(h(entry["hex"]))
    assert shape(value) == shape(appendix_value(entry))
    if entry["roundtrip"]:
        assert cbor.encode(value) == h(entry["hex"])


# ------------------------------------------------------------ strictness


def test_refuses_duplicate_map_keys(decode):
    for hx in ("a2 01 00 01 00", "a2 6161 00 6161 01", "a3 00 00 01 00 01 00"):
        assert "duplicate map key" in str(refusal(decode, h(hx)))


def test_refuses_map_keys_out_of_bytewise_order(decode):
    for hx in (
        "a2 02 00 01 00",  # 2 before 1
        "a2 20 00 1818 00",  # -1 (0x20) before 24 (0x18 0x18)
        "a2 626161 00 6162 00",  # "aa" before "b": length-first order is not ours
        "a2 6161 00 01 00",  # text key before integer key
    ):
        assert "not in deterministic order" in str(refusal(decode, h(hx)))
    # The same keys in bytewise order are fine.
    assert decode(h("a2 1818 00 20 01")) == {24: 0, -1: 1}
    assert decode(h("a2 6162 00 626161 01")) == {"b": 0, "aa": 1}


@pytest.mark.parametrize(
    "hx",
    [
        "1801", "1817", "1900ff", "1a0000ffff", "1b00000000ffffffff",  # unsigned
        "3817", "3900ff", "3a0000ffff", "3b00000000ffffffff",  # negative
    ],
)  # fmt: skip
def test_refuses_non_shortest_integers(decode, hx):
    assert "non-shortest encoding" in str(refusal(decode, h(hx)))


@pytest.mark.parametrize(
    "hx",
    [
        "5801 61", "590001 61", "5a00000001 61", "5b0000000000000001 61",  # bytes
        "7801 61", "790001 61",  # text
        "9801 00", "990001 00", "9a00000001 00",  # array
        "b801 00 00", "b90001 00 00",  # map
        "d812 80",  # tag 18 in two bytes
    ],
)  # fmt: skip
def test_refuses_non_shortest_lengths_and_tag_numbers(decode, hx):
    assert "non-shortest encoding" in str(refusal(decode, h(hx), tags=COSE_TAGS))


@pytest.mark.parametrize(
    "hx", ["5f ff", "5f 4161 ff", "7f 6161 ff", "9f ff", "9f 01 ff", "bf ff", "bf 01 02 ff"]
)
def test_refuses_indefinite_lengths(decode, hx):
    assert "indefinite-length" in str(refusal(decode, h(hx)))


def test_refuses_a_lone_break_code(decode):
    assert "break" in str(refusal(decode, h("ff")))


@pytest.mark.parametrize("hx", ["00 00", "80 00", "a0 f6", "6161 61", "d2 80 00"])
def test_refuses_trailing_bytes(decode, hx):
    assert "trailing bytes" in str(refusal(decode, h(hx), tags=COSE_TAGS))


@pytest.mark.parametrize("major", range(7))
@pytest.mark.parametrize("ai", [28, 29, 30])
def test_refuses_reserved_additional_information(decode, major, ai):
    data = bytes(((major << 5) | ai,)) + b"\x00" * 9
    assert f"reserved additional information {ai}" in str(refusal(decode, data, tags=COSE_TAGS))


@pytest.mark.parametrize("ai", [28, 29, 30])
def test_refuses_reserved_simple_values(decode, ai):
    refusal(decode, bytes((0xE0 | ai,)))


@pytest.mark.parametrize(
    "hx",
    [
        "61 80",  # lone continuation byte
        "61 ff",  # never valid in UTF-8
        "61 c3",  # truncated two-byte sequence
        "62 c0af",  # overlong "/"
        "62 c1bf",  # overlong
        "63 e08080",  # overlong three-byte NUL
        "64 f0808080",  # overlong four-byte
        "63 eda080",  # UTF-16 surrogate U+D800
        "63 edbfbf",  # surrogate U+DFFF
        "64 f4908080",  # above U+10FFFF
        "65 f888808080",  # five-byte form
        "62 e282",  # truncated three-byte sequence
        "63 e228a1",  # bad continuation
    ],
)  # fmt: skip
def test_refuses_invalid_utf8_text(decode, hx):
    assert "not valid UTF-8" in str(refusal(decode, h(hx)))


def test_invalid_utf8_inside_a_map_key_is_refused_too(decode):
    assert "not valid UTF-8" in str(refusal(decode, h("a1 63eda080 00")))


@pytest.mark.parametrize(
    "hx, text",
    [
        ("62 c280", "\u0080"),
        ("63 ed9fbf", "\ud7ff"),  # last code point before the surrogates
        ("63 ee8080", "\ue000"),  # first after them
        ("63 efbfbf", "\uffff"),
        ("64 f0908080", "\U00010000"),
        ("64 f48fbfbf", "\U0010ffff"),
    ],
)
def test_accepts_utf8_at_the_edges_of_the_valid_ranges(decode, hx, text):
    assert decode(h(hx)) == text


@pytest.mark.parametrize(
    "hx", ["f90000", "f97e00", "fa47c35000", "fb3ff199999999999a", "81 f93c00"]
)
def test_refuses_floats(decode, hx):
    assert "floating-point" in str(refusal(decode, h(hx)))


@pytest.mark.parametrize("hx", ["f7", "f0", "e0", "f3", "f818", "f8ff", "f820"])
def test_refuses_undefined_and_other_simple_values(decode, hx):
    refusal(decode, h(hx))


def test_refuses_tags_not_allowed_by_the_caller(decode):
    assert "unsupported tag 98" in str(refusal(decode, h("d862 80")))
    assert "unsupported tag 98" in str(refusal(decode, h("d862 80"), tags=(18,)))
    assert "unsupported tag 0" in str(refusal(decode, h("c0 60"), tags=COSE_TAGS))
    assert "unsupported tag 55799" in str(refusal(decode, h("d9d9f7 00"), tags=COSE_TAGS))
    # A tag hidden inside an allowed one is still checked.
    assert "unsupported tag 1" in str(refusal(decode, h("d2 81 c1 00"), tags=COSE_TAGS))
    assert decode(h("d2 80"), DEFAULT, (18,)) == Tag(18, [])


@pytest.mark.parametrize(
    "hx",
    [
        "c2 43 616263",  # tag 2 (bignum): cbor2 turns it into the int 6382179
        "c3 43 616263",  # tag 3 (negative bignum): -6382180
        "c2 43 010000",  # 65536 as a bignum
        "82 d81c 6461626364 d81d00",  # tag 28/29 (shared value): ["abcd", "abcd"]
        "a1 01 d81c 6461626364",  # tag 28 around a map value
    ],
)  # fmt: skip
def test_refuses_tags_that_cbor2_consumes_into_plain_values(decode, hx):
    # cbor2 replaces these tags by plain ints or by the shared value itself, so
    # no CBORTag is left for the fast path's tag check to see; when the sizes
    # happen to add up, the fast path accepted them. The strict decoder refuses.
    assert "unsupported tag" in str(refusal(decode, h(hx), tags=COSE_TAGS))


@pytest.mark.parametrize(
    "hx",
    [
        "a1 40 00",  # byte string key
        "a1 80 00",  # array key
        "a1 a0 00",  # map key
        "a1 f4 00",  # false
        "a1 f5 00",  # true
        "a1 f6 00",  # null
        "a1 d2 80 00",  # tagged key
    ],
)
def test_refuses_map_keys_that_are_not_integers_or_text(decode, hx):
    assert "not an integer or text string" in str(refusal(decode, h(hx), tags=COSE_TAGS))


def test_refuses_truncated_items(decode):
    for hx in ("", "18", "19 01", "62 61", "82 01", "a1 01", "d2", "5a ffff"):
        assert "truncated" in str(refusal(decode, h(hx), tags=COSE_TAGS)), hx


# ------------------------------------------------------------------- caps


@pytest.mark.parametrize(
    "hx, limit",
    [
        ("5a ffffffff", "string of 4294967295 bytes, limit is 65536"),
        ("7a ffffffff", "string of 4294967295 bytes, limit is 65536"),
        ("5b ffffffffffffffff", "string of 18446744073709551615 bytes, limit is 65536"),
        ("9a ffffffff", "array of 4294967295 entries, limit is 4096"),
        ("ba ffffffff", "map of 4294967295 entries, limit is 4096"),
        ("9b ffffffffffffffff", "array of 18446744073709551615 entries, limit is 4096"),
    ],
)
def test_header_claiming_gigabytes_fails_fast_with_limit_error(decode, hx, limit):
    tracemalloc.start()
    try:
        exc = refusal(decode, h(hx))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(exc, LimitError)
    assert limit in str(exc)
    assert peak < 1 << 20, f"refusing a {len(h(hx))}-byte header allocated {peak} bytes"


def test_string_cap_counts_bytes_and_names_the_limit(decode):
    limits = Limits(max_string=4)
    assert decode(h("44 00010203"), limits) == b"\x00\x01\x02\x03"
    exc = refusal(decode, h("45 0001020304"), limits=limits)
    assert isinstance(exc, LimitError)
    assert "string of 5 bytes, limit is 4" in str(exc)
    exc = refusal(decode, h("63 e6b0b4"), limits=Limits(max_string=2))  # one character, 3 bytes
    assert "string of 3 bytes, limit is 2" in str(exc)
    assert f"limit is {SMALL.max_string}" in str(refusal(decode, h("59 2001"), limits=SMALL))


def test_depth_cap_names_the_limit(decode):
    nested = b"\x81" * DEFAULT.max_depth + b"\x00"
    assert decode(nested) is not None
    exc = refusal(decode, b"\x81" + nested)
    assert isinstance(exc, LimitError)
    assert f"nesting deeper than {DEFAULT.max_depth}" in str(exc)
    # Maps and tags nest too.
    assert isinstance(refusal(decode, b"\xa1\x00" * 17 + b"\x00"), LimitError)
    assert isinstance(refusal(decode, b"\xd2" * 17 + b"\x00", tags=COSE_TAGS), LimitError)
    # And a very deep input is refused early, not by the Python recursion limit.
    assert isinstance(refusal(decode, b"\x81" * 100_000 + b"\x00"), LimitError)


def test_item_cap_per_container_names_the_limit(decode):
    limits = Limits(max_items=4)
    assert decode(h("84 01020304"), limits) == [1, 2, 3, 4]
    exc = refusal(decode, h("85 0102030405"), limits=limits)
    assert isinstance(exc, LimitError)
    assert "array of 5 entries, limit is 4" in str(exc)
    exc = refusal(decode, h("a5 0000 0100 0200 0300 0400"), limits=limits)
    assert "map of 5 entries, limit is 4" in str(exc)


def test_total_items_cap_names_the_limit(decode):
    data = cbor.encode([[1, 2, 3], [4, 5, 6], [7, 8, 9]])  # 13 data items
    assert decode(data, Limits(max_total_items=13)) == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    exc = refusal(decode, data, limits=Limits(max_total_items=12))
    assert isinstance(exc, LimitError)
    assert "more than 12 data items" in str(exc)
    # Map keys count as items too: {1: 2, 3: [4]} is 6.
    data = cbor.encode({1: 2, 3: [4]})
    assert decode(data, Limits(max_total_items=6)) == {1: 2, 3: [4]}
    assert "more than 5 data items" in str(refusal(decode, data, limits=Limits(max_total_items=5)))


def test_document_size_cap_names_the_limit(decode):
    limits = Limits(max_document=8)
    assert decode(h("47 00000000000000"), limits) == bytes(7)
    exc = refusal(decode, h("48 0000000000000000"), limits=limits)
    assert isinstance(exc, LimitError)
    assert "document is 9 bytes, limit is 8" in str(exc)
    big = b"\x00" * (DEFAULT.max_document + 1)
    assert f"limit is {DEFAULT.max_document}" in str(refusal(decode, big))


# ------------------------------------------------------ deterministic encoding


def test_encoder_sorts_map_keys_by_their_encoded_bytes():
    # 24 encodes as 0x18 0x18 and -1 as 0x20: 24 comes first.
    assert cbor.encode({-1: "a", 24: "b"}) == h("a2 1818 6162 20 6161")
    # Shorter text sorts first because its head byte is smaller.
    assert cbor.encode({"aa": 1, "b": 2}) == h("a2 6162 02 626161 01")
    # Integers (majors 0, 1) before text (major 3).
    assert cbor.encode({"a": 1, 1: 2, -1: 3}) == h("a3 01 02 20 03 6161 01")
    assert cbor.encode({256: 0, 255: 0, 23: 0, 24: 0}) == h("a4 17 00 1818 00 18ff 00 190100 00")


@pytest.mark.parametrize(
    "value, hx",
    [
        (0, "00"), (23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"),
        (65535, "19ffff"), (65536, "1a00010000"), (2**32 - 1, "1affffffff"),
        (2**32, "1b0000000100000000"), (2**64 - 1, "1bffffffffffffffff"),
        (-1, "20"), (-24, "37"), (-25, "3818"), (-(2**64), "3bffffffffffffffff"),
        (b"", "40"), ("", "60"), ([], "80"), ({}, "a0"),
        (False, "f4"), (True, "f5"), (None, "f6"),
        (Tag(98, []), "d86280"), (Tag(18, b""), "d240"),
        ("\u00fc", "62c3bc"), (bytes(24), "5818" + "00" * 24),
    ],
)  # fmt: skip
def test_encoder_writes_shortest_form_that_decodes_back(value, hx):
    assert cbor.encode(value) == h(hx)
    assert shape(cbor.decode_pure(h(hx), DEFAULT, COSE_TAGS)) == shape(value)


@pytest.mark.parametrize("value", [1.5, 0.0, [1.0], {"a": float("nan")}, {1: [2, 3.25]}])
def test_encoder_refuses_floats(value):
    with pytest.raises(ValueError, match="cannot encode float"):
        cbor.encode(value)


def test_encoder_refuses_keys_that_would_encode_the_same():
    class OtherText(str):
        """Text that compares unequal to the str with the same characters."""

        def __eq__(self, other):
            return self is other

        def __hash__(self):
            return id(self)

    value = {"a": 1, OtherText("a"): 2}
    assert len(value) == 2
    with pytest.raises(ValueError, match="duplicate map key"):
        cbor.encode(value)


@pytest.mark.parametrize("key", [b"k", 1.0, None, True, (1,), frozenset()])
def test_encoder_refuses_map_keys_outside_the_model(key):
    with pytest.raises(ValueError):
        cbor.encode({key: 0})


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, object(), {1, 2}])
def test_encoder_refuses_values_outside_the_model(value):
    with pytest.raises(ValueError):
        cbor.encode(value)


# ------------------------------------------------------------- properties

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.integers(min_value=-300, max_value=300)
    | st.binary(max_size=40)
    | st.text(max_size=12)
)
keys = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.text(max_size=8)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(keys, children, max_size=6)
        | st.builds(Tag, st.sampled_from(COSE_TAGS), children)
    ),
    max_leaves=30,
)


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, Tag):
        return 1 + depth(value.value)
    return 0


@PROPERTY
@given(values)
def test_every_value_of_the_model_survives_encode_then_decode(value):
    assume(depth(value) <= DEFAULT.max_depth)
    data = cbor.encode(value)
    assert shape(cbor.decode(data, DEFAULT, COSE_TAGS)) == shape(value)
    assert shape(cbor.decode_pure(data, DEFAULT, COSE_TAGS)) == shape(value)
    assert cbor.encode(cbor.decode_pure(data, DEFAULT, COSE_TAGS)) == data


@PROPERTY
@given(st.binary(max_size=64), st.sampled_from([(), COSE_TAGS]))
def test_fast_and_pure_decoders_agree_on_arbitrary_bytes(data, tags):
    assert outcome(cbor.decode, data, tags) == outcome(cbor.decode_pure, data, tags)


# Initial bytes and heads that matter to a CBOR decoder, so that random streams
# are mostly well-formed and reach the deeper rules (tags, keys, UTF-8, floats).
TOKENS = [
    bytes((b,)) for b in (
        0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x20, 0x37, 0x38, 0x40, 0x41, 0x43, 0x58,
        0x60, 0x61, 0x62, 0x63, 0x78, 0x80, 0x81, 0x82, 0x98, 0x9F, 0xA0, 0xA1, 0xA2, 0xB8,
        0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xD2, 0xD8, 0xF4, 0xF5, 0xF6, 0xF7, 0xF9, 0xFF,
    )
] + [b"\xd8\x62", b"\xd8\x1c", b"\xd8\x1d\x00", b"\xd9\xd9\xf7", b"\xed\xa0\x80", b"\xc3\xbc"]  # fmt: skip
cbor_like = st.lists(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=3), max_size=16).map(
    b"".join
)


@PROPERTY
@given(cbor_like, st.sampled_from([(), COSE_TAGS]))
def test_fast_and_pure_decoders_agree_on_cbor_like_streams(data, tags):
    assert outcome(cbor.decode, data, tags) == outcome(cbor.decode_pure, data, tags), data.hex()


def mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for op, where, byte in edits:
        pos = where % (len(out) + 1)
        if op == "flip" and pos < len(out):
            out[pos] ^= 1 << (byte % 8)
        elif op == "set" and pos < len(out):
            out[pos] = byte
        elif op == "insert":
            out.insert(pos, byte)
        elif op == "delete" and pos < len(out):
            del out[pos]
        elif op == "truncate":
            del out[pos:]
    return bytes(out)


edit_lists = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
        st.integers(min_value=0, max_value=1 << 16),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


@PROPERTY
@given(st.sampled_from([0, 1, 2, 3, 4, 18, 21, 24, 28, 32, 98, 258, 55799]), leaves | values)
def test_fast_and_pure_decoders_agree_on_tagged_values(number, value):
    # Tags cbor2 gives a meaning to (dates, bignums, shared values, sets...)
    # must be refused unless the caller allows them, like any other tag.
    data = cbor.head(6, number) + cbor.encode(value)
    for tags in ((), COSE_TAGS):
        assert outcome(cbor.decode, data, tags) == outcome(cbor.decode_pure, data, tags), data.hex()


@PROPERTY
@given(values, edit_lists)
def test_fast_and_pure_decoders_agree_on_mutated_encodings(value, edits):
    data = mutate(cbor.encode(value), edits)
    for tags in ((), COSE_TAGS):
        assert outcome(cbor.decode, data, tags) == outcome(cbor.decode_pure, data, tags), data.hex()


def test_a_map_shape_seen_before_does_not_admit_keys_that_only_compare_equal():
    # The fast path checks a map's key order once per shape; True == 1 == 1.0 and
    # hash alike, so a shape of int keys must still refuse a bool or float key.
    for known, other in (("a10102", "a1f502"), ("a10102", "a1f93c0002"), ("a2010203f6", "a2f50203f6")):
        assert cbor.decode(h(known), DEFAULT) == cbor.decode_pure(h(known), DEFAULT)
        for decode in (cbor.decode, cbor.decode_pure):
            assert "map key" in str(refusal(decode, h(other))) or "floating-point" in str(
                refusal(decode, h(other))
            )


small_limits = st.builds(
    lambda depth, items, total, string: DEFAULT.replace(
        max_depth=depth, max_items=items, max_total_items=total, max_string=string
    ),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=0, max_value=16),
)


def outcome_under(decode, data: bytes, tags, limits):
    try:
        return ("ok", shape(decode(data, limits, tags)))
    except DecodeError as exc:
        return ("refused", type(exc).__name__)


@PROPERTY
@given(values, small_limits)
@example([[1, 2, 3, 4, 5]], DEFAULT.replace(max_items=3))  # an inner array over max_items
def test_fast_and_pure_decoders_agree_under_small_limits(value, limits):
    # The fast path's shortcuts (short arrays walked inline, map shapes checked once,
    # the outer tag read by hand) must apply every cap exactly as the strict decoder does.
    data = cbor.encode(value)
    for tags in ((), COSE_TAGS):
        fast = outcome_under(cbor.decode, data, tags, limits)
        assert fast == outcome_under(cbor.decode_pure, data, tags, limits), data.hex()


# ------------------------------------------------------------------ fuzz

FUZZ_SEED = 1234
FUZZ_INPUTS = 20_000
SLOW_INPUT_S = 1.0


def fuzz_seed_documents() -> list[bytes]:
    docs = [h(e["hex"]) for e in APPENDIX_A if e["hex"] in ACCEPTED]
    for folder in ("sign-tests", "sign1-tests"):
        docs += [
            bytes.fromhex(c["output"]["cbor"])
            for name, c in cose_examples(folder)
            if name == "sign-pass-02.json"
        ]
    docs.append(
        cbor.encode(
            {
                "type": "bundle", "spec": 1, "fleet": "fleet-a", "version": 7,
                "anchors": [[h("3000"), h("3000"), 1_900_000_000, "root ü"]],
                "pinsets": [{"domain": "api.example.com", "pins": [bytes(32), b"\x01" * 32]}],
                "distrust": [], "policy": {"user_anchors": False, -1: None, 24: True},
            }
        )
    )  # fmt: skip
    return docs


def mutate_randomly(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randint(0, len(out))
        if op == 0 and out:
            out[pos % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[pos % len(out)] = rng.choice(
                (0x00, 0x17, 0x18, 0x1B, 0x1F, 0x7F, 0x9F, 0xBF, 0xFF, rng.randrange(256))
            )
        elif op == 2:
            out.insert(pos, rng.randrange(256))
        elif op == 3 and out:
            del out[pos % len(out)]
        elif op == 4:
            other = rng.choice(others)
            start = rng.randint(0, len(other))
            out[pos:pos] = other[start : start + rng.randint(1, 16)]
        elif op == 5:
            out[pos:pos] = bytes((rng.choice((0x81, 0xA1, 0xD2)),)) * rng.randint(1, 40)
        else:
            del out[pos:]
    return bytes(out)


def checked(decode, data: bytes, tags, timings: list):
    start = time.perf_counter()
    try:
        return outcome(decode, data, tags)
    except Exception as exc:  # the invariant: nothing but DecodeError
        pytest.fail(f"{decode.__name__} raised {exc!r} on {data.hex()}")
    finally:
        timings.append((time.perf_counter() - start, data))


def test_fuzz_mutated_inputs_give_a_value_or_decode_error_quickly():
    rng = random.Random(FUZZ_SEED)
    docs = fuzz_seed_documents()
    timings: list = []
    accepted = 0
    for _ in range(FUZZ_INPUTS):
        data = mutate_randomly(rng, rng.choice(docs), docs)
        fast = checked(cbor.decode, data, COSE_TAGS, timings)
        pure = checked(cbor.decode_pure, data, COSE_TAGS, timings)
        assert fast == pure, data.hex()
        accepted += fast[0] == "ok"
    slowest, data = max(timings, key=lambda t: t[0])
    assert slowest < SLOW_INPUT_S, f"{slowest:.2f} s on {data.hex()}"
    assert 0 < accepted < FUZZ_INPUTS  # the mutations reach both outcomes


def test_every_truncation_of_a_valid_document_is_refused_as_truncated():
    timings: list = []
    docs = fuzz_seed_documents()
    assert len(docs) == len(ACCEPTED) + 3
    for doc in docs:
        for decode in (cbor.decode, cbor.decode_pure):
            assert checked(decode, doc, COSE_TAGS, timings)[0] == "ok"
            # Fed one byte at a time: CBOR items delimit themselves, so no proper
            # prefix is a complete item and each must be refused as truncated.
            for n in range(len(doc)):
                start = time.perf_counter()
                with pytest.raises(DecodeError, match="truncated"):
                    decode(doc[:n], DEFAULT, COSE_TAGS)
                timings.append((time.perf_counter() - start, doc[:n]))
    slowest, data = max(timings, key=lambda t: t[0])
    assert slowest < SLOW_INPUT_S, f"{slowest:.2f} s on {data.hex()}"


def test_fast_path_refuses_every_tag_cbor2_would_interpret_itself():
    """cbor2 turns some tags into plain values (bignums, shared refs, dates...).

    The fast path must refuse all of them inside cbor2, or it could accept what
    the strict decoder refuses. Probe this cbor2 version for such tags.
    """
    import cbor2

    from trustfleet_device._cpython import cbor as _cbor_fast

    bodies = (b"\x00", b"\x41\x00", b"\x61a", b"\x80", b"\xa0", b"\x82\x00\x00", b"\x1a\x00\x01\x00\x00")
    interpreted = set()
    for tag in [*range(70000), 55799, 2**32, 2**64 - 1]:
        for body in bodies:
            try:
                value = cbor2.loads(cbor.head(6, tag) + body)
            except Exception:  # noqa: BLE001 - a tag cbor2 decodes by itself and rejects here
                interpreted.add(tag)
                break
            if not (type(value) is cbor2.CBORTag and value.tag == tag):
                interpreted.add(tag)
                break
    missing = sorted(interpreted - set(_cbor_fast.CBOR2_SEMANTIC_TAGS))
    assert not missing, f"cbor2 {cbor2.__version__} interprets tags {missing}: add them to CBOR2_SEMANTIC_TAGS"
