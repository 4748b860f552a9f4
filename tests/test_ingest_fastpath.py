"""The status ingest's shortcuts give what the full path gives (issue 14: ingest >= 20,000/s).

- messages.decode_message skips its exact shape scan, its integer-length hook and its string
  walk when cheap counts prove they cannot refuse: same value or same refusal as the full
  checks, on ordinary, adversarial and random payloads.
- messages._plain_fields returns schema.validate's result for a status that needs no change,
  and nothing for anything else (schema.validate then decides).
- FleetDB stores a long run of statuses on PostgreSQL with COPY and one INSERT ... SELECT:
  the same rows and counts as one UPSERT per message, also with a device twice in the run.
- serve.link.Link reads the socket itself: every message arrives once, in order, with its
  retain flag and subscription identifiers; a PUBLISH with other properties goes through
  paho; PUBACKs flow (a broker allowing 20 unacknowledged messages delivers hundreds).
"""

from __future__ import annotations

import json
import socket
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from support import brokers
from trustfleet_device import status as schema
from trustfleet_server import mqtturl
from trustfleet_server.fleet import db as fleetdb
from trustfleet_server.fleet import messages
from trustfleet_server.serve import link as link_module
from trustfleet_server.serve.link import Link

F = "acme"
T = 1_800_000_000


# --------------------------------------------------------------------------- decoding


def full_decode(payload: bytes | str) -> dict:
    """decode_message with every check run: the exact shape scan, every integer through the
    length hook and every string walked. Raises: StatusError."""
    text = payload
    if isinstance(payload, bytes):
        if len(payload) > schema.MAX_BYTES:
            raise messages.StatusError(f"message is {len(payload)} bytes, limit is {schema.MAX_BYTES}")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise messages.StatusError(f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    messages._check_shape(text)
    try:
        value = json.loads(text, object_pairs_hook=messages._object, parse_constant=messages._constant,
                           parse_float=messages._float, parse_int=messages._int)
    except messages.StatusError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise messages.StatusError(f"not JSON: {str(exc)[:100]}") from None
    except RecursionError:
        raise messages.StatusError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise messages.StatusError(f"expected a JSON object, got {type(value).__name__}")
    messages._check_text(value)
    return value


def outcome(fn, payload):
    try:
        return ("ok", fn(payload))
    except messages.StatusError as exc:
        return ("refused", str(exc))


def device_status(n: int, seq: int, **extra) -> bytes:
    fields = {"device": f"d{n}", "fleet": F, "state": "stale" if n % 3 == 0 else "ok", "version": 7,
              "floor": 7, "bad": [6] if n % 2 else [], "reasons": ["no timestamp"] if n % 3 == 0 else [],
              "fail_open": ["api.acme.example"] if n % 5 == 0 else [], "root_version": 1,
              "trusted_time": T + seq, "last_timestamp": T, "agent_version": "0.1.0",
              "time": T + seq, "seq": seq, "event": "committed", "detail": "bundle v7",
              "group": "canary" if n % 4 == 0 else None, **extra}
    return schema.encode(schema.build(fields))


EDGES = [
    device_status(1, 1), device_status(3, 2, detail="caf\u00e9 [x] {y}, z"),
    b'{"state":"ok","version":' + b"1" * 32 + b"}", b'{"state":"ok","version":' + b"1" * 33 + b"}",
    b'{"state":"ok","x":"' + b"1" * 40 + b'"}', b'{"state":"ok","x":1e5,"y":-0.5}',
    b'{"state":"ok","x":' + b"[" * 8 + b"]" * 8 + b"}", b'{"state":"ok","x":' + b"[" * 9 + b"]" * 9 + b"}",
    b'{"state":"ok","x":"' + b"[" * 20 + b'"}', b'{"state":"ok","x":[' + b"0," * 2046 + b"0]}",
    b'{"state":"ok","x":[' + b"0," * 2047 + b"0]}", b'{"state":"ok","x":"' + b"," * 3000 + b'"}',
    b'{"state":"ok","detail":"\\u00e9"}', b'{"state":"ok","detail":"\\ud800"}',
    b'{"state":"ok","detail":"a\\u0000b"}', b'{"state":"ok","a":1,"a":2}', b"\xef\xbb\xbf{}",
    '{"state":"ok","detail":"\ud800"}', '\ufeff{"state":"ok"}', '{"state":"ok","version":1}',
]


@pytest.mark.parametrize("payload", EDGES, ids=range(len(EDGES)))
def test_the_shortcuts_decide_as_the_full_checks_on_edge_payloads(payload):
    assert outcome(messages.decode_message, payload) == outcome(full_decode, payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(
    st.binary(max_size=200),
    st.text(alphabet='{}[],:"\\0123456789.eE-+ aeu', max_size=200).map(str.encode),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 130), 2 ** 130), st.text(max_size=8)),
                 lambda kids: st.one_of(st.lists(kids, max_size=5),
                                        st.dictionaries(st.text(max_size=4), kids, max_size=5)),
                 max_leaves=30).map(lambda v: json.dumps({"state": "ok", "x": v}).encode())))
