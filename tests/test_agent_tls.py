"""The Raspberry Pi agent's TLS side against real TLS servers on loopback.

Each server is a trustfleet_server.demo.tlsserver.LoopbackTLSServer (a thread
on 127.0.0.1, port 0) serving certificates made by tests/support/tlsagent.py
(valid around the real current time, so OpenSSL and the device agree). Bundles are real signed documents
(fleetkit.Repo) installed into a LocalDevice in a temporary directory;
applications connect through tls.context_for(device). Clocks are fake
where a test moves time (pin expiry, a Pi clock reset to 2000).
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import ssl
import time
from pathlib import Path

import pytest

from support import fleetkit as fk
from support.pki import der, pin
from support.tlsagent import (
    DAY,
    HOST,
    OTHER,
    PKI,
    ROGUE,
    T0,
    agent,
    make_bundle,
    tls_server,
)
from trustfleet_device.agent import Config
from trustfleet_pi import tls
from trustfleet_pi.local import LocalDevice

# --------------------------------------------------------------------------- servers


@pytest.fixture
def server():
    with tls_server(PKI) as s:
        yield s


# --------------------------------------------------------------------------- devices


class Clock:
    def __init__(self, t: int = T0):
        self.t = t

    def __call__(self) -> int:
        return self.t


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    return fk.Repo(now=T0)


def new_device(repo: fk.Repo, state: Path, health=None, clock=None) -> LocalDevice:
    cfg = Config(fleet=repo.fleet)
    if not (state / "root.cose").exists():
        LocalDevice.initialise(state, repo.root_raw, cfg)
    kw = {} if health is None else {"health_check": health}
    return LocalDevice(state, cfg, clock=clock or Clock(), **kw)


def installed(repo: fk.Repo, state: Path, raw: bytes, clock=None) -> LocalDevice:
    device = new_device(repo, state, clock=clock)
    result = device.install(raw)
    assert result.committed is not None, result.reason()
    return device


def connect(ctx: ssl.SSLContext, port: int, name: str = HOST) -> tuple[object, bytes]:
    """A TLS connection to the loopback server as `name`, one HTTP request; (decision, reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return s.trust_decision, reply


def refused(ctx: ssl.SSLContext, port: int, name: str = HOST) -> tls.TrustVerificationError:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        connect(ctx, port, name)
    assert isinstance(info.value, tls.TrustVerificationError)
    return info.value


# --------------------------------------------------------------------------- pins


@pytest.mark.parametrize("form", ["compact", "full"])
def test_accepts_a_server_whose_chain_matches_a_pin(repo, server, tmp_path, form):
    device = installed(repo, tmp_path / "state", make_bundle(repo, form=form))
    ctx = tls.context_for(device)
    decision, reply = connect(ctx, server.port)
    assert (decision.verdict, decision.result) == ("accept", "pin-match")
    assert reply.endswith(b"hello")
    # Compact anchors cannot be given to OpenSSL; whole certificates are, as a second validator.
    assert ctx.openssl_verifies is (form == "full")
    assert ctx.verify_mode == (ssl.CERT_REQUIRED if form == "full" else ssl.CERT_NONE)
    assert len(ctx.reports) == 0


def test_http_client_connections_go_through_the_store(repo, server, tmp_path):
    device = installed(repo, tmp_path / "state", make_bundle(repo, form="full"))
    ctx = tls.context_for(device)
    conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/")
        assert conn.sock.trust_decision.result == "pin-match"
        assert conn.getresponse().read() == b"hello"
    finally:
        conn.close()
    device2 = installed(repo, tmp_path / "state2", make_bundle(repo, pins=OTHER.pins()))
    conn = http.client.HTTPSConnection("localhost", server.port, context=tls.context_for(device2),
                                       timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError, match="no key matches the pins"):
        conn.request("GET", "/")
    conn.close()


@pytest.mark.parametrize("form", ["compact", "full"])
def test_refuses_a_server_when_no_key_matches_the_pins(repo, server, tmp_path, form):
    device = installed(repo, tmp_path / "state", make_bundle(repo, form=form, pins=OTHER.pins()))
    ctx = tls.context_for(device)
    exc = refused(ctx, server.port)
    assert exc.decision.result == "pin-mismatch"
    assert "no key matches the pins for api.example.com" in str(exc)
    assert exc.verify_message == exc.decision.reason
    [report] = ctx.reports.drain()
    assert (report["hostname"], report["validation-result"]) == (HOST, "pin-mismatch")


def test_accepts_after_pin_expiry_when_the_chain_validates(repo, server, tmp_path):
    clock = Clock()
    raw = make_bundle(repo, pins=OTHER.pins(), expires=T0 + 10 * DAY)
    device = installed(repo, tmp_path / "state", raw, clock)
    ctx = tls.context_for(device, clock=clock)
    refused(ctx, server.port)  # before expiry the wrong pins are enforced
    clock.t = T0 + 11 * DAY
    decision, reply = connect(ctx, server.port)
    assert (decision.verdict, decision.result) == ("accept-fail-open", "expired-pins-fail-open")
    assert reply.endswith(b"hello")
    results = [r["validation-result"] for r in ctx.reports.drain()]
    assert results == ["pin-mismatch", "expired-pins-fail-open"]


def test_refuses_after_pin_expiry_when_the_chain_does_not_validate(repo, tmp_path):
    clock = Clock(T0 + 11 * DAY)
    raw = make_bundle(repo, expires=T0 + 10 * DAY)
    device = installed(repo, tmp_path / "state", raw, Clock())
    # Same names as the anchor, other keys: fail open means CA validation, never none.
    with tls_server(ROGUE) as rogue:
        exc = refused(tls.context_for(device, clock=clock), rogue.port)
    assert exc.decision.result == "chain-invalid"
    assert "does not verify with the key of anchor 'TLS Test Root'" in str(exc)


def test_refuses_a_distrusted_key_even_when_pinned(repo, server, tmp_path):
    raw = make_bundle(repo, form="full", distrust=[pin(PKI.inter)])
    device = installed(repo, tmp_path / "state", raw)
    exc = refused(tls.context_for(device), server.port)
    assert exc.decision.result == "distrusted"
    assert "'TLS Test Issuing CA' is distrusted by the bundle" in str(exc)


@pytest.mark.parametrize("form", ["compact", "full"])
def test_refuses_a_hostname_the_certificate_does_not_name(repo, server, tmp_path, form):
    device = installed(repo, tmp_path / "state", make_bundle(repo, form=form))
    exc = refused(tls.context_for(device), server.port, "www.example.org")
    assert exc.decision.result == "hostname-mismatch"
    assert "www.example.org does not match the certificate's DNS names" in str(exc)


@pytest.mark.parametrize("form", ["compact", "full"])
def test_refuses_a_chain_to_an_unknown_ca(repo, tmp_path, form):
    device = installed(repo, tmp_path / "state", make_bundle(repo, form=form, pins=OTHER.pins()))
    with tls_server(OTHER) as other:
        exc = refused(tls.context_for(device), other.port)
    assert exc.decision.result == "chain-invalid"
    if form == "full":
        assert "OpenSSL refused the chain" in str(exc)


def test_a_restarted_agent_enforces_the_store_it_reads_back_from_its_slot(repo, server, tmp_path):
    installed(repo, tmp_path / "state", make_bundle(repo, form="full"))
    device = new_device(repo, tmp_path / "state")  # boots from the state directory
    ctx = tls.context_for(device)
    assert ctx.openssl_verifies and len(ctx.get_ca_certs()) == 1
    decision, _ = connect(ctx, server.port)
    assert decision.result == "pin-match"
    assert refused(ctx, server.port, "www.example.org").decision.result == "hostname-mismatch"


def test_uses_trusted_time_not_a_pi_clock_reset_to_2000(repo, server, tmp_path):
    clock = Clock()
    device = installed(repo, tmp_path / "state", make_bundle(repo, form="full"), clock)
    clock.t = 946_684_800  # 2000-01-01: every certificate "not yet valid" on this clock
    decision, _ = connect(tls.context_for(device, clock=clock), server.port)
    assert decision.result == "pin-match"


# --------------------------------------------------------------------------- the context's rules


def test_refuses_to_make_a_socket_without_a_server_name(repo, server, tmp_path):
    device = installed(repo, tmp_path / "state", make_bundle(repo))
    ctx = tls.context_for(device)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            pytest.raises(ValueError, match="server_hostname is required"):
        ctx.wrap_socket(raw, server_hostname=None)
    with socket.socket() as raw, pytest.raises(ValueError, match="cannot be used server-side"):
        ctx.wrap_socket(raw, server_side=True)
    with pytest.raises(ValueError, match="server_hostname is required"):
        ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())


