"""The embedded broker against real clients (paho-mqtt 2.x on MQTT 3.1.1 and 5, AioClient).

Client-behaviour tests run against the embedded broker and, when one
answers on 127.0.0.1:1883, against the real Mosquitto too, so both are held
to the same behaviour. Without Mosquitto those parametrizations skip, except
under CI=true where they fail. Every test uses its own topic prefix and
clears the retained messages it set.

No test sleeps to synchronise: it waits for the event itself (SUBACK,
UNSUBACK, PUBACK, the message, the connection closing), and every wait is
bounded. "Nothing arrives" is shown with a fence (see `fence`): a marker
sent after the action must arrive, and nothing else may arrive before it.
A fixed wait remains only where the passage of time is what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import socket
import threading
import time
import uuid
from typing import NamedTuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from support.environment import skip_or_fail
from trustfleet_server.broker import AioClient, ConnectRefused, EmbeddedBroker, NotConnected
from trustfleet_server.broker import packets as p
from trustfleet_server.broker.embedded import (
    Message,
    _RetainedStore,
    _SubscriptionTree,
    check_topic_filter,
    topic_matches,
)

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 5.0
MOSQUITTO = ("127.0.0.1", 1883)


class Addr(NamedTuple):
    name: str
    host: str
    port: int


class Received(NamedTuple):
    topic: str
    payload: bytes
    qos: int | None       # None: AioClient does not report it
    retain: bool


# --- brokers ----------------------------------------------------------------------------------

def _mosquitto_unavailable() -> str | None:
    """Why 127.0.0.1:1883 cannot be used (None if an MQTT broker accepts us there)."""
    try:
        with socket.create_connection(MOSQUITTO, timeout=1.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(p.Connect(f"tf-probe-{uuid.uuid4().hex[:8]}").encode())
            answer = sock.recv(4)
            sock.sendall(b"\xe0\x00")
    except OSError as exc:
        return f"no MQTT broker on {MOSQUITTO[0]}:{MOSQUITTO[1]} ({exc})"
    if answer != b"\x20\x02\x00\x00":
        return f"broker on {MOSQUITTO[0]}:{MOSQUITTO[1]} refused an anonymous CONNECT ({answer!r})"
    return None


@pytest.fixture(scope="module")
def embedded():
    broker = EmbeddedBroker().start()
    yield broker
    broker.stop()


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request, embedded) -> Addr:
    if request.param == "embedded":
        return Addr("embedded", "127.0.0.1", embedded.port)
    why = _mosquitto_unavailable()
    if why:
        skip_or_fail(f"Mosquitto on 127.0.0.1:1883 is needed: {why}")
    return Addr("mosquitto", *MOSQUITTO)


@pytest.fixture
def prefix() -> str:
    return f"tft/{uuid.uuid4().hex[:12]}"


# --- clients ----------------------------------------------------------------------------------

class PahoClient:
    """paho-mqtt 2.x (callback API v2) behind a small blocking interface."""

    def __init__(self, addr: Addr, client_id: str, version: int, *, keepalive=60, will=None,
                 username=None, password=None):
        self.addr = addr
        self.version = version
        self.keepalive = keepalive
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=False,
            protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311)
        self.inbox: queue.Queue = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None
        self.connack_props = None
        self.subacks: dict = {}
        self.unsubacks: set = set()
        self.sub_event = threading.Condition()
        if will:
            topic, payload, retain, qos = will
            self.client.will_set(topic, payload, qos, retain)
        if username is not None:
            self.client.username_pw_set(username, password)
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self.disconnected.set()
        c.on_message = lambda _c, _u, m: self.inbox.put(
            Received(m.topic, m.payload, m.qos, bool(m.retain)))
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.connack_props = properties
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.sub_event:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.sub_event.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.sub_event:
            self.unsubacks.add(mid)
            self.sub_event.notify_all()

    def connect(self):
        if self.version == 5:
            self.client.connect(self.addr.host, self.addr.port, self.keepalive, clean_start=True)
        else:
            self.client.connect(self.addr.host, self.addr.port, self.keepalive)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "no CONNACK"
        assert not self.connack.is_failure, f"CONNECT refused: {self.connack}"
        return self

    def subscribe(self, topics):
        """topics: [(filter, qos or SubscribeOptions)]; returns the SUBACK codes."""
        rc, mid = self.client.subscribe(list(topics))
        assert rc == mqtt.MQTT_ERR_SUCCESS
        with self.sub_event:
            assert self.sub_event.wait_for(lambda: mid in self.subacks, TIMEOUT), "no SUBACK"
            return self.subacks[mid]

    def unsubscribe(self, filters):
        """Returns once the UNSUBACK is in: from then on the broker delivers nothing for them."""
        rc, mid = self.client.unsubscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS
        with self.sub_event:
            assert self.sub_event.wait_for(lambda: mid in self.unsubacks, TIMEOUT), "no UNSUBACK"

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.client.publish(topic, payload, qos, retain)
        if qos:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published(), f"no PUBACK for {topic}"

    def drop(self):
        """Vanish without DISCONNECT (the broker must publish the will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def stop_pinging(self):
        self.client.loop_stop()

    def disconnect(self):
        self.client.disconnect()
        self.client.loop_stop()


class AioSync:
    """AioClient driven from a background event loop, behind the same blocking interface."""

    version = 4

    def __init__(self, loop, addr: Addr, client_id: str, *, keepalive=60, will=None,
                 username=None, password=None):
        self.loop = loop
        self.inbox: queue.Queue = queue.Queue()
        self.client = AioClient(client_id, addr.host, addr.port, keepalive=keepalive, will=will,
                                username=username, password=password, timeout=TIMEOUT,
                                on_message=lambda t, pl, r: self.inbox.put(
                                    Received(t, pl, None, r)))

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 2)

    def connect(self):
        self.run(self.client.connect())
        return self

    def subscribe(self, topics):
        return self.run(self.client.subscribe(list(topics)))

    def unsubscribe(self, filters):
        self.run(self.client.unsubscribe(list(filters)))     # returns after the UNSUBACK

    def publish(self, topic, payload, qos=1, retain=False):
        self.run(self.client.publish(topic, payload, retain=retain, qos=qos))

    def drop(self):
        self.loop.call_soon_threadsafe(self.client.abort)

    def stop_pinging(self):
        raise NotImplementedError

    def disconnect(self):
        self.run(self.client.disconnect())


