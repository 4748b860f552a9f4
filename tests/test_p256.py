"""ECDSA P-256 verification: Wycheproof vectors, pure vs OpenSSL agreement, key decoding.

The Wycheproof files are the repository's copies in tests/vectors/
(override with TRUSTFLEET_VECTORS). Both P1363 (raw r||s) and DER files are
used; every vector must give its expected result on the pure-Python path and
on the cryptography path, and the two paths must always agree.
"""

import hashlib
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "device"))

from support.vectors import load_json  # noqa: E402
from trustfleet_device import p256  # noqa: E402
from trustfleet_device.errors import DecodeError  # noqa: E402

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B

PROPERTY = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def load_groups(name):
    groups = load_json("wycheproof", name)["testGroups"]
    return [
        pytest.param(
            group, id=f"group{i}-tc{group['tests'][0]['tcId']}-{group['tests'][-1]['tcId']}"
        )
        for i, group in enumerate(groups)
    ]


P1363_GROUPS = load_groups("ecdsa_secp256r1_sha256_p1363_test.json")
DER_GROUPS = load_groups("ecdsa_secp256r1_sha256_test.json")


def group_point(group):
    point = bytes.fromhex(group["publicKey"]["uncompressed"])
    assert len(point) == 65
    assert p256.spki_to_point(bytes.fromhex(group["publicKeyDer"])) == point
    return point


def describe(tc, **results):
    shown = ", ".join(f"{name}={value}" for name, value in sorted(results.items()))
    return f"tcId {tc['tcId']} ({tc['comment']}, expected {tc['result']}): {shown}"


def check_expected(tc, got):
    if tc["result"] == "valid":
        return got is True
    if tc["result"] == "invalid":
        return got is False
    return got in (True, False)  # "acceptable": either, as long as paths agree


