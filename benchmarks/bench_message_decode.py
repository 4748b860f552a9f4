"""Benchmark the bounded decode of one device message (fleet.messages.normalise_status).

Usage: .venv/bin/python benchmarks/bench_message_decode.py [--runs N]

Each case is decoded (or rejected) 200 times per run; prints microseconds per
message, min/median/max over the runs (default 5). The cases: a small status
(what devices send), a 12 KB status of long lists, and the hostile ones the
limits exist for (16 KB of `[`, 8,000 commas, 8,000 escapes, an unterminated
run of quoted escapes). `plain json.loads` is the peer for the first two: the
parse alone, without the limits and the schema check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import timeit

from trustfleet_server.fleet import messages

CASES = {
    "small status": json.dumps({"state": "ok", "version": 3, "seq": 5, "time": 1,
                                "agent_version": "0.1"}).encode(),
    "12 KB status": json.dumps({"state": "ok", "version": 3, "reasons": ["x" * 200] * 60}).encode(),
    "hostile: [ x 16,000": b"[" * 16_000,
    "hostile: 8,000 commas": b'{"a":[' + b"1," * 8000 + b"1]}",
    "hostile: 8,000 escapes": json.dumps({"state": "ok", "detail": '\\"' * 2000}).encode(),
    "hostile: unterminated escapes": b'{"a":' + b'"\\' * 8000 + b"}",
}


def decode(payload: bytes) -> None:
    with contextlib.suppress(messages.StatusError):
        messages.normalise_status("acme", "d", payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = 200
    for name, payload in CASES.items():
        rows = [("trustfleet", lambda p=payload: decode(p))]
        if not name.startswith("hostile"):
            rows.append(("plain json.loads", lambda p=payload: json.loads(p)))
        for who, fn in rows:
            us = [timeit.timeit(fn, number=n) / n * 1e6 for _ in range(args.runs)]
            print(f"{name:<32} {len(payload):>6} B  {who:<17} us/message min {min(us):8.1f}  "
                  f"median {statistics.median(us):8.1f}  max {max(us):8.1f}")


if __name__ == "__main__":
    main()