def test_the_shortcuts_decide_as_the_full_checks_on_random_payloads(payload):
    assert outcome(messages.decode_message, payload) == outcome(full_decode, payload)


# --------------------------------------------------------------------------- validation

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, schema.MAX_INT + 5), st.text(max_size=6),
                      st.sampled_from(["ok", "a/b", "x" * 40, "g-1.b_2", ""]))
field_value = st.one_of(json_leaf, st.lists(json_leaf, max_size=4))
statusish = st.dictionaries(st.sampled_from([n for n in schema.NAMES if n not in ("device", "fleet")] + ["x"]),
                            field_value, max_size=12)


@settings(max_examples=500, deadline=None)
@given(message=statusish, small=st.booleans())
def test_the_plain_shortcut_returns_what_validate_returns_or_nothing(message, small):
    with pytest.MonkeyPatch.context() as m:
        if small:  # bounds are read at each call: smaller ones are followed at once
            m.setattr(schema, "MAX_TEXT", 3)
            m.setattr(schema, "MAX_LIST", 2)
            m.setattr(schema, "MAX_STATE", 2)
        got = messages._plain_fields(dict(message))
        try:
            want = schema.validate(dict(message))
        except ValueError:
            assert got is None
            return
    if got is not None:
        assert got == {k: v for k, v in want.items() if k not in ("device", "fleet")}


def test_every_status_a_device_builds_takes_the_plain_shortcut():
    for n in range(12):
        message = json.loads(device_status(n, n + 1))
        message.pop("device")
        message.pop("fleet")
        got = messages._plain_fields(message)
        assert got is not None, message
        assert got == {k: v for k, v in schema.validate(message).items() if k not in ("device", "fleet")}


def test_a_text_over_its_bound_is_clipped_by_validate_not_refused():
    row = messages.normalise_status(F, "d1", {"state": "ok", "detail": "x" * (schema.MAX_TEXT + 5)})
    assert row["detail"] == "x" * schema.MAX_TEXT
    assert json.loads(row["raw"])["detail"] == "x" * (schema.MAX_TEXT + 5)  # raw: as received


# --------------------------------------------------------------------------- storing


def batch_with_repeats() -> list[tuple]:
    """Statuses of 40 devices, each three times in one run (in order, older, a restart) and a
    will in the middle: what the COPY path has to order like one UPSERT per message."""
    batch = []
    for n in range(40):
        batch.append((F, f"d{n}", device_status(n, 5), T + 10))
    for n in range(40):
        batch.append((F, f"d{n}", device_status(n, 3), T + 11))  # older seq, earlier time: ignored
    batch.append((F, "d7", schema.encode(schema.offline("d7", F)), T + 12))
    for n in range(40):
        batch.append((F, f"d{n}", device_status(n, 6 if n % 2 else 1, time=T + (7 if n % 2 else 99)), T + 13))
    batch.append((F, "bad", b'{"state":"ok","version":-1}', T + 14))
    return batch


def test_copy_stores_what_one_upsert_per_message_stores(pg_target, tmp_path):
    batch = batch_with_repeats()
    assert sum(1 for *_, p, _ in batch) > fleetdb.COPY_MIN
    with fleetdb.open_db(pg_target) as pg, fleetdb.open_db(str(tmp_path / "one.db")) as one:
        pg.record_published(F, 6, "00" * 32, "test", T)
        one.record_published(F, 6, "00" * 32, "test", T)
        got = pg.ingest_statuses(batch)
        want = fleetdb.IngestResult()
        for item in batch:
            want += one.ingest_statuses([item])
        assert (got.accepted, got.ignored, got.rejected) == (want.accepted, want.ignored, want.rejected)
        assert got.accepted > 80 and got.ignored >= 40
        assert pg.devices(F) == one.devices(F)
        assert pg.device(F, "d7")["state"] == "ok" and pg.device(F, "d0")["suspect"] is True
        # The temporary table lives with the connection: a second batch, and one after a failed
        # transaction, take the same path.
        with pytest.raises(fleetdb.FleetDBError):
            pg.store_statuses([(F, ("status", ("x",), None))] * fleetdb.COPY_MIN)
        again = pg.ingest_statuses([(F, f"d{n}", device_status(n, 9), T + 20) for n in range(80)])
        assert again.accepted == 80 and pg.device(F, "d79")["seq"] == 9


