"""ECDSA P-256 (secp256r1, SHA-256) signature verification, and nothing else.

What it trusts: the curve constants below (SEC 2 v2, section 2.4.2) and,
on CPython, the `cryptography` package when it imports. Keys, digests and
signatures are all treated as untrusted.

What it refuses:
- public keys that are not a 65-byte uncompressed SEC1 point (0x04||X||Y)
  with both coordinates below p and on the curve: DecodeError. P-256 has
  cofactor 1, so "on the curve" also means "in the prime-order group" and
  the point at infinity cannot be encoded at all.
- SubjectPublicKeyInfo other than the one exact DER form of such a key
  (RFC 5480): DecodeError. We compare bytes instead of parsing DER, so no
  BER leniency can slip in.
- signatures that are not exactly r||s (64 bytes, IEEE P1363) with
  1 <= r, s < n: verification returns False and never raises.

Order of work in every verify: the key is validated first (a bad key is a
DecodeError even when the signature is also bad), then the signature range
checks, then the curve arithmetic (SEC 1 v2, section 4.1.4).

Backends: `verify_digest` uses OpenSSL through `cryptography` when that
imports (CPython) and the pure-Python code otherwise (MicroPython). Both
give the same answer for every input; tests compare them.

How the pure path is fast. All inputs are public, so nothing here needs to
be constant time. u1*G + u2*Q is computed with both scalars cut into
_SPLIT chunks of 64 bits; the chunk i of a scalar multiplies 2^(64*i)
times the base point, whose odd multiples are precomputed in affine form.
All 2*_SPLIT wNAF streams then share one chain of only 64 doublings
(a = -3 Jacobian formulas) and use mixed Jacobian-affine additions. The
tables for G are built on first use; the tables for a public key Q are
kept in a small bounded cache because root keys verify many documents.
The result is checked in projective form (r*Z^2 == X), so a verify does
one modular inversion only: s^-1 mod n, by extended Euclid.
"""

import hashlib
import sys

from trustfleet_device.errors import DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import (
        Prehashed,
        encode_dss_signature,
    )

    _ECDSA_PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))
    BACKEND = "cryptography"
except ImportError:
    ec = None
    BACKEND = "pure"


# Curve constants (SEC 2 v2, 2.4.2). Too big for const() on every port.
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

_POINT_LEN = const(65)
_COORD_LEN = const(32)
_SIG_LEN = const(64)
_DIGEST_LEN = const(32)
_SPKI_LEN = const(91)

# DER of SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING
# header } for a 65-byte point (RFC 5480, section 2).
_SPKI_PREFIX = bytes(
    (
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01,
        0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    )
)  # fmt: skip

# Table sizes. A wNAF window w stores 2^(w-2) affine points per chunk.
# MicroPython targets boards with about 100 KB of heap: there the G tables
# and each cached key hold 4 * 4 points, about 3.7 KB each (measured with
# gc.mem_alloc on the 32-bit wasm port), and two keys are cached. CPython
# can afford bigger windows, which mean fewer additions per verify.
# Plain globals, not const(): the value depends on the platform.
_SPLIT = const(4)
_CHUNK_BITS = const(64)
_CHUNK_MASK = (1 << 64) - 1
if sys.implementation.name == "micropython":
    _G_WINDOW = 4
    _Q_WINDOW = 4
    _Q_CACHE_MAX = 2
else:
    _G_WINDOW = 8
    _Q_WINDOW = 5
    _Q_CACHE_MAX = 32
_FAST_CACHE_MAX = const(64)

_g_tables = None
_q_cache = {}
_fast_cache = {}


def clear_caches():
    """Drop the G tables and every cached key, e.g. to free RAM before installing a bundle."""
    global _g_tables
    _g_tables = None
    _q_cache.clear()
    _fast_cache.clear()