@pytest.fixture(scope="module")
def aio_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-aio-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()


@pytest.fixture
def clients(broker, aio_loop):
    """Factory: clients("paho5", "id") -> connected client; all closed and retained cleared after."""
    made = []
    retained_topics = set()

    def make(kind, client_id=None, *, connect=True, **kwargs):
        client_id = client_id or f"tft-{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "aio":
            client = AioSync(aio_loop, broker, client_id, **kwargs)
        else:
            client = PahoClient(broker, client_id, 5 if kind == "paho5" else 4, **kwargs)
        original = client.publish

        def publish(topic, payload, qos=1, retain=False):
            if retain:
                retained_topics.add(topic)
            original(topic, payload, qos=qos, retain=retain)

        client.publish = publish
        made.append(client)
        return client.connect() if connect else client

    yield make
    for client in made:
        with contextlib.suppress(Exception):
            client.disconnect()
    if retained_topics:
        cleaner = PahoClient(broker, f"tft-clean-{uuid.uuid4().hex[:8]}", 4).connect()
        for topic in retained_topics:
            cleaner.publish(topic, b"", qos=1, retain=True)
        cleaner.disconnect()


def get(client, timeout=TIMEOUT) -> Received:
    try:
        return client.inbox.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no message within {timeout} s") from None


def get_n(client, count, timeout=TIMEOUT) -> list[Received]:
    deadline = time.monotonic() + timeout
    out = []
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(out)} of {count} messages: {out}")
        try:
            out.append(client.inbox.get(timeout=remaining))
        except queue.Empty:
            continue
    return out


FENCE = b"fence:"


def fence(client, topic: str, publisher=None, qos: int = 1) -> list[Received]:
    """What `client` received before a marker that `publisher` sends now on `topic`.

    `client` must be subscribed to `topic`; `publisher` (default: `client`) is
    the connection that carried the action under test. Waiting for the marker
    replaces "watch for a while and see nothing", which passes on a broker that
    is merely slow. MQTT (3.1.1 and 5, section 4.6) makes a broker forward the
    messages one client publishes at one QoS to each subscriber in the order
    it received them. The spec states that per topic; both brokers here go
    further and handle each connection's packets in order and write to each
    subscriber through one queue, so it holds across topics too, and wherever
    a test can it puts the marker on the topic under test. Retained messages
    for a SUBSCRIBE are queued while the broker handles that packet, before it
    reads the client's next one, so a marker from the subscribing client
    itself fences them. Markers from earlier fences are not counted.
    """
    marker = FENCE + uuid.uuid4().hex.encode()
    (publisher or client).publish(topic, marker, qos=qos)
    before = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        try:
            msg = client.inbox.get(timeout=max(remaining, 0.001))
        except queue.Empty:
            raise AssertionError(f"fence marker on {topic} not delivered within {TIMEOUT} s; "
                                 f"before it: {before}") from None
        if msg.payload == marker:
            return before
        if not msg.payload.startswith(FENCE):
            before.append(msg)


CLIENT_KINDS = ["paho311", "paho5", "aio"]


# --- basic flows, every client kind, both brokers ---------------------------------------------

