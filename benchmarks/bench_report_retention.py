"""Benchmark report retention: a 150,000-report flood from one device into the fleet store.

Usage: .venv/bin/python benchmarks/bench_report_retention.py [--runs N] [--reports N] [--batch N]
       [--pg URL] [--json] [--quick]

Each run opens a fresh store and stores the flood through FleetDB.add_reports (what serve's
flush calls) in batches (default 500, serve flushes up to 2,000), next to 10 quiet devices with
20 reports each. Two peers per backend, in round-robin order: the default Retention and
retention off (every limit 0: what the store did before retention). Prints the ingest time
(min/median/max over the runs, default 3), the rows left and the store's size: the SQLite file
plus its WAL, or pg_total_relation_size of tf_reports. PostgreSQL is measured in a throwaway
schema of --pg (default $TRUSTFLEET_TEST_PG or the local `test` database), or skipped with the
reason.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

from trustfleet_server.fleet import db as fleetdb

F = "acme"
T = 1_800_000_000
PEERS = {"default retention": None, "retention off": fleetdb.Retention(0, 0, 0, 1)}


@contextlib.contextmanager
def sqlite_store() -> Iterator[tuple[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fleet.db")

        def size() -> int:
            return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

        yield path, size


@contextlib.contextmanager
def pg_store(url: str) -> Iterator[tuple[str, object]]:
    import psycopg

    schema = f"tf_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in url else "?"
    target = f"{url}{sep}options=-csearch_path%3D{schema}"

    def size() -> int:
        with psycopg.connect(target) as c:
            return c.execute("SELECT pg_total_relation_size('tf_reports')").fetchone()[0]

    try:
        yield target, size
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def one_run(store, retention, reports: int, batch: int) -> dict:
    with store as (target, size), fleetdb.open_db(target, retention=retention) as db:
        for q in range(10):
            db.add_reports([(F, f"quiet{q}", {"validation-result": "pin-failure", "n": n}, T)
                            for n in range(20)])
        body = {"validation-result": "document-refused", "device": "noisy", "detail": "x" * 40}
        start = time.perf_counter()
        for first in range(0, reports, batch):
            db.add_reports([(F, "noisy", {**body, "n": n}, T)
                            for n in range(first, min(first + batch, reports))])
        seconds = time.perf_counter() - start
        with db._tx("counting") as cur:
            cur.execute("SELECT COUNT(*) FROM tf_reports")
            rows = cur.fetchone()[0]
        return {"seconds": seconds, "rows": rows, "bytes": size()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reports", type=int, default=150_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--pg", default=os.environ.get("TRUSTFLEET_TEST_PG",
                                                   "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 run of 20,000 reports")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.reports = 1, 20_000
    backends = {"sqlite": sqlite_store}
    try:
        import psycopg

        with psycopg.connect(args.pg, connect_timeout=3):
            backends["postgresql"] = lambda: pg_store(args.pg)
    except Exception as exc:  # noqa: BLE001 - any reason to skip is printed
        print(f"PostgreSQL: not measured ({str(exc).strip().splitlines()[0] if str(exc) else exc!r})",
              file=sys.stderr)
    results: dict[str, dict[str, list[dict]]] = {b: {p: [] for p in PEERS} for b in backends}
    for _ in range(args.runs):
        for backend, store in backends.items():
            for peer, retention in PEERS.items():
                results[backend][peer].append(one_run(store(), retention, args.reports, args.batch))
    out = {"reports": args.reports, "batch": args.batch, "runs": args.runs,
           "defaults": dataclasses.asdict(fleetdb.Retention()),
           "results": {}}
    for backend, peers in results.items():
        for peer, runs in peers.items():
            secs = [r["seconds"] for r in runs]
            out["results"][f"{backend}, {peer}"] = {
                "seconds_min": min(secs), "seconds_median": statistics.median(secs),
                "seconds_max": max(secs), "rows": runs[-1]["rows"], "bytes": runs[-1]["bytes"]}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.reports:,} reports from one device, batches of {args.batch}, {args.runs} runs; "
          f"+ 200 reports of 10 quiet devices; defaults {out['defaults']}")
    print(f"{'store':34} {'ingest s min/median/max':>26} {'rows':>9} {'size MB':>8}")
    for name, r in out["results"].items():
        times = f"{r['seconds_min']:.2f}/{r['seconds_median']:.2f}/{r['seconds_max']:.2f}"
        print(f"{name:34} {times:>26} {r['rows']:>9,} {r['bytes'] / 1e6:>8.1f}")


if __name__ == "__main__":
    main()
