"""Benchmark the fleet simulator: a scaling table of real agents, and convergence next to `serve`.

Usage: .venv/bin/python benchmarks/bench_fleet.py [--json] [--quick] [--runs N]
           [--sizes 100,1000,3000,10000] [--processes P] [--checkout DIR] [--no-serve]

Every figure comes from a private Mosquitto this script starts on a free
loopback port (never the one on 1883), with the open-file limit raised to
its hard limit first. Documents are signed here (tests/support/fleetkit);
every simulation runs in a child process of its own whose code comes from
`--checkout DIR` (DIR/device and DIR/server first on PYTHONPATH; default:
this checkout), so two commits are measured with the same bench.

(a) Scaling table, for each size (100, 1,000, 3,000, 10,000 agents): one
    `Simulation.run` of N agents (runner.Device over MemStorage, real COSE
    checks, health check of the trial store, one MQTT connection each; the
    checkout's default number of worker processes unless --processes), from
    a factory image at v1 to v2 published retained at QoS 1.
    - wall: from the publish to the last device's commit of v2 (every
      device must commit it; a run that does not is reported as such);
    - CPU per agent: user + system CPU of every simulator process (the
      child and its worker processes, from their start to their exit:
      boot, connect, receive, verify, install, health check, report,
      disconnect) divided by N. The broker's CPU is not in it;
    - memory per agent: (peak RSS of the simulator processes, summed, minus
      the same for a run of one agent per process) / N. That one-agent run
      is the per-process base (interpreter, imports, factory image), shown
      separately with its CPU.
    Peer, in its own child process right after each simulation (rounds
    interleaved with it): the raw fan-out of the same v2 message to N plain
    subscribers (AioClient, no verification), publish to last delivery,
    and the CPU those N subscribers cost per subscriber.
    Each size runs `--runs` times (3; --quick 1), sizes round-robin;
    min/median/max are printed.
(b) Convergence next to serve: 1,000 agents and a `FleetServer` ingesting
    their statuses into SQLite (a thread of the same child). Each round
    publishes the next version and is timed from the publish until every
    device has committed it ("devices") and until the server's database
    shows every device on it ("server"); after each, a round of the raw
    fan-out of the same message to 1,000 plain subscribers connected in the
    same child (peer, interleaved). 3 rounds (--quick 1).

No timed asserts; the script prints a table (or one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server", "tests"):
    sys.path.insert(0, str(REPO / _sub))

from cryptography import x509  # noqa: E402

from support.fleetkit import Repo, compact_anchor, pin, pinset  # noqa: E402
from trustfleet_server.broker.mosquitto import PrivateMosquitto, mosquitto_binary  # noqa: E402
from trustfleet_server.sim.config import SAMPLE_HOST, sample_file  # noqa: E402

SIZES = (100, 1000, 3000, 10_000)
SERVE_DEVICES = 1000
DAY = 86_400

# The child: runs with the checkout's code only (no fleetkit, no cryptography import here),
# prints one JSON object. Run as `python -c CHILD SPEC`; a -c main is not re-imported by the
# spawned worker processes, so they load nothing but the simulator.
CHILD = r'''
import asyncio, json, resource, sys, time

def cpu():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

spec = json.loads(sys.argv[1])
import trustfleet_device
import trustfleet_server
from trustfleet_device import topics
from trustfleet_server import mqtturl
from trustfleet_server.broker.aioclient import AioClient

url = mqtturl.BrokerURL("127.0.0.1", spec["port"])
docs = [open(p, "rb").read() for p in spec["docs"]]
fleet = spec["fleet"]
out = {"code": [trustfleet_device.__file__, trustfleet_server.__file__]}

async def fanout_subscribers(n, topic, got, done):
    def on_message(t, p, retain):
        got[0] += 1
        if got[0] >= n:
            done.set()
    subs = [AioClient("fan-%s-%d" % (fleet, i), url.host, url.port, on_message=on_message)
            for i in range(n)]
    sem = asyncio.Semaphore(200)
    async def up(c):
        async with sem:
            await c.connect()
            await c.subscribe([(topic, 1)])
    await asyncio.gather(*(up(c) for c in subs))
    return subs

async def fanout_round(pub, topic, payload, got, done):
    got[0] = 0
    done.clear()
    t = time.time()
    await pub.publish(topic, payload, False, 1)
    await asyncio.wait_for(done.wait(), 120)
    return time.time() - t

async def fanout(n, payload):
    topic = "bench/fanout/" + fleet
    got, done = [0], asyncio.Event()
    subs = await fanout_subscribers(n, topic, got, done)
    pub = AioClient("fan-pub-" + fleet, url.host, url.port)
    await pub.connect()
    s = await fanout_round(pub, topic, payload, got, done)
    await pub.disconnect()
    await asyncio.gather(*(c.disconnect() for c in subs), return_exceptions=True)
    return s

mode = spec["mode"]
if mode == "scale":
    from trustfleet_server.sim.config import SimConfig
    from trustfleet_server.sim.simulator import Simulation, default_processes
    n = spec["devices"]
    processes = spec["processes"] or default_processes(n)
    cfg = SimConfig(devices=n, broker=url, fleet=fleet, root_raw=docs[0], initial=docs[1],
                    id_prefix="s")
    sim = Simulation(cfg, None, processes)
    report = asyncio.run(sim.run(spec["timeout"], (topics.bundle(fleet), docs[2])))
    rss = report.peak_rss_kb
    out.update(devices=n, processes=report.processes, converged=report.converged,
               committed=report.committed, wall_s=report.from_publish_s,
               connect_s=sim.published_at - sim.started_at if sim.published_at else None,
               rss_kb=rss["total"], rss_parts=rss, cpu_s=cpu())
elif mode == "fanout":
    n = spec["devices"]
    out.update(devices=n, wall_s=asyncio.run(fanout(n, docs[2])), cpu_s=cpu(),
               rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
elif mode == "serve":
    import threading
    from trustfleet_server.fleet import db as fleetdb
    from trustfleet_server.serve.server import FleetServer
    from trustfleet_server.sim.config import SimConfig
    from trustfleet_server.sim.simulator import BackgroundSimulation
    n = spec["devices"]
    db_path = spec["db"]
    server = FleetServer(url, fleet, [docs[0]], fleetdb.open_db(db_path), step_every=5)
    thread = threading.Thread(target=server.run, kwargs={"duration": 3600}, daemon=True)
    thread.start()
    reader = fleetdb.open_db(db_path)
    cfg = SimConfig(devices=n, broker=url, fleet=fleet, root_raw=docs[0], initial=docs[1],
                    id_prefix="b")
    sim = BackgroundSimulation(cfg, None, spec["processes"] or 1)
    fan_loop = asyncio.new_event_loop()
    threading.Thread(target=fan_loop.run_forever, daemon=True).start()
    def on_fan(coro, timeout=180):
        return asyncio.run_coroutine_threadsafe(coro, fan_loop).result(timeout)
    def on_server(v):
        return sum(1 for d in reader.devices(fleet) if d["version"] == v and d["state"] == "ok") >= n
    def wait(cond, timeout, what, poll=0.02):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise SystemExit("bench child: timed out waiting for " + what)
            time.sleep(poll)
        return time.time()
    rounds = []
    try:
        wait(lambda: server.synced, 30, "the server to sync")
        t = time.time()
        sim.start(connect_timeout=120)
        out["connect_s"] = time.time() - t
        wait(lambda: on_server(1), 60, "the server to see every device")
        topic = "bench/fanout/" + fleet
        got, done = [0], asyncio.Event()
        async def make_done():
            return asyncio.Event()
        done = on_fan(make_done())
        subs = on_fan(fanout_subscribers(n, topic, got, done))
        pub = AioClient("fan-pub-" + fleet, url.host, url.port)
        on_fan(pub.connect())
        for i, raw in enumerate(docs[2:]):
            v = 2 + i
            t_pub = time.time()
            sim.publish(topics.bundle(fleet), raw)
            def devices_done(v=v):
                c = sim.progress().commits.get(v)
                return c is not None and c[0] >= n
            wait(devices_done, 60, "v%d on every device" % v, 0.05)
            t_server = wait(lambda v=v: on_server(v), 60, "v%d on the server" % v)
            t_devices = sim.progress().commits[v][2]
            time.sleep(0.3)
            f = on_fan(fanout_round(pub, topic, raw, got, done))
            rounds.append({"version": v, "devices_s": t_devices - t_pub,
                           "server_s": t_server - t_pub, "fanout_s": f, "bytes": len(raw)})
            time.sleep(0.3)
        on_fan(pub.disconnect())
        async def bye():
            await asyncio.gather(*(c.disconnect() for c in subs), return_exceptions=True)
        on_fan(bye())
    finally:
        sim.stop()
        server.stop()
        thread.join(15)
        reader.close()
    out.update(devices=n, processes=sim.sim.processes, rounds=rounds)
print(json.dumps(out))
'''


class Fleet:
    """Root and bundles on the sample PKI, signed for real (fleetkit), written to files."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.now = int(time.time())
        self.repo = Repo(fleet=name, now=self.now)
        load = lambda n: x509.load_pem_x509_certificate(sample_file(n))  # noqa: E731
        self.root_ca, self.backup_ca = load("demo-fleet-root-ca.pem"), load("demo-fleet-backup-ca.pem")
        self.tmp = tmp

    def bundle(self, version: int) -> bytes:
        ps = pinset(SAMPLE_HOST, [pin(self.root_ca), pin(self.backup_ca)], expires=self.now + 180 * DAY)
        return self.repo.bundle(version, anchors=[compact_anchor(self.root_ca)], pinsets=[ps])

    def files(self, last_version: int) -> list[str]:
        """[root, v1, v2, ... v<last_version>] as files."""
        out = []
        for i, raw in enumerate([self.repo.root_raw] + [self.bundle(v) for v in range(1, last_version + 1)]):
            p = self.tmp / f"{self.name}-{i}.cose"
            p.write_bytes(raw)
            out.append(str(p))
        return out


