"""MQTT codec: round trips for both versions, byte-exact vectors, strictness and fuzz."""

from __future__ import annotations

import random

import pytest

from trustfleet_server.broker import packets as p

V3, V5 = p.MQTT311, p.MQTT5


def roundtrip(packet, version):
    [decoded] = p.decode_all(packet.encode(version), version)
    return decoded


def frames_bytewise(data: bytes, max_packet=p.DEFAULT_MAX_PACKET):
    reader = p.FrameReader(max_packet)
    out = []
    for byte in data:
        reader.feed(bytes((byte,)))
        while (frame := reader.next_frame()) is not None:
            out.append(frame)
    return out, reader.buffered()


# --- variable byte integers -------------------------------------------------------------------

@pytest.mark.parametrize("value,encoded", [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"), (2097152, b"\x80\x80\x80\x01"),
    (268435455, b"\xff\xff\xff\x7f"),
])
def test_varint_boundaries_match_spec_table(value, encoded):
    assert p.encode_varint(value) == encoded
    body = p._Cursor(encoded, "test")
    assert body.varint() == value


@pytest.mark.parametrize("value", [-1, 268435456])
def test_varint_out_of_range_is_a_caller_error(value):
    with pytest.raises(ValueError):
        p.encode_varint(value)


def test_remaining_length_of_five_bytes_is_refused():
    reader = p.FrameReader()
    reader.feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(p.PacketError, match="longer than 4 bytes"):
        reader.next_frame()


def test_property_varint_of_five_bytes_is_refused():
    with pytest.raises(p.PacketError, match="longer than 4 bytes"):
        p._Cursor(b"\x80\x80\x80\x80\x01", "test").varint()


# --- round trips ------------------------------------------------------------------------------

WILL5 = p.Will("tf/f/status/d1", b'{"state":"offline"}', 1, True,
               {p.WILL_DELAY_INTERVAL: 0, p.USER_PROPERTY: [("k", "v")]})

PACKETS_BOTH = [
    p.Connect("dev-1", clean_start=True, keepalive=30),
    p.Connect("dev-2", clean_start=False, keepalive=0, username="u", password=b"\x00\xffpw",
              will=p.Will("tf/f/status/dev-2", b"bye", 1, True)),
    p.Connack(False, 0),
    p.Connack(True, 0),
    p.Publish("tf/f/bundle", b"\x00" * 300, 0, True),
    p.Publish("tf/f/root/1", b"root", 1, False, True, 65535),
    p.Publish("a", b"", 1, True, False, 1),
    p.Puback(7),
    p.Subscribe(1, [("tf/f/bundle", p.SubOptions(1)), ("tf/f/root/+", p.SubOptions(0)),
                    ("#", p.SubOptions(1))]),
    p.Suback(1, [1, 0, 0x80]),
    p.Unsubscribe(2, ["a/b", "c/#"]),
    p.Pingreq(),
    p.Pingresp(),
    p.Disconnect(),
]

PACKETS_V5_ONLY = [
    p.Connect("dev-5", protocol_level=V5, keepalive=60, username="u", password=b"p",
              will=WILL5, properties={p.SESSION_EXPIRY_INTERVAL: 3600, p.RECEIVE_MAXIMUM: 10,
                                      p.MAXIMUM_PACKET_SIZE: 65536}),
    p.Connect("", protocol_level=V5, password=b"only-password"),
    p.Connack(False, p.BAD_USERNAME_OR_PASSWORD, {p.REASON_STRING: "no"}),
    p.Connack(False, 0, {p.MAXIMUM_QOS: 1, p.ASSIGNED_CLIENT_IDENTIFIER: "auto-1",
                         p.MAXIMUM_PACKET_SIZE: 1 << 20}),
    p.Publish("t", b"x", 1, True, False, 9,
              {p.PAYLOAD_FORMAT_INDICATOR: 1, p.MESSAGE_EXPIRY_INTERVAL: 60,
               p.CONTENT_TYPE: "application/cbor", p.RESPONSE_TOPIC: "r",
               p.CORRELATION_DATA: b"\x01\x02", p.USER_PROPERTY: [("a", "1"), ("a", "2")],
               p.SUBSCRIPTION_IDENTIFIER: [1, 268435455]}),
    p.Puback(7, p.NO_MATCHING_SUBSCRIBERS),
    p.Puback(7, p.QUOTA_EXCEEDED, {p.REASON_STRING: "slow down"}),
    p.Subscribe(3, [("$share/g/tf/+/status/+", p.SubOptions(1)),
                    ("x", p.SubOptions(0, True, True, 2))], {p.USER_PROPERTY: [("u", "v")]}),
    p.Suback(3, [1, p.TOPIC_FILTER_INVALID]),
    p.Unsuback(4, [0, p.NO_SUBSCRIPTION_EXISTED]),
    p.Disconnect(p.DISCONNECT_WITH_WILL),
    p.Disconnect(p.SERVER_SHUTTING_DOWN, {p.REASON_STRING: "bye"}),
    p.Auth(0x18, {p.AUTHENTICATION_METHOD: "SCRAM"}),
]


