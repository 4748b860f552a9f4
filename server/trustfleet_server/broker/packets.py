"""MQTT 3.1.1 (protocol level 4) and MQTT 5 (level 5) packet codec.

Trusts nothing it decodes: every field is bounds-checked against the frame
it came in, strings must be well-formed UTF-8 without U+0000 (3.1.1 §1.5.3,
5.0 §1.5.4), reserved flag bits must be as the spec fixes them (§2.1.3) and
a frame larger than the configured cap is refused as soon as its length is
known, before its body is buffered. Every failure is a PacketError (or its
child PacketTooLarge) carrying the MQTT 5 reason code to report, never a
stray IndexError/UnicodeDecodeError.

Order of use:
  1. FrameReader.feed(bytes) then FrameReader.next_frame() -> (type, flags,
     body) or None while incomplete (works fed whole or one byte at a time);
  2. decode(type, flags, body, version) -> a packet object. CONNECT is
     decodable with any version argument: it carries its own level, which
     fixes the version for the rest of the connection;
  3. packet.encode(version) -> bytes. Encoding is local data: mistakes there
     raise ValueError, not PacketError.

Properties (MQTT 5 §2.2.2) are decoded into a dict {identifier: value};
User Property (0x26) and Subscription Identifier (0x0B) may repeat and are
kept as lists. Type checks and duplicate checks are done here; which
property is allowed in which packet is left to the broker/client.

QoS 2 is decodable (so a peer that sends it can be refused politely) but
nothing here implements its flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trustfleet_device.transports.mqtt import encode_length
from trustfleet_server.errors import BrokerError

MQTT311 = 4
MQTT5 = 5

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

PACKET_NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ", PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}

MAX_REMAINING = 268_435_455  # 4-byte Variable Byte Integer (§1.5.5)
DEFAULT_MAX_PACKET = 1 << 20

# MQTT 5 reason codes (§2.4) used here and by the broker/client.
SUCCESS = 0x00
GRANTED_QOS_1 = 0x01
DISCONNECT_WITH_WILL = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_USERNAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
QOS_NOT_SUPPORTED = 0x9B
SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1

# MQTT 3.1.1 CONNACK return codes (§3.2.2.3) and SUBACK failure (§3.9.3).
ACCEPTED = 0
REFUSED_PROTOCOL_VERSION = 1
REFUSED_IDENTIFIER = 2
REFUSED_SERVER_UNAVAILABLE = 3
REFUSED_BAD_USERNAME_PASSWORD = 4
REFUSED_NOT_AUTHORIZED = 5
SUBACK_FAILURE = 0x80

# MQTT 5 property identifiers (§2.2.2.2) and their wire types.
_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

PROPERTY_TYPES = {
    PAYLOAD_FORMAT_INDICATOR: _BYTE, MESSAGE_EXPIRY_INTERVAL: _U32, CONTENT_TYPE: _STR,
    RESPONSE_TOPIC: _STR, CORRELATION_DATA: _BIN, SUBSCRIPTION_IDENTIFIER: _VARINT,
    SESSION_EXPIRY_INTERVAL: _U32, ASSIGNED_CLIENT_IDENTIFIER: _STR, SERVER_KEEP_ALIVE: _U16,
    AUTHENTICATION_METHOD: _STR, AUTHENTICATION_DATA: _BIN, REQUEST_PROBLEM_INFORMATION: _BYTE,
    WILL_DELAY_INTERVAL: _U32, REQUEST_RESPONSE_INFORMATION: _BYTE, RESPONSE_INFORMATION: _STR,
    SERVER_REFERENCE: _STR, REASON_STRING: _STR, RECEIVE_MAXIMUM: _U16,
    TOPIC_ALIAS_MAXIMUM: _U16, TOPIC_ALIAS: _U16, MAXIMUM_QOS: _BYTE, RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR, MAXIMUM_PACKET_SIZE: _U32, WILDCARD_SUBSCRIPTION_AVAILABLE: _BYTE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE: _BYTE, SHARED_SUBSCRIPTION_AVAILABLE: _BYTE,
}
_REPEATABLE = (USER_PROPERTY, SUBSCRIPTION_IDENTIFIER)


class MQTTError(BrokerError):
    """Root of the server-side MQTT package's errors (a broker failure, not a bad document)."""


