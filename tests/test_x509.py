"""The device's X.509 parser and certificate signature checks, against `cryptography`.

Certificates are made with `cryptography` by the PKI helpers in
tests/support/pki.py: a root CA, an intermediate and leaves, in EC P-256 and
RSA 2048, plus the odd ones the trust tests need. Malformed certificates are assembled from raw DER parts
so that each test breaks exactly one rule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st

from support.pki import (
    DAY,
    ECDSA_SHA256,
    ECDSA_SIG,
    NAME,
    Pki,
    der,
    ext,
    key,
    make_cert,
    name,
    oid,
    pki,
    raw_cert,
    raw_tbs,
    seq,
    spki_der,
    tlv,
    utc,
)
from trustfleet_device import sigcheck, x509
from trustfleet_device.errors import DecodeError, LimitError

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("kind", ["ec", "rsa", "p384"])
def test_parses_every_field_like_cryptography(kind):
    p = Pki(kind) if kind == "p384" else pki(kind)
    for cert in (p.root, p.inter, p.leaf_cert):
        got = x509.parse(der(cert))
        assert got.der == der(cert)
        assert got.tbs == cert.tbs_certificate_bytes
        assert got.sig_alg == cert.signature_algorithm_oid.dotted_string
        assert got.signature_der == cert.signature
        assert got.issuer == cert.issuer.public_bytes()
        assert got.subject == cert.subject.public_bytes()
        assert got.not_before == int(cert.not_valid_before_utc.timestamp())
        assert got.not_after == int(cert.not_valid_after_utc.timestamp())
        assert got.spki == spki_der(cert)
        assert got.version == 3
        bc = cert.extensions.get_extension_for_class(cx509.BasicConstraints).value
        assert got.is_ca == bc.ca
        assert got.path_len == bc.path_length
        ku = cert.extensions.get_extension_for_class(cx509.KeyUsage).value
        assert got.key_cert_sign == ku.key_cert_sign
        assert got.unknown_critical == []
        if kind != "rsa":
            r, s = decode_dss_signature(cert.signature)
            width = len(got.signature) // 2
            assert got.signature == r.to_bytes(width, "big") + s.to_bytes(width, "big")
        else:
            assert got.signature == cert.signature
    assert x509.parse(der(p.leaf_cert)).dns_names == ["api.example.com"]
    assert x509.parse(der(p.root)).label() == f"{kind.upper()} Root CA"


def test_reads_generalized_time_after_2049_and_utc_time_before():
    cert = make_cert("far", key("ec", 0), not_before=-10 * 365 * DAY, not_after=2_556_143_999)
    got = x509.parse(der(cert))
    assert got.not_before == -10 * 365 * DAY
    assert got.not_after == 2_556_143_999  # 2050-12-31T23:59:59Z, a GeneralizedTime
    assert x509.format_time(got.not_after) == "2050-12-31T23:59:59Z"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(min_value=-62_135_596_800, max_value=253_402_300_799))
def test_date_conversion_agrees_with_datetime(epoch):
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=epoch)
    assert x509.format_time(epoch) == when.strftime("%Y-%m-%dT%H:%M:%SZ").rjust(20, "0")
    assert x509.days_from_civil(when.year, when.month, when.day) * DAY == epoch - epoch % DAY


def test_lists_unknown_critical_extensions_and_ignores_unknown_non_critical_ones():
    unknown = cx509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    other = cx509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00")
    cert = make_cert("c", key("ec", 0), extra=[(unknown, True), (other, False)])
    assert x509.parse(der(cert)).unknown_critical == ["1.3.6.1.4.1.55555.1"]


@pytest.mark.parametrize("critical", [True, False])
def test_name_constraints_count_as_unknown_whatever_their_criticality(critical):
    nc = cx509.NameConstraints(permitted_subtrees=[cx509.DNSName("example.com")],
                               excluded_subtrees=None)
    cert = make_cert("nc", key("ec", 0), ca=True, extra=[(nc, critical)])
    assert x509.parse(der(cert)).unknown_critical == ["2.5.29.30"]


def test_reads_extended_key_usage_and_san_dns_names_only():
    sans = cx509.SubjectAlternativeName([
        cx509.DNSName("a.example"), cx509.IPAddress(__import__("ipaddress").ip_address("10.0.0.1")),
        cx509.RFC822Name("x@example.com"), cx509.DNSName("*.b.example")])
    cert = make_cert("e", key("ec", 0), extra=[(sans, False)],
                     eku=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH])
    got = x509.parse(der(cert))
    assert got.dns_names == ["a.example", "*.b.example"]
    assert got.ext_key_usage == ["1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.7.3.1"]


def test_certificate_without_key_usage_has_none():
    cert = make_cert("n", key("ec", 0), ca=True, key_usage=None)
    assert x509.parse(der(cert)).key_cert_sign is None


def test_name_label_never_raises():
    assert x509.name_label(b"\x30\x03\x31") == ""
    assert x509.name_label(name("ok").public_bytes()) == "ok"


def test_accepts_a_hand_assembled_certificate():
    got = x509.parse(raw_cert())
    assert got.is_ca is False and got.subject == NAME and got.signature[:32] == b"\x01" * 32


def test_accepts_version_3_certificate_without_extensions():
    got = x509.parse(raw_cert(raw_tbs(extensions=[])))
    assert got.version == 3 and got.is_ca is False and got.unknown_critical == []


def test_accepts_version_1_certificate_without_extensions():
    got = x509.parse(raw_cert(raw_tbs(version=None, extensions=[])))
    assert got.version == 1 and got.is_ca is False


def _bad(data: bytes, match: str = ""):
    with pytest.raises(DecodeError, match=match):
        x509.parse(data)


def test_refuses_oversized_certificate_before_parsing():
    with pytest.raises(LimitError, match="16384"):
        x509.parse(b"\x30\x82\x40\x00" + bytes(16381))


@pytest.mark.parametrize("mangle, match", [
    (lambda c: c + b"\x00", "trailing"),
    (lambda c: c[:-1], "overruns"),
    (lambda c: b"\x30\x80" + c[4:] + b"\x00\x00", "indefinite"),
    (lambda c: b"\x30\x82\x00" + c[2:3] + c[3:], "non-minimal length"),
    (lambda c: b"\x31" + c[1:], "expected tag 0x30, got 0x31"),
    (lambda c: b"", "missing Certificate"),
    (lambda c: b"\x30", "truncated"),
    (lambda c: "text", "expected bytes"),
])
def test_refuses_non_der_framing(mangle, match):
    cert = raw_cert()
    assert cert[1] == 0x82
    _bad(mangle(cert), match)


@pytest.mark.parametrize("tbs, match", [
    (raw_tbs(version=tlv(0xA0, tlv(0x02, b"\x01"))), "version 2"),
    (raw_tbs(version=tlv(0xA0, tlv(0x02, b"\x00"))), "version 1"),
    (raw_tbs(version=None), "extensions in a v1"),
    (raw_tbs(serial=b"\x00\x01"), "non-minimal INTEGER"),
    (raw_tbs(serial=b"\x01" * 40), "serialNumber"),
    (raw_tbs(alg=seq(oid("1.2.840.10045.4.3.3"))), "differs from the outer"),
    (raw_tbs(issuer=seq()), "empty name"),
    (raw_tbs(issuer=seq(tlv(0x31, b""))), "empty RDN"),
    (raw_tbs(subject=seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, b"x" * 1100))))), "limit is 1024"),
    (raw_tbs(validity=seq(utc("251301000000Z"), utc("270101000000Z"))), "month 13"),
    (raw_tbs(validity=seq(utc("250229000000Z"), utc("270101000000Z"))), "impossible"),
    (raw_tbs(validity=seq(utc("2501010000Z"), utc("270101000000Z"))), "YYMMDDHHMMSSZ"),
    (raw_tbs(validity=seq(utc("250101000000+"), utc("270101000000Z"))), "UTC"),
    (raw_tbs(validity=seq(tlv(0x18, b"20250101000000.5Z"), utc("270101000000Z"))), "Generalized"),
    (raw_tbs(validity=seq(utc("25010100000aZ"), utc("270101000000Z"))), "non-digit"),
    (raw_tbs(extensions=[ext("2.5.29.19", seq()), ext("2.5.29.19", seq())]), "twice"),
    (raw_tbs(extensions=[ext("2.5.29.19", seq(tlv(0x01, b"\x01")))]), "not DER"),
    (raw_tbs(extensions=[ext("2.5.29.19", seq(tlv(0x01, b"\xff"), tlv(0x02, b"\xff")))]),
     "negative"),
    (raw_tbs(extensions=[ext("2.5.29.19", seq() + b"\x00")]), "trailing"),
    (raw_tbs(extensions=[ext("2.5.29.17", seq(*[tlv(0x82, b"a.example")] * 101))]), "100"),
    (raw_tbs(extensions=[ext("2.5.29.17", seq(tlv(0x82, b"a\x00.example")))]), "printable"),
    (raw_tbs(extensions=[ext("2.5.29.17", seq(tlv(0x82, b"a" * 254)))]), "dNSName of 254"),
    (raw_tbs(extensions=[ext("2.5.29.17", seq())]), "empty GeneralNames"),
    (raw_tbs(extensions=[ext("2.5.29.17", seq(b"\x9f\x1f\x01x"))]), "high tag"),
    (raw_tbs(extensions=[ext("2.5.29.37", seq())]), "empty extKeyUsage"),
    (raw_tbs(tail=b"\x05\x00"), "trailing"),
    (raw_tbs(extensions=[seq(oid("2.5.29.19"), tlv(0x04, seq()), b"\x05\x00")]), "trailing"),
])
def test_refuses_malformed_tbs_certificate(tbs, match):
    _bad(raw_cert(tbs), match)


def test_refuses_general_names_that_are_not_context_tagged():
    deep = seq(oid("2.5.4.3"), tlv(0x0C, b"x"))
    _bad(raw_cert(raw_tbs(extensions=[ext("2.5.29.17", seq(deep))])), "GeneralName with tag 0x30")


def test_nesting_depth_is_capped():
    # The parser follows the schema, so real input never nests deeper than
    # about 8; the cap is the backstop if a future field descends further.
    with pytest.raises(LimitError, match="nesting"):
        x509._Cursor(b"", 0, 0, x509.MAX_DEPTH + 1, "x")


def test_refuses_long_oids():
    _bad(raw_cert(raw_tbs(alg=seq(oid("1.2." + ".".join(["99999"] * 40))))), "OID of")


@pytest.mark.parametrize("alg, sig, match", [
    (seq(oid("1.2.840.10045.4.3.2"), tlv(0x05, b"")), ECDSA_SIG, "absent"),
    (seq(oid("1.2.840.113549.1.1.11"), tlv(0x02, b"\x01")), b"\x01" * 256, "NULL"),
    (ECDSA_SHA256, seq(tlv(0x02, b"\x81" * 32), tlv(0x02, b"\x01")), "negative"),
    (ECDSA_SHA256, seq(tlv(0x02, b"\x01" * 67), tlv(0x02, b"\x01")), "longer than 66"),
    (ECDSA_SHA256, seq(tlv(0x02, b"\x01")), "missing s"),
    (ECDSA_SHA256, b"\x04\x00", "expected tag"),
])
def test_refuses_bad_signature_encodings(alg, sig, match):
    _bad(raw_cert(raw_tbs(alg=alg), alg=alg, sig=sig), match)


def test_accepts_rsa_signature_algorithm_without_parameters():
    alg = seq(oid("1.2.840.113549.1.1.11"))
    got = x509.parse(raw_cert(raw_tbs(alg=alg), alg=alg, sig=b"\x01" * 256))
    assert got.sig_alg == "1.2.840.113549.1.1.11" and got.sig_params == b""


def test_every_truncation_is_a_decode_error():
    data = der(pki("ec").leaf_cert)
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            x509.parse(data[:n])


def test_mutated_certificates_parse_or_raise_decode_error_only():
    rng = random.Random(20260101)
    seeds = [der(pki("ec").leaf_cert), der(pki("rsa").inter), der(pki("ec").root), raw_cert()]
    parsed = failed = 0
    for i in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            pos = rng.randrange(len(data)) if data else 0
            if op == 0 and data:
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1 and data:
                data[pos] = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x82, 0xFF, 0x30, 0xA3))
            elif op == 2:
                data[pos:pos] = bytes([rng.randrange(256)])
            elif op == 3 and data:
                del data[pos:pos + rng.randint(1, 8)]
            else:
                data = data[:pos]
        try:
            x509.parse(bytes(data))
            parsed += 1
        except DecodeError:
            failed += 1
        except Exception as e:  # pragma: no cover - the invariant under test
            raise AssertionError(f"iteration {i}: {type(e).__name__}: {e}") from e
    assert parsed > 50 and failed > 1000


# --------------------------------------------------------------------------- signatures


def _both(cert_der: bytes, issuer_spki: bytes):
    cert = x509.parse(cert_der)
    return (sigcheck.verify_certificate(cert, issuer_spki, backend="pure"),
            sigcheck.verify_certificate(cert, issuer_spki, backend="cryptography"))


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_both_paths_verify_a_good_chain_and_refuse_the_wrong_key(kind):
    p = pki(kind)
    assert _both(der(p.leaf_cert), spki_der(p.inter)) == (True, True)
    assert _both(der(p.inter), spki_der(p.root)) == (True, True)
    assert _both(der(p.leaf_cert), spki_der(p.root)) == (False, False)
    other = "rsa" if kind == "ec" else "ec"
    assert _both(der(p.leaf_cert), spki_der(pki(other).inter)) == (False, False)


_POOL = [("ec", 0), ("ec", 1), ("rsa", 0), ("rsa", 1), ("rsa3072", 0)]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(subject=st.integers(0, len(_POOL) - 1), signer=st.integers(0, len(_POOL) - 1),
       claimed=st.integers(0, len(_POOL) - 1), cn=st.text("abcdefgh.-", min_size=1, max_size=20),
       serial=st.integers(1, 2**150), flip=st.one_of(st.none(), st.integers(0, 10_000)),
       flip_sig=st.booleans())
def test_pure_and_cryptography_paths_agree_on_random_certificates(subject, signer, claimed, cn,
                                                                  serial, flip, flip_sig):
    sk = key(*_POOL[signer])
    cert = make_cert(cn, key(*_POOL[subject]), issuer_key=sk, issuer_name=name("issuer"),
                     serial=serial, sans=[cn + ".example"])
    parsed = x509.parse(der(cert))
    tbs, sig, sig_der = parsed.tbs, parsed.signature, parsed.signature_der
    if flip is not None:
        if flip_sig:
            i = flip % len(sig)
            sig = sig[:i] + bytes([sig[i] ^ 1]) + sig[i + 1:]
            sig_der = sig if parsed.sig_alg == x509.OID_RSA_SHA256 else sig_der
        else:
            i = flip % len(tbs)
            tbs = tbs[:i] + bytes([tbs[i] ^ 0x10]) + tbs[i + 1:]
    if parsed.sig_alg == x509.OID_ECDSA_SHA256 and flip_sig and flip is not None:
        sig_der = None  # ECDSA: only r||s is used for P-256 with SHA-256 on both paths
    issuer_spki = spki_der(key(*_POOL[claimed]))
    results = []
    for backend in ("pure", "cryptography"):
        results.append(sigcheck.verify(parsed.sig_alg, tbs, sig, sig_der, issuer_spki, backend))
    expected = claimed == signer and flip is None
    assert results == [expected, expected]


def _rsa_sign_raw(private_key, em: bytes) -> bytes:
    nums = private_key.private_numbers()
    n = nums.public_numbers.n
    s = pow(int.from_bytes(em, "big"), nums.d, n)
    return s.to_bytes((n.bit_length() + 7) // 8, "big")


_DI_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")
_DI_NO_NULL = bytes.fromhex("302f300b0609608648016503040201" "0420")


@pytest.mark.parametrize("build, ok", [
    (lambda k, h: b"\x00\x01" + b"\xff" * (k - 3 - 51) + b"\x00" + _DI_SHA256 + h, True),
    (lambda k, h: b"\x00\x01" + b"\xff" * (k - 3 - 49) + b"\x00" + _DI_NO_NULL + h, False),
    (lambda k, h: b"\x00\x02" + b"\xff" * (k - 3 - 51) + b"\x00" + _DI_SHA256 + h, False),
    (lambda k, h: b"\x00\x01" + b"\xff" * 8 + b"\x00" + _DI_SHA256 + h
     + b"\x00" * (k - 11 - 51), False),
    (lambda k, h: b"\x00\x01" + b"\xff" * (k - 4 - 51) + b"\xfe\x00" + _DI_SHA256 + h, False),
    (lambda k, h: b"\x00\x01" + b"\xff" * (k - 3 - 51) + b"\x00" + _DI_SHA256 + h[:-1] + b"\x00",
     False),
])
def test_rsa_pkcs1_encoding_is_checked_byte_for_byte_on_both_paths(build, ok):
    priv = key("rsa", 0)
    tbs = b"to be signed"
    em = build(256, hashlib.sha256(tbs).digest())
    assert len(em) == 256
    sig = _rsa_sign_raw(priv, em)
    spki = spki_der(priv)
    for backend in ("pure", "cryptography"):
        assert sigcheck.verify(x509.OID_RSA_SHA256, tbs, sig, sig, spki, backend) is ok


def test_rsa_signature_of_wrong_length_or_not_below_modulus_fails():
    priv = key("rsa", 0)
    spki = spki_der(priv)
    n = priv.public_key().public_numbers().n
    for sig in (b"\x01" * 255, n.to_bytes(256, "big"), b"\xff" * 256):
        for backend in ("pure", "cryptography"):
            assert sigcheck.verify(x509.OID_RSA_SHA256, b"x", sig, sig, spki, backend) is False


def _rsa_spki(n: int, e: int) -> bytes:
    def integer(v):
        raw = v.to_bytes(v.bit_length() // 8 + 1, "big")
        return tlv(0x02, raw)
    return seq(seq(oid("1.2.840.113549.1.1.1"), tlv(0x05, b"")),
               tlv(0x03, b"\x00" + seq(integer(n), integer(e))))


def test_refuses_weak_rsa_keys_on_both_paths():
    cert = x509.parse(der(pki("rsa").leaf_cert))
    n2048 = key("rsa", 1).public_key().public_numbers().n
    cases = [(spki_der(key("rsa1024")), sigcheck.WeakKeyError, "1024 bits"),
             (_rsa_spki(n2048, 1), sigcheck.WeakKeyError, "exponent 1"),
             (_rsa_spki(n2048, 2**33 + 1), DecodeError, "32 bits"),
             (_rsa_spki(n2048 + 1, 65537), DecodeError, "even"),
             (_rsa_spki(n2048, 65537)[:-1], DecodeError, "overruns")]
    for spki, error, match in cases:
        for backend in ("pure", "cryptography"):
            with pytest.raises(error, match=match):
                sigcheck.verify_certificate(cert, spki, backend=backend)
    # The hand-built SPKI of the issuing key is accepted and verifies.
    assert sigcheck.verify_certificate(cert, _rsa_spki(n2048, 65537), "pure") is True


def test_pure_path_names_the_algorithm_it_cannot_check():
    p = Pki("p384")
    leaf = x509.parse(der(p.leaf_cert))
    assert leaf.sig_alg == x509.OID_ECDSA_SHA384
    with pytest.raises(sigcheck.UnsupportedAlgorithmError,
                       match="unsupported signature algorithm ecdsa-with-SHA384 on this runtime"):
        sigcheck.verify_certificate(leaf, spki_der(p.inter), backend="pure")
    assert sigcheck.verify_certificate(leaf, spki_der(p.inter), backend="cryptography") is True
    assert sigcheck.verify_certificate(leaf, spki_der(p.root), backend="cryptography") is False
    # A P-384 key under ecdsa-with-SHA256: unsupported on the pure path only.
    cert = x509.parse(der(make_cert("mixed", key("ec", 0), issuer_key=key("p384"),
                                    hash_alg=hashes.SHA256())))
    with pytest.raises(sigcheck.UnsupportedAlgorithmError, match="P-384"):
        sigcheck.verify_certificate(cert, spki_der(key("p384")), backend="pure")
    assert sigcheck.verify_certificate(cert, spki_der(key("p384")), "cryptography") is True


def test_ed25519_is_checked_on_the_cryptography_path_only():
    cert = x509.parse(der(make_cert("ed", key("ed25519"))))
    assert sigcheck.verify_certificate(cert, spki_der(key("ed25519")), "cryptography") is True
    assert sigcheck.verify_certificate(cert, spki_der(key("ec", 0)), "cryptography") is False
    with pytest.raises(sigcheck.UnsupportedAlgorithmError, match="Ed25519 on this runtime"):
        sigcheck.verify_certificate(cert, spki_der(key("ed25519")), "pure")


def test_sha1_signatures_are_unsupported_everywhere():
    alg = seq(oid("1.2.840.113549.1.1.5"), tlv(0x05, b""))
    cert = x509.parse(raw_cert(raw_tbs(alg=alg), alg=alg, sig=b"\x01" * 256))
    for backend in ("pure", "cryptography"):
        with pytest.raises(sigcheck.UnsupportedAlgorithmError, match="sha1WithRSAEncryption"):
            sigcheck.verify_certificate(cert, spki_der(key("rsa", 0)), backend)


def _certifi_roots() -> list[bytes]:
    import base64
    import re

    import certifi

    with open(certifi.where(), "rb") as f:
        text = f.read()
    return [base64.b64decode(b"".join(m.split())) for m in
            re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)]


@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_parses_every_root_of_the_mozilla_store_and_both_paths_agree_on_self_signatures():
    roots = _certifi_roots()
    assert len(roots) > 100
    checked = 0
    for data in roots:
        cert = x509.parse(data)
        ref = cx509.load_der_x509_certificate(data)
        assert cert.subject == ref.subject.public_bytes() and cert.spki == spki_der(ref)
        assert cert.not_after == int(ref.not_valid_after_utc.timestamp())
        assert cert.unknown_critical == []
        fast = sigcheck.verify_certificate(cert, cert.spki, "cryptography") \
            if cert.sig_alg in sigcheck._FAST_HASHES else None
        try:
            pure = sigcheck.verify_certificate(cert, cert.spki, "pure")
        except sigcheck.UnsupportedAlgorithmError:
            continue
        assert pure is True and fast is True, ref.subject.rfc4514_string()
        checked += 1
    assert checked > 40
