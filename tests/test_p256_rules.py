"""One test per rule of trustfleet_device.p256, each at the exact boundary where the rule bites.

tests/test_p256.py is the broad net (Wycheproof, random agreement between the
pure and OpenSSL paths). This file pins each check and each branch of the
group law with an input built to reach it, so that tools/mutate.py finds a
test that fails whenever a check is weakened or a branch changes.

How the crafted signatures work. The pure path computes R = u1*G + u2*Q with
u1 = e/s and u2 = r/s (mod n) and accepts when x(R) = r (mod n). We own the
public key, so for any target point R and any (e, r, s) we can solve for
the key: Q = (R - u1*G) / u2. The verifier then meets exactly the R we chose,
with no discrete logarithm needed. That reaches cases random signatures never
do: x(R) >= n, x(R) = 0, R = infinity after a cancellation, a doubling inside
the shared Shamir chain. The arithmetic below is a plain affine reference,
independent of p256.py; `cryptography` (OpenSSL) is the second opinion on
every verdict.
"""

import hashlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "device"))

from trustfleet_device import p256  # noqa: E402
from trustfleet_device.errors import DecodeError  # noqa: E402

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
# The three points with y = 1 or y = p - 1 share these x values (y^2 = 1): roots of
# x^3 - 3x + b - 1 mod p, found once offline; on_curve() below checks them.
X_WITH_Y_ONE = 0x9E78D4EF60D05F750F6636209092BC43CBDD6B47E11A9DE20A9FEB2A50BB96C


# --- affine reference arithmetic (None is the point at infinity) ------------------------


def on_curve(pt):
    x, y = pt
    return 0 <= x < P and 0 <= y < P and (y * y - x**3 + 3 * x - B) % P == 0


def neg(pt):
    return None if pt is None else (pt[0], (-pt[1]) % P)


def add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0]:
        if (a[1] + b[1]) % P == 0:
            return None
        slope = (3 * a[0] * a[0] - 3) * pow(2 * a[1], -1, P) % P
    else:
        slope = (b[1] - a[1]) * pow(b[0] - a[0], -1, P) % P
    x = (slope * slope - a[0] - b[0]) % P
    return x, (slope * (a[0] - x) - a[1]) % P


def mul(k, pt):
    out = None
    for bit in bin(k % N)[2:]:
        out = add(out, out)
        if bit == "1":
            out = add(out, pt)
    return out


def point_with_x(x):
    """The curve point (x, y) with the smaller y, or None when x is no point's x."""
    rhs = (x**3 - 3 * x + B) % P
    y = pow(rhs, (P + 1) // 4, P)  # p = 3 mod 4
    if y * y % P != rhs:
        return None
    return x, min(y, P - y)


def encode(pt):
    return b"\x04" + pt[0].to_bytes(32, "big") + pt[1].to_bytes(32, "big")


def raw(r, s):
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def key_meeting(target, e, r, s):
    """The public key Q for which verifying (r, s) over digest e computes u1*G + u2*Q == target."""
    w = pow(s, -1, N)
    u1, u2 = e * w % N, r * w % N
    return mul(pow(u2, -1, N), add(target, neg(mul(u1, G))))


def pure_on_every_path(point, digest, sig):
    """The pure verdict, after checking that every layout and key path agrees on it.

    The board's layout (_WIDE False: 29-bit chunks) and CPython's (_WIDE True:
    one wNAF, 8-bit chunks), each with the key not prepared (a table for this
    call only, one long chain) and prepared (full tables, a short chain).
    """
    verdicts = []
    wide = p256._WIDE
    try:
        for layout in (False, True):
            p256._WIDE = layout
            p256.clear_caches()
            verdicts += [p256.verify_digest_pure(point, digest, sig) for _ in range(2)]
            assert p256.prepare([point]) == 1
            verdicts.append(p256.verify_digest_pure(point, digest, sig))
    finally:
        p256._WIDE = wide
        p256.clear_caches()
    assert verdicts in ([True] * 6, [False] * 6), verdicts
    return verdicts[0]


def both(point, e, sig):
    digest = e.to_bytes(32, "big") if isinstance(e, int) else e
    return (
        pure_on_every_path(encode(point), digest, sig),
        p256.verify_digest_fast(encode(point), digest, sig),
    )


def test_reference_arithmetic_agrees_with_openssl():
    for k in (1, 2, 3, 2**64, N - 1, 0xC0FFEE):
        pub = ec.derive_private_key(k, ec.SECP256R1()).public_key().public_numbers()
        assert mul(k, G) == (pub.x, pub.y)
    assert add(G, neg(G)) is None
    assert mul(N, G) is None


# --- key decoding: one test per refusal, boundaries included ------------------------------

Y_ONE = (X_WITH_Y_ONE, 1)
Y_TOP = (X_WITH_Y_ONE, P - 1)  # y = p - 1: the largest y a key can have


def largest_x_point():
    x = P - 1
    while point_with_x(x) is None:
        x -= 1
    return point_with_x(x)


def test_boundary_coordinates_just_below_p_are_accepted_by_both_decoders():
    top_x = largest_x_point()
    for pt in (Y_ONE, Y_TOP, top_x):
        assert on_curve(pt)
        assert p256.decode_point(encode(pt)) == pt
        assert p256.spki_to_point(p256.point_to_spki(encode(pt))) == encode(pt)
        # OpenSSL takes the same key: the two paths cannot disagree on it.
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), encode(pt))


