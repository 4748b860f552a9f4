"""Rules of device/trustfleet_device/cbor.py that tests/test_cbor.py does not reach.

tests/test_cbor.py pins the decoding rules through `cbor.decode` and
`cbor.decode_pure`. This file pins what those two entry points cannot show
on CPython:

- the UTF-8 check the boards run (`_check_utf8`, used where the runtime's own
  decoder is lenient, as MicroPython's is): it must accept exactly what
  CPython's strict decoder accepts, byte for byte, at every range edge;
- the stream decoder (`StreamDecoder`) over a region [start, stop) of a
  source: the same values and refusals as the in-memory decoder, the size cap
  at and just over the boundary, truncation, trailing bytes, a source that
  ends early, `skip`, `tell` and `remaining` at region offsets other than 0;
- the decoder's pieces used by the streamed parsers (`head`, `take_string`,
  `map_key`, item counting) and the encoder's `head` at every length boundary.
"""

from __future__ import annotations

import itertools
import re

import pytest

from trustfleet_device import cbor
from trustfleet_device.cbor import Decoder, StreamDecoder, Tag
from trustfleet_device.errors import BundleError, DecodeError, LimitError
from trustfleet_device.limits import DEFAULT, Limits
from trustfleet_device.source import BytesSource


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def refusal(error, fn, *args, **kwargs) -> str:
    """Require exactly `error` (not a subclass, nor an IndexError from a broken check); return the message."""
    with pytest.raises(BundleError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return str(info.value)


# --------------------------------------------------------------------------- UTF-8 as the boards check it


def strict(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def board_check(b: bytes) -> bool:
    try:
        cbor._check_utf8(b)
    except DecodeError as exc:
        assert str(exc) == "text string is not valid UTF-8"
        return False
    return True


def test_board_utf8_check_agrees_with_cpython_on_every_one_and_two_byte_string():
    for n in (1, 2):
        for raw in itertools.product(range(256), repeat=n):
            b = bytes(raw)
            assert board_check(b) == strict(b), b.hex()


# Third and fourth bytes: each side of the continuation range (0x80..0xBF) and ASCII.
EDGES = (0x00, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xFF)
TAILS = [b""] + [bytes((c,)) for c in EDGES] + [bytes((c, d)) for c in EDGES for d in EDGES]


@pytest.mark.parametrize("lead", range(0x80, 0x100), ids=lambda v: f"{v:02x}")
def test_board_utf8_check_agrees_with_cpython_after_every_lead_byte(lead):
    """Every second byte after each lead byte, followed by each third and fourth byte edge."""
    for second in range(256):
        for tail in TAILS:
            b = bytes((lead, second)) + tail
            assert board_check(b) == strict(b), b.hex()
            b = b"a" + b + b"z"
            assert board_check(b) == strict(b), b.hex()


def test_board_utf8_check_accepts_long_mixed_text():
    text = "a\u00e9\u0800\ud7ff\ue000\uffff\U00010000\U0010ffff z" * 3
    cbor._check_utf8(text.encode("utf-8"))


def test_cpython_checks_text_with_its_own_strict_decoder_alone(monkeypatch):
    """The Python loop is for MicroPython, whose decoder is lenient; CPython's is strict and fast."""
    assert cbor._STRICT_UTF8_BUILTIN is True
    called = []
    monkeypatch.setattr(cbor, "_check_utf8", called.append)
    assert cbor.decode_pure(h("62 c3a9")) == "\u00e9"
    assert refusal(DecodeError, cbor.decode_pure, h("63 eda080")) == "text string is not valid UTF-8"
    assert called == []


def test_text_is_checked_by_the_board_rule_where_the_runtime_is_lenient(monkeypatch):
    monkeypatch.setattr(cbor, "_STRICT_UTF8_BUILTIN", False)
    called = []
    real = cbor._check_utf8
    monkeypatch.setattr(cbor, "_check_utf8", lambda b: called.append(bytes(b)) or real(b))
    assert cbor.decode_pure(h("62 c3a9")) == "\u00e9"
    assert called == [b"\xc3\xa9"]
    assert refusal(DecodeError, cbor.decode_pure, h("63 eda080")) == "text string is not valid UTF-8"


# --------------------------------------------------------------------------- stream decoder


class Counting(BytesSource):
    """A BytesSource that records every read."""

    def __init__(self, data):
        BytesSource.__init__(self, data)
        self.reads = []

    def read_at(self, offset, n):
        self.reads.append((offset, n))
        return BytesSource.read_at(self, offset, n)


def stream(data: bytes, start=0, stop=None, limits=DEFAULT, tags=(), chunk=512, pad=b""):
    """A StreamDecoder over `data` placed at `start` in a source (padding around it)."""
    if start > len(pad):
        raise ValueError("pad is too short")
    src = Counting(pad[:start] + data + pad[:7])
    return StreamDecoder(src, start, start + len(data) if stop is None else stop, limits, tags, chunk=chunk)


PAD = bytes(range(200, 256)) * 4  # bytes that are never a complete item on their own

VALUES = [
    0, 23, 24, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -1, -(2**64),
    b"", b"x" * 23, b"y" * 24, b"z" * 600, "", "\u00e9t\u00e9", "a" * 1000,
    [], [1, [2, [3]]], {}, {1: 2, "a": [b"b"]}, True, False, None,
    Tag(98, [b"", {}, b"p", []]), {"k" * 300: ["v" * 700, {1: b"w" * 513}]},
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
@pytest.mark.parametrize("chunk", [1, 3, 512])
@pytest.mark.parametrize("start", [0, 5, 130])
def test_stream_decoder_gives_the_in_memory_value(value, chunk, start):
    data = cbor.encode(value)
    d = stream(data, start, limits=DEFAULT, tags=(98,), chunk=chunk, pad=PAD)
    assert d.decode_all() == cbor.decode_pure(data, DEFAULT, (98,)) == value
    assert d.remaining() == 0 and d.tell() == start + len(data)


@pytest.mark.parametrize(
    "hx",
    ["18", "5a ffff", "62 61", "83 01 02", "a1 01", "d8 62 83", "18 05", "5f ff", "f9 0000",
     "f7", "a2 01 00 01 00", "a2 02 00 01 00", "a1 40 00", "c1 00", "01 00", "63 eda080", "1c"],
)
@pytest.mark.parametrize("start", [0, 9])
def test_stream_decoder_refuses_what_the_in_memory_decoder_refuses(hx, start):
    data = h(hx)
    with pytest.raises(DecodeError) as info:
        cbor.decode_pure(data, DEFAULT, (98,))
    expected = str(info.value)
    got = refusal(type(info.value), stream(data, start, tags=(98,), pad=PAD).decode_all)
    # The same message, with offsets in the source: the region starts at `start`.
    assert got == re.sub(r"offset (\d+)", lambda m: f"offset {int(m.group(1)) + start}", expected)


def test_stream_decoder_names_source_offsets():
    d = stream(h("83 01 02"), 9, pad=PAD)
    assert refusal(DecodeError, d.decode_all) == "truncated input: array of 3 entries at offset 10"
    d = stream(h("82 01 18 05"), 9, pad=PAD)
    assert refusal(DecodeError, d.decode_all) == "non-shortest encoding of argument 5 at offset 11"
    d = stream(h("82 01 19 01"), 9, pad=PAD)
    assert refusal(DecodeError, d.decode_all) == "truncated input: need 2 bytes at offset 12, have 1"


@pytest.mark.parametrize("start", [0, 11])
def test_stream_decoder_size_cap_at_and_just_over_the_boundary(start):
    data = cbor.encode(b"x" * 20)  # 21 bytes
    assert stream(data, start, limits=Limits(max_document=21), pad=PAD).decode_all() == b"x" * 20
    d = stream(data, start, limits=Limits(max_document=20), pad=PAD)
    assert refusal(LimitError, d.decode_all) == "document is 21 bytes, limit is 20"
    assert d.source.reads == []  # refused before reading anything


def test_stream_decoder_refuses_trailing_bytes_in_its_region():
    data = cbor.encode([1, 2]) + b"\x00\x00"
    assert refusal(DecodeError, stream(data, 4, pad=PAD).decode_all) == "2 trailing bytes after the data item"
    # What lies after the region is not its business.
    d = stream(cbor.encode([1, 2]), 4, pad=PAD)
    assert d.decode_all() == [1, 2]


def test_stream_decoder_never_reads_past_its_region():
    data = cbor.encode({"a": b"b" * 40})
    for chunk in (1, 4, 512):
        d = stream(data, 6, chunk=chunk, pad=PAD)
        d.decode_all()
        assert all(off >= 6 and off + n <= 6 + len(data) for off, n in d.source.reads), d.source.reads
        assert sum(n for _, n in d.source.reads) == len(data)  # and each byte once


def test_stream_decoder_reads_in_chunks_of_at_least_chunk_bytes():
    data = cbor.encode(list(range(100)))
    d = stream(data, 0, chunk=16)
    d.decode_all()
    assert [n for _, n in d.source.reads[:-1]] == [16] * (len(d.source.reads) - 1)
    assert d.source.reads[-1][1] == len(data) - 16 * (len(d.source.reads) - 1)


def test_stream_decoder_reads_only_when_its_window_runs_out():
    # 18 18: a two-byte head, exactly one window of 2; nothing more is read for it.
    d = stream(h("18 18") + h("00") * 8, 0, chunk=2)
    assert d.head() == (0, 24)
    assert d.source.reads == [(0, 2)]
    # A string longer than the window: the rest of it is read in one go, then one byte.
    data = cbor.encode([b"x" * 100, 1])
    d = stream(data, 0, chunk=16)
    assert d.decode_all() == [b"x" * 100, 1]
    assert d.source.reads == [(0, 16), (16, 87), (103, 1)]


def test_stream_decoder_refuses_a_source_that_ends_early():
    data = cbor.encode(["a" * 50, "b" * 50])
    src = BytesSource(data[:60])
    d = StreamDecoder(src, 0, len(data), DEFAULT, chunk=8)
    assert refusal(DecodeError, d.decode_all) == "source ended early at offset 53"


def test_skip_passes_over_bytes_without_reading_them():
    data = cbor.encode([b"p" * 2000, 7])
    d = stream(data, 3, chunk=16, pad=PAD)
    assert d.head() == (4, 2)
    major, length = d.head()
    assert (major, length) == (2, 2000)
    before = list(d.source.reads)
    at = d.tell()
    d.skip(length)
    assert d.source.reads == before
    assert d.tell() == at + 2000 and d.remaining() == 1
    assert d.item(1) == 7
    assert d.remaining() == 0


def test_skip_within_the_buffered_window():
    data = cbor.encode([b"ab", 7, 8])
    d = stream(data, 2, chunk=64, pad=PAD)
    d.head()
    assert d.head() == (2, 2)
    d.skip(2)
    assert d.tell() == 2 + 4 and d.remaining() == 2
    assert d.item(1) == 7 and d.item(1) == 8


def test_skip_just_past_the_buffered_window():
    # 84 01 02 03 44 "abcd" 05 with a window of 8: after the 44 head, 3 of the 4 string
    # bytes are buffered; skipping the 4 must continue at the 05, not inside the string.
    data = h("84 01 02 03 44 61626364 05")
    d = stream(data, 0, chunk=8)
    assert d.head() == (4, 4)
    assert [d.item(1) for _ in range(3)] == [1, 2, 3]
    assert d.head() == (2, 4)
    d.skip(4)
    assert d.tell() == 9 and d.remaining() == 1
    assert d.item(1) == 5


def test_skip_exactly_to_the_end_of_the_region_and_not_one_byte_more():
    data = cbor.encode(b"q" * 30)
    d = stream(data, 5, chunk=4, pad=PAD)
    assert d.head() == (2, 30)
    d.skip(30)
    assert d.remaining() == 0 and d.tell() == 5 + 32
    d = stream(data, 5, chunk=4, pad=PAD)
    d.head()
    msg = refusal(DecodeError, d.skip, 31)
    assert msg == "truncated input: cannot skip 31 bytes at offset 7"


def test_stream_decoder_depth_starts_at_0():
    nested = b"\x81" * DEFAULT.max_depth + b"\x00"
    assert stream(nested, 3, pad=PAD).decode_all() == cbor.decode_pure(nested)
    msg = refusal(LimitError, stream(b"\x81" + nested, 3, pad=PAD).decode_all)
    assert msg == f"nesting deeper than {DEFAULT.max_depth}"


def test_tell_and_remaining_follow_the_region():
    data = cbor.encode([1, 2, 3])
    d = stream(data, 17, chunk=2, pad=PAD)
    assert (d.tell(), d.remaining()) == (17, 4)
    d.head()
    assert (d.tell(), d.remaining()) == (18, 3)
    d.item(1)
    d.item(1)
    assert (d.tell(), d.remaining()) == (20, 1)
    m = Decoder(data)
    assert (m.tell(), m.remaining()) == (0, 4)
    m.head()
    assert (m.tell(), m.remaining()) == (1, 3)


# --------------------------------------------------------------------------- decoder pieces


def test_take_string_returns_the_bytes_after_the_cap():
    d = Decoder(b"abcdef", Limits(max_string=4))
    assert bytes(d.take_string(4)) == b"abcd" and d.tell() == 4
    assert refusal(LimitError, d.take_string, 5) == "string of 5 bytes, limit is 4"
    assert refusal(DecodeError, d.take_string, 3) == "truncated input: need 3 bytes at offset 4, have 2"
    # The envelope raises the string cap to the document size.
    d = Decoder(b"\x00" * 10, Limits(max_string=4), max_string=8)
    assert len(d.take_string(8)) == 8


def test_map_key_refuses_duplicates_and_disorder_and_returns_the_encoding():
    d = Decoder(cbor.encode(["a", "a", "b", 1, 24, 23]))
    d.head()
    assert d.map_key(1, None) == ("a", b"\x61a")
    assert refusal(DecodeError, d.map_key, 1, b"\x61a") == "duplicate map key 'a'"
    assert d.map_key(1, b"\x61a") == ("b", b"\x61b")
    assert refusal(DecodeError, d.map_key, 1, b"\x61b") == "map keys not in deterministic order at key 1"
    assert d.map_key(1, b"\x01") == (24, b"\x18\x18")
    assert d.map_key(1, b"\x16") == (23, b"\x17")


def test_items_are_counted_one_by_one():
    d = Decoder(cbor.encode([1, [2, 3]]), Limits(max_total_items=5))
    assert d.item(0) == [1, [2, 3]] and d.items == 5
    d = Decoder(cbor.encode([1, [2, 3]]), Limits(max_total_items=4))
    assert refusal(LimitError, d.item, 0) == "more than 4 data items"
    d = Decoder(b"\x01", Limits(max_total_items=1))
    d._count()
    assert refusal(LimitError, d._count) == "more than 1 data items"


def test_depth_is_counted_from_the_caller_depth():
    d = Decoder(cbor.encode([[0]]), Limits(max_depth=3))
    assert d.item(1) == [[0]]
    d = Decoder(cbor.encode([[0]]), Limits(max_depth=3))
    assert refusal(LimitError, d.item, 2) == "nesting deeper than 3"


@pytest.mark.parametrize("decode", [cbor.decode, cbor.decode_pure], ids=["decode", "decode_pure"])
def test_map_keys_sit_one_level_below_their_map(decode):
    deepest = DEFAULT.max_depth
    # A map one level above the cap: its keys and values are at the cap.
    ok = b"\x81" * (deepest - 1) + h("a1 01 02")
    assert decode(ok) is not None
    # A map at the cap: its key is one level too deep, whatever the key is.
    for key in (h("01"), h("80"), h("f9 0000")):
        raw = b"\x81" * deepest + h("a1") + key + h("00")
        assert refusal(LimitError, decode, raw) == f"nesting deeper than {deepest}"


def test_container_count_needs_one_byte_per_entry_and_two_per_map_entry():
    assert refusal(DecodeError, cbor.decode_pure, h("83 0102")).startswith("truncated input: array of 3")
    assert cbor.decode_pure(h("83 010203")) == [1, 2, 3]
    assert refusal(DecodeError, cbor.decode_pure, h("a2 0102 03")).startswith("truncated input: map of 2")
    assert cbor.decode_pure(h("a2 0102 0304")) == {1: 2, 3: 4}


@pytest.mark.parametrize("ai, width", [(24, 1), (25, 2), (26, 4), (27, 8)])
def test_head_argument_widths_and_shortest_floor(ai, width):
    floor = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}[ai]
    for major in (0, 2, 4):
        d = Decoder(bytes([major << 5 | ai]) + floor.to_bytes(width, "big"))
        assert d.head() == (major, floor) and d.remaining() == 0
        below = floor - 1
        d = Decoder(bytes([major << 5 | ai]) + below.to_bytes(width, "big"))
        assert refusal(DecodeError, d.head) == f"non-shortest encoding of argument {below} at offset 0"
    top = (1 << 8 * width) - 1
    assert Decoder(bytes([ai]) + top.to_bytes(width, "big")).head() == (0, top)


@pytest.mark.parametrize(
    "ib, message",
    [
        (0x1C, "reserved additional information 28 at offset 0"),
        (0x5D, "reserved additional information 29 at offset 0"),
        (0x9E, "reserved additional information 30 at offset 0"),
        (0x1F, "indefinite-length item at offset 0"),
        (0xBF, "indefinite-length item at offset 0"),
        (0xF8, None),
        (0xF9, "floating-point values are not supported (offset 0)"),
        (0xFA, "floating-point values are not supported (offset 0)"),
        (0xFB, "floating-point values are not supported (offset 0)"),
        (0xFF, "unexpected break code at offset 0"),
        (0xF7, "simple value 23 is not supported (offset 0)"),
        (0xF3, "simple value 19 is not supported (offset 0)"),
        (0xFC, "simple value 28 is not supported (offset 0)"),
    ],
)
def test_head_refusals_name_the_offset(ib, message):
    d = Decoder(bytes([0x00, ib]) + bytes(8))
    d.head()
    got = refusal(DecodeError, d.head)
    assert got == (message or "one-byte simple values are not supported (offset 0)").replace(
        "offset 0", "offset 1")


def test_head_of_simple_values():
    assert [Decoder(bytes([b])).head() for b in (0xF4, 0xF5, 0xF6)] == [(7, 20), (7, 21), (7, 22)]
    assert [cbor.decode_pure(bytes([b])) for b in (0xF4, 0xF5, 0xF6)] == [False, True, None]
    assert Decoder(b"\x17").head() == (0, 23)
    assert Decoder(b"\x37").head() == (1, 23)


# --------------------------------------------------------------------------- which decoder


def test_decode_takes_the_fast_path_when_cbor2_is_there(monkeypatch):
    assert cbor._decode_fast is not None and cbor.BACKEND == "cbor2"
    calls = []

    def fast(data, limits, tags):
        calls.append((data, limits, tags))
        return "fast"

    monkeypatch.setattr(cbor, "_decode_fast", fast)
    assert cbor.decode(b"\x01", DEFAULT, (98,)) == "fast"
    assert calls == [(b"\x01", DEFAULT, (98,))]
    monkeypatch.setattr(cbor, "_decode_fast", None)
    assert cbor.decode(b"\x01") == 1


# --------------------------------------------------------------------------- encoder heads


@pytest.mark.parametrize(
    "arg, hx",
    [
        (0, "00"), (23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"), (0xFFFF, "19ffff"),
        (0x10000, "1a00010000"), (0xFFFFFFFF, "1affffffff"), (0x100000000, "1b0000000100000000"),
        (0x0102030405060708, "1b0102030405060708"), (2**64 - 1, "1bffffffffffffffff"),
    ],
)  # fmt: skip
def test_encoder_head_is_shortest_at_every_width_boundary(arg, hx):
    assert cbor.head(0, arg) == h(hx)
    assert cbor.head(5, arg)[0] == 0xA0 | h(hx)[0] and cbor.head(5, arg)[1:] == h(hx)[1:]


@pytest.mark.parametrize("arg", [-1, 2**64])
def test_encoder_head_refuses_arguments_out_of_range(arg):
    with pytest.raises(ValueError, match="CBOR argument out of range"):
        cbor.head(0, arg)


def test_encoder_writes_bytes_like_values_as_byte_strings():
    for value in (bytearray(b"ab"), memoryview(b"ab"), b"ab"):
        assert cbor.encode(value) == h("42 6162")
    assert cbor.encode((1, "a")) == h("82 01 6161")
    assert cbor.encode({"b": 1, "a": [True, None, False]}) == h("a2 6161 83f5f6f4 6162 01")


def test_tag_equality_and_repr():
    assert Tag(98, [1]) == Tag(98, [1])
    assert (Tag(98, [1]) != Tag(98, [1])) is False
    assert Tag(98, [1]) != Tag(18, [1]) and Tag(98, [1]) != Tag(98, [2]) and Tag(98, 1) != 1
    assert repr(Tag(18, b"x")) == "Tag(18, b'x')"
