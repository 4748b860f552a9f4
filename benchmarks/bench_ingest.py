"""Benchmark device-status ingest end to end: devices -> Mosquitto -> `trustfleet serve` -> the store.

Usage: .venv/bin/python benchmarks/bench_ingest.py [--json] [--quick] [--pg URL] [--runs N]
                                                  [--devices N] [--per-device K] [--only CONFIG]

Input: K statuses from each of N devices (default 10,000 x 5), built as the
device core builds them (trustfleet_device.status.build and encode: every
field, seq 1..K), published as the device agent publishes them: QoS 1,
retained, on tf/<fleet>/status/<device>, one device's statuses in order.

End to end, one configuration per run, round-robin over the configurations:
  a private Mosquitto (a free port, a temporary config: no queue limit, so
  nothing is dropped, otherwise the broker-config limits); N `trustfleet
  serve` worker processes, each with its own client id, on the shared
  subscription as in production; a fresh store (SQLite file in a temporary
  directory, or a throwaway schema on PostgreSQL, default
  postgresql://postgres@127.0.0.1:5432/test, dropped at the end). Once every
  worker has read the retained statuses, 2 load-generator processes send
  pre-encoded MQTT 3.1.1 PUBLISH packets over raw sockets (no client
  library, so they cost the machine little) and read the PUBACKs. The rate
  is messages / (first publish until the last status is visible in the
  store, polled every 10 ms on a connection of its own). Beside it: CPU
  seconds per second of wall time of the broker, of the serve workers and of
  the load generators (/proc/<pid>/stat over the same interval).
  Configurations: PostgreSQL with 1, 2 and 3 workers, SQLite with 1.

Peers, on the same machine in the same run:
  upsert       the DB's ceiling: the store's own status UPSERT
               (fleet.db._UPSERT_STATUS) by psycopg executemany (sqlite3 for
               SQLite), batches of 2,000 rows built before timing, one
               transaction per batch; no MQTT, no decoding, no validation.
  in-process   for information: FleetDB.ingest_statuses on the payload
               bytes in batches of 2,000 (decode, validate, store: serve's
               work without the broker).
Prints min / median / max of --runs runs (default 3; --quick: 1 round with
fewer devices). Target: >= 20,000 statuses/s end to end, 1 worker, PostgreSQL.
Without Mosquitto or PostgreSQL the script says what it did not measure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server", "tests"):
    sys.path.insert(0, str(REPO / _sub))

from trustfleet_device import status as schema  # noqa: E402
from trustfleet_device import topics  # noqa: E402
from trustfleet_server.broker.mosquitto import PrivateMosquitto, mosquitto_binary  # noqa: E402
from trustfleet_server.fleet import db as fleetdb  # noqa: E402

TARGET = 20_000
BATCH = 2_000
PUBLISHERS = 2
T0 = 1_800_000_000
PG_DEFAULT = os.environ.get("TRUSTFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CONFIGS = ("pg-1", "pg-2", "pg-3", "sqlite-1")
READY_LINE = b"read the retained statuses of fleet"
RUN_TIMEOUT = 120.0
POLL = 0.01


# --------------------------------------------------------------------------- messages


def status_payload(fleet: str, n: int, seq: int) -> tuple[str, bytes]:
    """(device id, JSON bytes) of status `seq` of device n, as the device core encodes it."""
    name = f"sensor-{n:06d}"
    stale = n % 20 == 0
    fields = {
        "device": name, "fleet": fleet, "group": "canary" if n % 50 == 0 else None,
        "state": "stale" if stale else "ok", "version": 7 + seq % 2, "floor": 7,
        "bad": [6] if n % 97 == 0 else [], "last_revert": None,
        "reasons": ["no timestamp newer than 172800 s"] if stale else [],
        "fail_open": ["api.acme.example"] if n % 33 == 0 else [], "root_version": 1,
        "trusted_time": T0 + seq * 60, "last_timestamp": T0 + seq * 60 - 30,
        "agent_version": "0.1.0", "time": T0 + seq * 60, "seq": seq, "event": "committed",
        "detail": f"bundle v{7 + seq % 2}",
    }
    return name, schema.encode(schema.build(fields))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH, QoS 1, retained (as the agent publishes its status)."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + packet_id.to_bytes(2, "big") + payload
    return bytes([0x33]) + _varint(len(body)) + body


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid  # clean session, 60 s
    return b"\x10" + _varint(len(body)) + body


def write_streams(fleet: str, devices: int, per_device: int, workdir: Path) -> list[tuple[Path, int]]:
    """One file of pre-encoded PUBLISH packets per load generator: (path, packets). Devices are
    split between them; each round sends every device's next status, so each device's statuses
    go out in order on one connection."""
    streams = [bytearray() for _ in range(PUBLISHERS)]
    counts = [0] * PUBLISHERS
    for seq in range(1, per_device + 1):
        for n in range(devices):
            name, payload = status_payload(fleet, n, seq)
            p = n % PUBLISHERS
            counts[p] += 1
            streams[p] += publish_packet(topics.status(fleet, name), payload, counts[p] % 65535 + 1)
    out = []
    for i, data in enumerate(streams):
        path = workdir / f"publisher-{i}.bin"
        path.write_bytes(bytes(data))
        out.append((path, counts[i]))
    return out


# A load generator: connect, say "ready", wait for "go", then send the file as fast as the socket
# takes it while reading the PUBACKs (4 bytes each, MQTT 3.1.1); "done" when all are acknowledged.
PUBLISHER = r"""
import select, socket, sys
port, path, count, connect = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
data = memoryview(open(path, "rb").read())
s = socket.create_connection(("127.0.0.1", port))
s.sendall(connect)
ack = b""
while len(ack) < 4:
    ack += s.recv(4 - len(ack))