def test_a_context_made_for_one_host_connects_to_that_host_only(repo, server, tmp_path):
    device = installed(repo, tmp_path / "state", make_bundle(repo))
    ctx = tls.context_for(device, host=HOST)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as s:
        assert s.trust_decision.result == "pin-match"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
            pytest.raises(ValueError, match="this context is for api.example.com"):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_no_data_is_sent_before_the_store_decides(repo, server, tmp_path):
    device = installed(repo, tmp_path / "state", make_bundle(repo, pins=OTHER.pins()))
    ctx = tls.context_for(device)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        s = ctx.wrap_socket(raw, server_hostname=HOST, do_handshake_on_connect=False)
        with pytest.raises(ssl.SSLCertVerificationError, match="pin"):
            s.sendall(b"GET /secret HTTP/1.0\r\n\r\n")
        assert s.fileno() == -1, "the socket is closed after a rejection"


def test_asyncio_connections_are_checked(repo, server, tmp_path):
    good = tls.context_for(installed(repo, tmp_path / "a", make_bundle(repo)))
    bad = tls.context_for(installed(repo, tmp_path / "b", make_bundle(repo, pins=OTHER.pins())))

    async def fetch(ctx: ssl.SSLContext) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", server.port, ssl=ctx, server_hostname=HOST), 5)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return reply

    assert asyncio.run(fetch(good)).endswith(b"hello")
    with pytest.raises(ssl.SSLCertVerificationError, match="no key matches the pins"):
        asyncio.run(fetch(bad))