@pytest.mark.parametrize("version", [V3, V5])
@pytest.mark.parametrize("packet", PACKETS_BOTH, ids=lambda pk: type(pk).__name__)
def test_packets_round_trip_in_both_versions(packet, version):
    if isinstance(packet, p.Connect):
        packet = p.Connect(packet.client_id, version, packet.clean_start, packet.keepalive,
                           packet.username, packet.password, packet.will)
    assert roundtrip(packet, version) == packet


@pytest.mark.parametrize("packet", PACKETS_V5_ONLY, ids=lambda pk: type(pk).__name__)
def test_mqtt5_packets_with_properties_round_trip(packet):
    assert roundtrip(packet, V5) == packet


def test_unsuback_in_311_carries_no_reason_codes():
    assert p.Unsuback(4, [0, 0x11]).encode(V3) == b"\xb0\x02\x00\x04"


# --- byte-exact vectors (hand-assembled from the spec's field layouts) --------------------------

def test_connect_311_bytes_match_spec_layout():
    data = p.Connect("ab", keepalive=60, username="u", password=b"p").encode()
    assert data == (b"\x10\x14\x00\x04MQTT\x04\xc2\x00\x3c\x00\x02ab"
                    b"\x00\x01u\x00\x01p")


def test_connect_5_bytes_match_spec_layout():
    data = p.Connect("c", protocol_level=V5, keepalive=10,
                     properties={p.SESSION_EXPIRY_INTERVAL: 10}).encode()
    assert data == b"\x10\x13\x00\x04MQTT\x05\x02\x00\x0a\x05\x11\x00\x00\x00\x0a\x00\x01c"


def test_publish_qos1_bytes_match_spec_layout():
    assert p.Publish("a/b", b"hi", 1, True, False, 10).encode(V3) == \
        b"\x33\x09\x00\x03a/b\x00\x0ahi"
    assert p.Publish("a/b", b"hi", 1, True, False, 10).encode(V5) == \
        b"\x33\x0a\x00\x03a/b\x00\x0a\x00hi"


def test_subscribe_options_byte_layout():
    data = p.Subscribe(1, [("x", p.SubOptions(1, True, True, 2))]).encode(V5)
    assert data == b"\x82\x07\x00\x01\x00\x00\x01x\x2d"


def test_decodes_paho_style_short_puback_in_mqtt5():
    # MQTT 5 §3.4.2.1: reason code and properties may be omitted.
    assert p.decode(p.PUBACK, 0, b"\x00\x05", V5) == p.Puback(5)
    assert p.decode(p.PUBACK, 0, b"\x00\x05\x10", V5) == p.Puback(5, 0x10)


# --- strictness -------------------------------------------------------------------------------

def test_every_truncation_of_a_connect_is_refused_not_crashed():
    data = p.Connect("dev", protocol_level=V5, username="u", password=b"p", will=WILL5,
                     properties={p.RECEIVE_MAXIMUM: 5}).encode()
    body = data[2:]
    for cut in range(len(body)):
        with pytest.raises(p.PacketError):
            p.decode(p.CONNECT, 0, body[:cut], V5)


@pytest.mark.parametrize("packet", PACKETS_BOTH + PACKETS_V5_ONLY, ids=lambda pk: type(pk).__name__)
def test_incomplete_frames_wait_for_more_bytes(packet):
    data = packet.encode(V5)
    for cut in range(len(data)):
        reader = p.FrameReader()
        reader.feed(data[:cut])
        assert reader.next_frame() is None


def test_bad_utf8_in_topic_is_refused():
    body = b"\x00\x02\xc3\x28payload"
    with pytest.raises(p.PacketError, match="UTF-8"):
        p.decode(p.PUBLISH, 0, body, V3)


def test_utf16_surrogate_encoded_as_utf8_is_refused():
    body = b"\x00\x03\xed\xa0\x80"
    with pytest.raises(p.PacketError, match="UTF-8"):
        p.decode(p.PUBLISH, 0, body, V3)


def test_nul_character_in_client_id_is_refused():
    data = p.Connect("a\x00b").encode()
    with pytest.raises(p.PacketError, match="U\\+0000"):
        p.decode_all(data)


def test_oversized_frame_is_refused_from_its_header_alone():
    reader = p.FrameReader(max_packet=1024)
    reader.feed(b"\x30\x80\x80\x04")  # remaining length 65536, no body sent
    with pytest.raises(p.PacketTooLarge) as info:
        reader.next_frame()
    assert info.value.size == 65540 and info.value.limit == 1024
    assert info.value.reason == p.PACKET_TOO_LARGE


def test_frame_exactly_at_the_cap_is_accepted():
    data = p.Publish("t", b"x" * 100, 0).encode(V3)
    reader = p.FrameReader(max_packet=len(data))
    reader.feed(data)
    assert reader.next_frame() is not None


