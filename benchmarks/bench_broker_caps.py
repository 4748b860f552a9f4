"""Figures for the embedded broker's caps: how much a hostile client can make it hold.

Usage: .venv/bin/python benchmarks/bench_broker_caps.py [--json] [--quick] [--runs R]

Each run starts `trustfleet broker run` (default caps) as its own process and
reads its resident memory (VmRSS) from /proc before and after two floods over
real sockets, the ones issue 10 measured:

    partial   200 clients, each sending a PUBLISH that announces 1 MB and
              stops 1 KB short (cap: --max-partial-bytes, 64 MiB)
    retained  300 retained messages of 1 MB (cap: --max-retained-bytes, 64 MiB)

and counts the clients the broker closed. Each figure is min / median / max
of R runs (default 3). Linux only (/proc). No targets, no asserts.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server"):
    sys.path.insert(0, str(REPO / _sub))

from trustfleet_server.broker import packets as p  # noqa: E402

MB = 1_000_000


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_broker() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "trustfleet_server.cli", "broker", "run",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=REPO, env={"PYTHONPATH": f"{REPO / 'server'}:{REPO / 'device'}"})
    line = proc.stdout.readline()
    return proc, int(line.split("mqtt://")[1].split()[0].rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(p.Connect(f"bench-{id(sock)}").encode())
    sock.recv(4)
    return sock


def closed(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except (ConnectionResetError, BrokenPipeError):
        return False


def settle(pid: int) -> int:
    """RSS once it stops growing (the broker has read what was sent)."""
    last = -1
    for _ in range(50):
        now = rss(pid)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def one_run(clients: int, retained: int) -> dict:
    proc, port = start_broker()
    try:
        base = settle(proc.pid)
        head = b"\x30" + p.encode_varint(MB) + p.encode_str("big")
        socks = []
        for _ in range(clients):
            sock = connect(port)
            send(sock, head + b"x" * (MB - 1000 - len(head)))
            socks.append(sock)
        partial = settle(proc.pid) - base
        partial_closed = sum(closed(s) for s in socks)
        for sock in socks:
            sock.close()
        time.sleep(0.5)
        base2 = settle(proc.pid)
        refused = 0
        pub = connect(port)
        for index in range(retained):
            if not send(pub, p.Publish(f"r/{index}", b"y" * MB, 0, True).encode(4)) or closed(pub):
                refused += 1
                pub.close()
                pub = connect(port)
        pub.close()
        kept = settle(proc.pid) - base2
        return {"partial_rss_growth_mb": partial / 2**20, "partial_clients_closed": partial_closed,
                "retained_rss_growth_mb": kept / 2**20, "retained_publishers_closed": refused}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one run, 100 clients, 150 messages")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs, clients, retained = (1, 100, 150) if args.quick else (args.runs, 200, 300)
    results = [one_run(clients, retained) for _ in range(runs)]
    figures = {key: {"min": min(r[key] for r in results),
                     "median": statistics.median(r[key] for r in results),
                     "max": max(r[key] for r in results)} for key in results[0]}
    if args.json:
        print(json.dumps({"runs": runs, "clients": clients, "retained": retained,
                          "figures": figures}))
        return 0
    print(f"embedded broker, default caps, {runs} run(s): {clients} partial 1 MB packets, "
          f"{retained} retained 1 MB messages")
    print(f"{'figure':28} {'min':>8} {'median':>8} {'max':>8}")
    for key, f in figures.items():
        print(f"{key:28} {f['min']:8.1f} {f['median']:8.1f} {f['max']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
