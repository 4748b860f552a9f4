import binascii
import json
import os
import time

from trustfleet_device.agent import Config
from trustfleet_device.session import Session
from trustfleet_device.transports import mqtt, runner
from trustfleet_device.transports.storage import DirStorage

LOG = []
CHUNKS = []


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class Clock:
    def __init__(self):
        self.t = 0

    def ms(self):
        return self.t

    def sleep(self, ms):
        self.t += ms


class FakeSock:
    """Plays the broker's side of one connection from a script; records what the client writes."""

    def __init__(self, steps):
        self.steps = steps
        self.data = b""
        self.pos = 0
        self.sent = bytearray()
        self.blocking = True
        self.eof = False
        self.broken = False
        self.closed = False
        self.gates = 0

    def _release(self):
        while self.pos >= len(self.data) and self.steps:
            kind, arg = self.steps[0]
            if kind == "wait":
                if bytes(self.sent).find(arg) < 0:
                    return
            elif kind == "gate":
                if not self.gates:
                    return
                self.gates -= 1
            elif kind == "data":
                self.data, self.pos = arg, 0
            elif kind == "eof":
                self.eof = True
            elif kind == "reset":
                self.broken = True
            self.steps.pop(0)

    def _avail(self):
        if self.closed:
            raise OSError(9)  # EBADF
        self._release()
        left = len(self.data) - self.pos
        if left > 0:
            return left
        if self.broken:
            raise OSError(104)  # ECONNRESET
        if self.eof:
            return 0
        if not self.blocking:
            return -1
        raise OSError(110)  # ETIMEDOUT: nothing will come

    def read(self, n):
        left = self._avail()
        if left < 0:
            return None
        k = n if n < left else left
        out = self.data[self.pos:self.pos + k]
        self.pos += k
        return out

    def readinto(self, buf):
        left = self._avail()
        if left < 0:
            return None
        k = len(buf) if len(buf) < left else left
        buf[0:k] = memoryview(self.data)[self.pos:self.pos + k]
        self.pos += k
        return k

    def write(self, data):
        if self.closed or self.broken:
            raise OSError(32)  # EPIPE
        self.sent.extend(data)
        return len(data)

    def setblocking(self, flag):
        self.blocking = flag

    def settimeout(self, t):
        self.blocking = t is None or t > 0

    def close(self):
        self.closed = True


class Broker:
    """The socket factory: one script per connection attempt; "refuse" fails the connect."""

    def __init__(self, clock, scripts):
        self.clock = clock
        self.scripts = scripts
        self.socks = []
        self.attempts = []

    def __call__(self, server, port, ssl, timeout):
        self.attempts.append(self.clock.t)
        script = self.scripts.pop(0) if self.scripts else "refuse"
        if script == "refuse":
            raise OSError(111)  # ECONNREFUSED
        s = FakeSock(script)
        self.socks.append(s)
        return s

    def sent(self):
        return [binascii.hexlify(bytes(s.sent)).decode() for s in self.socks]


def load_scripts(path):
    scripts = []
    for script in json.loads(_read(path)):
        if script == "refuse":
            scripts.append(script)
            continue
        steps = []
        for kind, arg in script:
            steps.append((kind, _read(arg) if arg else None))
        scripts.append(steps)
    return scripts


def fresh_dir(path):
    try:
        names = os.listdir(path)
    except OSError:
        os.mkdir(path)
        return
    for n in names:
        os.remove(path + "/" + n)


class Recorder:
    """Wraps the session to record the size of every chunk handed to on_bundle_chunks."""

    def __init__(self, session):
        self.s = session
        self.fleet = session.fleet
        self.device_id = session.device_id

    def __getattr__(self, name):
        return getattr(self.s, name)

    def on_bundle_chunks(self, topic, chunks):
        def counted():
            for c in chunks:
                CHUNKS.append(len(c))
                yield c
        return self.s.on_bundle_chunks(topic, counted())


def make(name, scripts, keepalive, record=False):
    """A fresh device, its session and a Transport over a scripted broker. Returns (transport, broker, clock)."""
    spec = json.loads(_read("/mq/spec.json"))
    state = "/mq/state-" + name
    fresh_dir(state)
    cfg = Config(fleet=spec["fleet"], firmware_time=spec["now"] - 86400, health_timeout=60,
                 device_id=spec["device"])
    runner.initialise(DirStorage(state), _read("/mq/root.cose"), cfg)
    clock = Clock()
    device = runner.Device(DirStorage(state), cfg, clock=lambda: spec["now"])
    session = Session(device, spec["fleet"], spec["device"])
    if record:
        session = Recorder(session)
    broker = Broker(clock, load_scripts(scripts))

    def client():
        return mqtt.MQTTClient(spec["device"], "mqtt.acme.example", 8883, keepalive=keepalive,
                               sock_factory=broker)

    t = mqtt.Transport(session, client, clock.ms, clock.sleep, max_chunk=1024, max_small=16384,
                       backoff=mqtt.Backoff(1000, 8000, lambda: 0.0), log=LOG.append)
    return t, broker, clock, device


def run(t, clock, polls, step=100):
    """polls x (poll, move the scripted clock); returns the real milliseconds it took."""
    t0 = time.ticks_ms()
    for _ in range(polls):
        t.poll()
        clock.t += step
    return time.ticks_diff(time.ticks_ms(), t0)


def summary(t, broker, device):
    s = device.status()
    return {"sent": broker.sent(), "attempts": broker.attempts, "connects": t.connects,
            "drops": t.drops, "skipped": t.skipped, "version": s["version"], "state": s["state"],
            "last_timestamp": s["last_timestamp"], "log": LOG[-12:], "chunks": CHUNKS,
            "files": sorted(os.listdir(device.store.storage.root)), "clock": t.clock_ms()}