def point_of(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def raw_signature(r, s):
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def x_of_multiple_of_g(k):
    return ec.derive_private_key(k, ec.SECP256R1()).public_key().public_numbers().x


def craft_signature(d, e, k):
    """Sign integer digest e with private scalar d and nonce k (textbook ECDSA)."""
    r = x_of_multiple_of_g(k) % N
    s = pow(k, -1, N) * (e + r * d) % N
    return raw_signature(r, s)


def pure_everywhere(point, digest, sig):
    """The pure verdict, after checking that both layouts, prepared or not, give the same one."""
    verdicts = []
    wide = p256._WIDE
    try:
        for layout in (True, False):
            p256._WIDE = layout
            p256.clear_caches()
            verdicts.append(p256.verify_digest_pure(point, digest, sig))
            p256.prepare([point])  # the key is valid: verify_digest_pure did not raise
            verdicts.append(p256.verify_digest_pure(point, digest, sig))
    finally:
        p256._WIDE = wide
        p256.clear_caches()
    assert len(set(verdicts)) == 1, verdicts
    return verdicts[0]


def both_paths(point, digest, sig):
    return pure_everywhere(point, digest, sig), p256.verify_digest_fast(point, digest, sig)


# --- Wycheproof -------------------------------------------------------------


@pytest.mark.parametrize("group", P1363_GROUPS)
def test_wycheproof_p1363_vectors_give_expected_result_on_both_paths(group):
    point = group_point(group)
    failures = []
    for tc in group["tests"]:
        digest = hashlib.sha256(bytes.fromhex(tc["msg"])).digest()
        sig = bytes.fromhex(tc["sig"])
        pure, fast = both_paths(point, digest, sig)
        default = p256.verify(point, bytes.fromhex(tc["msg"]), sig)
        if not (check_expected(tc, pure) and pure == fast == default):
            failures.append(describe(tc, pure=pure, fast=fast, default=default))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("group", DER_GROUPS)
def test_wycheproof_der_vectors_give_expected_result_via_openssl(group):
    point = group_point(group)
    failures = []
    for tc in group["tests"]:
        digest = hashlib.sha256(bytes.fromhex(tc["msg"])).digest()
        got = p256.verify_der_fast(point, digest, bytes.fromhex(tc["sig"]))
        if not check_expected(tc, got):
            failures.append(describe(tc, der_fast=got))
    assert not failures, "\n".join(failures)


# --- pure and fast paths agree -----------------------------------------------

private_scalars = st.integers(min_value=1, max_value=N - 1)
edge_scalars = st.sampled_from([0, 1, 2, N - 1, N, N + 1, P - 1, P, 2**256 - 1])
sig_scalars = st.one_of(edge_scalars, st.integers(min_value=0, max_value=2**256 - 1))


@PROPERTY
@given(d=private_scalars, message=st.binary(max_size=64), flip=st.integers(0, 64 * 8))
def test_pure_and_fast_paths_agree_on_real_and_bit_flipped_signatures(d, message, flip):
    key = ec.derive_private_key(d, ec.SECP256R1())
    point = point_of(key)
    der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    sig = raw_signature(*decode_dss_signature(der))
    digest = hashlib.sha256(message).digest()
    assert both_paths(point, digest, sig) == (True, True)
    if flip < 64 * 8:
        mutated = bytearray(sig)
        mutated[flip // 8] ^= 1 << (flip % 8)
        pure, fast = both_paths(point, digest, bytes(mutated))
        assert pure == fast, f"bit {flip} flipped: pure={pure} fast={fast}"


@PROPERTY
@given(d=private_scalars, digest=st.binary(min_size=32, max_size=32), r=sig_scalars, s=sig_scalars)
def test_pure_and_fast_paths_agree_on_random_signatures(d, digest, r, s):
    point = point_of(ec.derive_private_key(d, ec.SECP256R1()))
    pure, fast = both_paths(point, digest, raw_signature(r, s))
    assert pure == fast, f"r={r:#x} s={s:#x}: pure={pure} fast={fast}"


@PROPERTY
@given(d=private_scalars, e=st.one_of(edge_scalars, st.integers(0, 2**256 - 1)), k=private_scalars)
def test_pure_and_fast_paths_accept_signatures_over_arbitrary_digests(d, e, k):
    point = point_of(ec.derive_private_key(d, ec.SECP256R1()))
    sig = craft_signature(d, e, k)
    if sig[32:] == bytes(32):
        return  # s == 0 cannot be a signature; chance 1/n
    assert both_paths(point, e.to_bytes(32, "big"), sig) == (True, True)


@pytest.mark.parametrize("k", [1, 2, 3, 12345, N - 1, N // 2])
def test_accepts_signature_whose_two_halves_add_the_same_point(k):
    # Q = G and e = r make u1 == u2, so the G and Q streams add identical
    # points at the same positions: the "same x" addition must double.
    r = x_of_multiple_of_g(k) % N
    sig = craft_signature(1, r, k)
    point = point_of(ec.derive_private_key(1, ec.SECP256R1()))
    assert both_paths(point, r.to_bytes(32, "big"), sig) == (True, True)


@pytest.mark.parametrize("s", [1, 2, 12345, N - 1])
def test_rejects_signature_whose_halves_cancel_to_infinity(s):
    # Q = -G and e = r give u1*G + u2*Q = 0: the point at infinity, never valid.
    r = x_of_multiple_of_g(7) % N
    point = point_of(ec.derive_private_key(N - 1, ec.SECP256R1()))
    assert both_paths(point, r.to_bytes(32, "big"), raw_signature(r, s)) == (False, False)


def test_default_backend_is_openssl_on_cpython():
    assert p256.BACKEND == "cryptography"


# --- malformed signatures and digests ------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 63, 65, 70, 72, 128])
def test_signature_of_wrong_length_is_false_not_an_error(length):
    point = point_of(ec.derive_private_key(5, ec.SECP256R1()))
    digest = hashlib.sha256(b"x").digest()
    assert both_paths(point, digest, b"\x01" * length) == (False, False)
    assert p256.verify_digest(point, digest, b"\x01" * length) is False


def test_digest_of_wrong_length_is_a_caller_error():
    point = point_of(ec.derive_private_key(5, ec.SECP256R1()))
    for verify in (p256.verify_digest_pure, p256.verify_digest_fast, p256.verify_der_fast):
        with pytest.raises(ValueError, match="32-byte"):
            verify(point, b"\x00" * 31, b"\x01" * 64)


def test_bad_public_key_raises_even_with_a_malformed_signature():
    off_curve = b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big")
    for verify in (p256.verify_digest_pure, p256.verify_digest_fast, p256.verify_der_fast):
        with pytest.raises(DecodeError):
            verify(off_curve, bytes(32), b"")


# --- key decoding -----------------------------------------------------------------

GENERATOR = point_of(ec.derive_private_key(1, ec.SECP256R1()))
GX = int.from_bytes(GENERATOR[1:33], "big")
GY = int.from_bytes(GENERATOR[33:], "big")


def encode(x, y, prefix=b"\x04"):
    return prefix + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def small_x_point():
    """Return a curve point (x, y) with x + p < 2^256, so x + p is a 32-byte alias of x."""
    for x in range(1, 100):
        rhs = (x**3 - 3 * x + B) % P
        y = pow(rhs, (P + 1) // 4, P)
        if y * y % P == rhs:
            return x, y
    raise AssertionError("no small x found")


BAD_POINTS = {
    "empty": b"",
    "64 bytes without prefix": GENERATOR[1:],
    "66 bytes": GENERATOR + b"\x00",
    "prefix 0x05": b"\x05" + GENERATOR[1:],
    "prefix 0x00": b"\x00" + GENERATOR[1:],
    "compressed 0x02": b"\x02" + GENERATOR[1:33],
    "compressed 0x03": b"\x03" + GENERATOR[1:33],
    "hybrid 0x06": b"\x06" + GENERATOR[1:],
    "off curve (y + 1)": encode(GX, (GY + 1) % P),
    "off curve (0, 0)": encode(0, 0),
    "x equals p": encode(P, GY),
    "y equals p": encode(GX, P),
    "x is p + x of a real point": encode(small_x_point()[0] + P, small_x_point()[1]),
    "all ones": b"\x04" + b"\xff" * 64,
}


@pytest.mark.parametrize("raw", list(BAD_POINTS.values()), ids=list(BAD_POINTS))
def test_decode_point_rejects_malformed_keys(raw):
    with pytest.raises(DecodeError):
        p256.decode_point(raw)
    with pytest.raises(DecodeError):
        p256.point_to_spki(raw)


def test_decode_point_error_messages_say_what_was_wrong():
    with pytest.raises(DecodeError, match="65 bytes.*got 33"):
        p256.decode_point(b"\x02" + GENERATOR[1:33])
    with pytest.raises(DecodeError, match="0x04.*got 0x02"):
        p256.decode_point(b"\x02" + GENERATOR[1:])
    with pytest.raises(DecodeError, match="not a point on the curve"):
        p256.decode_point(encode(GX, (GY + 1) % P))
    with pytest.raises(DecodeError, match=">= the field prime"):
        p256.decode_point(encode(P, GY))


def test_decode_point_returns_coordinates_of_valid_key():
    assert p256.decode_point(GENERATOR) == (GX, GY)
    assert p256.decode_point(bytearray(GENERATOR)) == (GX, GY)


def spki_of(private_key, fmt=serialization.PublicFormat.SubjectPublicKeyInfo):
    return private_key.public_key().public_bytes(serialization.Encoding.DER, fmt)


def test_spki_round_trips_with_cryptography_encoding():
    key = ec.derive_private_key(987654321, ec.SECP256R1())
    spki = spki_of(key)
    assert p256.spki_to_point(spki) == point_of(key)
    assert p256.point_to_spki(point_of(key)) == spki


def compressed_spki():
    key = ec.derive_private_key(3, ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    # SEQUENCE { algorithm, BIT STRING { 0 unused bits, 33-byte point } }
    alg = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")
    bit_string = b"\x03" + bytes([len(point) + 1, 0]) + point
    body = alg + bit_string
    return b"\x30" + bytes([len(body)]) + body


GOOD_SPKI = spki_of(ec.derive_private_key(42, ec.SECP256R1()))
BAD_SPKIS = {
    "empty": b"",
    "truncated": GOOD_SPKI[:-1],
    "trailing byte": GOOD_SPKI + b"\x00",
    "bare point": GENERATOR,
    "compressed point": compressed_spki(),
    "secp384r1 key": spki_of(ec.derive_private_key(42, ec.SECP384R1())),
    "secp256k1 key": spki_of(ec.derive_private_key(42, ec.SECP256K1())),
    "curve OID altered": GOOD_SPKI[:20] + b"\x08" + GOOD_SPKI[21:],
    "unused-bits byte nonzero": GOOD_SPKI[:25] + b"\x01" + GOOD_SPKI[26:],
    "point prefix 0x05": GOOD_SPKI[:26] + b"\x05" + GOOD_SPKI[27:],
    "off-curve point": GOOD_SPKI[:26] + encode(GX, (GY + 1) % P),
    "coordinate >= p": GOOD_SPKI[:26] + encode(P, GY),
}


@pytest.mark.parametrize("raw", list(BAD_SPKIS.values()), ids=list(BAD_SPKIS))
def test_spki_to_point_rejects_anything_but_exact_uncompressed_p256(raw):
    with pytest.raises(DecodeError):
        p256.spki_to_point(raw)


# --- caches -------------------------------------------------------------------------


def test_generator_tables_are_the_constants_the_table_builder_makes():
    # Written out in p256.py so that, frozen into a firmware, they cost no heap and no
    # time; a wrong digit in them would still verify some signatures, so compare all.
    gx, gy = p256._GX, p256._GY
    assert p256._build_tables(gx, gy, p256._G_WINDOW, p256._SPLIT) == p256._G_TABLES


def test_key_cache_stays_bounded_and_results_survive_eviction():
    p256.clear_caches()
    digest = hashlib.sha256(b"bounded").digest()
    first_key = ec.derive_private_key(11, ec.SECP256R1())
    first_sig = craft_signature(11, int.from_bytes(digest, "big"), 99)
    points = []
    for d in range(11, 11 + p256._Q_CACHE_MAX + 5):
        point = point_of(ec.derive_private_key(d, ec.SECP256R1()))
        points.append(point)
        sig = craft_signature(d, int.from_bytes(digest, "big"), 99)
        assert p256.verify_digest_pure(point, digest, sig)
        assert len(p256._fast_cache) <= p256._FAST_CACHE_MAX
    assert p256.prepare(points) == p256._Q_CACHE_MAX
    assert len(p256._q_cache) == p256._Q_CACHE_MAX
    assert p256.verify_digest_pure(point_of(first_key), digest, first_sig)
    p256.prepare(points[1:])
    assert p256.verify_digest_pure(point_of(first_key), digest, first_sig)
    p256.clear_caches()
