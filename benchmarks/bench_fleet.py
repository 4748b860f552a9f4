"""Benchmark the fleet: convergence of 1,000 real agents against raw MQTT fan-out, and 10,000 agents.

Usage: .venv/bin/python benchmarks/bench_fleet.py [--json] [--quick] [--processes P]

(a) Convergence, 1,000 agents on the real Mosquitto (127.0.0.1:1883 when it
    takes anonymous clients, else a private one started here). Each agent is
    trustfleet's simulator device (runner.Device over MemStorage, real COSE
    verification, health check of the trial store against the sample chain,
    its own MQTT connection); `trustfleet serve` (FleetServer) ingests their
    statuses into SQLite in a thread of this process. Timed from the publish
    of a new bundle (retained, QoS 1, fleet topic) until every device has
    committed it ("devices") and until the server's database shows all of
    them on it ("server"). Peer, in the same run: the raw fan-out of the same
    message to 1,000 plain subscribers (AioClient, no verification), from
    the publish to the last delivery. Target: server under 5 s on this
    2-core machine. Rounds publish v2, v3, ... to the same live fleet.
(b) Scale: 10,000 agents (2,000 with --quick) in `--processes` worker
    processes on a private Mosquitto: time to connect, convergence from the
    publish, and peak memory (RSS of the coordinator, the workers and the
    broker). No target: the figure is that it completes.

No timed asserts; the script prints a table (or one JSON object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server", "tests"):
    sys.path.insert(0, str(REPO / _sub))

from cryptography import x509  # noqa: E402

from support.fleetkit import Repo, compact_anchor, pin, pinset  # noqa: E402
from trustfleet_device import topics  # noqa: E402
from trustfleet_server import mqtturl  # noqa: E402
from trustfleet_server.broker.aioclient import AioClient  # noqa: E402
from trustfleet_server.broker.mosquitto import mosquitto_binary  # noqa: E402
from trustfleet_server.fleet import db as fleetdb  # noqa: E402
from trustfleet_server.serve.server import FleetServer  # noqa: E402
from trustfleet_server.sim.brokers import BrokerHandle, open_broker  # noqa: E402
from trustfleet_server.sim.config import SAMPLE_HOST, SimConfig, sample_file  # noqa: E402
from trustfleet_server.sim.simulator import BackgroundSimulation, Simulation  # noqa: E402

TARGET_S = 5.0
DAY = 86_400


class Fleet:
    """Root and bundles on the sample PKI, signed for real (fleetkit)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.now = int(time.time())
        self.repo = Repo(fleet=name, now=self.now)
        load = lambda n: x509.load_pem_x509_certificate(sample_file(n))  # noqa: E731
        self.root_ca, self.backup_ca = load("demo-fleet-root-ca.pem"), load("demo-fleet-backup-ca.pem")

    def bundle(self, version: int) -> bytes:
        ps = pinset(SAMPLE_HOST, [pin(self.root_ca), pin(self.backup_ca)], expires=self.now + 180 * DAY)
        return self.repo.bundle(version, anchors=[compact_anchor(self.root_ca)], pinsets=[ps])


def system_mosquitto() -> BrokerHandle | None:
    """The machine's Mosquitto on 1883 if it answers an anonymous CONNECT."""
    url = mqtturl.BrokerURL("127.0.0.1", 1883)

    async def probe() -> bool:
        c = AioClient(f"bench-probe-{time.time_ns()}", url.host, url.port, timeout=2)
        try:
            await c.connect()
            await c.disconnect()
            return True
        except Exception:
            c.abort()
            return False

    return BrokerHandle(url) if asyncio.run(probe()) else None


