"""A small MQTT 3.1.1 / 5 broker for demos and tests (production uses Mosquitto).

What it does, in the order a connection goes through it:
  1. The first packet must be CONNECT within `connect_timeout` seconds; an
     unsupported protocol level gets a 3.1.1-style CONNACK 0x01, a refused
     login CONNACK 0x04 (3.1.1) / 0x86 (5). A client id already connected
     takes the session over: the old connection is closed (MQTT 5: DISCONNECT
     0x8E) and its will is published first, so the new connection's first
     messages come after the will.
  2. Every session is clean. CONNACK always says session-present = 0, and
     nothing is kept for a client after it disconnects. MQTT 5 clients that
     ask for a Session Expiry Interval are told 0 in CONNACK.
  3. PUBLISH QoS 0 and 1 are routed at once and acknowledged (PUBACK) after
     routing. QoS 2 is refused: MQTT 5 clients are told Maximum QoS = 1 in
     CONNACK and disconnected with 0x9B if they send it anyway; a 3.1.1
     client that sends it is disconnected (3.1.1 has no way to refuse it).
     Subscriptions asking for QoS 2 are granted QoS 1.
  4. Routing: a subscription tree matches `+` and `#`; wildcards at the
     first level never match topics starting with `$` (§4.7.2). A client
     with overlapping subscriptions gets one copy at the highest granted
     QoS. Delivered QoS = min(published QoS, granted QoS). `$share/<group>/
     <filter>` subscriptions get each message once per group, round-robin.
  5. Retained messages are stored per topic (an empty payload clears) and
     sent, with RETAIN=1, only to the subscription that was just made, only
     for the filters in that SUBSCRIBE, and never to shared subscriptions
     (MQTT 5 §4.8.2). Live forwarding clears RETAIN unless the MQTT 5
     subscription set Retain As Published.
  6. The will is published when a connection ends without DISCONNECT
     (network loss, keep-alive expiry after 1.5 x keep-alive, protocol
     error, slow consumer, takeover), and with MQTT 5 DISCONNECT 0x04.
     Not on a normal DISCONNECT, and not when the broker itself stops.

Limits (every input has one): `max_packet` bytes per packet in either
direction (larger ones are refused: MQTT 5 DISCONNECT 0x95, 3.1.1 close);
`max_subscriptions` per client; `max_inflight` unacknowledged QoS 1
messages per client (MQTT 5: also the client's Receive Maximum); and
`max_queue` bytes waiting for one client (in the socket buffer plus
queued messages). A client that falls that far behind is disconnected
rather than being buffered without bound. Retained messages sent on
SUBSCRIBE are paced by the socket and do not count towards `max_queue`.

Fences (each has an option on Broker and `trustfleet broker run`): it
listens on loopback only unless `allow_remote`; `max_connections` TCP
connections; `max_partial_bytes` of client input held across all clients
(the client that goes over is closed); `max_retained` messages and
`max_retained_bytes` in the retained store (a retained publish over either
is refused: MQTT 5 PUBACK 0x97, else the publisher is closed); keep-alive 0
or over `max_keepalive` becomes `max_keepalive` (MQTT 5: Server Keep Alive);
optional `password_file` (Mosquitto $7$ lines, as broker-config writes).

Not implemented: persistent sessions, QoS 2, will delay, topic aliases,
subscription identifiers, enhanced authentication (AUTH), request/response
information, per-topic access control. The broker runs in one asyncio loop
and keeps everything in memory.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import ipaddress
import logging
import math
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

from trustfleet_server.broker import packets as p
from trustfleet_server.brokerconfig import check_password

log = logging.getLogger("trustfleet.mqtt.broker")

SHARE_PREFIX = "$share/"
HIGH_WATER = 256 * 1024      # socket buffer above which a client's output is paused
CLOSE_GRACE = 5.0            # seconds a closing connection may take to flush

# Properties of a PUBLISH forwarded to MQTT 5 subscribers (§3.3.2.3); the
# others (topic alias, subscription identifier) are per connection.
_FORWARDED = (
    p.PAYLOAD_FORMAT_INDICATOR, p.MESSAGE_EXPIRY_INTERVAL, p.CONTENT_TYPE, p.RESPONSE_TOPIC,
    p.CORRELATION_DATA, p.USER_PROPERTY,
)

AuthFn = Callable[[str | None, str | None], bool]


# --- topics -----------------------------------------------------------------------------------

def check_topic_name(topic: str) -> str | None:
    """Return why `topic` cannot be published to, or None (§4.7.3)."""
    if not topic:
        return "empty topic name"
    if "+" in topic or "#" in topic:
        return f"wildcard in topic name {topic!r}"
    return None


def check_topic_filter(filt: str) -> str | None:
    """Return why `filt` is not a valid (non-shared) topic filter, or None (§4.7.1)."""
    if not filt:
        return "empty topic filter"
    if "+" not in filt and "#" not in filt:
        return None
    levels = filt.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            return f"'#' must be a whole last level in {filt!r}"
        if "+" in level and level != "+":
            return f"'+' must be a whole level in {filt!r}"
    return None


def split_shared(filt: str) -> tuple[str | None, str]:
    """'$share/<group>/<filter>' -> (group, filter); any other filter -> (None, filter).

    Raises: ValueError for a malformed shared subscription (§4.8.2).
    """
    if not filt.startswith(SHARE_PREFIX):
        return None, filt
    group, sep, inner = filt[len(SHARE_PREFIX):].partition("/")
    if not sep or not group or "+" in group or "#" in group or not inner:
        raise ValueError(f"malformed shared subscription {filt!r}")
    return group, inner


def topic_matches(filt: str, topic: str) -> bool:
    """Whether a (valid, non-shared) filter matches a topic name; reference for tests."""
    flevels = filt.split("/")
    tlevels = topic.split("/")
    if topic.startswith("$") and flevels[0] in ("+", "#"):
        return False
    for index, f in enumerate(flevels):
        if f == "#":
            return True
        if index >= len(tlevels):
            return False
        if f != "+" and f != tlevels[index]:
            return False
    return len(flevels) == len(tlevels)


# --- fences: where it listens, who may connect -------------------------------------------------

def is_loopback(host: str | None) -> bool:
    """Whether every address `host` names is a loopback one (None or "" = all interfaces: no)."""
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def password_file_auth(path) -> AuthFn:
    """An auth callable from a Mosquitto password file of $7$ lines (what broker-config writes).

    Raises: ValueError naming the file (and line) when it cannot be read or a
    line is not `username:$7$<iterations>$<salt>$<hash>`.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read password file {path}: {exc}") from None
    hashes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        parts = hashed.split("$")
        try:
            ok = (sep and user and len(parts) == 5 and parts[:2] == ["", "7"]
                  and int(parts[2]) > 0 and binascii.a2b_base64(parts[3], strict_mode=True)
                  and binascii.a2b_base64(parts[4], strict_mode=True))
        except (ValueError, binascii.Error):
            ok = False
        if not ok:
            raise ValueError(f"{path}:{number}: not 'username:$7$...' (a Mosquitto 2 hash; "
                             "write it with trustfleet broker-config or mosquitto_passwd)")
        hashes[user] = hashed

    def check(username: str | None, password: str | None) -> bool:
        hashed = hashes.get(username or "")
        if hashed is None or password is None:
            return False
        try:
            return check_password(password, hashed)
        except UnicodeEncodeError:   # not UTF-8: no stored password can match
            return False

    return check


