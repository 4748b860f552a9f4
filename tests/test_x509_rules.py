"""One test per rule of the device's X.509 parser, each boundary from both sides (issue 8).

test_x509.py checks the parser against `cryptography` and a first set of
malformations; this file pins every remaining check of x509.py so that
tools/mutate.py finds none that could change unnoticed: DER framing (each
length form at its limit), INTEGER and BOOLEAN and BIT STRING and OID
encodings, every date field at its limits, names and their labels, each
extension's rules and caps, algorithm parameters, ECDSA signature values,
unique identifiers, and the field-by-field results.

Malformed certificates are assembled from the raw DER parts of tests/support/pki.py
(one TLV changed per test); well-formed ones there and here are read back
field by field. The parser has one path on CPython and MicroPython.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from support.pki import (
    ECDSA_SHA256,
    ECDSA_SIG,
    NAME,
    NOW,
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
from trustfleet_device import x509
from trustfleet_device.errors import DecodeError, LimitError

CertificateError = x509.CertificateError
BC = ext("2.5.29.19", seq(), critical=True)


def bad(data: bytes, *words: str, kind=CertificateError):
    """Parsing must fail with exactly this error type, and the message must hold every word."""
    with pytest.raises(DecodeError) as info:
        x509.parse(data)
    assert type(info.value) is kind, f"{type(info.value).__name__}: {info.value}"
    for w in words:
        assert w in str(info.value), str(info.value)
    return str(info.value)


def with_exts(*extensions: bytes) -> bytes:
    return raw_cert(raw_tbs(extensions=list(extensions)))


def epoch(*args) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp())


def validity(not_before: bytes, not_after: bytes = utc("270101000000Z")) -> bytes:
    return raw_cert(raw_tbs(validity=seq(not_before, not_after)))


def gen(text: str) -> bytes:
    return tlv(0x18, text.encode())


# --------------------------------------------------------------------------- size and framing


def test_a_certificate_of_exactly_the_size_cap_parses_one_byte_more_does_not():
    def padded(k):
        return with_exts(BC, ext("1.3.6.1.4.1.55555.1", b"\x00" * k))
    k = x509.MAX_CERT - len(padded(1000)) + 1000
    exact = padded(k)
    assert len(exact) == x509.MAX_CERT == 16384
    assert x509.parse(exact).der == exact
    bad(padded(k + 1), "16385 bytes, limit is 16384", kind=LimitError)


def test_bytearray_input_gives_bytes_fields():
    data = der(pki("ec").leaf_cert)
    got = x509.parse(bytearray(data))
    assert type(got.der) is bytes and got.der == data
    assert type(got.tbs) is bytes and got.tbs == x509.parse(data).tbs


def test_refuses_what_is_not_bytes():
    for value in ("text", None, memoryview(b"\x30\x00"), [0x30, 0]):
        bad(value, "certificate: expected bytes, got")


@pytest.mark.parametrize("data, words", [
    (b"\x30", ("certificate: truncated element at offset 0",)),
    (b"\x30\x81", ("certificate: truncated length at offset 0",)),
    (b"\x30\x81\x80", ("element at offset 0 overruns its container (128 bytes, 0 left)",)),
    (b"\x30\x81\x7f" + b"\x00" * 127, ("non-minimal length at offset 0",)),
    (b"\x30\x82\x01", ("truncated length at offset 0",)),
    (b"\x30\x82\x01\x00", ("element at offset 0 overruns its container (256 bytes, 0 left)",)),
    (b"\x30\x82\x00\xff" + b"\x00" * 255, ("non-minimal length at offset 0",)),
    (b"\x30\x80\x00\x00", ("indefinite length at offset 0 (BER, not DER)",)),
    (b"\x30\x02\x30", ("overruns its container (2 bytes, 1 left)",)),
    (b"\x30\x00", ("certificate: Certificate: missing tbsCertificate",)),
    (b"\x30\x02\x31\x00", ("certificate: Certificate: tbsCertificate: expected tag 0x30, got 0x31",)),
    (b"\x31\x00", ("certificate: Certificate: expected tag 0x30, got 0x31",)),
    (b"\x30\x00\x00", ("certificate: 1 unexpected trailing bytes",)),
])
def test_der_framing_rules(data, words):
    bad(data, *words)


@pytest.mark.parametrize("tag", [0x1F, 0x3F, 0x9F, 0xFF])
def test_high_tag_numbers_are_refused_wherever_any_tag_may_stand(tag):
    value = bytes([tag, 0x05, 0x00])
    bad(raw_cert(raw_tbs(subject=seq(tlv(0x31, seq(oid("2.5.4.3"), value))))),
        "high tag number form at offset")
    alg = seq(oid("1.2.840.113549.1.1.10"), value)
    bad(raw_cert(raw_tbs(alg=alg), alg=alg), "high tag number form at offset")


@pytest.mark.parametrize("n", [3, 4, 0x7F])
def test_long_length_fields_are_a_limit(n):
    bad(bytes([0x30, 0x80 | n]) + b"\x01" * 8, f"length field of {n} bytes at offset 0", kind=LimitError)


@pytest.mark.parametrize("size", [0x7F, 0x80, 0xFF, 0x100, 0x101])
def test_every_length_form_at_its_edges_parses(size):
    got = x509.parse(with_exts(BC, ext("1.3.6.1.4.1.55555.1", b"\x00" * size)))
    assert got.unknown_critical == [] and got.is_ca is False


def test_each_part_of_the_outer_certificate_is_required():
    tbs = raw_tbs()
    bad(seq(tbs), "certificate: Certificate: missing signatureAlgorithm")
    bad(seq(tbs, ECDSA_SHA256), "certificate: Certificate: missing signatureValue")
    bad(seq(tbs, ECDSA_SHA256, tlv(0x04, b"\x00" + ECDSA_SIG)),
        "signatureValue: expected tag 0x03, got 0x04")
    bad(raw_cert(tail=b"\x05\x00"), "certificate: Certificate: 2 unexpected trailing bytes")


def test_messages_name_the_path_to_the_field():
    bad(raw_cert(raw_tbs(validity=seq(utc("250101000000Z")))),
        "certificate: Certificate.tbsCertificate.validity: notAfter: expected UTCTime or GeneralizedTime")
    bad(raw_cert(raw_tbs(serial=b"")), "certificate: Certificate.tbsCertificate: serialNumber: empty INTEGER")


def test_nesting_cap_is_eight():
    x509._Cursor(b"", 0, 0, 8, "x")
    with pytest.raises(LimitError, match="certificate: x: nesting deeper than 8"):
        x509._Cursor(b"", 0, 0, 9, "x")


# --------------------------------------------------------------------------- INTEGER, BOOLEAN, BIT STRING


@pytest.mark.parametrize("serial", [b"\x00", b"\x7f", b"\x80", b"\x00\x80", b"\xff\x7f", b"\x01\x02",
                                    b"\x01\x80", b"\xfe\x80", b"\x01" * 32])
def test_minimal_integers_are_accepted(serial):
    assert x509.parse(raw_cert(raw_tbs(serial=serial))).serial == serial


@pytest.mark.parametrize("serial", [b"\x00\x7f", b"\x00\x00", b"\xff\x80", b"\xff\xff"])
def test_non_minimal_integers_are_refused(serial):
    bad(raw_cert(raw_tbs(serial=serial)), "serialNumber: non-minimal INTEGER")


def test_serial_number_cap_is_32_bytes():
    bad(raw_cert(raw_tbs(serial=b"\x01" * 33)), "serialNumber is 33 bytes, limit is 32", kind=LimitError)
    bad(raw_cert(raw_tbs(serial=b"")), "serialNumber: empty INTEGER")


@pytest.mark.parametrize("value, path_len", [(b"\x00", 0), (b"\x01", 1), (b"\x7f\xff\xff\xff", 2**31 - 1)])
def test_path_length_is_a_small_unsigned_integer(value, path_len):
    got = with_exts(ext("2.5.29.19", seq(tlv(0x01, b"\xff"), tlv(0x02, value)), critical=True))
    assert (x509.parse(got).is_ca, x509.parse(got).path_len) == (True, path_len)


def test_path_length_limits():
    def bc(value):
        return with_exts(ext("2.5.29.19", seq(tlv(0x01, b"\xff"), tlv(0x02, value))))
    bad(bc(b"\x01\x00\x00\x00\x00"), "pathLenConstraint is 5 bytes, limit is 4", kind=LimitError)
    bad(bc(b"\x80\x00\x00\x00"), "pathLenConstraint: negative")
    bad(bc(b"\x80"), "pathLenConstraint: negative")


def test_path_length_without_ca_means_nothing():
    got = x509.parse(with_exts(ext("2.5.29.19", seq(tlv(0x02, b"\x03")))))
    assert (got.is_ca, got.path_len) == (False, None)


@pytest.mark.parametrize("content, words", [
    (b"\xff\xff", ("critical: BOOLEAN of 2 bytes",)),
    (b"", ("critical: BOOLEAN of 0 bytes",)),
    (b"\x01", ("critical: BOOLEAN 0x01 is not DER (0x00 or 0xff)",)),
    (b"\xfe", ("BOOLEAN 0xfe is not DER",)),
])
def test_booleans_are_one_byte_0x00_or_0xff(content, words):
    bad(with_exts(seq(oid("2.5.29.19"), tlv(0x01, content), tlv(0x04, seq()))), *words)


def test_explicit_false_boolean_reads_as_false():
    unknown = seq(oid("1.3.6.1.4.1.55555.2"), tlv(0x01, b"\x00"), tlv(0x04, b"\x05\x00"))
    bc = ext("2.5.29.19", seq(tlv(0x01, b"\x00")))
    got = x509.parse(with_exts(bc, unknown))
    assert (got.unknown_critical, got.is_ca) == ([], False)


def sig_value(content: bytes) -> bytes:
    return seq(raw_tbs(), ECDSA_SHA256, tlv(0x03, content))


@pytest.mark.parametrize("content, words", [
    (b"", ("signatureValue: empty BIT STRING",)),
    (b"\x08" + ECDSA_SIG, ("signatureValue: bad unused-bit count 8",)),
    (b"\x01", ("signatureValue: bad unused-bit count 1",)),
    (b"\x01" + ECDSA_SIG, ("signatureValue: 1 unused bits, expected whole bytes",)),
])
def test_signature_bit_string_rules(content, words):
    bad(sig_value(content), *words)


def test_public_key_bit_string_must_be_whole_bytes():
    k = bytearray(spki_der(key("ec", 0)))
    assert k[-67:-65] == b"\x42\x00"
    k[-66] = 0x01  # one unused bit
    bad(raw_cert(raw_tbs(spki=bytes(k))), "subjectPublicKey: 1 unused bits, expected whole bytes")
    trailing = seq(seq(oid("1.2.840.10045.2.1"), oid("1.2.840.10045.3.1.7")), tlv(0x03, b"\x00\x04"),
                   b"\x05\x00")
    bad(raw_cert(raw_tbs(spki=trailing)), "subjectPublicKeyInfo: 2 unexpected trailing bytes")


@pytest.mark.parametrize("content, sign", [
    (b"\x00\x04", True), (b"\x02\x04", True), (b"\x07\x80", False), (b"\x00\x01", False),
    (b"\x00\xfb\xff", False), (b"\x00", False), (b"\x00\x04\x00", True),
])
def test_key_cert_sign_is_bit_5_of_key_usage(content, sign):
    got = x509.parse(with_exts(BC, ext("2.5.29.15", tlv(0x03, content), critical=True)))
    assert got.key_cert_sign is sign


def test_key_usage_bit_string_rules_apply():
    bad(with_exts(ext("2.5.29.15", tlv(0x03, b"\x09\x04"))), "keyUsage: bad unused-bit count 9")
    bad(with_exts(ext("2.5.29.15", tlv(0x03, b""))), "keyUsage: empty BIT STRING")


# --------------------------------------------------------------------------- OIDs


@pytest.mark.parametrize("dotted", ["0.39", "1.0", "1.39", "2.0", "2.999.1", "0.0", "1.3.6.1.4.1.55555.1",
                                    "2.5.29.37.0", "1.2.840.113549.1.1.11"])
def test_oid_text_round_trips(dotted):
    got = x509.parse(with_exts(BC, ext("2.5.29.37", seq(oid(dotted)))))
    assert got.ext_key_usage == [dotted]


@pytest.mark.parametrize("content, words, kind", [
    (b"", ("KeyPurposeId: empty OID",), CertificateError),
    (b"\x80\x01", ("KeyPurposeId: non-minimal OID arc",), CertificateError),
    (b"\x2b\x06\x80\x01", ("non-minimal OID arc",), CertificateError),
    (b"\x2b\x06\x81", ("KeyPurposeId: truncated OID",), CertificateError),
    (b"\x2b" + b"\x01" * 64, ("OID of 65 bytes, limit is 64",), LimitError),
])
def test_oid_rules(content, words, kind):
    bad(with_exts(BC, ext("2.5.29.37", seq(tlv(0x06, content)))), *words, kind=kind)


def test_oid_of_64_bytes_and_inner_zero_continuation_bytes_parse():
    got = x509.parse(with_exts(BC, ext("2.5.29.37", seq(tlv(0x06, b"\x2b" + b"\x01" * 63),
                                                          tlv(0x06, b"\x2b\x81\x80\x01")))))
    assert got.ext_key_usage == ["1.3" + ".1" * 63, "1.3.16385"]


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize("field, when", [
    (utc("491231235959Z"), (2049, 12, 31, 23, 59, 59)),
    (utc("500101000000Z"), (1950, 1, 1)),
    (utc("260102030405Z"), (2026, 1, 2, 3, 4, 5)),
    (utc("991231235959Z"), (1999, 12, 31, 23, 59, 59)),
    (utc("000101000000Z"), (2000, 1, 1)),
    (gen("20500101000000Z"), (2050, 1, 1)),
    (gen("19000301000000Z"), (1900, 3, 1)),
    (gen("99991231235959Z"), (9999, 12, 31, 23, 59, 59)),
    (gen("00010101000000Z"), (1, 1, 1)),
    (gen("20240229120000Z"), (2024, 2, 29, 12)),
    (gen("20000229000000Z"), (2000, 2, 29)),
    (gen("16000229000000Z"), (1600, 2, 29)),
    (gen("21230615182736Z"), (2123, 6, 15, 18, 27, 36)),
])
def test_times_convert_exactly(field, when):
    got = x509.parse(validity(field, gen("99991231235959Z")))
    assert got.not_before == epoch(*when)
    assert got.not_after == epoch(9999, 12, 31, 23, 59, 59)


@pytest.mark.parametrize("month, days", [(1, 31), (2, 28), (3, 31), (4, 30), (5, 31), (6, 30), (7, 31),
                                         (8, 31), (9, 30), (10, 31), (11, 30), (12, 31)])
def test_last_day_of_each_month_and_not_one_more(month, days):
    last = x509.parse(validity(utc(f"23{month:02d}{days:02d}000000Z")))
    assert last.not_before == epoch(2023, month, days)
    bad(validity(utc(f"23{month:02d}{days + 1:02d}000000Z")), "notBefore: impossible date or time")


@pytest.mark.parametrize("year, leap", [(2024, True), (2023, False), (2000, True), (1900, False),
                                        (2100, False), (2400, True), (2022, False), (1996, True)])
def test_february_29_only_in_leap_years(year, leap):
    field = gen(f"{year}0229000000Z")
    if leap:
        assert x509.parse(validity(field, gen("99991231235959Z"))).not_before == epoch(year, 2, 29)
    else:
        bad(validity(field, gen("99991231235959Z")), "notBefore: impossible date or time")


@pytest.mark.parametrize("text, words", [
    ("230001000000Z", ("notBefore: month 0",)),
    ("231301000000Z", ("notBefore: month 13",)),
    ("230100000000Z", ("impossible date or time",)),
    ("230101240000Z", ("impossible date or time",)),
    ("230101006000Z", ("impossible date or time",)),
    ("230101000060Z", ("impossible date or time",)),
    ("2301010000000", ("notBefore: time is not in UTC (no trailing Z)",)),
    ("23010100000/Z", ("notBefore: non-digit in time",)),
    ("23010100000:Z", ("non-digit in time",)),
    ("/3010100000:Z", ("non-digit in time",)),
    ("2301010000000Z", ("notBefore: UTCTime must be YYMMDDHHMMSSZ",)),
])
def test_utc_time_rules(text, words):
    bad(validity(utc(text)), *words)


def test_largest_time_fields_parse():
    assert x509.parse(validity(utc("231231235959Z"))).not_before == epoch(2023, 12, 31, 23, 59, 59)
    assert x509.parse(validity(utc("230909090909Z"))).not_before == epoch(2023, 9, 9, 9, 9, 9)


@pytest.mark.parametrize("text, words", [
    ("2023010100000Z", ("notBefore: GeneralizedTime must be YYYYMMDDHHMMSSZ",)),
    ("202301010000000Z", ("GeneralizedTime must be YYYYMMDDHHMMSSZ",)),
    ("20230101000000+", ("time is not in UTC",)),
    ("20230101000a00Z", ("non-digit in time",)),
])
def test_generalized_time_rules(text, words):
    bad(validity(gen(text), gen("99991231235959Z")), *words)


def test_validity_needs_two_times_of_a_known_type_and_nothing_more():
    bad(validity(tlv(0x04, b"230101000000Z")), "notBefore: expected UTCTime or GeneralizedTime")
    bad(raw_cert(raw_tbs(validity=seq())), "notBefore: expected UTCTime or GeneralizedTime")
    bad(raw_cert(raw_tbs(validity=seq(utc("230101000000Z"), utc("240101000000Z"), utc("250101000000Z")))),
        "validity: 15 unexpected trailing bytes")


@pytest.mark.parametrize("year", [2024, 2000])
def test_february_30_is_refused_even_in_leap_years(year):
    bad(validity(gen(f"{year}0230000000Z"), gen("99991231235959Z")), "notBefore: impossible date or time")


@pytest.mark.parametrize("day", [(1600, 2, 29), (1600, 3, 1), (1900, 2, 28), (1900, 3, 1), (2000, 2, 29),
                                 (2000, 3, 1), (2000, 3, 4), (2100, 2, 28), (2100, 3, 1), (2400, 2, 29),
                                 (2400, 3, 1)])
def test_format_time_at_century_and_400_year_edges(day):
    for second in (0, 86399):
        assert x509.format_time(epoch(*day) + second) == \
            (dt.datetime(*day, tzinfo=dt.UTC) + dt.timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_format_time_reads_back_what_it_was_given():
    assert x509.format_time(0) == "1970-01-01T00:00:00Z"
    assert x509.format_time(NOW + 86399) == "2026-01-01T23:59:59Z"
    assert x509.format_time(epoch(2024, 2, 29, 1, 2, 3)) == "2024-02-29T01:02:03Z"
    assert x509.format_time(-1) == "1969-12-31T23:59:59Z"


# --------------------------------------------------------------------------- names


def name_of_size(total: int, oid_text: str = "2.5.4.3") -> bytes:
    """A one-attribute Name whose whole DER is `total` bytes."""
    for k in range(total, 0, -1):
        n = seq(tlv(0x31, seq(oid(oid_text), tlv(0x0C, b"x" * k))))
        if len(n) == total:
            return n
    raise ValueError(total)


def test_name_cap_is_1024_bytes_whole():
    assert x509.parse(raw_cert(raw_tbs(subject=name_of_size(1024)))).subject == name_of_size(1024)
    bad(raw_cert(raw_tbs(subject=name_of_size(1025))), "subject is 1025 bytes, limit is 1024",
        kind=LimitError)
    bad(raw_cert(raw_tbs(issuer=name_of_size(1025))), "issuer is 1025 bytes, limit is 1024", kind=LimitError)


def test_issuer_may_not_be_empty_the_subject_may():
    got = x509.parse(raw_cert(raw_tbs(subject=seq())))
    assert (got.subject, got.issuer, got.label()) == (b"\x30\x00", NAME, "")
    bad(raw_cert(raw_tbs(issuer=seq())), "issuer", "empty name")


@pytest.mark.parametrize("subject, words", [
    (seq(tlv(0x31, b"")), ("RDN", "empty RDN")),
    (seq(tlv(0x31, seq(oid("2.5.4.3")))), ("attribute without a value",)),
    (seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, b"a"), tlv(0x0C, b"b")))), ("3 unexpected trailing bytes",)),
    (seq(tlv(0x31, seq(tlv(0x0C, b"a"), tlv(0x0C, b"b")))), ("attribute type: expected tag 0x06",)),
    (seq(tlv(0x30, b"")), ("RDN: expected tag 0x31, got 0x30",)),
    (seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, b"a"))), tlv(0x31, b"")), ("empty RDN",)),
    (seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, b"a")) + seq())), ("attribute", "missing attribute type")),
])
def test_every_rdn_and_attribute_is_checked(subject, words):
    bad(raw_cert(raw_tbs(subject=subject)), *words)


def atv(oid_text: str, value: bytes) -> bytes:
    return tlv(0x31, seq(oid(oid_text), tlv(0x0C, value)))


@pytest.mark.parametrize("rdns, label", [
    ([atv("2.5.4.10", b"Org"), atv("2.5.4.3", b"First"), atv("2.5.4.3", b"Second")], "First"),
    ([atv("2.5.4.3", b"Only CN")], "Only CN"),
    ([atv("2.5.4.6", b"NZ"), atv("2.5.4.10", b"Org One"), atv("2.5.4.10", b"Org Two")], "Org One"),
    ([atv("2.5.4.6", b"NZ")], ""),
    ([atv("2.5.4.3", b"tab\there\x7f\x80~ !")], "tab?here??~ !"),
    ([atv("2.5.4.3", b"y" * 100)], "y" * 64),
    ([tlv(0x31, seq(oid("2.5.4.10"), tlv(0x0C, b"O")) + seq(oid("2.5.4.3"), tlv(0x0C, b"C")))], "C"),
])
def test_name_label_prefers_the_first_cn_then_the_first_o(rdns, label):
    n = seq(*rdns)
    assert x509.name_label(n) == label
    assert x509.parse(raw_cert(raw_tbs(subject=n))).label() == label


def test_name_label_returns_empty_text_for_anything_malformed():
    for junk in (b"", b"\x30", b"\x31\x00", b"\x30\x03\x31\x01\x30", seq(tlv(0x31, seq(tlv(0x06, b""))))):
        assert x509.name_label(junk) == ""


# --------------------------------------------------------------------------- extensions


def test_basic_constraints_rules():
    got = x509.parse(with_exts(ext("2.5.29.19", seq(tlv(0x01, b"\xff")))))
    assert (got.is_ca, got.path_len) == (True, None)
    bad(with_exts(ext("2.5.29.19", seq(tlv(0x01, b"\xff"), tlv(0x02, b"\x01"), tlv(0x02, b"\x01")))),
        "extension 2.5.29.19.basicConstraints: 3 unexpected trailing bytes")
    bad(with_exts(ext("2.5.29.19", tlv(0x04, b""))), "basicConstraints: expected tag 0x30, got 0x04")


def test_a_certificate_without_extensions_has_the_defaults():
    got = x509.parse(raw_cert(raw_tbs(extensions=[])))
    assert (got.is_ca, got.path_len, got.key_cert_sign, got.dns_names, got.ext_key_usage,
            got.unknown_critical, got.version) == (False, None, None, [], None, [], 3)
    v1 = x509.parse(raw_cert(raw_tbs(version=None, extensions=[])))
    assert (v1.version, v1.is_ca, v1.path_len, v1.dns_names) == (1, False, None, [])


def san(*names: bytes) -> bytes:
    return with_exts(BC, ext("2.5.29.17", seq(*names)))


def test_san_cap_is_100_entries():
    assert len(x509.parse(san(*[tlv(0x82, b"a.example")] * 100)).dns_names) == 100
    bad(san(*[tlv(0x82, b"a.example")] * 101), "subjectAltName has more than 100 entries", kind=LimitError)
    # Entries that are not dNSNames count too.
    bad(san(*[tlv(0x87, b"\x0a\x00\x00\x01")] * 101), "more than 100 entries", kind=LimitError)


# iPAddress (0x87) is read, not read past: see the tests below.
@pytest.mark.parametrize("tag", [0x80, 0x81, 0x83, 0x84, 0x86, 0x88, 0xA0, 0xA4, 0xA5, 0xA7, 0xA8])
def test_general_names_of_every_context_tag_up_to_8_are_read_past(tag):
    got = x509.parse(san(tlv(tag, b"\x01\x02"), tlv(0x82, b"after.example")))
    assert got.dns_names == ["after.example"] and got.ip_addresses == []


def test_ip_addresses_are_kept_in_order_beside_the_dns_names():
    v4, v6 = b"\x0a\x00\x00\x01", bytes(range(16))
    got = x509.parse(san(tlv(0x87, v4), tlv(0x82, b"a.example"), tlv(0x87, v6), tlv(0x82, b"b.example"),
                         tlv(0x87, v4)))
    assert got.ip_addresses == [v4, v6, v4]
    assert got.dns_names == ["a.example", "b.example"]
    assert x509.parse(san(tlv(0x82, b"a.example"))).ip_addresses == []
    assert x509.parse(raw_cert(raw_tbs(extensions=[]))).ip_addresses == []


@pytest.mark.parametrize("size", [0, 1, 3, 5, 8, 15, 17, 32])
def test_ip_address_of_other_than_4_or_16_bytes_is_refused(size):
    bad(san(tlv(0x87, bytes(size))), f"iPAddress of {size} bytes (4 for IPv4, 16 for IPv6)")


@pytest.mark.parametrize("tag", [0x89, 0x8F, 0xA9, 0x30, 0x04, 0x42, 0xC2, 0x0C])
def test_general_names_with_other_tags_are_refused(tag):
    bad(san(tlv(tag, b"\x01\x02")), f"GeneralName with tag 0x{tag:02x}")


@pytest.mark.parametrize("value, ok", [
    (b"a", True), (b"!~", True), (b"x" * 253, True), (b"", False), (b"x" * 254, False),
    (b"a b", False), (b"a\x7f", False), (b"\x00", False), (b"a\xff", False),
])
def test_dns_name_length_and_bytes(value, ok):
    if ok:
        assert x509.parse(san(tlv(0x82, value))).dns_names == [value.decode()]
    elif not value or len(value) > 253:
        bad(san(tlv(0x82, value)), f"dNSName of {len(value)} characters (1..253)")
    else:
        bad(san(tlv(0x82, value)), "dNSName holds a byte", "outside printable ASCII")


def test_san_value_must_be_one_sequence():
    bad(with_exts(ext("2.5.29.17", seq(tlv(0x82, b"a")) + b"\x05\x00")), "2 unexpected trailing bytes")


def test_extended_key_usage_cap_is_32():
    purposes = [oid(f"1.3.6.1.4.1.55555.{i}") for i in range(33)]
    assert len(x509.parse(with_exts(BC, ext("2.5.29.37", seq(*purposes[:32])))).ext_key_usage) == 32
    bad(with_exts(BC, ext("2.5.29.37", seq(*purposes))), "extKeyUsage has more than 32 entries",
        kind=LimitError)


def test_extension_block_rules():
    bad(raw_cert(raw_tbs(extensions=[], tail=tlv(0xA3, seq()))), "Extensions: empty extensions")
    bad(raw_cert(raw_tbs(extensions=[], tail=tlv(0xA3, seq(BC) + b"\x05\x00"))),
        "extensions: 2 unexpected trailing bytes")


def test_extension_count_cap_is_64():
    many = [ext(f"1.3.6.1.4.1.55555.{i}", b"\x05\x00") for i in range(65)]
    assert x509.parse(with_exts(*many[:64])).unknown_critical == []
    bad(with_exts(*many), "more than 64 extensions", kind=LimitError)


def test_extension_needs_an_octet_string_value():
    bad(with_exts(seq(oid("2.5.29.19"), tlv(0x01, b"\xff"))), "Extension: missing extnValue")


@pytest.mark.parametrize("oid_text, critical, listed", [
    ("2.5.29.14", True, False),   # subjectKeyIdentifier: handled as opaque
    ("2.5.29.35", True, False),   # authorityKeyIdentifier
    ("2.5.29.30", False, True),   # nameConstraints whatever its criticality
    ("2.5.29.30", True, True),
    ("2.5.29.32", True, True),    # certificatePolicies: not implemented
    ("2.5.29.32", False, False),
])
def test_which_extensions_are_listed_as_unknown_critical(oid_text, critical, listed):
    got = x509.parse(with_exts(BC, ext(oid_text, seq(tlv(0x04, b"\x01")), critical=critical)))
    assert got.unknown_critical == ([oid_text] if listed else [])


def test_unknown_critical_extensions_are_listed_in_order():
    got = x509.parse(with_exts(ext("1.3.6.1.4.1.55555.8", b"\x05\x00", critical=True), BC,
                               ext("2.5.29.30", seq()), ext("1.3.6.1.4.1.55555.9", b"", critical=True)))
    assert got.unknown_critical == ["1.3.6.1.4.1.55555.8", "2.5.29.30", "1.3.6.1.4.1.55555.9"]


# --------------------------------------------------------------------------- algorithms and signatures


def test_algorithm_identifier_has_at_most_one_parameter():
    alg = seq(oid("1.2.840.113549.1.1.11"), tlv(0x05, b""), tlv(0x05, b""))
    bad(raw_cert(raw_tbs(alg=alg), alg=alg, sig=b"\x01" * 256), "signatureAlgorithm: 2 unexpected trailing bytes")


def test_rsa_parameters_null_are_kept_as_received():
    got = x509.parse(der(pki("rsa").leaf_cert))
    assert (got.sig_alg, got.sig_params) == ("1.2.840.113549.1.1.11", b"\x05\x00")
    assert got.spki_alg == "1.2.840.113549.1.1.1"
    ec_got = x509.parse(der(pki("ec").leaf_cert))
    assert (ec_got.sig_params, ec_got.spki_alg) == (b"", "1.2.840.10045.2.1")


def test_ed25519_parameters_must_be_absent():
    alg = seq(oid("1.3.101.112"), tlv(0x05, b""))
    bad(raw_cert(raw_tbs(alg=alg), alg=alg, sig=b"\x01" * 64), "Ed25519: parameters must be absent")
    plain = seq(oid("1.3.101.112"))
    got = x509.parse(raw_cert(raw_tbs(alg=plain), alg=plain, sig=b"\x01" * 64))
    assert (got.sig_alg, got.signature) == ("1.3.101.112", b"\x01" * 64)


def test_other_algorithms_keep_their_parameters():
    alg = seq(oid("1.2.840.113549.1.1.10"), seq(tlv(0xA0, seq(oid("2.16.840.1.101.3.4.2.1")))))
    got = x509.parse(raw_cert(raw_tbs(alg=alg), alg=alg, sig=b"\x01" * 256))
    assert got.sig_alg == "1.2.840.113549.1.1.10" and got.sig_params == alg[2 + 11:]


@pytest.mark.parametrize("alg", ["1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"])
def test_ecdsa_parameters_must_be_absent(alg):
    a = seq(oid(alg), tlv(0x05, b""))
    bad(raw_cert(raw_tbs(alg=a), alg=a), "parameters must be absent")


def ecdsa(r: bytes, s: bytes, tail: bytes = b"") -> bytes:
    return raw_cert(sig=seq(tlv(0x02, r), tlv(0x02, s), tail))


@pytest.mark.parametrize("r, s, width", [
    (b"\x01", b"\x02", 32),
    (b"\x00\x80" + b"\x01" * 31, b"\x7f" + b"\x01" * 31, 32),
    (b"\x01" * 33, b"\x02", 48),
    (b"\x00\x80" + b"\x01" * 47, b"\x02", 48),
    (b"\x01", b"\x01" * 48, 48),
    (b"\x01" * 49, b"\x02", 66),
    (b"\x02", b"\x01" * 66, 66),
    (b"\x00\xff" + b"\x01" * 65, b"\x00", 66),
    (b"\x01\x00", b"\x01\x00\x00", 32),
])
def test_ecdsa_values_are_padded_to_the_curve_width(r, s, width):
    got = x509.parse(ecdsa(r, s))
    rr, ss = r.lstrip(b"\x00"), s.lstrip(b"\x00")
    assert got.signature == rr.rjust(width, b"\x00") + ss.rjust(width, b"\x00")
    assert got.signature_der == seq(tlv(0x02, r), tlv(0x02, s))


@pytest.mark.parametrize("r, s, words, kind", [
    (b"\x81", b"\x01", ("negative r or s",), CertificateError),
    (b"\x01", b"\x80", ("negative r or s",), CertificateError),
    (b"\x01" * 67, b"\x01", ("r or s longer than 66 bytes",), CertificateError),
    (b"\x01", b"\x01" * 67, ("r or s longer than 66 bytes",), CertificateError),
    (b"\x00\x80" + b"\x01" * 66, b"\x01", ("r is 68 bytes, limit is 67",), LimitError),
    (b"\x01", b"\x01" * 68, ("s is 68 bytes, limit is 67",), LimitError),
    (b"", b"\x01", ("r: empty INTEGER",), CertificateError),
])
def test_ecdsa_value_rules(r, s, words, kind):
    bad(ecdsa(r, s), *words, kind=kind)


def test_ecdsa_value_is_one_sequence_of_two_integers():
    bad(ecdsa(b"\x01", b"\x02", tail=tlv(0x02, b"\x03")), "Ecdsa-Sig-Value: 3 unexpected trailing bytes")
    bad(raw_cert(sig=seq(tlv(0x02, b"\x01"), tlv(0x02, b"\x02")) + b"\x05\x00"),
        "Certificate.signatureValue: 2 unexpected trailing bytes")


def test_real_signatures_of_every_curve_read_back():
    for k, h in ((key("ec", 0), hashes.SHA256()), (key("p384", 0), hashes.SHA384()),
                 (ec.generate_private_key(ec.SECP521R1()), hashes.SHA512())):
        cert = make_cert("curve", k, hash_alg=h)
        got = x509.parse(der(cert))
        r, s = decode_dss_signature(cert.signature)
        width = (k.curve.key_size + 7) // 8
        assert got.signature == r.to_bytes(width, "big") + s.to_bytes(width, "big")


def test_ed25519_certificate_fields():
    k = ed25519.Ed25519PrivateKey.generate()
    cert = make_cert("ed", k)
    got = x509.parse(der(cert))
    assert (got.sig_alg, got.sig_params, got.signature) == ("1.3.101.112", b"", cert.signature)


# --------------------------------------------------------------------------- version and unique identifiers


def test_version_field_rules():
    bad(raw_cert(raw_tbs(version=tlv(0xA0, tlv(0x02, b"\x02") + b"\x05\x00"))),
        "version: 2 unexpected trailing bytes")
    bad(raw_cert(raw_tbs(version=tlv(0xA0, tlv(0x02, b"\x03")))), "version 4 is not supported")
    bad(raw_cert(raw_tbs(version=tlv(0xA0, tlv(0x02, b"\x01")))),
        "version 2 is not supported (only v1 and v3)")
    assert x509.parse(raw_cert()).version == 3


@pytest.mark.parametrize("ids", [[0x81], [0x82], [0x81, 0x82], [0xA1], [0xA2], [0xA1, 0xA2]])
def test_unique_identifiers_are_read_past_in_version_3(ids):
    extra = b"".join(tlv(t, b"\x00\x01") for t in ids)
    spki = spki_der(key("ec", 0)) + extra
    got = x509.parse(raw_cert(raw_tbs(spki=spki, extensions=[ext("2.5.29.19", seq(tlv(0x01, b"\xff")))])))
    assert got.is_ca is True and got.spki == spki_der(key("ec", 0))


@pytest.mark.parametrize("tag", [0x81, 0x82, 0xA1, 0xA2])
def test_unique_identifiers_are_refused_in_version_1(tag):
    spki = spki_der(key("ec", 0)) + tlv(tag, b"\x00\x01")
    bad(raw_cert(raw_tbs(version=None, spki=spki, extensions=[])), "unique identifiers in a v1 certificate")


def test_unique_identifiers_out_of_order_are_trailing_bytes():
    spki = spki_der(key("ec", 0)) + tlv(0x82, b"\x00\x01") + tlv(0x81, b"\x00\x01")
    bad(raw_cert(raw_tbs(spki=spki, extensions=[])), "tbsCertificate: 4 unexpected trailing bytes")


# --------------------------------------------------------------------------- every field, read back


def test_every_field_of_a_hand_made_certificate():
    tbs = raw_tbs(serial=b"\x00\x9a\x01", validity=seq(utc("250102030405Z"), gen("20500607080910Z")),
                  extensions=[ext("2.5.29.19", seq(tlv(0x01, b"\xff"), tlv(0x02, b"\x02")), critical=True),
                              ext("2.5.29.15", tlv(0x03, b"\x01\x06"), critical=True),
                              ext("2.5.29.17", seq(tlv(0x82, b"a.example"), tlv(0x82, b"*.b.example"))),
                              ext("2.5.29.37", seq(oid("1.3.6.1.5.5.7.3.1")))])
    data = raw_cert(tbs)
    got = x509.parse(data)
    assert got.der == data and got.tbs == tbs
    assert (got.version, got.serial, got.sig_alg, got.sig_params) == (3, b"\x00\x9a\x01",
                                                                      "1.2.840.10045.4.3.2", b"")
    assert got.issuer == NAME and got.subject == NAME
    assert (got.not_before, got.not_after) == (epoch(2025, 1, 2, 3, 4, 5), epoch(2050, 6, 7, 8, 9, 10))
    assert got.spki == spki_der(key("ec", 0)) and got.spki_alg == "1.2.840.10045.2.1"
    assert (got.is_ca, got.path_len, got.key_cert_sign) == (True, 2, True)
    assert got.dns_names == ["a.example", "*.b.example"]
    assert got.ext_key_usage == ["1.3.6.1.5.5.7.3.1"]
    assert got.signature == b"\x01" * 32 + b"\x02" * 32 and got.signature_der == ECDSA_SIG
    assert got.unknown_critical == [] and got.label() == "Raw"


def test_real_certificates_read_back_serial_and_names():
    for cert in (pki("ec").root, pki("rsa").leaf_cert, pki("ec").inter):
        got = x509.parse(der(cert))
        n = cert.serial_number
        assert int.from_bytes(got.serial, "big", signed=True) == n
        assert got.issuer == cert.issuer.public_bytes()
    odd = make_cert("odd", key("ec", 0), serial=0x80)
    assert x509.parse(der(odd)).serial == b"\x00\x80"


def test_label_shows_bytes_outside_printable_ascii_as_question_marks():
    n = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "caf\u00e9")])
    assert x509.name_label(n.public_bytes()) == "caf??"
    assert x509.name_label(name("plain").public_bytes()) == "plain"
