"""Does this issuer key sign this certificate? Nothing more.

What it trusts: the parsed certificate's fields (x509 has checked their
shape) and, on CPython, the `cryptography` package when it imports. The
issuer's SubjectPublicKeyInfo is untrusted and parsed strictly here.

Key rules, the same on every path, checked before any arithmetic:
- RSA: rsaEncryption with NULL parameters; modulus odd, 2048..8192 bits;
  exponent odd, 3 <= e < 2^32 (small e is weak; huge e only costs time).
  A weaker key raises WeakKeyError, a malformed one DecodeError.
- EC: id-ecPublicKey with a named curve. P-256 keys must be the one exact
  uncompressed DER form (p256.spki_to_point).

Paths. `verify_certificate` returns True or False for a supported
algorithm, and raises UnsupportedAlgorithmError otherwise.
- Pure (every runtime, the only one on MicroPython): ecdsa-with-SHA256 with
  a P-256 key (p256), and sha256WithRSAEncryption: s^e mod n, then the whole
  EMSA-PKCS1-v1_5 encoding (RFC 8017, 9.2: 00 01 FF..FF 00 DigestInfo H) is
  rebuilt and compared byte for byte, never parsed, so no padding
  leniency (Bleichenbacher 2006) can slip in.
- cryptography (CPython): the same two, plus ECDSA with SHA-384/512 on
  P-256/P-384/P-521, RSA PKCS#1 v1.5 with SHA-384/512, and Ed25519.

Known gap: MicroPython's hashlib has only SHA-256, so a chain signed with
ecdsa-with-SHA384 (common for P-384 roots), SHA-384/512 RSA, P-384 keys or
Ed25519 raises "unsupported signature algorithm <name> on this runtime".
On the boards the TLS stack (mbedTLS) validates such chains itself; the
device core cannot. RSA-PSS is unsupported on every path.

Both paths give the same answer wherever both support the algorithm; the
tests compare them on random certificates.
"""

import hashlib

from trustfleet_device import p256, x509
from trustfleet_device.errors import DecodeError, SignatureError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.exceptions import UnsupportedAlgorithm as _CryptoUnsupported
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    BACKEND = "cryptography"
except ImportError:
    ec = None
    BACKEND = "pure"


class UnsupportedAlgorithmError(SignatureError):
    """The signature algorithm or key type cannot be checked on this runtime."""


class WeakKeyError(SignatureError):
    """The issuer key is well-formed but below our minimum strength."""


OID_RSA = "1.2.840.113549.1.1.1"
OID_EC = "1.2.840.10045.2.1"
OID_P256 = "1.2.840.10045.3.1.7"
OID_P384 = "1.3.132.0.34"
OID_P521 = "1.3.132.0.35"

CURVE_NAMES = {OID_P256: "P-256", OID_P384: "P-384", OID_P521: "P-521"}

MIN_RSA_BITS = const(2048)
MAX_RSA_BITS = const(8192)

# DER of DigestInfo { AlgorithmIdentifier { id-sha256, NULL }, OCTET STRING (32) }
# (RFC 8017, 9.2, note 1), followed by the 32-byte hash.
_SHA256_DIGEST_INFO = bytes((
    0x30, 0x31, 0x30, 0x0D, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    0x05, 0x00, 0x04, 0x20,
))  # fmt: skip

_PURE = (x509.OID_ECDSA_SHA256, x509.OID_RSA_SHA256)


class PublicKey:
    """A parsed issuer key. kind: "rsa", "ec" or "ed25519".

    rsa: n, e, bits, size (modulus bytes). ec: curve (OID), point (P-256 only).
    """

    def __init__(self, kind, spki):
        self.kind = kind
        self.spki = spki
        self.n = 0
        self.e = 0
        self.bits = 0
        self.size = 0
        self.curve = None
        self.point = None


def _bit_length(top_byte, nbytes):
    """Return the bit length of an integer from its first byte and byte count (no int.bit_length)."""
    bits = 8 * (nbytes - 1)
    while top_byte:
        bits += 1
        top_byte >>= 1
    return bits