# --- messages ---------------------------------------------------------------------------------

class Message:
    """One published message, encoded at most once per (version, QoS, RETAIN) for all receivers."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "expires_at", "size",
                 "_topic_bytes", "_props_bytes", "_cache")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: dict | None = None, now: float = 0.0):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties or {}
        expiry = self.properties.get(p.MESSAGE_EXPIRY_INTERVAL)
        self.expires_at = None if expiry is None else now + expiry
        self._topic_bytes = p.encode_str(topic)
        self.size = len(payload) + len(self._topic_bytes) + 16
        self._props_bytes = None
        self._cache: dict = {}

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def _props(self, stored_now: float | None) -> bytes:
        if stored_now is not None and self.expires_at is not None:
            # A stored message tells the receiver how long it has left (§3.3.2.3.3).
            props = dict(self.properties)
            props[p.MESSAGE_EXPIRY_INTERVAL] = max(0, math.ceil(self.expires_at - stored_now))
            return p.encode_properties(props)
        if self._props_bytes is None:
            self._props_bytes = p.encode_properties(self.properties)
        return self._props_bytes

    def parts(self, version: int, qos: int, retain: bool,
              stored_now: float | None = None) -> tuple[bytes, bytes]:
        """(prefix, suffix) of the PUBLISH; the packet id goes between them when qos > 0."""
        fresh = stored_now is not None and self.expires_at is not None
        key = (version, qos, retain)
        if not fresh:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        props = self._props(stored_now) if version >= p.MQTT5 else None
        parts = p.publish_parts(self._topic_bytes, self.payload, qos, retain, False, props)
        if qos == 0:
            parts = (parts[0] + parts[1], b"")
        if not fresh:
            self._cache[key] = parts
        return parts


# --- topic tries (subscriptions and retained messages) -----------------------------------------

def _trie_path(root, name: str) -> list | None:
    """[(level, node), ...] from the root (level None) down to the node of `name`; None if absent."""
    path = [(None, root)]
    node = root
    for level in name.split("/"):
        node = node.children.get(level)
        if node is None:
            return None
        path.append((level, node))
    return path


def _prune(path: list) -> None:
    """Unlink the empty nodes at the end of a _trie_path, deepest first."""
    for index in range(len(path) - 1, 0, -1):
        level, node = path[index]
        if not node.empty():
            break
        del path[index - 1][1].children[level]


# --- subscription tree ------------------------------------------------------------------------

class _Node:
    __slots__ = ("children", "subs", "shared")

    def __init__(self):
        self.children: dict[str, _Node] = {}
        self.subs: dict = {}      # connection -> (qos, retain_as_published, no_local)
        self.shared: dict = {}    # group name -> _SharedGroup

    def empty(self) -> bool:
        return not (self.children or self.subs or self.shared)


class _SharedGroup:
    """Members of one `$share/<group>/<filter>`; each message goes to the next live one."""

    __slots__ = ("members", "order", "cursor")

    def __init__(self):
        self.members: dict = {}
        self.order: list = []
        self.cursor = 0

    def add(self, conn, entry) -> bool:
        existed = conn in self.members
        if not existed:
            self.order.append(conn)
        self.members[conn] = entry
        return existed

    def remove(self, conn) -> None:
        if self.members.pop(conn, None) is not None:
            self.order.remove(conn)

    def pick(self):
        count = len(self.order)
        for _ in range(count):
            self.cursor %= count
            conn = self.order[self.cursor]
            self.cursor += 1
            if conn.accepting():
                return conn, self.members[conn]
        return None


class _SubscriptionTree:
    """Topic filter trie. Iterative walks: a topic may have tens of thousands of levels."""

    def __init__(self):
        self.root = _Node()

    def add(self, conn, group: str | None, filt: str, entry: tuple) -> bool:
        """Add or replace a subscription; returns whether it already existed."""
        node = self.root
        for level in filt.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if group is None:
            existed = conn in node.subs
            node.subs[conn] = entry
            return existed
        shared = node.shared.get(group)
        if shared is None:
            shared = node.shared[group] = _SharedGroup()
        return shared.add(conn, entry)

    def remove(self, conn, group: str | None, filt: str) -> None:
        path = _trie_path(self.root, filt)
        if path is None:
            return
        node = path[-1][1]
        if group is None:
            node.subs.pop(conn, None)
        else:
            shared = node.shared.get(group)
            if shared is not None:
                shared.remove(conn)
                if not shared.members:
                    del node.shared[group]
        _prune(path)

    def match(self, topic: str, sender) -> tuple[dict, list]:
        """Receivers of `topic`: ({conn: (qos, rap)}, [shared groups])."""
        levels = topic.split("/")
        depth = len(levels)
        targets: dict = {}
        groups: list = []
        stack = [(self.root, 0)]
        while stack:
            node, index = stack.pop()
            children = node.children
            if index == depth:
                self._collect(node, sender, targets, groups)
                hashed = children.get("#")
                if hashed is not None:
                    self._collect(hashed, sender, targets, groups)
                continue
            if not children:
                continue
            if index == 0 and topic.startswith("$"):
                child = children.get(levels[0])
                if child is not None:
                    stack.append((child, 1))
                continue
            hashed = children.get("#")
            if hashed is not None:
                self._collect(hashed, sender, targets, groups)
            child = children.get(levels[index])
            if child is not None:
                stack.append((child, index + 1))
            child = children.get("+")
            if child is not None:
                stack.append((child, index + 1))
        return targets, groups

    @staticmethod
    def _collect(node: _Node, sender, targets: dict, groups: list) -> None:
        for conn, (qos, rap, no_local) in node.subs.items():
            if no_local and conn is sender:
                continue
            prev = targets.get(conn)
            if prev is None:
                targets[conn] = (qos, rap)
            else:
                targets[conn] = (max(qos, prev[0]), rap or prev[1])
        if node.shared:
            groups.extend(node.shared.values())


class _RNode:
    __slots__ = ("children", "msg")

    def __init__(self):
        self.children: dict[str, _RNode] = {}
        self.msg: Message | None = None

    def empty(self) -> bool:
        return self.msg is None and not self.children


class _RetainedStore:
    """Retained messages in a topic trie, so a filter only visits what it can match."""

    def __init__(self):
        self.root = _RNode()
        self.count = 0
        self.bytes = 0   # sum of Message.size of the stored messages

    def set(self, msg: Message) -> None:
        node = self.root
        for level in msg.topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _RNode()
            node = child
        if node.msg is None:
            self.count += 1
        else:
            self.bytes -= node.msg.size
        self.bytes += msg.size
        node.msg = msg

    def clear(self, topic: str) -> None:
        path = _trie_path(self.root, topic)
        if path is None:
            return
        node = path[-1][1]
        if node.msg is not None:
            self.bytes -= node.msg.size
            node.msg = None
            self.count -= 1
        _prune(path)

    def fits(self, msg: Message, max_count: int, max_bytes: int) -> bool:
        """Whether storing `msg` (replacing what its topic holds) stays within both caps."""
        old = self.get(msg.topic)
        count = self.count + (0 if old is not None else 1)
        size = self.bytes - (old.size if old is not None else 0) + msg.size
        return count <= max_count and size <= max_bytes

    def get(self, topic: str) -> Message | None:
        node = self.root
        for level in topic.split("/"):
            node = node.children.get(level)
            if node is None:
                return None
        return node.msg

    def find(self, filt: str, now: float) -> list[Message]:
        """Live retained messages whose topic `filt` matches (a valid, non-shared filter)."""
        levels = filt.split("/")
        depth = len(levels)
        found: list[Message] = []
        stack = [(self.root, 0)]
        while stack:
            node, index = stack.pop()
            if index == depth:
                if node.msg is not None:
                    found.append(node.msg)
                continue
            level = levels[index]
            if level == "#":
                if index and node.msg is not None:
                    found.append(node.msg)   # "a/#" also matches "a"
                rest = [child for name, child in node.children.items()
                        if index or not name.startswith("$")]
                while rest:
                    child = rest.pop()
                    if child.msg is not None:
                        found.append(child.msg)
                    rest.extend(child.children.values())
            elif level == "+":
                for name, child in node.children.items():
                    if index or not name.startswith("$"):
                        stack.append((child, index + 1))
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, index + 1))
        expired = [msg for msg in found if msg.expired(now)]
        for msg in expired:
            self.clear(msg.topic)
        return [msg for msg in found if not msg.expired(now)] if expired else found


# --- one client connection --------------------------------------------------------------------

_NEW, _CONNECTED, _CLOSED = 0, 1, 2


class _Connection(asyncio.Protocol):
    """One network connection: bytes in, packets handled synchronously, bytes out."""

    __slots__ = ("broker", "transport", "reader", "state", "version", "client_id", "will",
                 "keepalive", "last_rx", "timer", "grace", "subs", "inflight", "next_pid",
                 "recv_max", "max_out", "pending", "pending_bytes", "pending_stored",
                 "write_paused", "peer", "held")

    def __init__(self, broker: Broker):
        self.broker = broker
        self.transport = None
        self.reader = p.FrameReader(broker.max_packet)
        self.state = _NEW
        self.version = p.MQTT311
        self.client_id = ""
        self.will: p.Will | None = None
        self.keepalive = 0
        self.last_rx = 0.0
        self.timer = None
        self.grace = None
        self.subs: dict[str, tuple[str | None, str]] = {}
        self.inflight: set[int] = set()
        self.next_pid = 1
        self.recv_max = broker.max_inflight
        self.max_out: int | None = None
        self.pending: deque = deque()
        self.pending_bytes = 0
        self.pending_stored = 0
        self.write_paused = False
        self.peer = None
        self.held = 0   # bytes of this client's input the broker holds (counted in partial_bytes)

    def __repr__(self) -> str:
        return f"<mqtt client {self.client_id!r} from {self.peer}>"

    def accepting(self) -> bool:
        return self.state == _CONNECTED

    # asyncio.Protocol callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        broker = self.broker
        if len(broker._conns) >= broker.max_connections:
            # Refused before anything is read or buffered for it.
            self.state = _CLOSED
            broker.stats["refused_connections"] += 1
            log.warning("refusing a connection from %s: already %d connections (max_connections)",
                        self.peer, len(broker._conns))
            transport.abort()
            return
        transport.set_write_buffer_limits(high=HIGH_WATER)
        broker._conns.add(self)
        self.last_rx = broker._loop.time()
        self.timer = broker._loop.call_later(broker.connect_timeout, self._connect_timed_out)

    def connection_lost(self, exc) -> None:
        self.broker._conns.discard(self)
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None
        if self.state != _CLOSED:
            self._close(will=True)

    def pause_writing(self) -> None:
        self.write_paused = True
        # Stop reading what this client sends until it reads what we sent.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.state != _CLOSED:
            self.transport.resume_reading()
            self._pump()
            self._process(b"")

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        self.last_rx = self.broker._loop.time()
        self._process(data)

    def _process(self, data: bytes) -> None:
        # Frames wait in the reader while this client's output is backed up,
        # so a client that does not read cannot make us produce more.
        reader = self.reader
        try:
            if data:
                reader.feed(data)
            while self.state != _CLOSED and not self.write_paused:
                frame = reader.next_frame()
                if frame is None:
                    break
                self._handle(*frame)
        except p.PacketError as exc:
            self._protocol_failure(exc)
        except Exception:  # a bug here must cost one connection, never the broker
            self.broker.stats["internal_errors"] += 1
            log.exception("internal error handling %r; closing it", self)
            self._close(will=True, reason=p.UNSPECIFIED_ERROR, abort=True)
        self._count_held()

    def _count_held(self) -> None:
        """Account this client's buffered input; close it if all clients' input is over the cap."""
        if self.state == _CLOSED:
            return
        broker = self.broker
        held = self.reader.buffered()
        broker.partial_bytes += held - self.held
        self.held = held
        if held and broker.partial_bytes > broker.max_partial_bytes:
            broker.stats["partial_refused"] += 1
            log.warning("closing %r: %d bytes of unfinished packets held for all clients "
                        "(max_partial_bytes %d)", self, broker.partial_bytes,
                        broker.max_partial_bytes)
            self._close(will=True, reason=p.QUOTA_EXCEEDED, abort=True)

    def eof_received(self):
        return False

    # incoming packets

    def _handle(self, ptype: int, flags: int, body: bytes) -> None:
        if self.state == _NEW:
            if ptype != p.CONNECT:
                raise p.PacketError(
                    f"first packet is {p.PACKET_NAMES.get(ptype, ptype)}, expected CONNECT",
                    p.PROTOCOL_ERROR)
            try:
                packet = p.decode(ptype, flags, body)
            except p.UnsupportedProtocol as exc:
                log.info("refusing %r: %s", self, exc)
                self.transport.write(p.Connack(False, p.REFUSED_PROTOCOL_VERSION).encode(p.MQTT311))
                self._close(will=False)
                return
            self._on_connect(packet)
            return
        handler = _HANDLERS.get(ptype)
        if handler is None:
            raise p.PacketError(
                f"unexpected {p.PACKET_NAMES.get(ptype, ptype)} from a client", p.PROTOCOL_ERROR)
        handler(self, p.decode(ptype, flags, body, self.version))

    def _protocol_failure(self, exc: p.PacketError) -> None:
        self.broker.stats["protocol_errors"] += 1
        log.info("closing %r: %s", self, exc)
        self._close(will=True, reason=exc.reason)

    def _refuse(self, code311: int, code5: int, why: str) -> None:
        log.info("refusing %r: %s", self, why)
        code = code5 if self.version >= p.MQTT5 else code311
        self.transport.write(p.Connack(False, code).encode(self.version))
        self._close(will=False)

    def _on_connect(self, pkt: p.Connect) -> None:
        broker = self.broker
        self.version = version = pkt.protocol_level
        props = pkt.properties
        if p.AUTHENTICATION_METHOD in props:
            return self._refuse(0, p.BAD_AUTHENTICATION_METHOD, "enhanced authentication")
        will = pkt.will
        if will is not None:
            if will.qos == 2:
                if version >= p.MQTT5:
                    return self._refuse(0, p.QOS_NOT_SUPPORTED, "will QoS 2")
                will.qos = 1
            why = check_topic_name(will.topic)
            if why:
                raise p.PacketError(f"CONNECT: will {why}", p.TOPIC_NAME_INVALID)
        client_id = pkt.client_id
        assigned = None
        if not client_id:
            if version < p.MQTT5 and not pkt.clean_start:
                return self._refuse(p.REFUSED_IDENTIFIER, p.CLIENT_ID_NOT_VALID,
                                    "empty client id without clean session")
            client_id = assigned = f"auto-{uuid.uuid4().hex}"
        if broker.auth is not None and not broker._check_auth(pkt.username, pkt.password):
            return self._refuse(p.REFUSED_BAD_USERNAME_PASSWORD, p.BAD_USERNAME_OR_PASSWORD,
                                f"bad username or password for client {client_id!r}")
        if version >= p.MQTT5:
            self._apply_client_limits(props)
        old = broker._sessions.get(client_id)
        if old is not None:
            log.info("client id %r connected again: closing the older connection", client_id)
            old._close(will=True, reason=p.SESSION_TAKEN_OVER)
        broker._sessions[client_id] = self
        broker.stats["connects"] += 1
        self.client_id = client_id
        self.will = will
        self.state = _CONNECTED
        # Keep-alive 0 ("never") or over the maximum gets the maximum: MQTT 5 clients are
        # told so (Server Keep Alive); 3.1.1 clients are closed when idle that long.
        self.keepalive = pkt.keepalive
        if not 0 < self.keepalive <= broker.max_keepalive:
            self.keepalive = broker.max_keepalive
        self.timer.cancel()
        self.timer = broker._loop.call_later(self.keepalive * 1.5, self._check_keepalive)
        ack_props = {}
        if version >= p.MQTT5:
            ack_props = {
                p.MAXIMUM_QOS: 1,
                p.MAXIMUM_PACKET_SIZE: broker.max_packet,
                p.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 0,
            }
            if self.keepalive != pkt.keepalive:
                ack_props[p.SERVER_KEEP_ALIVE] = self.keepalive
            if props.get(p.SESSION_EXPIRY_INTERVAL):
                ack_props[p.SESSION_EXPIRY_INTERVAL] = 0  # sessions end with the connection
            if assigned:
                ack_props[p.ASSIGNED_CLIENT_IDENTIFIER] = assigned
        self.transport.write(p.Connack(False, 0, ack_props).encode(version))

    def _apply_client_limits(self, props: dict) -> None:
        receive_max = props.get(p.RECEIVE_MAXIMUM)
        if receive_max is not None:
            if receive_max == 0:
                raise p.PacketError("CONNECT: Receive Maximum 0", p.PROTOCOL_ERROR)
            self.recv_max = min(receive_max, self.broker.max_inflight)
        max_size = props.get(p.MAXIMUM_PACKET_SIZE)
        if max_size is not None:
            if max_size == 0:
                raise p.PacketError("CONNECT: Maximum Packet Size 0", p.PROTOCOL_ERROR)
            self.max_out = max_size

    def _on_publish(self, pkt: p.Publish) -> None:
        if pkt.qos == 2:
            raise p.PacketError("PUBLISH: QoS 2 is not supported (maximum QoS 1)",
                                p.QOS_NOT_SUPPORTED)
        if p.TOPIC_ALIAS in pkt.properties:
            raise p.PacketError("PUBLISH: topic alias, but Topic Alias Maximum is 0",
                                p.TOPIC_ALIAS_INVALID)
        why = check_topic_name(pkt.topic)
        if why:
            raise p.PacketError(f"PUBLISH: {why}", p.TOPIC_NAME_INVALID)
        props = pkt.properties
        if props:
            props = {key: value for key, value in props.items() if key in _FORWARDED}
        broker = self.broker
        msg = Message(pkt.topic, pkt.payload, pkt.qos, pkt.retain, props, broker._loop.time())
        if pkt.retain and pkt.payload and not broker._retained_fits(msg):
            broker.stats["retained_refused"] += 1
            log.warning("refusing a retained message to %r from %r: the retained store is full "
                        "(%d messages, %d bytes)", pkt.topic, self, broker._retained.count,
                        broker._retained.bytes)
            if pkt.qos and self.version >= p.MQTT5:
                self.transport.write(p.Puback(pkt.packet_id, p.QUOTA_EXCEEDED).encode(self.version))
            else:  # QoS 0 or 3.1.1: no way to say no but closing
                self._close(will=True, reason=p.QUOTA_EXCEEDED)
            return
        broker._route(msg, self)
        if pkt.qos and self.state == _CONNECTED:
            self.transport.write(p.Puback(pkt.packet_id).encode(self.version))

    def _on_puback(self, pkt: p.Ack) -> None:
        if pkt.packet_id in self.inflight:
            self.inflight.discard(pkt.packet_id)
            if self.pending:
                self._pump()

    def _on_qos2_flow(self, pkt: p.Ack) -> None:
        raise p.PacketError(f"{p.PACKET_NAMES[pkt.kind]}: QoS 2 is not supported",
                            p.PROTOCOL_ERROR)

    def _on_subscribe(self, pkt: p.Subscribe) -> None:
        if p.SUBSCRIPTION_IDENTIFIER in pkt.properties:
            raise p.PacketError("SUBSCRIBE: subscription identifiers are not supported",
                                p.SUBSCRIPTION_IDS_NOT_SUPPORTED)
        retained: list = []
        codes = [self.broker._subscribe(self, filt, opts, retained) for filt, opts in pkt.topics]
        self.transport.write(p.Suback(pkt.packet_id, codes).encode(self.version))
        if retained:
            broker = self.broker
            self.pending_stored += len(retained)
            if self.pending_stored > max(10_000, 2 * broker.retained_count):
                # Only a client re-subscribing without reading gets here.
                broker.stats["slow_disconnects"] += 1
                log.warning("disconnecting %r: %d retained messages waiting for it",
                            self, self.pending_stored)
                self._close(will=True, reason=p.QUOTA_EXCEEDED, abort=True)
                return
            now = broker._loop.time()
            for msg, qos in retained:
                self.pending.append((msg, qos, True, now))
            self._pump()

    def _on_unsubscribe(self, pkt: p.Unsubscribe) -> None:
        codes = []
        for filt in pkt.topics:
            entry = self.subs.pop(filt, None)
            if entry is None:
                codes.append(p.NO_SUBSCRIPTION_EXISTED)
            else:
                self.broker._tree.remove(self, entry[0], entry[1])
                codes.append(p.SUCCESS)
        self.transport.write(p.Unsuback(pkt.packet_id, codes).encode(self.version))

    def _on_pingreq(self, pkt) -> None:
        self.transport.write(b"\xd0\x00")

    def _on_disconnect(self, pkt: p.Disconnect) -> None:
        if pkt.reason_code != p.DISCONNECT_WITH_WILL:
            self.will = None
        self._close(will=True)

    def _on_unexpected(self, pkt) -> None:
        raise p.PacketError(f"unexpected {type(pkt).__name__} from a client", p.PROTOCOL_ERROR)

    # outgoing messages

    def deliver(self, msg: Message, qos: int, retain: bool) -> None:
        """Send a live message now, or queue it behind earlier ones (bounded by max_queue)."""
        if self.state != _CONNECTED:
            return
        if self.pending or self.write_paused or (qos and len(self.inflight) >= self.recv_max):
            self.pending.append((msg, qos, retain, None))
            self.pending_bytes += msg.size
            self._check_backlog()
            return
        self._send(msg, qos, retain, None)
        self._check_backlog()

    def _check_backlog(self) -> None:
        queued = self.pending_bytes + self.transport.get_write_buffer_size()
        if queued > self.broker.max_queue:
            self.broker.stats["slow_disconnects"] += 1
            log.warning("disconnecting slow client %r: %d bytes waiting (limit %d)",
                        self, queued, self.broker.max_queue)
            self._close(will=True, reason=p.QUOTA_EXCEEDED, abort=True)

    def _pump(self) -> None:
        pending = self.pending
        while pending and not self.write_paused and self.state == _CONNECTED:
            msg, qos, retain, stored_now = pending[0]
            if qos and len(self.inflight) >= self.recv_max:
                return
            pending.popleft()
            if stored_now is None:
                self.pending_bytes -= msg.size
            else:
                self.pending_stored -= 1
            self._send(msg, qos, retain, stored_now)

    def _send(self, msg: Message, qos: int, retain: bool, stored_now: float | None) -> None:
        head, tail = msg.parts(self.version, qos, retain, stored_now)
        if self.max_out is not None and len(head) + len(tail) + (2 if qos else 0) > self.max_out:
            self.broker.stats["dropped_too_large"] += 1
            return  # MQTT 5 §3.1.2.11.4: discard what the client said it cannot take
        self.broker.stats["messages_out"] += 1
        if not qos:
            self.transport.write(head)
            return
        inflight = self.inflight
        pid = self.next_pid
        while pid in inflight:
            pid = pid % 0xFFFF + 1
        self.next_pid = pid % 0xFFFF + 1
        inflight.add(pid)
        self.transport.write(b"".join((head, pid.to_bytes(2, "big"), tail)))

    # timers and closing

    def _connect_timed_out(self) -> None:
        self.timer = None
        if self.state == _NEW:
            log.info("closing %r: no CONNECT within %.1f s", self, self.broker.connect_timeout)
            self._close(will=False, abort=True)

    def _check_keepalive(self) -> None:
        self.timer = None
        if self.state != _CONNECTED:
            return
        limit = self.keepalive * 1.5
        idle = self.broker._loop.time() - self.last_rx
        if idle >= limit:
            self.broker.stats["keepalive_timeouts"] += 1
            log.info("closing %r: nothing received for %.1f s (keep-alive %d s)",
                     self, idle, self.keepalive)
            self._close(will=True, reason=p.KEEP_ALIVE_TIMEOUT)
        else:
            self.timer = self.broker._loop.call_later(limit - idle, self._check_keepalive)

    def _close(self, will: bool, reason: int | None = None, abort: bool = False) -> None:
        """Close once: forget subscriptions, tell an MQTT 5 client why, then publish the will."""
        if self.state == _CLOSED:
            return
        was_connected = self.state == _CONNECTED
        self.state = _CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()
        self.pending_bytes = 0
        self.pending_stored = 0
        broker = self.broker
        broker.partial_bytes -= self.held
        self.held = 0
        self.reader = p.FrameReader(broker.max_packet)   # drop what it sent but we never used
        if was_connected:
            broker._forget(self)
        transport = self.transport
        if abort:
            transport.abort()
        else:
            if was_connected and reason is not None and self.version >= p.MQTT5:
                transport.write(p.Disconnect(reason).encode(p.MQTT5))
            transport.close()
            if not transport.is_closing() or transport.get_write_buffer_size():
                self.grace = broker._loop.call_later(CLOSE_GRACE, transport.abort)
        if will and was_connected and self.will is not None:
            w, self.will = self.will, None
            broker._route(Message(w.topic, w.payload, w.qos, w.retain,
                                  {k: v for k, v in w.properties.items() if k in _FORWARDED},
                                  broker._loop.time()), None)


_HANDLERS = {
    p.PUBLISH: _Connection._on_publish,
    p.PUBACK: _Connection._on_puback,
    p.PUBREC: _Connection._on_qos2_flow,
    p.PUBREL: _Connection._on_qos2_flow,
    p.PUBCOMP: _Connection._on_qos2_flow,
    p.SUBSCRIBE: _Connection._on_subscribe,
    p.UNSUBSCRIBE: _Connection._on_unsubscribe,
    p.PINGREQ: _Connection._on_pingreq,
    p.DISCONNECT: _Connection._on_disconnect,
    p.CONNECT: _Connection._on_unexpected,
    p.CONNACK: _Connection._on_unexpected,
    p.SUBACK: _Connection._on_unexpected,
    p.UNSUBACK: _Connection._on_unexpected,
    p.PINGRESP: _Connection._on_unexpected,
    p.AUTH: _Connection._on_unexpected,
}


# --- the broker -------------------------------------------------------------------------------

class Broker:
    """An asyncio MQTT broker; see the module docstring for what it does and refuses.

    Args:
        host: address to listen on (default 127.0.0.1). One that is not
            loopback, or None/"" for all interfaces, needs allow_remote.
        port: TCP port, 0 for any free one (read `.port` after start()).
        max_packet: largest packet accepted or sent, in bytes (whole packet).
        auth: optional callable (username, password) -> bool, called on every
            CONNECT. The password is the MQTT binary field decoded as UTF-8
            with surrogateescape (so non-UTF-8 passwords still compare
            exactly); either argument is None when the client sent none.
        max_queue: bytes allowed to wait for one client before it is
            disconnected as too slow (default 4 x max_packet, at least 4 MiB).
        max_inflight: unacknowledged QoS 1 messages per client.
        max_subscriptions: topic filters per client.
        connect_timeout: seconds a new connection has to send CONNECT.
        ssl: an ssl.SSLContext to listen with TLS instead of plain TCP.
        allow_remote: listen on an address that is not loopback (refused
            otherwise: this broker is for demos and tests).
        max_connections: open TCP connections; one more is closed at once.
        max_partial_bytes: bytes of input held for all clients together
            (packets not yet complete, or waiting while a client's output is
            paused); the client whose input goes over it is closed. One
            client can never hold more than max_packet of an unfinished packet.
        max_retained, max_retained_bytes: caps on the retained store
            (Message.size: payload + topic + 16). A retained publish that does
            not fit is refused: MQTT 5 QoS 1 gets PUBACK 0x97, otherwise the
            publisher is closed. Replacing or clearing a topic within the caps
            is always allowed.
        max_keepalive: seconds; a client asking keep-alive 0 or more gets this
            (MQTT 5: Server Keep Alive in CONNACK) and is closed after 1.5 x
            it without input.
        password_file: a Mosquitto password file with $7$ (PBKDF2-SHA512)
            lines, as `trustfleet broker-config` writes; read once at start.
            Replaces `auth`.
    """

    def __init__(self, host: str | None = "127.0.0.1", port: int = 0, *,
                 max_packet: int = p.DEFAULT_MAX_PACKET, auth: AuthFn | None = None,
                 max_queue: int | None = None, max_inflight: int = 100,
                 max_subscriptions: int = 1000, connect_timeout: float = 10.0,
                 backlog: int = 4096, ssl=None, allow_remote: bool = False,
                 max_connections: int = 10_000, max_partial_bytes: int = 64 << 20,
                 max_retained: int = 100_000, max_retained_bytes: int = 64 << 20,
                 max_keepalive: int = 3600, password_file=None):
        if not 16 <= max_packet <= p.MAX_REMAINING + 5:
            raise ValueError(f"max_packet {max_packet} outside 16..{p.MAX_REMAINING + 5}")
        if not 1 <= max_inflight <= 0xFFFF:
            raise ValueError(f"max_inflight {max_inflight} outside 1..65535")
        if not 1 <= max_keepalive <= 0xFFFF:
            raise ValueError(f"max_keepalive {max_keepalive} outside 1..65535")
        for name, value in (("max_connections", max_connections),
                            ("max_partial_bytes", max_partial_bytes),
                            ("max_retained", max_retained),
                            ("max_retained_bytes", max_retained_bytes)):
            if value < 1:
                raise ValueError(f"{name} {value} must be at least 1")
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"refusing to listen on {host or 'all interfaces'}: the embedded "
                             "broker is for demos and tests and listens on loopback only "
                             "(allow_remote=True to override)")
        if password_file is not None:
            if auth is not None:
                raise ValueError("give auth or password_file, not both")
            auth = password_file_auth(password_file)
        self.host = host
        self.port = port
        self.max_packet = max_packet
        self.auth = auth
        self.max_queue = max_queue if max_queue is not None else max(4 * max_packet, 4 << 20)
        self.max_inflight = max_inflight
        self.max_subscriptions = max_subscriptions
        self.connect_timeout = connect_timeout
        self.backlog = backlog
        self.ssl = ssl
        self.max_connections = max_connections
        self.max_partial_bytes = max_partial_bytes
        self.max_retained = max_retained
        self.max_retained_bytes = max_retained_bytes
        self.max_keepalive = max_keepalive
        self.partial_bytes = 0   # input held for all clients (see max_partial_bytes)
        self.stats = dict.fromkeys((
            "connects", "messages_in", "messages_out", "protocol_errors", "keepalive_timeouts",
            "slow_disconnects", "dropped_too_large", "internal_errors", "refused_connections",
            "partial_refused", "retained_refused"), 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_Connection] = set()
        self._sessions: dict[str, _Connection] = {}
        self._tree = _SubscriptionTree()
        self._retained = _RetainedStore()
        self._queue: deque = deque()
        self._routing = False

    @property
    def clients(self) -> int:
        """Connected (CONNECT accepted) clients."""
        return len(self._sessions)

    @property
    def retained_count(self) -> int:
        return self._retained.count

    @property
    def retained_bytes(self) -> int:
        return self._retained.bytes

    async def start(self) -> None:
        """Start listening. Raises: OSError if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("broker already started")
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.host or None, self.port, backlog=self.backlog,
            ssl=self.ssl, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MQTT broker listening on %s:%d", self.host or "*", self.port)

    async def stop(self) -> None:
        """Stop listening, close every connection (no wills), return when all are gone."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._conns):
            conn._close(will=False, reason=p.SERVER_SHUTTING_DOWN)
        await server.wait_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while self._conns and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._conns):
            conn.transport.abort()
        await asyncio.sleep(0)
        self._conns.clear()
        self._sessions.clear()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Publish from inside the broker's loop (e.g. a test or a co-located server).

        Raises: ValueError for an invalid topic name or QoS.
        """
        why = check_topic_name(topic)
        if why:
            raise ValueError(why)
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} not in 0..1")
        msg = Message(topic, bytes(payload), qos, retain)
        if retain and payload and not self._retained_fits(msg):
            raise ValueError(f"retained store full: {topic!r} not published")
        self._route(msg, None)

    def retained(self, topic: str) -> bytes | None:
        """The retained payload stored for `topic`, if any."""
        msg = self._retained.get(topic)
        return None if msg is None else msg.payload

    # internals used by connections

    def _retained_fits(self, msg: Message) -> bool:
        return self._retained.fits(msg, self.max_retained, self.max_retained_bytes)

    def _check_auth(self, username: str | None, password: bytes | None) -> bool:
        secret = None if password is None else password.decode("utf-8", "surrogateescape")
        try:
            return bool(self.auth(username, secret))
        except Exception:
            log.exception("auth callback failed; refusing the client")
            return False

    def _subscribe(self, conn: _Connection, filt: str, opts: p.SubOptions, retained: list) -> int:
        """Add one subscription; returns the SUBACK code and appends retained (msg, qos)."""
        failure = p.TOPIC_FILTER_INVALID if conn.version >= p.MQTT5 else p.SUBACK_FAILURE
        try:
            group, inner = split_shared(filt)
        except ValueError:
            return failure
        if check_topic_filter(inner):
            return failure
        if group is not None and opts.no_local:
            raise p.PacketError("SUBSCRIBE: No Local on a shared subscription", p.PROTOCOL_ERROR)
        if filt not in conn.subs and len(conn.subs) >= self.max_subscriptions:
            log.info("%r: subscription refused, already %d", conn, len(conn.subs))
            return p.QUOTA_EXCEEDED if conn.version >= p.MQTT5 else p.SUBACK_FAILURE
        granted = min(opts.qos, 1)
        rap = opts.retain_as_published and conn.version >= p.MQTT5
        existed = self._tree.add(conn, group, inner, (granted, rap, opts.no_local))
        conn.subs[filt] = (group, inner)
        if group is None and (opts.retain_handling == 0
                              or (opts.retain_handling == 1 and not existed)):
            for msg in self._retained.find(inner, self._loop.time()):
                retained.append((msg, min(msg.qos, granted)))
        return granted

    def _forget(self, conn: _Connection) -> None:
        for group, inner in conn.subs.values():
            self._tree.remove(conn, group, inner)
        conn.subs.clear()
        if self._sessions.get(conn.client_id) is conn:
            del self._sessions[conn.client_id]

    def _route(self, msg: Message, sender: _Connection | None) -> None:
        # Wills published while routing (slow subscribers cut off mid fan-out)
        # queue behind the current message instead of recursing.
        self._queue.append((msg, sender))
        if self._routing:
            return
        self._routing = True
        try:
            while self._queue:
                self._route_one(*self._queue.popleft())
        finally:
            self._routing = False

    def _route_one(self, msg: Message, sender: _Connection | None) -> None:
        self.stats["messages_in"] += 1
        if msg.retain:
            if msg.payload and not self._retained_fits(msg):
                # Only a will gets here (publishes are checked first): sent, not stored.
                self.stats["retained_refused"] += 1
                log.warning("retained store full: %r delivered but not retained", msg.topic)
            elif msg.payload:
                self._retained.set(msg)
            else:
                self._retained.clear(msg.topic)
        targets, groups = self._tree.match(msg.topic, sender)
        qos = msg.qos
        retain = msg.retain
        for conn, (granted, rap) in targets.items():
            conn.deliver(msg, granted if granted < qos else qos, retain and rap)
        for group in groups:
            picked = group.pick()
            if picked is not None:
                conn, (granted, rap, _) = picked
                conn.deliver(msg, granted if granted < qos else qos, retain and rap)


