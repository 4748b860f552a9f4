"""Strict, bounded CBOR (RFC 8949) for signed documents.

Trusts nothing it is given. Accepts only the deterministic encoding of
RFC 8949 section 4.2.1 and only the data model trustfleet uses:

- unsigned and negative integers (major types 0 and 1), shortest form;
- byte and text strings (2, 3) of definite length; text must be valid UTF-8;
- arrays and maps (4, 5) of definite length; map keys must be integers or
  text strings, strictly increasing in the bytewise order of their
  encodings (so a duplicate key is refused too);
- tags (6) only from the set the caller allows (COSE needs 18 and 98);
- false, true and null.

Refused with DecodeError: floats, undefined and other simple values,
indefinite lengths, non-shortest arguments, reserved additional
information, trailing bytes, and unsupported tags. Every length and count
is checked against Limits before anything is allocated, so a 5-byte header
that claims a 4 GB string costs nothing.

The encoder writes the same deterministic form; it is what the signer uses
and what the verifier uses to rebuild the COSE Sig_structure.
"""

import sys

from trustfleet_device.errors import DecodeError, LimitError
from trustfleet_device.limits import DEFAULT

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_UINT = const(0)
_NINT = const(1)
_BSTR = const(2)
_TSTR = const(3)
_ARRAY = const(4)
_MAP = const(5)
_TAG = const(6)
_SIMPLE = const(7)

_FALSE = const(20)
_TRUE = const(21)
_NULL = const(22)

# MicroPython's UTF-8 check lets surrogates and overlong forms through;
# CPython's does not. Validate ourselves there so both runtimes agree.
_STRICT_UTF8_BUILTIN = sys.implementation.name != "micropython"

_MAX_ARG = 0xFFFFFFFFFFFFFFFF


class Tag:
    """A CBOR tag: number plus the tagged value."""

    def __init__(self, number, value):
        self.number = number
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.number == other.number and self.value == other.value

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Tag(%d, %r)" % (self.number, self.value)


def _check_utf8(b):
    """Raise DecodeError unless b is well-formed UTF-8 (RFC 3629)."""
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c < 0x80:
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif c == 0xE0:
            need, lo, hi = 2, 0xA0, 0xBF
        elif c == 0xED:
            need, lo, hi = 2, 0x80, 0x9F
        elif 0xE1 <= c <= 0xEF:
            need, lo, hi = 2, 0x80, 0xBF
        elif c == 0xF0:
            need, lo, hi = 3, 0x90, 0xBF
        elif 0xF1 <= c <= 0xF3:
            need, lo, hi = 3, 0x80, 0xBF
        elif c == 0xF4:
            need, lo, hi = 3, 0x80, 0x8F
        else:
            raise DecodeError("text string is not valid UTF-8")
        if i + need >= n:
            raise DecodeError("text string is not valid UTF-8")
        c1 = b[i + 1]
        if c1 < lo or c1 > hi:
            raise DecodeError("text string is not valid UTF-8")
        for k in range(2, need + 1):
            if b[i + k] & 0xC0 != 0x80:
                raise DecodeError("text string is not valid UTF-8")
        i += need + 1


def _text(raw):
    if not _STRICT_UTF8_BUILTIN:
        _check_utf8(raw)
    try:
        return str(raw, "utf-8")
    except UnicodeError:
        raise DecodeError("text string is not valid UTF-8")