def decode_point(point):
    """Return (x, y) of a 65-byte uncompressed SEC1 P-256 point.

    Raises:
        DecodeError: wrong length or prefix, coordinate >= p, or not on the curve.
    """
    if len(point) != _POINT_LEN:
        raise DecodeError(
            "P-256 public key must be 65 bytes (uncompressed SEC1), got %d" % len(point)
        )
    if point[0] != 0x04:
        raise DecodeError(
            "P-256 public key must start with 0x04 (uncompressed), got 0x%02x" % point[0]
        )
    x = int.from_bytes(point[1 : 1 + _COORD_LEN], "big")
    y = int.from_bytes(point[1 + _COORD_LEN :], "big")
    if x >= _P or y >= _P:
        raise DecodeError("P-256 public key has a coordinate >= the field prime p")
    if (y * y - x * x * x + 3 * x - _B) % _P != 0:
        raise DecodeError("P-256 public key is not a point on the curve")
    return x, y


def spki_to_point(spki_der):
    """Return the 65-byte point inside the exact DER SubjectPublicKeyInfo of a P-256 key.

    Raises:
        DecodeError: anything but the 91-byte id-ecPublicKey/prime256v1 form, or a bad point.
    """
    if len(spki_der) != _SPKI_LEN:
        raise DecodeError(
            "P-256 SubjectPublicKeyInfo must be %d bytes, got %d" % (_SPKI_LEN, len(spki_der))
        )
    if bytes(spki_der[: len(_SPKI_PREFIX)]) != _SPKI_PREFIX:
        raise DecodeError(
            "SubjectPublicKeyInfo is not an uncompressed id-ecPublicKey on prime256v1"
        )
    point = bytes(spki_der[len(_SPKI_PREFIX) :])
    decode_point(point)
    return point


def point_to_spki(point):
    """Return the 91-byte DER SubjectPublicKeyInfo for a 65-byte uncompressed P-256 point.

    Raises:
        DecodeError: the point is not a valid uncompressed P-256 point.
    """
    decode_point(point)
    return _SPKI_PREFIX + bytes(point)


def _check_digest(digest):
    """Refuse a digest that is not 32 bytes: that is a caller mistake, not a bad signature.

    Raises:
        ValueError: the digest is not 32 bytes long.
    """
    if len(digest) != _DIGEST_LEN:
        raise ValueError("digest must be the 32-byte SHA-256, got %d bytes" % len(digest))


def _split_signature(sig):
    """Return (r, s) from a raw r||s signature, or None when it is malformed or out of range."""
    if len(sig) != _SIG_LEN:
        return None
    r = int.from_bytes(sig[:_COORD_LEN], "big")
    s = int.from_bytes(sig[_COORD_LEN:], "big")
    if r == 0 or s == 0 or r >= _N or s >= _N:
        return None
    return r, s


# ---------------------------------------------------------------------------
# Pure-Python arithmetic. Points are Jacobian (X, Y, Z) with x = X/Z^2,
# y = Y/Z^3 and Z == 0 for infinity, or affine (x, y) in tables. Every
# coordinate is kept reduced to [0, p) so equality tests are exact.


def _double(X, Y, Z):
    """Return 2*(X, Y, Z) with the a = -3 formulas (dbl-2001-b); infinity stays infinity."""
    p = _P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y * Z % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _add_mixed(X1, Y1, Z1, x2, y2):
    """Return (X1, Y1, Z1) + (x2, y2) with every special case handled (madd)."""
    p = _P
    if Z1 == 0:
        return x2, y2, 1
    zz = Z1 * Z1 % p
    h = x2 * zz % p - X1
    r = y2 * zz * Z1 % p - Y1
    if h == 0:
        if r == 0:
            return _double(X1, Y1, Z1)
        return 1, 1, 0
    hh = h * h % p
    hhh = h * hh % p
    v = X1 * hh % p
    X3 = (r * r - hhh - 2 * v) % p
    Y3 = (r * (v - X3) - Y1 * hhh) % p
    return X3, Y3, Z1 * h % p


def _inverse(a, m):
    """Return a^-1 mod m for 0 < a < m, m prime, by the extended Euclidean algorithm."""
    # Not pow(a, -1, m): MicroPython silently returns 0 for it. Not Fermat
    # either: pow(a, m - 2, m) is about 5 times slower than this loop on CPython.
    r0, r1 = m, a
    s0, s1 = 0, 1
    while r1 > 1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        s0, s1 = s1, s0 - q * s1
    return s1 % m