if ack[3] != 0:
    sys.exit("CONNACK refused: %d" % ack[3])
import time
print("ready %.6f" % time.process_time(), flush=True)
sys.stdin.readline()
s.setblocking(False)
sent = acked = 0
need = 4 * count
while acked < need:
    r, w, _ = select.select([s], [s] if sent < len(data) else [], [], 30)
    if not r and not w:
        sys.exit("stalled: %d of %d bytes sent, %d of %d PUBACK bytes" % (sent, len(data), acked, need))
    if r:
        got = s.recv(1 << 20)
        if not got:
            sys.exit("the broker closed the connection")
        acked += len(got)
    if w:
        try:
            sent += s.send(data[sent:sent + (1 << 18)])
        except BlockingIOError:
            pass
print("done %.6f" % time.process_time(), flush=True)
"""


# --------------------------------------------------------------------------- stores


class PostgresStore:
    def __init__(self, url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        self.url = url
        self.schemas: list[str] = []

    def fresh(self) -> str:
        schema_name = f"tf_bench_{uuid.uuid4().hex[:12]}"
        with self.psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema_name}"')
        self.schemas.append(schema_name)
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}options=-csearch_path%3D{schema_name}"

    def poller(self, target: str):
        conn = self.psycopg.connect(target, autocommit=True)
        return conn, lambda sql, args: conn.execute(sql.replace("?", "%s"), args).fetchone()[0]

    @staticmethod
    def named(target: str, name: str) -> str:
        """The target with an application_name, to find the workers' server processes."""
        return f"{target}&application_name={name}"

    @staticmethod
    def backends(conn, name: str) -> list[int]:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                           (name,)).fetchall()]

    def drop(self) -> None:
        with self.psycopg.connect(self.url, autocommit=True) as c:
            for name in self.schemas:
                c.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        self.schemas.clear()


class SQLiteStore:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def fresh(self) -> str:
        path = str(self.workdir / f"{uuid.uuid4().hex}.db")
        fleetdb.open_db(path).close()  # tables made before the workers start, as serve would
        return path

    def poller(self, target: str):
        conn = sqlite3.connect(target, isolation_level=None)
        return conn, lambda sql, args: conn.execute(sql, args).fetchone()[0]

    @staticmethod
    def named(target: str, name: str) -> str:
        return target

    @staticmethod
    def backends(conn, name: str) -> list[int]:
        return []  # SQLite runs inside serve: its CPU is serve's

    def drop(self) -> None:
        pass


