"""MQTT on a board: a small MQTT 3.1.1 client and the loop that streams bundles to flash.

What it trusts: nothing it reads. The broker is untrusted (docs/topics.md):
every length in a packet is checked against what is left of the packet
before anything is read, a payload is never held whole unless it is small
(max_small), and every document is judged by the session, not here. This
module knows no policy; it only moves bytes and keeps the connection.

Why not umqtt.simple (micropython-lib). It reads a whole PUBLISH payload
into RAM before its callback runs: a 60 KB bundle does not fit an ESP32
without PSRAM. Its subscribe() and publish(qos=1) read the socket while
they wait for their ack, so a retained bundle that arrives meanwhile (a
broker sends a subscription's retained messages right after its SUBACK,
that is while the next subscribe() waits) would be read whole as well.
And micropython-lib's umqtt is not installable from PyPI (sdists only).
So:
- MQTTClient here has umqtt.simple's interface (connect, set_last_will,
  publish with QoS 0/1 and a PUBACK wait, subscribe one topic at a time,
  ping, disconnect, check_msg/wait_msg, `.sock`), for boards without umqtt
  and for the tests. Its own wait_msg() reads small messages whole, like
  umqtt (up to max_msg bytes).
- Transport uses only connect(), set_last_will(), ping(), disconnect() and
  `.sock` of a client, so umqtt.simple's MQTTClient works as well. After
  CONNACK it alone reads the socket: it sends SUBSCRIBE and QoS 1 PUBLISH
  itself without waiting, matches SUBACK/PUBACK as they come, and reads a
  PUBLISH in pieces of at most max_chunk bytes.

Per connection, in this order:
1. client = client_factory(); client.set_last_will(*session.will());
   client.connect(clean_session=True). Only CONNACK 0 is success, and only
   that resets the reconnect backoff (a TCP or TLS connection alone does
   not: a broker that accepts sockets and refuses sessions must not be
   hammered).
2. SUBSCRIBE (QoS 1, or subscribe_qos) every topic of session.subscriptions(),
   after EVERY connect: the session is clean, the broker forgot them.
3. Publish session.connected() (the retained status) and the reports that
   were waiting for a connection.
4. poll(), again and again: read what arrived without blocking; a bundle
   topic's payload goes to session.on_bundle_chunks(topic, chunks) as an
   iterator of pieces (streamed into the inactive slot), any other topic's
   to session.on_message(topic, payload) when it is at most max_small bytes
   (roots ~1 KB, timestamps ~200 B) and is skipped unread otherwise; then
   PUBACK (QoS 1), then publish what the session returned. PINGREQ once 3/4
   of the keep-alive passed without sending; no PINGRESP within half the
   keep-alive, an ack that never comes, EOF, a socket error or a malformed
   packet closes the socket (the broker then publishes the will) and the
   next connect waits for the capped, jittered exponential backoff.
   session.tick() runs on every poll, connected or not.

Several broker nodes (a clustered broker): client_factory is then a list,
one factory per node, and one node is used at a time, the first to start
with. When an attempt fails before its CONNACK the next node is tried at
once while this round has nodes left untried; after a whole round failed,
or after a connection that was up is lost, the next node waits for the
backoff (the short, reset one after a lost connection).

Outgoing messages while disconnected: the latest status replaces an older
one and reports wait (a few at most); after a reconnect the status is
published anew by session.connected(), so only reports are sent from the
queue. Nothing is retried within a connection: TCP does that.

Sockets: MicroPython stream semantics (read(n) returns None when a
non-blocking socket has no data, b"" at EOF; readinto, write, setblocking,
settimeout). On CPython open_socket() wraps a real socket in _StreamSocket
with the same behaviour, so the same Transport runs against a real broker
in the tests. `socket`, `ssl` and `sys` are imported inside functions: the
WebAssembly VM has no socket module, and a client with an injected socket
factory never needs one.
"""

from trustfleet_device import topics
from trustfleet_device.backoff import Backoff
from trustfleet_device.errors import TransportError, TrustfleetError

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