@pytest.mark.parametrize("ptype,flags,body,version,match", [
    (p.CONNECT, 0, b"\x00\x04MQTT\x04\x03\x00\x00\x00\x00", V3, "reserved connect flag"),
    (p.CONNECT, 0, b"\x00\x04MQTT\x04\x1a\x00\x00\x00\x00", V3, "will QoS 3"),
    (p.CONNECT, 0, b"\x00\x04MQTT\x04\x22\x00\x00\x00\x00", V3, "without the will flag"),
    (p.CONNECT, 0, b"\x00\x04MQTT\x04\x42\x00\x00\x00\x00\x00\x00", V3, "password flag"),
    (p.CONNECT, 1, b"\x00\x04MQTT\x04\x02\x00\x00\x00\x00", V3, "flags"),
    (p.PUBLISH, 0x06, b"\x00\x01t\x00\x01", V3, "QoS 3"),
    (p.PUBLISH, 0x08, b"\x00\x01t", V3, "DUP"),
    (p.PUBLISH, 0x02, b"\x00\x01t\x00\x00", V3, "packet identifier 0"),
    (p.SUBSCRIBE, 0, b"\x00\x01\x00\x01t\x00", V3, "flags"),
    (p.SUBSCRIBE, 2, b"\x00\x01", V3, "no topic filters"),
    (p.SUBSCRIBE, 2, b"\x00\x01\x00\x01t\x04", V3, "reserved bits"),
    (p.SUBSCRIBE, 2, b"\x00\x01\x00\x00\x01t\x30", V5, "retain handling 3"),
    (p.SUBSCRIBE, 2, b"\x00\x01\x00\x01t\x03", V3, "QoS 3"),
    (p.UNSUBSCRIBE, 2, b"\x00\x01", V3, "no topic filters"),
    (p.PINGREQ, 0, b"\x00", V3, "unexpected body"),
    (p.DISCONNECT, 0, b"\x00", V3, "unexpected body"),
    (p.PUBACK, 0, b"\x00\x01\x00", V3, "trailing"),
    (p.PUBLISH, 0, b"\x00\x01t\x02\x7f\x00", V5, "unknown property"),
    (p.PUBLISH, 0, b"\x00\x01t\x04\x01\x01\x01\x01", V5, "appears twice"),
    (p.PUBLISH, 0, b"\x00\x01t\x05\x02\x00\x00", V5, "truncated"),
    (p.AUTH, 0, b"", V3, "AUTH packet in MQTT 3.1.1"),
    (0, 0, b"", V3, "reserved packet type"),
])
def test_malformed_fields_raise_packet_error_naming_the_problem(ptype, flags, body, version,
                                                                  match):
    with pytest.raises(p.PacketError, match=match):
        p.decode(ptype, flags, body, version)


def test_unsupported_protocol_level_is_reported_with_its_level():
    with pytest.raises(p.UnsupportedProtocol) as info:
        p.decode(p.CONNECT, 0, b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01a")
    assert info.value.level == 3


def test_encoding_mistakes_are_value_errors():
    with pytest.raises(ValueError):
        p.Publish("t", b"", 1, packet_id=0).encode(V3)
    with pytest.raises(ValueError):
        p.encode_str("x" * 70000)
    with pytest.raises(ValueError):
        p.encode_properties({0x99: 1})
    with pytest.raises(ValueError):
        p.Subscribe(1, []).encode(V3)


# --- streams and fuzz -------------------------------------------------------------------------

def test_stream_fed_whole_or_one_byte_at_a_time_gives_the_same_packets():
    stream = b"".join(pk.encode(V5) for pk in PACKETS_V5_ONLY[1:])
    whole = p.decode_all(stream, V5)
    frames, left = frames_bytewise(stream)
    assert left == 0
    assert [p.decode(*f, V5) for f in frames] == whole
    assert len(whole) == len(PACKETS_V5_ONLY) - 1


def test_fuzz_mutated_packets_decode_or_raise_packet_error_only():
    rng = random.Random(20240611)
    seeds = [pk.encode(V5) for pk in PACKETS_V5_ONLY] + [pk.encode(V3) for pk in PACKETS_BOTH]
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            action = rng.randrange(3)
            pos = rng.randrange(len(data))
            if action == 0:
                data[pos] = rng.randrange(256)
            elif action == 1:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
            if not data:
                data = bytearray(b"\x00")
        version = rng.choice((V3, V5))
        reader = p.FrameReader(max_packet=4096)
        reader.feed(bytes(data))
        try:
            while (frame := reader.next_frame()) is not None:
                p.decode(*frame, version)
        except p.PacketError:
            pass


def test_fuzz_random_bytes_decode_or_raise_packet_error_only():
    rng = random.Random(7)
    for _ in range(3000):
        data = rng.randbytes(rng.randint(0, 64))
        reader = p.FrameReader(max_packet=4096)
        reader.feed(data)
        try:
            while (frame := reader.next_frame()) is not None:
                p.decode(*frame, rng.choice((V3, V5)))
        except p.PacketError:
            pass
