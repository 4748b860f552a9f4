"""Figures for `trustfleet serve` while one device floods it (issue 10 finding 8).

Usage: .venv/bin/python benchmarks/bench_serve_flood.py [--json] [--quick] [--runs R] [--seconds S]

Each run: a private Mosquitto with exactly the config `trustfleet broker-config`
writes (dynamic security plugin, per-device passwords), a real `trustfleet serve`
process on a fresh SQLite store, and flooding devices in processes of their own
(tests/support/flooder.py: QoS 0 statuses and reports as fast as the socket
takes them, with the device's own credentials). Per run:

    during     seconds from a normal device's retained status, sent as soon as serve
               logs its first drop from a status+report flood (before the fence),
               to its row in the store (polled every 10 ms; TIMEOUT when it did not
               land within 30 s)
    after      the same for a status sent once serve has fenced the flooder
    fence      seconds from starting the flooder's process to serve's fence of it in the store
    during_nofence
               the same with fencing off (--fence-for 0), sent 1 s into the flood
    reports    RSS growth (MB) of serve under a report flood of S seconds (fencing off)
    big        RSS growth (MB) under a flood of 500 KB statuses for S seconds (fencing off)

Each figure is min / median / max of R runs (default 3). No targets, no asserts.
Setting PYTHONPATH to an older checkout's server/ measures that code instead
(it has no fencing: `after` and `fence` are then TIMEOUT).
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

from support import flooder  # noqa: E402
from support.brokers import free_port  # noqa: E402
from support.fleetkit import Repo  # noqa: E402
from trustfleet_device import topics  # noqa: E402
from trustfleet_server import cli  # noqa: E402
from trustfleet_server.broker.mosquitto import PrivateMosquitto, mosquitto_binary  # noqa: E402

TRUSTFLEET = Path(sys.executable).with_name("trustfleet")
TIMEOUT = 30.0
FLOODERS = ["flood-1", "flood-2", "flood-3", "flood-4"]
NORMALS = ["normal-1", "normal-2", "normal-3"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Fleet:
    """broker-config output run by a private Mosquitto, and a serve process on it."""

    def __init__(self, work: Path, fence_for: str) -> None:
        self.repo = Repo(fleet=f"bench{os.getpid()}x{int(time.time() * 1000) % 100000}", now=int(time.time()))
        out = work / "broker"
        args = [a for d in FLOODERS + NORMALS for a in ("--device", d)]
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                cli.main(["broker-config", "--out", str(out), "--fleet", self.repo.fleet, *args,
                          "--port", str(free_port()), "--no-persistence"])
            finally:
                sys.stdout = stdout
        self.secrets = {i["username"]: i["password"]
                        for i in json.loads((out / "secrets.json").read_text())["identities"]}
        self.broker = PrivateMosquitto(config=(out / "mosquitto.conf").read_text(),
                                       workdir=work / "mosquitto").start()
        (work / "root.cose").write_bytes(self.repo.root_raw)
        self.db_path = work / "fleet.db"
        url = (f"mqtt://trustfleet-server:{self.secrets['trustfleet-server']}@"
               f"{self.broker.host}:{self.broker.port}")
        self.log = work / "serve.log"
        with open(self.log, "ab") as log:  # serve's stderr, for a look when a figure is odd
            self.serve = subprocess.Popen(
                [str(TRUSTFLEET), "serve", "--broker", url, "--fleet", self.repo.fleet,
                 "--root", str(work / "root.cose"), "--db", str(self.db_path), "--step-every", "1s",
                 "--fence-for", fence_for],
                stdout=subprocess.DEVNULL, stderr=log)
        time.sleep(2.5)  # connected and past the retained-status read

    def flood(self, device: str, kinds: str = "status,report", pad: int = 0) -> subprocess.Popen:
        b = self.broker
        return subprocess.Popen(
            [sys.executable, str(Path(flooder.__file__)), b.host, str(b.port), self.repo.fleet, device,
             "--username", device, "--password", self.secrets[device],
             "--client-id", f"tf-{self.repo.fleet}-{device}", "--kinds", kinds, "--pad", str(pad)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status_latency(self, device: str) -> float:
        """Seconds from the device's retained status to its row; TIMEOUT if it never came."""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tf-{self.repo.fleet}-{device}",
                        protocol=mqtt.MQTTv311)
        c.username_pw_set(device, self.secrets[device])
        c.connect(self.broker.host, self.broker.port, 30)
        c.loop_start()
        body = {"device": device, "fleet": self.repo.fleet, "state": "ok", "version": 1, "seq": 1}
        t0 = time.monotonic()
        c.publish(topics.status(self.repo.fleet, device), json.dumps(body), qos=1, retain=True).wait_for_publish(10)
        while not self.has(
                "SELECT 1 FROM tf_devices WHERE device_id = ?", device) and time.monotonic() - t0 < TIMEOUT:
            time.sleep(0.01)
        landed = time.monotonic() - t0
        c.loop_stop()
        c.disconnect()
        return landed if landed < TIMEOUT else TIMEOUT

    def wait_flooded(self, device: str) -> None:
        """Until serve logs its first drop from `device`: the flood has reached serve."""
        end = time.monotonic() + TIMEOUT
        while f"from device {device}:".encode() not in self.log.read_bytes() and time.monotonic() < end:
            time.sleep(0.002)

    def has(self, sql: str, *params: str) -> bool:
        with sqlite3.connect(self.db_path, timeout=30) as con:
            return con.execute(sql, params).fetchone() is not None

    def fenced(self, device: str) -> bool:
        return self.has("SELECT 1 FROM tf_device_events WHERE device_id = ? AND action = 'fence'", device)

    def close(self) -> None:
        self.serve.terminate()
        try:
            self.serve.wait(30)
        except subprocess.TimeoutExpired:
            self.serve.kill()
            self.serve.wait(10)
        self.broker.stop()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def one_run(seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Fencing on (the default): the status during the flood, the fence, a status after it.
        fleet = Fleet(Path(tmp) / "fenced", "600")
        try:
            fenced_at: list[float] = []

            def watch(t0: float) -> None:
                while not fleet.fenced("flood-1") and time.monotonic() - t0 < TIMEOUT:
                    time.sleep(0.01)
                fenced_at.append(min(time.monotonic() - t0, TIMEOUT))

            watcher = threading.Thread(target=watch, args=(time.monotonic(),), daemon=True)
            flood = fleet.flood("flood-1")
            watcher.start()
            fleet.wait_flooded("flood-1")
            out["during"] = fleet.status_latency("normal-1")
            watcher.join(TIMEOUT + 5)
            out["fence"] = fenced_at[0] if fenced_at else TIMEOUT
            out["after"] = fleet.status_latency("normal-2")
            stop(flood)
        finally:
            fleet.close()
        # Fencing off: what serve's own limits bound.
        fleet = Fleet(Path(tmp) / "unfenced", "0")
        try:
            flood = fleet.flood("flood-1")
            fleet.wait_flooded("flood-1")
            time.sleep(1.0)  # well into the flood: nothing stops it here
            out["during_nofence"] = fleet.status_latency("normal-1")
            stop(flood)
            time.sleep(2.0)
            for device, kinds, pad, key in (("flood-2", "report", 0, "reports"),
                                            ("flood-3", "status", 500 * 1024, "big")):
                base = peak = rss_mb(fleet.serve.pid)
                flood = fleet.flood(device, kinds, pad)
                for length, then in ((seconds, flood), (3.0, None)):  # the flood, then 3 s to settle
                    end = time.monotonic() + length
                    while time.monotonic() < end:
                        peak = max(peak, rss_mb(fleet.serve.pid))
                        time.sleep(0.05)
                    if then is not None:
                        stop(then)
                out[key] = peak - base
        finally:
            fleet.close()
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
    units = {"during": "s", "after": "s", "fence": "s", "during_nofence": "s", "reports": "MB", "big": "MB"}
    print(f"trustfleet serve under a one-device flood: {len(runs)} runs, {seconds:g} s RSS floods "
          f"(latencies of {TIMEOUT:g} mean the status did not land within {TIMEOUT:g} s)")
    print(f"{'figure':<16}{'min':>12}{'median':>12}{'max':>12}")
    for k, f in figures.items():
        print(f"{k:<16}{f['min']:>12.3f}{f['median']:>12.3f}{f['max']:>12.3f}  {units[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
