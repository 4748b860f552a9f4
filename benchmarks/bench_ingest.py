"""Benchmark device-status ingest into the fleet store: SQLite and PostgreSQL, against peers.

Usage: .venv/bin/python benchmarks/bench_ingest.py [--json] [--quick] [--pg URL]

Input: status messages as the server receives them from the broker (JSON
bytes with every field of docs/topics.md), for 5,000 devices, several
statuses each with increasing seq, in arrival order.

Measured in the same run, each on a fresh database, round-robin:
  trustfleet   FleetDB.ingest_statuses in batches of 1,000 (what `serve`
               does): JSON parse, field checks, UPSERT ordered by seq/time,
               one transaction per batch;
  executemany  peer: the same rows, already parsed, written with a plain
               INSERT executemany into an equivalent table, one transaction
               per batch (no parse, no checks, no ordering): what the
               database alone costs;
  per-message  peer: FleetDB.ingest_status once per message, one transaction
               each (how an ingest without batching would do), on a subset.
SQLite is a file in a temporary directory (WAL, synchronous=NORMAL, the
store's settings). PostgreSQL (default postgresql://postgres@127.0.0.1/test,
or --pg / $TRUSTFLEET_TEST_PG) uses a throwaway schema, dropped at the end;
when it is not reachable the script says so and measures SQLite only.

End to end (when `mosquitto` is installed): a private Mosquitto on a free
port (no queue limit, so nothing is dropped), two publisher processes
sending QoS 1 statuses as fast as they can, and
  serve        trustfleet_server.serve.server.FleetServer (MQTT 5, shared
               subscription) ingesting into SQLite;
  paho         peer: a bare paho-mqtt subscriber on the same subscription
               that only counts messages (loop_start, the usual way).
The figure is messages / (time from the first publish to the last ingested).
Target: trustfleet ingest >= 5,000 messages/s into SQLite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server"):
    sys.path.insert(0, str(REPO / _sub))

from trustfleet_device import topics  # noqa: E402
from trustfleet_server import mqtturl  # noqa: E402
from trustfleet_server.broker.mosquitto import PrivateMosquitto, mosquitto_binary  # noqa: E402
from trustfleet_server.fleet import db as fleetdb  # noqa: E402
from trustfleet_server.serve import server  # noqa: E402

TARGET = 5_000
FLEET = "bench"
BATCH = 1_000
DEVICES = 5_000
PG_DEFAULT = os.environ.get("TRUSTFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

PLAIN_TABLE = """CREATE TABLE plain_status (fleet TEXT, device_id TEXT, grp TEXT, bucket INTEGER,
    state TEXT, version BIGINT, floor BIGINT, bad TEXT, last_revert TEXT, reasons TEXT,
    fail_open TEXT, root_version BIGINT, trusted_time BIGINT, last_timestamp BIGINT,
    agent_version TEXT, status_time BIGINT, seq BIGINT, event TEXT, detail TEXT,
    first_seen BIGINT, last_seen BIGINT, raw TEXT)"""


def make_messages(count: int, devices: int = DEVICES) -> list[tuple[str, bytes, int]]:
    """(device id, JSON status bytes, receive time) in arrival order."""
    t0 = 1_800_000_000
    out = []
    for i in range(count):
        n, seq = i % devices, i // devices + 1
        name = f"sensor-{n:05d}"
        status = {
            "device": name, "fleet": FLEET, "group": "canary" if n % 50 == 0 else None,
            "bucket": topics.bucket(name), "state": "ok" if n % 20 else "stale",
            "version": 7 + seq % 2, "floor": 7, "bad": [6] if n % 97 == 0 else [],
            "last_revert": None, "reasons": [] if n % 20 else ["no timestamp newer than 172800 s"],
            "root_version": 1, "trusted_time": t0 + i, "last_timestamp": t0 + i - 60,
            "fail_open": ["api.acme.example"] if n % 33 == 0 else [], "event": "committed",
            "detail": f"bundle v{7 + seq % 2}", "agent_version": "0.1.0", "time": t0 + i, "seq": seq,
        }
        out.append((name, json.dumps(status).encode(), t0 + i))
    return out


def plain_rows(messages: list[tuple[str, bytes, int]]) -> list[tuple]:
    rows = []
    for name, raw, now in messages:
        s = json.loads(raw)
        rows.append((FLEET, name, s["group"], s["bucket"], s["state"], s["version"], s["floor"],
                     json.dumps(s["bad"]), s["last_revert"], json.dumps(s["reasons"]),
                     json.dumps(s["fail_open"]), s["root_version"], s["trusted_time"],
                     s["last_timestamp"], s["agent_version"], s["time"], s["seq"], s["event"],
                     s["detail"], now, now, raw.decode()))
    return rows


# --------------------------------------------------------------------------- backends


class SQLiteTarget:
    name = "SQLite"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def fresh(self) -> str:
        return str(self.workdir / f"{uuid.uuid4().hex}.db")

    def plain(self, target: str):
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(PLAIN_TABLE)
        return conn, "?"

    def close(self) -> None:
        pass


class PostgresTarget:
    name = "PostgreSQL"

    def __init__(self, url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        self.url = url
        self.schemas: list[str] = []

    def _admin(self):
        return self.psycopg.connect(self.url, autocommit=True)

    def fresh(self) -> str:
        schema = f"tf_bench_{uuid.uuid4().hex[:12]}"
        with self._admin() as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        self.schemas.append(schema)
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}options=-csearch_path%3D{schema}"

    def plain(self, target: str):
        conn = self.psycopg.connect(target, autocommit=True)
        conn.execute(PLAIN_TABLE)
        return conn, "%s"

    def close(self) -> None:
        with self._admin() as c:
            for schema in self.schemas:
                c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_or_reason(url: str) -> tuple[PostgresTarget | None, str | None]:
    try:
        import psycopg
    except ImportError:
        return None, "psycopg not installed"
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        return None, f"not reachable at {url}: {str(exc).strip().splitlines()[0]}"
    return PostgresTarget(url), None


# --------------------------------------------------------------------------- measurements


def run_trustfleet(backend, messages) -> float:
    db = fleetdb.open_db(backend.fresh())
    try:
        start = time.perf_counter()
        for i in range(0, len(messages), BATCH):
            result = db.ingest_statuses([(FLEET, n, raw, now) for n, raw, now in messages[i:i + BATCH]])
            if result.rejected:
                raise RuntimeError(f"benchmark input rejected: {result.rejected[0]}")
        elapsed = time.perf_counter() - start
        if len(db.devices(FLEET)) != min(DEVICES, len(messages)):
            raise RuntimeError("not every device was stored")
    finally:
        db.close()
    return len(messages) / elapsed


def run_executemany(backend, messages) -> float:
    rows = plain_rows(messages)  # parsed before timing: the peer gets its rows for free
    conn, mark = backend.plain(backend.fresh())
    sql = f"INSERT INTO plain_status VALUES ({', '.join(mark for _ in range(len(rows[0])))})"
    try:
        start = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            if backend.name == "SQLite":
                conn.execute("BEGIN")
                conn.executemany(sql, rows[i:i + BATCH])
                conn.execute("COMMIT")
            else:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(sql, rows[i:i + BATCH])
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return len(rows) / elapsed


def run_per_message(backend, messages) -> float:
    db = fleetdb.open_db(backend.fresh())
    try:
        start = time.perf_counter()
        for n, raw, now in messages:
            db.ingest_status(FLEET, n, raw, now)
        elapsed = time.perf_counter() - start
    finally:
        db.close()
    return len(messages) / elapsed


def measure(backend, messages, per_message_count: int, rounds: int) -> dict:
    runs: dict[str, list[float]] = {"trustfleet": [], "executemany": [], "per-message": []}
    for _ in range(rounds):  # round-robin: machine noise hits every peer alike
        runs["trustfleet"].append(run_trustfleet(backend, messages))
        runs["executemany"].append(run_executemany(backend, messages))
        runs["per-message"].append(run_per_message(backend, messages[:per_message_count]))
    out = {}
    for name, rates in runs.items():
        rates.sort()
        out[name] = {"median_msg_s": round(statistics.median(rates)),
                     "p10_msg_s": round(rates[max(0, int(len(rates) * 0.1))]),
                     "runs": len(rates)}
    tf, em = out["trustfleet"]["median_msg_s"], out["executemany"]["median_msg_s"]
    out["trustfleet_vs_executemany"] = round(tf / em, 2)
    out["messages"] = len(messages)
    out["per_message_messages"] = per_message_count
    return out


# --------------------------------------------------------------------------- end to end

PUBLISHER = r"""
import json, sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, fleet, first, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
infos = []
for i in range(first, first + n):
    name = "sensor-%05d" % (i % 5000)
    body = {"device": name, "fleet": fleet, "state": "ok", "version": 7, "floor": 7, "bad": [],
            "reasons": [], "fail_open": [], "root_version": 1, "seq": i // 5000 + 1, "time": 1000 + i,
            "event": "committed", "detail": "bundle v7", "agent_version": "0.1.0"}
    infos.append(c.publish("tf/%s/status/%s" % (fleet, name), json.dumps(body), qos=1))
