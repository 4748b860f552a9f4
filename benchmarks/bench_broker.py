"""Benchmark the embedded MQTT broker against Mosquitto by the CPU each broker process uses.

Usage: .venv/bin/python benchmarks/bench_broker.py [--json] [--quick] [--clients N]
       [--rounds R] [--fanouts K]

Each broker is a private process on a free loopback port, started afresh for
every round: the embedded one as `trustfleet broker run --port P`, Mosquitto
as `mosquitto -c <temp conf>` (no persistence, anonymous, loopback only, no
logging). Rounds alternate between them (embedded, Mosquitto, embedded,
Mosquitto, ...), each round the same workloads driven by one asyncio load
generator in this process (AioClient, one per simulated device):

  connect   N clients connect and subscribe to three filters, as a device
            does (fleet bundle, its group's bundle, root/+).
  fan-out   K publishes of one 8 KiB retained QoS 1 message to the N live
            subscribers, each waited for until every subscriber has it.
  late      N fresh clients connect, subscribe and receive that retained
            message (a fleet coming back after an outage).

The figure that compares the brokers is the CPU time the BROKER PROCESS used
for each workload, read before and after it (and a 0.2 s settle): utime +
stime from /proc/<pid>/stat (all threads; clock ticks, 10 ms at 100 Hz, so
the fan-out is summed over K messages), and the same time on CPU from
/proc/<pid>/task/*/schedstat in nanoseconds, which the embedded / Mosquitto
ratio uses. The load generator uses more CPU than either broker, so wall
times mostly measure it: they are shown as secondary information, with the
generator's own CPU beside them. Broker memory per connected client is
VmRSS after the connect workload minus before.

Each figure is shown as min / median / max over the rounds; the CPU ratio is
taken within each pair of rounds (embedded round i against Mosquitto round
i). No targets: figures for docs/brokers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server"):
    sys.path.insert(0, str(REPO / _sub))

from trustfleet_server.broker import AioClient  # noqa: E402
from trustfleet_server.broker.aioclient import NotConnected  # noqa: E402
from trustfleet_server.broker.mosquitto import (  # noqa: E402
    MosquittoError,
    PrivateMosquitto,
    free_port,
    start_process,
    stop_process,
)

PAYLOAD = os.urandom(8192)
FLEET = "tf/bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 0.2  # after a workload, before reading the broker's CPU: acks still in flight land


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """utime + stime of process `pid` (every thread), in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_s(pid: int) -> float:
    """Time on CPU of every thread of `pid`, in seconds, from /proc/<pid>/task/*/schedstat (ns)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                open(f"/proc/{pid}/task/{task}/schedstat") as fh:
            total += int(fh.read().split()[0])
    return total / 1e9


@contextlib.contextmanager
def embedded_broker(clients: int):
    """The embedded broker with room for both fleets (its default cap is 10,000 connections)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "device"), str(REPO / "server"), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        proc = start_process(
            [sys.executable, "-m", "trustfleet_server.cli", "broker", "run", "--port", str(port),
             "--max-connections", str(max(10000, 2 * clients + 100))],
            log=Path(tmp) / "embedded.log", listens=[("127.0.0.1", port)], name="embedded broker", env=env)
        try:
            yield port, proc.pid
        finally:
            stop_process(proc, timeout=10)


@contextlib.contextmanager
def mosquitto_broker(binary: str):
    """A private Mosquitto: no persistence, anonymous, loopback only, no logging."""
    with PrivateMosquitto(binary=binary, extra=["log_dest none", "max_keepalive 65535"]) as broker:
        yield broker.port, broker.proc.pid


def mosquitto_version(binary: str) -> str:
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "mosquitto"


class Fleet:
    """N AioClients counting how many have received the bundle."""

    def __init__(self, port: int, count: int, tag: str):
        self.port = port
        self.count = count
        self.received = 0
        self.done: asyncio.Event | None = None
        self.clients = [
            AioClient(f"bench-{tag}-{i}", "127.0.0.1", port, keepalive=300, timeout=60,
                      on_message=self._on_message)
            for i in range(count)]

    def _on_message(self, topic, payload, retain):
        if topic == f"{FLEET}/bundle" and len(payload) == len(PAYLOAD):
            self.received += 1
            if self.received >= self.count and self.done is not None:
                self.done.set()

    def expect(self) -> asyncio.Event:
        self.received = 0
        self.done = asyncio.Event()
        return self.done

    async def connect_and_subscribe(self, concurrency: int = 200) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int, client: AioClient):
            async with gate:
                await client.connect()
                await client.subscribe([(f"{FLEET}/bundle", 1),
                                        (f"{FLEET}/bundle/group/g{index % 10}", 1),
                                        (f"{FLEET}/root/+", 1)])

        await asyncio.gather(*(one(i, c) for i, c in enumerate(self.clients)))

    async def close(self) -> None:
        await asyncio.gather(*(c.disconnect() for c in self.clients), return_exceptions=True)


