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
  started on the same port. With signal "term" it keeps its retained
  messages (the embedded broker keeps them in memory, a private Mosquitto
  saves them on SIGTERM); with "kill" it dies without saving (Mosquitto:
  kill -9; embedded: every socket dropped, its state thrown away, a fresh
  broker on the same port), so what it lost stays lost unless someone
  publishes again (`republish`: the simulator publishes its bundle again
  once the broker is back, as `serve` re-publishes what it owns). Only a
  broker this simulator started can be restarted;
- loss: each message, either way, is lost with this probability; the lost
  message cuts its connection (as a stalled TCP connection would be given
  up) and the device reconnects; latency: every message, either way, is
  handed over this many seconds late;
- power cut: on the subset's first install, MemStorage is cut at a random
  one of the install's six storage operations (slot write, switch, commit
  or revert: two each); the device then boots on what survived, must find a
  verified store (old or new), and reconnects: the retained bundle comes
  again and installs;
- duplicate: every message is handed to the session twice at once and a
  third time a moment later; reorder: a newer bundle or timestamp is held
  back, an older one the worker has seen goes first and again after it;
- forge: each bundle is handed to the subset first with one bit of its
  last byte (a signature) flipped, then as it came; the forged copy must be
  refused although the worker's other devices verified the genuine one
  (sim/shared.py keys what it remembers by the exact bytes' digest); a
  forged copy a device accepted is counted and makes the run fail;
- clock skew (uniform within +-skew) and stuck-2000 (the clock reads
  2000-01-01 and counts from there; firmware_time is a month-old build).

Convergence is measured after the faults end: the run ends when every
scheduled fault has happened and then, on a snapshot taken after the last
one, every device is online on a connection made after it, idle, and either
runs the target (or newer) or has reverted it and marked it bad. Settled is
not yet converged: a device that reverted the target although no health-fail
fault was injected did not reach it (its health check refused the new store,
e.g. the chain it judged does not match the bundle's anchors or pins), and
the run is not converged. Convergence time is from t0 to the last commit of
the target. A run that does not converge says why in `Report.why` (JSON
`not_converged`): the cause, the faults still pending and each unsettled
device's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from trustfleet_server.broker.aioclient import AioClient, ClientError
from trustfleet_server.errors import UsageError
from trustfleet_server.sim.brokers import BrokerHandle
from trustfleet_server.sim.config import SAMPLE_CHAIN, SAMPLE_HOST, SimConfig, flag_names
from trustfleet_server.sim.links import LocalLink, ProcessLink
from trustfleet_server.sim.report import HEALTH_FAIL, DeviceResult, Progress, Report, explain

MANY_DEVICES = 2000                # above this, default to one worker per CPU


# --------------------------------------------------------------------------- the coordinator


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
        link = LocalLink if processes == 1 else ProcessLink
        self.links = [link(cfg, lo, hi) for lo, hi in spans]
        self.started_at = time.time()
        self.published_at: float | None = None
        self.restarts = 0
        self.restart_done = cfg.faults.broker_restart_at is None
        self.fault_at: float | None = None    # wall time the last fault (broker restart) began
        self.restart_s: float | None = None   # how long the restart took
        self.reconverged_s: float | None = None  # from the restart's start to convergence
        self.republished = 0
        self._doc: tuple[str, bytes] | None = None
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

    async def publish(self, topic: str, raw: bytes, again: bool = False) -> None:
        """Publish a document retained at QoS 1 (as `trustfleet publish` does). Raises: UsageError."""
        u = self.cfg.broker
        client = AioClient(f"tf-simulate-{os.getpid()}-{random.getrandbits(32):08x}", u.host, u.port,
                           username=u.username, password=u.password, ssl=True if u.tls else None)
        try:
            await client.connect()
            if not again:
                self.published_at = time.time()
            await client.publish(topic, raw, True, 1)
            await client.disconnect()
        except ClientError as exc:
            client.abort()
            raise UsageError(f"cannot publish to {u}: {exc}") from None

    async def step_faults(self, p: Progress) -> bool:
        """Restart the broker once t0 + broker_restart_at has come. Returns: whether it did."""
        f = self.cfg.faults
        if self.restart_done or p.t0 is None or time.time() < p.t0 + f.broker_restart_at:
            return False
        self.fault_at = time.time()
        hard = f.broker_restart_signal == "kill"
        await asyncio.get_running_loop().run_in_executor(None, self.broker.restart, hard)
        self.restart_s = time.time() - self.fault_at
        self.restarts += 1
        self.restart_done = True
        if f.republish and self._doc is not None:
            await self.publish(*self._doc, again=True)
            self.republished += 1
        return True

    def done(self, p: Progress) -> bool:
        """Converged on this snapshot: every fault happened, every device settled on the target
        and, after a fault, on a connection made after it (a snapshot from before the fault
        or a device the fault has not reached yet does not count)."""
        target = p.target(self.cfg.until_version)
        if target is None or not self.restart_done or p.settled.get(target, 0) < p.devices:
            return False
        return self.fault_at is None or (p.oldest_connect is not None
                                         and p.oldest_connect > self.fault_at)

    def pending_faults(self) -> list[str]:
        return [] if self.restart_done else ["broker_restart"]

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
                self._doc = publish
                await self.publish(*publish)
            converged = False
            while True:
                p = await self.progress()
                if on_progress is not None:
                    on_progress(p)
                if await self.step_faults(p):
                    continue  # p is from before the fault: judge a fresh snapshot
                converged = self.done(p)
                if converged and self.fault_at is not None and self.reconverged_s is None:
                    self.reconverged_s = time.time() - self.fault_at
                if converged and not keep_running:
                    break
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        except BaseException:
            await self._abandon()
            raise
        report = await self.stop(clear)
        # Settled is not converged: a device that reverted the target without an injected
        # health-fail fault did not reach it; its health check refused the new store.
        report.converged = converged and not report.refused
        forged = report.faults.get("forge", {}).get("accepted", 0)
        if forged:
            report.converged = False
            report.why = explain(report, f"{forged} forged bundle(s) accepted by a device", [])
            return report
        if not converged:
            cause = (f"still running at --timeout ({timeout:g} s)" if not keep_running
                     else f"not settled at the end of --keep-running ({timeout:g} s)")
            if report.target is None:
                cause += "; no bundle newer than the factory image reached any device"
            report.why = explain(report, cause, self.pending_faults())
        elif report.refused:
            report.why = explain(report, self.refused_cause(report), [])
        return report

    def refused_cause(self, report: Report) -> str:
        """Why devices reverted the target although no health-fail fault was injected: the
        chain their health check judged does not match the bundle's anchors or pins."""
        n = len(report.devices)
        chain = ("the --chain given" if self.cfg.chain else
                 f"the sample chain of {SAMPLE_HOST} (samples/{SAMPLE_CHAIN})")
        hint = ("check --chain and --endpoint against the bundle's anchors and pins"
                if self.cfg.chain else
                "give the simulated servers your chain with --chain FILE (leaf first) and "
                "--endpoint HOST")
        return (f"{report.refused} of {n} devices reverted v{report.target}: their health check "
                f"judged {chain} for {self.cfg.endpoint} with the new store and it was refused "
                f"({report.refusal or 'no reason recorded'}); {hint}")

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
        rows = [device_result(r) for f in finals for r in f["rows"]]
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
        refused = sum(1 for d in rows if target is not None and target in d.bad
                      and (d.version or 0) < target and HEALTH_FAIL not in d.faults)
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
                      self.processes, first, last, reverted, refused=refused, refusal=p.refusal)

    async def devices(self) -> list[DeviceResult]:
        """Every device as it is now (a status() call each: for tests, not a progress line)."""
        parts = await asyncio.gather(*(link.rows() for link in self.links))
        return [device_result(r) for rows in parts for r in rows]

    async def probe(self, host: str, port: int, servername: str) -> list[tuple[str, bool, str]]:
        """Every device connects to host:port over TLS with its installed store (worker.probe)."""
        parts = await asyncio.gather(*(link.probe(host, port, servername) for link in self.links))
        return [row for rows in parts for row in rows]

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
        if f.forge:
            out["forge"] = {"devices": count("forge"), "forged": p.counters.get("forged", 0),
                            "refused": p.counters.get("forged_refused", 0),
                            "accepted": p.counters.get("forged_accepted", 0)}
        if f.broker_restart_at is not None:
            out["broker_restart"] = {"at_s": f.broker_restart_at, "signal": f.broker_restart_signal,
                                     "restarts": self.restarts,
                                     "took_s": _round(self.restart_s),
                                     "republished": self.republished,
                                     "reconverged_s": _round(self.reconverged_s)}
        if f.loss:
            out["loss"] = {"share": f.loss, "lost": p.counters.get("lost", 0)}
        if f.latency:
            out["latency"] = {"s": f.latency, "delayed": p.counters.get("delayed", 0)}
        if p.counters.get("connect_failures"):
            out["connect_failures"] = p.counters["connect_failures"]
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def device_result(r: tuple) -> DeviceResult:
    """A worker's row (worker.rows) as a DeviceResult."""
    return DeviceResult(r[0], r[1], flag_names(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                        r[10], r[11])


# --------------------------------------------------------------------------- callers


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

    def devices(self) -> list[DeviceResult]:
        return self._call(self.sim.devices(), 60)

    def probe(self, host: str, port: int, servername: str) -> list[tuple[str, bool, str]]:
        return self._call(self.sim.probe(host, port, servername), 120)

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