class Bench:
    def __init__(self, checkout: Path, port: int, tmp: Path, processes: int | None) -> None:
        self.checkout, self.port, self.tmp, self.processes = checkout, port, tmp, processes
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(checkout / "device"), str(checkout / "server")]
            + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else []))
        self.serial = 0

    def child(self, spec: dict, timeout: float = 600) -> dict:
        spec = dict(spec, port=self.port)
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=self.env,
                              capture_output=True, text=True, timeout=timeout, cwd=str(self.tmp))
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"bench: {spec['mode']} of {spec.get('devices')} agents failed: {tail}")
        out = json.loads(lines[-1])
        want = str(self.checkout.resolve())
        if not all(str(Path(c).resolve()).startswith(want) for c in out["code"]):
            raise SystemExit(f"bench: the child ran {out['code']}, not the code of {want}")
        return out

    def fleet(self, last_version: int) -> tuple[str, list[str]]:
        self.serial += 1
        name = f"b{os.getpid()}x{self.serial}"
        return name, Fleet(name, self.tmp).files(last_version)

    def scale(self, n: int, processes: int | None = None) -> dict:
        name, docs = self.fleet(2)
        return self.child({"mode": "scale", "devices": n, "fleet": name, "docs": docs,
                           "processes": processes or self.processes, "timeout": 300})

    def fanout(self, n: int) -> dict:
        name, docs = self.fleet(2)
        return self.child({"mode": "fanout", "devices": n, "fleet": name, "docs": docs})

    def serve(self, n: int, rounds: int) -> dict:
        name, docs = self.fleet(1 + rounds)
        return self.child({"mode": "serve", "devices": n, "fleet": name, "docs": docs,
                           "processes": self.processes, "db": str(self.tmp / f"{name}.db")})


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def scaling(bench: Bench, sizes: list[int], runs: int, say) -> dict:
    rows: dict[int, dict] = {n: {"sim": [], "fanout": []} for n in sizes}
    bases: dict[int, list] = {}
    for r in range(runs):
        for n in sizes:
            s = bench.scale(n)
            f = bench.fanout(n)
            rows[n]["sim"].append(s)
            rows[n]["fanout"].append(f)
            p = s["processes"]
            if len(bases.get(p, [])) <= r:
                bases.setdefault(p, []).append(bench.scale(p, p))
            say(f"  run {r + 1}/{runs}: {n:>6,} agents, {p} process(es): "
                f"{'converged' if s['converged'] else 'NOT converged'} "
                f"{s['wall_s'] if s['wall_s'] is not None else float('nan'):.2f} s, "
                f"{1000 * s['cpu_s'] / n:.2f} ms CPU/agent; raw fan-out {f['wall_s']:.3f} s")
    base = {p: {"cpu_s": spread([b["cpu_s"] for b in bs]),
                "rss_mb_per_process": spread([b["rss_kb"] / 1024 / (p + (p > 1)) for b in bs])}
            for p, bs in bases.items()}
    table = []
    for n in sizes:
        sims, fans = rows[n]["sim"], rows[n]["fanout"]
        p = sims[0]["processes"]
        base_kb = statistics.median(b["rss_kb"] for b in bases[p])
        table.append({
            "devices": n, "processes": p,
            "converged": sum(1 for s in sims if s["converged"] and s["committed"] == n),
            "runs": len(sims),
            "wall_s": spread([s["wall_s"] if s["wall_s"] is not None else float("inf") for s in sims]),
            "cpu_ms_per_agent": spread([1000 * s["cpu_s"] / n for s in sims]),
            "kb_per_agent": spread([(s["rss_kb"] - base_kb) / n for s in sims]),
            "rss_mb_total": spread([s["rss_kb"] / 1024 for s in sims]),
            "connect_s": spread([s["connect_s"] for s in sims]),
            "fanout_s": spread([f["wall_s"] for f in fans]),
            "fanout_cpu_ms_per_sub": spread([1000 * f["cpu_s"] / n for f in fans]),
        })
    return {"table": table, "base": base}


