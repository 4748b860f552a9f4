"""P-256 on the board's runtimes: the same verdicts as OpenSSL, and the heap the key tables hold.

Runs p256 on the firmware stand-in (32-bit, package frozen, 111,936-byte
heap in split areas) and on the PyPI unix port (package from source), both
real MicroPython. For each of a few keys: signatures made by OpenSSL and
bit-flipped copies, verified on both pure paths (a key not prepared, with a
chunk-0 table per call; a prepared key, with full tables), plus the crafted
group-law cases tests/test_p256_rules.py runs on CPython. The verdicts must
be exactly OpenSSL's.

Memory, by gc.mem_alloc() after gc.collect() on the stand-in: G's tables are
constants (no heap at import beyond the module itself), two prepared keys
hold at most the 10,896 bytes that the G tables and two cached keys held
before, and a verify of a key not prepared leaves nothing behind. No timing
here: benchmarks/bench_board_p256.py times the paths.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from support import mpfirmware, mpunix

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# What p256 held on the heap before item 7: G's tables (3,632 B) and two cached
# keys (3,632 B each), measured on the stand-in with gc.mem_alloc.
PREVIOUS_TABLE_BYTES = 10_896
# Importing the frozen package's p256 cost 2,240 B before the G tables became
# constants; it must stay near that, i.e. the 9,216 bytes of G stay in flash.
FROZEN_IMPORT_LIMIT = 3_000

SCRIPT = r"""
import binascii, gc, json, sys
gc.collect()
before = gc.mem_alloc()
from trustfleet_device import p256
gc.collect()
imported = gc.mem_alloc() - before
with open(sys.argv[1]) as f:
    spec = json.load(f)
cases = [[binascii.unhexlify(v) for v in c[:3]] + [c[3]] for c in spec["cases"]]
keys = []
for c in cases:
    if c[0] not in keys:
        keys.append(c[0])
verdicts = []
for point, digest, sig, _ in cases:
    p256.clear_caches()
    cold = p256.verify_digest_pure(point, digest, sig)
    p256.prepare([point])
    warm = p256.verify_digest_pure(point, digest, sig)
    verdicts.append([cold, warm])
p256.clear_caches()
gc.collect()
before = gc.mem_alloc()
kept = p256.prepare(keys[:3])
gc.collect()
prepared = gc.mem_alloc() - before
point, digest, sig, _ = cases[-1]
gc.collect()
before = gc.mem_alloc()
p256.verify_digest_pure(point, digest, sig)
gc.collect()
left = gc.mem_alloc() - before
print("@@mpunix-result@@ " + json.dumps({"verdicts": verdicts, "imported": imported,
                                         "kept": kept, "prepared": prepared, "left": left}))
"""

def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)


def _raw(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _openssl(point: bytes, digest: bytes, sig: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < N and 0 < s < N):
        return False
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    try:
        pub.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def make_cases() -> list[list]:
    """[point, digest, r||s, OpenSSL's verdict] for good, flipped and crafted signatures."""
    cases = []
    for d in (1, 2, 0xC0FFEE, N - 1):
        key = ec.derive_private_key(d, ec.SECP256R1())
        for m in range(2):
            message = b"board p256 %d %d" % (d, m)
            digest = hashlib.sha256(message).digest()
            r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
            for sig in (_raw(r, s), _raw(r, s ^ 1), _raw(r ^ (1 << 200), s), _raw(r, N - s)):
                cases.append([_point(key), digest, sig])
    # The same-x additions inside the chains (see test_p256_rules): Q = G and Q = -G
    # with u2 = 1 and u1 = 1 + 2^29 (full tables) or 2^30 - 1 (chunk-0 table), so
    # R = (u1 + 1)*G or (u1 - 1)*G; OpenSSL computes the points.
    for q_scalar, sign in ((1, 1), (N - 1, -1)):
        q = _point(ec.derive_private_key(q_scalar, ec.SECP256R1()))
        for u1 in (1 + 2**29, 2**30 - 1):
            target = ec.derive_private_key(u1 + sign, ec.SECP256R1()).public_key()
            r = target.public_numbers().x % N
            cases.append([q, (u1 * r % N).to_bytes(32, "big"), _raw(r, r)])
    return [[p.hex(), dg.hex(), sg.hex(), _openssl(p, dg, sg)] for p, dg, sg in cases]


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("p256-board") / "cases.json"
    path.write_text(json.dumps({"cases": make_cases()}))
    return path


def _run(mp: mpunix.MicroPythonUnix, cases_file: Path, path: list[Path]) -> dict:
    return mp.run_json(SCRIPT, path=path, args=[str(cases_file)], timeout=600)


def _check_verdicts(out: dict, cases_file: Path) -> None:
    expected = [c[3] for c in json.loads(cases_file.read_text())["cases"]]
    assert True in expected and False in expected
    assert out["verdicts"] == [[e, e] for e in expected]


def test_standin_verifies_like_openssl_and_holds_less_than_before(cases_file):
    mp = mpfirmware.require(heapsize=mpfirmware.ESP32_HEAP)
    out = _run(mp, cases_file, [])
    _check_verdicts(out, cases_file)
    assert out["imported"] < FROZEN_IMPORT_LIMIT
    assert out["kept"] == 2  # at most two keys' tables on MicroPython
    assert 2 * 4608 <= out["prepared"] <= PREVIOUS_TABLE_BYTES
    assert out["left"] == 0


def test_pypi_port_verifies_like_openssl(cases_file):
    mp = mpunix.require()
    out = _run(mp, cases_file, [mpunix.DEVICE_DIR])
    _check_verdicts(out, cases_file)
    assert out["kept"] == 2
    assert out["left"] == 0