_MAX_TOPIC = const(256)       # longer topics are not ours: skipped unread
_OUTBOX_REPORTS = const(4)    # reports kept while disconnected
_PACKETS_PER_POLL = const(8)  # then tick and let the caller feed its watchdog

_CONNACK_REASONS = ("accepted", "unacceptable protocol version", "client id rejected",
                    "server unavailable", "bad user name or password", "not authorised")


class MQTTException(TransportError):
    """The broker refused the connection or an ack, or a packet broke MQTT 3.1.1."""


class ProtocolError(MQTTException):
    """A packet from the broker is malformed or not allowed here: the connection is closed."""


# ------------------------------------------------------------------ packets


def encode_length(n):
    """MQTT's variable-length 'remaining length' (1 to 4 bytes). Raises: ValueError."""
    if n < 0 or n > 268435455:
        raise ValueError("remaining length %d is outside 0..268435455" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _u16(n):
    return bytes(((n >> 8) & 0xFF, n & 0xFF))


def _field(data):
    if type(data) is str:
        data = data.encode()
    if len(data) > 65535:
        raise ValueError("MQTT string field over 65535 bytes")
    return _u16(len(data)) + data


def connect_packet(client_id, keepalive, clean_session=True, will=None, user=None, password=None):
    """CONNECT (MQTT 3.1.1, section 3.1). will: (topic, msg, retain, qos) or None."""
    flags = 0x02 if clean_session else 0
    body = bytearray(b"\x00\x04MQTT\x04\x00")
    body += _u16(keepalive)
    body += _field(client_id)
    if will is not None:
        topic, msg, retain, qos = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        body += _field(topic)
        body += _field(msg)
    if user is not None:
        flags |= 0x80
        body += _field(user)
        if password is not None:
            flags |= 0x40
            body += _field(password)
    body[7] = flags
    return bytes([_CONNECT]) + encode_length(len(body)) + bytes(body)


def publish_header(topic, size, retain=False, qos=0, pid=0, dup=False):
    """The PUBLISH bytes before a payload of `size` bytes (section 3.3)."""
    t = _field(topic)
    rlen = len(t) + (2 if qos else 0) + size
    first = _PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    return bytes([first]) + encode_length(rlen) + t + (_u16(pid) if qos else b"")


def subscribe_packet(pid, topic, qos=1):
    """SUBSCRIBE for one topic filter (section 3.8)."""
    body = _u16(pid) + _field(topic) + bytes([qos])
    return bytes([_SUBSCRIBE]) + encode_length(len(body)) + body


def puback_packet(pid):
    return b"\x40\x02" + _u16(pid)


def write_all(sock, data):
    """Write every byte (a blocking socket may still take fewer). Raises: OSError."""
    mv = memoryview(data)
    done = 0
    while done < len(data):
        n = sock.write(mv[done:])
        if not n:
            raise OSError("the socket took no bytes")
        done += n


def read_exact(sock, n):
    """Exactly n bytes from a blocking socket. Raises: OSError (EOF, timeout)."""
    data = sock.read(n)
    if data is None:
        data = b""
    while len(data) < n:
        more = sock.read(n - len(data))
        if not more:
            raise OSError("connection closed after %d of %d bytes" % (len(data), n))
        data += more
    return data


def read_length(sock):
    """The remaining length after a fixed header's first byte. Raises: ProtocolError, OSError."""
    n = 0
    shift = 0
    for _ in range(4):
        b = read_exact(sock, 1)[0]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7
    raise ProtocolError("remaining length runs over 4 bytes")


# ------------------------------------------------------------------ sockets


def _nothing_yet(exc):
    """True when a non-blocking read raised instead of returning None (no data yet)."""
    import errno
    code = exc.args[0] if exc.args else None
    return code in (errno.EAGAIN, errno.ETIMEDOUT, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))


