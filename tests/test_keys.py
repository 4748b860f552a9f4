"""Operator signing keys: file permissions, encryption, kid and signatures.

The CLI is driven in-process through `trustfleet_server.cli.main`, and once
as a real subprocess to prove that a refusal reaches stderr as one line with
no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from trustfleet_server import cli, keys
from trustfleet_server.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(autouse=True)
def no_ambient_passphrase(monkeypatch):
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)


@pytest.fixture
def passphrase_file(tmp_path):
    path = tmp_path / "passphrase"
    path.write_bytes(PASSPHRASE + b"\n")
    return path


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def spki_sha256_hex(public_pem: bytes) -> str:
    public = serialization.load_pem_public_key(public_pem)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def verify_raw(public_key, raw: bytes, message: bytes) -> None:
    r = int.from_bytes(raw[:32], "big")
    s = int.from_bytes(raw[32:], "big")
    public_key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))


# --------------------------------------------------------------------------- files


def test_generated_private_key_is_owner_only_and_public_key_world_readable(tmp_path, capsys):
    out = tmp_path / "signer.pem"
    rc, _, _ = run_cli(capsys, "key", "generate", "--out", out)
    assert rc == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "signer.pub.pem").stat().st_mode) == 0o644


def test_private_key_is_owner_only_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        keys.write_private_key(tmp_path / "k.pem", keys.generate_key())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_private_key_file_is_unencrypted_pkcs8_without_passphrase(tmp_path, capsys):
    out = tmp_path / "k.pem"
    run_cli(capsys, "key", "generate", "--out", out)
    assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")


def test_private_key_file_is_encrypted_pkcs8_with_passphrase(tmp_path, capsys, passphrase_file):
    out = tmp_path / "k.pem"
    run_cli(capsys, "key", "generate", "--out", out, "--passphrase-file", passphrase_file)
    assert out.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(out.read_bytes(), password=PASSPHRASE)
    assert isinstance(key.curve, ec.SECP256R1)


def test_passphrase_from_environment_encrypts_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE.decode())
    out = tmp_path / "k.pem"
    run_cli(capsys, "key", "generate", "--out", out)
    assert out.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keys.load_private_key(out, PASSPHRASE)


def test_generate_refuses_to_overwrite_existing_private_key(tmp_path, capsys):
    out = tmp_path / "k.pem"
    out.write_bytes(b"precious")
    rc, stdout, err = run_cli(capsys, "key", "generate", "--out", out)
    assert rc == 2
    assert stdout == ""
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == b"precious"
    assert not (tmp_path / "k.pub.pem").exists()


def test_generate_refuses_when_only_the_public_key_exists(tmp_path, capsys):
    (tmp_path / "k.pub.pem").write_bytes(b"precious")
    rc, _, err = run_cli(capsys, "key", "generate", "--out", tmp_path / "k.pem")
    assert rc == 2
    assert "k.pub.pem: already exists" in err
    assert not (tmp_path / "k.pem").exists()


def test_write_private_key_refuses_existing_file_without_overwrite(tmp_path):
    path = tmp_path / "k.pem"
    path.write_bytes(b"precious")
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.write_private_key(path, keys.generate_key())
    assert path.read_bytes() == b"precious"


def test_force_replaces_key_with_a_fresh_owner_only_file(tmp_path, capsys):
    out = tmp_path / "k.pem"
    out.write_bytes(b"old")
    out.chmod(0o644)
    rc, stdout, _ = run_cli(capsys, "key", "generate", "--out", out, "--force")
    assert rc == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert keys.kid_hex(keys.load_private_key(out)) == stdout.strip()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_generate_rejects_public_key_path_equal_to_private_key_path(tmp_path, capsys):
    out = tmp_path / "k.pem"
    rc, _, err = run_cli(capsys, "key", "generate", "--out", out, "--public-out", out)
    assert rc == 2
    assert "public key" in err
    assert not out.exists()


# --------------------------------------------------------------------------- kid


def test_printed_kid_is_sha256_of_spki_der(tmp_path, capsys):
    out = tmp_path / "k.pem"
    rc, stdout, _ = run_cli(capsys, "key", "generate", "--out", out)
    assert rc == 0
    expected = spki_sha256_hex((tmp_path / "k.pub.pem").read_bytes())
    assert stdout == expected + "\n"
    assert keys.kid_of(keys.load_public_key(tmp_path / "k.pub.pem")) == bytes.fromhex(expected)


def test_json_output_names_kid_and_both_files(tmp_path, capsys):
    out = tmp_path / "k.pem"
    pub = tmp_path / "elsewhere.pem"
    rc, stdout, _ = run_cli(capsys, "key", "generate", "--out", out, "--public-out", pub, "--json")
    assert rc == 0
    report = json.loads(stdout)
    assert report == {
        "kid": spki_sha256_hex(pub.read_bytes()),
        "private_key": str(out),
        "public_key": str(pub),
    }


def test_key_show_reports_kid_curve_and_encryption(tmp_path, capsys, passphrase_file):
    out = tmp_path / "k.pem"
    _, kid, _ = run_cli(
        capsys, "key", "generate", "--out", out, "--passphrase-file", passphrase_file
    )
    kid = kid.strip()

    rc, stdout, _ = run_cli(
        capsys, "key", "show", out, "--json", "--passphrase-file", passphrase_file
    )
    assert rc == 0
    assert json.loads(stdout) == {
        "path": str(out),
        "kid": kid,
        "curve": "P-256",
        "kind": "private key",
        "encrypted": True,
    }

    rc, stdout, _ = run_cli(capsys, "key", "show", tmp_path / "k.pub.pem")
    assert rc == 0
    assert stdout.splitlines() == [
        f"kid: {kid}",
        "curve: P-256",
        "kind: public key",
        "encrypted: no",
    ]


def test_key_show_of_locked_key_reports_encrypted_without_kid(tmp_path, capsys, passphrase_file):
    out = tmp_path / "k.pem"
    run_cli(capsys, "key", "generate", "--out", out, "--passphrase-file", passphrase_file)
    rc, stdout, _ = run_cli(capsys, "key", "show", out, "--json")
    assert rc == 0
    report = json.loads(stdout)
    assert report["encrypted"] is True and report["kid"] is None


# --------------------------------------------------------------------------- refusals


def test_encrypted_key_without_passphrase_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "k.pem"
    keys.write_private_key(path, keys.generate_key(), PASSPHRASE)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(path)
    assert str(info.value) == (
        f"{path}: encrypted key needs a passphrase (--passphrase-file or TRUSTFLEET_PASSPHRASE)"
    )
    assert isinstance(info.value, UsageError)


def test_wrong_passphrase_is_refused_with_typed_error(tmp_path):
    path = tmp_path / "k.pem"
    keys.write_private_key(path, keys.generate_key(), PASSPHRASE)
    with pytest.raises(keys.KeyFileError, match="wrong passphrase"):
        keys.load_private_key(path, b"not it")


def test_cli_wrong_passphrase_exits_2_with_one_line_message(tmp_path, capsys, passphrase_file):
    out = tmp_path / "k.pem"
    run_cli(capsys, "key", "generate", "--out", out, "--passphrase-file", passphrase_file)
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    rc, stdout, err = run_cli(capsys, "key", "show", out, "--passphrase-file", wrong)
    assert rc == 2
    assert stdout == ""
    assert err.count("\n") == 1
    assert err.startswith("trustfleet: error: ") and "wrong passphrase" in err
    assert "Traceback" not in err
    assert PASSPHRASE.decode() not in err and "guess" not in err


def test_subprocess_refusal_prints_one_line_and_no_traceback(tmp_path, passphrase_file):
    key_path = tmp_path / "k.pem"
    keys.write_private_key(key_path, keys.generate_key(), PASSPHRASE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "device"), str(REPO / "server")]))
    env.pop(keys.PASSPHRASE_ENV, None)
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trustfleet_server.cli",
            "pin",
            str(key_path),
            "--passphrase-file",
            str(wrong),
        ],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.count(b"\n") == 1
    assert b"Traceback" not in result.stderr
    assert b"wrong passphrase" in result.stderr


def test_rsa_key_is_refused_naming_the_algorithm(tmp_path):
    path = tmp_path / "rsa.pem"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(path)
    assert str(info.value) == f"{path}: expected an EC P-256 key, found RSA 2048"


def test_p384_public_key_is_refused_naming_the_curve(tmp_path):
    path = tmp_path / "p384.pub.pem"
    path.write_bytes(keys.public_key_pem(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(keys.KeyFileError, match="expected an EC P-256 key, found EC P-384"):
        keys.load_public_key(path)


def test_public_key_file_is_not_accepted_as_private_key(tmp_path):
    path = tmp_path / "k.pub.pem"
    keys.write_public_key(path, keys.generate_key())
    with pytest.raises(keys.KeyFileError, match="expected a private key, found a public key"):
        keys.load_private_key(path)


def test_garbage_file_is_refused_as_no_key(tmp_path):
    path = tmp_path / "junk.pem"
    path.write_bytes(b"\x00\x01 definitely not a key")
    with pytest.raises(keys.KeyFileError, match="junk.pem"):
        keys.load_public_key(path)


# --------------------------------------------------------------------------- loading


def test_public_key_loads_from_public_private_der_and_certificate_files(tmp_path):
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = keys.generate_key()
    kid = keys.kid_of(key)
    keys.write_private_key(tmp_path / "priv.pem", key, PASSPHRASE)
    keys.write_public_key(tmp_path / "pub.pem", key)
    (tmp_path / "pub.der").write_bytes(keys.spki_der(key))
    (tmp_path / "priv.der").write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    assert keys.kid_of(keys.load_public_key(tmp_path / "priv.pem", PASSPHRASE)) == kid
    for name in ("pub.pem", "pub.der", "priv.der", "cert.pem"):
        assert keys.kid_of(keys.load_public_key(tmp_path / name)) == kid, name
    assert keys.kid_of(keys.load_private_key(tmp_path / "priv.der")) == kid


def test_passphrase_file_uses_first_line_without_line_ending(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret\r\nsecond line\n")
    assert keys.read_passphrase(str(path), confirm=False) == b"s3cret"


def test_passphrase_file_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "from-env")
    path = tmp_path / "pw"
    path.write_bytes(b"from-file")
    assert keys.read_passphrase(str(path), confirm=False) == b"from-file"
    assert keys.read_passphrase(None, confirm=False) == b"from-env"


def test_no_passphrase_source_gives_none():
    assert keys.read_passphrase(None, confirm=True) is None


def test_empty_passphrase_file_is_refused(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"\nsecond")
    with pytest.raises(keys.KeyFileError, match="empty"):
        keys.read_passphrase(str(path), confirm=False)


def test_prompted_passphrases_must_match(monkeypatch):
    answers = iter(["one", "two"])
    monkeypatch.setattr(keys.getpass, "getpass", lambda prompt="": next(answers))
    monkeypatch.setattr(keys, "_has_terminal", lambda: True)
    with pytest.raises(UsageError, match="do not match"):
        keys.read_passphrase(None, confirm=True, ask=True)


# --------------------------------------------------------------------------- signing


def test_signature_is_raw_64_bytes_and_verifies():
    key = keys.generate_key()
    message = b"trust bundle v7"
    raw = keys.sign(key, message)
    assert len(raw) == 64
    verify_raw(key.public_key(), raw, message)


def test_signature_over_digest_verifies_as_prehashed():
    key = keys.generate_key()
    digest = hashlib.sha256(b"payload").digest()
    raw = keys.sign_digest(key, digest)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    key.public_key().verify(
        encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256()))
    )


def test_signing_a_digest_of_wrong_length_is_a_caller_error():
    with pytest.raises(ValueError, match="32 bytes"):
        keys.sign_digest(keys.generate_key(), b"\x00" * 31)


def test_signing_with_a_non_p256_key_is_a_caller_error():
    with pytest.raises(ValueError, match="P-256"):
        keys.sign(ec.generate_private_key(ec.SECP384R1()), b"m")


def test_generate_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["key", "generate", "--help"])
    assert info.value.code == 0
    assert "trustfleet key generate --out" in capsys.readouterr().out