def parse_public_key(spki):
    """Parse a SubjectPublicKeyInfo into a PublicKey.

    Raises:
        DecodeError: the SPKI is malformed.
        WeakKeyError: an RSA key below MIN_RSA_BITS or with e < 3.
        UnsupportedAlgorithmError: a key type we do not know at all.
    """
    spki = bytes(spki)
    top = x509._Cursor(spki, 0, len(spki), 0, "issuer key")
    seq = top.enter(0x30, "SubjectPublicKeyInfo")
    top.done()
    alg = seq.enter(0x30, "algorithm")
    oid = alg.oid("algorithm")
    if oid == OID_RSA:
        alg.take(0x05, "NULL parameters")
        alg.done()
        _, bits = seq.bit_string("subjectPublicKey", True)
        seq.done()
        return _rsa_key(spki, bits)
    if oid == OID_EC:
        curve = alg.oid("namedCurve")
        alg.done()
        seq.bit_string("subjectPublicKey", True)
        seq.done()
        key = PublicKey("ec", spki)
        key.curve = curve
        if curve == OID_P256:
            key.point = p256.spki_to_point(spki)
        return key
    if oid == x509.OID_ED25519:
        alg.done()
        _, raw = seq.bit_string("subjectPublicKey", True)
        seq.done()
        if len(raw) != 32:
            raise DecodeError("issuer key: Ed25519 key of %d bytes, expected 32" % len(raw))
        return PublicKey("ed25519", spki)
    raise UnsupportedAlgorithmError("unsupported public key algorithm %s" % oid)


