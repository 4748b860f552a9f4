"""One worker's devices: real device agents over MemStorage, one MQTT connection each, on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import resource
import time
from collections import Counter
from typing import Any

from trustfleet_device import agent as core
from trustfleet_device import cbor, cose, topics, trust
from trustfleet_device.documents import Bundle
from trustfleet_device.session import Session
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage, PowerCut
from trustfleet_server.broker.aioclient import AioClient, ClientError
from trustfleet_server.errors import UsageError
from trustfleet_server.sim.config import (
    DUPLICATE,
    FORGE,
    HEALTH_FAIL,
    OFFLINE,
    POWER_CUT,
    REORDER,
    SAMPLE_CHAIN,
    STUCK,
    Plan,
    SimConfig,
    chain_ders,
    device_id,
    sample_file,
)
from trustfleet_server.sim.shared import HealthChecks, SharedChecks

STUCK_CLOCK = 946_684_800          # 2000-01-01T00:00:00Z: what a board without RTC battery reads
FIRMWARE_AGE = 30 * 86_400         # simulated firmware was built a month ago
INSTALL_OPS = 6                    # storage operations of one install (write slot, switch, commit)
CONNECT_CONCURRENCY = 200          # connects in flight per worker
TICK_EVERY = 15.0                  # session.tick() for every device
MAX_BACKOFF = 2.0
REBOOT_DELAY = (0.1, 0.4)
REDELIVER_DELAY = (0.05, 0.4)
MAX_DOCS = 64                      # documents a worker remembers for re-delivery
HEALTH_TIMEOUT = 5.0               # a live health check's TCP and TLS handshake (health_address)


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
                 "task", "bricked", "connected_at", "worker")

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
        self.connected_at = 0.0                 # wall time of the current connection's CONNACK
        self.worker: Worker | None = None

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        """A message on the current connection (the device is its client's on_message: only
        the current client is open, and a closed one delivers nothing more)."""
        self.worker._on_message(self, self.client, topic, payload)

    def closed(self) -> None:
        """The current connection ended (its client's on_close)."""
        self.worker._closed(self)

    def installed(self) -> int | None:
        b = self.device.active_bundle() if self.device is not None else None
        return b.version if b is not None else None


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


MAX_EVENTS = 8                     # refusals and reverts each device remembers (the newest)


def _run_noting(self: runner.Device, actions: list) -> runner.Result:
    """runner.Device.run that also keeps the newest refusals and reverts in `self.events`:
    ("refused", kind, reason) and ("reverted", version, detail)."""
    result = runner.Device.run(self, actions)
    if not (result.refused or result.reports):   # most runs: nothing to note, nothing built
        return result
    noted = [("refused", kind, reason) for kind, reason in result.refused]
    noted += [("reverted", r.get("version"), r.get("detail", "")) for r in result.reports
              if r.get("event") == "reverted"]
    if noted:
        events = getattr(self, "events", None) or []
        self.events = (events + noted)[-MAX_EVENTS:]
    return result


def device_class(checks: SharedChecks) -> type:
    """runner.Device whose agent checks documents through `checks` (Agent.policy) and that
    remembers its newest refusals and reverts (`events`)."""
    agent = type("SimAgent", (core.Agent,), {"policy": checks})
    return type("SimRunnerDevice", (runner.Device,), {"agent_class": agent, "events": None,
                                                       "run": _run_noting})


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
        self.checks = SharedChecks()
        self.health = HealthChecks(cfg.endpoint, self.chain)
        self.device_class = device_class(self.checks)
        self.devices: list[SimDevice] = []
        self.first_seen: dict[int, float] = {}
        self.t0: float | None = None
        self.counters: Counter = Counter()
        self.last_error: str | None = None
        self.refusal: str | None = None   # the first health check the trial store itself refused
        self.stopping = False
        self._stop_event: asyncio.Event | None = None
        self._t0_event: asyncio.Event | None = None
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self._ticker: asyncio.Task | None = None
        self._starter: asyncio.Task | None = None
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
            d.worker = self
            self._boot(d, MemStorage(self.image))
            self.devices.append(d)
            if len(self.devices) % 500 == 0:
                await asyncio.sleep(0)  # let the loop breathe
        loop = asyncio.get_running_loop()
        for d in self.devices:
            if d.off:   # waits for t0, powered off
                d.task = loop.create_task(self._life(d))
        self._starter = loop.create_task(self._start_all([d for d in self.devices if not d.off]))
        self._ticker = loop.create_task(self._tick_all())

    async def _start_all(self, devices: list[SimDevice]) -> None:
        """Start each powered-on device's first connect, at most CONNECT_CONCURRENCY at a time
        (a _life task ends once connected): the tasks, their frames and futures of devices
        still waiting for their turn are never all alive at once."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        loop = asyncio.get_running_loop()
        for d in devices:
            await gate.acquire()
            if self.stopping:
                return
            d.task = loop.create_task(self._life(d))
            d.task.add_done_callback(lambda _task: gate.release())

    def _boot(self, d: SimDevice, storage: MemStorage) -> None:
        d.storage = storage
        d.device = self.device_class(storage, d.config, functools.partial(self._health, d), d.clock)
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
        for task in (self._ticker, self._starter):
            if task is not None:
                task.cancel()

        async def bye(d: SimDevice) -> None:
            c = d.client
            if c is None or c.closed:
                return
            with contextlib.suppress(ClientError, OSError):
                if clear:
                    await c.publish(topics.status(self.cfg.fleet, d.id), b"", True, 1)
                await c.disconnect()

        # In batches: a coroutine and a task per device, all at once, would set the peak memory.
        for at in range(0, len(self.devices), CONNECT_CONCURRENCY):
            await asyncio.gather(*(bye(d) for d in self.devices[at:at + CONNECT_CONCURRENCY]))
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

    async def _life(self, d: SimDevice, delay: float = 0.0) -> None:
        """Power on (late, for the offline subset), reboot, connect (with backoff). Ends once
        connected: the end of the connection starts the next one (_closed), so a connected
        device holds no task."""
        if d.off:
            await self._t0_event.wait()
            if self.stopping:
                return
            await self._sleep(max(0.0, self.t0 + self.cfg.faults.offline_for - time.time()))
            d.off = False
        failures = 0
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
                    codes = await client.connect(subscribe=[(t, 1) for t in d.session.subscriptions()])
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
            d.online = True
            d.connected_at = time.time()
            self.counters["connects"] += 1
            self._send(d, client, d.session.connected())
            if not client.closed:
                client.on_close = d.closed
                d.task = None   # done: nothing to wait for at stop
                return
            # Already cut (a loss or a power cut on a message that came with the SUBACK, or
            # on the status): round again.
            d.online = False
            delay = 0.0 if d.reboot is not None else self.rng.uniform(0.1, 0.5)

    def _closed(self, d: SimDevice) -> None:
        """A device's connection ended (whoever ended it): reconnect, after a reboot if due."""
        d.online = False
        if self.stopping:
            return
        delay = 0.0 if d.reboot is not None else self.rng.uniform(0.1, 0.5)
        d.task = asyncio.get_running_loop().create_task(self._life(d, delay))

    def _client(self, d: SimDevice) -> AioClient:
        u = self.cfg.broker
        ssl = True if u.tls else None
        return AioClient(f"tf-{self.cfg.fleet}-{d.id}", u.host, u.port, username=u.username,
                         password=u.password, keepalive=self.cfg.keepalive, will=d.session.will(),
                         ssl=ssl, on_message=d)

    # -- messages ---------------------------------------------------------------------

    def _lost(self, client: AioClient) -> bool:
        """Packet loss: with probability `loss` this message is lost. Over MQTT/TCP a lost packet
        stalls the connection until it is given up; we cut it at once, the device reconnects and
        the broker hands the retained documents over again."""
        loss = self.cfg.faults.loss
        if loss and self.rng.random() < loss:
            self.counters["lost"] += 1
            client.abort()
            return True
        return False

    def _on_message(self, d: SimDevice, client: AioClient, topic: str, payload: bytes) -> None:
        if client is not d.client or d.reboot is not None or d.session is None:
            return
        if self._lost(client):
            return
        latency = self.cfg.faults.latency
        if latency:
            self.counters["delayed"] += 1
            asyncio.get_running_loop().call_later(latency, self._arrive, d, client, topic, payload)
            return
        self._arrive(d, client, topic, payload)

    def _arrive(self, d: SimDevice, client: AioClient, topic: str, payload: bytes) -> None:
        if client is not d.client or client.closed or d.reboot is not None or d.session is None:
            return
        kind, _ = topics.classify(self.cfg.fleet, topic)
        doc = None
        if kind in ("bundle", "timestamp") and payload:
            doc = self.docs.intern(kind, payload)
            payload = doc.raw
            if kind == "bundle" and doc.version is not None:
                self._seen(doc.version)
        if doc is not None and kind == "bundle" and d.flags & FORGE:
            self._forged(d, topic, doc.raw)
            if client is not d.client or client.closed or d.reboot is not None:
                return
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

    def _forged(self, d: SimDevice, topic: str, raw: bytes) -> None:
        """Hand the device `raw` with one bit of its last byte flipped: it must refuse it."""
        before, busy = d.device.active_bundle(), d.device.busy()
        self.counters["forged"] += 1
        self._feed(d, "bundle", topic, raw[:-1] + bytes([raw[-1] ^ 1]))
        if d.device is not None and (d.device.active_bundle() is not before or d.device.busy() != busy):
            self.counters["forged_accepted"] += 1
            self.last_error = f"{d.id} accepted a forged bundle"
        else:
            self.counters["forged_refused"] += 1

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
        if not self.cfg.faults.latency:
            # Written at once (with the PUBACK of the message being handled, if any); the
            # broker's PUBACK is not waited for: a status lost with its connection goes out
            # again after the reconnect (Session.connected).
            for topic, payload, retain, qos in messages:
                if client.closed or self._lost(client):
                    return
                client.publish_nowait(topic, payload, retain, qos)
            return
        task = asyncio.get_running_loop().create_task(self._publish(client, messages))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, client: AioClient, messages: list) -> None:
        latency = self.cfg.faults.latency
        for topic, payload, retain, qos in messages:
            if latency:
                await asyncio.sleep(latency)
            if client.closed or self._lost(client):
                return  # the status goes out again after the reconnect (Session.connected)
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

    def _health(self, d: SimDevice, bundle: Bundle, trusted_time: int) -> tuple[bool | None, str]:
        """The trial store judges the endpoint's chain at the device's trusted time: the fixed
        chain, or (cfg.health_address) a real TLS handshake with the live server there."""
        host = self.cfg.endpoint
        if d.flags & HEALTH_FAIL:
            return False, f"TLS to {host}:443 failed (simulated: health-fail subset)"
        if self.cfg.health_address is not None:
            return self._live_health(d, bundle, trusted_time)
        return self._judged(self.health.decide(bundle, trusted_time), host, f"{host}:443")

    def _judged(self, decision: trust.Decision, name: str, where: str) -> tuple[bool, str]:
        """A health check's answer from the trial store's decision; the first refusal is kept
        for the report (Report.refusal)."""
        if decision.accepted():
            return True, f"{name}: {decision.result}"
        why = f"TLS to {where} refused: {decision.reason}"
        if self.refusal is None:
            self.refusal = why
        return False, why

    def _live_health(self, d: SimDevice, bundle: Bundle, trusted_time: int) -> tuple[bool | None, str]:
        """The Pi agent's own health check (trustfleet_pi.tls.probe): a TLS handshake with the
        server at cfg.health_address, checked as cfg.endpoint by the trial store. Blocking, on
        this worker's loop: meant for test fleets on loopback, not for thousands of devices."""
        from trustfleet_pi import tls as pitls

        host, port = self.cfg.health_address
        where = f"{self.cfg.endpoint} ({host}:{port})"
        try:
            # The device's own report queue: a refused pin is reported as the board would.
            ctx = pitls.TrustContext(trust.TrustStore(bundle), lambda: trusted_time,
                                     reports=d.session.reports if d.session is not None else None)
            decision = pitls.probe(ctx, host, port, HEALTH_TIMEOUT, servername=self.cfg.endpoint)
        except OSError as exc:  # no certificate was judged: asked again later, never marked bad
            return None, f"{where} unreachable: {exc}"
        return self._judged(decision, where, where)

    def probe(self, host: str, port: int, servername: str) -> list[tuple[str, bool, str]]:
        """Every device connects to host:port over TLS with its installed store, checked as
        `servername`, at its trusted time (the Pi agent's trustfleet_pi.tls.check): (device id,
        accepted, result or reason) each."""
        from trustfleet_pi import tls as pitls

        out = []
        for d in self.devices:
            if d.device is None or d.device.active_bundle() is None:
                out.append((d.id, False, "no trust store installed"))
                continue
            try:
                decision = pitls.check(host, port, d.device, HEALTH_TIMEOUT,
                                       servername=servername, clock=d.clock)
            except OSError as exc:
                out.append((d.id, False, f"unreachable: {exc}"))
                continue
            out.append((d.id, decision.accepted(),
                         decision.result if decision.accepted() else decision.reason))
        return out

    # -- figures ----------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Counts for the progress line and the end condition, in one pass over the devices
        (cheap: no status() calls; the coordinator asks ten times a second)."""
        versions: Counter = Counter()
        states: Counter = Counter()
        verified: set[int] = set()
        idle: Counter = Counter()   # (active version, bad versions) of online, idle devices
        commits: dict[int, list] = {}
        online = off = 0
        oldest_connect = None
        for d in self.devices:
            if d.online:
                online += 1
                if oldest_connect is None or d.connected_at < oldest_connect:
                    oldest_connect = d.connected_at
            rebooting = d.reboot is not None
            if d.off or rebooting:
                off += 1
            versions[d.version] += 1
            for v, t in d.commits.items():
                c = commits.get(v)
                if c is None:
                    commits[v] = [1, t, t]
                else:
                    c[0] += 1
                    if t < c[1]:
                        c[1] = t
                    if t > c[2]:
                        c[2] = t
            device = d.device
            if device is None:
                continue
            busy = device.busy()
            active = device.active_bundle()
            if rebooting:
                states["rebooting"] += 1
            else:
                states["trial" if busy else ("no-store" if active is None else "ok")] += 1
            verified.update(d.commits)
            bad = device.bad_versions()
            verified.update(bad)
            if d.online and not d.off and not rebooting and not busy:
                idle[(active.version if active is not None else None, tuple(bad))] += 1
        candidates = set(verified)
        if self.cfg.until_version is not None:
            candidates.add(self.cfg.until_version)
        # Settled on v: online and idle, and runs v (or newer) or has reverted it as bad.
        settled = {v: sum(n for (active, bad), n in idle.items()
                          if (active is not None and active >= v) or v in bad)
                   for v in candidates}
        return {"devices": len(self.devices), "online": online, "off": off,
                "versions": dict(versions), "states": dict(states), "verified": sorted(verified),
                "settled": settled, "commits": commits, "first_seen": dict(self.first_seen),
                "t0": self.t0, "counters": dict(self.counters), "last_error": self.last_error,
                "refusal": self.refusal, "oldest_connect": oldest_connect}

    def rows(self) -> list[tuple]:
        """One row per device (what DeviceResult holds), as it is now."""
        rows = []
        for d in self.devices:
            if d.device is None:
                state, bad, events = "bricked", [], []
            else:
                state = d.device.status()["state"]
                bad = d.device.bad_versions()
                events = list(d.device.events or ())
            rows.append((d.id, d.group, d.flags, d.online, state, d.installed() if d.device else None,
                         bad, dict(d.commits), d.cuts, list(d.after_cut), d.bricked, events))
        return rows

    def final(self) -> dict:
        return {"rows": self.rows(), "snapshot": self.snapshot(),
                "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