class Meter:
    """Wall time, broker CPU and generator CPU over one workload."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        self.cpu0 = cpu_s(self.pid)
        self.sched0 = sched_s(self.pid)
        self.gen0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    async def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        await asyncio.sleep(SETTLE_S)
        return {"wall_ms": wall * 1e3, "broker_cpu_ms": (cpu_s(self.pid) - self.cpu0) * 1e3,
                "broker_sched_ms": (sched_s(self.pid) - self.sched0) * 1e3,
                "generator_cpu_ms": (time.process_time() - self.gen0) * 1e3}

    def __exit__(self, *exc):
        return False


async def measure(port: int, pid: int, clients: int, fanouts: int) -> dict:
    result: dict = {}
    pub = AioClient("bench-publisher", "127.0.0.1", port, timeout=60)
    await pub.connect()
    await pub.publish(f"{FLEET}/bundle", b"", retain=True)          # start clean
    await asyncio.sleep(SETTLE_S)
    base_rss = rss_kib(pid)

    fleet = Fleet(port, clients, "live")
    with Meter(pid) as m:
        await fleet.connect_and_subscribe()
        result["connect"] = await m.stop()
    result["rss_per_client_kib"] = (rss_kib(pid) - base_rss) / clients

    walls = []
    with Meter(pid) as m:
        for _ in range(fanouts):
            done = fleet.expect()
            started = time.perf_counter()
            await pub.publish(f"{FLEET}/bundle", PAYLOAD, retain=True)
            await asyncio.wait_for(done.wait(), 60)
            walls.append((time.perf_counter() - started) * 1e3)
        total = await m.stop()
    # Per message: the broker CPU and generator CPU of all K fan-outs, divided by K.
    result["fanout"] = {"wall_ms": statistics.median(walls), "wall_ms_worst": max(walls),
                        "broker_cpu_ms": total["broker_cpu_ms"] / fanouts,
                        "broker_sched_ms": total["broker_sched_ms"] / fanouts,
                        "generator_cpu_ms": total["generator_cpu_ms"] / fanouts}

    late = Fleet(port, clients, "late")
    done = late.expect()
    with Meter(pid) as m:
        await late.connect_and_subscribe()
        await asyncio.wait_for(done.wait(), 60)
        result["late"] = await m.stop()

    await late.close()
    await fleet.close()
    await pub.publish(f"{FLEET}/bundle", b"", retain=True)
    await pub.disconnect()
    return result


WORKLOADS = [
    ("connect", "connect + subscribe (3 filters), N clients"),
    ("fanout", "fan-out of one 8 KiB retained QoS 1 message to N"),
    ("late", "N late clients: connect + subscribe + retained"),
]


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "runs": list(values)}


def summarise(rounds: dict[str, list[dict]]) -> dict:
    out: dict = {}
    for name, runs in rounds.items():
        b: dict = {}
        for key, _ in WORKLOADS:
            for figure in ("broker_cpu_ms", "broker_sched_ms", "wall_ms", "generator_cpu_ms"):
                b[f"{key}_{figure}"] = spread([r[key][figure] for r in runs])
        b["fanout_wall_ms_worst"] = spread([r["fanout"]["wall_ms_worst"] for r in runs])
        b["rss_per_client_kib"] = spread([r["rss_per_client_kib"] for r in runs])
        out[name] = b
    if "embedded" in rounds and "mosquitto" in rounds:
        pairs = list(zip(rounds["embedded"], rounds["mosquitto"], strict=True))
        out["cpu_ratio_embedded_vs_mosquitto"] = {
            key: spread([e[key]["broker_sched_ms"] / m[key]["broker_sched_ms"] for e, m in pairs])
            for key, _ in WORKLOADS}
    return out


def cell(sp: dict, fmt: str) -> str:
    return f"{fmt.format(sp['median'])} ({fmt.format(sp['min'])}-{fmt.format(sp['max'])})"


def print_table(report: dict) -> None:
    s, notes = report["summary"], report["notes"]
    names = [n for n in ("embedded", "mosquitto") if n in s]
    print(f"MQTT brokers, {report['clients']} clients, {report['rounds']} rounds per broker"
          f" (alternating), {report['fanouts']} fan-outs per round, 8 KiB payload, loopback,"
          f" {report['cpus']} CPUs, Python {report['python']}")
    print(f"Mosquitto: {notes['mosquitto']}")
    print("cells: median (min-max) over the rounds")
    width = 56

    def line(label, key, fmt):
        print(f"  {label:{width - 2}}" + "".join(f"{cell(s[n][key], fmt):>26}" for n in names))

    print(f"{'':{width}}" + "".join(f"{n:>26}" for n in names))
    print("broker process CPU per workload, ms: utime+stime from /proc/<pid>/stat"
          f" ({1000 // CLK_TCK} ms ticks), then schedstat (ns)")
    for key, label in WORKLOADS:
        one = " (per message)" if key == "fanout" else ""
        line(label + one, key + "_broker_cpu_ms", "{:,.0f}" if key != "fanout" else "{:,.1f}")
        line("  same from schedstat", key + "_broker_sched_ms", "{:,.1f}")
    if "cpu_ratio_embedded_vs_mosquitto" in s:
        r = s["cpu_ratio_embedded_vs_mosquitto"]
        print("embedded / Mosquitto broker CPU (schedstat), within each pair of rounds:")
        print("  " + "; ".join(f"{key} {cell(r[key], '{:.2f}')}x" for key, _ in WORKLOADS))
    print("secondary: wall time, ms (bounded by the load generator), and the generator's own CPU meanwhile")
    for key, label in WORKLOADS:
        line("wall: " + label, key + "_wall_ms", "{:,.1f}")
        line("  load generator CPU", key + "_generator_cpu_ms", "{:,.1f}")
    line("wall: fan-out, worst of the round", "fanout_wall_ms_worst", "{:,.1f}")
    print(f"{'broker memory per connected client, KiB':{width}}"
          + "".join(f"{cell(s[n]['rss_per_client_kib'], '{:,.1f}'):>26}" for n in names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="200 clients, 3 rounds, 5 fan-outs")
    parser.add_argument("--clients", type=int, default=None, help="clients per fleet (1000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per broker, at least 3 (5; --quick 3)")
    parser.add_argument("--fanouts", type=int, default=None, help="fan-out messages per round (10)")
    args = parser.parse_args()
    clients = args.clients or (200 if args.quick else 1000)
    rounds = args.rounds or (3 if args.quick else 5)
    fanouts = args.fanouts or (5 if args.quick else 10)
    if clients < 1 or rounds < 3 or fanouts < 1:
        parser.error("--clients and --fanouts must be at least 1, --rounds at least 3")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * clients + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * clients + 1000), hard))

    notes: dict = {}
    brokers = {"embedded": lambda: embedded_broker(clients)}
    binary = shutil.which("mosquitto") or next(
        (c for c in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(c)), None)
    if binary:
        notes["mosquitto"] = mosquitto_version(binary)
        brokers["mosquitto"] = lambda: mosquitto_broker(binary)
    else:
        notes["mosquitto"] = "not measured (no mosquitto binary on PATH or in /usr/sbin)"

    per_round: dict[str, list[dict]] = {name: [] for name in brokers}
    for i in range(rounds):
        for name, start in brokers.items():
            try:
                with start() as (port, pid):
                    per_round[name].append(asyncio.run(measure(port, pid, clients, fanouts)))
            except (TimeoutError, OSError, MosquittoError, NotConnected) as exc:
                print(f"bench_broker: {name} broker, round {i + 1}: {exc}", file=sys.stderr)
                return 1

    report = {
        "clients": clients, "rounds": rounds, "fanouts": fanouts, "payload_bytes": len(PAYLOAD),
        "python": platform.python_version(), "cpus": os.cpu_count(), "clock_ticks_per_s": CLK_TCK,
        "summary": summarise(per_round), "per_round": per_round, "notes": notes,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