@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("qos", [0, 1])
def test_subscriber_receives_published_message_at_each_qos(clients, prefix, kind, qos):
    sub = clients(kind)
    assert sub.subscribe([(f"{prefix}/t", qos)]) == [qos]
    pub = clients(kind)
    pub.publish(f"{prefix}/t", b"hello", qos=qos)
    msg = get(sub)
    assert (msg.topic, msg.payload, msg.retain) == (f"{prefix}/t", b"hello", False)
    assert msg.qos in (None, qos)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_retained_message_reaches_late_subscriber_with_retain_flag(clients, prefix, kind):
    pub = clients(kind)
    pub.publish(f"{prefix}/bundle", b"v1", qos=1, retain=True)
    late = clients(kind)
    late.subscribe([(f"{prefix}/bundle", 1)])
    msg = get(late)
    assert (msg.topic, msg.payload, msg.retain) == (f"{prefix}/bundle", b"v1", True)
    assert msg.qos in (None, 1)


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_retained_message_is_replaced_then_cleared_by_empty_payload(clients, prefix, kind):
    pub = clients(kind)
    pub.publish(f"{prefix}/ts", b"old", retain=True)
    pub.publish(f"{prefix}/ts", b"new", retain=True)
    sub = clients(kind)
    sub.subscribe([(f"{prefix}/#", 1)])
    assert get(sub).payload == b"new"
    assert fence(sub, f"{prefix}/fence") == []          # no second, older retained copy
    pub.publish(f"{prefix}/ts", b"", retain=True)
    assert get(sub).payload == b""          # the clearing publish is forwarded live
    again = clients(kind)
    again.subscribe([(f"{prefix}/#", 1)])
    assert fence(again, f"{prefix}/fence") == []


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_64kib_retained_message_arrives_intact(clients, prefix, kind):
    payload = random.Random(64).randbytes(64 * 1024)
    clients(kind).publish(f"{prefix}/big", payload, retain=True)
    sub = clients(kind)
    sub.subscribe([(f"{prefix}/big", 1)])
    assert get(sub).payload == payload


@pytest.mark.parametrize("kind", ["paho311", "paho5"])
def test_retained_messages_go_only_to_the_subscribing_client(clients, prefix, kind):
    # amqtt 0.12.1 sent retained messages matching *other* clients' filters on connect.
    pub = clients(kind)
    pub.publish(f"{prefix}/a/x", b"for-a", retain=True)
    pub.publish(f"{prefix}/b/y", b"for-b", retain=True)
    a = clients(kind)
    a.subscribe([(f"{prefix}/a/#", 1)])
    assert [m.payload for m in get_n(a, 1)] == [b"for-a"]
    b = clients(kind)
    b.subscribe([(f"{prefix}/b/#", 1)])
    assert [m.payload for m in get_n(b, 1)] == [b"for-b"]
    clients(kind)                           # a client that subscribes to nothing
    assert fence(a, f"{prefix}/a/fence") == []
    assert fence(b, f"{prefix}/b/fence") == []


@pytest.mark.parametrize("kind", ["paho311", "paho5"])
def test_live_forwarding_clears_retain_flag(clients, prefix, kind):
    sub = clients(kind)
    sub.subscribe([(f"{prefix}/s", 1)])
    clients(kind).publish(f"{prefix}/s", b"x", retain=True)
    assert get(sub).retain is False


def test_mqtt5_retain_as_published_keeps_retain_flag_live(clients, prefix):
    sub = clients("paho5")
    sub.subscribe([(f"{prefix}/s", SubscribeOptions(qos=1, retainAsPublished=True))])
    clients("paho5").publish(f"{prefix}/s", b"x", retain=True)
    assert get(sub).retain is True


def test_mqtt5_retain_handling_2_sends_no_retained_on_subscribe(clients, prefix):
    clients("paho5").publish(f"{prefix}/r", b"kept", retain=True)
    sub = clients("paho5")
    sub.subscribe([(f"{prefix}/r", SubscribeOptions(qos=1, retainHandling=2))])
    assert fence(sub, f"{prefix}/r") == []                 # the marker is not retained


def test_mqtt5_no_local_suppresses_own_messages(clients, prefix):
    c = clients("paho5")
    c.subscribe([(f"{prefix}/n", SubscribeOptions(qos=1, noLocal=True)), (f"{prefix}/fence", 1)])
    c.publish(f"{prefix}/n", b"mine")
    assert fence(c, f"{prefix}/fence") == []               # "mine" did not come back
    other = clients("paho5")
    other.publish(f"{prefix}/n", b"theirs")
    assert get(c).payload == b"theirs"


@pytest.mark.parametrize("sub_qos,pub_qos,delivered", [(1, 0, 0), (0, 1, 0), (1, 1, 1), (0, 0, 0)])
@pytest.mark.parametrize("kind", ["paho311", "paho5"])
def test_delivered_qos_is_min_of_published_and_granted(clients, prefix, kind, sub_qos, pub_qos,
                                                       delivered):
    sub = clients(kind)
    sub.subscribe([(f"{prefix}/q", sub_qos)])
    clients(kind).publish(f"{prefix}/q", b"x", qos=pub_qos)
    assert get(sub).qos == delivered


def test_overlapping_subscriptions_deliver_at_highest_granted_qos(clients, prefix):
    # Mosquitto may send one copy per matching subscription; the embedded broker sends one.
    sub = clients("paho311")
    sub.subscribe([(f"{prefix}/#", 0), (f"{prefix}/+", 1)])
    pub = clients("paho311")
    pub.publish(f"{prefix}/o", b"x", qos=1)
    msgs = fence(sub, f"{prefix}/fence", pub)             # every copy of "x" comes first
    assert msgs and {m.payload for m in msgs} == {b"x"}
    assert max(m.qos for m in msgs) == 1