@pytest.mark.parametrize(
    "x, y",
    [
        (X_WITH_Y_ONE, P),  # y exactly p: y mod p = 0, and no point has y = 0
        (X_WITH_Y_ONE, P + 1),  # y + p where (x, 1) is on the curve: an alias, not a key
        (P, point_with_x(0)[1]),  # x exactly p: x mod p = 0 and (0, y) is on the curve
        (2**256 - 1, 1),
    ],
    ids=["y=p", "y=p+1 alias of y=1", "x=p alias of x=0", "x=2^256-1"],
)
def test_coordinate_at_or_above_p_is_refused_as_out_of_range(x, y):
    point = b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")
    with pytest.raises(DecodeError, match=">= the field prime p"):
        p256.decode_point(point)
    for verify in (p256.verify_digest_pure, p256.verify_digest_fast, p256.verify_der_fast):
        with pytest.raises(DecodeError, match=">= the field prime p"):
            verify(point, bytes(32), raw(1, 1))


@pytest.mark.parametrize("dx, dy", [(0, 1), (0, -1), (1, 0), (-1, 0)])
def test_point_off_the_curve_by_one_is_refused(dx, dy):
    x, y = mul(0xABCDEF, G)
    point = encode(((x + dx) % P, (y + dy) % P))
    with pytest.raises(DecodeError, match="not a point on the curve"):
        p256.decode_point(point)
    for verify in (p256.verify_digest_pure, p256.verify_digest_fast, p256.verify_der_fast):
        with pytest.raises(DecodeError, match="not a point on the curve"):
            verify(point, bytes(32), raw(1, 1))


@pytest.mark.parametrize("prefix", [0x00, 0x02, 0x03, 0x05, 0x06, 0x07, 0xFF])
def test_only_the_uncompressed_prefix_is_accepted(prefix):
    point = bytes([prefix]) + encode(G)[1:]
    with pytest.raises(DecodeError, match=f"start with 0x04.*got 0x{prefix:02x}"):
        p256.decode_point(point)
    # OpenSSL would take 0x06/0x07 (hybrid); we refuse before it is asked.
    with pytest.raises(DecodeError, match="0x04"):
        p256.verify_digest_fast(point, bytes(32), raw(1, 1))


@pytest.mark.parametrize("length", [0, 1, 33, 64, 66, 97])
def test_only_65_byte_points_are_accepted(length):
    point = (encode(G) * 2)[:length]
    with pytest.raises(DecodeError, match=f"65 bytes.*got {length}"):
        p256.decode_point(point)


def test_compressed_key_is_refused_even_though_openssl_would_decode_it():
    compressed = bytes([2 + (G[1] & 1)]) + G[0].to_bytes(32, "big")
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), compressed)  # OpenSSL: fine
    for verify in (p256.verify_digest_pure, p256.verify_digest_fast, p256.verify_der_fast):
        with pytest.raises(DecodeError, match="65 bytes"):
            verify(compressed, bytes(32), raw(1, 1))


def spki(pt):
    return p256._SPKI_PREFIX + encode(pt)


