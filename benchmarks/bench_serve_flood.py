"""Figures for `trustfleet serve` while one device floods it (issue 10 finding 8).

Usage: .venv/bin/python benchmarks/bench_serve_flood.py [--json] [--quick] [--runs R] [--seconds S]

A private Mosquitto (no size limit: the flood reaches serve) and a real
`trustfleet serve` process on a fresh SQLite store. One device publishes at
QoS 0 as fast as its socket takes them; per run:

    latency  status flood (small statuses and reports): seconds from a normal
             device's retained status to its row in the store (polled every 10 ms)
    reports  RSS growth (MB) of the serve process under a report flood of S seconds
    big      RSS growth (MB) under a flood of 500 KB statuses for S seconds
    stored   report rows the flooding device left in the store (report flood)

Each figure is min / median / max of R runs (default 3). No targets, no asserts.
Setting PYTHONPATH to an older checkout's server/ measures that code instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server", "tests"):
    sys.path.insert(0, str(REPO / _sub))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from support.fleetkit import Repo  # noqa: E402
from trustfleet_device import topics  # noqa: E402
from trustfleet_server.broker.mosquitto import PrivateMosquitto, mosquitto_binary  # noqa: E402

TRUSTFLEET = Path(sys.executable).with_name("trustfleet")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def status(fleet: str, device: str, seq: int, pad: int = 0) -> bytes:
    body = {"device": device, "fleet": fleet, "state": "ok", "version": 1, "seq": seq}
    if pad:
        body["pad"] = "x" * pad
    return json.dumps(body).encode()


def report(fleet: str, device: str, seq: int) -> bytes:
    return json.dumps({"device": device, "fleet": fleet, "event": "flood", "seq": seq}).encode()


class Flood:
    def __init__(self, host: str, port: int, fleet: str, kinds: tuple[str, ...], pad: int = 0) -> None:
        self.fleet, self.kinds, self.pad = fleet, kinds, pad
        self.stop_ = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{fleet}-flood",
                                  protocol=mqtt.MQTTv311)
        self.client.connect(host, port, 30)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq, f = 0, self.fleet
        big = status(f, "flood-1", 0, self.pad) if self.pad else b""
        while not self.stop_.is_set():
            seq += 1
            info = None
            if "status" in self.kinds:
                info = self.client.publish(topics.status(f, "flood-1"), big or status(f, "flood-1", seq))
            if "report" in self.kinds:
                info = self.client.publish(topics.report(f, "flood-1"), report(f, "flood-1", seq))
            if info is not None and seq % (5 if self.pad else 100) == 0:
                info.wait_for_publish(10)

    def stop(self) -> None:
        self.stop_.set()
        self.thread.join(15)
        self.client.loop_stop()
        self.client.disconnect()


def flood_rows(db_path: Path) -> int:
    """Report rows of the flooding device now in the store (after any retention pruning)."""
    with sqlite3.connect(db_path, timeout=30) as con:
        return con.execute("SELECT COUNT(*) FROM tf_reports WHERE device_id = 'flood-1'").fetchone()[0]


def has_device(db_path: Path, device: str) -> bool:
    with sqlite3.connect(db_path, timeout=30) as con:
        return con.execute("SELECT 1 FROM tf_devices WHERE device_id = ?", (device,)).fetchone() is not None


def one_run(seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = PrivateMosquitto(workdir=work / "mosquitto").start()
        repo = Repo(fleet=f"bench{os.getpid()}x{int(time.time() * 1000) % 100000}", now=int(time.time()))
        (work / "root.cose").write_bytes(repo.root_raw)
        db_path = work / "fleet.db"
        proc = subprocess.Popen([str(TRUSTFLEET), "serve", "--broker", broker.url, "--fleet", repo.fleet,
                                 "--root", str(work / "root.cose"), "--db", str(db_path),
                                 "--step-every", "1s"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.5)  # connected and past the retained-status read
            # (1) a normal status during a status+report flood
            flood = Flood(broker.host, broker.port, repo.fleet, ("status", "report"))
            time.sleep(2.0)
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{repo.fleet}-normal",
                            protocol=mqtt.MQTTv311)
            c.connect(broker.host, broker.port, 30)
            c.loop_start()
            t0 = time.monotonic()
            c.publish(topics.status(repo.fleet, "normal-1"), status(repo.fleet, "normal-1", 1),
                      qos=1, retain=True).wait_for_publish(10)
            while not has_device(db_path, "normal-1") and time.monotonic() - t0 < 120:
                time.sleep(0.01)
            out["latency"] = time.monotonic() - t0
            c.loop_stop()
            c.disconnect()
            flood.stop()
            time.sleep(2.0)
            # (2) report flood: RSS growth and rows stored
            before_rows = flood_rows(db_path)
            for kinds, pad, key in ((("report",), 0, "reports"), (("status",), 500 * 1024, "big")):
                base = peak = rss_mb(proc.pid)
                flood = Flood(broker.host, broker.port, repo.fleet, kinds, pad)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    peak = max(peak, rss_mb(proc.pid))
                    time.sleep(0.05)
                flood.stop()
                settle = time.monotonic() + 3
                while time.monotonic() < settle:
                    peak = max(peak, rss_mb(proc.pid))
                    time.sleep(0.05)
                out[key] = peak - base
                if key == "reports":
                    out["stored"] = flood_rows(db_path) - before_rows
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            broker.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 runs of 4 s floods")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each RSS flood")
    a = ap.parse_args()
    if mosquitto_binary() is None:
        print("mosquitto: not found; nothing measured")
        return 0
    seconds = 4.0 if a.quick else a.seconds
    runs = [one_run(seconds) for _ in range(max(a.runs, 1))]
    figures = {k: {"min": min(r[k] for r in runs), "median": statistics.median(r[k] for r in runs),
                   "max": max(r[k] for r in runs)} for k in runs[0]}
    if a.json:
        print(json.dumps({"runs": len(runs), "seconds": seconds, "figures": figures}))
        return 0
    units = {"latency": "s", "reports": "MB", "big": "MB", "stored": "rows"}
    print(f"trustfleet serve under a one-device flood: {len(runs)} runs, {seconds:g} s RSS floods")
    print(f"{'figure':<10}{'min':>12}{'median':>12}{'max':>12}")
    for k, f in figures.items():
        print(f"{k:<10}{f['min']:>12.3f}{f['median']:>12.3f}{f['max']:>12.3f}  {units[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