class Decoder:
    """Decode one CBOR data item from a buffer, strictly and within limits.

    data: bytes-like input. limits: a Limits. tags: tag numbers allowed.
    max_string: cap on any byte/text string (defaults to limits.max_string;
    the COSE envelope raises it to limits.max_document for the payload).
    """

    def __init__(self, data, limits=DEFAULT, tags=(), max_string=None):
        self.data = data
        self.end = len(data)
        self.pos = 0
        self.limits = limits
        self.tags = tags
        self.max_string = limits.max_string if max_string is None else max_string
        self.items = 0

    def decode_all(self):
        """Decode exactly one item that spans the whole input. Raises: DecodeError."""
        if self.end > self.limits.max_document:
            raise LimitError("document is %d bytes, limit is %d" % (self.end, self.limits.max_document))
        value = self.item(0)
        if self.pos != self.end:
            raise DecodeError("%d trailing bytes after the data item" % (self.end - self.pos))
        return value

    def _need(self, n):
        if n > self.end - self.pos:
            raise DecodeError("truncated input: need %d bytes at offset %d, have %d"
                              % (n, self.pos, self.end - self.pos))

    def _uint(self, n):
        self._need(n)
        data = self.data
        pos = self.pos
        v = 0
        for i in range(pos, pos + n):
            v = (v << 8) | data[i]
        self.pos = pos + n
        return v

    def head(self):
        """Read an initial byte and its argument; return (major, argument). Raises: DecodeError."""
        self._need(1)
        ib = self.data[self.pos]
        self.pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if major == _SIMPLE:
            return self._simple(ai)
        if ai < 24:
            return major, ai
        if ai == 24:
            arg = self._uint(1)
            floor = 24
        elif ai == 25:
            arg = self._uint(2)
            floor = 0x100
        elif ai == 26:
            arg = self._uint(4)
            floor = 0x10000
        elif ai == 27:
            arg = self._uint(8)
            floor = 0x100000000
        elif ai == 31:
            raise DecodeError("indefinite-length item at offset %d" % (self.tell() - 1))
        else:
            raise DecodeError("reserved additional information %d at offset %d" % (ai, self.tell() - 1))
        if arg < floor:
            # Name the head's first byte: the argument took 1 << (ai - 24) bytes after it.
            raise DecodeError("non-shortest encoding of argument %d at offset %d"
                              % (arg, self.tell() - 1 - (1 << (ai - 24))))
        return major, arg

    def _simple(self, ai):
        if ai == _FALSE or ai == _TRUE or ai == _NULL:
            return _SIMPLE, ai
        if 25 <= ai <= 27:
            raise DecodeError("floating-point values are not supported (offset %d)" % (self.tell() - 1))
        if ai == 31:
            raise DecodeError("unexpected break code at offset %d" % (self.tell() - 1))
        if ai == 24:
            raise DecodeError("one-byte simple values are not supported (offset %d)" % (self.tell() - 1))
        raise DecodeError("simple value %d is not supported (offset %d)" % (ai, self.tell() - 1))

    def _count(self):
        self.items += 1
        if self.items > self.limits.max_total_items:
            raise LimitError("more than %d data items" % self.limits.max_total_items)

    def item(self, depth):
        """Decode the next data item at nesting depth `depth`. Raises: DecodeError."""
        if depth > self.limits.max_depth:
            raise LimitError("nesting deeper than %d" % self.limits.max_depth)
        self._count()
        major, arg = self.head()
        if major == _UINT:
            return arg
        if major == _NINT:
            return -1 - arg
        if major == _BSTR:
            return bytes(self.take_string(arg))
        if major == _TSTR:
            return _text(self.take_string(arg))
        if major == _ARRAY:
            return self._array(arg, depth)
        if major == _MAP:
            return self._map(arg, depth)
        if major == _TAG:
            if arg not in self.tags:
                raise DecodeError("unsupported tag %d" % arg)
            return Tag(arg, self.item(depth + 1))
        # _SIMPLE: only false/true/null reach here.
        if arg == _FALSE:
            return False
        if arg == _TRUE:
            return True
        return None

    def take_string(self, length):
        """Return the next `length` bytes as a slice of the input, after the caps. Raises: DecodeError."""
        if length > self.max_string:
            raise LimitError("string of %d bytes, limit is %d" % (length, self.max_string))
        self._need(length)
        start = self.pos
        self.pos = start + length
        return self.data[start:self.pos]

    def remaining(self):
        """Bytes left in the input."""
        return self.end - self.pos

    def tell(self):
        """Offset of the next byte in the input."""
        return self.pos

    def _container_count(self, count, min_bytes, what):
        if count > self.limits.max_items:
            raise LimitError("%s of %d entries, limit is %d" % (what, count, self.limits.max_items))
        # Every entry takes at least one byte: refuse counts the input cannot hold.
        if count * min_bytes > self.remaining():
            raise DecodeError("truncated input: %s of %d entries at offset %d" % (what, count, self.tell()))

    def _array(self, count, depth):
        self._container_count(count, 1, "array")
        out = []
        for _ in range(count):
            out.append(self.item(depth + 1))
        return out

    def _map(self, count, depth):
        self._container_count(count, 2, "map")
        out = {}
        previous = None
        for _ in range(count):
            key, previous = self.map_key(depth + 1, previous)
            out[key] = self.item(depth + 1)
        return out

    def map_key(self, depth, previous):
        """Read one map key; return (key, its encoding). Refuses bad types, duplicates and disorder."""
        start = self.tell()
        key = self.item(depth)
        if not (type(key) is int or type(key) is str):
            raise DecodeError("map key at offset %d is not an integer or text string" % start)
        # Keys are shortest-form ints or strict UTF-8, so re-encoding gives
        # exactly the bytes received; the stream decoder may no longer hold them.
        encoded = encode(key)
        if previous is not None:
            if encoded == previous:
                raise DecodeError("duplicate map key %r" % (key,))
            if encoded < previous:
                raise DecodeError("map keys not in deterministic order at key %r" % (key,))
        return key, encoded


