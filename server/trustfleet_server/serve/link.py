"""The broker link of `trustfleet serve` and `trustfleet publish`: one paho client driven by hand.

MQTT 5 first; when the broker refuses it (CONNACK "unsupported protocol
version", or it hangs up before any CONNACK) the link falls back to 3.1.1
and stays there. Publishes are retained at QoS 1 and wait for their PUBACKs.

Several URLs (the nodes of one clustered broker): open() tries them in
turn, starting with the node in use, or after a connection was up, with the
next one (the node it was on may be the one that died), and uses the first
that accepts. `url` is the node in use. The protocol chosen on the first
connect holds for every node: they are one broker.
"""

from __future__ import annotations

import contextlib
import logging
import select
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt as paho_mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from trustfleet_server.errors import BrokerError
from trustfleet_server.mqtturl import BrokerURL

log = logging.getLogger("trustfleet.serve")

KEEPALIVE = 30
# MQTT 5: the broker keeps our session (and the QoS 1 reports queued for it) this long after
# a connection drops. Short on purpose: while a dead worker's session lives, the broker still
# hands it its share of the shared subscription. A clean exit ends the session at once.
SESSION_EXPIRY = 60
CONNECT_TIMEOUT = 10.0
PUBLISH_TIMEOUT = 15.0
# MQTT 3.1.1 has one failure code for every refused subscription, so a refusal may be for a
# while only (NATS 2.9 with a node of its cluster down refuses some, at random): ask again.
SUBSCRIBE_TRIES_311 = 3
SUBSCRIBE_RETRY_S = 0.5
READ_SIZE = 256 * 1024         # bytes read per loop() before the caller's periodic work runs again
# What Link._read uses of paho's client beyond its API, and the paho releases it was checked
# against (tests/test_ingest_fastpath.py). Another release, or a client without these
# attributes, is read by paho itself, PAHO_DRAIN_MAX packets per loop() (slower).
PAHO_READER_RELEASES = ("2.1.", "2.2.")
PAHO_INTERNALS = ("_in_packet", "_packet_handle", "_out_packet", "_loop_rc_handle", "_msgtime_mutex",
                  "_last_bytes_received")
PAHO_DRAIN_MAX = 500

_UNSUPPORTED_PROTOCOL = (0x84, 1)  # MQTT 5 reason code / 3.1.1 return code


