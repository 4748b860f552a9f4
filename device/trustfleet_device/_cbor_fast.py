"""CPython fast path for cbor.decode, through cbor2.

Not shipped to boards: cbor.decode imports this only when it can.

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

from trustfleet_device.cbor import Decoder, Tag, head

_MAX_INT = 0xFFFFFFFFFFFFFFFF
_MIN_INT = -0x10000000000000000


class _NotStrict(Exception):
    """The fast walk cannot prove strict acceptance; defer to the pure decoder."""


class _Walk:
    def __init__(self, limits, tags):
        self.limits = limits
        self.tags = tags
        self.items = 0

    def size(self, value, depth):
        """Return the deterministic encoded size of value, checking every rule on the way."""
        if depth > self.limits.max_depth:
            raise _NotStrict
        self.items += 1
        if self.items > self.limits.max_total_items:
            raise _NotStrict
        kind = type(value)
        if kind is bytes:
            return self._string(len(value), 2)
        if kind is str:
            return self._string(len(value.encode("utf-8")), 3)
        if kind is int:
            if value >= 0:
                if value > _MAX_INT:
                    raise _NotStrict
                return len(head(0, value))
            if value < _MIN_INT:
                raise _NotStrict
            return len(head(1, -1 - value))
        if kind is list:
            if len(value) > self.limits.max_items:
                raise _NotStrict
            total = len(head(4, len(value)))
            for v in value:
                total += self.size(v, depth + 1)
            return total
        if kind is dict:
            return self._map(value, depth)
        if kind is bool or value is None:
            return 1
        if kind is cbor2.CBORTag:
            if value.tag not in self.tags:
                raise _NotStrict
            return len(head(6, value.tag)) + self.size(value.value, depth + 1)
        raise _NotStrict

    def _string(self, length, major):
        if length > self.limits.max_string:
            raise _NotStrict
        return len(head(major, length)) + length

    def _map(self, value, depth):
        if len(value) > self.limits.max_items:
            raise _NotStrict
        total = len(head(5, len(value)))
        previous = None
        for k, v in value.items():
            kind = type(k)
            if kind is int:
                key = head(0, k) if k >= 0 else head(1, -1 - k)
                if k > _MAX_INT or k < _MIN_INT:
                    raise _NotStrict
            elif kind is str:
                raw = k.encode("utf-8")
                if len(raw) > self.limits.max_string:
                    raise _NotStrict
                key = head(3, len(raw)) + raw
            else:
                raise _NotStrict
            if previous is not None and key <= previous:
                raise _NotStrict
            previous = key
            self.items += 1
            if self.items > self.limits.max_total_items:
                raise _NotStrict
            total += len(key) + self.size(v, depth + 1)
        return total


def _convert_tags(value):
    """Replace cbor2.CBORTag with our Tag, so callers see one type on every runtime."""
    kind = type(value)
    if kind is cbor2.CBORTag:
        return Tag(value.tag, _convert_tags(value.value))
    if kind is list:
        return [_convert_tags(v) for v in value]
    if kind is dict:
        return {k: _convert_tags(v) for k, v in value.items()}
    return value


def decode(data, limits, tags):
    """Same contract as cbor.decode. Raises: DecodeError."""
    if len(data) <= limits.max_document:
        try:
            fp = BytesIO(data)
            value = cbor2.CBORDecoder(
                fp, allow_indefinite=False, allow_duplicate_keys=False,
                max_depth=limits.max_depth + 2,
            ).decode()
            walk = _Walk(limits, tags)
            if walk.size(value, 0) == len(data):
                return _convert_tags(value) if tags else value
        except (_NotStrict, Exception):  # noqa: BLE001 - any doubt goes to the strict decoder
            pass
    return Decoder(data, limits, tags).decode_all()
