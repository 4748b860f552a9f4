"""The console's front door: operator tokens, the address rule, TLS, and serve's --http flags.

What the pages show is tests/test_console_app.py and tests/test_console_browser.py; here is who
may reach them and how they are served: a token file read strictly, a non-loopback address
refused without TLS or --http-public, a taken port refused before serve connects anywhere, and
the console answering over real TLS.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization

from support import pki
from support.clirun import run_trustfleet
from trustfleet_server import console
from trustfleet_server.console import web
from trustfleet_server.errors import UsageError
from trustfleet_server.fleet import db as fleetdb

TOKEN = "k3y-for-the-console-tests-0123"


def token_file(tmp_path, text: str, mode: int = 0o600):
    p = tmp_path / "ops.tokens"
    p.write_text(text)
    os.chmod(p, mode)
    return p


# --------------------------------------------------------------------------- tokens


def test_token_file_names_operators_and_a_bare_token_is_the_operator(tmp_path):
    p = token_file(tmp_path, f"# on-call\nalice:{TOKEN}\n\n{TOKEN[::-1]}\n")
    tokens = console.load_tokens(p)
    assert tokens == {"alice": TOKEN, "operator": TOKEN[::-1]}
    s = console.ConsoleSettings("fleet.db", "acme", tokens)
    assert s.operator(TOKEN) == "alice"
    assert s.operator(TOKEN[::-1]) == "operator"
    assert s.operator(TOKEN[:-1]) is None
    assert s.operator(TOKEN + "x") is None
    assert s.operator("") is None and s.operator(None) is None
    assert console.ConsoleSettings("fleet.db", "acme").operator(TOKEN) is None  # no tokens: nobody


@pytest.mark.parametrize(("text", "mode", "says"), [
    (f"alice:{TOKEN}\n", 0o640, "readable by others"),
    (f"alice:{TOKEN}\n", 0o604, "chmod 600"),
    ("alice:short\n", 0o600, "shorter than 16"),
    (f"alice:{TOKEN}\nalice:{TOKEN}x\n", 0o600, "listed twice"),
    (f"alice:{TOKEN}\nbob:{TOKEN}\n", 0o600, "two operators"),
    ("# nothing\n\n", 0o600, "holds no token"),
    (f":{TOKEN}\n", 0o600, "operator name"),
    (f"prom:{TOKEN} readonly\n", 0o600, "only 'read-only' may follow"),
])
def test_token_file_problems_are_one_line(tmp_path, text, mode, says):
    with pytest.raises(UsageError) as e:
        console.load_tokens(token_file(tmp_path, text, mode))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_read_only_token_is_named_apart(tmp_path):
    p = token_file(tmp_path, f"alice:{TOKEN}\nprometheus:{TOKEN[::-1]} read-only\n")
    assert console.load_tokens(p) == {"alice": TOKEN, "prometheus": TOKEN[::-1]}
    assert console.read_token_file(p) == {"alice": (TOKEN, False), "prometheus": (TOKEN[::-1], True)}


def test_missing_token_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        console.load_tokens(tmp_path / "none")


def test_console_state_shows_fail_open_unless_offline():
    assert console.console_state("ok", '["api.example.com"]') == "fail-open"
    assert console.console_state("stale", ["api.example.com"]) == "fail-open"
    assert console.console_state("ok", "[]") == "ok"
    assert console.console_state("offline", '["api.example.com"]') == "offline"
    assert set(console.STATES) >= {"ok", "trial", "behind", "stale", "fail-open", "no-store", "offline"}


# --------------------------------------------------------------------------- the address rule


@pytest.mark.parametrize(("text", "host", "port", "loopback"), [
    ("8080", "127.0.0.1", 8080, True),
    ("127.0.0.1:0", "127.0.0.1", 0, True),
    ("localhost:8080", "localhost", 8080, True),
    ("[::1]:8443", "::1", 8443, True),
    ("0.0.0.0:8443", "0.0.0.0", 8443, False),
    ("192.0.2.7:80", "192.0.2.7", 80, False),
    ("console.example:443", "console.example", 443, False),
])
def test_parse_bind(text, host, port, loopback):
    b = web.parse_bind(text)
    assert (b.host, b.port, b.loopback) == (host, port, loopback)


@pytest.mark.parametrize("text", ["", ":8080", "127.0.0.1:http", "127.0.0.1:70000", "::1:8080",
                                  "[::1]8080"])
def test_parse_bind_refuses(text):
    with pytest.raises(UsageError):
        web.parse_bind(text)


def test_exposure_rule():
    tokens = {"alice": TOKEN}
    web.check_exposure(web.parse_bind("127.0.0.1:8080"), tls=False, public=False, tokens={})
    with pytest.raises(UsageError, match="TLS"):
        web.check_exposure(web.parse_bind("0.0.0.0:8080"), tls=False, public=False, tokens=tokens)
    with pytest.raises(UsageError, match="--token-file"):
        web.check_exposure(web.parse_bind("0.0.0.0:8080"), tls=True, public=False, tokens={})
    web.check_exposure(web.parse_bind("0.0.0.0:8080"), tls=True, public=False, tokens=tokens)
    web.check_exposure(web.parse_bind("0.0.0.0:8080"), tls=False, public=True, tokens=tokens)


def test_tls_files_are_checked(tmp_path):
    with pytest.raises(UsageError, match="go together"):
        web.tls_context(str(tmp_path / "c.pem"), None)
    with pytest.raises(UsageError, match="no such file"):
        web.tls_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    (tmp_path / "c.pem").write_text("not a certificate\n")
    (tmp_path / "k.pem").write_text("not a key\n")
    with pytest.raises(UsageError, match="cannot load"):
        web.tls_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))


def test_a_taken_port_is_one_clear_error(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port}: cannot listen"):
            web.ConsoleServer(console.ConsoleSettings(str(tmp_path / "f.db"), "acme"),
                              web.parse_bind(f"127.0.0.1:{port}"))
    finally:
        holder.close()


# --------------------------------------------------------------------------- serving


def fetch(url: str, context: ssl.SSLContext | None = None, token: str | None = None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10, context=context) as r:
        return r.status, r.headers, r.read()


def test_console_over_real_tls_needs_the_token_off_loopback(tmp_path):
    """Bound off loopback (0.0.0.0) with a certificate: served over TLS 1.2+, checked against its CA,
    and reading needs the operator token."""
    p = pki.pki("ec")
    now = int(time.time())
    leaf = p.leaf(sans=("localhost",), not_before=now - 3600, not_after=now + 86_400)
    cert, key = tmp_path / "console.pem", tmp_path / "console.key"
    cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, p.inter)))
    key.write_bytes(p.leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    with fleetdb.open_db(tmp_path / "fleet.db"):
        pass
    settings = console.ConsoleSettings(str(tmp_path / "fleet.db"), "acme", {"alice": TOKEN},
                                       public=True, tls=True)
    with web.ConsoleServer(settings, web.parse_bind("0.0.0.0:0"), str(cert), str(key)) as srv:
        assert srv.url.startswith("https://")
        url = f"https://localhost:{srv.port}/api/overview"
        ca = ssl.create_default_context(cadata=p.root.public_bytes(serialization.Encoding.PEM).decode())
        with pytest.raises(urllib.error.URLError) as e:  # the system's CAs do not know it
            fetch(url, ssl.create_default_context())
        assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
        with pytest.raises(urllib.error.HTTPError) as e:
            fetch(url, ca)
        assert e.value.code == 401
        status, _, body = fetch(url, ca, TOKEN)
        assert status == 200 and json.loads(body)["fleet"] == "acme"
        plain = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        try:  # plain HTTP on the TLS port gets no page
            plain.sendall(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert b"acme" not in plain.recv(4096)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            plain.close()


def test_console_stops_with_its_server(tmp_path):
    with fleetdb.open_db(tmp_path / "fleet.db"):
        pass
    srv = web.ConsoleServer(console.ConsoleSettings(str(tmp_path / "fleet.db"), "acme"),
                            web.parse_bind("127.0.0.1:0")).start()
    status, headers, _ = fetch(srv.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
    srv.stop()  # twice is fine


# --------------------------------------------------------------------------- serve's flags


@pytest.mark.parametrize(("extra", "says"), [
    (["--http", "0.0.0.0:0"], "not a loopback address"),
    (["--http", "0.0.0.0:0", "--http-public"], "needs an operator token"),
    (["--token-file", "ops.tokens"], "--token-file needs --http"),
    (["--http", "127.0.0.1:http"], "the port must be a number"),
    (["--http", "127.0.0.1:0", "--token-file", "missing.tokens"], "no such file"),
    (["--http", "127.0.0.1:0", "--http-cert", "c.pem"], "go together"),
])
def test_serve_refuses_a_bad_console_before_connecting(tmp_path, extra, says):
    """Checked before serve opens the store or connects: nothing is created, one line, exit 2."""
    token_file(tmp_path, f"alice:{TOKEN}\n")
    proc = run_trustfleet(tmp_path, "serve", "--broker", "mqtt://127.0.0.1:1", "--fleet", "acme",
                          "--root", "root.cose", "--db", "fleet.db", *extra, code=2)
    assert says in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "fleet.db").exists()