# --- a thread wrapper for synchronous code --------------------------------------------------

async def _call(fn: Callable) -> None:
    fn()


class EmbeddedBroker:
    """Run a Broker in a background thread with its own event loop.

        with EmbeddedBroker() as broker:
            client.connect("127.0.0.1", broker.port)

    start() returns once the broker listens; stop() closes every connection,
    stops the loop and joins the thread. Keyword arguments go to Broker.
    """

    def __init__(self, host: str | None = "127.0.0.1", port: int = 0, **broker_kwargs):
        self.broker = Broker(host, port, **broker_kwargs)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def host(self) -> str:
        return self.broker.host or "0.0.0.0"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start and wait until listening. Raises: OSError from bind, TimeoutError."""
        if self._thread is not None:
            raise RuntimeError("embedded broker already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="trustfleet-mqtt-broker",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"embedded broker did not start within {timeout} s")
        if self._error is not None:
            error = self._error
            self._thread.join(timeout)
            self._thread = None
            raise error
        self._thread.name = f"trustfleet-mqtt-broker-{self.port}"
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self.broker.start())
            except BaseException as exc:  # reported to start() in the caller's thread
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    def call(self, fn: Callable, /, *args, **kwargs):
        """Run `fn(*args, **kwargs)` in the broker's loop; return its result (10 s limit)."""
        loop = self._loop
        if loop is None or self._thread is None:
            raise RuntimeError("embedded broker is not running")

        async def run():
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10.0)

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        """Thread-safe Broker.publish. Raises: ValueError for a bad topic or QoS."""
        self.call(self.broker.publish, topic, payload, qos=qos, retain=retain)

    def stop(self, timeout: float = 10.0) -> None:
        """Close all connections and join the thread (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = self._loop
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self.broker.stop(), loop)
            try:
                future.result(timeout)
            except Exception:
                log.exception("embedded broker did not stop cleanly")
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"embedded broker thread still running after {timeout} s")

    def kill(self, timeout: float = 10.0) -> None:
        """Stop as a kill -9 would: abort every socket without a word (no will goes out, no
        DISCONNECT), stop listening and drop the thread. The Broker's state (retained
        messages, sessions) goes with it: start a new EmbeddedBroker to listen again."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        broker = self.broker

        def crash() -> None:
            server, broker._server = broker._server, None
            if server is not None:
                server.close()
            for conn in list(broker._conns):
                if conn.transport is not None:
                    conn.transport.abort()

        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(_call(crash), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