for info in infos:
    info.wait_for_publish(120)
c.disconnect()
c.loop_stop()
"""


def private_mosquitto(workdir: Path) -> PrivateMosquitto:
    """A private Mosquitto on a free port with no queue limit (nothing dropped) and no logging."""
    return PrivateMosquitto(workdir=workdir, extra=["max_queued_messages 0", "log_dest none"]).start()


def publish_burst(port: int, fleet: str, n: int) -> list[subprocess.Popen]:
    half = n // 2
    return [subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), fleet, str(first), str(count)])
            for first, count in ((0, half), (half, n - half))]


def e2e_serve(port: int, n: int, workdir: Path) -> float:
    sys.path.insert(0, str(REPO / "tests"))
    from support.fleetkit import Repo

    fleet = f"b{uuid.uuid4().hex[:8]}"
    repo = Repo(fleet=fleet)
    with fleetdb.open_db(workdir / f"{fleet}.db") as db:
        srv = server.FleetServer(mqtturl.parse(f"mqtt://127.0.0.1:{port}"), fleet, [repo.root_raw], db)
        thread = threading.Thread(target=srv.run, kwargs={"duration": 300}, daemon=True)
        thread.start()
        while not srv.synced:
            time.sleep(0.01)
        start = time.perf_counter()
        procs = publish_burst(port, fleet, n)
        deadline = start + 120
        while srv.stats.statuses + srv.stats.ignored + srv.stats.rejected < n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"serve ingested {srv.stats.statuses} of {n} in 120 s")
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
        srv.stop()
        thread.join(10)
        for p in procs:
            p.wait(30)
    return n / elapsed


def e2e_paho(port: int, n: int) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.subscribeoptions import SubscribeOptions

    fleet = f"b{uuid.uuid4().hex[:8]}"
    got = [0]
    ready = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, ud, m: got.__setitem__(0, got[0] + 1)
    c.on_subscribe = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(f"$share/bench/{topics.statuses(fleet)}", options=SubscribeOptions(qos=1))
    ready.wait(10)
    start = time.perf_counter()
    procs = publish_burst(port, fleet, n)
    while got[0] < n and time.perf_counter() - start < 120:
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    c.disconnect()
    c.loop_stop()
    for p in procs:
        p.wait(30)
    return n / elapsed


def measure_e2e(n: int, rounds: int) -> dict:
    if not mosquitto_binary():
        return {"not_measured": "mosquitto is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        broker = private_mosquitto(Path(tmp))
        try:
            runs: dict[str, list[float]] = {"serve": [], "paho": []}
            for _ in range(rounds):
                runs["serve"].append(e2e_serve(broker.port, n, Path(tmp)))
                runs["paho"].append(e2e_paho(broker.port, n))
        finally:
            broker.stop()
    out = {name: {"median_msg_s": round(statistics.median(r)), "runs": len(r)} for name, r in runs.items()}
    out["serve_vs_paho"] = round(out["serve"]["median_msg_s"] / out["paho"]["median_msg_s"], 2)
    out["messages"] = n
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--pg", default=PG_DEFAULT, help=f"PostgreSQL URL (default {PG_DEFAULT})")
    args = parser.parse_args(argv)
    count, per_message, rounds = (10_000, 1_000, 1) if args.quick else (50_000, 3_000, 3)
    messages = make_messages(count)
    result = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
              "batch": BATCH, "devices": DEVICES, "target_msg_s": TARGET, "backends": {}}
    with tempfile.TemporaryDirectory() as tmp:
        result["backends"]["SQLite"] = measure(SQLiteTarget(Path(tmp)), messages, per_message, rounds)
    pg, why = postgres_or_reason(args.pg)
    if pg is None:
        result["backends"]["PostgreSQL"] = {"not_measured": why}
    else:
        try:
            result["backends"]["PostgreSQL"] = measure(pg, messages, per_message, rounds)
        finally:
            with contextlib.suppress(Exception):
                pg.close()
    result["end_to_end"] = measure_e2e(count // 2, rounds)
    sqlite_rate = result["backends"]["SQLite"]["trustfleet"]["median_msg_s"]
    result["target_met"] = sqlite_rate >= TARGET
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"status ingest, {count:,} messages from {DEVICES:,} devices, batches of {BATCH:,} "
          f"(Python {result['python']}, SQLite {result['sqlite']})")
    print(f"{'backend':<12} {'trustfleet':>14} {'executemany':>14} {'per-message':>14} {'tf/peer':>8}")
    for name, r in result["backends"].items():
        if "not_measured" in r:
            print(f"{name:<12} not measured: {r['not_measured']}")
            continue
        print(f"{name:<12} {r['trustfleet']['median_msg_s']:>10,} /s {r['executemany']['median_msg_s']:>10,} /s "
              f"{r['per-message']['median_msg_s']:>10,} /s {r['trustfleet_vs_executemany']:>8}")
    e2e = result["end_to_end"]
    if "not_measured" in e2e:
        print(f"end to end (MQTT): not measured: {e2e['not_measured']}")
    else:
        print(f"end to end, {e2e['messages']:,} QoS 1 statuses through a private Mosquitto: "
              f"serve -> SQLite {e2e['serve']['median_msg_s']:,} /s, bare paho subscriber "
              f"{e2e['paho']['median_msg_s']:,} /s ({e2e['serve_vs_paho']})")
    verdict = "met" if result["target_met"] else "NOT met"
    print(f"target: >= {TARGET:,} msg/s into SQLite: {verdict} ({sqlite_rate:,} msg/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
