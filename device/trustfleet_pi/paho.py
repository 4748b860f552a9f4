"""The Raspberry Pi agent's MQTT transport: paho-mqtt 2.x around the sans-I/O Session.

What it trusts: nothing from the broker. Documents are judged by the
session (session.py); over mqtts:// the broker's certificate is judged by
the INSTALLED trust store (tls.context_for: anchors, pins with their
expiry, distrust, at the device's trusted time), never by the system CAs.

Threads. paho's network thread (loop_start(), one per connection, with
reconnect_on_failure=False so that it ends with its connection) only
moves bytes: its callbacks put events on a queue and return at once.
One worker thread (the caller of run(), the CLI's main thread) takes them
off in order and does everything slow or stateful: Session.on_message
(ECDSA, writing slots, the TLS health check of a trial bundle),
Session.tick() every second, and publishing what the session returns.
So a 10 s health check never stalls paho's keep-alive, and the session and
device are only ever touched by one thread.

Per connection, in this order:
1. A new paho Client (protocol 3.1.1 by default, or 5; clean session), a
   new TLS context from the store installed NOW (so a committed bundle
   applies from the next connection), the session's will (retained
   "offline" status, QoS 1), username/password (password_file is read at
   every attempt) or a client certificate.
2. connect() (TCP + TLS, bounded by connect_timeout_s), then a CONNACK
   within connack_timeout_s.
3. In on_connect, when the CONNACK says success: SUBSCRIBE (QoS 1, or
   [mqtt] subscribe_qos) to every
   topic of session.subscriptions() - after EVERY connect, since the
   session is clean. The worker then resets the backoff (only here: a TCP
   or TLS connection that ends in a refused or missing CONNACK does not
   count) and publishes session.connected() plus the reports that waited.
4. Messages until the connection is lost or stop is set. A subscription the
   SUBACK refuses is asked again (1 s, doubling to 60 s) while the connection
   lasts: a clustered broker that lost a node can refuse some subscriptions
   for a while (NATS 2.9, see docs/operations.md), and MQTT 3.1.1 cannot say
   whether a refusal is for good.

Reconnecting is ours, not paho's (paho's reconnect_delay_set resets its
delay on any connect, CONNACK or not): capped, jittered exponential
backoff (trustfleet_device.backoff.Backoff, the same rule as on the board),
first_s doubling up to cap_s, each delay drawn from [d/2, d], reset only
by a successful CONNACK. While disconnected the session still ticks; its
newest status and a few reports wait for the next connection (a status
is always republished on connect). A QoS 1 message not acknowledged when
the connection drops is queued again the same way.

Several brokers (`brokers = [...]`, the nodes of a cluster): one is used at
a time, starting with the first. When an attempt ends (refused, unreachable,
no CONNACK, or a connection that was up and is lost) the next one in the
list is used for the next attempt, round and round. An attempt that failed
before its CONNACK goes on to the next node at once while the round has
nodes left untried; the backoff delay comes after a whole round failed, or
after a connection that was up is lost (then it is the reset, short delay).
Each node gets its own TLS context bound to its own host name, checked by
the installed store like a single broker.

Stopping (stop.set(), e.g. from SIGTERM): the worker publishes the
offline status itself (a clean DISCONNECT suppresses the will), waits a
moment for its PUBACK, disconnects and returns.
"""

from __future__ import annotations

import contextlib
import queue
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from trustfleet_device.backoff import Backoff
from trustfleet_device.errors import TrustfleetError
from trustfleet_pi.config import ConfigError, MqttConfig

QUEUE_MAX = 1000          # messages from the broker not yet handled
OUTBOX_REPORTS = 32       # reports kept while disconnected
STOP_PUBACK_S = 3.0       # how long a clean stop waits for the offline status' PUBACK
RESUBSCRIBE_FIRST_S = 1.0  # a refused subscription is asked again after this, doubling ...
RESUBSCRIBE_CAP_S = 60.0   # ... up to this, for as long as the connection lasts

Message = tuple[str, bytes, bool, int]  # (topic, payload, retain, qos), as the session returns