def test_spki_rules_each_give_their_own_message():
    good = spki(mul(42, G))
    assert p256.spki_to_point(good) == encode(mul(42, G))
    assert p256.spki_to_point(bytearray(good)) == encode(mul(42, G))
    with pytest.raises(DecodeError, match="91 bytes, got 90"):
        p256.spki_to_point(good[:-1])
    with pytest.raises(DecodeError, match="91 bytes, got 92"):
        p256.spki_to_point(good + b"\x00")
    for i in range(len(p256._SPKI_PREFIX)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        with pytest.raises(DecodeError, match="not an uncompressed id-ecPublicKey on prime256v1"):
            p256.spki_to_point(bytes(bad))
    with pytest.raises(DecodeError, match="not a point on the curve"):
        p256.spki_to_point(p256._SPKI_PREFIX + encode((G[0], G[1] ^ 1)))
    with pytest.raises(DecodeError, match=">= the field prime"):
        p256.point_to_spki(encode((P, 0)))


def test_spki_prefix_is_the_der_that_openssl_writes():
    key = ec.derive_private_key(7, ec.SECP256R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert der == p256.point_to_spki(encode(mul(7, G)))
    assert len(der) == p256._SPKI_LEN == 91


# --- digest and order of checks -----------------------------------------------------------

VERIFIERS = (
    p256.verify_digest_pure,
    p256.verify_digest_fast,
    p256.verify_der_fast,
    p256.verify_digest,
)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_digest_must_be_32_bytes_on_every_path(length):
    for verify in VERIFIERS:
        with pytest.raises(ValueError, match=f"32-byte SHA-256, got {length} bytes"):
            verify(encode(G), bytes(length), raw(1, 1))


def test_a_bad_key_is_reported_before_a_bad_digest_and_a_bad_digest_before_a_bad_signature():
    off_curve = encode((G[0], G[1] ^ 1))
    for verify in VERIFIERS:
        with pytest.raises(DecodeError):
            verify(off_curve, bytes(5), b"")
        with pytest.raises(ValueError, match="32-byte"):
            verify(encode(G), bytes(5), b"")


# --- signature range: 1 <= r, s < n ---------------------------------------------------------


@pytest.mark.parametrize(
    "r, s, accepted",
    [
        (0, 1, False),
        (1, 0, False),
        (1, 1, True),
        (N - 1, N - 1, True),
        (N, 1, False),
        (1, N, False),
        (N + 1, 1, False),
        (1, N + 1, False),
        (2**256 - 1, 1, False),
        (1, 2**256 - 1, False),
    ],
)
def test_signature_scalars_must_lie_in_1_to_n_minus_1(r, s, accepted):
    # Range only, on the parser both paths share: r = n, for one, can never be told apart
    # through verify (u2 = n/s = 0 leaves x(u1*G) = n, a discrete log away).
    assert p256._split_signature(raw(r, s)) == ((r, s) if accepted else None)


@pytest.mark.parametrize("length", [63, 65])
def test_signature_must_be_64_bytes(length):
    assert p256._split_signature(raw(1, 1)[:length] + b"\x01" * (length - 64)) is None
    assert p256._split_signature(bytearray(raw(3, 5))) == (3, 5)


def valid_with_small_scalars():
    """A valid (r, s) with r < 2^256 - n and s = 1 (both have a 32-byte alias + n)."""
    target = point_with_x(5)  # the smallest x > 0 of a point
    e = 0x1234
    r = target[0]
    q = key_meeting(target, e, r, 1)
    return q, e, r


def test_scalars_reduced_mod_n_are_not_the_same_signature():
    q, e, r = valid_with_small_scalars()
    assert both(q, e, raw(r, 1)) == (True, True)
    assert both(q, e, raw(r + N, 1)) == (False, False)
    assert both(q, e, raw(r, 1 + N)) == (False, False)
    # s = 0 would make the pure path invert 0 (Euclid returns 1): it must never get there.
    assert both(q, e, raw(r, 0)) == (False, False)


def test_s_equal_to_n_is_refused_even_where_its_arithmetic_would_match():
    # Euclid gives n^-1 mod n = n - 1 = -1, so the pure path would compute -(e*G + r*Q):
    # make x(e*G + r*Q) = r and only the range check stands between s = n and "valid".
    target = mul(0x5EED, G)
    r = target[0] % N
    e = 0xD1CE
    q = mul(pow(r, -1, N), add(target, neg(mul(e, G))))
    assert p256._inverse(N, N) == N - 1
    assert both(q, e, raw(r, N)) == (False, False)
    assert both(q, e, raw(r, 1)) == (True, True)


# --- the final comparison x(R) = r (mod n), in projective form ------------------------------


def test_x_of_r_at_or_above_n_is_accepted_as_r_plus_n():
    target = point_with_x(N + 3)  # n <= x(R) < p: x(R) mod n = 3
    assert target is not None
    e, s = 0xFEED, 0xBEEF
    q = key_meeting(target, e, 3, s)
    assert both(q, e, raw(3, s)) == (True, True)
    # r = x(R) itself is out of range; r = 3 + 1 is just wrong.
    assert both(q, e, raw(4, s)) == (False, False)


def test_r_whose_alias_would_need_x_of_r_at_or_above_p_is_refused():
    # r = x(R) + p - n: then r + n = x(R) + p, which equals x(R) only mod p. The r + n
    # branch must not fire once r + n >= p.
    target = point_with_x(5)
    e, s = 0xFEED, 0xBEEF
    r = target[0] + P - N
    q = key_meeting(target, e, r, s)
    assert both(q, e, raw(r, s)) == (False, False)


def test_r_equal_to_p_minus_n_with_x_of_r_zero_is_refused():
    # (0, y) is on the curve. r = p - n gives r + n = p, which is 0 mod p = x(R): the exact
    # boundary of the r + n < p test.
    target = point_with_x(0)
    assert target is not None
    e, s = 0xFEED, 0xBEEF
    r = P - N
    q = key_meeting(target, e, r, s)
    assert both(q, e, raw(r, s)) == (False, False)


def test_r_is_compared_with_x_of_r_not_its_y_or_z():
    target = mul(0x77, G)
    e, s = 0xAB, 0xCD
    r = target[0] % N
    q = key_meeting(target, e, r, s)
    assert both(q, e, raw(r, s)) == (True, True)
    assert both(q, e, raw(target[1] % N, s)) == (False, False)
    assert both(q, e, raw(r, s + 1)) == (False, False)
    assert both(q, e ^ 1, raw(r, s)) == (False, False)


# --- the group law inside u1*G + u2*Q ---------------------------------------------------------


def test_result_equal_to_the_key_itself_is_accepted():
    # e = 0 and s = r give u1 = 0, u2 = 1: R is Q's own table entry, added once onto
    # infinity at the last position, so R arrives with Z = 1.
    q = mul(0x1D, G)
    r = q[0] % N
    assert both(q, 0, raw(r, r)) == (True, True)


def test_cancellation_at_the_last_addition_is_infinity_and_refused():
    # Q = -G, u1 = u2 = 1: G then -G at position 0, nothing after. With r = 1 a wrong
    # "infinity" carrying X = 1, Z = 1 would read as x(R) = 1 = r.
    assert both(neg(G), 1, raw(1, 1)) == (False, False)


@pytest.mark.parametrize("key_sign", [1, -1], ids=["Q=G doubles", "Q=-G cancels"])
@pytest.mark.parametrize("u1", [1 + 2**29, 2**30 - 1], ids=["1+2^29", "2^30-1"])
def test_same_x_addition_in_the_middle_of_a_position_keeps_going(key_sign, u1):
    # With full tables, u1 = 1 + 2^29 and u2 = 1 put G, Q and 2^29*G, in that order, at
    # position 0. Q = G: G + G must double (2G); Q = -G: G - G is infinity, then 2^29*G is
    # added onto it. On the one long chain of a first sighting, u1 = 2^30 - 1 puts -G and
    # Q at position 0 (wNAF digit -1 of chunk 0), then chunk 0's carry G and chunk 1's G
    # at position 29: the same-x cases again, and a doubling between two additions.
    q = G if key_sign == 1 else neg(G)
    target = mul(u1 + key_sign, G)
    r = target[0] % N
    # u2 = r/s = 1 needs s = r; u1 = e/s then needs e = u1*r.
    e = u1 * r % N
    assert both(q, e, raw(r, r)) == (True, True)
    assert both(q, e, raw(r, r - 1)) == (False, False)


@pytest.mark.parametrize("key_sign", [1, -1], ids=["doubles", "cancels"])
@pytest.mark.parametrize(
    "u1, key",
    [(1 + 2**16, 1), (2**9 - 1, 2**9), (N - 3, 1), (N - 2**8 - 1, 2**8)],
    ids=["1+2^16", "2^9-1", "n-3", "n-2^8-1"],
)
def test_same_x_addition_in_the_wide_layout_keeps_going(key_sign, u1, key):
    # Wide layout, u2 = 1: Q's one digit goes first at position 0, prepared or not; G's
    # digit at bit b goes to position b mod 8. u1 = 1 + 2^16: G (bit 0) then 2^16*G (bit 16)
    # after Q at position 0, so Q = G doubles and Q = -G cancels to infinity before 2^16*G
    # arrives. u1 = 2^9 - 1: digit +1 at bit 9 (position 1, 2^8*G, doubled once: 2^9*G),
    # then Q = +-2^9*G doubles or cancels at position 0 before -G (bit 0). u1 = n - 3 and
    # n - 2^8 - 1 end in a digit at bit 256 (chunk 32, position 0).
    q = mul(key, G) if key_sign == 1 else neg(mul(key, G))
    target = mul((u1 + key_sign * key) % N, G)
    r = target[0] % N
    e = u1 * r % N
    assert both(q, e, raw(r, r)) == (True, True)
    assert both(q, e, raw(r, r - 1)) == (False, False)


def test_add_mixed_handles_infinity_doubling_and_negation():
    def affine(jac):
        X, Y, Z = jac
        if Z == 0:
            return None
        zi = pow(Z, -1, P)
        return X * zi * zi % P, Y * zi * zi * zi % P

    two_g = mul(2, G)
    assert affine(p256._add_mixed(1, 1, 0, G[0], G[1])) == G
    assert affine(p256._add_mixed(G[0], G[1], 1, G[0], G[1])) == two_g
    assert p256._add_mixed(G[0], G[1], 1, G[0], P - G[1])[2] == 0
    # The same, with the accumulator in a Jacobian form where Z != 1.
    z = 0x1234567
    jac_g = (G[0] * z * z % P, G[1] * z * z * z % P, z)
    assert affine(p256._add_mixed(*jac_g, G[0], G[1])) == two_g
    assert p256._add_mixed(*jac_g, G[0], P - G[1])[2] == 0
    assert affine(p256._add_mixed(*jac_g, two_g[0], two_g[1])) == mul(3, G)
    assert affine(p256._double(*jac_g)) == two_g
    assert p256._double(5, 7, 0)[2] == 0


@pytest.mark.parametrize("a", [1, 2, 3, N - 1, N - 2, 0xDEADBEEF, P - 1])
def test_inverse_by_euclid(a):
    for m in (N, P):
        if a < m:
            assert a * p256._inverse(a, m) % m == 1


# --- caches ---------------------------------------------------------------------------------


def signed_by(d, e):
    k = 0x1000 + d
    r = mul(k, G)[0] % N
    s = pow(k, -1, N) * (e + r * d) % N
    return mul(d, G), raw(r, s)


def counting_builds(monkeypatch):
    """Record the arguments of every table build p256 does from now on.

    _build_tables(x, y, window, split[, bits]) as its arguments,
    _odd_multiples(x, y, count) as (x, y, count, "co-Z").
    """
    built = []
    real_tables, real_odd = p256._build_tables, p256._odd_multiples

    def tables(*args):
        built.append(args)
        return real_tables(*args)

    def odd(x, y, count):
        built.append((x, y, count, "co-Z"))
        return real_odd(x, y, count)

    monkeypatch.setattr(p256, "_build_tables", tables)
    monkeypatch.setattr(p256, "_odd_multiples", odd)
    return built


@pytest.fixture(params=[False, True], ids=["board layout", "wide layout"])
def layout(request, monkeypatch):
    """Run the test in one layout; return (cold build args, prepared build args, table size).

    The build arguments leave out the point: (window, split) or (window, split, bits).
    """
    monkeypatch.setattr(p256, "_WIDE", request.param)
    monkeypatch.setattr(p256, "_q_cache", {})
    if request.param:
        yield (8, "co-Z"), (p256._W_Q_WINDOW, p256._W_CHUNKS, p256._W_BITS), 33
    else:
        yield (p256._Q_WINDOW, 1), (p256._Q_WINDOW, p256._SPLIT), 64 * 9 * 8
    p256.clear_caches()


def test_generator_tables_are_constants_and_never_built(monkeypatch):
    monkeypatch.setattr(p256, "_WIDE", False)
    p256.clear_caches()
    built = counting_builds(monkeypatch)
    q, sig = signed_by(5, 99)
    for _ in range(3):
        assert p256.verify_digest_pure(encode(q), (99).to_bytes(32, "big"), sig)
    assert all(b[:2] == q for b in built)
    p256.clear_caches()


def test_wide_generator_tables_are_built_once_each_and_survive_clear_caches(monkeypatch):
    monkeypatch.setattr(p256, "_WIDE", True)
    monkeypatch.setattr(p256, "_wide_g", {})
    p256.clear_caches()
    built = counting_builds(monkeypatch)
    q, sig = signed_by(5, 99)
    for _ in range(3):
        assert p256.verify_digest_pure(encode(q), (99).to_bytes(32, "big"), sig)  # not prepared
        p256.prepare([encode(q)])
        assert p256.verify_digest_pure(encode(q), (99).to_bytes(32, "big"), sig)  # prepared
        p256.clear_caches()
    assert [b for b in built if b[:2] == G] == [(G[0], G[1], 12, 1, 8), (G[0], G[1], 9, 33, 8)]
    assert sorted(p256._wide_g) == [9, 12]
    assert [len(c) for c in p256._wide_g[9]] == [256] * 33
    assert [len(c) for c in p256._wide_g[12]] == [2048]


def test_a_key_not_prepared_gets_its_odd_multiples_and_their_negatives_in_the_wide_layout():
    q = mul(0xC0FFEE, G)
    (chunk,) = p256._odd_multiples(q[0], q[1], 8)
    assert chunk == [mul(k, q) for k in range(1, 16, 2)] + [neg(mul(k, q)) for k in range(15, 0, -2)]
    (chunk,) = p256._odd_multiples(G[0], G[1], 2)
    assert chunk == [G, mul(3, G), neg(mul(3, G)), neg(G)]


@pytest.mark.parametrize("window, split, picks", [
    (9, 33, [(i, j) for i in range(33) for j in (0, 127)] + [(i, 37 * i % 128) for i in range(33)]),
    (12, 1, [(0, j) for j in (0, 1, 2, 511, 1022, 1023)]),
])
def test_wide_generator_tables_hold_the_odd_multiples_of_each_chunk_base(window, split, picks):
    # Chunk i, entry j is (2j + 1) * 2^(8 i) * G and entry -1 - j its negative: every
    # chunk's first and last entries and a spread of the others, against the reference.
    table = p256._g_wide(window, split)
    for i, j in picks:
        point = mul((2 * j + 1) << (8 * i), G)
        assert table[i][j] == point and table[i][-1 - j] == neg(point), (i, j)


def test_the_wide_layout_never_runs_euclid_and_the_board_layout_always_does(monkeypatch):
    calls = []
    real = p256._inverse

    def counting(a, m):
        calls.append(m)
        return real(a, m)

    monkeypatch.setattr(p256, "_inverse", counting)
    q, sig = signed_by(6, 66)
    for wide in (True, False):
        monkeypatch.setattr(p256, "_WIDE", wide)
        p256.clear_caches()
        assert p256.verify_digest_pure(encode(q), (66).to_bytes(32, "big"), sig)
        assert p256.prepare([encode(q)]) == 1
        assert p256.verify_digest_pure(encode(q), (66).to_bytes(32, "big"), sig)
        if wide:
            assert calls == []
    # Board: s^-1 mod n per verify, two table inversions per build.
    assert calls == [N, P, P, P, P, N]
    p256.clear_caches()


def test_a_key_not_prepared_gets_a_chunk_zero_table_per_call_and_nothing_kept(
    monkeypatch, layout
):
    cold, _, _ = layout
    p256.clear_caches()
    built = counting_builds(monkeypatch)
    q, sig = signed_by(5, 99)
    digest = (99).to_bytes(32, "big")
    key = encode(q)
    for i in range(3):
        assert p256.verify_digest_pure(bytearray(key) if i else key, digest, sig)
        assert p256.verify_digest_fast(key, digest, sig)
    assert [b for b in built if b[:2] != G] == [(q[0], q[1]) + cold] * 3
    assert p256._q_cache == {}
    assert list(p256._fast_cache) == [key]
    assert p256._fast_key(key) is p256._fast_key(bytearray(key))
    p256.clear_caches()
    assert p256._fast_cache == {}


def test_a_prepared_key_is_built_once_and_clear_caches_drops_it(monkeypatch, layout):
    cold, prepared, size = layout
    p256.clear_caches()
    p256.verify_digest_pure(encode(G), bytes(32), raw(1, 1))  # G's wide table, if any, now
    built = counting_builds(monkeypatch)
    q, sig = signed_by(5, 99)
    digest = (99).to_bytes(32, "big")
    key = encode(q)
    assert p256.prepare([bytearray(key)]) == 1
    assert built == [(q[0], q[1]) + prepared]
    assert list(p256._q_cache) == [key]
    assert len(p256._q_cache[key]) == size
    if p256._WIDE:  # chunk i: (2j + 1) * 2^(8 i) * Q at j, its negative at -1 - j
        chunks = p256._q_cache[key]
        assert [len(c) for c in chunks] == [32] * 33
        for i, j in ((0, 0), (0, 15), (1, 7), (32, 0), (32, 15), (17, 9)):
            point = mul((2 * j + 1) << (8 * i), q)
            assert chunks[i][j] == point and chunks[i][-1 - j] == neg(point)
    for _ in range(3):
        assert p256.verify_digest_pure(key, digest, sig)
        assert not p256.verify_digest_pure(key, digest, raw(1, 1))
    assert len(built) == 1
    p256.clear_caches()
    assert p256._q_cache == {}
    assert p256.verify_digest_pure(key, digest, sig)
    assert built[1:] == [(q[0], q[1]) + cold]


def test_a_malformed_signature_builds_nothing(monkeypatch, layout):
    p256.clear_caches()
    built = counting_builds(monkeypatch)
    q, sig = signed_by(5, 99)
    for bad in (raw(0, 1), raw(1, N), sig[:63]):
        assert p256.verify_digest_pure(encode(q), (99).to_bytes(32, "big"), bad) is False
    assert built == [] and p256._q_cache == {}


def test_prepared_keys_stay_however_many_other_keys_verify(monkeypatch, layout):
    cold, _, _ = layout
    p256.clear_caches()
    digest = (77).to_bytes(32, "big")
    kept = [signed_by(d, 77) for d in range(21, 21 + p256._Q_CACHE_MAX)]
    assert p256.prepare([encode(q) for q, _ in kept]) == p256._Q_CACHE_MAX
    tables = dict(p256._q_cache)
    built = counting_builds(monkeypatch)
    for d in range(100, 105):  # not among the kept ones
        q, sig = signed_by(d, 77)
        assert p256.verify_digest_pure(encode(q), digest, sig)
    assert p256._q_cache == tables
    for q, sig in kept:
        assert p256.verify_digest_pure(encode(q), digest, sig)
    assert [b[2:] for b in built if b[:2] != G] == [cold] * 5  # only the others' own tables
    p256.clear_caches()


def test_prepare_replaces_the_kept_set_reuses_tables_and_stops_at_the_limit(monkeypatch, layout):
    p256.clear_caches()
    keys = [encode(mul(d, G)) for d in range(31, 31 + p256._Q_CACHE_MAX + 2)]
    built = counting_builds(monkeypatch)
    assert p256.prepare([keys[0], bytearray(keys[0])] + keys[1:]) == p256._Q_CACHE_MAX
    assert sorted(p256._q_cache) == sorted(keys[: p256._Q_CACHE_MAX])
    assert len(built) == p256._Q_CACHE_MAX
    # A second prepare keeps the tables of a key kept before, and drops the others.
    first = p256._q_cache[keys[1]]
    assert p256.prepare([keys[1], keys[-1]]) == 2
    assert sorted(p256._q_cache) == sorted([keys[1], keys[-1]])
    assert p256._q_cache[keys[1]] is first
    assert len(built) == p256._Q_CACHE_MAX + 1
    assert p256.prepare([]) == 0 and p256._q_cache == {}
    p256.clear_caches()


def test_prepare_with_a_bad_key_raises_and_keeps_the_kept_set():
    p256.clear_caches()
    good = encode(mul(3, G))
    assert p256.prepare([good]) == 1
    with pytest.raises(DecodeError, match="not a point on the curve"):
        p256.prepare([encode(mul(4, G)), encode((G[0], G[1] ^ 1))])
    assert list(p256._q_cache) == [good]
    p256.clear_caches()


def test_openssl_key_cache_is_cleared_when_full():
    p256.clear_caches()
    digest = (7).to_bytes(32, "big")
    limit = p256._FAST_CACHE_MAX
    for i in range(limit + 3):
        point = encode(mul(1000 + i, G))
        assert p256.verify_digest_fast(point, digest, raw(1, 1)) is False
        assert len(p256._fast_cache) == (i % limit) + 1
    p256.clear_caches()


def test_bad_key_is_never_cached():
    p256.clear_caches()
    bad = encode((G[0], G[1] ^ 1))
    for verify in (p256.verify_digest_pure, p256.verify_digest_fast):
        for _ in range(2):
            with pytest.raises(DecodeError):
                verify(bad, bytes(32), raw(1, 1))
    assert p256._q_cache == {} and p256._fast_cache == {}


# --- backends ---------------------------------------------------------------------------------


def test_without_cryptography_the_pure_path_answers_and_the_fast_path_refuses(monkeypatch):
    q, sig = signed_by(9, 1234)
    digest = (1234).to_bytes(32, "big")
    monkeypatch.setattr(p256, "ec", None)
    assert p256.verify_digest(encode(q), digest, sig) is True
    assert p256.verify_digest(encode(q), digest, raw(1, 1)) is False
    for fast in (p256.verify_digest_fast, p256.verify_der_fast):
        with pytest.raises(RuntimeError, match="cryptography package is not available"):
            fast(encode(q), digest, sig)


def test_verify_hashes_the_message_with_sha256():
    d, message = 0x51, b"trustfleet"
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    q, sig = signed_by(d, e)
    assert p256.verify(encode(q), message, sig) is True
    assert p256.verify(encode(q), message + b".", sig) is False


def p256_as_on_micropython(monkeypatch):
    """A second copy of the module, executed as MicroPython would (sys.implementation.name)."""
    spec = importlib.util.find_spec("trustfleet_device.p256")
    fake = types.SimpleNamespace(**vars(sys.implementation))
    fake.name = "micropython"
    module = importlib.util.module_from_spec(spec)
    with monkeypatch.context() as patch:
        patch.setattr(sys, "implementation", fake)
        spec.loader.exec_module(module)
    return module


def test_micropython_build_keeps_tables_within_the_ram_budget_and_still_verifies(monkeypatch):
    # The docstring's budget for ~100 KB boards: window 5, 9 chunks x 8 points per key as
    # 4,608 bytes, at most two keys prepared; G comes from constants. CPython keeps more
    # keys; the verdicts must not depend on that.
    mp = p256_as_on_micropython(monkeypatch)
    assert (mp._Q_CACHE_MAX, p256._Q_CACHE_MAX) == (2, 32)
    assert (mp._WIDE, p256._WIDE) == (False, True)
    assert mp._G_TABLES == p256._G_TABLES
    keys = [encode(signed_by(d, 0)[0]) for d in (3, 4, 5)]
    assert mp.prepare(keys) == 2
    for d in (3, 4, 5):
        e = 0x4242 + d
        q, sig = signed_by(d, e)
        digest = e.to_bytes(32, "big")
        for _ in range(2):
            assert mp.verify_digest_pure(encode(q), digest, sig) is True
            assert mp.verify_digest_pure(encode(q), digest, raw(1, 1)) is False
        assert sorted(mp._q_cache) == sorted(keys[:2])
        for tables in mp._q_cache.values():
            assert len(tables) == 9 * 8 * 64
    # The crafted group-law cases again, with the small windows, on every path.
    for u1 in (1 + 2**29, 2**30 - 1):
        r = mul(u1 - 1, G)[0] % N
        mp.clear_caches()
        for i in range(2):
            if i:
                mp.prepare([encode(neg(G))])
            assert mp.verify_digest_pure(encode(neg(G)), (u1 * r % N).to_bytes(32, "big"),
                                         raw(r, r))
    assert not mp.verify_digest_pure(encode(neg(G)), (1).to_bytes(32, "big"), raw(1, 1))
