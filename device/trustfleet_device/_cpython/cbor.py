"""CPython fast path for cbor.decode, through cbor2.

Not shipped to boards. Importing the package registers it with
cbor.use_fast_decoder when cbor2 imports (trustfleet_device/__init__.py).

cbor2 is fast but lenient (it accepts duplicate-free but unordered maps,
non-shortest integers, trailing bytes, floats, many tags). So this path
accepts a document only when one walk over cbor2's result proves it is
exactly what the strict decoder would accept:

- every value is of a type the strict decoder produces, tags allowed;
- depth, per-container counts, total items and string lengths are within
  the same Limits, counted the same way;
- map keys (int or text) appear in strictly increasing bytewise order of
  their encodings, which is also how cbor2 handed them to us (CPython dicts
  keep insertion order);
- the length of the deterministic encoding of the result equals the input
  length. Each item's deterministic form is its shortest, so equal totals
  mean every item was shortest and nothing trailed.

Anything else, including any cbor2 exception, is decided by the strict
decoder instead, so both paths always give the same answer or the same
error class.
"""

import cbor2

from trustfleet_device import cbor as _strict
from trustfleet_device.cbor import Decoder, Tag, head

_MAX_INT = 0xFFFFFFFFFFFFFFFF


class _NotStrict(Exception):
    """The fast walk cannot prove strict acceptance; defer to the pure decoder."""


# Tags cbor2 turns into other values by itself (bignums into ints, shared
# references into the shared object, dates, sets...). The walk would never
# see them, so refuse them inside cbor2 and let the strict decoder answer.
# tests/test_cbor.py probes cbor2 and fails if a new version adds one.
CBOR2_SEMANTIC_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                       260, 261, 1004, 43000, 55799)


def _refuse_semantic(decoder, *args):
    raise _NotStrict


_NO_SEMANTICS = {tag: _refuse_semantic for tag in CBOR2_SEMANTIC_TAGS}


def _head_len(n):
    """Bytes taken by a CBOR head whose argument is n (n >= 0)."""
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    if n <= _MAX_INT:
        return 9
    raise _NotStrict


_FROZENDICT = getattr(cbor2, "frozendict", dict)

# Maps of the same shape repeat (every pin-set has the same keys in the same
# order), so the order check runs once per shape: a tuple of text keys maps to
# (bytes their encodings take, longest key in bytes). A text key equals nothing
# but the same text; an int key also equals True, 1.0..., so a shape of int keys
# (COSE headers) counts only after every key is checked to be an int.
_SHAPES = {}
_INT_SHAPES = {}
_SHAPES_MAX = 256


def _key_shape(v, max_string):
    """Bytes v's keys take encoded, after checking their types, sizes and strict order."""
    total = 0
    longest = 0
    text = True
    previous = None
    for k in v:
        tk = type(k)
        if tk is str:
            body = k.encode("utf-8")
            n = len(body)
            if n > max_string:
                raise _NotStrict
            if n > longest:
                longest = n
            key = head(3, n) + body
        elif tk is int:
            text = False
            key = head(0, k) if k >= 0 else head(1, -1 - k)
        else:
            raise _NotStrict
        if previous is not None and key <= previous:
            raise _NotStrict
        previous = key
        total += len(key)
    if text and len(_SHAPES) < _SHAPES_MAX:
        _SHAPES[tuple(v)] = (total, longest)
    elif not text and longest == 0 and len(_INT_SHAPES) < _SHAPES_MAX:
        _INT_SHAPES[tuple(v)] = (total, 0)
    return total


