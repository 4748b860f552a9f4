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

from io import BytesIO

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


# Encoded text keys, for the order check. Payload keys repeat a lot
# ("domain", "pins", ...), so this stays tiny and saves most of the work.
_FROZENDICT = getattr(cbor2, "frozendict", dict)

_KEY_CACHE = {}
_KEY_CACHE_MAX = 512


def _text_key(k, max_string):
    raw = _KEY_CACHE.get(k)
    if raw is None:
        body = k.encode("utf-8")
        if len(body) > max_string:
            raise _NotStrict
        raw = head(3, len(body)) + body
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[k] = raw
    return raw


def _walk(value, limits, tags):
    """Return (deterministic encoded size of value, number of items), checking every rule."""
    max_depth = limits.max_depth
    max_items = limits.max_items
    max_string = limits.max_string
    items = [1]

    def text_size(v):
        n = len(v) if v.isascii() else len(v.encode("utf-8"))
        if n > max_string:
            raise _NotStrict
        return n + _head_len(n)

    def size(v, depth):
        # `v` sits at `depth`, which the caller has checked against max_depth.
        t = type(v)
        if t is bytes:
            n = len(v)
            if n > max_string:
                raise _NotStrict
            return n + _head_len(n)
        if t is str:
            return text_size(v)
        if t is int:
            return _head_len(v) if v >= 0 else _head_len(-1 - v)
        if t is bool or v is None:
            return 1
        if t is list or t is tuple:
            # cbor2 returns arrays under a tag as tuples.
            n = len(v)
            if n > max_items or (n and depth + 1 > max_depth):
                raise _NotStrict
            items[0] += n
            total = _head_len(n)
            d = depth + 1
            for x in v:
                tx = type(x)
                if tx is bytes:
                    m = len(x)
                    if m > max_string:
                        raise _NotStrict
                    # max_string < 2**32, so at most a 5-byte head.
                    total += m + (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else 5)
                elif tx is int and 0 <= x < 0x100000000:
                    total += 1 if x < 24 else 2 if x < 0x100 else 3 if x < 0x10000 else 5
                elif tx is list and d < max_depth and len(x) < 24:
                    # Arrays of short arrays (anchors) dominate bundles: one level inline.
                    items[0] += len(x)
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
        if t is dict or t is _FROZENDICT:
            # ... and maps under a tag as frozendicts, which keep the input order.
            n = len(v)
            if n > max_items or (n and depth + 1 > max_depth):
                raise _NotStrict
            items[0] += 2 * n
            total = _head_len(n)
            d = depth + 1
            previous = None
            for k, x in v.items():
                tk = type(k)
                if tk is str:
                    key = _text_key(k, max_string)
                elif tk is int:
                    key = head(0, k) if k >= 0 else head(1, -1 - k)
                else:
                    raise _NotStrict
                if previous is not None and key <= previous:
                    raise _NotStrict
                previous = key
                total += len(key) + size(x, d)
            return total
        if t is cbor2.CBORTag:
            if v.tag not in tags or depth + 1 > max_depth:
                raise _NotStrict
            items[0] += 1
            return _head_len(v.tag) + size(v.value, depth + 1)
        raise _NotStrict

    total = size(value, 0)
    if items[0] > limits.max_total_items:
        raise _NotStrict
    return total


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


def decode(data, limits, tags):
    """Same contract as cbor.decode. Raises: DecodeError."""
    if len(data) <= limits.max_document:
        try:
            fp = BytesIO(data)
            value = cbor2.CBORDecoder(
                fp, allow_indefinite=False, allow_duplicate_keys=False,
                max_depth=limits.max_depth + 2, semantic_decoders=_NO_SEMANTICS,
            ).decode()
            if _walk(value, limits, tags) == len(data):
                return _convert_tags(value) if tags else value
        except (_NotStrict, Exception):  # noqa: BLE001 - any doubt goes to the strict decoder
            pass
    return Decoder(data, limits, tags).decode_all()


_strict.use_fast_decoder(decode, "cbor2")
