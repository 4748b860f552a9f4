"""Benchmark a device install: time and memory, in-memory against streamed, on both runtimes.

Usage: .venv/bin/python benchmarks/bench_install.py [--json] [--quick]

One install = a fresh state directory with the root, then the bundle
offered to runner.Device and committed (no health-check endpoints). Two
ways in, measured in the same run:
  memory   Device.offer("bundle", raw): the whole document in RAM;
  streamed Device.receive_bundle(chunks): written to the inactive slot while
           hashed, verified from there, parsed item by item, anchors left in
           the file (what a board does with a large bundle).
Bundles: 'typical' (10 anchors, 25 pin-sets x 2 pins) and '150' (150
anchors: the certifi roots, topped up with generated CAs), both signed by 2
keys (documents from bench_bundle.py).

CPython: median install time with the default fast paths, and the peak
traced memory (tracemalloc) of one install on the pure-Python paths the
board runs (strict CBOR decoder, pure P-256): a PROXY (CPython objects differ
from MicroPython's). The board's real figures, on a heap-capped 32-bit
MicroPython with the package frozen, come from benchmarks/bench_board.py.
MicroPython VM: install time (ticks_ms) and, from gc.mem_alloc between
separate runs, the bytes still live after the install and the total
allocated during it (garbage included: this port never collects inside a
call and grows its heap on demand, so neither is a heap cap).
No target is set here: memory targets are checked where they can be
measured, in bench_board.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server", "tests", "benchmarks"):
    sys.path.insert(0, str(REPO / _sub))

import bench_bundle  # noqa: E402

from trustfleet_device import agent as core  # noqa: E402
from trustfleet_device import cbor, p256  # noqa: E402
from trustfleet_device.transports import runner  # noqa: E402
from trustfleet_device.transports.storage import DirStorage  # noqa: E402

NOW = bench_bundle.ISSUED_AT + 86400
CHUNK = 1024


def chunks(raw, size=CHUNK):
    for i in range(0, len(raw), size):
        yield raw[i:i + size]


def install(root_raw, raw, how, directory):
    config = core.Config(fleet=bench_bundle.FLEET)
    storage = DirStorage(directory)
    runner.initialise(storage, root_raw, config)
    device = runner.Device(storage, config, runner.no_endpoints, lambda: NOW)
    result = device.offer("bundle", raw) if how == "memory" else device.receive_bundle(chunks(raw))
    if result.committed is None:
        raise SystemExit(f"install refused: {result.reason()}")
    return device


@contextlib.contextmanager
def pure_paths():
    """The board's code paths on CPython: strict CBOR decoder and pure P-256."""
    saved = cbor._decode_fast, p256.verify_digest
    cbor._decode_fast, p256.verify_digest = None, p256.verify_digest_pure
    try:
        yield
    finally:
        cbor._decode_fast, p256.verify_digest = saved


def cpython_figures(root_raw, docs, rounds):
    out = {}
    for name, raw in docs.items():
        out[name] = {"bytes": len(raw)}
        for how in ("memory", "streamed"):
            times = []
            for _ in range(rounds):
                with tempfile.TemporaryDirectory() as d:
                    t = time.perf_counter()
                    install(root_raw, raw, how, d)
                    times.append((time.perf_counter() - t) * 1000)
            with pure_paths(), tempfile.TemporaryDirectory() as d:
                install(root_raw, raw, how, d)  # warm the key tables
            with pure_paths(), tempfile.TemporaryDirectory() as d:
                tracemalloc.start()
                install(root_raw, raw, how, d)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            out[name][how] = {"median_ms": statistics.median(times), "pure_peak_bytes": peak}
    return out


VM_SETUP = f"""
import os, time
from trustfleet_device import agent
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import DirStorage
def _chunks(path):
    with open(path, "rb") as f:
        while True:
            b = f.read({CHUNK})
            if not b:
                return
            yield b
def _fresh(n):
    d = "/st" + str(n)
    os.mkdir(d)
    st = DirStorage(d)
    cfg = agent.Config(fleet={bench_bundle.FLEET!r})
    runner.initialise(st, open("/root.cose", "rb").read(), cfg)
    return runner.Device(st, cfg, runner.no_endpoints, lambda: {NOW})
"""


def vm_figures(root_raw, docs, rounds):
    try:
        from support.mpyvm import MicroPythonVM, available
    except ImportError as exc:
        return {"measured": False, "reason": str(exc)}
    ok, reason = available()
    if not ok:
        return {"measured": False, "reason": reason}
    out = {"measured": True, "bundles": {}}
    with MicroPythonVM() as vm:
        vm.write("/root.cose", root_raw)
        vm.run(VM_SETUP)
        n = 0
        for name, raw in docs.items():
            vm.write(f"/{name}.cose", raw)
            entry = out["bundles"][name] = {"bytes": len(raw)}
            for how in ("memory", "streamed"):
                call = (f"_d.offer('bundle', open('/{name}.cose', 'rb').read())" if how == "memory"
                        else f"_d.receive_bundle(_chunks('/{name}.cose'))")
                times = []
                for _ in range(rounds):
                    n += 1
                    ms = vm.run_json(f"_d = _fresh({n})\n_t = time.ticks_ms()\n_r = {call}\n"
                                     "print(time.ticks_diff(time.ticks_ms(), _t))\n"
                                     "assert _r.committed is not None, _r.reason()")
                    times.append(ms)
                n += 1
                mem = vm.mem_alloc_between(f"_d = _fresh({n})", f"_r = {call}")
                entry[how] = {"median_ms": statistics.median(times), "live_after_bytes": mem["retained"],
                              "allocated_bytes": mem["allocated"]}
                vm.run("_d = None\n_r = None")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    _certs, _keys, root_raw, built = bench_bundle.build_documents()
    docs = {"typical": built["typical"], "150": built["certifi"]}
    rounds = 3 if args.quick else 9
    report = {"cpython": cpython_figures(root_raw, docs, rounds),
              "micropython": vm_figures(root_raw, docs, 3 if args.quick else 5)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("Install benchmark (fresh state directory, root, then one bundle committed)")
    print(f"{'':<28}{'bytes':>8}  {'memory ms':>10}  {'streamed ms':>11}  "
          f"{'pure peak, memory':>18}  {'pure peak, streamed':>20}")
    for name, e in report["cpython"].items():
        print(f"CPython {name:<20}{e['bytes']:>8}  {e['memory']['median_ms']:>10.2f}  "
              f"{e['streamed']['median_ms']:>11.2f}  {e['memory']['pure_peak_bytes']:>18}  "
              f"{e['streamed']['pure_peak_bytes']:>20}")
    m = report["micropython"]
    if not m["measured"]:
        print(f"MicroPython: not measured ({m['reason']})")
    else:
        print(f"\n{'':<28}{'memory ms':>10}  {'streamed ms':>11}  {'live after, memory':>19}  "
              f"{'live after, streamed':>21}  {'allocated, streamed':>20}")
        for name, e in m["bundles"].items():
            print(f"MicroPython VM {name:<13}{e['memory']['median_ms']:>10.1f}  {e['streamed']['median_ms']:>11.1f}  "
                  f"{e['memory']['live_after_bytes']:>19}  {e['streamed']['live_after_bytes']:>21}  "
                  f"{e['streamed']['allocated_bytes']:>20}")
    typical = report["cpython"]["typical"]["streamed"]["pure_peak_bytes"]
    print(f"\ntypical bundle, streamed install: CPython pure-path peak {typical} B (tracemalloc, a"
          " PROXY; the board's real heap figures: benchmarks/bench_board.py)")


if __name__ == "__main__":
    main()
