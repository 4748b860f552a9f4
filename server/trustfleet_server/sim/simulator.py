"""The fleet simulator: N real device agents on one broker, multiplexed with asyncio.

Every simulated device is the real thing minus the hardware: a
`runner.Device` over `MemStorage` (real COSE signature checks, real A/B
slots), a `session.Session` routing its MQTT messages, and one `AioClient`
connection of its own (client id, retained status, last will). Devices of
one worker share a single event loop (no thread per device); `processes`
workers split the fleet and the coordinator adds their figures up.

Health check, without sockets: the trial store (the bundle the runner
hands to the health check) judges a fixed server chain for a fixed host with
`trust.TrustStore.evaluate` at the device's trusted time, the same decision
a TLS handshake with the new store would take (samples/: the chain of
api.demo-fleet.example). A device in the health-fail subset fails whatever
the store says.

What it trusts: the factory root given to it; everything from the broker
goes through the device core, which verifies it. The simulator itself only
peeks at a document's *claimed* version (unverified) to time deliveries and
to pick older documents for re-delivery; convergence is judged on what the
devices verified and committed.

Timing reference t0: the first arrival, at any device, of a bundle whose
claimed version is the target (`until_version`) or, without one, newer
than the factory image. Faults that need a "during the rollout" moment are
placed relative to t0:

- offline: the subset is powered off from the start and boots
  `offline_for` seconds after t0;
- broker restart: at t0 + `broker_restart_at` the broker is stopped and
  started on the same port with its retained messages (the embedded broker
  keeps them in memory, a private Mosquitto runs with persistence); only a
  broker this simulator started can be restarted;
- power cut: on the subset's first install, MemStorage is cut at a random
  one of the install's six storage operations (slot write, switch, commit
  or revert: two each); the device then boots on what survived, must find a
  verified store (old or new), and reconnects: the retained bundle comes
  again and installs;
- duplicate: every message is handed to the session twice at once and a
  third time a moment later; reorder: a newer bundle or timestamp is held
  back, an older one the worker has seen goes first and again after it;
- clock skew (uniform within +-skew) and stuck-2000 (the clock reads
  2000-01-01 and counts from there; firmware_time is a month-old build).

Convergence: the run ends when every device is online, idle and either
runs the target (or newer) or has reverted it and marked it bad, and every
scheduled fault has happened; convergence time is from t0 to the last
commit of the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.resources
import multiprocessing
import os
import random
import resource
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustfleet_device import agent as core
from trustfleet_device import cbor, cose, topics, trust
from trustfleet_device.documents import Bundle
from trustfleet_device.session import Session
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage, PowerCut
from trustfleet_server import mqtturl, x509util
from trustfleet_server.broker.aioclient import AioClient, ClientError
from trustfleet_server.broker.mosquitto import (
    MosquittoError,
    MosquittoNotInstalled,
    PrivateMosquitto,
)
from trustfleet_server.broker.mosquitto import (
    mosquitto_binary as mosquitto_binary,  # simulate.* API (demo, tests)
)
from trustfleet_server.broker.mosquitto import port_open as port_open
from trustfleet_server.errors import UsageError

SAMPLE_HOST = "api.demo-fleet.example"
SAMPLE_CHAIN = "server-chain.pem"
STUCK_CLOCK = 946_684_800          # 2000-01-01T00:00:00Z: what a board without RTC battery reads
FIRMWARE_AGE = 30 * 86_400         # simulated firmware was built a month ago
INSTALL_OPS = 6                    # storage operations of one install (write slot, switch, commit)
KEEPALIVE = 60
CONNECT_CONCURRENCY = 200          # connects in flight per worker
TICK_EVERY = 15.0                  # session.tick() for every device
MAX_BACKOFF = 2.0
REBOOT_DELAY = (0.1, 0.4)
REDELIVER_DELAY = (0.05, 0.4)
MAX_DOCS = 64                      # documents a worker remembers for re-delivery
MANY_DEVICES = 2000                # above this, default to one worker per CPU

# Fault flags per device.
OFFLINE, STUCK, POWER_CUT, HEALTH_FAIL, DUPLICATE, REORDER = 1, 2, 4, 8, 16, 32
FLAG_NAMES = {OFFLINE: "offline", STUCK: "stuck-2000", POWER_CUT: "power-cut",
              HEALTH_FAIL: "health-fail", DUPLICATE: "duplicate", REORDER: "reorder"}


# --------------------------------------------------------------------------- samples


def sample_file(name: str) -> bytes:
    """Bytes of a file shipped in trustfleet_server/samples/ (the demo PKI, public certs only)."""
    return importlib.resources.files("trustfleet_server").joinpath("samples", name).read_bytes()


SAMPLE_FILES = ("demo-fleet-root-ca.pem", "demo-fleet-backup-ca.pem", "demo-fleet-issuing-ca.pem",
                f"{SAMPLE_HOST}.pem", SAMPLE_CHAIN)


def chain_ders(pem: bytes, name: str = SAMPLE_CHAIN) -> tuple[bytes, ...]:
    """DER certificates (leaf first) from PEM text. Raises: CertificateFileError."""
    certs, _ = x509util.parse_certificates(pem, name, strict=True)
    return tuple(x509util.cert_der(c) for c in certs)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Faults:
    """Which faults to apply, as shares of the fleet (0..1) and durations in seconds."""

    offline: float = 0.0
    offline_for: float = 10.0
    clock_skew: int = 0
    stuck_2000: float = 0.0
    power_cut: float = 0.0
    health_fail: float = 0.0
    health_fail_group: str | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    broker_restart_at: float | None = None


@dataclass(frozen=True)
class SimConfig:
    """One simulation. Picklable: worker processes get a copy.

    Args:
        devices: fleet size.
        broker: where the devices connect.
        fleet: fleet name (must be the root's).
        root_raw: the factory root every device starts with.
        groups: (group, share) pairs; devices are assigned in id order.
        faults: see Faults.
        endpoint: host the health check judges the chain for.
        chain: the server chain (DER, leaf first) the health check judges.
        initial: a signed bundle in every device's factory image, or None.
        id_prefix: device ids are <prefix>-<00000>.
        seed: makes the fault subsets and clock skews reproducible.
        until_version: the target; None means the newest version any device verified.
    """

    devices: int
    broker: mqtturl.BrokerURL
    fleet: str
    root_raw: bytes
    groups: tuple[tuple[str, float], ...] = ()
    faults: Faults = Faults()
    endpoint: str = SAMPLE_HOST
    chain: tuple[bytes, ...] = ()
    initial: bytes | None = None
    id_prefix: str = "sim"
    seed: int = 1
    until_version: int | None = None
    keepalive: int = KEEPALIVE


def parse_share(text: str, option: str) -> float:
    """'5%' or '0.05' -> 0.05. Raises: UsageError."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a share like 0.05 or 5%") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{option}: {text} is outside 0..1 (0%..100%)")
    return value