def fmt(s: dict, f: str = ".2f") -> str:
    return f"{s['min']:{f}}/{s['median']:{f}}/{s['max']:{f}}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 run per size, sizes up to 3,000, 1 serve round")
    ap.add_argument("--runs", type=int, help="runs per size (default 3, --quick 1)")
    ap.add_argument("--sizes", help="comma-separated fleet sizes (default 100,1000,3000,10000)")
    ap.add_argument("--processes", type=int, help="worker processes (default: the checkout's choice)")
    ap.add_argument("--checkout", type=Path, default=REPO,
                    help="the trustfleet checkout whose simulator is measured (default: this one)")
    ap.add_argument("--no-serve", action="store_true", help="skip (b), the convergence next to serve")
    args = ap.parse_args()
    checkout = args.checkout.resolve()
    if not (checkout / "server" / "trustfleet_server" / "sim" / "simulator.py").is_file():
        print(f"bench: {checkout} is not a trustfleet checkout (no server/trustfleet_server/sim)")
        return 2
    try:
        sizes = [int(x) for x in (args.sizes or ",".join(map(str, SIZES[:3] if args.quick else SIZES))).split(",")]
    except ValueError:
        print(f"bench: --sizes takes comma-separated numbers, not {args.sizes!r}")
        return 2
    if any(n < 1 for n in sizes) or (args.runs is not None and args.runs < 1):
        print("bench: --sizes and --runs must be at least 1")
        return 2
    if mosquitto_binary() is None:
        print("bench: mosquitto is not installed (apt-get install mosquitto)")
        return 2
    runs = args.runs or (1 if args.quick else 3)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the broker and the children inherit it
    say = (lambda s: None) if args.json else (lambda s: print(s, flush=True))
    with tempfile.TemporaryDirectory(prefix="trustfleet-bench-fleet-") as tmp, \
            PrivateMosquitto(extra=["max_keepalive 300"]) as broker:
        broker.start()
        bench = Bench(checkout, broker.port, Path(tmp), args.processes)
        say(f"code: {checkout}; private Mosquitto on 127.0.0.1:{broker.port}; open files {hard}")
        say(f"(a) scaling, {runs} run(s) per size, sizes round-robin")
        a = scaling(bench, sizes, runs, say)
        b = None
        if not args.no_serve:
            b = bench.serve(SERVE_DEVICES, 1 if args.quick else 3)
    result = {"checkout": str(checkout), "scaling": a, "serve": b, "broker": "private Mosquitto"}
    if args.json:
        print(json.dumps(result))
        return 0
    print("(a) agents  procs conv  wall publish->all committed s  CPU ms/agent      KB/agent"
          "          RSS MB total        raw fan-out s         fan-out CPU ms/sub   (min/median/max)")
    for t in a["table"]:
        print(f"    {t['devices']:>6,} {t['processes']:>4} {t['converged']}/{t['runs']}  "
              f"{fmt(t['wall_s']):<29} {fmt(t['cpu_ms_per_agent']):<17} {fmt(t['kb_per_agent'], '.1f'):<17} "
              f"{fmt(t['rss_mb_total'], '.0f'):<19} {fmt(t['fanout_s'], '.3f'):<21} "
              f"{fmt(t['fanout_cpu_ms_per_sub'])}")
    for p, bs in sorted(a["base"].items()):
        print(f"    base, {p} process(es) with one agent each: CPU {fmt(bs['cpu_s'])} s in all, "
              f"RSS {fmt(bs['rss_mb_per_process'], '.0f')} MB per process (coordinator"
              f"{' and workers' if p > 1 else ''}); not in KB/agent")
    if b is not None:
        print(f"(b) {b['devices']:,} agents next to serve (SQLite), {b['processes']} process(es)")
        print(f"    {'round':<8}{'devices':>10}{'server':>10}{'raw fan-out':>14}{'server/fan-out':>16}")
        for r in b["rounds"]:
            print(f"    v{r['version']:<7}{r['devices_s']:>9.2f}s{r['server_s']:>9.2f}s"
                  f"{r['fanout_s']:>13.3f}s{r['server_s'] / r['fanout_s']:>15.0f}x")
        if len(b["rounds"]) > 1:
            print("    min/median/max devices " + fmt(spread([r["devices_s"] for r in b["rounds"]]))
                  + " s, server " + fmt(spread([r["server_s"] for r in b["rounds"]]))
                  + " s, fan-out " + fmt(spread([r["fanout_s"] for r in b["rounds"]]), ".3f") + " s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
