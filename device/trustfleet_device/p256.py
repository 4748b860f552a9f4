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
be constant time; on MicroPython every big-int operation allocates, so the
aim is fewer of them. u1*G + u2*Q is computed with both scalars cut into
_SPLIT chunks of 29 bits (small ints on 32-bit ports); the chunk i of a
scalar multiplies 2^(29*i) times the base point, whose odd multiples are
kept in affine form. All 2*_SPLIT wNAF streams then share one chain of
only 30 doublings (a = -3 Jacobian formulas) and use mixed Jacobian-affine
additions. The tables for G are constants in this file (flash, once
frozen). A key's full tables cost about as much as one verify to build, so
they are built for keys that earn them: the ones prepare() pins (the
root's bundle keys, named when a root is accepted) and keys verified a
second time. A key's first verify uses a table for chunk 0 only and one
chain of 262 doublings. The result is checked in projective form
(r*Z^2 == X), so a verify does one modular inversion besides table
building: s^-1 mod n, by extended Euclid.
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

# Table sizes. Scalars are cut into _SPLIT chunks of _CHUNK_BITS bits: 29
# bits, so every chunk and every wNAF step on it stays a small int on a
# 32-bit MicroPython (31-bit small ints), and the shared doubling chain is
# only 30 long. A wNAF window w stores 2^(w-2) affine points per chunk.
#
# G: the tables are constants in this file (_G_TABLES, window 5, 9 * 8
# points), checked against _build_tables by the tests. Frozen into the
# firmware they live in flash: no heap and no build time on first use.
#
# Public keys: window 4 on MicroPython, 9 * 4 points, about 3.7 KB per key
# (gc.mem_alloc on the 32-bit firmware stand-in). Tables are kept for:
# - the keys prepare() pins: the root's bundle keys, so that an install is
#   never key-cold; nothing else evicts them (_PINNED_MAX);
# - keys verified a second time (_Q_CACHE_MAX, cleared when full).
# A key's first verify builds only its chunk-0 table and drops it: most
# keys (certificate issuers) are used once, and that is cheaper than the
# full tables. _seen remembers the last _SEEN_MAX such keys.
# CPython can afford bigger windows and more keys.
# Plain globals, not const(): the value depends on the platform.
_SPLIT = const(9)
_CHUNK_BITS = const(29)
_CHUNK_MASK = const(0x1FFFFFFF)
_G_WINDOW = const(5)
if sys.implementation.name == "micropython":
    _Q_WINDOW = 4
    _Q_CACHE_MAX = 1
    _PINNED_MAX = 2
    _SEEN_MAX = 4
else:
    _Q_WINDOW = 5
    _Q_CACHE_MAX = 32
    _PINNED_MAX = 8
    _SEEN_MAX = 64
_FAST_CACHE_MAX = const(64)

_q_cache = {}
_pinned = {}
_seen = {}
_fast_cache = {}


def clear_caches():
    """Drop every cached and pinned key, e.g. to free RAM before installing a bundle."""
    _q_cache.clear()
    _pinned.clear()
    _seen.clear()
    _fast_cache.clear()


def prepare(points):
    """Pin the tables of these keys (the root's bundle keys) so their first verify is warm.

    Call it when a root is accepted: the keys that will sign bundles are
    known then. The pinned set is replaced by the first _PINNED_MAX keys
    given; keys beyond that are left to the unpinned cache. Tables already
    built for a key are reused. Returns the number of keys pinned.

    Raises:
        DecodeError: a key is not a valid uncompressed P-256 point (nothing is pinned then).
    """
    keep = {}
    for point in points:
        if len(keep) >= _PINNED_MAX:
            break
        key = bytes(point)
        if key in keep:
            continue
        tables = _pinned.get(key)
        if tables is None:
            tables = _q_cache.pop(key, None)
        if tables is None:
            x, y = decode_point(key)
            tables = _build_tables(x, y, _Q_WINDOW, _SPLIT)
        keep[key] = tables
    _pinned.clear()
    for key in keep:
        _pinned[key] = keep[key]
    return len(keep)


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


def _double_n(X, Y, Z, count):
    """Return 2^count * (X, Y, Z) for Z != 0: _double inlined in a loop, for building tables."""
    p = _P
    for _ in range(count):
        delta = Z * Z % p
        gamma = Y * Y % p
        beta = X * gamma % p
        alpha = 3 * (X - delta) * (X + delta) % p
        X3 = (alpha * alpha - 8 * beta) % p
        Z = 2 * Y * Z % p
        Y = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
        X = X3
    return X, Y, Z


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


def _tight(v):
    """Return v (0 <= v < 2^256) as a freshly allocated int of exactly 32 bytes.

    A product reduced mod p keeps the allocation of the product (twice the
    size) on MicroPython; tables are kept for long, so they hold tight copies.
    """
    return int.from_bytes(v.to_bytes(_COORD_LEN, "big"), "big")


def _build_tables(x, y, window, split):
    """Return the wNAF tables of (x, y) for `split` chunks as one flat tuple of affine coordinates.

    Chunk i takes 2^(w-1) entries from offset i * 2^(w-1): x1, y1, x3, y3, ..
    for the odd multiples 1, 3, .. (2^(w-1) - 1) of 2^(29 i)*(x, y). One
    tuple of ints, no inner tuples: about 10% less heap per key.
    """
    # Bases 2^(29 i)*P and their doubles, normalised together.
    jac = []
    cur = (x, y, 1)
    for i in range(split):
        if i:
            cur = _double_n(cur[0], cur[1], cur[2], _CHUNK_BITS)
        jac.append(cur)
        jac.append(_double(cur[0], cur[1], cur[2]))
    aff = _to_affine(jac)
    # Odd multiples: k*B + 2*B. None of them is infinity or equal to 2*B,
    # since k < 2^(w-1) is far below the group order n.
    count = 1 << (window - 2)
    flat = []
    for i in range(split):
        bx, by = aff[2 * i]
        dx, dy = aff[2 * i + 1]
        cur = (bx, by, 1)
        flat.append(cur)
        for _ in range(count - 1):
            cur = _add_mixed(cur[0], cur[1], cur[2], dx, dy)
            flat.append(cur)
    coords = []
    for x1, y1 in _to_affine(flat):
        coords.append(_tight(x1))
        coords.append(_tight(y1))
    return tuple(coords)


def _find_key(point):
    """Return (key bytes, its tables or None, decoded (x, y) or None); validates an unknown key.

    Tables come from the pinned set, then the unpinned cache. A key with
    neither is decoded here, so a bad key raises before any other check.

    Raises:
        DecodeError: the key is not a valid uncompressed P-256 point.
    """
    key = bytes(point)
    tables = _pinned.get(key)
    if tables is None:
        tables = _q_cache.get(key)
    if tables is not None:
        return key, tables, None
    return key, None, decode_point(key)


def _cache_tables(key, xy):
    """Build the full tables of a key used for the second time, cache them and return them.

    A key seen once is only remembered (_seen): most keys verify one
    certificate and are never seen again, and a one-off verify without
    full tables is cheaper than building them (see verify_digest_pure).
    Returns None on a first sighting.
    """
    if key not in _seen:
        # Clearing beats evicting one entry: no reliance on dict order.
        if len(_seen) >= _SEEN_MAX:
            _seen.clear()
        _seen[key] = True
        return None
    del _seen[key]
    tables = _build_tables(xy[0], xy[1], _Q_WINDOW, _SPLIT)
    # The keys that matter most are pinned (prepare), out of reach of this.
    if len(_q_cache) >= _Q_CACHE_MAX:
        _q_cache.clear()
    _q_cache[key] = tables
    return tables


def _schedule(sched, k, table, base, window, pos):
    """Recode k (< 2^29) in width-w NAF; append the signed table points to sched[pos + position].

    The odd multiple d of the chunk's base point is at table[base + d - 1] (x)
    and table[base + d] (y).
    """
    p = _P
    full = 1 << window
    half = full >> 1
    mask = full - 1
    base -= 1
    while k:
        if k & 1:
            d = k & mask
            if d > half:
                k += full - d
                d = base + full - d
                pt = (table[d], p - table[d + 1])
            else:
                k -= d
                d += base
                pt = (table[d], table[d + 1])
            lst = sched[pos]
            if lst is None:
                sched[pos] = [pt]
            else:
                lst.append(pt)
            # The low w bits of k are now zero.
            k >>= window
            pos += window
        else:
            k >>= 1
            pos += 1


def _mul_add(u1, u2, q_tables, spread):
    """Return u1*G + u2*Q in Jacobian form (Z == 0 for infinity).

    spread False: q_tables covers all _SPLIT chunks, so every chunk's digits
    share one chain of 30 doublings. spread True: q_tables covers chunk 0
    only (a key seen once); chunk i's digits then go in at position 29 i of
    one chain of 262 doublings, and G uses its chunk-0 table the same way.
    """
    p = _P
    g_step = 1 << (_G_WINDOW - 1)
    q_step = 1 << (_Q_WINDOW - 1)
    sched = [None] * (_CHUNK_BITS * _SPLIT + 1 if spread else _CHUNK_BITS + 1)
    for i in range(_SPLIT):
        shift = _CHUNK_BITS * i
        if spread:
            _schedule(sched, (u1 >> shift) & _CHUNK_MASK, _G_TABLES, 0, _G_WINDOW, shift)
            _schedule(sched, (u2 >> shift) & _CHUNK_MASK, q_tables, 0, _Q_WINDOW, shift)
        else:
            _schedule(sched, (u1 >> shift) & _CHUNK_MASK, _G_TABLES, g_step * i, _G_WINDOW, 0)
            _schedule(sched, (u2 >> shift) & _CHUNK_MASK, q_tables, q_step * i, _Q_WINDOW, 0)
    X = Y = 1
    Z = 0
    for i in range(len(sched) - 1, -1, -1):
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

    Three paths, one answer: a pinned or cached key uses its full tables
    (30 doublings); a key seen for the second time gets them built and
    cached first; a key seen for the first time is verified with tables for
    chunk 0 only, built for this call and dropped (262 doublings, no
    eviction, less work than building the full tables).

    Raises:
        DecodeError: the public key is invalid.
        ValueError: the digest is not 32 bytes.
    """
    key, q_tables, xy = _find_key(point)
    _check_digest(digest)
    rs = _split_signature(sig)
    if rs is None:
        return False
    r, s = rs
    n = _N
    p = _P
    spread = False
    if q_tables is None:
        q_tables = _cache_tables(key, xy)
        if q_tables is None:
            q_tables = _build_tables(xy[0], xy[1], _Q_WINDOW, 1)
            spread = True
    # SEC 1 v2, 4.1.4: e is the leftmost 256 bits of the hash, i.e. all of it.
    e = int.from_bytes(digest, "big")
    w = _inverse(s, n)
    X, _, Z = _mul_add(e * w % n, r * w % n, q_tables, spread)
    if Z == 0:
        return False
    # Accept when x(R) mod n == r without inverting Z: x(R) < p < 2n, so
    # x(R) is r or r + n, and x(R) = X / Z^2.
    zz = Z * Z % p
    if r * zz % p == X:
        return True
    return r + n < p and (r + n) * zz % p == X


# Odd multiples 1, 3, .., 15 of 2^(29 i)*G for i = 0 .. 8 (x1, y1, x3, y3, ..):
# _build_tables(_GX, _GY, _G_WINDOW, _SPLIT) written out; the tests rebuild and compare.
_G_TABLES = (
    # 2^0 * G
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    0x5ECBE4D1A6330A44C8F7EF951D4BF165E6C6B721EFADA985FB41661BC6E7FD6C,
    0x8734640C4998FF7E374B06CE1A64A2ECD82AB036384FB83D9A79B127A27D5032,
    0x51590B7A515140D2D784C85608668FDFEF8C82FD1F5BE52421554A0DC3D033ED,
    0xE0C17DA8904A727D8AE1BF36BF8A79260D012F00D4D80888D1D0BB44FDA16DA4,
    0x8E533B6FA0BF7B4625BB30667C01FB607EF9F8B8A80FEF5B300628703187B2A3,
    0x73EB1DBDE03318366D069F83A6F5900053C73633CB041B21C55E1A86C1F400B4,
    0xEA68D7B6FEDF0B71878938D51D71F8729E0ACB8C2C6DF8B3D79E8A4B90949EE0,
    0x2A2744C972C9FCE787014A964A8EA0C84D714FEAA4DE823FE85A224A4DD048FA,
    0x3ED113B7883B4C590638379DB0C21CDA16742ED0255048BF433391D374BC21D1,
    0x9099209ACCC4C8A224C843AFA4F4C68A090D04DA5E9889DAE2F8EEFCE82A3740,
    0x177C837AE0AC495A61805DF2D85EE2FC792E284B65EAD58A98E15D9D46072C01,
    0x63BB58CD4EBEA558A24091ADB40F4E7226EE14C3A1FB4DF39C43BBE2EFC7BFD8,
    0xF0454DC6971ABAE7ADFB378999888265AE03AF92DE3A0EF163668C63E59B9D5F,
    0xB5B93EE3592E2D1F4E6594E51F9643E62A3B21CE75B5FA3F47E59CDE0D034F36,
    # 2^29 * G
    0xD131E661DD93D815E613947F2D302F2F50EA585CAFB752509789404FC4FB240A,
    0x34342C8461A95DA2E79B4C37F48F4FD47423D4EBCDEACDF422F60E1402501A57,
    0x3E65FB3B08594F3A6A65739B8B079177C01974D056F6F88F3D8EF9236DBF52E9,
    0xE79BB6600EF807C010BEA6890CF95987600D56D126AEBB433A52541EC710D348,
    0x15F2CF68579CA9D44C7B1DE8989EB9E6133A579D37D4DD4F20409A178519526B,
    0x21A51E5BD1986A77E46819DDC47D4D7E2669BCF4F324B2AD355E35BB66D83FC1,
    0x8C259414E492EA1C778469AC0CDC7F64C4C4ACCA4B1F3C5A812686C1AFC59084,
    0x6E162F4D40B152E6916B4F0997ECAD5CEB03A88B88F09232C8236DB59F30F7C3,
    0x41441C1D992462FEA88EA000EE8F7B208152CBAC7D97518DED4BAEB9079DA31E,
    0x3C97CEBE2332F7F1F1FFDF79CFA2597B29007ADDD9199A16A6C304A62127BB92,
    0xCE3FF69DCAC0740312823349A50770CD94EFF2627E4AB00D84ECCE47EABBB114,
    0xB586547C745D3C48F4A32E8D25AE93DB96DB0D25B937F5269BF98B2FE7B23F57,
    0xB7FCACE2587016D20363903B43917B25175742DD7DD90663FC92159191261229,
    0xC81A5FBA9F56EC0DEFE9EBDE60A77697D6967FA78ACB0E282E1C9E927C513FE1,
    0xE475000FE353973E2DDC595D5AF599BBBE3E0B3C795BE19041681112784684AE,
    0xBC0AD5229DFBCDB23B615963B5B38DF7E6460E4876E0201CA2FE86289594BCFB,
    # 2^58 * G
    0x437F6E07B86FD8FC3A06AE0295829D324275A149E19D957C7601AEEEF79F7B91,
    0x5FE8D37CA889F13ABF38B8289B15D63C589A77119139683364B6ACE375270033,
    0x01A002F610F90A08417D17453E33BC476D23B7438180AF23381B3C5D60776090,
    0x30922DA21FEE7AA1963F415207A9B3E893D90B768A2BEF87F82C98A82445E13A,
    0x47A854F1AD4A9E3D02950CAF51D28389BA97251CD24A75E923124099AD3283AF,
    0x51FA19A246AB79F541CDEC52A051FF2AA90FB6405E74BD810A84493BE4F6F8B5,
    0x1F860884937BDF48E16347EF6FB9AC79BAC30BE83E5935FDF8E05CEE13876012,
    0x9203D1024DF5C21E6046D2F2CC98C007CF88146EF182509445936054C5D115B4,
    0x571C04BFF9BD07AB67940610249B8255968E3D0CE4FAA923705912963292895E,
    0x1FF39106A1D936974F51A12EDBB7AC9503444C77B8055701BADB7D71BC3614CF,
    0x6AAECD58D918A9A2BD9508E1AE18B221D101515F7B2F421195095204C7EE5980,
    0x16D58532BFAE36C5E27000097C0FC53CE018994D4DA0E972FCF2A17F199A3D20,
    0x71C52341C715BD1EE7C1AF43575ACD86DB57B8E819F7053139421BF746FC318B,
    0x241AB62E477BF5F88F392E85A8D76ECEA58749DF4C38FE9C032A3B50115EBCED,
    0xAD963F54492F85E15E9E6D1CAC9E4675F6C5F6FDDE4BD3812026038EFCAA273B,
    0x465F5AF56982390B863BCEA5EA87EEC9D85B872C84DE87AD0E371B47BF53F0D8,
    # 2^87 * G
    0xA0E2410CD09C01A1B79470F6AD3DA82908F69591EEB51BD853D6D6E9019FC555,
    0x1E29648C71BFDED42AC3B57BA5B2FE898BBAF19F6B667930CF340818C1AC6D8D,
    0xBA9B6729AA1581A11A735EC5A700EDDE0725CCEFA43004EF7A31EF83FB71B949,
    0x8EFE2EA0E7C2609CEDB0F53F341B3C232935AEDFADE0F35799CA155311B72D6B,
    0x5AFEF75CEF0C333AE6B4A341FD054002820C50108E90DAF597942A6C3BD5B8C3,
    0x2A476AB629AA70DC8CAAD969A1250E5A8CF8DC6667B9EE4284215F2F930BD6FF,
    0x91F0161D479C6AF8CBCF3477C57211BAC683D207CB07903E35FC89F89DD3AB5F,
    0x9BA3AB36279269C0DC68530E5C44DC8A594F92D31A7DBFFBE74E6BD2C50390BE,
    0x43EBF829800663A077AEE2BB1A92297E6A6497760E391A648397FFB9D57D3C7A,
    0xEA27844EB412CF85B383DC9E54AF30DD5B2B9666EB6D04A76C782348A3687631,
    0x330E670D47645A26EFB0DF30749716841B803ABB7D23BCAC5CF985F9B5F6D6E3,
    0x38EF3B1E8D7BE6C9A70AD7D789A122D2CD381F32396C0AB9BC27621F5ABD24D7,
    0x65F1F1189ACDDE069AEBB63AE27F6C64DCB13482DBAE43F85979A9C05E17FEE8,
    0xEB3F5B91EA2B7BD5F0D410EF26FCEF2533269424E3F4BD66644FEF2B682063BB,
    0xFCC4A247F02BE86189EEACE3200DCAA3FD619C26625E1C44B28AC9426520CB99,
    0x28FA92726E1B1B955EDB58362B585D7341B06CB8A9DE06C73825863003519EF6,
    # 2^116 * G
    0x4A89A61457374B4CCDB5D111B56493FE167D5EE4D1041CE2EA6065AD7789B84D,
    0x45B04E87ED480D5C08C2EA979FE677E6A72E280634711999EF9B7D7F018E3EA8,
    0xCC9F9648A870EF92A2A9B30E781377C9834C5EBE073275936E76B23742E14C34,
    0x829BFF2CB5F8C96F43116633DBE689DB299917F1828C7E058892157A94BE556B,
    0x5C618DA1FAAD041AF4F58C1D0AD98A758D4286C82DE5E74E87DE6C8595DE4837,
    0x4C719117BCF3A19D88B80E3849FD9671ECD36649642278CAC0B8583B634A7DEE,
    0xAB8A886A915A06A2E585E2DDE671C11EF2CAE15A368A6C0C2589342656635396,
    0xE773CF7C7DA843195668FF8248BCD5ABB9360583F7D2D6AD7E38FA6A3FC92C23,
    0x62B7C8514241838CDEC664B8B695604AA9E890866D069A35AC243E5881DF49C3,
    0xA71ED62152AE0335594896AE8D4922DB8FB53B61387CB5509BE3680FF6341C21,
    0x4897BDBFA45C89C5F9751F0869DFC9791B59F5DE949F002F3AF146E2E44F47D0,
    0xE77DC20F7AFC138C34E8ECA9417B093F526DA001A8F0119581E501AACE1320BF,
    0xEB1CFCB556486576C451E07BDA722F2ECBFA318DF6190786E61BCE9B71581BD3,
    0xFD47CE7571F94D205044005EBE4D6E3CB39CF319C5BD1A645BCE8D985CD98A09,
    0xA1FD8BBBE48E1E09C0D54AC2E72576A018B82E417B4C818F90122BDB673A3111,
    0xAD215D8A34A308569BD77E07BC0916C0C7EC4945BFD51169B887E650B8C704EF,
    # 2^145 * G
    0x7459E772C29C4C3F158EA76280D631820E4E1A713BD0572546E0C52790789539,
    0x892BC7F5183444EAEC7E8E858A2EC1A9383AF5E04F7DB3913CDF5A471439D97F,
    0x74DFABECC5345E5340CB0798638B5965E2ED30366D621C903B4C7C0831BF35A9,
    0x48341B4C8956A77069281E79C517CE993F5FA126C564848D3615B07B36A268E1,
    0x183950FDDD7BE0A112DE04490CD9BA82EAAFC3E392C6CDC9A94A60E30F18A7AB,
    0xAA8CBEC079204CC381CDA4CB3F77A930CC6E77E9D46108BD6AE5DDF8560B4B74,
    0xE42B60F34A9E51B9DDB77E96F0B512AC26DC449C991C9EB348FCC264147C34D0,
    0xFF0CC44F2CD6F0DDBE07CB0C7EB81C57BDF8BF104FC3C2F06DE84BD897A87EB0,
    0x2A206BAF92A04EC65C2583E9C1B4757A24DE6AABBC9727C9F9F7C1BCA3BEC070,
    0x773CC4050A3F5099BAEC63DC9C2E7BD642C4447D67AB18046CE2FEA5DA1BC499,
    0x52DCCD72D4A28EF4014AA581B7B6B293AD64A8F15B64204DD0AFC624CE784C9E,
    0x6C392758046A515C2281C2A27812D80187BE0BD9EFAE69B6C103AF975136DF21,
    0xB93F87787C598237E990640BA5170940C0D2C442B8A45C675C74C92AC8618541,
    0xDF1A58F2F4A7CAE042540AAD071DFEA7C2BBDB616DE1EB83CE96AAA69C0B5896,
    0xDAA8D1F46330DB28496374725CC072442E04662AA6A23FD62889E6D306EED69B,
    0xABCB07D24944D09E9F82C1FDD0B6C0C59D5BEB682F30BB8CC5923F5398287398,
    # 2^174 * G
    0x7451FE377B24776B323357A021C84544EDC4E459A0829DB27AD039A2F521BA40,
    0x16396435FCC70940D69002198464EADE36B09EB9985D5439D0A61CD3E518DCF9,
    0x0A9C1E53EC28889BA152C3A612FECD63F5EF01BA2FC2E5F0043D95A53EAA99AA,
    0xD731B36622FD601AF161D8990A6B8FD17EA6D315A2B8C8F7AA396B087E003BDE,
    0x265C0C641F1EA7510956E19B4AD5D0198E4213690E07B87AA80907B09EE6C5AC,
    0x08AFA479FCFC75C7154E4C2E22386F6825140662CD336481E83C8E5188E3C8C4,
    0x7D91720E069328BB11AEDDAEC13D760452D9652A8B7C19B3E3BD0B026363F447,
    0x817C18CB781DD808FE5A22CAF1E4E13EFC3E282559F8EF3237C3EC1EF4FA4829,
    0x0CA5FB99BC9E6026AF3BD06BE503CCF788E4C8DC200AAC2D98AEB6FE10FDE142,
    0x478B0A1F530CDF89E976158C35A24FCF94892B3F17D52706324135B9C1C18D3B,
    0x590E82FCBDE77BBEE3EA1AE01C0D92D95123E800BF81C498300B69D2E5BFD13C,
    0x5C04BE4A19169453E3AA0C7CF4DF64B669559929E513223D8AF7C2E41AF58717,
    0x580B7724A6C085B960595AEA240F1A28511EDC8AF2D4741C63883EF15DD0D1C0,
    0x78B9F51C3ABF08CA78EA7846F79297E8F4A5C608454BE202BA5BE75507B6D2FA,
    0x7A11207968088ACF34009EF7B7AC1944E9173D24204C9EF2A14056EEB36A88CA,
    0xBB348D85D26E0BE728437032419916F0FA2B8CE4BC4E6915A60D7A67CB408CA6,
    # 2^203 * G
    0xEDD513BBFEF3FB2463336038135004A3DD2F1E9BFF60A8A607596C1F536BA602,
    0x257B598C3BB3F7A97C592CA290F0188B61854D442DA5DCAC3B8086F945DBF993,
    0xFD8CF16BC0E95950296CFD57BEB3F989487E161C609A402DE3F0379077CA0F56,
    0x6883142FBB499A5E938F60228346848F3FC287F1CFF4CB3B33D8190F039BC40D,
    0x746D8A548642F53A24C20C6D037D1DA1BBFEB0AD8B37C622943F7ADA65F69C53,
    0x952065CF0C90DAE4281C72D19CA96885F2E54CF194F0B94B58DEBE9FC6DF09A7,
    0x06C625D6CD27FE072C7555D41DA5FFB9915A6C7DAF9515120BE761EEAC43C57C,
    0xC31AEB43086FE9BFD259D77EC9E2271887B210B153A68FA73025BBDF922C4B9C,
    0x42329B58FDE358909875FD616FC86719CC6F66D0AA7398A3C4F68B857C4FFD2B,
    0xD4415E657F6BBACFF5D59546F32246633E757198D1D3409A01386846B5287E20,
    0x0A807276D21624CF2BA28D1227D1ED7DAA3056AA51E8A86F32AE11CFBF0B8904,
    0x4CA4D0FD5D560429F4B7A0213119BC74727475C22D4470B1BAB76FF2463B89ED,
    0x6E129B045F0083B03F63B492279D7221E25EBD67EABF7E581831EC420429200E,
    0x1D4E22DBF51FBE387F540E5C6049D52B426681DD298A4633A3933BFAC5882114,
    0x738D1A52C839415C1DB86726AF71FEE48DBA39964B8B5F7474074A0543E491D6,
    0xD27DB15A7261F30EBFC721384B0DBD7489E9570A0A5E49FDCC2D9EFD0C3DCBCD,
    # 2^232 * G
    0x9C39CB60A33D563D2958F49F1B6EE94582F2D7A846967F0DCEC9B4D78E6D8483,
    0xF097BF1EE493E51003D196B7BCA16546BBADE52F3DBE436894B3356F6B2C50FB,
    0x18F37ACC90EADAD7443768F724013083606D0429674B4DF3F55C31F847A14DDA,
    0x2F944BBAAA092C26D7BBFFECEE1BCD0B77D8F7C78A8536CBE22FCDC325AC8364,
    0x5413358C281E79DA4EC5FFEE4772736B98EA18588E0932FB5674E8E8CC7D59BE,
    0x680FD4DE969CB024E7C48FD20164515A53E25B15C900B3672D7EA1F6E4F80590,
    0x4E2FD12691B194F05DCFC1A3C1B85280BED773963A457EA58EB80C9F876051A8,
    0x122ABBDBF5F4FBB2371B35A1508A31BCEBB8BAA592C4FE2E6AFEC74FE9CC9005,
    0x2DE758D4BEFF1B592004F56813C08FA0A275F0F76625F5FE367CA8FA56A80E09,
    0xDD9ACF3177D8EE67D7C032B0265E64A07A1ADC6695DAD6C99D62EDF5436A1CD3,
    0xF597A0ACDC1D4A5728C5A173C6EE12A4568BBA2CDF5B564EC25035B2FA3628AC,
    0x0DB9168E332BD4557BB1BB7289622CC0772ECF91D412106E7EA0310D6CD3550F,
    0xAA222A86D6F44FB908A1071821BE40F3C42A5457D53A285678D683D4AB75D6C3,
    0x56378793001A8E76CE448A25AEE2DF426071FC94B5A8C8F613265A4E644CB028,
    0x8568B26BCD9715B756F0C64392F35E2E9E01B91773F3C5037FA85739235790C9,
    0xD3F2261A584DD2ADE9078E0AE4363CE80145E5F8FB85479FDD3F553826B1F5AC,
)  # fmt: skip

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
