"""Figures for `trustfleet serve` after a broker kill -9: how long until the fleet's documents are back.

Usage: .venv/bin/python benchmarks/bench_serve_restore.py [--json] [--quick] [--runs R] [--devices N]

A private Mosquitto without persistence (a kill -9 loses every retained
message), a real FleetServer on a thread with a timestamp key and the root
chain v1, v2, root v2 and the fleet bundle v2 retained. (The wave topics of
a running rollout are restored the same way: tests/test_serve_resilience.py.)
The devices are offline during the kill: N of them connect afterwards and
count as converged when they hold root v2, the fleet bundle and a timestamp.
Per run, from the kill -9:

    broker   the restarted Mosquitto accepts connections again
    serve    serve is connected again
    docs     a new subscriber finds every owned document retained again
    devices  every offline device that connects then holds its documents (checked one
             after another on new connections: an upper bound)

Each figure is min / median / max of R runs (default 3). No targets, no asserts.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
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
from trustfleet_server import mqtturl  # noqa: E402
from trustfleet_server.broker.mosquitto import PrivateMosquitto, mosquitto_binary, port_open  # noqa: E402
from trustfleet_server.fleet import db as fleetdb  # noqa: E402
from trustfleet_server.serve import server  # noqa: E402
from trustfleet_server.serve.link import publish_retained  # noqa: E402

TIMEOUT = 60.0


def wait(predicate, what: str, timeout: float = TIMEOUT) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def retained(host: str, port: int, names: list[str], timeout: float = 1.0) -> dict[str, bytes]:
    """What a new subscriber gets on `names` within `timeout` (one connection)."""
    got: dict[str, bytes] = {}
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

    def on_connect(cl, ud, flags, rc, props):
        cl.subscribe([(t, 1) for t in names])

    def on_message(cl, ud, msg):
        if msg.payload:
            got[msg.topic] = bytes(msg.payload)
        if len(got) == len(names):
            done.set()
    c.on_connect, c.on_message = on_connect, on_message
    try:
        c.connect(host, port, 30)
    except OSError:
        return got
    c.loop_start()
    done.wait(timeout)
    c.disconnect()
    c.loop_stop()
    return got


def one_run(workdir: Path, n_devices: int) -> dict[str, float]:
    repo = Repo(fleet=f"bench-{int(time.time() * 1000) % 10**9}", now=int(time.time()))
    broker = PrivateMosquitto(workdir=workdir / "mosquitto").start()
    f = repo.fleet
    url = mqtturl.parse(broker.url)
    root1 = repo.root_raw
    root2 = repo.rotate("bundle")
    bundle2 = repo.bundle(2)
    publish_retained(url, [(topics.root(f, 2), root2), (topics.bundle(f), bundle2)])
    db = fleetdb.open_db(workdir / "fleet.db")
    srv = server.FleetServer(url, f, [root1, root2], db, repo.keys["timestamp"][0],
                             timestamp_every=300, step_every=0.2)
    thread = threading.Thread(target=lambda: srv.run(duration=600), daemon=True)
    thread.start()
    try:
        wait(lambda: srv.synced, "serve to connect")
        owned = [topics.root(f, 2), topics.bundle(f), topics.timestamp(f)]
        wait(lambda: topics.timestamp(f) in retained(broker.host, broker.port, [topics.timestamp(f)]),
             "the first timestamp")
        connects = srv.stats.connects
        devices = [f"dev-{i:04d}" for i in range(n_devices)]
        t0 = time.monotonic()
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(10)
        broker.start()
        t_broker = wait(lambda: port_open(broker.host, broker.port), "the broker")
        t_serve = wait(lambda: srv.stats.connects > connects, "serve to reconnect")
        t_docs = wait(lambda: len(retained(broker.host, broker.port, owned, 0.5)) == len(owned),
                      "the documents")

        t_devices = max(wait(lambda: len(retained(broker.host, broker.port, owned, 0.5)) == len(owned),
                             f"device {n}") for n in devices)
        return {"broker": t_broker - t0, "serve": t_serve - t0, "docs": t_docs - t0,
                "devices": t_devices - t0}
    finally:
        srv.stop()
        thread.join(20)
        db.close()
        broker.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 runs, 5 devices")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--devices", type=int, default=20)
    args = ap.parse_args()
    if mosquitto_binary() is None:
        print("Mosquitto: not measured (no mosquitto binary)")
        return 0
    n = 5 if args.quick else args.devices
    runs = []
    for _ in range(max(3, args.runs)):
        with tempfile.TemporaryDirectory() as d:
            runs.append(one_run(Path(d), n))
    out = {k: {"min": min(r[k] for r in runs), "median": statistics.median(r[k] for r in runs),
               "max": max(r[k] for r in runs)} for k in runs[0]}
    if args.json:
        print(json.dumps({"runs": len(runs), "devices": n, "seconds_from_kill": out}, indent=2))
    else:
        print(f"broker kill -9, no persistence, {n} offline devices, {len(runs)} runs (s from the kill)")
        for k, v in out.items():
            print(f"  {k:8} min {v['min']:6.2f}  median {v['median']:6.2f}  max {v['max']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
