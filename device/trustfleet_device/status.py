"""The status message, defined once: the device builds it, the server checks it.

A device publishes its status retained on tf/<fleet>/status/<device> (JSON,
docs/topics.md). FIELDS below is the only list of its fields: their names,
kinds and bounds. session.Session sends through build() and encode(); the
server's fleet package checks what arrives with validate() and stores each
field in the column of the same name.

Bounds, and who does what with them:
- text (MAX_TEXT characters): the device clips, the server clips;
- lists (MAX_LIST items, each text clipped): the device keeps the first
  MAX_LIST, the server refuses a longer list;
- integers (0..MAX_INT): both refuse anything else (a device never has one);
- the whole message (MAX_BYTES): the device drops list items from the end
  until it fits, the server refuses a bigger one.
So a device never sends what the server refuses. The bounds are read at
call time, never copied: change one here and both sides follow.

No I/O; runs on MicroPython.
"""

import json

from trustfleet_device import topics

# Kinds of field.
INT = "int"          # a non-negative integer, or null
TEXT = "text"        # a string, or null
INTS = "ints"        # a list of non-negative integers (null reads as [])
TEXTS = "texts"      # a list of strings (null reads as [])
NAME = "name"        # a topic name (topics.check_name), or null
STATE = "state"      # one of STATES (the server takes any short string)
BUCKET = "bucket"    # topics.bucket(device): a receiver computes it, never trusts it

MAX_TEXT = 1024      # characters in one text field or list item
MAX_LIST = 64        # items in one list
MAX_INT = (1 << 63) - 1
MAX_STATE = 32       # characters in the state
MAX_BYTES = 16 * 1024
MAX_REPORT_BYTES = 16 * 1024

OFFLINE = "offline"
STATES = ("ok", "behind", "stale", "trial", "no-store", OFFLINE)

# Every field, in the order the fleet store keeps them.
FIELDS = (
    ("device", NAME),
    ("fleet", NAME),
    ("group", NAME),
    ("bucket", BUCKET),
    ("state", STATE),
    ("version", INT),           # the committed (or trial) bundle
    ("floor", INT),             # no bundle at or below this is accepted
    ("bad", INTS),              # versions reverted as bad
    ("last_revert", TEXT),      # why the last trial was reverted
    ("reasons", TEXTS),         # why the state is stale
    ("fail_open", TEXTS),       # domains whose pins expired
    ("root_version", INT),
    ("trusted_time", INT),
    ("last_timestamp", INT),
    ("agent_version", TEXT),
    ("time", INT),              # the device's clock when it sent this
    ("seq", INT),               # counts from 1 in each session
    ("event", TEXT),            # the last thing that happened
    ("detail", TEXT),
)
NAMES = tuple(name for name, _ in FIELDS)
KIND = dict(FIELDS)
# validate() checks kind by kind, so a message with several faults names the same one as before.
_CHECK_ORDER = tuple((n, k) for kind in (STATE, NAME, INTS, INT, TEXT, TEXTS) for n, k in FIELDS if k == kind)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INT


def build(fields):
    """The message a device sends, from a dict of schema fields (absent ones stay absent).

    Clips texts and lists to their bounds. Raises ValueError for a field the
    schema does not have, a value of the wrong kind or a state not in STATES:
    those are bugs in the device, not data to send.
    """
    msg = {}
    for name in NAMES:
        if name not in fields:
            continue
        kind = KIND[name]
        v = fields[name]
        if kind == STATE:
            if v not in STATES:
                raise ValueError("state %r is not one of %s" % (v, ", ".join(STATES)))
        elif kind == TEXTS or kind == INTS:
            v = list(v or ())[:MAX_LIST]
            if kind == TEXTS:
                v = [_text(name, x) for x in v]
            elif not all(_is_int(x) for x in v):
                raise ValueError("%s must be a list of non-negative integers" % name)
        elif v is None:
            pass
        elif kind == TEXT:
            v = _text(name, v)
        elif kind == INT or kind == BUCKET:
            if not _is_int(v):
                raise ValueError("%s must be a non-negative integer" % name)
        else:
            topics.check_name(v, name)
        msg[name] = v
    for name in fields:
        if name not in KIND:
            raise ValueError("%s is not a status field" % name)
    return msg


def _text(name, v):
    if not isinstance(v, str):
        raise ValueError("%s must be text" % name)
    return v[:MAX_TEXT]


def offline(device, fleet):
    """The last will: the broker publishes it if the device vanishes."""
    return build({"device": device, "fleet": fleet, "state": OFFLINE})


def encode(msg):
    """JSON bytes of a built message, at most MAX_BYTES: list items are dropped from the end
    of the longest list until it fits. Raises ValueError if it cannot fit."""
    raw = json.dumps(msg).encode()
    while _size(raw) > MAX_BYTES:
        longest = None
        for name in NAMES:
            v = msg.get(name)
            if KIND[name] in (TEXTS, INTS) and v and (longest is None or len(v) > len(msg[longest])):
                longest = name
        if longest is None:
            raise ValueError("status is %d bytes, limit is %d" % (_size(raw), MAX_BYTES))
        msg[longest] = msg[longest][:-1]
        raw = json.dumps(msg).encode()
    return raw


def _size(raw):
    """Bytes as the server counts them: MicroPython writes non-ASCII as UTF-8, the server
    re-encodes it as \\u escapes (up to 3 times longer)."""
    return len(raw) + 2 * sum(1 for b in raw if b >= 0x80)


def validate(msg):
    """Check a received status (a decoded JSON object); return every field, normalised.

    Absent fields read as null (lists as []); texts are clipped; bucket is
    left out (the receiver computes it from the device id). Does not compare
    device and fleet with the topic: the receiver does. Raises ValueError
    naming the field.
    """
    out = {}
    for name, kind in _CHECK_ORDER:
        v = msg.get(name)
        if kind == STATE:
            if not isinstance(v, str) or not 1 <= len(v) <= MAX_STATE:
                raise ValueError(("state must be a short string, got %r" % (v,))[:200])
        elif kind == INTS:
            if v is None:
                v = []
            elif not isinstance(v, list) or len(v) > MAX_LIST or not all(_is_int(x) for x in v):
                raise ValueError("%s must be a list of at most %d non-negative integers"
                                 % (name, MAX_LIST))
        elif kind == TEXTS:
            if v is None:
                v = []
            elif not isinstance(v, list) or len(v) > MAX_LIST or not all(isinstance(x, str) for x in v):
                raise ValueError("%s must be a list of at most %d strings" % (name, MAX_LIST))
            v = [x[:MAX_TEXT] for x in v]
        elif v is None:
            pass
        elif kind == INT:
            if not _is_int(v):
                raise ValueError(("%s must be a non-negative integer, got %r" % (name, v))[:200])
        elif kind == TEXT:
            if not isinstance(v, str):
                raise ValueError("%s must be a string, got %s" % (name, type(v).__name__))
            v = v[:MAX_TEXT]
        else:
            if not isinstance(v, str):
                raise ValueError("%s must be a string" % name)
            topics.check_name(v, name)
        out[name] = v
    return dict((name, out[name]) for name in NAMES if name in out)