class _StreamSocket:
    """A CPython socket with MicroPython's stream calls (read/readinto/write)."""

    def __init__(self, sock):
        self.s = sock

    def read(self, n):
        try:
            return self.s.recv(n)
        except OSError as exc:
            if _would_block(exc):
                return None
            raise

    def readinto(self, buf, n=None):
        try:
            return self.s.recv_into(buf, n or len(buf))
        except OSError as exc:
            if _would_block(exc):
                return None
            raise

    def write(self, data):
        self.s.sendall(data)
        return len(data)

    def setblocking(self, flag):
        self.s.setblocking(flag)

    def settimeout(self, seconds):
        self.s.settimeout(seconds)

    def close(self):
        self.s.close()


def _would_block(exc):
    # BlockingIOError on a plain socket, SSLWantReadError on a TLS one (CPython).
    return type(exc).__name__ in ("BlockingIOError", "SSLWantReadError", "SSLWantWriteError")


def open_socket(server, port, ssl_context=None, timeout_s=10):
    """A connected (TLS when ssl_context is given) socket with stream calls. Raises: OSError."""
    import socket
    import sys
    last = None
    for ai in socket.getaddrinfo(server, port, 0, socket.SOCK_STREAM):
        s = socket.socket(ai[0], ai[1], ai[2])
        try:
            s.settimeout(timeout_s)
            s.connect(ai[-1])
        except OSError as exc:
            s.close()
            last = exc
            continue
        if ssl_context is not None:
            s = ssl_context.wrap_socket(s, server_hostname=server)
        if sys.implementation.name != "micropython":
            s = _StreamSocket(s)
        return s
    raise last if last is not None else OSError("no address for %s" % server)


def _ticks_diff(a, b):
    try:
        from time import ticks_diff
    except ImportError:
        return a - b
    return ticks_diff(a, b)


# ------------------------------------------------------------------ the client