@pytest.mark.parametrize("version", [4, 5])
def test_subscription_asking_qos2_is_granted_at_most_qos1(embedded, version):
    # Mosquitto grants QoS 2; capping at 1 is the embedded broker's choice.
    c = PahoClient(Addr("embedded", "127.0.0.1", embedded.port), "tft-q2", version).connect()
    try:
        assert c.subscribe([("q2/x", 2)]) == [1]
    finally:
        c.disconnect()


# --- wildcards --------------------------------------------------------------------------------

MATCH_TABLE = [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/b", "a/b/c", False),
    ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/+", "a", False), ("a/+", "a/", True),
    ("a/#", "a", True), ("a/#", "a/b", True), ("a/#", "a/b/c", True), ("a/#", "ab", False),
    ("a/+/c", "a/b/c", True), ("a/+/c", "a/b/d", False), ("+/b/#", "x/b", True),
    ("#", "a/b", True), ("#", "/a", True), ("+/+", "/a", True), ("+", "/a", False),
    ("+", "a", True), ("/+", "/a", True), ("a//b", "a//b", True), ("a/+/b", "a//b", True),
    ("A/b", "a/b", False), ("+/#", "a", True),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True), ("$SYS/+", "$SYS/x", True), ("$SYS/x", "$SYS/x", True),
]


@pytest.mark.parametrize("filt,topic,expected", MATCH_TABLE)
def test_wildcard_matching_table(filt, topic, expected):
    assert check_topic_filter(filt) is None
    assert topic_matches(filt, topic) is expected
    tree = _SubscriptionTree()
    tree.add("conn", None, filt, (1, False, False))
    assert ("conn" in tree.match(topic, None)[0]) is expected
    store = _RetainedStore()
    store.set(Message(topic, b"x", retain=True))
    assert bool(store.find(filt, 0.0)) is expected


@pytest.mark.parametrize("filt", ["a/#/b", "a#", "a/b+", "+a", "", "##"])
def test_invalid_filters_are_recognised(filt):
    assert check_topic_filter(filt) is not None


@pytest.mark.parametrize("kind", ["paho311", "paho5"])
def test_live_wildcards_match_like_the_table(clients, prefix, kind):
    filters = ["a/+", "a/#", "a/+/c", "+/b/#"]
    topics = ["a/b", "a/b/c", "a", "x/b", "a/b/d"]
    subs = {}
    for filt in filters:
        subs[filt] = clients(kind)
        subs[filt].subscribe([(f"{prefix}/{filt}", 1)])
    pub = clients(kind)
    for topic in topics:
        pub.publish(f"{prefix}/{topic}", topic.encode())
    for filt, client in subs.items():
        marker_topic = filt.replace("+", "fence").replace("#", "fence")  # one the filter matches
        got = sorted(m.payload.decode() for m in fence(client, f"{prefix}/{marker_topic}", pub))
        assert got == sorted(t for t in topics if topic_matches(filt, t)), filt


@pytest.mark.parametrize("kind", ["paho311", "paho5"])
def test_root_wildcards_do_not_match_dollar_topics(clients, prefix, kind):
    tag = uuid.uuid4().hex[:12]
    hashed = clients(kind)
    hashed.subscribe([("#", 0)])
    plus = clients(kind)
    plus.subscribe([(f"+/{tag}", 1)])
    explicit = clients(kind)
    explicit.subscribe([(f"$tf{tag}/#", 1)])
    pub = clients(kind)
    pub.publish(f"$tf{tag}/x", b"dollar")
    pub.publish(f"$tf{tag}", b"dollar-root")
    pub.publish(f"plain{tag}/x", b"plain")
    assert sorted(m.payload for m in get_n(explicit, 2)) == [b"dollar", b"dollar-root"]
    # "#" also sees other tests' traffic on a shared broker: only this test's topics count.
    seen = fence(hashed, f"plain{tag}/fence", pub, qos=0)   # "hashed" was granted QoS 0
    assert [m.payload for m in seen if tag in m.topic] == [b"plain"]
    assert fence(plus, f"fence/{tag}", pub) == []