def postgres_or_reason(url: str) -> tuple[PostgresStore | None, str | None]:
    try:
        import psycopg
    except ImportError:
        return None, "psycopg not installed"
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        return None, f"not reachable at {url}: {str(exc).strip().splitlines()[0]}"
    return PostgresStore(url), None


# --------------------------------------------------------------------------- end to end


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_line(proc: subprocess.Popen, want: str, timeout: float) -> float:
    """Wait for the load generator's `want` line; returns the CPU seconds it reports."""
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.split()[:1] == [want]:
            return float(line.split()[1])
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"load generator: no {want!r} (exit {proc.poll()}, last line {line.strip()!r})")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class Load:
    """The fleet of a benchmark run: its root and the load generators' packets, made once."""

    def __init__(self, devices: int, per_device: int, workdir: Path) -> None:
        from support.fleetkit import Repo

        self.fleet = f"b{uuid.uuid4().hex[:8]}"
        self.devices, self.per_device = devices, per_device
        self.root = workdir / "root.cose"
        self.root.write_bytes(Repo(fleet=self.fleet).root_raw)
        self.streams = write_streams(self.fleet, devices, per_device, workdir)


def e2e_run(config: str, store, load: Load, workdir: Path, profile: Path | None = None) -> dict:
    """One end-to-end run of `config` ("pg-2": PostgreSQL, 2 workers) with a fresh broker and
    store: rate and CPU."""
    workers = int(config.split("-")[1])
    fleet, devices, per_device, streams = load.fleet, load.devices, load.per_device, load.streams
    run = f"{fleet}-{uuid.uuid4().hex[:6]}"
    run_dir = workdir / run
    run_dir.mkdir()
    target = store.named(store.fresh(), run)
    broker = PrivateMosquitto(workdir=run_dir, extra=[
        "max_queued_messages 0", "max_inflight_messages 20", "log_dest none"]).start()
    serves: list[subprocess.Popen] = []
    pubs: list[subprocess.Popen] = []
    poll_conn = None
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / s) for s in ("device", "server")))
        logs = []
        for w in range(workers):
            log = run_dir / f"serve-{w}.log"
            logs.append(log)
            prof = ["-m", "cProfile", "-o", str(profile / f"{config}-w{w}-{run}.prof")] if profile else []
            with open(log, "wb") as err:
                serves.append(subprocess.Popen(
                    [sys.executable, *prof, "-m", "trustfleet_server.cli", "serve", "--broker", broker.url,
                     "--fleet", fleet, "--root", str(load.root), "--db", target,
                     "--client-id", f"{run}-w{w}"], stdout=subprocess.DEVNULL, stderr=err, env=env))
        deadline = time.monotonic() + 60
        while not all(READY_LINE in log.read_bytes() for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in serves):
                tail = b"\n".join(log.read_bytes()[-600:] for log in logs).decode(errors="replace")
                raise RuntimeError(f"serve did not start:\n{tail}")
            time.sleep(0.05)
        for i, (path, count) in enumerate(streams):
            pubs.append(subprocess.Popen(
                [sys.executable, "-c", PUBLISHER, str(broker.port), str(path), str(count),
                 connect_packet(f"{run}-load-{i}").hex()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        load_cpu = -sum(_wait_line(p, "ready", 30) for p in pubs)
        poll_conn, count_rows = store.poller(target)
        query = "SELECT COUNT(*) FROM tf_devices WHERE fleet = ? AND seq = ?"
        pids = {"broker": [broker.proc.pid], "serve": [p.pid for p in serves],
                "db": store.backends(poll_conn, run)}
        cpu0 = {k: sum(cpu_seconds(pid) for pid in v) for k, v in pids.items()}
        start = time.perf_counter()
        for p in pubs:
            p.stdin.write("go\n")
            p.stdin.flush()
        while count_rows(query, (fleet, per_device)) < devices:
            if time.perf_counter() - start > RUN_TIMEOUT:
                raise RuntimeError(f"{config}: not every status stored within {RUN_TIMEOUT:.0f} s")
            if any(p.poll() not in (None, 0) for p in pubs + serves):
                raise RuntimeError(f"{config}: a load generator or worker died")
            time.sleep(POLL)
        elapsed = time.perf_counter() - start
        cpu1 = {k: sum(cpu_seconds(pid) for pid in v) for k, v in pids.items()}
        load_cpu += sum(_wait_line(p, "done", 30) for p in pubs)  # they finish before the store
        stored = count_rows("SELECT COUNT(*) FROM tf_devices WHERE fleet = ?", (fleet,))
        if stored != devices:
            raise RuntimeError(f"{config}: {stored} devices stored, expected {devices}")
    finally:
        if poll_conn is not None:
            poll_conn.close()
        _stop(pubs + serves)
        broker.close()
        store.drop()
        shutil.rmtree(run_dir, ignore_errors=True)
    n = devices * per_device
    cpu = {f"cpu_{k}": (cpu1[k] - cpu0[k]) / elapsed for k in cpu0}
    return {"msg_s": n / elapsed, "seconds": elapsed, "cpu_load": load_cpu / elapsed, **cpu,
            "serve_us_per_msg": (cpu1["serve"] - cpu0["serve"]) / n * 1e6}


# --------------------------------------------------------------------------- peers


def payloads(fleet: str, devices: int, per_device: int) -> list[tuple[str, str, bytes, int]]:
    return [(fleet, *status_payload(fleet, n, seq), T0 + seq)
            for seq in range(1, per_device + 1) for n in range(devices)]


def peer_inprocess(target: str, batch: list) -> float:
    """serve's work without the broker: FleetDB.ingest_statuses on the payload bytes."""
    with fleetdb.open_db(target) as db:
        start = time.perf_counter()
        for i in range(0, len(batch), BATCH):
            result = db.ingest_statuses(batch[i:i + BATCH])
            if result.rejected:
                raise RuntimeError(f"benchmark input rejected: {result.rejected[0]}")
        return len(batch) / (time.perf_counter() - start)


def upsert_rows(batch: list) -> list[tuple]:
    """The UPSERT's parameters for every message, built (untimed) by the store's own check."""
    return [fleetdb._with_suspect(fleetdb.check_status_message(fleet, device, payload, now), 0)
            for fleet, device, payload, now in batch]


def peer_upsert(target: str, rows: list[tuple]) -> float:
    """The store's UPSERT by executemany on pre-built rows, one transaction per batch."""
    fleetdb.open_db(target).close()  # the same tables and keys
    if target.startswith("postgres"):
        import psycopg

        conn = psycopg.connect(target)
        sql = fleetdb._UPSERT_STATUS.replace("?", "%s")
        start = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows[i:i + BATCH])
        elapsed = time.perf_counter() - start
    else:
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        start = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(fleetdb._UPSERT_STATUS, rows[i:i + BATCH])
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


# --------------------------------------------------------------------------- the run


def summary(values: list[float]) -> dict:
    return {"min": round(min(values)), "median": round(statistics.median(values)),
            "max": round(max(values)), "runs": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="1 round, 3,000 devices")
    parser.add_argument("--pg", default=PG_DEFAULT, help=f"PostgreSQL URL (default {PG_DEFAULT})")
    parser.add_argument("--runs", type=int, default=None, help="rounds (default 3; --quick 1)")
    parser.add_argument("--devices", type=int, default=None, help="devices (default 10,000; --quick 3,000)")
    parser.add_argument("--per-device", type=int, default=5, help="statuses per device (default 5)")
    parser.add_argument("--profile", type=Path, help="run the workers under cProfile, writing DIR/*.prof")
    parser.add_argument("--only", action="append", choices=CONFIGS,
                        help="end-to-end configuration to run (repeatable; default all)")
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    devices = args.devices if args.devices is not None else (3_000 if args.quick else 10_000)
    if runs < 1 or devices < 1 or args.per_device < 1:
        parser.error("--runs, --devices and --per-device must be at least 1")
    configs = list(args.only or CONFIGS)
    result: dict = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    "devices": devices, "per_device": args.per_device,
                    "messages": devices * args.per_device, "target_msg_s": TARGET,
                    "end_to_end": {}, "peers": {}, "not_measured": {}}
    pg, why = postgres_or_reason(args.pg)
    if pg is None:
        result["not_measured"]["PostgreSQL"] = why
        configs = [c for c in configs if not c.startswith("pg")]
    if not mosquitto_binary():
        result["not_measured"]["end to end"] = "mosquitto is not installed"
        configs = []
    e2e: dict[str, list[dict]] = {c: [] for c in configs}
    peers: dict[str, list[float]] = {}
    batch = payloads("peer", devices, args.per_device)
    rows = upsert_rows(batch)
    with tempfile.TemporaryDirectory(prefix="tf-bench-ingest-") as tmp:
        work = Path(tmp)
        sqlite_store = SQLiteStore(work)
        stores = {"sqlite": sqlite_store, "pg": pg}
        load = Load(devices, args.per_device, work) if configs else None
        try:
            for _ in range(runs):  # round-robin: machine noise hits every configuration alike
                for config in configs:
                    e2e[config].append(e2e_run(config, stores[config.split("-")[0]], load, work,
                                               args.profile))
                for name, store in (("PostgreSQL", pg), ("SQLite", sqlite_store)):
                    if store is None:
                        continue
                    peers.setdefault(f"upsert {name}", []).append(peer_upsert(store.fresh(), rows))
                    peers.setdefault(f"in-process {name}", []).append(peer_inprocess(store.fresh(), batch))
                    store.drop()
        finally:
            if pg is not None:
                with contextlib.suppress(Exception):
                    pg.drop()
    for config, rs in e2e.items():
        result["end_to_end"][config] = {
            "msg_s": summary([r["msg_s"] for r in rs]),
            **{k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0] if k.startswith("cpu_")},
            "serve_us_per_msg": round(statistics.median(r["serve_us_per_msg"] for r in rs), 1)}
    result["peers"] = {name: summary(v) for name, v in peers.items()}
    pg1 = result["end_to_end"].get("pg-1")
    result["target_met"] = bool(pg1 and pg1["msg_s"]["median"] >= TARGET)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"status ingest end to end: {devices:,} devices x {args.per_device} statuses = "
          f"{devices * args.per_device:,} QoS 1 messages, {runs} run(s) per row (Python "
          f"{result['python']}, SQLite {result['sqlite']})")
    print(f"{'end to end, statuses/s':<28} {'min':>9} {'median':>9} {'max':>9}   "
          f"CPU s/s: broker serve  db load   serve CPU/msg")
    names = {"pg": "PostgreSQL", "sqlite": "SQLite"}
    for config, r in result["end_to_end"].items():
        kind, workers = config.split("-")
        label = f"{names[kind]}, {workers} worker{'s' if workers != '1' else ''}"
        m = r["msg_s"]
        db_cpu = f"{r['cpu_db']:>4.2f}" if kind == "pg" else "   -"
        print(f"{label:<28} {m['min']:>9,} {m['median']:>9,} {m['max']:>9,}   "
              f"{r['cpu_broker']:>15.2f} {r['cpu_serve']:>5.2f} {db_cpu} {r['cpu_load']:>4.2f}   "
              f"{r['serve_us_per_msg']:>7.1f} us")
    print("peers, no broker (statuses/s):")
    for name, m in result["peers"].items():
        print(f"  {name:<26} {m['min']:>9,} {m['median']:>9,} {m['max']:>9,}")
    for what, reason in result["not_measured"].items():
        print(f"{what}: not measured: {reason}")
    if pg1:
        verdict = "met" if result["target_met"] else "NOT met"
        print(f"target: >= {TARGET:,} statuses/s end to end, 1 worker, PostgreSQL: {verdict} "
              f"(median {pg1['msg_s']['median']:,}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