class MQTTClient:
    """A minimal MQTT 3.1.1 client with umqtt.simple's interface.

    sock_factory(server, port, ssl, timeout_s) returns a connected socket
    with stream calls (default: open_socket); tests inject a fake one.
    """

    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,
                 ssl=None, sock_factory=None, timeout_s=10, max_msg=16384):
        if port == 0:
            port = 8883 if ssl else 1883
        self.client_id = client_id
        self.server = server
        self.port = port
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.sock_factory = sock_factory if sock_factory is not None else open_socket
        self.timeout_s = timeout_s
        self.max_msg = max_msg
        self.sock = None
        self.pid = 0
        self.cb = None
        self.lw = None
        self._acked = None
        self._granted = None

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        if not topic or qos not in (0, 1, 2):
            raise ValueError("last will needs a topic and a QoS of 0, 1 or 2")
        self.lw = (topic, msg, retain, qos)

    def connect(self, clean_session=True, timeout=None):
        """Open the socket, send CONNECT, read CONNACK. Returns session present. Raises: OSError, MQTTException."""
        self.sock = self.sock_factory(self.server, self.port, self.ssl,
                                      timeout if timeout is not None else self.timeout_s)
        self.pid = 0  # a clean session: packet ids start again
        try:
            write_all(self.sock, connect_packet(self.client_id, self.keepalive, clean_session,
                                                self.lw, self.user, self.pswd))
            ack = read_exact(self.sock, 4)
            if ack[0] != _CONNACK or ack[1] != 2:
                raise ProtocolError("expected CONNACK, got %02x %02x" % (ack[0], ack[1]))
            if ack[3]:
                why = _CONNACK_REASONS[ack[3]] if ack[3] < len(_CONNACK_REASONS) else "unknown"
                raise MQTTException("broker refused the connection: CONNACK %d (%s)" % (ack[3], why))
        except Exception:
            self._close()
            raise
        return ack[2] & 1

    def _close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def disconnect(self):
        try:
            write_all(self.sock, b"\xe0\x00")
        finally:
            self._close()

    def ping(self):
        write_all(self.sock, b"\xc0\x00")

    def publish(self, topic, msg, retain=False, qos=0):
        """Publish; with qos 1, wait for the PUBACK (messages arriving meanwhile go to the callback)."""
        if qos not in (0, 1):
            raise ValueError("QoS %d is not supported (0 or 1)" % qos)
        pid = self._next_pid() if qos else 0
        write_all(self.sock, publish_header(topic, len(msg), retain, qos, pid))
        write_all(self.sock, msg)
        if qos:
            self._wait_ack(_PUBACK, pid)

    def subscribe(self, topic, qos=0):
        """Subscribe to one topic filter and wait for its SUBACK. Raises: MQTTException (refused)."""
        pid = self._next_pid()
        write_all(self.sock, subscribe_packet(pid, topic, qos))
        self._wait_ack(_SUBACK, pid)
        if self._granted == 0x80:
            raise MQTTException("broker refused the subscription to %s" % topic)

    def _wait_ack(self, op, pid):
        self._acked = None
        while True:
            got = self.wait_msg()
            if got is None:
                raise MQTTException("no ack for packet %d within %d s" % (pid, self.timeout_s))
            if got == op and self._acked == pid:
                return

    def check_msg(self):
        """Handle one packet if one is waiting; None when nothing arrived."""
        self.sock.setblocking(False)
        return self.wait_msg()

    def wait_msg(self):
        """Read and handle one packet. Returns its type (0x30 for PUBLISH); None when nothing came
        (at once after check_msg, within timeout_s otherwise)."""
        try:
            first = self.sock.read(1)
        except OSError as exc:
            if not _nothing_yet(exc):
                raise
            first = None
        _blocking(self.sock, self.timeout_s)
        if first is None:
            return None
        if first == b"":
            raise OSError("connection closed by the broker")
        first = first[0]
        rlen = read_length(self.sock)
        op = first & 0xF0
        if op == _PUBLISH:
            self._read_publish(first, rlen)
            return _PUBLISH
        body = read_exact(self.sock, rlen) if rlen else b""
        if first == _PUBACK and rlen == 2:
            self._acked = (body[0] << 8) | body[1]
        elif first == _SUBACK and rlen == 3:
            self._acked = (body[0] << 8) | body[1]
            self._granted = body[2]
        elif first != _PINGRESP or rlen:
            raise ProtocolError("unexpected packet %02x (%d bytes)" % (first, rlen))
        return op

    def _read_publish(self, first, rlen):
        qos = (first >> 1) & 3
        left = rlen - 2 - (2 if qos else 0)
        if qos > 1 or left < 1:
            raise ProtocolError("malformed PUBLISH (QoS %d, %d bytes)" % (qos, rlen))
        raw = read_exact(self.sock, 2)
        tlen = (raw[0] << 8) | raw[1]
        if tlen > left:
            raise ProtocolError("PUBLISH topic length %d does not fit its %d bytes" % (tlen, rlen))
        topic = read_exact(self.sock, tlen)
        pid = read_exact(self.sock, 2) if qos else None
        left -= tlen
        if left > self.max_msg:
            while left:  # skipped unread in small pieces; the callback never sees it
                left -= len(read_exact(self.sock, left if left < 512 else 512))
        else:
            msg = read_exact(self.sock, left) if left else b""
            if self.cb is not None:
                self.cb(topic, msg)
        if pid is not None:
            write_all(self.sock, b"\x40\x02" + pid)


def _blocking(sock, timeout_s):
    """Blocking reads that give up after timeout_s (setblocking(True) alone would wait forever)."""
    try:
        sock.settimeout(timeout_s)
    except (AttributeError, OSError):
        sock.setblocking(True)


# ------------------------------------------------------------------ the transport


class _Payload:
    """A PUBLISH payload as an iterator of pieces read from the socket; drain() skips the rest."""

    def __init__(self, transport, size):
        self.t = transport
        self.left = size

    def __iter__(self):
        return self

    def __next__(self):
        if self.left <= 0:
            raise StopIteration
        n = self.left if self.left < self.t.max_chunk else self.t.max_chunk
        data = read_exact(self.t.sock, n)
        self.left -= n
        return data

    def drain(self):
        self.t._skip(self.left)
        self.left = 0


