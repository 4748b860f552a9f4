"""A minimal asyncio MQTT 3.1.1 client for simulators and benchmarks.

Built to run thousands of connections in one process: no threads and no
task per connection (an asyncio.Protocol plus one keep-alive timer), and
incoming messages wait in a bounded queue; when it is full the client stops
reading the socket, so a slow consumer pushes back on the broker instead of
growing memory.

What it does: CONNECT (will, username/password, clean session, keep-alive),
SUBSCRIBE/UNSUBSCRIBE, PUBLISH at QoS 0 and 1 (QoS 1 waits for PUBACK;
publish_nowait sends without waiting), PUBACK for incoming QoS 1, PINGREQ when idle for a keep-alive period, and
closing the connection when a PINGREQ gets no answer within another period.
What it refuses: QoS 2 in either direction (a broker that sends it is
disconnected), packets larger than `max_packet`.

Order of use: `await connect()` (raises ConnectRefused with the CONNACK
code, NotConnected if the socket fails, AckTimeout), then subscribe/
publish, read with `async for topic, payload, retain in client.messages()`
or an `on_message(topic, payload, retain)` callback (called in the loop,
must not block), and `await disconnect()`. `closed` and `wait_closed()`
report the end of the connection, whoever ended it.

Cost per connection, for simulators with thousands of them: `connect(subscribe=...)`
sends CONNECT and SUBSCRIBE in one write (MQTT lets a client send before
CONNACK); whatever is written while one chunk of received data is handled
(the PUBACK of a message and what on_message publishes in reply) goes out
in one write at the end of that chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from trustfleet_server.broker import packets as p

log = logging.getLogger("trustfleet.mqtt.client")

CONNACK_MEANINGS = {
    p.REFUSED_PROTOCOL_VERSION: "unacceptable protocol version",
    p.REFUSED_IDENTIFIER: "identifier rejected",
    p.REFUSED_SERVER_UNAVAILABLE: "server unavailable",
    p.REFUSED_BAD_USERNAME_PASSWORD: "bad user name or password",
    p.REFUSED_NOT_AUTHORIZED: "not authorized",
}


class ClientError(p.MQTTError):
    """Root of the client's errors."""


class ConnectRefused(ClientError):
    """The broker answered CONNECT with a non-zero return code (`.code`)."""

    def __init__(self, code: int, host: str, port: int):
        meaning = CONNACK_MEANINGS.get(code, "unknown return code")
        super().__init__(f"broker {host}:{port} refused the connection: {meaning} (code {code})")
        self.code = code


class NotConnected(ClientError):
    """The connection could not be opened, or was lost/closed before the operation finished."""


class AckTimeout(ClientError):
    """The broker did not answer (CONNACK, SUBACK, PUBACK, UNSUBACK) within `timeout` seconds."""


class _Protocol(asyncio.Protocol):
    __slots__ = ("client",)

    def __init__(self, client: AioClient):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client._data_received(data)

    def connection_lost(self, exc) -> None:
        self.client._lost(exc)

    def pause_writing(self) -> None:
        self.client._write_paused(True)

    def resume_writing(self) -> None:
        self.client._write_paused(False)

    def eof_received(self):
        return False