# --------------------------------------------------------------------------- reading


def raw_publish(port: int, packets: list[bytes]) -> None:
    """Send PUBLISH packets from an MQTT 3.1.1 client on a raw socket; wait for every PUBACK."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06rawpub")
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(b"".join(packets))
        need, got = 4 * sum(1 for p in packets if p[0] & 0x06), b""
        while len(got) < need:
            chunk = s.recv(65536)
            assert chunk, "the broker hung up"
            got += chunk


def publish_packet(topic: str, payload: bytes, mid: int, qos: int = 1, retain: bool = False) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (mid.to_bytes(2, "big") if qos else b"") + payload
    n, length = len(body), b""
    while True:
        n, byte = n // 128, n % 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([0x30 | (qos << 1) | int(retain)]) + length + body


@pytest.mark.parametrize("reader", ["own", "paho", "paho-untested-release"])
def test_the_link_reads_every_message_once_in_order_and_acknowledges_them(private_mosquitto, monkeypatch,
                                                                           reader):
    if reader == "paho":  # as with a paho that lacks what Link._read uses: paho reads
        monkeypatch.setattr(link_module, "PAHO_INTERNALS", (*link_module.PAHO_INTERNALS, "_not_in_paho"))
    if reader == "paho-untested-release":  # internals present, release not checked: paho reads
        monkeypatch.setattr(link_module.paho_mqtt, "__version__", "3.0.0")
    extra = "max_inflight_messages 20\nmax_queued_messages 0\n"
    broker = private_mosquitto(brokers.private_mosquitto_conf(brokers.free_port()) + extra)
    got = []
    link = Link(mqtturl.parse(broker.url), on_message=got.append, session_expiry=0)
    link.open()
    try:
        assert link.mqtt5
        link.subscribe("t/live/+", sub_id=2)
        sizes = [10, 300, 5000, 16_000, 70_000]  # some span the reads

        def body(i: int) -> bytes:
            return f"{i}:".encode() + bytes([65 + i % 26]) * sizes[i % 5]
        packets = [publish_packet(f"t/live/{i % 7}", body(i), i + 1, qos=1 if i % 3 else 0)
                   for i in range(600)]
        raw_publish(broker.port, packets)
        # One MQTT 5 publish with a user property: paho decodes that one.
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("k", "v")
        c = brokers.connect(broker, protocol=mqtt.MQTTv5)
        c.paho.publish("t/live/x", b"with-props", qos=1, properties=props).wait_for_publish(5)
        c.close()
        deadline = time.monotonic() + 20
        while len(got) < 601 and time.monotonic() < deadline:
            assert link.loop(0.05)
        assert len(got) == 601
        order = [int(msg.payload.split(b":")[0]) for msg in got[:600]]
        assert sorted(order) == list(range(600))  # each once
        # In order within a QoS (the broker may pass QoS 0 ahead of QoS 1 waiting for a slot).
        for qos in (0, 1):
            sent = [i for i in order if (1 if i % 3 else 0) == qos]
            assert sent == sorted(sent)
        for msg in got[:600]:
            i = int(msg.payload.split(b":")[0])
            assert msg.topic == f"t/live/{i % 7}" and msg.payload == body(i) and msg.qos == (1 if i % 3 else 0)
            assert msg.retain is False and msg.properties.SubscriptionIdentifier == [2]
        assert got[600].topic == "t/live/x" and got[600].payload == b"with-props"
        assert list(got[600].properties.SubscriptionIdentifier) == [2]
        # Retained messages arrive flagged; the link still publishes and gets its PUBACKs.
        raw_publish(broker.port, [publish_packet("t/kept/a", b"kept", 1, retain=True)])
        link.subscribe("t/kept/+", sub_id=3)
        deadline = time.monotonic() + 5
        while len(got) < 602 and time.monotonic() < deadline:
            link.loop(0.05)
        assert got[601].retain is True and got[601].payload == b"kept"
        link.publish([("t/other", b"x")], retain=False)
        assert link._own_reader is (reader == "own")
    finally:
        link.close()