def parse_group_split(text: str) -> tuple[tuple[str, float], ...]:
    """'canary:5%,beta:20%' -> (('canary', 0.05), ('beta', 0.2)). Raises: UsageError."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        name, sep, share = part.partition(":")
        if not sep:
            raise UsageError(f"--group-split: {part!r} is not NAME:SHARE (e.g. canary:5%)")
        try:
            topics.check_name(name, "group")
        except ValueError as exc:
            raise UsageError(f"--group-split: {exc}") from None
        out.append((name, parse_share(share, "--group-split")))
    if sum(s for _, s in out) > 1.0 + 1e-9:
        raise UsageError(f"--group-split: the shares add up to more than 100% ({text})")
    if len({n for n, _ in out}) != len(out):
        raise UsageError(f"--group-split: a group is named twice ({text})")
    return tuple(out)


# --------------------------------------------------------------------------- the fleet plan


def device_id(cfg: SimConfig, index: int) -> str:
    return f"{cfg.id_prefix}-{index:05d}"


def _subset(cfg: SimConfig, name: str, share: float) -> frozenset[int]:
    """A reproducible random subset of round(share x N) device indexes (at least one if share > 0)."""
    if share <= 0:
        return frozenset()
    k = min(cfg.devices, max(1, round(share * cfg.devices)))
    return frozenset(random.Random(f"{cfg.seed}:{name}").sample(range(cfg.devices), k))


def group_of(cfg: SimConfig, index: int) -> str | None:
    """Groups take the first ids in order: canary:5% of 100 is sim-00000..sim-00004."""
    start = 0
    for name, share in cfg.groups:
        count = round(share * cfg.devices)
        if start <= index < start + count:
            return name
        start += count
    return None


@dataclass(frozen=True)
class Plan:
    """Each device's group, fault flags and clock skew, the same in every worker."""

    groups: tuple[str | None, ...]
    flags: tuple[int, ...]
    skews: tuple[int, ...]

    @classmethod
    def make(cls, cfg: SimConfig) -> Plan:
        f = cfg.faults
        groups = tuple(group_of(cfg, i) for i in range(cfg.devices))
        sets = {OFFLINE: _subset(cfg, "offline", f.offline),
                STUCK: _subset(cfg, "stuck-2000", f.stuck_2000),
                POWER_CUT: _subset(cfg, "power-cut", f.power_cut),
                HEALTH_FAIL: _subset(cfg, "health-fail", f.health_fail),
                DUPLICATE: _subset(cfg, "duplicate", f.duplicate),
                REORDER: _subset(cfg, "reorder", f.reorder)}
        flags = []
        for i in range(cfg.devices):
            bits = 0
            for flag, members in sets.items():
                if i in members:
                    bits |= flag
            if f.health_fail_group is not None and groups[i] == f.health_fail_group:
                bits |= HEALTH_FAIL
            flags.append(bits)
        rng = random.Random(f"{cfg.seed}:skew")
        skews = tuple(rng.randint(-f.clock_skew, f.clock_skew) if f.clock_skew else 0
                      for _ in range(cfg.devices))
        return cls(groups, tuple(flags), skews)


def flag_names(bits: int) -> tuple[str, ...]:
    return tuple(name for flag, name in FLAG_NAMES.items() if bits & flag)


# --------------------------------------------------------------------------- brokers


class BrokerHandle:
    """A broker the simulation uses; `controlled` ones can be restarted and are stopped at the end."""

    kind = "external"
    controlled = False

    def __init__(self, url: mqtturl.BrokerURL) -> None:
        self.url = url

    def describe(self) -> str:
        return f"broker {self.url}"

    def restart(self) -> None:
        raise UsageError(f"cannot restart {self.url}: the simulator did not start it; use "
                           f"--broker embedded or --broker mosquitto for --broker-restart-at")

    def stop(self) -> None:
        pass

    def peak_rss_kb(self) -> int | None:
        return None


class EmbeddedHandle(BrokerHandle):
    """trustfleet's embedded broker in a thread of this process. Restarts keep retained messages."""

    kind = "embedded"
    controlled = True

    def __init__(self, port: int = 0) -> None:
        from trustfleet_server.broker.embedded import EmbeddedBroker

        self.broker = EmbeddedBroker("127.0.0.1", port).start()
        super().__init__(mqtturl.BrokerURL("127.0.0.1", self.broker.port))

    def describe(self) -> str:
        return f"embedded broker on {self.url.host}:{self.url.port}"

    def restart(self) -> None:
        # The Broker object, with its retained store, outlives its listener:
        # a restart drops every connection and listens again on the same port.
        self.broker.stop()
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()