# --- wills and keep-alive ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_will_is_published_on_abnormal_disconnect_and_retained(clients, prefix, kind):
    watcher = clients("paho311")
    watcher.subscribe([(f"{prefix}/status/#", 1)])
    dev = clients(kind, will=(f"{prefix}/status/d1", b'{"state":"offline"}', True, 1))
    dev.drop()
    msg = get(watcher)
    assert (msg.topic, msg.payload) == (f"{prefix}/status/d1", b'{"state":"offline"}')
    late = clients("paho311")
    late.subscribe([(f"{prefix}/status/+", 1)])
    assert get(late).retain is True
    clients("paho311").publish(f"{prefix}/status/d1", b"", retain=True)  # clean up the will


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_will_is_not_published_on_clean_disconnect(clients, prefix, kind):
    watcher = clients("paho311")
    watcher.subscribe([(f"{prefix}/status/#", 1)])
    dev_id = f"tft-dev-{uuid.uuid4().hex[:8]}"
    dev = clients(kind, dev_id, will=(f"{prefix}/status/d2", b"offline", False, 1))
    dev.disconnect()
    # The fence needs the broker to have handled dev's DISCONNECT first, and a client may
    # close its socket without waiting for that. A new connection under dev's client id
    # settles it: had dev's session still been open, this would take it over, and a
    # takeover publishes the will (test_same_client_id_takes_over_and_old_will_comes_first),
    # so a broker that has not yet seen the DISCONNECT fails here instead of passing.
    probe = clients("paho311", dev_id)
    assert fence(watcher, f"{prefix}/status/fence", probe) == []


@pytest.mark.parametrize("kind", ["paho311", "paho5"])
def test_keepalive_expiry_fires_the_will(clients, prefix, kind):
    watcher = clients("paho311")
    watcher.subscribe([(f"{prefix}/status/#", 1)])
    dev = clients(kind, keepalive=1, will=(f"{prefix}/status/d3", b"offline", False, 1))
    started = time.monotonic()
    dev.stop_pinging()                       # socket stays open, nothing more is sent
    assert get(watcher, timeout=10.0).payload == b"offline"
    assert time.monotonic() - started >= 1.0


def test_aioclient_pings_keep_an_idle_connection_alive(clients, prefix):
    watcher = clients("paho311")
    watcher.subscribe([(f"{prefix}/status/#", 1)])
    dev = clients("aio", keepalive=1, will=(f"{prefix}/status/d4", b"offline", False, 1))
    # A fixed wait on purpose: what is tested is time passing. With keepalive=1 a broker
    # drops a silent client after 1.5 s, so 2.5 s without a will needs the pings.
    time.sleep(2.5)
    assert fence(watcher, f"{prefix}/status/fence", dev) == []     # no will before the marker
    assert not dev.client.closed


# --- sessions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["paho311", "paho5", "aio"])
def test_same_client_id_takes_over_and_old_will_comes_first(clients, prefix, kind):
    watcher = clients("paho311")
    watcher.subscribe([(f"{prefix}/status/#", 1)])
    cid = f"tft-dev-{uuid.uuid4().hex[:8]}"
    old = clients(kind, cid, will=(f"{prefix}/status/dev", b"offline", False, 1))
    new = clients(kind, cid)
    new.publish(f"{prefix}/status/dev", b"online")
    assert [m.payload for m in get_n(watcher, 2)] == [b"offline", b"online"]
    if kind == "aio":
        old.run(asyncio.wait_for(old.client.wait_closed(), TIMEOUT))
    else:
        assert old.disconnected.wait(TIMEOUT)


@pytest.mark.parametrize("kind", ["paho311", "paho5"])
def test_clean_session_connack_says_no_session_present(clients, kind):
    c = clients(kind)
    assert c.client.is_connected()
    # paho exposes session-present only through flags in on_connect; both brokers run clean.
    assert c.connack.value == 0


# --- MQTT 5 shared subscriptions --------------------------------------------------------------

def test_shared_subscription_splits_messages_between_members(clients, prefix):
    group = f"g{uuid.uuid4().hex[:6]}"
    members = [clients("paho5") for _ in range(2)]
    for i, m in enumerate(members):
        m.subscribe([(f"$share/{group}/{prefix}/work/+", 1)])
        m.subscribe([(f"{prefix}/fence/{i}", 1)])          # a marker topic for this member only
    everyone = clients("paho5")
    everyone.subscribe([(f"{prefix}/work/+", 1)])
    pub = clients("paho5")
    for i in range(10):
        pub.publish(f"{prefix}/work/{i}", str(i).encode())
    assert len(get_n(everyone, 10)) == 10
    got = [sorted(int(m.payload) for m in fence(member, f"{prefix}/fence/{i}", pub))
           for i, member in enumerate(members)]
    assert sorted(got[0] + got[1]) == list(range(10))   # each message exactly once per group
    assert got[0] and got[1]


def test_shared_subscription_and_retained_messages_on_subscribe(clients, prefix, broker):
    """MQTT 5 section 4.8.2: no retained messages for a new shared subscription.

    The embedded broker follows it. Mosquitto 2.0.11, measured here, sends
    them anyway; `serve` reads retained statuses with a plain subscription at
    start for that reason, so both behaviours are pinned down here.
    """
    clients("paho5").publish(f"{prefix}/job", b"retained", retain=True)
    member = clients("paho5")
    member.subscribe([(f"$share/g1/{prefix}/job", 1)])
    # The only member of its group, so its own (unretained) marker on the topic comes back.
    got = [m.payload for m in fence(member, f"{prefix}/job")]
    assert got == ([b"retained"] if broker.name == "mosquitto" else [])
    plain = clients("paho5")
    plain.subscribe([(f"{prefix}/job", 1)])
    assert get(plain).payload == b"retained"