class StopFlag:
    """What run() watches: set from a signal handler (a bare attribute, no lock to deadlock on)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str = "stop") -> None:
        self.reason = reason

    def is_set(self) -> bool:
        return self.reason is not None

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.1))
        return self.is_set()


def _stderr(text: str) -> None:
    print(f"trustfleet-agent: {text}", file=sys.stderr, flush=True)


class PahoTransport:
    """Runs one device's MQTT session over paho until stop is set (see the module docstring).

    Args:
        session: a trustfleet_device.session.Session.
        settings: the [mqtt] table (config.MqttConfig).
        tls_context: host -> a fresh ssl.SSLContext for a connection to it (mqtts only).
        client_factory: (client_id, protocol) -> a paho Client (tests pass a fake).
        clock: monotonic seconds. rand: [0, 1) for the jitter. log: one line per event.
        max_packet: MQTT 5 Maximum Packet Size asked of the broker (None: no limit).
    """

    def __init__(self, session: Any, settings: MqttConfig, *,
                 tls_context: Callable[[str], ssl.SSLContext] | None = None,
                 client_factory: Callable[[str, int], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] | None = None,
                 log: Callable[[str], None] = _stderr,
                 first_s: float = 1.0, cap_s: float = 120.0, tick_s: float = 1.0,
                 connect_timeout_s: float = 10.0, connack_timeout_s: float = 15.0,
                 max_packet: int | None = None):
        if settings.tls and tls_context is None:
            raise ValueError("an mqtts:// broker needs a tls_context factory")
        self.session = session
        self.settings = settings
        self.tls_context = tls_context
        self.client_factory = client_factory or _paho_client
        self.clock = clock
        self.log = log
        self.backoff = Backoff(int(first_s * 1000), int(cap_s * 1000), rand)
        self.tick_s = tick_s
        self.connect_timeout_s = connect_timeout_s
        self.connack_timeout_s = connack_timeout_s
        self.max_packet = max_packet
        self.client_id = settings.client_id or f"tf-{session.fleet}-{session.device_id}"
        self.status_topic = session.will()[0]
        self.events: queue.Queue[tuple] = queue.Queue(QUEUE_MAX)
        self.outbox: list[Message] = []
        self.inflight: dict[int, Message] = {}
        self.generation = 0
        self.connects = 0           # successful CONNACKs
        self.attempts = 0
        self.last_tick = clock()
        self.servers = settings.all_servers()
        self.server = 0             # index in servers of the node used now (or next)
        self.untried = len(self.servers)  # nodes left in this round of failed attempts
        self.sub_mids: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its topics
        self.refused: list[str] = []  # topics to subscribe to again, at resubscribe_at
        self.resubscribe_at = 0.0
        self.resubscribe_s = RESUBSCRIBE_FIRST_S

    @property
    def host(self) -> str:
        return self.servers[self.server][0]

    @property
    def port(self) -> int:
        return self.servers[self.server][1]

    def url(self) -> str:
        return self.settings.url(self.servers[self.server])

    # ------------------------------------------------------------------ the loop

    def run(self, stop: Any) -> None:
        """Connect, serve, back off, again, until stop is set. Raises: DeviceError (storage)."""
        while not stop.is_set():
            was_up = self.connects
            self._attempt(stop)
            if stop.is_set():
                break
            if len(self.servers) > 1:
                self.server = (self.server + 1) % len(self.servers)
                self.untried -= 1
                if self.connects == was_up and self.untried > 0:
                    self.log(f"trying the next broker, {self.url()}")
                    continue
                self.untried = len(self.servers)
            delay = self.backoff.next_ms() / 1000
            self.log(f"next connection attempt in {delay:.1f} s")
            self._idle(stop, delay)

    def _idle(self, stop: Any, seconds: float) -> None:
        """Wait, ticking the session, until `seconds` passed or stop is set."""
        end = self.clock() + seconds
        while not stop.is_set():
            left = end - self.clock()
            if left <= 0:
                return
            stop.wait(min(left, self.tick_s))
            self._tick(None)

    def _attempt(self, stop: Any) -> None:
        """One connection, from CONNECT until it is lost (or stop)."""
        self.generation += 1
        self.attempts += 1
        gen = self.generation
        try:
            client = self._new_client(gen)
        except (ConfigError, TrustfleetError, OSError, ValueError) as exc:
            self.log(f"cannot prepare the connection to {self.url()}: {exc}")
            return
        self.log(f"connecting to {self.url()} (MQTT {self.settings.protocol}) "
                 f"as {self.client_id}")
        connack_by = self.clock() + self.connack_timeout_s
        try:
            client.connect(self.host, self.port, self.settings.keepalive,
                           **self._connect_args())
        except ssl.SSLCertVerificationError as exc:
            self.log(f"TLS to the broker refused: {getattr(exc, 'verify_message', exc)}")
            return
        except (OSError, ValueError) as exc:
            self.log(f"cannot connect to {self.url()}: {exc}")
            return
        client.loop_start()  # paho's network thread; reconnect_on_failure=False: it ends with the connection
        failed = True
        try:
            self._serve(client, gen, stop, connack_by)
            failed = False
        finally:
            # On an error (the device failed) no DISCONNECT: the process exits, the socket
            # closes, and the broker publishes the will.
            if not failed:
                _quietly(client.disconnect)
                _quietly(client.loop_stop)
            self._requeue_inflight()

    def _serve(self, client: Any, gen: int, stop: Any, connack_by: float) -> None:
        up = False
        while True:
            if stop.is_set():
                if up:
                    self._say_offline(client)
                return
            try:
                event = self.events.get(timeout=self._until_tick())
            except queue.Empty:
                event = None
            if event is not None:
                result = self._handle(client, gen, event)
                if result == "up":
                    up = True
                elif result == "gone":
                    return
            if not up and self.clock() > connack_by:
                self.log(f"no CONNACK within {self.connack_timeout_s:.0f} s")
                return
            if up and not client.is_connected():
                self.log("disconnected: connection lost")
                return
            if up and self.refused and self.clock() >= self.resubscribe_at:
                topics, self.refused = self.refused, []
                rc, mid = client.subscribe([(t, self.settings.subscribe_qos) for t in topics])
                if rc == paho.MQTT_ERR_SUCCESS:
                    self.sub_mids[mid] = topics
                else:  # not even sent: the next try after the (doubled) delay
                    self.refused = topics
                    self.resubscribe_at = self.clock() + self.resubscribe_s
            self._tick(client if up else None)

    def _until_tick(self) -> float:
        return max(0.0, min(self.tick_s, self.last_tick + self.tick_s - self.clock()))

    def _tick(self, client: Any) -> None:
        if self.clock() - self.last_tick >= self.tick_s:
            self.last_tick = self.clock()
            self._publish_all(client, self.session.tick())

    # ------------------------------------------------------------------ events

    def _handle(self, client: Any, gen: int, event: tuple) -> str | None:
        kind, egen = event[0], event[1]
        if kind == "message":
            # Documents from an earlier connection are still documents: handle them.
            topic, payload = event[2], event[3]
            self.log(f"received {topic} ({len(payload)} bytes)")
            self._publish_all(client, self.session.on_message(topic, payload))
            return None
        if egen != gen:
            return None  # a late event of a connection already given up
        if kind == "connack":
            ok, why = event[2], event[3]
            self.sub_mids = {event[4]: list(self.session.subscriptions())} if ok else {}
            self.refused, self.resubscribe_s = [], RESUBSCRIBE_FIRST_S
            if not ok:
                self.log(f"the broker refused the connection: {why}")
                return "gone"
            self.backoff.reset()  # a successful CONNACK, and nothing less, resets the backoff
            self.connects += 1
            self.untried = len(self.servers)
            self.log(f"connected to {self.url()}; subscribed to "
                     f"{len(self.session.subscriptions())} topics")
            waiting = [m for m in self.outbox if m[0] != self.status_topic]
            self.outbox = []
            self._publish_all(client, self.session.connected() + waiting)
            return "up"
        if kind == "puback":
            self.inflight.pop(event[2], None)
        elif kind == "suback":
            topics = self.sub_mids.pop(event[2], [])
            refused = [t for t, rc in zip(topics, event[3], strict=False) if rc.is_failure]
            for topic in refused:
                self.log(f"the broker refused the subscription to {topic}; asking again in "
                         f"{self.resubscribe_s:.0f} s")
            if refused:
                self.refused += refused
                self.resubscribe_at = self.clock() + self.resubscribe_s
                self.resubscribe_s = min(self.resubscribe_s * 2, RESUBSCRIBE_CAP_S)
        elif kind == "gone":
            self.log(f"disconnected: {event[2]}")
            return "gone"
        return None

    # ------------------------------------------------------------------ publishing

    def _publish_all(self, client: Any, messages: list[Message]) -> None:
        for m in messages:
            self._describe(m)
            if client is None:
                self._queue(m)
                continue
            topic, payload, retain, qos = m
            info = client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self._queue(m)
            elif qos:
                self.inflight[info.mid] = m

    def _queue(self, m: Message) -> None:
        if m[0] == self.status_topic:
            self.outbox = [x for x in self.outbox if x[0] != self.status_topic]
        elif len(self.outbox) >= OUTBOX_REPORTS:
            self.outbox.pop(0)
        self.outbox.append(m)

    def _requeue_inflight(self) -> None:
        for m in self.inflight.values():
            self._queue(m)
        self.inflight = {}

    def _describe(self, m: Message) -> None:
        """One log line per status or report the session sends."""
        import json
        try:
            body = json.loads(m[1])
        except ValueError:
            return
        if m[0] == self.status_topic:
            version = body.get("version")
            held = f"bundle v{version}" if version is not None else "no bundle yet"
            line = f"status: {body.get('state')}, {held}"
            if body.get("event"):
                line += f", {body['event']}: {body.get('detail')}"
        else:
            line = (f"report: {body.get('validation-result')} {body.get('noted-hostname', '')}"
                    f" {body.get('reason', '')}").rstrip()
        self.log(line)

    def _say_offline(self, client: Any) -> None:
        topic, payload, retain, qos = self.session.will()
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == paho.MQTT_ERR_SUCCESS:
            _quietly(info.wait_for_publish, STOP_PUBACK_S)
        self.log("stopped: offline status published, disconnected")
        _quietly(client.disconnect)

    # ------------------------------------------------------------------ paho side

    def _connect_args(self) -> dict[str, Any]:
        if self.settings.protocol != "5":
            return {}
        props = None
        if self.max_packet:
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = self.max_packet
        return {"clean_start": True, "properties": props}

    def _new_client(self, gen: int) -> Any:
        s = self.settings
        protocol = paho.MQTTv5 if s.protocol == "5" else paho.MQTTv311
        client = self.client_factory(self.client_id, protocol)
        client.connect_timeout = self.connect_timeout_s
        topic, payload, retain, qos = self.session.will()
        client.will_set(topic, payload, qos=qos, retain=retain)
        if s.username is not None:
            client.username_pw_set(s.username, s.read_password())
        if s.tls:
            ctx = self.tls_context(self.host)
            if s.client_cert is not None:
                ctx.load_cert_chain(s.client_cert, s.client_key)
            client.tls_set_context(ctx)
        subs = list(self.session.subscriptions())
        qos = s.subscribe_qos
        put = self._put

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            ok = not rc.is_failure
            sent = c.subscribe([(t, qos) for t in subs]) if ok else None
            mid = sent[1] if isinstance(sent, tuple) else None  # paho: (rc, mid)
            put(("connack", gen, ok, str(rc), mid))

        def on_subscribe(c: Any, userdata: Any, mid: int, codes: list, props: Any = None) -> None:
            if any(rc.is_failure for rc in codes):
                put(("suback", gen, mid, list(codes)))

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            put(("message", gen, msg.topic, msg.payload))

        def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any = None) -> None:
            put(("puback", gen, mid))

        def on_disconnect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            put(("gone", gen, str(rc)))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.on_publish = on_publish
        return client

    def _put(self, event: tuple) -> None:
        try:
            self.events.put_nowait(event)
        except queue.Full:
            # Documents are retained: the next connection delivers them again.
            what = event[2] if event[0] == "message" else event[0]
            self.log(f"dropped {what}: {QUEUE_MAX} events are waiting")


def _paho_client(client_id: str, protocol: int) -> paho.Client:
    # reconnect_on_failure=False: paho must not reconnect behind our backoff.
    clean = None if protocol == paho.MQTTv5 else True
    return paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                       clean_session=clean, reconnect_on_failure=False)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        fn(*args)


def broker_context(device: Any, settings: MqttConfig, *, managed: bool | None = None,
                   user_anchors: list[bytes] | None = None,
                   reports: Any = None) -> Callable[[], ssl.SSLContext]:
    """The tls_context factory for an mqtts:// broker: the installed store, bound to the host name
    of the node being connected to (host -> context).

    reports: the device's queue (the session's), so that a report-only pin
    mismatch of the broker goes out over the connection it let through.
    """
    from trustfleet_pi import tls

    def make(host: str) -> ssl.SSLContext:
        return tls.context_for(device, host=host, managed=managed,
                               user_anchors=user_anchors, reports=reports)

    return make
