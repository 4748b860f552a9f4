"""Benchmark the embedded MQTT broker against Mosquitto, in the same run.

Usage: .venv/bin/python benchmarks/bench_broker.py [--json] [--quick] [--clients N]

Each broker runs in its own process on a free loopback port: the embedded
one as `trustfleet broker run`, Mosquitto from a generated config (no
persistence, anonymous, loopback only) when a `mosquitto` binary is found.
One asyncio load generator in this process (AioClient, one per simulated
device) measures, per broker:

  connect   N clients connect and subscribe to three filters, as a device
            does (fleet bundle, its group's bundle, root/+); rate per second.
  fan-out   one 8 KiB retained QoS 1 message to the N live subscribers: time
            from the publish call until every subscriber has it (median and
            worst of several rounds).
  late      N fresh clients connect, subscribe and receive that retained
            message (a fleet coming back after an outage); time for all.
  memory    broker resident memory added per connected, subscribed client.

No targets and no timed asserts: figures are for docs/brokers.md and for
spotting regressions. Both brokers face the same generator, so a slow
machine slows both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
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
from trustfleet_server.broker.mosquitto import (  # noqa: E402
    PrivateMosquitto,
    free_port,
    start_process,
    stop_process,
)

PAYLOAD = os.urandom(8192)
FLEET = "tf/bench"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def embedded_broker():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "device"), str(REPO / "server"), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_process(
            [sys.executable, "-m", "trustfleet_server.cli", "broker", "run", "--port", str(port)],
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


async def measure(port: int, pid: int, clients: int, rounds: int) -> dict:
    result: dict = {}
    base_rss = rss_kib(pid)
    pub = AioClient("bench-publisher", "127.0.0.1", port, timeout=60)
    await pub.connect()
    await pub.publish(f"{FLEET}/bundle", b"", retain=True)          # start clean

    fleet = Fleet(port, clients, "live")
    started = time.perf_counter()
    await fleet.connect_and_subscribe()
    elapsed = time.perf_counter() - started
    result["connect_subscribe_per_s"] = clients / elapsed
    await asyncio.sleep(0.5)
    result["rss_per_client_kib"] = (rss_kib(pid) - base_rss) / clients

    times = []
    for _ in range(rounds):
        done = fleet.expect()
        started = time.perf_counter()
        await pub.publish(f"{FLEET}/bundle", PAYLOAD, retain=True)
        await asyncio.wait_for(done.wait(), 60)
        times.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
    result["fanout_ms_median"] = statistics.median(times) * 1000
    result["fanout_ms_worst"] = max(times) * 1000

    late = Fleet(port, clients, "late")
    done = late.expect()
    started = time.perf_counter()
    await late.connect_and_subscribe()
    await asyncio.wait_for(done.wait(), 60)
    result["late_retained_ms"] = (time.perf_counter() - started) * 1000

    await late.close()
    await fleet.close()
    await pub.publish(f"{FLEET}/bundle", b"", retain=True)
    await pub.disconnect()
    return result


ROWS = [
    ("connect_subscribe_per_s", "connect + subscribe (3 filters)", "/s", "{:,.0f}"),
    ("fanout_ms_median", "fan-out 8 KiB retained QoS 1, median", "ms", "{:,.1f}"),
    ("fanout_ms_worst", "fan-out 8 KiB retained QoS 1, worst", "ms", "{:,.1f}"),
    ("late_retained_ms", "N late clients: connect+subscribe+retained", "ms", "{:,.0f}"),
    ("rss_per_client_kib", "broker memory per connected client", "KiB", "{:,.1f}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="200 clients, 3 rounds")
    parser.add_argument("--clients", type=int, default=None, help="clients per fleet (1000)")
    args = parser.parse_args()
    clients = args.clients or (200 if args.quick else 1000)
    rounds = 3 if args.quick else 7

    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * clients + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * clients + 1000), hard))

    results: dict = {}
    notes: dict = {}
    with embedded_broker() as (port, pid):
        results["embedded"] = asyncio.run(measure(port, pid, clients, rounds))
    binary = shutil.which("mosquitto") or next(
        (c for c in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(c)),
        None)
    if binary:
        notes["mosquitto"] = mosquitto_version(binary)
        with mosquitto_broker(binary) as (port, pid):
            results["mosquitto"] = asyncio.run(measure(port, pid, clients, rounds))
    else:
        notes["mosquitto"] = "not measured (no mosquitto binary on PATH or in /usr/sbin)"

    report = {
        "clients": clients, "rounds": rounds, "payload_bytes": len(PAYLOAD),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "results": results, "notes": notes,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    names = list(results)
    print(f"MQTT brokers, {clients} clients, {rounds} fan-out rounds, 8 KiB payload, "
          f"loopback, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"Mosquitto: {notes['mosquitto']}")
    width = max(len(label) for _, label, _, _ in ROWS) + 6
    print(f"{'':{width}}" + "".join(f"{n:>14}" for n in names))
    for key, label, unit, fmt in ROWS:
        cells = "".join(f"{fmt.format(results[n][key]):>14}" for n in names)
        print(f"{label + ' (' + unit + ')':{width}}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