class AioClient:
    """One MQTT 3.1.1 connection.

    Args:
        client_id: MQTT client identifier.
        host, port: broker address.
        username, password: optional credentials (password str or bytes).
        keepalive: seconds; 0 disables pings.
        will: (topic, payload, retain, qos) or None.
        ssl: ssl.SSLContext (or True) for TLS, passed to loop.create_connection.
        clean_session: CONNECT clean-session flag.
        on_message: optional callback(topic, payload, retain); when set,
            messages() yields nothing.
        on_close: optional callback(), called soon (in the loop) after the
            connection ends, whoever ended it (also settable as an attribute).
        max_queued: messages buffered for messages() before reading pauses.
        timeout: seconds to wait for the socket and for each acknowledgement.
        max_packet: largest packet accepted from the broker.
    """

    __slots__ = ("client_id", "host", "port", "username", "password", "keepalive", "will", "ssl",
                 "clean_session", "on_message", "max_queued", "timeout", "session_present",
                 "_reader", "_transport", "_loop", "_waiters", "_next_id", "_queue", "_queue_waiter",
                 "_paused", "_closed", "_close_reason", "_timer", "_last_tx", "_last_rx",
                 "_ping_sent", "_drained", "_corked", "on_close")

    def __init__(self, client_id: str, host: str = "127.0.0.1", port: int = 1883, *,
                 username: str | None = None, password: str | bytes | None = None,
                 keepalive: int = 60, will: tuple | None = None, ssl=None,
                 clean_session: bool = True,
                 on_message: Callable[[str, bytes, bool], object] | None = None,
                 on_close: Callable[[], object] | None = None,
                 max_queued: int = 1000, timeout: float = 10.0,
                 max_packet: int = p.DEFAULT_MAX_PACKET):
        if not 0 <= keepalive <= 0xFFFF:
            raise ValueError(f"keepalive {keepalive} outside 0..65535")
        self.client_id = client_id
        self.host = host
        self.port = port
        self.username = username
        self.password = password.encode("utf-8") if isinstance(password, str) else password
        self.keepalive = keepalive
        self.will = None
        if will is not None:
            topic, payload, retain, qos = will
            if qos not in (0, 1):
                raise ValueError(f"will QoS {qos} not in 0..1")
            self.will = p.Will(topic, bytes(payload), qos, bool(retain))
        self.ssl = ssl
        self.clean_session = clean_session
        self.on_message = on_message
        self.on_close = on_close
        self.max_queued = max_queued
        self.timeout = timeout
        self.session_present = False
        self._reader = p.FrameReader(max_packet)
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict = {}          # (packet type, id) -> future
        self._next_id = 0
        self._queue: deque | None = None   # made on the first message for messages()
        self._queue_waiter: asyncio.Future | None = None
        self._paused = False
        self._closed: asyncio.Future | None = None
        self._close_reason: str | None = None
        self._timer = None
        self._last_tx = 0.0
        self._last_rx = 0.0
        self._ping_sent: float | None = None
        self._drained: asyncio.Future | None = None   # set while the socket buffer is full
        self._corked: list | None = None   # writes held while a received chunk is handled

    # --- state ---

    @property
    def closed(self) -> bool:
        """True once the connection has ended (or was never opened)."""
        return self._closed is None or self._closed.done()

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # --- operations ---

    async def connect(self, subscribe: list[tuple[str, int]] | None = None):
        """Open the connection and wait for CONNACK; returns session-present.

        With `subscribe` (filter, qos) pairs, SUBSCRIBE goes out in the same write as
        CONNECT and this returns the SUBACK codes instead (as subscribe() does).

        Raises: ConnectRefused, NotConnected, AckTimeout, ValueError (subscribe as in subscribe()).
        """
        if subscribe is not None:
            _check_filters(subscribe)
        if not self.closed:
            raise RuntimeError("already connected")
        loop = self._loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        self._close_reason = None
        self._reader = p.FrameReader(self._reader.max_packet)
        if self._queue:
            self._queue.clear()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port,
                                       ssl=self.ssl),
                self.timeout)
        except (TimeoutError, OSError) as exc:
            self._finish(f"cannot connect to {self.host}:{self.port}: {exc or 'timed out'}")
            raise NotConnected(self._close_reason) from exc
        self._transport = transport
        self._last_rx = loop.time()
        connack = self._expect(p.CONNACK, 0)
        data = p.Connect(self.client_id, p.MQTT311, self.clean_session, self.keepalive,
                         self.username, self.password, self.will).encode()
        suback = None
        if subscribe is not None:
            pid = self._new_id()
            suback = self._expect(p.SUBACK, pid)
            data += p.Subscribe(pid, [(f, p.SubOptions(q)) for f, q in subscribe]).encode(p.MQTT311)
        self._send(data)
        try:
            ack = await self._wait(connack, "CONNACK")
        except BaseException:
            self._abort("no CONNACK")
            raise
        if ack.reason_code != p.ACCEPTED:
            self._abort(f"refused with code {ack.reason_code}")
            raise ConnectRefused(ack.reason_code, self.host, self.port)
        self.session_present = ack.session_present
        if self.keepalive:
            self._timer = loop.call_later(self.keepalive, self._keepalive_tick)
        if suback is not None:
            return (await self._wait(suback, "SUBACK")).reason_codes
        return ack.session_present

    async def subscribe(self, topics: list[tuple[str, int]]) -> list[int]:
        """Subscribe; returns the SUBACK codes (granted QoS, or 0x80 for a refused filter).

        Raises: NotConnected, AckTimeout, ValueError (QoS not 0/1, empty list).
        """
        _check_filters(topics)
        pid = self._new_id()
        future = self._expect(p.SUBACK, pid)
        self._send(p.Subscribe(pid, [(f, p.SubOptions(q)) for f, q in topics]).encode(p.MQTT311))
        ack = await self._wait(future, "SUBACK")
        return ack.reason_codes

    async def unsubscribe(self, filters: list[str]) -> None:
        """Raises: NotConnected, AckTimeout."""
        pid = self._new_id()
        future = self._expect(p.UNSUBACK, pid)
        self._send(p.Unsubscribe(pid, list(filters)).encode(p.MQTT311))
        await self._wait(future, "UNSUBACK")

    async def publish(self, topic: str, payload: bytes, retain: bool = False,
                      qos: int = 1) -> None:
        """Publish; at QoS 1 return once the broker's PUBACK arrives.

        Raises: NotConnected, AckTimeout, ValueError (QoS not 0/1).
        """
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} not in 0..1")
        if qos == 0:
            self._send(p.Publish(topic, payload, 0, retain).encode(p.MQTT311))
            if self._drained is not None:   # let the socket drain before queueing more
                await asyncio.shield(self._drained)
            return
        pid = self._new_id()
        future = self._expect(p.PUBACK, pid)
        self._send(p.Publish(topic, payload, 1, retain, False, pid).encode(p.MQTT311))
        await self._wait(future, "PUBACK")

    def publish_nowait(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        """Publish without waiting: at QoS 1 the broker's PUBACK is read and dropped (a
        caller that must know it arrived uses publish()). Raises: NotConnected, ValueError."""
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} not in 0..1")
        pid = self._new_id() if qos else 0
        self._send(p.Publish(topic, payload, qos, retain, False, pid).encode(p.MQTT311))

    async def messages(self) -> AsyncIterator[tuple[str, bytes, bool]]:
        """Yield (topic, payload, retain) until the connection closes."""
        loop = asyncio.get_running_loop()
        while True:
            while self._queue:
                item = self._queue.popleft()
                if self._paused and len(self._queue) <= self.max_queued // 2:
                    self._paused = False
                    if self._transport is not None and not self.closed:
                        self._transport.resume_reading()
                yield item
            if self.closed:
                return
            self._queue_waiter = loop.create_future()
            await asyncio.wait({self._queue_waiter, self._closed},
                               return_when=asyncio.FIRST_COMPLETED)
            self._queue_waiter = None

    async def disconnect(self) -> None:
        """Send DISCONNECT (the will is discarded) and close; no-op if already closed."""
        if self.closed:
            return
        transport = self._transport
        if self._corked:
            transport.write(b"".join(self._corked))
            self._corked.clear()
        transport.write(b"\xe0\x00")
        self._finish("disconnected by the client")
        transport.close()   # sends what is buffered, then closes; the client is closed already

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (as a power loss would): the will is published."""
        if not self.closed:
            self._abort("aborted by the client")

    # --- internals ---

    def _new_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if (p.PUBACK, self._next_id) not in self._waiters and \
                    (p.SUBACK, self._next_id) not in self._waiters and \
                    (p.UNSUBACK, self._next_id) not in self._waiters:
                return self._next_id
        raise RuntimeError("all 65535 packet identifiers are in use")

    def _expect(self, ptype: int, pid: int) -> asyncio.Future:
        if self.closed:
            raise NotConnected(f"not connected ({self._close_reason or 'never connected'})")
        future = self._loop.create_future()
        self._waiters[(ptype, pid)] = future
        return future

    async def _wait(self, future: asyncio.Future, what: str):
        # One timer on the future itself (cheaper than wait_for's wrapper, per connection).
        timer = self._loop.call_later(self.timeout, _time_out, future,
                                      f"no {what} from {self.host}:{self.port} within {self.timeout} s")
        try:
            return await future
        finally:
            timer.cancel()
            for key, value in list(self._waiters.items()):
                if value is future:
                    del self._waiters[key]

    def _send(self, data: bytes) -> None:
        if self.closed or self._transport is None:
            raise NotConnected(f"not connected ({self._close_reason or 'never connected'})")
        if self._corked is not None:
            self._corked.append(data)
        else:
            self._transport.write(data)
        self._last_tx = self._loop.time()

    def _write_paused(self, paused: bool) -> None:
        if paused:
            if self._drained is None:
                self._drained = self._loop.create_future()
        elif self._drained is not None:
            drained, self._drained = self._drained, None
            if not drained.done():
                drained.set_result(None)

    def _data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        self._ping_sent = None
        reader = self._reader
        self._corked = corked = []
        try:
            reader.feed(data)
            while not self.closed:
                frame = reader.next_frame()
                if frame is None:
                    break
                self._handle(p.decode(*frame, p.MQTT311))
        except p.PacketError as exc:
            log.warning("%s: bad packet from %s:%d: %s", self.client_id, self.host, self.port, exc)
            self._abort(f"bad packet from the broker: {exc}")
        finally:
            self._corked = None
            if corked and not self.closed:
                self._transport.write(b"".join(corked))

    def _handle(self, pkt) -> None:
        kind = type(pkt)
        if kind is p.Publish:
            self._on_publish(pkt)
        elif kind is p.Ack and pkt.kind == p.PUBACK:
            self._resolve((p.PUBACK, pkt.packet_id), pkt)
        elif kind is p.Suback:
            self._resolve((p.SUBACK, pkt.packet_id), pkt)
        elif kind is p.Unsuback:
            self._resolve((p.UNSUBACK, pkt.packet_id), pkt)
        elif kind is p.Connack:
            self._resolve((p.CONNACK, 0), pkt)
        elif kind is p.Pingresp:
            pass
        else:
            raise p.PacketError(f"unexpected {kind.__name__} from the broker", p.PROTOCOL_ERROR)

    def _resolve(self, key: tuple, pkt) -> None:
        future = self._waiters.pop(key, None)
        if future is not None and not future.done():
            future.set_result(pkt)

    def _on_publish(self, pkt: p.Publish) -> None:
        if pkt.qos == 2:
            raise p.PacketError("PUBLISH at QoS 2, which this client never subscribes with",
                                p.QOS_NOT_SUPPORTED)
        if pkt.qos == 1:
            self._send(p.Puback(pkt.packet_id).encode(p.MQTT311))
        if self.on_message is not None:
            try:
                self.on_message(pkt.topic, pkt.payload, pkt.retain)
            except Exception:
                log.exception("%s: on_message callback failed", self.client_id)
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append((pkt.topic, pkt.payload, pkt.retain))
        if len(self._queue) >= self.max_queued and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _keepalive_tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        if self._ping_sent is not None and now - self._ping_sent >= self.keepalive:
            self._abort(f"no PINGRESP within {self.keepalive} s")
            return
        due = self._last_tx + self.keepalive
        if now >= due:
            self._transport.write(b"\xc0\x00")
            self._last_tx = now
            if self._ping_sent is None:
                self._ping_sent = now
            due = now + self.keepalive
        self._timer = self._loop.call_later(max(due - now, 0.05), self._keepalive_tick)

    def _abort(self, reason: str) -> None:
        transport = self._transport
        self._finish(reason)
        if transport is not None:
            transport.abort()

    def _lost(self, exc) -> None:
        self._finish(f"connection lost: {exc}" if exc else "connection closed by the broker")

    def _finish(self, reason: str) -> None:
        """Mark the connection ended once: fail waiters, stop timers, wake readers."""
        if self._closed is None or self._closed.done():
            return
        self._close_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(NotConnected(f"{self.host}:{self.port}: {reason}"))
        self._closed.set_result(None)
        if self.on_close is not None:
            self._loop.call_soon(self.on_close)
        self._write_paused(False)
        waiter = self._queue_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _check_filters(topics: list[tuple[str, int]]) -> None:
    if not topics:
        raise ValueError("subscribe needs at least one (filter, qos)")
    for filt, qos in topics:
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} for {filt!r} not in 0..1")


def _time_out(future: asyncio.Future, message: str) -> None:
    if not future.done():
        future.set_exception(AckTimeout(message))