class Transport:
    """Keeps one device's MQTT session going over a umqtt.simple-style client (see the module docstring).

    client_factory() returns a new, unconnected client for every attempt (a
    list of them: one per broker node, tried in turn); subscribe_qos is the
    QoS asked for every subscription (0 for a NATS cluster, see
    docs/operations.md);
    clock_ms() is time.ticks_ms or any monotonic milliseconds; sleep_ms(ms)
    is what run() waits with when there is nothing to do; log(*parts) gets
    one line per event.
    """

    def __init__(self, session, client_factory, clock_ms, sleep_ms, max_chunk=1024,
                 max_small=16384, keepalive_ms=None, read_timeout_ms=10000,
                 ack_timeout_ms=30000, backoff=None, idle_ms=50, log=None, subscribe_qos=1):
        if max_chunk < 16:
            raise ValueError("max_chunk must be at least 16 bytes")
        if subscribe_qos not in (0, 1):
            raise ValueError("subscribe_qos must be 0 or 1")
        self.session = session
        self.factories = client_factory if type(client_factory) is list else [client_factory]
        if not self.factories:
            raise ValueError("no broker to connect to")
        self.node = 0  # index in factories of the node used now (or next)
        self.untried = len(self.factories)  # nodes left in this round of failed attempts
        self.subscribe_qos = subscribe_qos
        self.clock_ms = clock_ms
        self.sleep_ms = sleep_ms
        self.max_chunk = max_chunk
        self.max_small = max_small
        self.keepalive_ms = keepalive_ms
        self.read_timeout_ms = read_timeout_ms
        self.ack_timeout_ms = ack_timeout_ms
        self.backoff = backoff if backoff is not None else Backoff()
        self.idle_ms = idle_ms
        self.log = log if log is not None else _no_log
        self.status_topic = topics.status(session.fleet, session.device_id)
        self.client = None
        self.sock = None
        self.scratch = bytearray(max_chunk)
        self.pending = {}       # pid -> ("sub", topic, sent_at) or (msg, sent_at)
        self.outbox = []        # messages waiting for a connection
        self.pid = 0
        self.last_sent = 0
        self.ping_sent = None
        self.retry_from = None  # (dropped_at, delay_ms) while disconnected
        self.connects = 0
        self.drops = 0
        self.skipped = 0

    @property
    def connected(self):
        return self.client is not None

    # ------------------------------------------------------------ loop

    def run(self, stop=None):
        """poll() until stop() is true (forever when stop is None), sleeping when idle."""
        while stop is None or not stop():
            if not self.poll():
                self.sleep_ms(self.idle_ms)

    def poll(self):
        """One step: connect when due, handle what arrived, keep-alive, tick. Returns True when packets came."""
        worked = False
        if self.client is None and self._due():
            self._connect()
        if self.client is not None:
            try:
                worked = self._read_packets()
                self._keep_alive()
            except OSError as exc:
                self._drop("connection lost: %s" % (exc,))
            except MQTTException as exc:
                self._drop(str(exc))
        self._send_all(self.session.tick())
        return worked

    def send(self, messages):
        """Publish [(topic, payload, retain, qos)] now, or queue them until connected."""
        self._send_all(messages)

    def close(self):
        """Publish the offline status, then DISCONNECT (the broker drops the will)."""
        if self.client is None:
            return
        try:
            topic, msg, retain, qos = self.session.will()
            self._publish(topic, msg, retain, qos)
            self.client.disconnect()
        except OSError:
            pass
        self.client = self.sock = None

    # ------------------------------------------------------------ connecting

    def _due(self):
        if self.retry_from is None:
            return True
        dropped_at, delay = self.retry_from
        return _ticks_diff(self.clock_ms(), dropped_at) >= delay

    def _connect(self):
        try:
            client = self.factories[self.node]()
            client.set_last_will(*self.session.will())
            client.connect(clean_session=True)
        except Exception as exc:  # umqtt raises its own MQTTException, not ours
            # One log line: an mbedTLS error's text can hold line breaks.
            why = " ".join(str(exc).split()) or type(exc).__name__
            self._next_node()
            self.untried -= 1
            if self.untried > 0:
                self.log("mqtt: connect failed: %s; trying broker node %d now" % (why, self.node))
                return  # retry_from stays as it is: the next poll tries that node
            self._schedule("connect failed: %s" % (why,))
            return
        self.backoff.reset()  # a CONNACK 0, and nothing less, resets the backoff
        self.untried = len(self.factories)
        self.client = client
        self.sock = client.sock
        self.connects += 1
        self.pid = 0
        self.pending = {}
        self.ping_sent = None
        self.retry_from = None
        self.last_sent = self.clock_ms()
        if self.keepalive_ms is None:
            self.keepalive_ms = getattr(client, "keepalive", 0) * 1000
        _blocking(self.sock, self.read_timeout_ms / 1000)
        self.log("mqtt: connected (connection %d)" % self.connects)
        try:
            for topic in self.session.subscriptions():
                pid = self._next_pid()
                self._write(subscribe_packet(pid, topic, self.subscribe_qos))
                self.pending[pid] = ("sub", topic, self.last_sent)
            waiting = [m for m in self.outbox if m[0] != self.status_topic]
            self.outbox = []
            self._send_all(self.session.connected() + waiting)
        except OSError as exc:
            self._drop("connection lost while subscribing: %s" % (exc,))

    def _next_node(self):
        self.node = (self.node + 1) % len(self.factories)

    def _schedule(self, why):
        self.untried = len(self.factories)
        delay = self.backoff.next_ms()
        self.retry_from = (self.clock_ms(), delay)
        self.log("mqtt: %s; next attempt in %d ms" % (why, delay))

    def _drop(self, why):
        """Close the socket without DISCONNECT (so the will is published) and back off."""
        sock, self.client, self.sock = self.sock, None, None
        self.drops += 1
        for entry in self.pending.values():
            if entry[0] != "sub":
                self._queue(entry[0])
        self.pending = {}
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self._next_node()
        self._schedule(why)

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    # ------------------------------------------------------------ reading

    def _peek(self):
        """One byte if one is waiting, else None; leaves the socket blocking with a timeout."""
        sock = self.sock
        sock.setblocking(False)
        try:
            b = sock.read(1)
        except OSError as exc:
            if not _nothing_yet(exc):
                raise
            b = None
        _blocking(sock, self.read_timeout_ms / 1000)
        if b == b"":
            raise OSError("connection closed by the broker")
        return b

    def _read_packets(self):
        got = False
        for _ in range(_PACKETS_PER_POLL):
            b = self._peek()
            if b is None:
                break
            got = True
            self._handle(b[0], read_length(self.sock))
            if self.client is None:
                break
        return got

    def _handle(self, first, rlen):
        op = first & 0xF0
        if op == _PUBLISH:
            self._on_publish(first, rlen)
        elif first == _PUBACK and rlen == 2:
            self._acked(read_exact(self.sock, 2), "PUBACK")
        elif first == _SUBACK and rlen == 3:
            body = read_exact(self.sock, 3)
            entry = self._acked(body[:2], "SUBACK")
            if body[2] == 0x80 and entry is not None:
                self.log("mqtt: the broker refused the subscription to %s" % entry[1])
        elif first == _PINGRESP and rlen == 0:
            self.ping_sent = None
        else:
            raise ProtocolError("malformed or unexpected packet from the broker: type %02x, %d bytes"
                                % (first, rlen))

    def _acked(self, raw, what):
        pid = (raw[0] << 8) | raw[1]
        entry = self.pending.pop(pid, None)
        if entry is None:
            self.log("mqtt: %s for unknown packet id %d ignored" % (what, pid))
        return entry

    def _on_publish(self, first, rlen):
        qos = (first >> 1) & 3
        if qos > 1:
            raise ProtocolError("PUBLISH with QoS %d on a QoS 1 subscription" % qos)
        if rlen < 2:
            raise ProtocolError("PUBLISH of %d bytes has no room for a topic" % rlen)
        raw = read_exact(self.sock, 2)
        tlen = (raw[0] << 8) | raw[1]
        left = rlen - 2 - (2 if qos else 0)
        if tlen == 0 or tlen > left:
            raise ProtocolError("PUBLISH topic length %d does not fit its %d bytes" % (tlen, rlen))
        topic = None
        if tlen > _MAX_TOPIC:
            self._skip(tlen)
        else:
            try:
                topic = read_exact(self.sock, tlen).decode()
            except UnicodeError:
                topic = None
        left -= tlen
        pid = read_exact(self.sock, 2) if qos else None
        out = self._deliver(topic, left)
        if pid is not None:
            self._write(b"\x40\x02" + pid)
        self._send_all(out)

    def _deliver(self, topic, size):
        """Hand one payload of `size` bytes (still on the socket) to the session; returns its messages."""
        if topic is None:
            self._skip(size)
            return []
        kind = topics.classify(self.session.fleet, topic)[0]
        if kind == "bundle" and size:
            payload = _Payload(self, size)
            try:
                out = self.session.on_bundle_chunks(topic, payload)
            except TrustfleetError as exc:
                self.log("mqtt: %s: %s" % (topic, exc))
                out = []
            payload.drain()  # a refused bundle may stop reading early
            return out
        if size > self.max_small:
            self.skipped += 1
            self.log("mqtt: %s: %d bytes is over %d, skipped unread" % (topic, size, self.max_small))
            self._skip(size)
            return []
        raw = read_exact(self.sock, size) if size else b""
        try:
            return self.session.on_message(topic, raw)
        except TrustfleetError as exc:
            self.log("mqtt: %s: %s" % (topic, exc))
            return []

    def _skip(self, n):
        """Read and drop n bytes through one scratch buffer: nothing the size of n is allocated."""
        buf = memoryview(self.scratch)
        while n > 0:
            k = n if n < len(buf) else len(buf)
            got = self.sock.readinto(buf[:k])
            if not got:
                raise OSError("connection closed while skipping %d bytes" % n)
            n -= got

    # ------------------------------------------------------------ writing

    def _write(self, data):
        write_all(self.sock, data)
        self.last_sent = self.clock_ms()

    def _publish(self, topic, payload, retain, qos):
        pid = self._next_pid() if qos else 0
        self._write(publish_header(topic, len(payload), retain, qos, pid))
        self._write(payload)
        if qos:
            self.pending[pid] = ((topic, payload, retain, qos), self.last_sent)

    def _send_all(self, messages):
        for m in messages:
            if self.client is None:
                self._queue(m)
                continue
            try:
                self._publish(m[0], m[1], m[2], m[3])
            except OSError as exc:
                self._queue(m)
                self._drop("connection lost while publishing: %s" % (exc,))

    def _queue(self, m):
        """Keep a message for the next connection: the newest status, and a few reports."""
        if m[0] == self.status_topic:
            self.outbox = [x for x in self.outbox if x[0] != self.status_topic]
        elif len(self.outbox) >= _OUTBOX_REPORTS:
            self.outbox.pop(0)
        self.outbox.append(m)

    def _keep_alive(self):
        now = self.clock_ms()
        for pid in self.pending:
            if _ticks_diff(now, self.pending[pid][-1]) > self.ack_timeout_ms:
                raise MQTTException("no ack for packet %d within %d ms" % (pid, self.ack_timeout_ms))
        ka = self.keepalive_ms
        if not ka:
            return
        if self.ping_sent is not None:
            limit = ka // 2 if ka >= 2000 else 1000
            if _ticks_diff(now, self.ping_sent) > limit:
                raise MQTTException("no PINGRESP within %d ms: connection dead" % limit)
        elif _ticks_diff(now, self.last_sent) >= ka * 3 // 4:
            self.client.ping()
            self.last_sent = self.ping_sent = now


def _no_log(*parts):
    pass