class MosquittoHandle(BrokerHandle):
    """A private Mosquitto (mqtt.mosquitto.PrivateMosquitto) on a free loopback port, stopped by its PID.

    Args:
        workdir: where mosquitto.conf, the log and the persistence file go
            (default: a temporary directory removed at stop()).
        persistence: keep retained messages across restart() (SIGTERM saves them).
    """

    kind = "mosquitto"
    controlled = True

    def __init__(self, workdir: Path | None = None, persistence: bool = True) -> None:
        try:
            self.mosquitto = PrivateMosquitto(workdir=workdir, persistence=persistence,
                                              extra=["max_keepalive 300"])
        except MosquittoNotInstalled as exc:
            raise UsageError(f"{exc}; use --broker embedded") from None
        self.conf, self.log, self.dir = self.mosquitto.conf, self.mosquitto.log, self.mosquitto.workdir
        self._peak_kb: int | None = None
        super().__init__(mqtturl.BrokerURL(self.mosquitto.host, self.mosquitto.port))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def describe(self) -> str:
        return f"private Mosquitto on {self.url.host}:{self.url.port} (config {self.conf})"

    def _start(self) -> None:
        try:
            self.mosquitto.start()
        except MosquittoError as exc:
            raise UsageError(str(exc)) from None

    def _note_peak(self) -> None:
        proc = self.mosquitto.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kb = int(line.split()[1])
                    self._peak_kb = max(self._peak_kb or 0, kb)

    def peak_rss_kb(self) -> int | None:
        self._note_peak()
        return self._peak_kb

    def restart(self) -> None:
        self._note_peak()
        self.mosquitto.stop()
        self._start()

    def stop(self) -> None:
        self._note_peak()
        self.mosquitto.close()


def open_broker(spec: str, workdir: Path | None = None) -> BrokerHandle:
    """'embedded', 'mosquitto', 'auto' (a private Mosquitto if installed, else embedded) or a URL.

    Raises: UsageError (bad URL, mosquitto missing or not starting).
    """
    if spec == "auto":
        spec = "mosquitto" if mosquitto_binary() else "embedded"
    if spec == "embedded":
        return EmbeddedHandle()
    if spec == "mosquitto":
        return MosquittoHandle(workdir)
    return BrokerHandle(mqtturl.parse(spec))


# --------------------------------------------------------------------------- one worker's devices


class _Doc:
    __slots__ = ("kind", "raw", "version")

    def __init__(self, kind: str, raw: bytes, version: int | None) -> None:
        self.kind, self.raw, self.version = kind, raw, version


def claimed_version(kind: str, raw: bytes) -> int | None:
    """The version (bundle) or time (timestamp) a document claims, unverified; None if unreadable."""
    try:
        value = cbor.decode(cose.parse(raw).unverified_payload)
        return int(value["version" if kind == "bundle" else "time"])
    except Exception:  # untrusted bytes: any failure just means "unknown"
        return None


class _Docs:
    """Documents a worker has seen, by digest: one shared copy of the bytes (MemStorage then
    holds the same object on every device) and the version they claim."""

    def __init__(self) -> None:
        self.by_digest: dict[bytes, _Doc] = {}

    def intern(self, kind: str, raw: bytes) -> _Doc:
        digest = hashlib.sha256(raw).digest()
        doc = self.by_digest.get(digest)
        if doc is None:
            if len(self.by_digest) >= MAX_DOCS:
                self.by_digest.pop(next(iter(self.by_digest)))
            doc = self.by_digest[digest] = _Doc(kind, raw, claimed_version(kind, raw))
        return doc

    def older(self, doc: _Doc) -> _Doc | None:
        """The newest document of the same kind claiming a lower version, if one was seen."""
        best = None
        if doc.version is None:
            return None
        for d in self.by_digest.values():
            if d.kind == doc.kind and d.version is not None and d.version < doc.version \
                    and (best is None or d.version > best.version):
                best = d
        return best


class _Clock:
    __slots__ = ("skew", "stuck_from")

    def __init__(self, skew: int, stuck_from: float | None) -> None:
        self.skew, self.stuck_from = skew, stuck_from

    def __call__(self) -> float:
        now = time.time()
        if self.stuck_from is not None:
            return STUCK_CLOCK + (now - self.stuck_from)
        return now + self.skew


class SimDevice:
    """One simulated device: core, session, connection and what happened to it."""

    __slots__ = ("index", "id", "group", "flags", "config", "clock", "storage", "device", "session",
                 "client", "online", "off", "reboot", "version", "commits", "cuts", "after_cut",
                 "task", "bricked")

    def __init__(self, index: int, ident: str, group: str | None, flags: int, config: core.Config,
                 clock: _Clock) -> None:
        self.index, self.id, self.group, self.flags = index, ident, group, flags
        self.config, self.clock = config, clock
        self.storage: MemStorage | None = None
        self.device: runner.Device | None = None
        self.session: Session | None = None
        self.client: AioClient | None = None
        self.online = False
        self.off = bool(flags & OFFLINE)
        self.reboot: MemStorage | None = None   # what survived a power cut, until the reboot
        self.version: int | None = None
        self.commits: dict[int, float] = {}     # version -> wall time of its commit
        self.cuts = 0
        self.after_cut: list[tuple[Any, Any]] = []  # (version before the cut, version after the reboot)
        self.task: asyncio.Task | None = None
        self.bricked: str | None = None

    def installed(self) -> int | None:
        b = self.device.active_bundle() if self.device is not None else None
        return b.version if b is not None else None

    def settled_for(self, version: int) -> bool:
        """Online and idle, and runs `version` (or newer) or has reverted it as bad."""
        if self.off or not self.online or self.reboot is not None or self.device is None:
            return False
        device = self.device
        if device.busy():
            return False
        b = device.active_bundle()
        if b is not None and b.version >= version:
            return True
        return version in device.bad_versions()


def factory_image(cfg: SimConfig) -> dict[str, bytes]:
    """The files every device leaves the factory with: root, and the initial bundle committed.

    Raises: BundleError when the root or the initial bundle does not verify.
    """
    storage = MemStorage()
    config = core.Config(fleet=cfg.fleet, device_id="factory")
    runner.initialise(storage, cfg.root_raw, config)
    if cfg.initial is not None:
        dev = runner.Device(storage, config, runner.no_endpoints, time.time)
        result = dev.offer("bundle", cfg.initial)
        if result.committed is None:
            raise UsageError(f"the initial bundle does not install: {result.reason()}")
    return dict(storage.files)