class Link:
    """A paho client driven by hand, with the MQTT 5 -> 3.1.1 fallback and acknowledged publishes.

    Args:
        url: the broker, or a list of the nodes of a clustered broker.
        client_id: MQTT client id (kept across reconnects, so an MQTT 5
            session with its queued QoS 1 messages survives a short outage).
        on_message: called with each paho message, in the caller's thread.
        session_expiry: MQTT 5 Session Expiry Interval (s) sent with CONNECT.
        resume: also resume an existing session on the first connect
            (clean start off): with a stable client id, a restarted process
            takes over the session a dead one left, its queued messages and
            its share of the shared subscriptions, at once.
    """

    def __init__(self, url: BrokerURL | Sequence[BrokerURL], client_id: str | None = None,
                 on_message: Callable[[Any], None] | None = None,
                 session_expiry: int = SESSION_EXPIRY, resume: bool = False) -> None:
        self.urls = [url] if isinstance(url, BrokerURL) else list(url)
        if not self.urls:
            raise ValueError("Link needs at least one broker URL")
        self.url = self.urls[0]
        self._node = 0  # index of self.url in self.urls
        self.subscribe_qos = 1  # 0 on a NATS cluster (docs/operations.md, "Clustered broker")
        self.client_id = client_id or f"tf-{uuid.uuid4().hex[:16]}"
        self.on_message = on_message
        self.session_expiry = session_expiry
        self.resume = resume
        self.protocol: int | None = None  # chosen on the first successful connect
        self.client: mqtt.Client | None = None
        self.connected = False
        self.shared_subscriptions = False
        self.subscription_ids = False
        self._ever_connected = False
        self._acks: dict[int, Any] = {}
        self._subacks: dict[int, Any] = {}
        self._reader_for: mqtt.Client | None = None  # the client whose socket _inbuf holds bytes of
        self._inbuf = bytearray()
        self._reading = False
        self._own_reader = True

    @property
    def mqtt5(self) -> bool:
        return self.protocol == mqtt.MQTTv5

    def open(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect to the first node that accepts (see the module docstring). Raises: BrokerError
        (with several nodes: what each said)."""
        n = len(self.urls)
        first = (self._node + 1) % n if self._ever_connected else self._node
        errors = []
        for i in range(n):
            self._node = (first + i) % n
            self.url = self.urls[self._node]
            try:
                self._open_node(timeout)
                return
            except BrokerError as exc:
                if n == 1:
                    raise
                errors.append(str(exc))
                if i + 1 < n:
                    log.info("%s; trying the next broker node", exc)
        raise BrokerError(f"no broker node answered: {'; '.join(errors)}")

    def _open_node(self, timeout: float) -> None:
        """Connect to self.url (MQTT 5, else 3.1.1). Raises: BrokerError."""
        if self.protocol is not None:
            try:
                self._attempt(self.protocol, timeout)
            except _Unsupported as exc:
                # The protocol is settled: a hang-up before CONNACK (a broker mid-restart, a
                # proxy that accepts and closes) is an ordinary failure to retry, not a fallback.
                raise BrokerError(f"{self.url}: {exc}") from None
            return
        try:
            self._attempt(mqtt.MQTTv5, timeout)
            self.protocol = mqtt.MQTTv5
        except _Unsupported as exc:
            log.info("%s: MQTT 5 refused (%s); using MQTT 3.1.1", self.url, exc)
            self._attempt(mqtt.MQTTv311, timeout)
            self.protocol = mqtt.MQTTv311

    def _attempt(self, protocol: int, timeout: float) -> None:
        self.close()
        kw: dict[str, Any] = {"client_id": self.client_id, "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kw["clean_session"] = True
        c = mqtt.Client(CallbackAPIVersion.VERSION2, **kw)
        if self.url.username:
            c.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            c.tls_set()
        c.max_inflight_messages_set(100)
        box: dict[str, Any] = {}
        c.on_connect = lambda cl, ud, flags, rc, props: box.update(rc=rc, props=props)
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = lambda cl, ud, mid, rc, props: self._acks.__setitem__(mid, rc)
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self._subacks.__setitem__(mid, rcs)
        self.client = c
        try:
            if protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                c.connect(self.url.host, self.url.port, KEEPALIVE,
                          clean_start=not (self._ever_connected or self.resume), properties=props)
            else:
                c.connect(self.url.host, self.url.port, KEEPALIVE)
        except (OSError, ValueError) as exc:
            self.client = None
            raise BrokerError(f"{self.url}: cannot connect: {getattr(exc, 'strerror', None) or exc}") from None
        deadline = time.monotonic() + timeout
        while "rc" not in box and time.monotonic() < deadline:
            if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS and "rc" not in box:
                self.client = None
                if protocol == mqtt.MQTTv5:
                    raise _Unsupported("connection closed before CONNACK")
                raise BrokerError(f"{self.url}: connection closed before CONNACK")
        if "rc" not in box:
            self.close()
            raise BrokerError(f"{self.url}: no CONNACK within {timeout:.0f} s")
        rc = box["rc"]
        if rc.is_failure:
            self.close()
            if rc.value in _UNSUPPORTED_PROTOCOL and protocol == mqtt.MQTTv5:
                raise _Unsupported(str(rc))
            raise BrokerError(f"{self.url} refused the connection: {rc}")
        props = box.get("props")
        # MQTT 5 3.2.2.3.13/.12: absent means available.
        self.shared_subscriptions = protocol == mqtt.MQTTv5 and getattr(
            props, "SharedSubscriptionAvailable", 1) == 1
        self.subscription_ids = protocol == mqtt.MQTTv5 and getattr(
            props, "SubscriptionIdentifierAvailable", 1) == 1
        self.connected = True
        self._ever_connected = True

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if client is self.client:
            self.connected = False

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if self.on_message is None:
            return
        try:
            self.on_message(msg)
        except Exception:  # a bad message must not kill the network loop
            log.exception("error handling a message on %s", msg.topic)

    def loop(self, timeout: float = 0.05) -> bool:
        """Move bytes for up to `timeout` s. Returns False when the connection is gone.

        Reading is done here, not by paho: one recv of up to READ_SIZE bytes per
        call (paho reads a packet with three or more), PUBLISH packets at QoS 0
        or 1 decoded in place and their PUBACKs sent together, in order, after
        the chunk (_read). Every other packet (acks of our publishes and
        subscriptions, PINGRESP, DISCONNECT, a PUBLISH with properties other than
        subscription identifiers) goes to paho's own handler, whole. paho still
        writes, keeps the connection alive and owns the session state.
        """
        c = self.client
        if c is None or not self.connected:
            return False
        sock = c.socket()
        if sock is None:
            self.connected = False
            return False
        if self._reader_for is not c:  # a new connection: nothing half-read from the last one
            self._reader_for, self._inbuf = c, bytearray()
            self._own_reader = (paho_mqtt.__version__.startswith(PAHO_READER_RELEASES)
                                and all(hasattr(c, name) for name in PAHO_INTERNALS))
        if not self._own_reader:
            return self._paho_loop(c, timeout)
        if self._reading:
            # Called from a message callback: the bytes after this message are half handled.
            # Only write; the read goes on when the callback returns.
            return self._write(c)
        pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS: decrypted, not yet read
        try:
            readable, _, _ = select.select([sock], [], [], 0 if pending else timeout)
        except (OSError, ValueError, TypeError):
            readable = []
            rc = c._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
        else:
            rc = mqtt.MQTT_ERR_SUCCESS
            if readable or pending:
                self._reading = True
                try:
                    rc = self._read(c, sock)
                finally:
                    self._reading = False
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.connected = False
            return False
        return self._write(c)

    def _paho_loop(self, c: mqtt.Client, timeout: float) -> bool:
        """paho reading, packet by packet: for a paho without the internals _read relies on."""
        rc = c.loop(timeout)
        sock = c.socket()
        drained = 0
        while rc == mqtt.MQTT_ERR_SUCCESS and sock is not None and drained < PAHO_DRAIN_MAX:
            if not select.select([sock], [], [], 0)[0]:
                break
            rc = c.loop_read()
            drained += 1
        if drained and rc == mqtt.MQTT_ERR_SUCCESS and c.want_write():
            rc = c.loop_write()  # the PUBACKs
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.connected = False
        return self.connected

    def _write(self, c: mqtt.Client) -> bool:
        rc = c.loop_write() if c.want_write() else mqtt.MQTT_ERR_SUCCESS  # PUBACKs, what paho queued
        if rc == mqtt.MQTT_ERR_SUCCESS:
            rc = c.loop_misc()  # keep-alive
        if rc != mqtt.MQTT_ERR_SUCCESS or c.socket() is None:
            self.connected = False
        return self.connected

    def _read(self, c: mqtt.Client, sock: Any) -> int:
        """Read what the socket has (up to READ_SIZE bytes, and what TLS holds decrypted) and
        handle every whole packet in it. Returns a paho error code."""
        buf = self._inbuf
        got = 0
        while got < READ_SIZE:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                return c._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
            if not data:
                return c._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)
            buf += data
            got += len(data)
            if not (hasattr(sock, "pending") and sock.pending()):
                break
        if not got:
            return mqtt.MQTT_ERR_SUCCESS
        with c._msgtime_mutex:
            c._last_bytes_received = time.monotonic()  # what paho's keep-alive looks at
        mqtt5 = self.protocol == mqtt.MQTTv5
        acks = bytearray()
        pos, end_buf = 0, len(buf)
        rc = mqtt.MQTT_ERR_SUCCESS
        while end_buf - pos >= 2:
            command = buf[pos]
            length, i = _varint(buf, pos + 1, end_buf)
            if length == _SHORT:
                break  # the length itself is not all here yet
            if length < 0:
                rc = mqtt.MQTT_ERR_PROTOCOL
                break
            end = i + length
            if end > end_buf:
                break  # the rest of this packet comes with a later read
            if command & 0xF4 == 0x30 and self._publish(buf, command, i, end, mqtt5, acks):  # QoS 0, 1
                pos = end
                continue
            if acks:  # PUBACKs go out in the order their PUBLISHes came
                self._queue(c, acks)
                acks = bytearray()
            rc = self._hand_to_paho(c, command, buf[i:end], length)
            pos = end
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
        del buf[:pos]
        if acks:
            self._queue(c, acks)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return c._loop_rc_handle(rc)
        return mqtt.MQTT_ERR_SUCCESS

    def _publish(self, buf: bytearray, command: int, i: int, end: int, mqtt5: bool,
                 acks: bytearray) -> bool:
        """Handle one PUBLISH (QoS 0 or 1) at buf[i:end]; False leaves it to paho (properties
        other than subscription identifiers, a topic that is not UTF-8, a short packet)."""
        if end - i < 2:
            return False
        n = (buf[i] << 8) | buf[i + 1]
        j = i + 2 + n
        qos = (command >> 1) & 3
        if j + (2 if qos else 0) > end:
            return False
        try:
            topic = buf[i + 2:j].decode("utf-8")
        except UnicodeDecodeError:
            return False
        mid = 0
        if qos:
            mid = (buf[j] << 8) | buf[j + 1]
            j += 2
        ids: list[int] = []
        if mqtt5:
            plen, j = _varint(buf, j, end)
            stop = j + plen
            if plen < 0 or stop > end:
                return False
            while j < stop:
                if buf[j] != 0x0B:  # anything but a subscription identifier: paho decodes it
                    return False
                value, j = _varint(buf, j + 1, stop)
                if value < 0:
                    return False
                ids.append(value)
        msg = Message(topic, bytes(buf[j:end]), bool(command & 1), qos, mid, _Properties(ids))
        self._on_message(None, None, msg)
        if qos:
            acks += b"\x40\x02" + mid.to_bytes(2, "big")
        return True

    @staticmethod
    def _queue(c: mqtt.Client, data: bytearray) -> None:
        """Queue PUBACKs (one write for many) behind whatever paho has queued."""
        c._out_packet.append({"command": 0x40, "mid": 0, "qos": 0, "pos": 0,
                              "to_process": len(data), "packet": bytes(data), "info": None})

    @staticmethod
    def _hand_to_paho(c: mqtt.Client, command: int, body: bytearray, length: int) -> int:
        """Let paho handle one whole packet as if it had read it itself."""
        c._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [],
                        "remaining_mult": 1, "remaining_length": length, "packet": bytearray(body),
                        "to_process": 0, "pos": 0}
        try:
            rc = c._packet_handle()
        except MalformedPacket:
            rc = mqtt.MQTT_ERR_PROTOCOL
        c._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                        "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        return rc

    def subscribe(self, topic: str, sub_id: int | None = None, timeout: float = CONNECT_TIMEOUT) -> None:
        """Subscribe at QoS 1 (or subscribe_qos) and wait for the SUBACK; on MQTT 3.1.1 a refusal
        is tried again (SUBSCRIBE_TRIES_311 in all). Raises: BrokerError (SubscribeRefused when the SUBACK says no)."""
        tries = 1 if self.mqtt5 else SUBSCRIBE_TRIES_311
        for attempt in range(tries):
            try:
                self._subscribe_once(topic, sub_id, timeout)
                return
            except SubscribeRefused as exc:
                if attempt + 1 == tries:
                    raise
                log.info("%s; asking again", exc)
                deadline = time.monotonic() + SUBSCRIBE_RETRY_S
                while time.monotonic() < deadline:
                    if not self.loop(0.05):
                        raise BrokerError(f"{self.url}: connection lost (subscribing to {topic})") from None

    def _subscribe_once(self, topic: str, sub_id: int | None, timeout: float) -> None:
        c = self._live()
        if self.mqtt5:
            props = None
            if sub_id is not None and self.subscription_ids:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            rc, mid = c.subscribe(topic, options=SubscribeOptions(qos=self.subscribe_qos), properties=props)
        else:
            rc, mid = c.subscribe(topic, self.subscribe_qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"{self.url}: subscribe {topic}: {mqtt.error_string(rc)}")
        self._wait(lambda: mid in self._subacks, timeout, f"no SUBACK for {topic}")
        codes = self._subacks.pop(mid)
        bad = [c for c in codes if getattr(c, "is_failure", False) or c == 128]
        if bad:
            raise SubscribeRefused(f"{self.url} refused the subscription to {topic}: {bad[0]}")

    def unsubscribe(self, topic: str) -> None:
        with contextlib.suppress(Exception):
            self._live().unsubscribe(topic)

    def publish(self, messages: Sequence[tuple[str, bytes]], timeout: float = PUBLISH_TIMEOUT,
                retain: bool = True) -> None:
        """Publish each (topic, payload) at QoS 1, retained unless `retain` is False, and wait
        for every PUBACK.

        Raises:
            BrokerError: not connected, disconnected meanwhile, or no PUBACK
                within `timeout`.
            PublishRefused: a PUBACK with a failure reason (MQTT 5, e.g. the
                ACL); the other messages were published.
        """
        c = self._live()
        pending = []
        for topic, payload in messages:
            info = c.publish(topic, payload, qos=1, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerError(f"{self.url}: publish {topic}: {mqtt.error_string(info.rc)}")
            pending.append((topic, info))
        self._wait(lambda: all(i.mid in self._acks for _, i in pending), timeout,
                   f"{len(pending)} publishes not acknowledged")
        refused = []
        for topic, info in pending:
            rc = self._acks.pop(info.mid)
            if getattr(rc, "is_failure", False):
                refused.append((topic, rc))
        if refused:
            topic, rc = refused[0]
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise PublishRefused(f"{self.url} refused the publish on {topic}: {rc}{more}",
                                 [t for t, _ in refused])

    def _live(self) -> mqtt.Client:
        if self.client is None or not self.connected:
            raise BrokerError(f"{self.url}: not connected")
        return self.client

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if not self.loop(0.05):
                raise BrokerError(f"{self.url}: connection lost ({what})")
            if time.monotonic() > deadline:
                raise BrokerError(f"{self.url}: {what} within {timeout:.0f} s")

    def close(self) -> None:
        c, self.client = self.client, None
        was = self.connected
        self.connected = False
        if c is None:
            return
        with contextlib.suppress(Exception):
            if was:
                props = None
                if self.mqtt5 and self.session_expiry:
                    # End the session now (MQTT 5 3.14.2.2.2): a worker that leaves must not
                    # keep receiving its share of the shared subscriptions.
                    props = Properties(PacketTypes.DISCONNECT)
                    props.SessionExpiryInterval = 0
                c.disconnect(properties=props)
                c.loop(0.05)
        with contextlib.suppress(Exception):
            sock = c.socket()
            if sock is not None:
                sock.close()


class _Properties:
    """The one MQTT 5 property serve reads from a PUBLISH (paho's Properties, for that use)."""

    __slots__ = ("SubscriptionIdentifier",)

    def __init__(self, ids: list[int]) -> None:
        self.SubscriptionIdentifier = ids


class Message:
    """A received PUBLISH, with the attributes of paho's MQTTMessage that callers read."""

    __slots__ = ("topic", "payload", "retain", "qos", "mid", "properties")

    def __init__(self, topic: str, payload: bytes, retain: bool, qos: int, mid: int,
                 properties: _Properties) -> None:
        self.topic, self.payload, self.retain = topic, payload, retain
        self.qos, self.mid, self.properties = qos, mid, properties


_SHORT, _BAD = -1, -2


def _varint(buf: bytearray, i: int, end: int) -> tuple[int, int]:
    """(value, next index) of an MQTT variable byte integer at buf[i:end]; the value is _SHORT
    when buf ends inside it, _BAD when it runs over 4 bytes."""
    value = shift = 0
    while i < end:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 21:
            return _BAD, i
    return _SHORT, i


class PublishRefused(BrokerError):
    """The broker acknowledged some publishes with a failure reason; `topics` names them."""

    def __init__(self, message: str, topics: list[str]) -> None:
        super().__init__(message)
        self.topics = topics


class SubscribeRefused(BrokerError):
    """The broker answered a SUBSCRIBE with a failure code (its ACL)."""


class _Unsupported(Exception):
    """The broker does not speak MQTT 5 (internal: triggers the 3.1.1 fallback)."""


def publish_retained(url: BrokerURL, messages: Sequence[tuple[str, bytes]],
                     timeout: float = PUBLISH_TIMEOUT) -> str:
    """Connect, publish each (topic, payload) retained at QoS 1, wait for the PUBACKs, disconnect.

    Returns the protocol used ("MQTT 5" or "MQTT 3.1.1"). Raises: BrokerError.
    """
    link = Link(url, session_expiry=0)
    link.open()
    try:
        link.publish(messages, timeout)
    finally:
        link.close()
    return "MQTT 5" if link.mqtt5 else "MQTT 3.1.1"

