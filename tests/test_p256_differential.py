"""The pure P-256 verifier against two independent ones, on many random keys, messages and mutations.

Every case is judged by trustfleet's pure path in both table layouts (the
board's 29-bit chunks and CPython's wide tables), with the key prepared and
not, by python-ecdsa (pure Python, its own arithmetic) and by OpenSSL
through cryptography. All six verdicts must be equal, and valid signatures
must be accepted. The cases are drawn from a fixed seed, so a failure names
a case that can be run again.
"""

import hashlib
import random
import sys
from pathlib import Path

import ecdsa
import ecdsa.util
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "device"))

from trustfleet_device import p256  # noqa: E402

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
KEYS = 24
MUTATIONS = (
    "valid", "s -> n - s", "flip a bit of r", "flip a bit of s", "flip a bit of the digest",
    "r and s swapped", "another key", "r + 1", "s + 1", "r -> n - r",
)


def sig_bytes(r, s):
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def make_cases():
    rng = random.Random(0x5EED256)
    keys = [ec.derive_private_key(rng.randrange(1, N), ec.SECP256R1()) for _ in range(KEYS)]
    points = [
        k.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        for k in keys
    ]
    cases = []
    for i, key in enumerate(keys):
        message = rng.randbytes(rng.randrange(0, 200))
        digest = hashlib.sha256(message).digest()
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        for kind in MUTATIONS:
            point, d, rr, ss = points[i], digest, r, s
            if kind == "s -> n - s":
                ss = N - s
            elif kind == "flip a bit of r":
                rr = r ^ (1 << rng.randrange(256))
            elif kind == "flip a bit of s":
                ss = s ^ (1 << rng.randrange(256))
            elif kind == "flip a bit of the digest":
                flipped = int.from_bytes(digest, "big") ^ (1 << rng.randrange(256))
                d = flipped.to_bytes(32, "big")
            elif kind == "r and s swapped":
                rr, ss = s, r
            elif kind == "another key":
                point = points[(i + 1) % KEYS]
            elif kind == "r + 1":
                rr = r + 1
            elif kind == "s + 1":
                ss = s + 1
            elif kind == "r -> n - r":
                rr = N - r
            cases.append(pytest.param(point, d, rr, ss, kind == "valid" or kind == "s -> n - s",
                                      id=f"key{i}-{kind}"))
    return cases


def verdict_python_ecdsa(point, digest, r, s):
    vk = ecdsa.VerifyingKey.from_string(point, curve=ecdsa.NIST256p)
    try:
        return vk.verify_digest(sig_bytes(r, s), digest, sigdecode=ecdsa.util.sigdecode_string)
    except ecdsa.BadSignatureError:
        return False


def verdict_openssl(point, digest, r, s):
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    try:
        pub.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def verdicts_pure(point, digest, sig):
    out = {}
    wide = p256._WIDE
    try:
        for layout in (True, False):
            p256._WIDE = layout
            p256.clear_caches()
            out[("wide" if layout else "board") + ", key not prepared"] = (
                p256.verify_digest_pure(point, digest, sig))
            assert p256.prepare([point]) == 1
            out[("wide" if layout else "board") + ", key prepared"] = (
                p256.verify_digest_pure(point, digest, sig))
    finally:
        p256._WIDE = wide
        p256.clear_caches()
    return out


@pytest.mark.parametrize("point, digest, r, s, valid", make_cases())
def test_pure_verifier_agrees_with_python_ecdsa_and_openssl(point, digest, r, s, valid):
    verdicts = verdicts_pure(point, digest, sig_bytes(r, s))
    verdicts["python-ecdsa"] = verdict_python_ecdsa(point, digest, r, s)
    verdicts["OpenSSL"] = verdict_openssl(point, digest, r, s)
    assert set(verdicts.values()) == {valid}, verdicts