class Worker:
    """Devices [lo, hi) of the fleet on the running event loop."""

    def __init__(self, cfg: SimConfig, lo: int, hi: int) -> None:
        self.cfg = cfg
        self.plan = Plan.make(cfg)
        self.lo, self.hi = lo, hi
        self.rng = random.Random(f"{cfg.seed}:worker:{lo}")
        self.docs = _Docs()
        self.image = factory_image(cfg)
        self.initial_version = None
        if cfg.initial is not None:
            self.initial_version = claimed_version("bundle", cfg.initial)
            self.docs.intern("bundle", cfg.initial)
        self.hint = cfg.until_version or (self.initial_version or 0) + 1
        self.chain = list(cfg.chain) if cfg.chain else list(chain_ders(sample_file(SAMPLE_CHAIN)))
        self.devices: list[SimDevice] = []
        self.first_seen: dict[int, float] = {}
        self.t0: float | None = None
        self.counters: Counter = Counter()
        self.last_error: str | None = None
        self.stopping = False
        self._stop_event: asyncio.Event | None = None
        self._t0_event: asyncio.Event | None = None
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self._ticker: asyncio.Task | None = None
        self._started = time.time()

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Build every device (boots verify the factory image) and start connecting them."""
        self._stop_event = asyncio.Event()
        self._t0_event = asyncio.Event()
        self._sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        firmware = int(time.time()) - FIRMWARE_AGE
        for i in range(self.lo, self.hi):
            flags = self.plan.flags[i]
            ident = device_id(self.cfg, i)
            config = core.Config(fleet=self.cfg.fleet, device_id=ident, firmware_time=firmware)
            clock = _Clock(self.plan.skews[i], self._started if flags & STUCK else None)
            d = SimDevice(i, ident, self.plan.groups[i], flags, config, clock)
            self._boot(d, MemStorage(self.image))
            self.devices.append(d)
            if len(self.devices) % 500 == 0:
                await asyncio.sleep(0)  # let earlier devices connect meanwhile
            d.task = asyncio.get_running_loop().create_task(self._life(d))
        self._ticker = asyncio.get_running_loop().create_task(self._tick_all())

    def _boot(self, d: SimDevice, storage: MemStorage) -> None:
        d.storage = storage
        d.device = runner.Device(storage, d.config, functools.partial(self._health, d), d.clock)
        d.session = Session(d.device, self.cfg.fleet, d.id, d.group)
        d.version = d.installed()

    async def stop(self, clear: bool = False) -> dict:
        """Disconnect every device (clearing its retained status when `clear`).

        Returns final() as it was when asked to stop (who was online then).
        """
        result = self.final()
        self.stopping = True
        self._stop_event.set()
        self._t0_event.set()
        if self._ticker is not None:
            self._ticker.cancel()
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def bye(d: SimDevice) -> None:
            c = d.client
            if c is None or c.closed:
                return
            async with sem:
                with contextlib.suppress(ClientError, OSError):
                    if clear:
                        await c.publish(topics.status(self.cfg.fleet, d.id), b"", True, 1)
                    await c.disconnect()

        await asyncio.gather(*(bye(d) for d in self.devices))
        tasks = [d.task for d in self.devices if d.task is not None and not d.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for d in self.devices:
            if d.client is not None and not d.client.closed:
                d.client.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        result["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return result

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    async def _life(self, d: SimDevice) -> None:
        """Power on (late, for the offline subset), connect, stay connected, reconnect, reboot."""
        if d.off:
            await self._t0_event.wait()
            if self.stopping:
                return
            await self._sleep(max(0.0, self.t0 + self.cfg.faults.offline_for - time.time()))
            d.off = False
        failures = 0
        delay = 0.0
        while not self.stopping:
            if d.reboot is not None:
                await self._sleep(self.rng.uniform(*REBOOT_DELAY))
                if self.stopping:
                    return
                self._reboot(d)
                if d.bricked:
                    return
            if delay:
                await self._sleep(delay)
                if self.stopping:
                    return
            client = self._client(d)
            d.client = client
            try:
                async with self._sem:
                    if self.stopping:
                        return
                    await client.connect()
                    codes = await client.subscribe([(t, 1) for t in d.session.subscriptions()])
                if any(c not in (0, 1) for c in codes):
                    raise ClientError(f"subscriptions refused: {codes}")
            except (ClientError, OSError) as exc:
                client.abort()
                self.counters["connect_failures"] += 1
                self.last_error = str(exc)
                failures += 1
                step = min(MAX_BACKOFF, 0.2 * 2 ** min(failures, 4))
                delay = step / 2 + self.rng.random() * step / 2
                continue
            failures = 0
            d.online = True
            self.counters["connects"] += 1
            self._send(d, client, d.session.connected())
            await client.wait_closed()
            d.online = False
            delay = 0.0 if d.reboot is not None else self.rng.uniform(0.1, 0.5)

    def _client(self, d: SimDevice) -> AioClient:
        u = self.cfg.broker
        client: AioClient | None = None

        def on_message(topic: str, payload: bytes, retain: bool) -> None:
            self._on_message(d, client, topic, payload)

        ssl = True if u.tls else None
        client = AioClient(f"tf-{self.cfg.fleet}-{d.id}", u.host, u.port, username=u.username,
                           password=u.password, keepalive=self.cfg.keepalive, will=d.session.will(),
                           ssl=ssl, on_message=on_message)
        return client

    # -- messages ---------------------------------------------------------------------

    def _on_message(self, d: SimDevice, client: AioClient, topic: str, payload: bytes) -> None:
        if client is not d.client or d.reboot is not None or d.session is None:
            return
        kind, _ = topics.classify(self.cfg.fleet, topic)
        doc = None
        if kind in ("bundle", "timestamp") and payload:
            doc = self.docs.intern(kind, payload)
            payload = doc.raw
            if kind == "bundle" and doc.version is not None:
                self._seen(doc.version)
        if doc is not None and d.flags & REORDER:
            older = self.docs.older(doc)
            if older is not None:
                self.counters["reordered"] += 1
                self._feed(d, kind, topic, older.raw)
                asyncio.get_running_loop().call_later(
                    self.rng.uniform(*REDELIVER_DELAY), self._feed_later, d, client, kind, topic,
                    (payload, older.raw))
                return
        self._feed(d, kind, topic, payload)
        if d.flags & DUPLICATE and payload:
            self.counters["duplicated"] += 2
            self._feed(d, kind, topic, payload)
            asyncio.get_running_loop().call_later(
                self.rng.uniform(*REDELIVER_DELAY), self._feed_later, d, client, kind, topic, (payload,))

    def _feed_later(self, d: SimDevice, client: AioClient, kind: str, topic: str,
                    payloads: tuple[bytes, ...]) -> None:
        for payload in payloads:
            if client is not d.client or d.reboot is not None or client.closed:
                return
            self._feed(d, kind, topic, payload)

    def _feed(self, d: SimDevice, kind: str | None, topic: str, payload: bytes) -> None:
        storage = d.storage
        arm = (d.flags & POWER_CUT and not d.cuts and kind == "bundle" and payload
               and not d.device.busy())
        if arm:
            storage.cut_after = storage.ops + self.rng.randrange(INSTALL_OPS)
        try:
            out = d.session.on_message(topic, payload)
        except PowerCut:
            self._power_cut(d)
            return
        finally:
            storage.cut_after = None
        self._note(d)
        self._send(d, d.client, out)

    def _note(self, d: SimDevice) -> None:
        v = d.installed()
        if v != d.version:
            d.version = v
            if v is not None:
                d.commits.setdefault(v, time.time())

    def _seen(self, version: int) -> None:
        now = time.time()
        self.first_seen.setdefault(version, now)
        if self.t0 is None and version >= self.hint:
            self.t0 = now
            self._t0_event.set()

    def _send(self, d: SimDevice, client: AioClient | None, messages: list) -> None:
        if not messages or client is None or client.closed:
            return
        task = asyncio.get_running_loop().create_task(self._publish(client, messages))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _publish(client: AioClient, messages: list) -> None:
        for topic, payload, retain, qos in messages:
            try:
                await client.publish(topic, payload, retain, qos)
            except ClientError:
                return  # the status goes out again after the reconnect (Session.connected)

    async def _tick_all(self) -> None:
        while not self.stopping:
            await self._sleep(TICK_EVERY)
            for d in self.devices:
                if d.online and d.reboot is None and d.client is not None:
                    self._send(d, d.client, d.session.tick())

    # -- faults -----------------------------------------------------------------------

    def _power_cut(self, d: SimDevice) -> None:
        """The power failed mid-install: keep what flash holds, drop the connection (the will goes out)."""
        d.cuts += 1
        self.counters["power_cuts"] += 1
        d.after_cut.append((d.version, None))
        d.reboot = d.storage.reboot()
        client = d.client
        if client is not None:
            client.abort()

    def _reboot(self, d: SimDevice) -> None:
        storage, d.reboot = d.reboot, None
        try:
            self._boot(d, storage)
        except Exception as exc:  # a device that cannot boot is the finding, not a crash of the run
            d.bricked = f"{type(exc).__name__}: {exc}"
            self.counters["bricked"] += 1
            return
        before, _ = d.after_cut[-1]
        d.after_cut[-1] = (before, d.version)

    def _health(self, d: SimDevice, bundle: Bundle, trusted_time: int) -> tuple[bool, str]:
        """The trial store judges the endpoint's chain at the device's trusted time."""
        host = self.cfg.endpoint
        if d.flags & HEALTH_FAIL:
            return False, f"TLS to {host}:443 failed (simulated: health-fail subset)"
        decision = trust.TrustStore(bundle).evaluate(host, self.chain, trusted_time)
        if decision.accepted():
            return True, f"{host}: {decision.result}"
        return False, f"TLS to {host}:443 refused: {decision.reason}"

    # -- figures ----------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Counts for the progress line and the end condition (cheap: no status() calls)."""
        versions: Counter = Counter()
        states: Counter = Counter()
        verified: set[int] = set()
        online = off = 0
        for d in self.devices:
            online += d.online
            off += bool(d.off or d.reboot is not None)
            versions[d.version] += 1
            if d.device is None:
                continue
            device = d.device
            if d.reboot is not None:
                states["rebooting"] += 1
            else:
                states["trial" if device.busy() else
                       ("no-store" if device.active_bundle() is None else "ok")] += 1
            verified.update(d.commits)
            verified.update(device.bad_versions())
        candidates = set(verified)
        if self.cfg.until_version is not None:
            candidates.add(self.cfg.until_version)
        settled = {v: sum(1 for d in self.devices if d.settled_for(v)) for v in candidates}
        commits: dict[int, list] = {}
        for d in self.devices:
            for v, t in d.commits.items():
                c = commits.setdefault(v, [0, t, t])
                c[0] += 1
                c[1] = min(c[1], t)
                c[2] = max(c[2], t)
        return {"devices": len(self.devices), "online": online, "off": off,
                "versions": dict(versions), "states": dict(states), "verified": sorted(verified),
                "settled": settled, "commits": commits, "first_seen": dict(self.first_seen),
                "t0": self.t0, "counters": dict(self.counters), "last_error": self.last_error}

    def final(self) -> dict:
        rows = []
        for d in self.devices:
            if d.device is None:
                state, bad = "bricked", []
            else:
                state = d.device.status()["state"]
                bad = d.device.bad_versions()
            rows.append((d.id, d.group, d.flags, d.online, state, d.installed() if d.device else None,
                         bad, dict(d.commits), d.cuts, list(d.after_cut), d.bricked))
        return {"rows": rows, "snapshot": self.snapshot(),
                "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# --------------------------------------------------------------------------- worker processes


def _worker_main(cfg: SimConfig, lo: int, hi: int, conn: Any) -> None:
    """Entry point of a worker process: serve snapshot requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    asyncio.run(_serve(cfg, lo, hi, conn))


async def _serve(cfg: SimConfig, lo: int, hi: int, conn: Any) -> None:
    worker = Worker(cfg, lo, hi)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            inbox.put_nowait(("stop", False))
            loop.remove_reader(conn.fileno())

    loop.add_reader(conn.fileno(), readable)
    try:
        await worker.start()
        conn.send(("started", None))
        while True:
            cmd, arg = await inbox.get()
            if cmd == "snapshot":
                conn.send(("snapshot", worker.snapshot()))
            elif cmd == "stop":
                final = await worker.stop(clear=bool(arg))
                with contextlib.suppress(OSError):
                    conn.send(("final", final))
                return
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())


class _LocalLink:
    """A worker in the coordinator's own event loop (processes=1)."""

    def __init__(self, cfg: SimConfig, lo: int, hi: int) -> None:
        self.worker = Worker(cfg, lo, hi)

    async def start(self) -> None:
        await self.worker.start()

    async def snapshot(self) -> dict:
        return self.worker.snapshot()

    async def stop(self, clear: bool) -> dict:
        return await self.worker.stop(clear)

    def kill(self) -> None:
        pass


class _ProcessLink:
    """A worker process, spoken to over a pipe (one request, one answer)."""

    TIMEOUT = 60.0

    def __init__(self, cfg: SimConfig, lo: int, hi: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(cfg, lo, hi, child), daemon=True,
                                name=f"trustfleet-simulate-{lo}-{hi}")
        self._child = child
        self.lo, self.hi = lo, hi

    async def _recv(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self.conn.poll():
                try:
                    return self.conn.recv()
                except EOFError:
                    break
            if not self.proc.is_alive():
                break
            if time.monotonic() > deadline:
                raise UsageError(f"worker for devices {self.lo}..{self.hi - 1} did not answer "
                                   f"within {timeout:.0f} s")
            await asyncio.sleep(0.01)
        raise UsageError(f"worker for devices {self.lo}..{self.hi - 1} exited "
                           f"(code {self.proc.exitcode})")

    async def start(self) -> None:
        self.proc.start()
        self._child.close()
        kind, _ = await self._recv(self.TIMEOUT)
        if kind != "started":
            raise UsageError(f"worker {self.lo}..{self.hi - 1}: unexpected {kind!r}")

    async def snapshot(self) -> dict:
        self.conn.send(("snapshot", None))
        kind, value = await self._recv(self.TIMEOUT)
        return value

    async def stop(self, clear: bool) -> dict:
        try:
            self.conn.send(("stop", clear))
            kind, value = await self._recv(self.TIMEOUT)
        finally:
            self.proc.join(10)
            self.kill()
        return value

    def kill(self) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()


# --------------------------------------------------------------------------- the coordinator


@dataclass
class Progress:
    """The fleet, added up over workers, at one moment."""

    devices: int
    online: int
    off: int
    versions: Counter
    states: Counter
    verified: list[int]
    settled: dict[int, int]
    commits: dict[int, list]
    first_seen: dict[int, float]
    t0: float | None
    counters: Counter
    elapsed: float = 0.0
    last_error: str | None = None

    @classmethod
    def add(cls, snaps: list[dict], elapsed: float = 0.0) -> Progress:
        versions: Counter = Counter()
        states: Counter = Counter()
        counters: Counter = Counter()
        settled: Counter = Counter()
        verified: set[int] = set()
        commits: dict[int, list] = {}
        first: dict[int, float] = {}
        t0s = []
        for s in snaps:
            versions.update(s["versions"])
            states.update(s["states"])
            counters.update(s["counters"])
            settled.update(s["settled"])
            verified.update(s["verified"])
            for v, (n, lo, hi) in s["commits"].items():
                c = commits.setdefault(v, [0, lo, hi])
                c[0] += n
                c[1], c[2] = min(c[1], lo), max(c[2], hi)
            for v, t in s["first_seen"].items():
                first[v] = min(first.get(v, t), t)
            if s["t0"] is not None:
                t0s.append(s["t0"])
        return cls(sum(s["devices"] for s in snaps), sum(s["online"] for s in snaps),
                   sum(s["off"] for s in snaps), versions, states, sorted(verified), dict(settled),
                   commits, first, min(t0s) if t0s else None, counters, elapsed,
                   next((s["last_error"] for s in snaps if s.get("last_error")), None))

    def target(self, until: int | None) -> int | None:
        if until is not None:
            return until
        return max(self.verified) if self.verified else None

    def line(self, until: int | None) -> str:
        target = self.target(until)
        parts = [f"[{self.elapsed:6.1f}s]", f"online {self.online}/{self.devices}"]
        if target is not None:
            runs = sum(n for v, n in self.versions.items() if v is not None and v >= target)
            parts.append(f"v{target}: {runs} run it, {self.settled.get(target, 0)} settled")
        for state in ("trial", "rebooting"):
            if self.states.get(state):
                parts.append(f"{self.states[state]} {'on trial' if state == 'trial' else state}")
        if self.off:
            parts.append(f"{self.off} powered off")
        for key in ("power_cuts", "reordered", "duplicated"):
            if self.counters.get(key):
                parts.append(f"{key.replace('_', ' ')} {self.counters[key]}")
        return "  ".join(parts)


@dataclass
class DeviceResult:
    id: str
    group: str | None
    faults: tuple[str, ...]
    online: bool
    state: str
    version: int | None
    bad: list[int]
    commits: dict[int, float]
    cuts: int
    after_cut: list[tuple[Any, Any]]
    bricked: str | None


@dataclass
class Report:
    """What a simulation found. `to_json()` is what `simulate --json` prints."""

    devices: list[DeviceResult]
    target: int | None
    converged: bool
    convergence_s: float | None
    from_publish_s: float | None
    committed: int
    online: int
    states: dict[str, int]
    versions: dict[str, int]
    faults: dict[str, Any]
    elapsed_s: float
    peak_rss_kb: dict[str, Any]
    broker: str
    processes: int
    t0: float | None = None
    last_commit: float | None = None
    reverted: list[dict] = field(default_factory=list)

    def by_fault(self, name: str) -> list[DeviceResult]:
        return [d for d in self.devices if name in d.faults]

    def to_json(self) -> dict:
        return {"devices": len(self.devices), "processes": self.processes, "broker": self.broker,
                "target_version": self.target, "converged": self.converged,
                "convergence_s": _round(self.convergence_s), "from_publish_s": _round(self.from_publish_s),
                "committed": self.committed, "online": self.online, "states": self.states,
                "versions": self.versions, "faults": self.faults, "reverted": self.reverted[:50],
                "elapsed_s": _round(self.elapsed_s), "peak_rss_kb": self.peak_rss_kb}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class Simulation:
    """Run the fleet: start workers, publish, watch, apply the broker restart, stop, report.

    Args:
        cfg: the simulation.
        broker: the broker handle (its url must be cfg.broker); only used to restart it.
        processes: worker processes; 1 runs the devices in this event loop.
    """

    def __init__(self, cfg: SimConfig, broker: BrokerHandle | None = None, processes: int = 1) -> None:
        if cfg.devices < 1:
            raise UsageError("--devices must be at least 1")
        processes = max(1, min(processes, cfg.devices))
        if cfg.faults.broker_restart_at is not None and (broker is None or not broker.controlled):
            raise UsageError("--broker-restart-at needs a broker the simulator controls "
                               "(--broker embedded or --broker mosquitto), not an external URL")
        self.cfg, self.broker, self.processes = cfg, broker, processes
        size = -(-cfg.devices // processes)
        spans = [(lo, min(cfg.devices, lo + size)) for lo in range(0, cfg.devices, size)]
        link = _LocalLink if processes == 1 else _ProcessLink
        self.links = [link(cfg, lo, hi) for lo, hi in spans]
        self.started_at = time.time()
        self.published_at: float | None = None
        self.restarts = 0
        self.restart_done = cfg.faults.broker_restart_at is None
        self._stopped: Report | None = None

    async def start(self) -> None:
        """Start the workers (spawned processes boot in parallel). Raises: UsageError."""
        self.started_at = time.time()
        try:
            await asyncio.gather(*(link.start() for link in self.links))
        except BaseException:
            for link in self.links:
                link.kill()
            raise

    async def progress(self) -> Progress:
        snaps = await asyncio.gather(*(link.snapshot() for link in self.links))
        return Progress.add(list(snaps), time.time() - self.started_at)

    async def wait_connected(self, timeout: float,
                             on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Until every powered-on device is connected. Raises: UsageError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            p = await self.progress()
            if on_progress is not None:
                on_progress(p)
            if p.online >= p.devices - p.off:
                return p
            if time.monotonic() > deadline:
                why = f" (last error: {p.last_error})" if p.last_error else ""
                raise UsageError(f"only {p.online} of {p.devices - p.off} devices connected to "
                                   f"{self.cfg.broker} within {timeout:.0f} s{why}")
            await asyncio.sleep(0.05)

    async def publish(self, topic: str, raw: bytes) -> None:
        """Publish a document retained at QoS 1 (as `trustfleet publish` does). Raises: UsageError."""
        u = self.cfg.broker
        client = AioClient(f"tf-simulate-{os.getpid()}-{random.getrandbits(32):08x}", u.host, u.port,
                           username=u.username, password=u.password, ssl=True if u.tls else None)
        try:
            await client.connect()
            self.published_at = time.time()
            await client.publish(topic, raw, True, 1)
            await client.disconnect()
        except ClientError as exc:
            client.abort()
            raise UsageError(f"cannot publish to {u}: {exc}") from None

    async def step_faults(self, p: Progress) -> None:
        """Restart the broker once t0 + broker_restart_at has come."""
        at = self.cfg.faults.broker_restart_at
        if self.restart_done or p.t0 is None or time.time() < p.t0 + at:
            return
        await asyncio.get_running_loop().run_in_executor(None, self.broker.restart)
        self.restarts += 1
        self.restart_done = True

    def done(self, p: Progress) -> bool:
        target = p.target(self.cfg.until_version)
        return (target is not None and self.restart_done
                and p.settled.get(target, 0) >= p.devices)

    async def run(self, timeout: float, publish: tuple[str, bytes] | None = None,
                  on_progress: Callable[[Progress], None] | None = None, clear: bool = False,
                  keep_running: bool = False) -> Report:
        """start, wait for connections, publish, poll until converged or `timeout`, stop.

        `clear`: the devices empty their retained status topics on the way out.
        `keep_running`: do not stop at convergence, only at `timeout` (next to a
        `serve` that runs several rollouts); converged then says how it ended.

        Returns: the Report (converged False on timeout). Raises: UsageError.
        """
        deadline = time.monotonic() + timeout
        try:
            await self.start()
            await self.wait_connected(max(1.0, deadline - time.monotonic()), on_progress)
            if publish is not None:
                await self.publish(*publish)
            converged = False
            while True:
                p = await self.progress()
                await self.step_faults(p)
                if on_progress is not None:
                    on_progress(p)
                converged = self.done(p)
                if converged and not keep_running:
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        except BaseException:
            await self._abandon()
            raise
        report = await self.stop(clear)
        report.converged = converged
        return report

    async def _abandon(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.stop(), 30)
        for link in self.links:
            link.kill()

    async def stop(self, clear: bool = False) -> Report:
        """Disconnect every device and collect the results (idempotent)."""
        if self._stopped is not None:
            return self._stopped
        finals = await asyncio.gather(*(link.stop(clear) for link in self.links))
        self._stopped = self._report(list(finals))
        return self._stopped

    def _report(self, finals: list[dict]) -> Report:
        p = Progress.add([f["snapshot"] for f in finals], time.time() - self.started_at)
        target = p.target(self.cfg.until_version)
        rows = [DeviceResult(r[0], r[1], flag_names(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])
                for f in finals for r in f["rows"]]
        states: Counter = Counter()
        reverted = []
        for d in rows:
            if not d.online:
                state = "offline" if d.state != "bricked" else "bricked"
            elif target is not None and target in d.bad and (d.version or 0) < target:
                state = "reverted"
                reverted.append({"device": d.id, "group": d.group, "version": d.version})
            else:
                state = d.state
            states[state] += 1
        versions = Counter("none" if d.version is None else f"v{d.version}" for d in rows)
        commits = p.commits.get(target) if target is not None else None
        first = p.first_seen.get(target) if target is not None else None
        last = commits[2] if commits else None
        convergence = (last - first) if (last is not None and first is not None) else None
        from_publish = (last - self.published_at) if (last is not None and self.published_at) else None
        committed = sum(1 for d in rows if target is not None and (d.version or 0) >= target)
        rss = {"coordinator": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        if self.processes > 1:
            rss["workers"] = [f["peak_rss_kb"] for f in finals]
        rss["total"] = rss["coordinator"] + sum(rss.get("workers", []))
        broker_kb = self.broker.peak_rss_kb() if self.broker is not None else None
        if broker_kb:
            rss["broker"] = broker_kb
        return Report(rows, target, False, convergence, from_publish, committed,
                      sum(1 for d in rows if d.online), dict(states), dict(versions),
                      self._faults(rows, p), p.elapsed, rss,
                      self.broker.describe() if self.broker else str(self.cfg.broker),
                      self.processes, first, last, reverted)

    def _faults(self, rows: list[DeviceResult], p: Progress) -> dict:
        f = self.cfg.faults
        out: dict[str, Any] = {}

        def count(name: str) -> int:
            return sum(1 for d in rows if name in d.faults)

        if f.offline:
            out["offline"] = {"devices": count("offline"), "for_s": f.offline_for}
        if f.clock_skew:
            out["clock_skew"] = {"devices": len(rows), "max_s": f.clock_skew}
        if f.stuck_2000:
            out["stuck_2000"] = {"devices": count("stuck-2000")}
        if f.power_cut:
            after = Counter()
            for d in rows:
                for before, now in d.after_cut:
                    after["none" if now is None else ("new" if before is None or now > before
                                                      else "old")] += 1
            out["power_cut"] = {"devices": count("power-cut"), "cuts": p.counters.get("power_cuts", 0),
                                "store_after_reboot": dict(after),
                                "bricked": p.counters.get("bricked", 0)}
        if f.health_fail or f.health_fail_group:
            out["health_fail"] = {"devices": count("health-fail"), "group": f.health_fail_group}
        if f.duplicate:
            out["duplicate"] = {"devices": count("duplicate"),
                                "redelivered": p.counters.get("duplicated", 0)}
        if f.reorder:
            out["reorder"] = {"devices": count("reorder"),
                              "older_first": p.counters.get("reordered", 0)}
        if f.broker_restart_at is not None:
            out["broker_restart"] = {"at_s": f.broker_restart_at, "restarts": self.restarts}
        if p.counters.get("connect_failures"):
            out["connect_failures"] = p.counters["connect_failures"]
        return out


# --------------------------------------------------------------------------- output


def render(report: Report) -> list[str]:
    """The report as text lines (what `simulate` prints without --json)."""
    n = len(report.devices)
    lines = [f"{n} devices on {report.broker}, {report.processes} process(es), "
             f"{report.elapsed_s:.1f} s"]
    if report.target is None:
        lines.append("no bundle reached the devices: nothing to converge on")
    else:
        head = "converged" if report.converged else "NOT converged (timeout)"
        conv = f" in {report.convergence_s:.2f} s" if report.convergence_s is not None else ""
        pub = f" ({report.from_publish_s:.2f} s from the publish)" if report.from_publish_s is not None else ""
        lines.append(f"{head}: {report.committed}/{n} devices run v{report.target}{conv}{pub}; "
                     f"{report.online} online at the end")
    lines.append("states:   " + ", ".join(f"{k} {v}" for k, v in sorted(report.states.items())))
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(report.versions.items())))
    for name, value in report.faults.items():
        text = (", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
                if isinstance(value, dict) else str(value))
        lines.append(f"fault {name}: {text}")
    for r in report.reverted[:10]:
        lines.append(f"  reverted: {r['device']} ({r['group'] or 'no group'}) stays on v{r['version']}")
    if len(report.reverted) > 10:
        lines.append(f"  ... and {len(report.reverted) - 10} more reverted")
    rss = report.peak_rss_kb
    mem = f"peak RSS {rss['total'] / 1024:.0f} MB (coordinator {rss['coordinator'] / 1024:.0f} MB"
    if "workers" in rss:
        mem += ", workers " + " + ".join(f"{w / 1024:.0f}" for w in rss["workers"])
    mem += ")"
    if "broker" in rss:
        mem += f"; broker {rss['broker'] / 1024:.0f} MB"
    lines.append(mem)
    return lines


def default_processes(devices: int) -> int:
    return 1 if devices <= MANY_DEVICES else max(1, os.cpu_count() or 1)


class BackgroundSimulation:
    """A Simulation on an event loop in its own thread, for synchronous callers (demo, benchmarks).

        with BackgroundSimulation(cfg) as sim:
            sim.start(); ...; sim.progress(); report = sim.stop()
    """

    def __init__(self, cfg: SimConfig, broker: BrokerHandle | None = None, processes: int = 1) -> None:
        self.sim = Simulation(cfg, broker, processes)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="trustfleet-simulate",
                                       daemon=True)
        self.report: Report | None = None

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, connect_timeout: float = 60.0) -> Progress:
        """Start the devices and wait until they are connected. Raises: UsageError."""
        self.thread.start()
        self._call(self.sim.start(), connect_timeout + 60)
        return self._call(self.sim.wait_connected(connect_timeout), connect_timeout + 5)

    def progress(self) -> Progress:
        return self._call(self.sim.progress(), 60)

    def publish(self, topic: str, raw: bytes) -> None:
        self._call(self.sim.publish(topic, raw), 30)

    def stop(self, clear: bool = False) -> Report:
        """Disconnect every device, stop the loop and join its thread (idempotent)."""
        if self.report is None and self.thread.is_alive():
            try:
                self.report = self._call(self.sim.stop(clear), 90)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
                for link in self.sim.links:
                    link.kill()
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()
        return self.report

    def __enter__(self) -> BackgroundSimulation:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def progress_printer(until: int | None, stream: Any = None, every: float = 1.0) -> Callable[[Progress], None]:
    """A progress callback: a line redrawn in place on a terminal, else one line every `every` s."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = [0.0, ""]

    def show(p: Progress) -> None:
        text = p.line(until)
        now = time.monotonic()
        if tty:
            stream.write("\r\x1b[2K" + text)
            stream.flush()
        elif now - last[0] >= every and text != last[1]:
            stream.write(text + "\n")
            stream.flush()
            last[0], last[1] = now, text

    def end() -> None:
        if tty:
            stream.write("\n")
            stream.flush()

    show.end = end  # type: ignore[attr-defined]
    return show
