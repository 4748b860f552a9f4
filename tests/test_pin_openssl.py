"""`trustfleet pin` must print the same bytes as the openssl pipeline operators already use.

Certificates are made here (RSA 2048, EC P-256, EC P-384, self-signed or as
a chain) and each pin is compared byte for byte with openssl run through a
shell. Without openssl on PATH these tests skip, except under CI=true where
a missing openssl is a failure.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from support.environment import require_tool
from trustfleet_server import cli, keys, x509util

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = b"pin test passphrase"
TAIL = "openssl dgst -sha256 -binary | openssl enc -base64"

KEY_TYPES = {
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
}


@pytest.fixture(autouse=True)
def openssl_on_path(monkeypatch):
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    require_tool("openssl", "apt-get install openssl")


@pytest.fixture(scope="module")
def key_of():
    # RSA generation is slow; make each key type once per module.
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = KEY_TYPES[kind]()
        return cache[kind]

    return get


def make_cert(subject_cn, key, issuer_cn=None, issuer_key=None, *, ca=True):
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Trustfleet Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
        ]
    )
    issuer = (
        subject
        if issuer_cn is None
        else x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Trustfleet Test"),
                x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn),
            ]
        )
    )
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key or key, hashes.SHA256())
    )


def openssl(command: str) -> bytes:
    result = subprocess.run(command, shell=True, capture_output=True, check=True, timeout=60)
    return result.stdout


def openssl_cert_pin(path: Path, *, der: bool = False) -> bytes:
    inform = " -inform der" if der else ""
    return openssl(
        f"openssl x509{inform} -in {shlex.quote(str(path))} -pubkey -noout"
        f" | openssl pkey -pubin -outform der | {TAIL}"
    )


def trustfleet_pin(capsys, *argv) -> bytes:
    rc = cli.main(["pin", *[str(a) for a in argv]])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err == ""
    return captured.out.encode("utf-8")


# --------------------------------------------------------------------------- single subjects


@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_pin_of_pem_certificate_matches_openssl(tmp_path, capsys, key_of, kind):
    path = tmp_path / "cert.pem"
    path.write_bytes(
        make_cert(f"{kind} root", key_of(kind)).public_bytes(serialization.Encoding.PEM)
    )
    expected = openssl_cert_pin(path)
    assert expected.endswith(b"=\n")
    assert trustfleet_pin(capsys, path) == expected


@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_pin_of_der_certificate_matches_openssl(tmp_path, capsys, key_of, kind):
    path = tmp_path / "cert.der"
    path.write_bytes(
        make_cert(f"{kind} root", key_of(kind)).public_bytes(serialization.Encoding.DER)
    )
    assert trustfleet_pin(capsys, path) == openssl_cert_pin(path, der=True)


@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_pin_of_public_key_pem_matches_openssl(tmp_path, capsys, key_of, kind):
    path = tmp_path / "key.pub.pem"
    path.write_bytes(keys.public_key_pem(key_of(kind)))
    expected = openssl(f"openssl pkey -pubin -in {shlex.quote(str(path))} -outform der | {TAIL}")
    assert trustfleet_pin(capsys, path) == expected


@pytest.mark.parametrize("kind", sorted(KEY_TYPES))
def test_pin_of_encrypted_private_key_matches_openssl(tmp_path, capsys, key_of, kind):
    path = tmp_path / "key.pem"
    path.write_bytes(
        key_of(kind).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE),
        )
    )
    passphrase_file = tmp_path / "pw"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    expected = openssl(
        f"openssl pkey -in {shlex.quote(str(path))} -passin file:{shlex.quote(str(passphrase_file))}"
        f" -pubout -outform der | {TAIL}"
    )
    assert trustfleet_pin(capsys, path, "--passphrase-file", passphrase_file) == expected


def test_pin_library_value_matches_cli_output(tmp_path, capsys, key_of):
    cert = make_cert("library", key_of("p256"))
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert trustfleet_pin(capsys, path) == (x509util.pin_b64(cert) + "\n").encode()


def test_pin_output_from_a_real_process_is_byte_identical(tmp_path, key_of):
    path = tmp_path / "cert.pem"
    path.write_bytes(
        make_cert("process", key_of("rsa2048")).public_bytes(serialization.Encoding.PEM)
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "device"), str(REPO / "server")]))
    result = subprocess.run(
        [sys.executable, "-m", "trustfleet_server.cli", "pin", str(path)],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert result.stderr == b""
    assert result.stdout == openssl_cert_pin(path)


# --------------------------------------------------------------------------- chains


@pytest.fixture
def chain(tmp_path, key_of):
    """leaf (P-256) <- intermediate (P-384) <- root (RSA 2048), written leaf first."""
    root = make_cert("Test Root R1", key_of("rsa2048"))
    intermediate = make_cert("Test Issuing E2", key_of("p384"), "Test Root R1", key_of("rsa2048"))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("device.example", leaf_key, "Test Issuing E2", key_of("p384"), ca=False)
    certs = [leaf, intermediate, root]
    path = tmp_path / "fullchain.pem"
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    singles = []
    for index, cert in enumerate(certs):
        single = tmp_path / f"single-{index}.pem"
        single.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        singles.append(single)
    return path, certs, singles


def test_pin_of_chain_prints_one_openssl_pin_per_certificate_with_its_cn(capsys, chain):
    path, _, singles = chain
    cns = ["device.example", "Test Issuing E2", "Test Root R1"]
    expected = b"".join(
        openssl_cert_pin(single).rstrip(b"\n") + b"  " + cn.encode() + b"\n"
        for single, cn in zip(singles, cns, strict=True)
    )
    assert trustfleet_pin(capsys, path) == expected


def test_pin_json_of_chain_lists_subject_issuer_expiry_and_pin(capsys, chain):
    path, certs, singles = chain
    records = json.loads(trustfleet_pin(capsys, path, "--json"))["certificates"]
    assert [r["pin_sha256"] + "\n" for r in records] == [
        openssl_cert_pin(s).decode() for s in singles
    ]
    assert records[0]["subject"] == "CN=device.example,O=Trustfleet Test"
    assert records[0]["issuer"] == "CN=Test Issuing E2,O=Trustfleet Test"
    assert records[2]["subject"] == records[2]["issuer"]
    assert {r["not_after"] for r in records} == {"2034-12-30T00:00:00Z"}


def test_pin_all_lists_a_single_certificate_with_its_label(tmp_path, capsys, key_of):
    path = tmp_path / "cert.pem"
    path.write_bytes(
        make_cert("Only Root", key_of("p256")).public_bytes(serialization.Encoding.PEM)
    )
    expected = openssl_cert_pin(path).rstrip(b"\n") + b"  Only Root\n"
    assert trustfleet_pin(capsys, path, "--all") == expected


def test_pin_of_certificate_directory_lists_files_in_name_order(tmp_path, capsys, key_of):
    directory = tmp_path / "roots"
    directory.mkdir()
    for name, kind in (("b.crt", "p384"), ("a.pem", "p256"), ("c.der", "rsa2048")):
        cert = make_cert(name, key_of(kind))
        encoding = (
            serialization.Encoding.DER if name.endswith(".der") else serialization.Encoding.PEM
        )
        (directory / name).write_bytes(cert.public_bytes(encoding))
    (directory / "README.txt").write_text("not a certificate")
    lines = trustfleet_pin(capsys, directory).decode().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == ["a.pem", "b.crt", "c.der"]
    assert lines[2].split("  ")[0].encode() + b"\n" == openssl_cert_pin(
        directory / "c.der", der=True
    )


def test_subject_with_newline_cannot_forge_an_extra_output_line(tmp_path, capsys, key_of):
    path = tmp_path / "evil.pem"
    evil = make_cert("evil\nAAAA=  Trusted Root", key_of("p256"))
    other = make_cert("other", key_of("p384"))
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (evil, other)))
    lines = trustfleet_pin(capsys, path).decode().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("evil\\nAAAA=  Trusted Root")