def _to_affine(points):
    """Return the Jacobian points (none at infinity) as affine (x, y) with one inversion."""
    p = _P
    prefix = []
    acc = 1
    for pt in points:
        acc = acc * pt[2] % p
        prefix.append(acc)
    inv = _inverse(acc, p)
    out = [None] * len(points)
    for i in range(len(points) - 1, -1, -1):
        X, Y, Z = points[i]
        zi = inv * prefix[i - 1] % p if i else inv
        inv = inv * Z % p
        zi2 = zi * zi % p
        out[i] = (X * zi2 % p, Y * zi2 * zi % p)
    return out


def _build_tables(x, y, window):
    """Return _SPLIT lists; list i holds the odd multiples 1, 3, .. (2^(w-1) - 1) of 2^(64 i)*(x, y)."""
    # Bases 2^(64 i)*P and their doubles, normalised together.
    jac = []
    cur = (x, y, 1)
    for i in range(_SPLIT):
        if i:
            for _ in range(_CHUNK_BITS):
                cur = _double(cur[0], cur[1], cur[2])
        jac.append(cur)
        jac.append(_double(cur[0], cur[1], cur[2]))
    aff = _to_affine(jac)
    # Odd multiples: k*B + 2*B. None of them is infinity or equal to 2*B,
    # since k < 2^(w-1) is far below the group order n.
    count = 1 << (window - 2)
    flat = []
    for i in range(_SPLIT):
        bx, by = aff[2 * i]
        dx, dy = aff[2 * i + 1]
        cur = (bx, by, 1)
        flat.append(cur)
        for _ in range(count - 1):
            cur = _add_mixed(cur[0], cur[1], cur[2], dx, dy)
            flat.append(cur)
    flat = _to_affine(flat)
    return [flat[i * count : (i + 1) * count] for i in range(_SPLIT)]


def _generator_tables():
    """Return the G tables, building them on first use (not at import: RAM and boot time)."""
    global _g_tables
    if _g_tables is None:
        _g_tables = _build_tables(_GX, _GY, _G_WINDOW)
    return _g_tables


def _key_tables(point):
    """Return the cached tables for a public key, validating it on a cache miss.

    Raises:
        DecodeError: the key is not a valid uncompressed P-256 point.
    """
    key = bytes(point)
    tables = _q_cache.get(key)
    if tables is None:
        x, y = decode_point(key)
        tables = _build_tables(x, y, _Q_WINDOW)
        # Clearing beats evicting one entry: no reliance on dict order, and
        # a device has only a few root keys anyway.
        if len(_q_cache) >= _Q_CACHE_MAX:
            _q_cache.clear()
        _q_cache[key] = tables
    return tables


def _schedule(sched, k, table, window):
    """Recode k (< 2^64) in width-w NAF and append the signed table points to sched[position]."""
    p = _P
    full = 1 << window
    half = full >> 1
    mask = full - 1
    i = 0
    while k:
        if k & 1:
            d = k & mask
            if d > half:
                k += full - d
                x, y = table[(full - d) >> 1]
                pt = (x, p - y)
            else:
                k -= d
                pt = table[d >> 1]
            lst = sched[i]
            if lst is None:
                sched[i] = [pt]
            else:
                lst.append(pt)
            # The low w bits of k are now zero.
            k >>= window
            i += window
        else:
            k >>= 1
            i += 1


def _mul_add(u1, g_tables, u2, q_tables):
    """Return u1*G + u2*Q in Jacobian form (Z == 0 for infinity)."""
    p = _P
    sched = [None] * (_CHUNK_BITS + 1)
    for i in range(_SPLIT):
        shift = _CHUNK_BITS * i
        _schedule(sched, (u1 >> shift) & _CHUNK_MASK, g_tables[i], _G_WINDOW)
        _schedule(sched, (u2 >> shift) & _CHUNK_MASK, q_tables[i], _Q_WINDOW)
    X = Y = 1
    Z = 0
    for i in range(_CHUNK_BITS, -1, -1):
        if Z:
            # Doubling, inlined copy of _double (hot loop).
            delta = Z * Z % p
            gamma = Y * Y % p
            beta = X * gamma % p
            alpha = 3 * (X - delta) * (X + delta) % p
            X3 = (alpha * alpha - 8 * beta) % p
            Z = 2 * Y * Z % p
            Y = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
            X = X3
        lst = sched[i]
        if lst is None:
            continue
        for x2, y2 in lst:
            if Z == 0:
                X = x2
                Y = y2
                Z = 1
                continue
            # Mixed addition, inlined copy of _add_mixed (hot loop).
            zz = Z * Z % p
            h = x2 * zz % p - X
            r = y2 * zz * Z % p - Y
            if h == 0:
                # Same x: either the same point (double) or its negative
                # (infinity). Wycheproof reaches both.
                X, Y, Z = _add_mixed(X, Y, Z, x2, y2)
                continue
            hh = h * h % p
            hhh = h * hh % p
            v = X * hh % p
            X3 = (r * r - hhh - 2 * v) % p
            Y = (r * (v - X3) - Y * hhh) % p
            Z = Z * h % p
            X = X3
    return X, Y, Z