def wait_until(done, timeout: float, what: str, poll: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return time.time()
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


# --------------------------------------------------------------------------- (a)


def bench_convergence(broker: BrokerHandle, devices: int, rounds: int, processes: int) -> dict:
    fleet = Fleet(f"bench-{time.time_ns() % 10**9}")
    tmp = Path(tempfile.mkdtemp(prefix="trustfleet-bench-"))
    db_path = str(tmp / "fleet.db")
    server_db = fleetdb.open_db(db_path)
    server = FleetServer(broker.url, fleet.name, [fleet.repo.root_raw], server_db, step_every=5)
    thread = threading.Thread(target=server.run, kwargs={"duration": 3600}, daemon=True)
    thread.start()
    reader = fleetdb.open_db(db_path)
    cfg = SimConfig(devices=devices, broker=broker.url, fleet=fleet.name,
                             root_raw=fleet.repo.root_raw, initial=fleet.bundle(1), id_prefix="b")
    sim = BackgroundSimulation(cfg, broker, processes)

    def on_server(version: int) -> bool:
        rows = reader.devices(fleet.name)
        return sum(1 for d in rows if d["version"] == version and d["state"] == "ok") >= devices

    results = []
    try:
        wait_until(lambda: server.synced, 30, "the server to sync")
        t = time.time()
        sim.start(connect_timeout=120)
        connect_s = time.time() - t
        wait_until(lambda: on_server(1), 60, "the server to see every device")
        for r in range(rounds):
            version = 2 + r
            raw = fleet.bundle(version)
            t_pub = time.time()
            sim.publish(topics.bundle(fleet.name), raw)
            t_server = wait_until(lambda v=version: on_server(v), 60, f"v{version} on the server", 0.02)
            p = sim.progress()
            t_devices = p.commits[version][2]
            results.append({"version": version, "devices_s": t_devices - t_pub,
                            "server_s": t_server - t_pub, "bytes": len(raw)})
            time.sleep(0.3)
    finally:
        sim.stop(clear=not broker.controlled)
        server.stop()
        thread.join(15)
        reader.close()
        with_retained = [(topics.bundle(fleet.name), b"")]
        if not broker.controlled:
            from trustfleet_server.serve.link import publish_retained

            publish_retained(broker.url, with_retained)
    fanout = asyncio.run(raw_fanout(broker.url, devices, fleet.bundle(99), rounds))
    return {"devices": devices, "processes": sim.sim.processes, "connect_s": connect_s,
            "rounds": results, "fanout_s": fanout,
            "devices_s": statistics.median(r["devices_s"] for r in results),
            "server_s": statistics.median(r["server_s"] for r in results),
            "fanout_median_s": statistics.median(fanout)}


async def raw_fanout(url: mqtturl.BrokerURL, n: int, payload: bytes, rounds: int) -> list[float]:
    """Publish `payload` to n plain subscribers; seconds from the publish to the last delivery."""
    topic = f"bench/fanout/{time.time_ns()}"
    got = [0]
    done = asyncio.Event()

    def on_message(t: str, p: bytes, retain: bool) -> None:
        got[0] += 1
        if got[0] >= n:
            done.set()

    subs = [AioClient(f"bench-sub-{i}-{time.time_ns()}", url.host, url.port, on_message=on_message)
            for i in range(n)]
    sem = asyncio.Semaphore(200)

    async def up(c: AioClient) -> None:
        async with sem:
            await c.connect()
            await c.subscribe([(topic, 1)])

    await asyncio.gather(*(up(c) for c in subs))
    pub = AioClient(f"bench-pub-{time.time_ns()}", url.host, url.port)
    await pub.connect()
    times = []
    try:
        for _ in range(rounds):
            got[0] = 0
            done.clear()
            t = time.perf_counter()
            await pub.publish(topic, payload, False, 1)
            await asyncio.wait_for(done.wait(), 60)
            times.append(time.perf_counter() - t)
            await asyncio.sleep(0.2)
    finally:
        await pub.disconnect()
        await asyncio.gather(*(c.disconnect() for c in subs), return_exceptions=True)
    return times


# --------------------------------------------------------------------------- (b)


def bench_scale(devices: int, processes: int) -> dict:
    fleet = Fleet(f"scale-{time.time_ns() % 10**9}")
    broker = open_broker("mosquitto" if mosquitto_binary() else "embedded")
    try:
        cfg = SimConfig(devices=devices, broker=broker.url, fleet=fleet.name,
                                 root_raw=fleet.repo.root_raw, initial=fleet.bundle(1), id_prefix="s")
        sim = Simulation(cfg, broker, processes)
        t = time.time()
        report = asyncio.run(sim.run(300, (topics.bundle(fleet.name), fleet.bundle(2))))
        elapsed = time.time() - t
    finally:
        broker.stop()
    rss = report.peak_rss_kb
    return {"devices": devices, "processes": report.processes, "broker": broker.kind,
            "converged": report.converged, "committed": report.committed,
            "convergence_s": report.from_publish_s, "elapsed_s": elapsed,
            "peak_rss_mb": {"total": (rss["total"] + rss.get("broker", 0)) / 1024,
                            "coordinator": rss["coordinator"] / 1024,
                            "workers": [w / 1024 for w in rss.get("workers", [])],
                            "broker": rss.get("broker", 0) / 1024},
            "kb_per_device": (rss["total"] - rss["coordinator"] if "workers" in rss else rss["total"])
            / devices}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one round in (a), 2,000 agents in (b)")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    args = ap.parse_args()
    broker = system_mosquitto()
    own = None
    if broker is None:
        own = broker = open_broker("mosquitto")
    try:
        a = bench_convergence(broker, 1000, 1 if args.quick else 3, args.processes)
    finally:
        if own is not None:
            own.stop()
    a["broker"] = "system Mosquitto 127.0.0.1:1883" if own is None else "private Mosquitto"
    b = bench_scale(2000 if args.quick else 10_000, args.processes)
    result = {"convergence": a, "scale": b, "target_s": TARGET_S}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"(a) 1,000 agents on {a['broker']}, {a['processes']} worker process(es); "
          f"connect {a['connect_s']:.1f} s; bundle {a['rounds'][0]['bytes']} bytes")
    print(f"    {'round':<8}{'devices':>10}{'server':>10}{'raw fan-out':>14}")
    for r, f in zip(a["rounds"], a["fanout_s"], strict=False):
        print(f"    v{r['version']:<7}{r['devices_s']:>9.2f}s{r['server_s']:>9.2f}s{f:>13.3f}s")
    verdict = "meets" if a["server_s"] < TARGET_S else "MISSES"
    print(f"    median  {a['devices_s']:>9.2f}s{a['server_s']:>9.2f}s{a['fanout_median_s']:>13.3f}s"
          f"   server {verdict} the {TARGET_S:.0f} s target; "
          f"{a['server_s'] / a['fanout_median_s']:.0f}x the raw fan-out")
    rss = b["peak_rss_mb"]
    workers = " + ".join(f"{w:.0f}" for w in rss["workers"]) or "-"
    print(f"(b) {b['devices']:,} agents, {b['processes']} process(es), {b['broker']} broker: "
          f"{'converged' if b['converged'] else 'NOT converged'} ({b['committed']:,} committed) in "
          f"{b['convergence_s']:.1f} s from the publish, {b['elapsed_s']:.1f} s in all")
    print(f"    peak RSS {rss['total']:.0f} MB = coordinator {rss['coordinator']:.0f} + workers {workers} "
          f"+ broker {rss['broker']:.0f}; at most {b['kb_per_device']:.0f} KB per agent (interpreters included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
