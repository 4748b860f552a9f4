"""`trustfleet pin --connect`: pin what a live TLS server actually sends.

Real TLS servers run on loopback with certificates made here: a private
chain (root, issuing CA, leaf for a.test) and a chain whose root stands in
for a public (Mozilla) root, passed with --public-roots (leaf for b.test,
sent with its intermediate but without the root, as real servers do). SNI
picks the chain. Another server accepts and closes during the handshake.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustfleet_server import cli, x509util
from trustfleet_server.demo.tlsserver import (
    LoopbackTLSServer,
    close_during_handshake,
    server_context,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'device'}{os.pathsep}{REPO / 'server'}"}
START = datetime(2026, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pin Connect Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(cn, key, issuer=None, issuer_key=None, *, ca=True, dns=None, days=3650):
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn))
               .issuer_name(issuer.subject if issuer is not None else _name(cn))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(START - timedelta(days=1))
               .not_valid_after(START + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]),
                                        critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(*certs) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def make_chain(prefix: str, dns: str):
    root_key, ca_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = make_cert(f"{prefix} Root", root_key)
    ca = make_cert(f"{prefix} Issuing CA", ca_key, root, root_key, days=1825)
    leaf = make_cert(dns, leaf_key, ca, ca_key, ca=False, dns=dns, days=90)
    return SimpleNamespace(root=root, ca=ca, leaf=leaf, leaf_key=leaf_key)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    private = make_chain("Acme Private", "a.test")
    public = make_chain("Stand-in Public", "b.test")
    roots = tmp / "public-roots.pem"
    roots.write_bytes(pem(public.root))
    return SimpleNamespace(tmp=tmp, private=private, public=public, roots=roots)


@pytest.fixture(scope="module")
def tls_server(pki):
    """A TLS server: the private chain (leaf, CA, root) by default; for SNI b.test the
    public stand-in chain (leaf and intermediate only)."""
    private = server_context(pem(pki.private.leaf, pki.private.ca, pki.private.root),
                             key_pem(pki.private.leaf_key))
    public = server_context(pem(pki.public.leaf, pki.public.ca), key_pem(pki.public.leaf_key))

    def pick(sslsock, server_name, _context):
        if server_name == "b.test":
            sslsock.context = public

    private.sni_callback = pick
    with LoopbackTLSServer(context=private) as server:  # handshake, then until the client closes
        yield server


@pytest.fixture
def closing_server():
    """Accepts, reads the ClientHello, and closes without answering."""
    with LoopbackTLSServer(on_connection=close_during_handshake) as server:
        yield server


def pin(capsys, *argv, code=0):
    rc = cli.main(["pin", *map(str, argv)])
    out = capsys.readouterr()
    assert rc == code, out.err
    return out


def connect_json(capsys, server, *extra):
    out = pin(capsys, "--connect", f"127.0.0.1:{server.port}", "--json", *extra)
    return json.loads(out.out)


# --------------------------------------------------------------------------- chain listing


def test_connect_lists_every_certificate_the_server_sends_in_order(capsys, pki, tls_server):
    report = connect_json(capsys, tls_server, "--public-roots", pki.roots)
    sent = [pki.private.leaf, pki.private.ca, pki.private.root]
    certs = report["certificates"]
    assert [c["pin_sha256"] for c in certs] == [x509util.pin_b64(c) for c in sent]
    assert [c["subject"] for c in certs] == [c.subject.rfc4514_string() for c in sent]
    assert [c["issuer"] for c in certs] == [c.issuer.rfc4514_string() for c in sent]
    assert certs[0]["not_after"] == "2026-04-01T00:00:00Z"
    assert [c["kind"] for c in certs] == ["leaf", "ca", "root"]
    assert [c["position"] for c in certs] == [0, 1, 2]


def test_connect_says_nothing_was_validated(capsys, pki, tls_server):
    report = connect_json(capsys, tls_server, "--public-roots", pki.roots)
    assert report["validated"] is False and "NOT VALIDATED" in report["note"]
    assert report["connect"] == f"127.0.0.1:{tls_server.port}"
    assert report["tls_version"].startswith("TLSv1.")
    text = pin(capsys, "--connect", f"127.0.0.1:{tls_server.port}",
               "--public-roots", pki.roots).out
    assert text.splitlines()[1].startswith("# NOT VALIDATED")


def test_text_listing_shows_subject_issuer_expiry_and_pin_of_each(capsys, pki, tls_server):
    lines = pin(capsys, "--connect", f"127.0.0.1:{tls_server.port}",
                "--public-roots", pki.roots).out.splitlines()
    assert lines[0].startswith(f"# 127.0.0.1:{tls_server.port} (no SNI, TLSv1.")
    assert "sent 3 certificate(s)" in lines[0]
    assert lines[2].startswith("[0] leaf: yours")
    assert lines[3] == f"    subject  {pki.private.leaf.subject.rfc4514_string()}"
    assert lines[4] == f"    issuer   {pki.private.ca.subject.rfc4514_string()}"
    assert lines[5].startswith("    expires  2026-04-01T00:00:00Z")
    assert lines[6] == f"    pin      {x509util.pin_b64(pki.private.leaf)}"


# --------------------------------------------------------------------------- yours / public


def test_private_chain_is_all_yours(capsys, pki, tls_server):
    report = connect_json(capsys, tls_server, "--public-roots", pki.roots)
    assert [c["owner"] for c in report["certificates"]] == ["yours", "yours", "yours"]
    assert "self-signed" in report["certificates"][2]["why"]


def test_ca_chaining_to_a_public_root_is_public_and_the_leaf_key_is_yours(capsys, pki, tls_server):
    report = connect_json(capsys, tls_server, "--servername", "b.test",
                          "--public-roots", pki.roots)
    certs = report["certificates"]
    assert [c["pin_sha256"] for c in certs] == [x509util.pin_b64(pki.public.leaf),
                                               x509util.pin_b64(pki.public.ca)]
    # The root was not sent: the intermediate reaches it by name and signature.
    assert [c["owner"] for c in certs] == ["yours", "public"]
    assert certs[1]["why"] == "CA certificate chaining to a public root"
    text = pin(capsys, "--connect", f"127.0.0.1:{tls_server.port}", "--servername", "b.test",
               "--public-roots", pki.roots).out
    assert "[1] ca: public CA infrastructure: not yours, do not pin" in text


def test_public_marking_defaults_to_certifi_roots(capsys, tls_server):
    # The stand-in root is not a Mozilla root, so against certifi nothing is public.
    report = connect_json(capsys, tls_server, "--servername", "b.test")
    assert [c["owner"] for c in report["certificates"]] == ["yours", "yours"]


def test_a_public_root_in_a_chain_file_is_public(capsys, pki, tmp_path):
    path = tmp_path / "fullchain.pem"
    path.write_bytes(pem(pki.public.leaf, pki.public.ca, pki.public.root))
    records = json.loads(pin(capsys, path, "--json", "--public-roots", pki.roots).out)["certificates"]
    assert [(r["kind"], r["owner"]) for r in records] == [
        ("leaf", "yours"), ("ca", "public"), ("root", "public")]
    assert records[2]["why"] == "a public (Mozilla) root's key"


def test_a_forged_issuer_name_does_not_make_a_certificate_public(capsys, pki, tmp_path):
    # Same issuer name as the public intermediate, signed by another key.
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    impostor = make_cert("Stand-in Public Issuing CA", impostor_key)
    impostor = make_cert("Forged CA", ec.generate_private_key(ec.SECP256R1()), impostor,
                         impostor_key)
    path = tmp_path / "forged.pem"
    path.write_bytes(pem(impostor, pki.public.ca))
    records = json.loads(pin(capsys, path, "--json", "--public-roots", pki.roots).out)["certificates"]
    assert [r["owner"] for r in records] == ["yours", "public"]


def test_long_listing_of_a_chain_file_keeps_plain_output_without_it(capsys, pki, tmp_path):
    path = tmp_path / "fullchain.pem"
    path.write_bytes(pem(pki.private.leaf, pki.private.ca))
    plain = pin(capsys, path).out.splitlines()
    assert plain == [f"{x509util.pin_b64(pki.private.leaf)}  a.test",
                     f"{x509util.pin_b64(pki.private.ca)}  Acme Private Issuing CA"]
    long = pin(capsys, path, "--long").out
    assert "[0] leaf: yours" in long and "[1] ca: yours" in long and "NOT VALIDATED" not in long


# --------------------------------------------------------------------------- SNI


def test_servername_selects_the_chain_the_server_sends_for_that_name(capsys, pki, tls_server):
    default = connect_json(capsys, tls_server)
    named = connect_json(capsys, tls_server, "--servername", "b.test")
    assert default["servername"] is None  # an IP address is never sent as SNI
    assert named["servername"] == "b.test"
    assert default["certificates"][0]["subject"] == pki.private.leaf.subject.rfc4514_string()
    assert named["certificates"][0]["subject"] == pki.public.leaf.subject.rfc4514_string()


def test_hostname_is_sent_as_sni_by_default(capsys, pki, tls_server):
    report = json.loads(pin(capsys, "--connect", f"localhost:{tls_server.port}", "--json").out)
    assert report["servername"] == "localhost"
    assert report["connect"] == f"localhost:{tls_server.port}"


# --------------------------------------------------------------------------- errors


def test_server_closing_during_handshake_is_a_clear_error_exit_2(closing_server):
    proc = subprocess.run(
        [sys.executable, "-m", "trustfleet_server.cli", "pin", "--connect",
         f"127.0.0.1:{closing_server.port}", "--timeout", "5"],
        env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"trustfleet: error: 127.0.0.1:{closing_server.port}: the server closed the connection "
        "during the TLS handshake (not a TLS server on that port, or it refused the SNI name or "
        "our TLS versions)"]


def test_refused_connection_is_an_error_exit_2(capsys):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    err = pin(capsys, "--connect", f"127.0.0.1:{port}", code=2).err
    assert err.strip() == f"trustfleet: error: 127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize("argv, message", [
    (["x.pem", "--connect", "127.0.0.1:1"], "not both"),
    ([], "give a certificate or key file, or --connect HOST:PORT"),
    (["x.pem", "--servername", "a.test"], "--servername only applies with --connect"),
    (["--connect", "127.0.0.1:0"], "port from 1 to 65535"),
    (["--connect", "[::1"], "expected HOST:PORT or [IPv6]:PORT"),
])
def test_bad_pin_arguments_are_usage_errors(capsys, argv, message):
    assert message in pin(capsys, *argv, code=2).err