def verify_digest_pure(point, digest, sig):
    """Return True when sig (raw r||s) is a valid ECDSA P-256 signature of the 32-byte digest.

    Raises:
        DecodeError: the public key is invalid.
        ValueError: the digest is not 32 bytes.
    """
    q_tables = _key_tables(point)
    _check_digest(digest)
    rs = _split_signature(sig)
    if rs is None:
        return False
    r, s = rs
    n = _N
    p = _P
    # SEC 1 v2, 4.1.4: e is the leftmost 256 bits of the hash, i.e. all of it.
    e = int.from_bytes(digest, "big")
    w = _inverse(s, n)
    X, _, Z = _mul_add(e * w % n, _generator_tables(), r * w % n, q_tables)
    if Z == 0:
        return False
    # Accept when x(R) mod n == r without inverting Z: x(R) < p < 2n, so
    # x(R) is r or r + n, and x(R) = X / Z^2.
    zz = Z * Z % p
    if r * zz % p == X:
        return True
    return r + n < p and (r + n) * zz % p == X


# ---------------------------------------------------------------------------
# OpenSSL path (CPython).


def _fast_key(point):
    """Return the cached cryptography public key object for a point, validating it on a miss.

    Raises:
        RuntimeError: cryptography is not installed.
        DecodeError: the key is not a valid uncompressed P-256 point.
    """
    if ec is None:
        raise RuntimeError("the cryptography package is not available on this platform")
    key = bytes(point)
    pub = _fast_cache.get(key)
    if pub is None:
        decode_point(key)
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
        if len(_fast_cache) >= _FAST_CACHE_MAX:
            _fast_cache.clear()
        _fast_cache[key] = pub
    return pub


def _openssl_verify(pub, digest, der_sig):
    """Return True when OpenSSL accepts der_sig (DER) for the 32-byte digest under pub."""
    try:
        pub.verify(bytes(der_sig), bytes(digest), _ECDSA_PREHASHED)
    except InvalidSignature:
        return False
    return True


def verify_digest_fast(point, digest, sig):
    """Same contract as verify_digest_pure, computed by OpenSSL through cryptography.

    Raises:
        RuntimeError: cryptography is not installed.
        DecodeError: the public key is invalid.
        ValueError: the digest is not 32 bytes.
    """
    pub = _fast_key(point)
    _check_digest(digest)
    rs = _split_signature(sig)
    if rs is None:
        return False
    return _openssl_verify(pub, digest, encode_dss_signature(rs[0], rs[1]))


def verify_der_fast(point, digest, der_sig):
    """Return True when der_sig (DER ECDSA-Sig-Value) is valid for the digest; CPython only.

    Raises what verify_digest_fast raises, for the same reasons.
    """
    pub = _fast_key(point)
    _check_digest(digest)
    return _openssl_verify(pub, digest, der_sig)


def verify_digest(point, digest, sig):
    """Verify with the best backend available (see BACKEND); same contract as verify_digest_pure.

    Raises:
        DecodeError: the public key is invalid.
        ValueError: the digest is not 32 bytes.
    """
    if ec is not None:
        return verify_digest_fast(point, digest, sig)
    return verify_digest_pure(point, digest, sig)


def verify(point, message, sig):
    """Return True when sig (raw r||s) is a valid ECDSA P-256/SHA-256 signature of message.

    Raises:
        DecodeError: the public key is invalid.
    """
    return verify_digest(point, hashlib.sha256(message).digest(), sig)