def _rsa_key(spki, bits):
    top = x509._Cursor(bits, 0, len(bits), 2, "issuer key")
    seq = top.enter(0x30, "RSAPublicKey")
    top.done()
    n = seq.integer("modulus", MAX_RSA_BITS // 8 + 1)
    e = seq.integer("publicExponent", 5)
    seq.done()
    if n[0] & 0x80 or e[0] & 0x80:
        raise DecodeError("issuer key: negative RSA modulus or exponent")
    if n[0] == 0:
        n = n[1:]
    key = PublicKey("rsa", spki)
    key.size = len(n)
    key.bits = _bit_length(n[0], len(n)) if n else 0
    key.n = int.from_bytes(n, "big")
    key.e = int.from_bytes(e, "big")
    if key.bits > MAX_RSA_BITS:
        raise DecodeError("issuer key: RSA modulus of %d bits, limit is %d" % (key.bits, MAX_RSA_BITS))
    if key.bits < MIN_RSA_BITS:
        raise WeakKeyError("issuer key: RSA modulus of %d bits, minimum is %d"
                           % (key.bits, MIN_RSA_BITS))
    if key.e < 3:
        raise WeakKeyError("issuer key: RSA exponent %d, minimum is 3" % key.e)
    if key.e >= 1 << 32:
        raise DecodeError("issuer key: RSA exponent of more than 32 bits")
    if not (key.n & 1) or not (key.e & 1):
        raise DecodeError("issuer key: even RSA modulus or exponent")
    return key


def _unsupported(sig_alg):
    return UnsupportedAlgorithmError(
        "unsupported signature algorithm %s on this runtime" % x509.sig_name(sig_alg))


def verify_certificate(cert, issuer_spki, backend=None):
    """Return True when cert's signature verifies under issuer_spki.

    backend: None for the best available, "pure" or "cryptography" to force one.

    Raises:
        DecodeError: the issuer key is malformed.
        WeakKeyError: the issuer key is too weak.
        UnsupportedAlgorithmError: the algorithm or key cannot be checked on this path.
        RuntimeError: backend "cryptography" was asked for but is not installed.
    """
    return verify(cert.sig_alg, cert.tbs, cert.signature, cert.signature_der, issuer_spki, backend)


def verify(sig_alg, tbs, signature, signature_der, issuer_spki, backend=None):
    """Same as verify_certificate, from the parts: signature is r||s for ECDSA, signature_der as signed.

    Raises:
        DecodeError, WeakKeyError, UnsupportedAlgorithmError, RuntimeError: see verify_certificate.
    """
    if backend is None:
        backend = BACKEND
    if backend == "cryptography" and ec is None:
        raise RuntimeError("the cryptography package is not available on this platform")
    if backend != "cryptography" and backend != "pure":
        raise ValueError("backend must be 'pure' or 'cryptography', got %r" % (backend,))
    key = parse_public_key(issuer_spki)
    if backend == "pure":
        return _verify_pure(sig_alg, tbs, signature, key)
    return _verify_fast(sig_alg, tbs, signature, signature_der, key)


# ------------------------------------------------------------------ pure


def _verify_pure(sig_alg, tbs, signature, key):
    if sig_alg not in _PURE:
        raise _unsupported(sig_alg)
    if sig_alg == x509.OID_ECDSA_SHA256:
        if key.kind != "ec":
            return False
        if key.point is None:
            raise UnsupportedAlgorithmError("unsupported public key (EC curve %s) on this runtime"
                                            % CURVE_NAMES.get(key.curve, key.curve))
        if len(signature) != 64:
            return False  # r or s wider than P-256 allows
        return p256.verify_digest_pure(key.point, hashlib.sha256(tbs).digest(), signature)
    if key.kind != "rsa":
        return False
    return _rsa_pkcs1_sha256(key, tbs, signature)


def _rsa_pkcs1_sha256(key, tbs, signature):
    """RSASSA-PKCS1-v1_5-VERIFY with SHA-256 (RFC 8017, 8.2.2)."""
    k = key.size
    if len(signature) != k:
        return False
    s = int.from_bytes(signature, "big")
    if s >= key.n:
        return False
    em = pow(s, key.e, key.n).to_bytes(k, "big")
    t = _SHA256_DIGEST_INFO + hashlib.sha256(tbs).digest()
    # k >= 256 bytes, so the padding string is far longer than the 8 bytes required.
    expected = b"\x00\x01" + b"\xff" * (k - 3 - len(t)) + b"\x00" + t
    return em == expected


# ------------------------------------------------------------ cryptography

_FAST_HASHES = {
    x509.OID_ECDSA_SHA256: "sha256",
    x509.OID_ECDSA_SHA384: "sha384",
    x509.OID_ECDSA_SHA512: "sha512",
    x509.OID_RSA_SHA256: "sha256",
    x509.OID_RSA_SHA384: "sha384",
    x509.OID_RSA_SHA512: "sha512",
}


def _hash(name):
    if name == "sha256":
        return hashes.SHA256()
    if name == "sha384":
        return hashes.SHA384()
    return hashes.SHA512()


def _load_key(key):
    try:
        return serialization.load_der_public_key(key.spki)
    except _CryptoUnsupported:
        raise UnsupportedAlgorithmError("unsupported public key on this runtime")
    except (ValueError, TypeError) as e:
        raise DecodeError("issuer key: not loadable (%s)" % e)


def _verify_fast(sig_alg, tbs, signature, signature_der, key):
    if sig_alg == x509.OID_ED25519:
        if key.kind != "ed25519":
            return False
        pub = _load_key(key)
        if not isinstance(pub, ed25519.Ed25519PublicKey):
            return False
        try:
            pub.verify(signature_der, tbs)
        except InvalidSignature:
            return False
        return True
    hash_name = _FAST_HASHES.get(sig_alg)
    if hash_name is None:
        raise _unsupported(sig_alg)
    is_ecdsa = sig_alg in (x509.OID_ECDSA_SHA256, x509.OID_ECDSA_SHA384, x509.OID_ECDSA_SHA512)
    if is_ecdsa:
        if key.kind != "ec":
            return False
        if key.point is not None and hash_name == "sha256":
            # Same key checks and range checks as the pure path (p256 tests both).
            if len(signature) != 64:
                return False
            return p256.verify_digest_fast(key.point, hashlib.sha256(tbs).digest(), signature)
        if key.curve not in CURVE_NAMES:
            raise UnsupportedAlgorithmError("unsupported public key (EC curve %s) on this runtime"
                                            % key.curve)
        pub = _load_key(key)
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            return False
        try:
            pub.verify(signature_der, tbs, ec.ECDSA(_hash(hash_name)))
        except InvalidSignature:
            return False
        return True
    if key.kind != "rsa":
        return False
    if len(signature) != key.size:
        return False
    pub = _load_key(key)
    if not isinstance(pub, rsa.RSAPublicKey):
        return False
    try:
        pub.verify(signature, tbs, padding.PKCS1v15(), _hash(hash_name))
    except InvalidSignature:
        return False
    return True