class PacketError(MQTTError):
    """Bytes from the peer are not a well-formed packet of the negotiated version.

    `reason` is the MQTT 5 reason code to send in DISCONNECT/CONNACK.
    """

    def __init__(self, message: str, reason: int = MALFORMED_PACKET):
        super().__init__(message)
        self.reason = reason


class PacketTooLarge(PacketError):
    """A frame is larger than the receiver's cap (refused before buffering it)."""

    def __init__(self, size: int, limit: int):
        super().__init__(
            f"packet of {size} bytes exceeds the maximum packet size of {limit} bytes",
            PACKET_TOO_LARGE,
        )
        self.size = size
        self.limit = limit


class UnsupportedProtocol(PacketError):
    """CONNECT names a protocol or level other than MQTT 3.1.1 (4) or 5."""

    def __init__(self, name: str, level: int):
        super().__init__(
            f"unsupported protocol {name!r} level {level} (expected 'MQTT' level 4 or 5)",
            UNSUPPORTED_PROTOCOL_VERSION,
        )
        self.level = level


# --- primitive encoders (local data: ValueError on caller mistakes) ---------------------------

def encode_varint(value: int) -> bytes:
    """Variable Byte Integer (§1.5.5). Raises: ValueError outside 0..268435455.

    The device's MQTT client has the same encoder; one implementation serves both.
    """
    return encode_length(value)


def encode_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"UTF-8 string of {len(raw)} bytes exceeds 65535")
    return len(raw).to_bytes(2, "big") + raw


def encode_bin(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"binary field of {len(data)} bytes exceeds 65535")
    return len(data).to_bytes(2, "big") + bytes(data)


def _encode_property(ident: int, kind: int, value) -> bytes:
    head = encode_varint(ident)
    if kind == _BYTE:
        return head + bytes((value,))
    if kind == _U16:
        return head + value.to_bytes(2, "big")
    if kind == _U32:
        return head + value.to_bytes(4, "big")
    if kind == _VARINT:
        return head + encode_varint(value)
    if kind == _STR:
        return head + encode_str(value)
    if kind == _BIN:
        return head + encode_bin(value)
    key, val = value
    return head + encode_str(key) + encode_str(val)