def test_embedded_connack_advertises_its_mqtt5_limits(embedded):
    addr = Addr("embedded", "127.0.0.1", embedded.port)
    c = PahoClient(addr, "tft-props", 5).connect()
    try:
        props = c.connack_props
        assert props.MaximumQoS == 1
        assert props.MaximumPacketSize == embedded.broker.max_packet
        assert props.SubscriptionIdentifierAvailable == 0
    finally:
        c.disconnect()


# --- robustness (embedded broker only) --------------------------------------------------------

def raw_connect(port: int, version: int = 4, client_id: str | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(p.Connect(client_id or f"raw-{uuid.uuid4().hex[:8]}", version).encode())
    head = sock.recv(2)
    body = sock.recv(head[1]) if len(head) == 2 else b""
    assert head[:1] == b"\x20" and body[1:2] == b"\x00", (head, body)
    return sock


def read_until_closed(sock: socket.socket, limit=TIMEOUT) -> bytes:
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def private_broker():
    broker = EmbeddedBroker(max_packet=64 * 1024 + 1024).start()
    yield broker
    broker.stop()


def test_oversized_packet_is_refused_and_broker_keeps_serving(private_broker, aio_loop):
    port = private_broker.port
    sock = raw_connect(port, version=5)
    sock.sendall(b"\x30" + p.encode_varint(2 << 20) + b"\x00\x01t")   # announces 2 MiB
    answer = read_until_closed(sock)
    sock.close()
    assert answer == p.Disconnect(p.PACKET_TOO_LARGE).encode(5)
    sock311 = raw_connect(port, version=4)
    sock311.sendall(p.Publish("t", b"x" * (70 * 1024)).encode(4))
    assert read_until_closed(sock311) == b""
    sock311.close()
    addr = Addr("embedded", "127.0.0.1", port)
    c = PahoClient(addr, "after-oversize", 4).connect()
    c.subscribe([("ok/1", 1)])
    c.publish("ok/1", b"fine")
    assert get(c).payload == b"fine"
    c.disconnect()
    assert private_broker.broker.stats["internal_errors"] == 0


def test_qos2_publish_is_refused_with_reason_code_in_mqtt5(private_broker):
    sock = raw_connect(private_broker.port, version=5)
    sock.sendall(p.Publish("t", b"x", 2, packet_id=1).encode(5))
    assert read_until_closed(sock) == p.Disconnect(p.QOS_NOT_SUPPORTED).encode(5)
    sock.close()


def test_unsupported_protocol_level_gets_connack_refusal(private_broker):
    sock = socket.create_connection(("127.0.0.1", private_broker.port), timeout=TIMEOUT)
    sock.sendall(b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01a")
    assert read_until_closed(sock) == b"\x20\x02\x00\x01"
    sock.close()


def test_packets_before_connect_close_the_connection(private_broker):
    sock = socket.create_connection(("127.0.0.1", private_broker.port), timeout=TIMEOUT)
    sock.sendall(b"\xc0\x00")
    assert read_until_closed(sock) == b""
    sock.close()


def test_fuzzed_bytes_after_connect_never_break_the_broker(private_broker):
    port = private_broker.port
    addr = Addr("embedded", "127.0.0.1", port)
    bystander = PahoClient(addr, "bystander", 5).connect()
    bystander.subscribe([("fuzz/ok", 1)])
    rng = random.Random(1234)
    valid = [
        p.Subscribe(1, [("fuzz/#", p.SubOptions(1))]).encode(5),
        p.Publish("fuzz/x", b"payload", 1, True, packet_id=2).encode(5),
        p.Unsubscribe(3, ["fuzz/#"]).encode(5),
        p.Pingreq().encode(), p.Puback(1).encode(5),
    ]
    for round_ in range(150):
        version = 5 if round_ % 2 else 4
        sock = raw_connect(port, version)
        if round_ % 3 == 0:
            junk = rng.randbytes(rng.randint(1, 300))
        else:
            junk = bytearray(b"".join(rng.sample(valid, 3)))
            for _ in range(rng.randint(1, 6)):
                junk[rng.randrange(len(junk))] = rng.randrange(256)
            junk = bytes(junk)
        with contextlib.suppress(OSError):
            sock.sendall(junk)
        sock.close()
    bystander.publish("fuzz/ok", b"still here")
    assert get(bystander).payload == b"still here"
    bystander.disconnect()
    stats = private_broker.broker.stats
    assert stats["internal_errors"] == 0
    assert stats["protocol_errors"] > 0


def test_slow_subscriber_is_disconnected_instead_of_buffering(aio_loop):
    with EmbeddedBroker(max_packet=64 * 1024, max_queue=256 * 1024) as broker:
        slow = socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(p.Connect("slow").encode() + p.Subscribe(1, [("flood", p.SubOptions(0))])
                     .encode(4))
        # The SUBACK says the subscription is in place; after it this reader reads nothing.
        assert [type(x) for x in read_packets(slow, 2, 4)] == [p.Connack, p.Suback]
        addr = Addr("embedded", "127.0.0.1", broker.port)
        pub = PahoClient(addr, "flooder", 4).connect()
        chunk = b"x" * 60000
        for _ in range(200):                 # 12 MB at the slow reader, which never reads
            pub.publish("flood", chunk, qos=1)
            if broker.broker.stats["slow_disconnects"]:
                break
        assert broker.broker.stats["slow_disconnects"] == 1
        pub.publish("flood", b"fine", qos=1)  # the publisher is unaffected
        pub.disconnect()
        slow.close()


def test_auth_callback_refuses_bad_password_with_typed_error(aio_loop):
    def auth(username, password):
        return (username, password) == ("fleet", "s3cret")

    with EmbeddedBroker(auth=auth) as broker:
        def attempt(password):
            client = AioClient("dev", "127.0.0.1", broker.port, username="fleet",
                               password=password, timeout=TIMEOUT)

            async def go():
                await client.connect()
                await client.disconnect()

            return asyncio.run_coroutine_threadsafe(go(), aio_loop).result(TIMEOUT * 2)

        attempt("s3cret")
        with pytest.raises(ConnectRefused) as info:
            attempt("wrong")
        assert info.value.code == p.REFUSED_BAD_USERNAME_PASSWORD


def test_aioclient_reports_closed_when_broker_stops(aio_loop):
    broker = EmbeddedBroker().start()
    client = AioClient("c", "127.0.0.1", broker.port, timeout=TIMEOUT)

    async def connect():
        await client.connect()

    asyncio.run_coroutine_threadsafe(connect(), aio_loop).result(TIMEOUT)
    assert not client.closed
    broker.stop()
    asyncio.run_coroutine_threadsafe(
        asyncio.wait_for(client.wait_closed(), TIMEOUT), aio_loop).result(TIMEOUT * 2)
    assert client.closed

    async def publish():
        await client.publish("t", b"x")

    with pytest.raises(NotConnected):
        asyncio.run_coroutine_threadsafe(publish(), aio_loop).result(TIMEOUT)


def test_aioclient_connect_to_closed_port_raises_not_connected(aio_loop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = AioClient("c", "127.0.0.1", port, timeout=TIMEOUT)
    with pytest.raises(NotConnected):
        asyncio.run_coroutine_threadsafe(client.connect(), aio_loop).result(TIMEOUT * 2)


def test_aioclient_messages_iterator_yields_then_ends_on_close(aio_loop):
    with EmbeddedBroker() as broker:
        async def scenario():
            sub = AioClient("sub", "127.0.0.1", broker.port, timeout=TIMEOUT)
            pub = AioClient("pub", "127.0.0.1", broker.port, timeout=TIMEOUT)
            await sub.connect()
            await pub.connect()
            await sub.subscribe([("m/#", 1)])
            for i in range(3):
                await pub.publish(f"m/{i}", b"%d" % i, retain=(i == 0))
            got = []
            async for item in sub.messages():
                got.append(item)
                if len(got) == 3:
                    await sub.disconnect()
            await pub.disconnect()
            return got

        got = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(scenario(), TIMEOUT * 2), aio_loop).result(TIMEOUT * 3)
    assert got == [("m/0", b"0", False), ("m/1", b"1", False), ("m/2", b"2", False)]


def test_embedded_broker_stops_without_leaving_a_thread():
    broker = EmbeddedBroker().start()
    name = f"trustfleet-mqtt-broker-{broker.port}"
    assert any(t.name == name for t in threading.enumerate())
    sock = raw_connect(broker.port)
    broker.stop()
    assert read_until_closed(sock) == b""
    sock.close()
    assert not any(t.name == name for t in threading.enumerate())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()


def test_embedded_broker_reports_bind_failure(embedded):
    with pytest.raises(OSError):
        EmbeddedBroker(port=embedded.port).start()


# --- flow control, pacing and the smaller features --------------------------------------------

def read_packets(sock: socket.socket, count: int, version: int) -> list:
    reader = p.FrameReader()
    out = []
    sock.settimeout(TIMEOUT)
    while len(out) < count:
        frame = reader.next_frame()
        if frame is None:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} of {count} packets"
            reader.feed(chunk)
            continue
        out.append(p.decode(*frame, version))
    return out


def test_mqtt5_receive_maximum_limits_unacknowledged_messages(private_broker):
    sock = socket.create_connection(("127.0.0.1", private_broker.port), timeout=TIMEOUT)
    sock.sendall(p.Connect("rm", protocol_level=5, properties={p.RECEIVE_MAXIMUM: 2}).encode()
                 + p.Subscribe(1, [("rm/#", p.SubOptions(1))]).encode(5))
    assert [type(x) for x in read_packets(sock, 2, 5)] == [p.Connack, p.Suback]
    for i in range(5):
        private_broker.publish(f"rm/{i}", b"%d" % i, qos=1)
    first = read_packets(sock, 2, 5)
    assert [m.payload for m in first] == [b"0", b"1"]
    # The third waits for a PUBACK. A QoS 0 marker would queue behind it, so the fence
    # is a PINGREQ: the broker answers it after it has handled the five publishes
    # above (each returned only once the broker had routed it), on the same ordered
    # stream, so a third PUBLISH sent too early would be read before the PINGRESP.
    sock.sendall(p.Pingreq().encode())
    assert [type(x) for x in read_packets(sock, 1, 5)] == [p.Pingresp]
    sock.sendall(p.Puback(first[0].packet_id).encode(5))
    assert [m.payload for m in read_packets(sock, 1, 5)] == [b"2"]
    sock.sendall(p.Puback(first[1].packet_id).encode(5))
    assert [m.payload for m in read_packets(sock, 1, 5)] == [b"3"]
    sock.close()


def test_many_retained_messages_are_paced_not_treated_as_a_slow_client(aio_loop):
    with EmbeddedBroker(max_packet=16 * 1024, max_queue=128 * 1024) as broker:
        payload = b"r" * 8192
        for i in range(300):                  # 2.4 MB of retained, 19 x max_queue
            broker.publish(f"ret/{i}", payload, qos=1, retain=True)
        addr = Addr("embedded", "127.0.0.1", broker.port)
        sub = PahoClient(addr, "many-retained", 4).connect()
        sub.subscribe([("ret/#", 1)])
        got = get_n(sub, 300, timeout=20)
        assert {m.topic for m in got} == {f"ret/{i}" for i in range(300)}
        assert all(m.retain and m.payload == payload for m in got)
        assert broker.broker.stats["slow_disconnects"] == 0
        sub.disconnect()


def test_mqtt5_retained_message_expires(clients, prefix):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 2
    pub = clients("paho5")
    info = pub.client.publish(f"{prefix}/exp", b"short-lived", 1, True, props)
    info.wait_for_publish(TIMEOUT)
    assert info.is_published()
    published = time.monotonic()
    sub = clients("paho5")

    def retained_now() -> list[bytes]:
        """What subscribing again brings: a broker resends retained messages on every SUBSCRIBE."""
        sub.subscribe([(f"{prefix}/exp", 1)])
        return [m.payload for m in fence(sub, f"{prefix}/exp")]   # the marker is not retained

    assert retained_now() == [b"short-lived"]     # there before it expires
    # What is tested is time passing, so this waits for it, polling: the message must
    # be gone soon after its 2 s (brokers count expiry in whole seconds).
    while (got := retained_now()) and time.monotonic() - published < 2 + TIMEOUT:
        time.sleep(0.1)
    assert got == [], f"still retained {time.monotonic() - published:.1f} s after publishing"


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_unsubscribe_stops_delivery(clients, prefix, kind):
    sub = clients(kind)
    sub.subscribe([(f"{prefix}/u", 1), (f"{prefix}/fence", 1)])
    pub = clients(kind)
    pub.publish(f"{prefix}/u", b"one")
    assert get(sub).payload == b"one"
    sub.unsubscribe([f"{prefix}/u"])        # returns once the UNSUBACK is in
    pub.publish(f"{prefix}/u", b"two")
    assert fence(sub, f"{prefix}/fence", pub) == []


@pytest.mark.parametrize("version", [4, 5])
def test_empty_client_id_gets_an_assigned_one(embedded, version):
    c = PahoClient(Addr("embedded", "127.0.0.1", embedded.port), "", version).connect()
    try:
        if version == 5:
            assert c.connack_props.AssignedClientIdentifier.startswith("auto-")
        c.subscribe([("anon/t", 1)])
        c.publish("anon/t", b"x")
        assert get(c).payload == b"x"
    finally:
        c.disconnect()


def test_empty_client_id_without_clean_session_is_refused_in_311(embedded):
    sock = socket.create_connection(("127.0.0.1", embedded.port), timeout=TIMEOUT)
    sock.sendall(p.Connect("", clean_start=False).encode())
    assert read_until_closed(sock) == b"\x20\x02\x00\x02"
    sock.close()


def test_connection_without_connect_is_dropped_after_timeout():
    with EmbeddedBroker(connect_timeout=0.3) as broker:
        sock = socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT)
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert time.monotonic() - started < 3
        sock.close()


def test_tls_listener_serves_aioclient(tmp_path, aio_loop):
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = tmp_path / "cert.pem"
    key_pem = tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_pem, key_pem)
    client_ctx = ssl.create_default_context(cafile=str(cert_pem))

    with EmbeddedBroker(ssl=server_ctx) as broker:
        async def scenario():
            client = AioClient("tls", "127.0.0.1", broker.port, ssl=client_ctx, timeout=TIMEOUT)
            await client.connect()
            await client.subscribe([("tls/t", 1)])
            await client.publish("tls/t", b"secret", retain=True)
            item = await anext(client.messages())
            await client.disconnect()
            return item

        item = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(scenario(), TIMEOUT), aio_loop).result(TIMEOUT * 2)
    assert item == ("tls/t", b"secret", False)