class StreamDecoder(Decoder):
    """A Decoder over a region [start, stop) of a source, read through a small window.

    `source` has read_at(offset, n) -> bytes (see source.py). Only the bytes
    of the item being decoded are held; skip() passes over a large string
    (a payload) without reading it.
    """

    def __init__(self, source, start, stop, limits=DEFAULT, tags=(), max_string=None, chunk=512):
        Decoder.__init__(self, b"", limits, tags, max_string)
        self.source = source
        self.base = start      # source offset of self.data[0]
        self.stop = stop
        self.chunk = chunk

    def remaining(self):
        return self.stop - self.base - self.pos

    def tell(self):
        return self.base + self.pos

    def _need(self, n):
        have = self.end - self.pos
        if n <= have:
            return
        if n > self.remaining():
            raise DecodeError("truncated input: need %d bytes at offset %d, have %d"
                              % (n, self.tell(), self.remaining()))
        want = n - have
        if want < self.chunk:
            want = self.chunk
        if want > self.remaining() - have:
            want = self.remaining() - have
        more = self.source.read_at(self.base + self.end, want)
        if len(more) != want:
            raise DecodeError("source ended early at offset %d" % (self.base + self.end))
        self.data = self.data[self.pos:self.end] + more
        self.base += self.pos
        self.pos = 0
        self.end = len(self.data)

    def skip(self, n):
        """Advance past n bytes without reading them. Raises: DecodeError."""
        if n > self.remaining():
            raise DecodeError("truncated input: cannot skip %d bytes at offset %d" % (n, self.tell()))
        if n <= self.end - self.pos:
            self.pos += n
            return
        self.base = self.tell() + n
        self.data = b""
        self.pos = self.end = 0

    def decode_all(self):
        """Decode one item that spans the whole region. Raises: DecodeError."""
        if self.stop - self.base > self.limits.max_document:
            raise LimitError("document is %d bytes, limit is %d"
                             % (self.stop - self.base, self.limits.max_document))
        value = self.item(0)
        if self.remaining():
            raise DecodeError("%d trailing bytes after the data item" % self.remaining())
        return value


def decode_pure(data, limits=DEFAULT, tags=()):
    """Decode with the pure-Python decoder only (every runtime). Raises: DecodeError."""
    return Decoder(data, limits, tags).decode_all()


# ---------------------------------------------------------------- encoding


def head(major, arg):
    """Encode an initial byte plus argument in shortest form."""
    if arg < 0 or arg > _MAX_ARG:
        raise ValueError("CBOR argument out of range: %d" % arg)
    mt = major << 5
    if arg < 24:
        return bytes((mt | arg,))
    if arg < 0x100:
        return bytes((mt | 24, arg))
    if arg < 0x10000:
        return bytes((mt | 25, arg >> 8, arg & 0xFF))
    if arg < 0x100000000:
        return bytes((mt | 26, arg >> 24, (arg >> 16) & 0xFF, (arg >> 8) & 0xFF, arg & 0xFF))
    out = bytearray(9)
    out[0] = mt | 27
    for i in range(8):
        out[8 - i] = (arg >> (8 * i)) & 0xFF
    return bytes(out)


def _encode_into(value, out):
    # bool before int: CPython's bool is an int subclass.
    if value is False:
        out.append(b"\xf4")
    elif value is True:
        out.append(b"\xf5")
    elif value is None:
        out.append(b"\xf6")
    elif type(value) is int:
        if value >= 0:
            out.append(head(_UINT, value))
        else:
            out.append(head(_NINT, -1 - value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(head(_BSTR, len(value)))
        out.append(bytes(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(head(_TSTR, len(raw)))
        out.append(raw)
    elif isinstance(value, (list, tuple)):
        out.append(head(_ARRAY, len(value)))
        for v in value:
            _encode_into(v, out)
    elif isinstance(value, dict):
        entries = []
        for k, v in value.items():
            if not (type(k) is int or isinstance(k, str)):
                raise ValueError("map key %r is not an integer or text string" % (k,))
            entries.append((encode(k), v))
        entries.sort(key=lambda e: e[0])
        out.append(head(_MAP, len(entries)))
        for i in range(len(entries)):
            if i and entries[i][0] == entries[i - 1][0]:
                raise ValueError("duplicate map key")
            out.append(entries[i][0])
            _encode_into(entries[i][1], out)
    elif isinstance(value, Tag):
        out.append(head(_TAG, value.number))
        _encode_into(value.value, out)
    else:
        raise ValueError("cannot encode %s in CBOR" % type(value).__name__)


def encode(value):
    """Encode `value` as deterministic CBOR (RFC 8949 section 4.2.1)."""
    out = []
    _encode_into(value, out)
    return b"".join(out)


# A decoder with the same answers that may take over decode(): on CPython,
# _cpython/cbor.py registers the cbor2 path when the package is imported.
_decode_fast = None
BACKEND = "pure"


def use_fast_decoder(fn, name):
    """Let `fn(data, limits, tags)` answer decode() from now on (None: back to the pure decoder)."""
    global _decode_fast, BACKEND
    _decode_fast = fn
    BACKEND = "pure" if fn is None else name


def decode(data, limits=DEFAULT, tags=()):
    """Decode one deterministic CBOR item spanning all of `data`. Raises: DecodeError."""
    if _decode_fast is not None:
        return _decode_fast(data, limits, tags)
    return Decoder(data, limits, tags).decode_all()