def _walk(value, limits, tags, depth=0, items=1):
    """Return (deterministic encoded size of value, whether it holds a tag), checking every rule.

    `value` sits at `depth`; `items` data items were counted before it (1: itself).
    """
    max_depth = limits.max_depth
    max_items = limits.max_items
    # Every inline size below assumes a string under 2**32 bytes; a larger cap
    # only sends such a string to the strict decoder.
    max_string = limits.max_string if limits.max_string < 0x100000000 else 0xFFFFFFFF
    # Arrays this short are walked inline (anchors): a one-byte head, and never over max_items.
    short = 24 if max_items >= 23 else max_items + 1
    state = [items, False]  # data items so far; whether a tag was met

    def size(v, depth):
        # `v` sits at `depth`, which the caller has checked against max_depth.
        t = type(v)
        if t is dict or t is _FROZENDICT:
            # cbor2 returns maps under a tag as frozendicts, which keep the input order.
            n = len(v)
            if n > max_items or (n and depth + 1 > max_depth):
                raise _NotStrict
            state[0] += 2 * n
            keys = tuple(v)
            shape = _SHAPES.get(keys)
            if shape is None:
                shape = _INT_SHAPES.get(keys)
                if shape is not None:
                    for k in keys:
                        if type(k) is not int:
                            shape = None
                            break
            if shape is not None and shape[1] <= max_string:
                total = _head_len(n) + shape[0]
            else:
                total = _head_len(n) + _key_shape(v, max_string)
            d = depth + 1
            for x in v.values():
                tx = type(x)
                if tx is str and x.isascii():
                    m = len(x)
                    if m > max_string:
                        raise _NotStrict
                    total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                elif tx is bool:
                    total += 1
                elif tx is int and 0 <= x < 0x100000000:
                    total += 1 if x < 24 else 2 if x < 0x100 else 3 if x < 0x10000 else 5
                elif tx is bytes:
                    m = len(x)
                    if m > max_string:
                        raise _NotStrict
                    total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                elif tx is list and len(x) < short and d < max_depth:
                    # Short arrays of strings (pins, URIs) inline too.
                    state[0] += len(x)
                    total += 1
                    for y in x:
                        ty = type(y)
                        if ty is bytes:
                            m = len(y)
                            if m > max_string:
                                raise _NotStrict
                            total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                        elif ty is str and y.isascii():
                            m = len(y)
                            if m > max_string:
                                raise _NotStrict
                            total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                        else:
                            total += size(y, d + 1)
                else:
                    total += size(x, d)
            return total
        if t is list or t is tuple:
            # cbor2 returns arrays under a tag as tuples.
            n = len(v)
            if n > max_items or (n and depth + 1 > max_depth):
                raise _NotStrict
            state[0] += n
            total = _head_len(n)
            d = depth + 1
            for x in v:
                tx = type(x)
                if tx is bytes:
                    m = len(x)
                    if m > max_string:
                        raise _NotStrict
                    total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                elif tx is int and 0 <= x < 0x100000000:
                    total += 1 if x < 24 else 2 if x < 0x100 else 3 if x < 0x10000 else 5
                elif tx is str and x.isascii():
                    m = len(x)
                    if m > max_string:
                        raise _NotStrict
                    total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                elif tx is list and len(x) < short and d < max_depth:
                    # Arrays of short arrays (anchors) dominate bundles: one level inline.
                    state[0] += len(x)
                    total += 1
                    for y in x:
                        ty = type(y)
                        if ty is bytes:
                            m = len(y)
                            if m > max_string:
                                raise _NotStrict
                            total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                        elif ty is int and 0 <= y < 0x100000000:
                            total += 1 if y < 24 else 2 if y < 0x100 else 3 if y < 0x10000 else 5
                        else:
                            total += size(y, d + 1)
                else:
                    total += size(x, d)
            return total
        if t is bytes:
            n = len(v)
            if n > max_string:
                raise _NotStrict
            return n + (1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
        if t is str:
            n = len(v) if v.isascii() else len(v.encode("utf-8"))
            if n > max_string:
                raise _NotStrict
            return n + (1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
        if t is int:
            return _head_len(v) if v >= 0 else _head_len(-1 - v)
        if t is bool or v is None:
            return 1
        if t is cbor2.CBORTag:
            if v.tag not in tags or depth + 1 > max_depth:
                raise _NotStrict
            state[0] += 1
            state[1] = True
            return _head_len(v.tag) + size(v.value, depth + 1)
        raise _NotStrict

    total = size(value, depth)
    if state[0] > limits.max_total_items:
        raise _NotStrict
    return total, state[1]


def _convert_tags(value):
    """Replace cbor2.CBORTag with our Tag, so callers see one type on every runtime."""
    kind = type(value)
    if kind is cbor2.CBORTag:
        return Tag(value.tag, _convert_tags(value.value))
    if kind is list or kind is tuple:
        return [_convert_tags(v) for v in value]
    if kind is dict or kind is _FROZENDICT:
        return {k: _convert_tags(v) for k, v in value.items()}
    return value


def _outer_tag(data, tags):
    """(tag number, its head's length) when data starts with an allowed tag in shortest form, else (None, 0)."""
    first = data[0]
    if first >> 5 != 6:
        return None, 0
    ai = first & 0x1F
    if ai < 24:
        number, start = ai, 1
    elif ai == 24 and len(data) > 2:
        number, start = data[1], 2
    elif ai == 25 and len(data) > 3:
        number, start = (data[1] << 8) | data[2], 3
    else:
        return None, 0
    if number not in tags or _head_len(number) != start:
        return None, 0
    return number, start


def decode(data, limits, tags):
    """Same contract as cbor.decode. Raises: DecodeError."""
    if 0 < len(data) <= limits.max_document:
        try:
            # A tag around the whole document (COSE) is read here, so cbor2 hands back
            # mutable lists and dicts: under a tag it builds tuples and frozendicts,
            # which would all have to be copied.
            number, start = _outer_tag(data, tags) if tags else (None, 0)
            if number is not None:
                if limits.max_depth < 1:
                    raise _NotStrict
                data_in = memoryview(data)[start:]
            else:
                data_in = data
            value = cbor2.loads(
                data_in, allow_indefinite=False, allow_duplicate_keys=False,
                max_depth=limits.max_depth + 2, semantic_decoders=_NO_SEMANTICS,
            )
            if number is None:
                total, tagged = _walk(value, limits, tags)
            else:
                total, tagged = _walk(value, limits, tags, 1, 2)
                total += start
            if total == len(data):
                if tagged:
                    value = _convert_tags(value)
                return value if number is None else Tag(number, value)
        except (_NotStrict, Exception):  # noqa: BLE001 - any doubt goes to the strict decoder
            pass
    return Decoder(data, limits, tags).decode_all()


_strict.use_fast_decoder(decode, "cbor2")