def test_check_returns_the_decision_of_a_real_connection(repo, server, tmp_path):
    device = installed(repo, tmp_path / "state", make_bundle(repo))
    assert tls.check("127.0.0.1", server.port, device, 5, servername=HOST).result == "pin-match"
    d = tls.check("localhost", server.port, device, 5)
    assert d.verdict == "accept"
    d = tls.check("127.0.0.1", server.port, device, 5, servername="www.example.org")
    assert (d.verdict, d.result) == ("reject", "hostname-mismatch")


# --------------------------------------------------------------------------- health check


def health_device(repo, state: Path, endpoints: list[str], timeout: float = 5):
    check = tls.health_check_for(endpoints, timeout)
    return new_device(repo, state, health=check)


def test_health_check_reverts_an_install_whose_new_store_cannot_reach_the_endpoint(
        repo, server, tmp_path):
    device = health_device(repo, tmp_path / "state", [f"localhost:{server.port}"])
    assert device.install(make_bundle(repo, 1)).committed == 1
    # v2 pins another CA's keys: with it the device would lose its server.
    result = device.install(make_bundle(repo, 2, pins=OTHER.pins()))
    assert result.committed is None and result.reverted == 2
    assert "no key matches the pins for localhost" in result.reason()
    status = device.status()
    assert (status["version"], status["bad"]) == (1, [2])
    # The active store is still v1 and still works.
    decision, _ = connect(tls.context_for(device), server.port)
    assert decision.result == "pin-match"
    assert device.install(make_bundle(repo, 3, form="full")).committed == 3


def test_health_check_keeps_the_trial_when_an_endpoint_is_unreachable(repo, tmp_path):
    # The network, not the trust store, failed: nothing is decided (issue 12;
    # tests/test_health_inconclusive.py follows the trial to its end).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once closed
    check = tls.health_check_for([f"localhost:{closed}"], 2)
    ok, detail = check(tls.store_for(installed(repo, tmp_path / "v1", make_bundle(repo))).bundle, T0)
    assert ok is None and f"localhost:{closed} unreachable" in detail
    device = health_device(repo, tmp_path / "state", [f"localhost:{closed}"], timeout=2)
    result = device.install(make_bundle(repo, 1))
    assert result.reverted is None and device.busy() and device.bad_versions() == []


def test_health_check_without_endpoints_commits(repo, tmp_path):
    check = tls.health_check_for([])
    assert check(None, 0) == (True, "no endpoints configured")
    with pytest.raises(ValueError, match="port from 1 to 65535"):
        tls.health_check_for(["host:99999"])


def test_install_command_health_checks_the_endpoint_before_committing(repo, server, tmp_path):
    state = tmp_path / "state"
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    agent("init", "--state", state, "--root", tmp_path / "root.cose", code=0)
    endpoint = f"localhost:{server.port}"
    files = {}
    for version, pins in ((1, PKI.pins()), (2, OTHER.pins()), (3, PKI.pins())):
        files[version] = tmp_path / f"bundle-v{version}.cose"
        files[version].write_bytes(make_bundle(repo, version, pins=pins))
    out = agent("install", "--state", state, "--endpoint", endpoint, files[1], code=0).stdout
    assert "installed bundle v1" in out and "pin-match" in out
    proc = agent("install", "--state", state, "--endpoint", endpoint, files[2], code=1)
    assert "health check failed" in proc.stderr and "no key matches the pins" in proc.stderr
    proc = agent("install", "--state", state, "--endpoint", endpoint, files[3], "--json", code=0)
    assert '"installed": true' in proc.stdout
    assert '"version": 3' in agent("status", "--state", state, "--json", code=0).stdout


# --------------------------------------------------------------------------- figures


def test_handshake_and_evaluate_time_is_small(repo, server, tmp_path):
    device = installed(repo, tmp_path / "state", make_bundle(repo))
    store = tls.store_for(device)
    chain = [der(c) for c in PKI.served]
    started = time.perf_counter()
    for _ in range(20):
        assert store.evaluate(HOST, chain, T0).result == "pin-match"
    evaluate_ms = (time.perf_counter() - started) / 20 * 1000
    ctx = tls.context_for(device)
    started = time.perf_counter()
    for _ in range(10):
        connect(ctx, server.port)
    connection_ms = (time.perf_counter() - started) / 10 * 1000
    print(f"\nevaluate {evaluate_ms:.2f} ms, handshake + evaluate + request {connection_ms:.2f} ms")
    assert evaluate_ms < 200 and connection_ms < 2000  # generous: a loaded CI runner