def encode_properties(props: dict | None) -> bytes:
    """Property block with its length prefix. Raises: ValueError on an unknown identifier."""
    if not props:
        return b"\x00"
    parts = []
    for ident, value in props.items():
        kind = PROPERTY_TYPES.get(ident)
        if kind is None:
            raise ValueError(f"unknown MQTT 5 property identifier 0x{ident:02x}")
        if ident in _REPEATABLE:
            parts.extend(_encode_property(ident, kind, item) for item in value)
        else:
            parts.append(_encode_property(ident, kind, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


def fixed_header(ptype: int, flags: int, remaining: int) -> bytes:
    return bytes(((ptype << 4) | flags,)) + encode_varint(remaining)


def _frame(ptype: int, flags: int, body: bytes) -> bytes:
    return fixed_header(ptype, flags, len(body)) + body


# --- primitive decoder ------------------------------------------------------------------------

class _Cursor:
    """Reads fields from one frame body; every overrun is a PacketError."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: bytes, what: str):
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.what = what

    def _need(self, n: int, field_name: str) -> None:
        if self.pos + n > self.end:
            raise PacketError(
                f"{self.what}: truncated {field_name} (need {n} bytes at offset {self.pos}, "
                f"frame has {self.end})"
            )

    def remaining(self) -> int:
        return self.end - self.pos

    def u8(self, field_name: str = "byte") -> int:
        self._need(1, field_name)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def u16(self, field_name: str = "two-byte integer") -> int:
        self._need(2, field_name)
        value = (self.buf[self.pos] << 8) | self.buf[self.pos + 1]
        self.pos += 2
        return value

    def u32(self, field_name: str = "four-byte integer") -> int:
        self._need(4, field_name)
        value = int.from_bytes(self.buf[self.pos:self.pos + 4], "big")
        self.pos += 4
        return value

    def varint(self, field_name: str = "variable byte integer") -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.u8(field_name)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise PacketError(f"{self.what}: {field_name} longer than 4 bytes")

    def binary(self, field_name: str = "binary data") -> bytes:
        n = self.u16(field_name + " length")
        self._need(n, field_name)
        value = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(value)

    def string(self, field_name: str = "UTF-8 string") -> str:
        raw = self.binary(field_name)
        return decode_utf8(raw, f"{self.what}: {field_name}")

    def rest(self) -> bytes:
        value = self.buf[self.pos:self.end]
        self.pos = self.end
        return bytes(value)

    def properties(self) -> dict:
        length = self.varint("property length")
        self._need(length, "properties")
        stop = self.pos + length
        props: dict = {}
        while self.pos < stop:
            ident = self.varint("property identifier")
            kind = PROPERTY_TYPES.get(ident)
            if kind is None:
                raise PacketError(f"{self.what}: unknown property identifier 0x{ident:02x}")
            value = self._property_value(kind)
            if self.pos > stop:
                raise PacketError(f"{self.what}: property 0x{ident:02x} overruns the property block")
            if ident in _REPEATABLE:
                props.setdefault(ident, []).append(value)
            elif ident in props:
                raise PacketError(f"{self.what}: property 0x{ident:02x} appears twice", PROTOCOL_ERROR)
            else:
                props[ident] = value
        return props

    def _property_value(self, kind: int):
        if kind == _BYTE:
            return self.u8("property value")
        if kind == _U16:
            return self.u16("property value")
        if kind == _U32:
            return self.u32("property value")
        if kind == _VARINT:
            return self.varint("property value")
        if kind == _STR:
            return self.string("property value")
        if kind == _BIN:
            return self.binary("property value")
        return (self.string("user property name"), self.string("user property value"))

    def done(self) -> None:
        if self.pos != self.end:
            raise PacketError(f"{self.what}: {self.end - self.pos} unexpected trailing bytes")


def decode_utf8(raw: bytes, what: str) -> str:
    """Decode an MQTT UTF-8 string. Raises: PacketError on bad UTF-8 or U+0000 (§1.5.4)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PacketError(f"{what}: not well-formed UTF-8 ({exc.reason} at byte {exc.start})") from None
    if "\x00" in text:
        raise PacketError(f"{what}: contains U+0000")
    return text


# --- incremental framing ----------------------------------------------------------------------

class FrameReader:
    """Splits a byte stream into (type, flags, body) frames, buffering at most one frame.

    The cap applies to the whole packet (fixed header included), as MQTT 5's
    Maximum Packet Size does; an oversized frame raises as soon as its
    length is readable, so it is never buffered.
    """

    __slots__ = ("max_packet", "_buf", "_pos")

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self.max_packet = max_packet
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, int, bytes] | None:
        """Return the next complete frame, or None if more bytes are needed.

        Raises: PacketError (remaining length over 4 bytes), PacketTooLarge.
        """
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 2:
            return None
        remaining = 0
        index = pos + 1
        for shift in (0, 7, 14, 21):
            if index >= len(buf):
                return None
            byte = buf[index]
            index += 1
            remaining |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise PacketError("remaining length longer than 4 bytes")
        total = (index - pos) + remaining
        if total > self.max_packet:
            raise PacketTooLarge(total, self.max_packet)
        if len(buf) < pos + total:
            return None
        first = buf[pos]
        body = bytes(buf[index:pos + total])
        self._pos = pos + total
        if self._pos == len(buf):
            buf.clear()
            self._pos = 0
        return first >> 4, first & 0x0F, body


# --- packets ----------------------------------------------------------------------------------

@dataclass(slots=True)
class SubOptions:
    """Subscription options byte (§3.8.3.1); only `qos` exists in 3.1.1."""

    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    def to_byte(self, version: int) -> int:
        if version < MQTT5:
            return self.qos
        return (self.qos | (self.no_local << 2) | (self.retain_as_published << 3)
                | (self.retain_handling << 4))


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    client_id: str
    protocol_level: int = MQTT311
    clean_start: bool = True
    keepalive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: dict = field(default_factory=dict)

    TYPE = CONNECT

    def encode(self, version: int | None = None) -> bytes:
        version = self.protocol_level if version is None else version
        flags = 0x02 if self.clean_start else 0
        if self.will is not None:
            if self.will.qos not in (0, 1, 2):
                raise ValueError(f"will QoS {self.will.qos} not in 0..2")
            flags |= 0x04 | (self.will.qos << 3) | (0x20 if self.will.retain else 0)
        if self.password is not None:
            flags |= 0x40
        if self.username is not None:
            flags |= 0x80
        parts = [encode_str("MQTT"), bytes((version, flags)), self.keepalive.to_bytes(2, "big")]
        if version >= MQTT5:
            parts.append(encode_properties(self.properties))
        parts.append(encode_str(self.client_id))
        if self.will is not None:
            if version >= MQTT5:
                parts.append(encode_properties(self.will.properties))
            parts.append(encode_str(self.will.topic))
            parts.append(encode_bin(self.will.payload))
        if self.username is not None:
            parts.append(encode_str(self.username))
        if self.password is not None:
            parts.append(encode_bin(self.password))
        return _frame(CONNECT, 0, b"".join(parts))


@dataclass(slots=True)
class Connack:
    session_present: bool = False
    reason_code: int = 0
    properties: dict = field(default_factory=dict)

    TYPE = CONNACK

    def encode(self, version: int) -> bytes:
        body = bytes((1 if self.session_present else 0, self.reason_code))
        if version >= MQTT5:
            body += encode_properties(self.properties)
        return _frame(CONNACK, 0, body)


def publish_parts(topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool,
                  props: bytes | None) -> tuple[bytes, bytes]:
    """PUBLISH split around the packet identifier: (header+topic, properties+payload).

    For QoS 0 the packet is prefix + suffix; for QoS 1/2 it is prefix +
    packet id (2 bytes) + suffix. `topic` is already UTF-8 with its length
    prefix; `props` is an encoded property block (MQTT 5) or None (3.1.1).
    Lets the broker encode a message once for many subscribers.
    """
    flags = (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    props = props or b""
    remaining = len(topic) + (2 if qos else 0) + len(props) + len(payload)
    return fixed_header(PUBLISH, flags, remaining) + topic, props + payload


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: dict = field(default_factory=dict)

    TYPE = PUBLISH

    def encode(self, version: int) -> bytes:
        if self.qos not in (0, 1, 2):
            raise ValueError(f"QoS {self.qos} not in 0..2")
        if self.qos and not 1 <= self.packet_id <= 0xFFFF:
            raise ValueError(f"packet id {self.packet_id} not in 1..65535 for QoS {self.qos}")
        props = encode_properties(self.properties) if version >= MQTT5 else None
        head, tail = publish_parts(encode_str(self.topic), self.payload, self.qos, self.retain,
                                   self.dup, props)
        if self.qos:
            return head + self.packet_id.to_bytes(2, "big") + tail
        return head + tail


@dataclass(slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (same layout, §3.4-3.7)."""

    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    kind: int = PUBACK

    @property
    def TYPE(self) -> int:  # noqa: N802 - mirrors the class attribute of other packets
        return self.kind

    def encode(self, version: int) -> bytes:
        body = self.packet_id.to_bytes(2, "big")
        if version >= MQTT5 and (self.reason_code or self.properties):
            body += bytes((self.reason_code,))
            if self.properties:
                body += encode_properties(self.properties)
        return _frame(self.kind, 0x02 if self.kind == PUBREL else 0, body)


def Puback(packet_id: int, reason_code: int = 0, properties: dict | None = None) -> Ack:  # noqa: N802
    return Ack(packet_id, reason_code, properties or {}, PUBACK)


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    topics: list[tuple[str, SubOptions]]
    properties: dict = field(default_factory=dict)

    TYPE = SUBSCRIBE

    def encode(self, version: int) -> bytes:
        if not self.topics:
            raise ValueError("SUBSCRIBE needs at least one topic filter")
        parts = [self.packet_id.to_bytes(2, "big")]
        if version >= MQTT5:
            parts.append(encode_properties(self.properties))
        for topic, opts in self.topics:
            parts.append(encode_str(topic))
            parts.append(bytes((opts.to_byte(version),)))
        return _frame(SUBSCRIBE, 0x02, b"".join(parts))


@dataclass(slots=True)
class Suback:
    packet_id: int
    reason_codes: list[int]
    properties: dict = field(default_factory=dict)

    TYPE = SUBACK

    def encode(self, version: int) -> bytes:
        body = self.packet_id.to_bytes(2, "big")
        if version >= MQTT5:
            body += encode_properties(self.properties)
        return _frame(SUBACK, 0, body + bytes(self.reason_codes))


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topics: list[str]
    properties: dict = field(default_factory=dict)

    TYPE = UNSUBSCRIBE

    def encode(self, version: int) -> bytes:
        if not self.topics:
            raise ValueError("UNSUBSCRIBE needs at least one topic filter")
        parts = [self.packet_id.to_bytes(2, "big")]
        if version >= MQTT5:
            parts.append(encode_properties(self.properties))
        parts.extend(encode_str(topic) for topic in self.topics)
        return _frame(UNSUBSCRIBE, 0x02, b"".join(parts))


@dataclass(slots=True)
class Unsuback:
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: dict = field(default_factory=dict)

    TYPE = UNSUBACK

    def encode(self, version: int) -> bytes:
        body = self.packet_id.to_bytes(2, "big")
        if version >= MQTT5:
            body += encode_properties(self.properties) + bytes(self.reason_codes)
        return _frame(UNSUBACK, 0, body)


@dataclass(slots=True)
class Pingreq:
    TYPE = PINGREQ

    def encode(self, version: int = MQTT311) -> bytes:
        return b"\xc0\x00"


@dataclass(slots=True)
class Pingresp:
    TYPE = PINGRESP

    def encode(self, version: int = MQTT311) -> bytes:
        return b"\xd0\x00"


@dataclass(slots=True)
class Disconnect:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)

    TYPE = DISCONNECT

    def encode(self, version: int) -> bytes:
        if version < MQTT5 or (not self.reason_code and not self.properties):
            return b"\xe0\x00"
        body = bytes((self.reason_code,))
        if self.properties:
            body += encode_properties(self.properties)
        return _frame(DISCONNECT, 0, body)


@dataclass(slots=True)
class Auth:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)

    TYPE = AUTH

    def encode(self, version: int = MQTT5) -> bytes:
        if version < MQTT5:
            raise ValueError("AUTH exists only in MQTT 5")
        if not self.reason_code and not self.properties:
            return b"\xf0\x00"
        return _frame(AUTH, 0, bytes((self.reason_code,)) + encode_properties(self.properties))


# --- body decoders ----------------------------------------------------------------------------

def _expect_flags(ptype: int, flags: int, expected: int) -> None:
    if flags != expected:
        raise PacketError(
            f"{PACKET_NAMES[ptype]}: fixed-header flags 0x{flags:x}, spec requires 0x{expected:x}"
        )


def _decode_connect(flags: int, body: bytes, version: int) -> Connect:
    _expect_flags(CONNECT, flags, 0)
    cur = _Cursor(body, "CONNECT")
    name = cur.string("protocol name")
    level = cur.u8("protocol level")
    if name != "MQTT" or level not in (MQTT311, MQTT5):
        raise UnsupportedProtocol(name, level)
    cflags = cur.u8("connect flags")
    if cflags & 0x01:
        raise PacketError("CONNECT: reserved connect flag bit 0 is set")
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    if will_qos == 3:
        raise PacketError("CONNECT: will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise PacketError("CONNECT: will QoS/retain set without the will flag")
    has_password = bool(cflags & 0x40)
    has_username = bool(cflags & 0x80)
    if level == MQTT311 and has_password and not has_username:
        raise PacketError("CONNECT: password flag without username flag (3.1.1 §3.1.2.9)")
    keepalive = cur.u16("keep alive")
    props = cur.properties() if level >= MQTT5 else {}
    client_id = cur.string("client identifier")
    will = None
    if will_flag:
        will_props = cur.properties() if level >= MQTT5 else {}
        will_topic = cur.string("will topic")
        will_payload = cur.binary("will payload")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = cur.string("user name") if has_username else None
    password = cur.binary("password") if has_password else None
    cur.done()
    return Connect(client_id, level, bool(cflags & 0x02), keepalive, username, password, will, props)


def _decode_connack(flags: int, body: bytes, version: int) -> Connack:
    _expect_flags(CONNACK, flags, 0)
    cur = _Cursor(body, "CONNACK")
    ack_flags = cur.u8("acknowledge flags")
    if ack_flags & 0xFE:
        raise PacketError("CONNACK: reserved acknowledge flag bits set")
    code = cur.u8("reason code")
    props = cur.properties() if version >= MQTT5 and cur.remaining() else {}
    cur.done()
    return Connack(bool(ack_flags & 1), code, props)


def _decode_publish(flags: int, body: bytes, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise PacketError("PUBLISH: QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise PacketError("PUBLISH: DUP set on a QoS 0 message")
    cur = _Cursor(body, "PUBLISH")
    topic = cur.string("topic name")
    packet_id = 0
    if qos:
        packet_id = cur.u16("packet identifier")
        if packet_id == 0:
            raise PacketError("PUBLISH: packet identifier 0")
    props = cur.properties() if version >= MQTT5 else {}
    return Publish(topic, cur.rest(), qos, bool(flags & 0x01), dup, packet_id, props)


def _decode_ack(ptype: int, flags: int, body: bytes, version: int) -> Ack:
    _expect_flags(ptype, flags, 0x02 if ptype == PUBREL else 0)
    cur = _Cursor(body, PACKET_NAMES[ptype])
    packet_id = cur.u16("packet identifier")
    if packet_id == 0:
        raise PacketError(f"{PACKET_NAMES[ptype]}: packet identifier 0")
    code = 0
    props: dict = {}
    if version >= MQTT5:
        if cur.remaining():
            code = cur.u8("reason code")
        if cur.remaining():
            props = cur.properties()
    cur.done()
    return Ack(packet_id, code, props, ptype)


def _decode_subscribe(flags: int, body: bytes, version: int) -> Subscribe:
    _expect_flags(SUBSCRIBE, flags, 0x02)
    cur = _Cursor(body, "SUBSCRIBE")
    packet_id = cur.u16("packet identifier")
    if packet_id == 0:
        raise PacketError("SUBSCRIBE: packet identifier 0")
    props = cur.properties() if version >= MQTT5 else {}
    topics = []
    while cur.remaining():
        topic = cur.string("topic filter")
        opts = cur.u8("subscription options")
        topics.append((topic, _decode_sub_options(opts, version)))
    if not topics:
        raise PacketError("SUBSCRIBE: no topic filters", PROTOCOL_ERROR)
    return Subscribe(packet_id, topics, props)


def _decode_sub_options(byte: int, version: int) -> SubOptions:
    qos = byte & 0x03
    if qos == 3:
        raise PacketError("SUBSCRIBE: requested QoS 3")
    if version < MQTT5:
        if byte & 0xFC:
            raise PacketError("SUBSCRIBE: reserved bits set in requested QoS byte")
        return SubOptions(qos)
    if byte & 0xC0:
        raise PacketError("SUBSCRIBE: reserved bits set in subscription options")
    handling = (byte >> 4) & 0x03
    if handling == 3:
        raise PacketError("SUBSCRIBE: retain handling 3")
    return SubOptions(qos, bool(byte & 0x04), bool(byte & 0x08), handling)


def _decode_suback(flags: int, body: bytes, version: int) -> Suback:
    _expect_flags(SUBACK, flags, 0)
    cur = _Cursor(body, "SUBACK")
    packet_id = cur.u16("packet identifier")
    props = cur.properties() if version >= MQTT5 else {}
    codes = list(cur.rest())
    if not codes:
        raise PacketError("SUBACK: no return codes")
    return Suback(packet_id, codes, props)


def _decode_unsubscribe(flags: int, body: bytes, version: int) -> Unsubscribe:
    _expect_flags(UNSUBSCRIBE, flags, 0x02)
    cur = _Cursor(body, "UNSUBSCRIBE")
    packet_id = cur.u16("packet identifier")
    if packet_id == 0:
        raise PacketError("UNSUBSCRIBE: packet identifier 0")
    props = cur.properties() if version >= MQTT5 else {}
    topics = []
    while cur.remaining():
        topics.append(cur.string("topic filter"))
    if not topics:
        raise PacketError("UNSUBSCRIBE: no topic filters", PROTOCOL_ERROR)
    return Unsubscribe(packet_id, topics, props)


def _decode_unsuback(flags: int, body: bytes, version: int) -> Unsuback:
    _expect_flags(UNSUBACK, flags, 0)
    cur = _Cursor(body, "UNSUBACK")
    packet_id = cur.u16("packet identifier")
    if version < MQTT5:
        cur.done()
        return Unsuback(packet_id)
    props = cur.properties()
    return Unsuback(packet_id, list(cur.rest()), props)


def _decode_empty(ptype: int, flags: int, body: bytes):
    _expect_flags(ptype, flags, 0)
    if body:
        raise PacketError(f"{PACKET_NAMES[ptype]}: {len(body)} unexpected body bytes")
    return Pingreq() if ptype == PINGREQ else Pingresp()


def _decode_disconnect(flags: int, body: bytes, version: int) -> Disconnect:
    _expect_flags(DISCONNECT, flags, 0)
    if version < MQTT5:
        if body:
            raise PacketError(f"DISCONNECT: {len(body)} unexpected body bytes")
        return Disconnect()
    cur = _Cursor(body, "DISCONNECT")
    code = cur.u8("reason code") if cur.remaining() else 0
    props = cur.properties() if cur.remaining() else {}
    cur.done()
    return Disconnect(code, props)


def _decode_auth(flags: int, body: bytes, version: int) -> Auth:
    if version < MQTT5:
        raise PacketError("AUTH packet in MQTT 3.1.1", PROTOCOL_ERROR)
    _expect_flags(AUTH, flags, 0)
    cur = _Cursor(body, "AUTH")
    code = cur.u8("reason code") if cur.remaining() else 0
    props = cur.properties() if cur.remaining() else {}
    cur.done()
    return Auth(code, props)


def decode(ptype: int, flags: int, body: bytes, version: int = MQTT311):
    """Decode one frame body into a packet object.

    Raises: PacketError (malformed or reserved packet type), UnsupportedProtocol.
    """
    if ptype == PUBLISH:
        return _decode_publish(flags, body, version)
    if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return _decode_ack(ptype, flags, body, version)
    if ptype in (PINGREQ, PINGRESP):
        return _decode_empty(ptype, flags, body)
    decoder = _DECODERS.get(ptype)
    if decoder is None:
        raise PacketError(f"reserved packet type {ptype}")
    return decoder(flags, body, version)


_DECODERS = {
    CONNECT: _decode_connect, CONNACK: _decode_connack, SUBSCRIBE: _decode_subscribe,
    SUBACK: _decode_suback, UNSUBSCRIBE: _decode_unsubscribe, UNSUBACK: _decode_unsuback,
    DISCONNECT: _decode_disconnect, AUTH: _decode_auth,
}


def decode_all(data: bytes, version: int = MQTT311, max_packet: int = DEFAULT_MAX_PACKET) -> list:
    """Decode a byte string holding whole packets (tests, tools).

    Raises: PacketError, including for a trailing partial packet.
    """
    reader = FrameReader(max_packet)
    reader.feed(data)
    out = []
    while True:
        frame = reader.next_frame()
        if frame is None:
            break
        packet = decode(*frame, version)
        if isinstance(packet, Connect):
            version = packet.protocol_level
        out.append(packet)
    if reader.buffered():
        raise PacketError(f"{reader.buffered()} trailing bytes do not form a whole packet")
    return out
