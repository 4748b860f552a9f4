"""Figures for `trustfleet simulate` faults: re-convergence after a broker kill -9, loss and latency.

Usage: .venv/bin/python benchmarks/bench_sim_faults.py [--json] [--quick] [--devices N] [--runs R]

(a) Broker kill -9 at t0 + 0.3 s, on the embedded broker and on a private
    Mosquitto. Figure: seconds from the kill to convergence (every device back
    on a new connection and settled on v2). "all online": the whole fleet was
    connected; "offline": a fifth of the fleet is powered off until t0 + 0.5 s
    (0.2 s after the kill, the floor of this figure) and the simulator
    publishes the bundle again once the broker is back (what `serve` does for
    what it owns), since the kill lost the retained copy.
(b) The same fleet without faults, then with 5% message loss and 50 ms
    latency each way: convergence from the first arrival of v2 (t0).

Each figure is min / median / max of R runs (default 3). No targets, no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server", "tests"):
    sys.path.insert(0, str(REPO / _sub))

from cryptography import x509  # noqa: E402

from support.fleetkit import Repo, compact_anchor, pin, pinset  # noqa: E402
from trustfleet_device import topics  # noqa: E402
from trustfleet_server.broker.mosquitto import mosquitto_binary  # noqa: E402
from trustfleet_server.sim.brokers import open_broker  # noqa: E402
from trustfleet_server.sim.config import SAMPLE_HOST, Faults, SimConfig, sample_file  # noqa: E402
from trustfleet_server.sim.simulator import Simulation  # noqa: E402

DAY = 86_400


def bundles(name: str) -> tuple[bytes, bytes, bytes]:
    now = int(time.time())
    repo = Repo(fleet=name, now=now)
    load = lambda n: x509.load_pem_x509_certificate(sample_file(n))  # noqa: E731
    root_ca, backup_ca = load("demo-fleet-root-ca.pem"), load("demo-fleet-backup-ca.pem")
    ps = pinset(SAMPLE_HOST, [pin(root_ca), pin(backup_ca)], expires=now + 180 * DAY)
    b = [repo.bundle(v, anchors=[compact_anchor(root_ca)], pinsets=[ps]) for v in (1, 2)]
    return repo.root_raw, b[0], b[1]


def one(kind: str, devices: int, faults: Faults, run: int) -> dict:
    name = f"bench-simf-{time.time_ns() % 10**9}-{run}"
    root, v1, v2 = bundles(name)
    handle = open_broker(kind)
    try:
        cfg = SimConfig(devices=devices, broker=handle.url, fleet=name, root_raw=root, faults=faults,
                        initial=v1, seed=run, until_version=2)
        report = asyncio.run(Simulation(cfg, handle).run(120, (topics.bundle(name), v2)))
    finally:
        handle.stop()
    if not report.converged:
        raise SystemExit(f"bench: {kind} run {run} did not converge: {report.why['reason']}")
    restart = report.faults.get("broker_restart", {})
    return {"convergence_s": report.convergence_s, "reconverged_s": restart.get("reconverged_s"),
            "lost": report.faults.get("loss", {}).get("lost")}


def spread(values: list[float]) -> dict:
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="20 devices")
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    devices = 20 if args.quick else args.devices
    kinds = ["embedded"] + (["mosquitto"] if mosquitto_binary() else [])
    kills = {"all online": Faults(broker_restart_at=0.3, broker_restart_signal="kill"),
             "offline": Faults(broker_restart_at=0.3, broker_restart_signal="kill", republish=True,
                               offline=0.2, offline_for=0.5)}
    out: dict = {"devices": devices, "runs": args.runs}
    for kind in kinds:
        for label, kill in kills.items():
            rows = [one(kind, devices, kill, r) for r in range(args.runs)]
            out[f"kill9_reconverge_s[{kind}, {label}]"] = spread([r["reconverged_s"] for r in rows])
    for label, faults in (("no_faults", Faults()), ("loss5_latency50ms", Faults(loss=0.05, latency=0.05))):
        rows = [one("embedded", devices, faults, r) for r in range(args.runs)]
        out[f"convergence_s[{label}]"] = spread([r["convergence_s"] for r in rows])
        if faults.loss:
            out["messages_lost_per_run"] = spread([r["lost"] for r in rows])
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{devices} devices, {args.runs} runs each (min / median / max)")
        for k, v in out.items():
            if isinstance(v, dict):
                print(f"  {k:44s} {v['min']:8.3f} {v['median']:8.3f} {v['max']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
