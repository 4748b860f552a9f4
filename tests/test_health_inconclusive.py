"""Health checks that tell the network from the trust store (issue 12), against real servers.

The attack: a health server that is merely down (DNS failure, nothing listening, a server that
never answers or hangs up mid-handshake) used to revert a good bundle AND mark its version bad
for good, halting a rollout on a device that had nothing wrong with its trust store. Now:
- no certificate judged -> inconclusive (None): the trial is kept and retried, and reverted at
  its deadline WITHOUT marking the version bad;
- a TLS refusal (trust store or OpenSSL: chain, name, pins) -> False: reverted and marked bad;
- an IP endpoint is checked against the certificate's IP address SANs;
- an operator clears a bad mark with `trustfleet-agent clear-bad`.

Servers are LoopbackTLSServer threads on 127.0.0.1 (tests/support/tlsagent.py's PKI, valid
around today); the agent is the real `trustfleet-agent` CLI on a real state directory, the board
the real check_endpoints on the MicroPython unix port with its mbedTLS.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
from pathlib import Path

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization

from support import fleetkit as fk
from support import mpunix
from support.pki import make_cert
from support.tlsagent import DAY, OTHER, PKI, ROGUE, T0, agent, anchor, make_bundle, tls_server
from trustfleet_pi import tls
from trustfleet_pi.local import LocalDevice
from trustfleet_server.demo.tlsserver import LoopbackTLSServer, http_answer

# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    return fk.Repo(now=T0)


@pytest.fixture
def server():
    with tls_server(PKI) as s:
        yield s


@pytest.fixture
def rogue():
    """Same names as PKI, other keys: any store anchored on PKI must refuse it."""
    with tls_server(ROGUE) as s:
        yield s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed


class SilentServer:
    """Accepts TCP connections and then either says nothing (`hang`) or closes at once."""

    def __init__(self, hang: bool):
        self.hang = hang
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                if self.hang:
                    self.held.append(conn)
                else:
                    conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def silent():
    made: list[SilentServer] = []

    def make(hang: bool) -> SilentServer:
        made.append(SilentServer(hang))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _pem(*objs) -> bytes:
    return b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objs)


def ip_server(*addresses: str) -> LoopbackTLSServer:
    """PKI's issuing CA serving a leaf whose only SANs are these IP addresses."""
    san = cx509.SubjectAlternativeName([cx509.IPAddress(ipaddress.ip_address(a)) for a in addresses])
    leaf = make_cert("loopback by address", PKI.leaf_key, PKI.inter, PKI.inter_key,
                     extra=[(san, False)], not_before=T0 - DAY, not_after=T0 + 365 * DAY)
    key = PKI.leaf_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    return LoopbackTLSServer(_pem(leaf, PKI.inter), key, answer=http_answer(b"hello"))


def trial_bundle(repo: fk.Repo, tmp_path: Path, raw: bytes):
    """The verified Bundle of `raw`, as the runner hands it to a health check."""
    state = tmp_path / f"verify-{len(list(tmp_path.iterdir()))}"
    LocalDevice.initialise(state, repo.root_raw)
    device = LocalDevice(state)
    assert device.install(raw).committed is not None
    return device.active_bundle()


def init_state(repo: fk.Repo, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    agent("init", "--state", state, "--root", tmp_path / "root.cose", code=0)
    return state


def bundle_file(repo: fk.Repo, tmp_path: Path, version: int, **kw) -> Path:
    path = tmp_path / f"bundle-v{version}.cose"
    path.write_bytes(make_bundle(repo, version, **kw))
    return path


def status(state: Path) -> dict:
    return json.loads(agent("status", "--state", state, "--json", code=0).stdout)


# --------------------------------------------------------------------------- the CPython agent


def test_network_failures_before_a_certificate_are_inconclusive(repo, tmp_path, silent):
    bundle = trial_bundle(repo, tmp_path, make_bundle(repo, 1))
    hang, hang_up = silent(hang=True), silent(hang=False)
    for endpoint in (f"localhost:{closed_port()}",          # refused
                     "no-such-host.invalid:443",           # DNS
                     f"localhost:{hang.port}",             # timeout in the handshake
                     f"localhost:{hang_up.port}"):         # reset before any certificate
        ok, detail = tls.health_check_for([endpoint], 1)(bundle, T0)
        assert ok is None, (endpoint, detail)
        assert f"{endpoint} unreachable" in detail


def test_tls_rejection_at_health_check_still_marks_bad(repo, server, rogue, tmp_path):
    for form in ("compact", "full"):  # full: OpenSSL verifies too, and refuses first
        bundle = trial_bundle(repo, tmp_path, make_bundle(repo, 1, form=form))
        reports = tls.SharedReports()
        ok, detail = tls.health_check_for([f"localhost:{rogue.port}"], 5, reports=reports)(
            bundle, T0)
        assert ok is False and "chain-invalid" in detail, detail
        # The refusal is reported to the device's queue (published by its MQTT session).
        [report] = reports.drain()
        assert (report["hostname"], report["validation-result"]) == ("localhost", "chain-invalid")
        # One endpoint refused and one down: the refusal decides, not the network.
        check = tls.health_check_for([f"localhost:{closed_port()}", f"localhost:{rogue.port}"], 2)
        ok, detail = check(bundle, T0)
        assert ok is False and "unreachable" in detail, detail
    state = init_state(repo, tmp_path)
    endpoint = f"localhost:{server.port}"
    agent("install", "--state", state, "--endpoint", endpoint,
          bundle_file(repo, tmp_path, 1), code=0)
    proc = agent("install", "--state", state, "--endpoint", endpoint,
                 bundle_file(repo, tmp_path, 2, pins=OTHER.pins()), code=1)
    assert "health check failed" in proc.stderr and "no key matches the pins" in proc.stderr
    assert "retrying" not in proc.stderr
    assert (status(state)["version"], status(state)["bad"]) == (1, [2])


def test_unreachable_health_endpoint_never_marks_the_bundle_bad(repo, server, tmp_path):
    state = init_state(repo, tmp_path)
    v1 = bundle_file(repo, tmp_path, 1)
    proc = agent("install", "--state", state, "--endpoint", "localhost:1",
                 "--health-deadline", "1", "--health-timeout", "2", v1, code=1)
    lines = proc.stderr.splitlines()
    assert any(line.startswith("trustfleet-agent: endpoint unreachable, retrying in ")
               for line in lines), proc.stderr
    assert "reverted: endpoints unreachable; v1 is not marked bad" in proc.stderr
    after = status(state)
    assert (after["version"], after["bad"]) == (None, [])
    # Same with --json: the answer says it was not marked bad.
    proc = agent("install", "--state", state, "--endpoint", "localhost:1", "--json",
                 "--health-deadline", "1", "--health-timeout", "2", v1, code=1)
    answer = json.loads(proc.stdout)
    assert (answer["installed"], answer["reverted"], answer["marked_bad"]) == (False, 1, False)
    # The server is back: the same v1 installs.
    out = agent("install", "--state", state, "--endpoint", f"localhost:{server.port}", v1,
                code=0).stdout
    assert "installed bundle v1" in out
    assert (status(state)["version"], status(state)["bad"]) == (1, [])


def test_ip_endpoint_with_ip_san_passes_health_check(repo, server, tmp_path):
    with ip_server("127.0.0.1") as by_ip:
        for form in ("compact", "full"):
            raw = make_bundle(repo, 1, form=form)
            bundle = trial_bundle(repo, tmp_path, raw)
            ok, detail = tls.health_check_for([f"127.0.0.1:{by_ip.port}"], 5)(bundle, T0)
            assert ok is True, detail
            # PKI's own leaf names api.example.com and localhost, no address: refused.
            ok, detail = tls.health_check_for([f"127.0.0.1:{server.port}"], 5)(bundle, T0)
            assert ok is False and "hostname-mismatch" in detail, detail
        state = init_state(repo, tmp_path)
        out = agent("install", "--state", state, "--endpoint", f"127.0.0.1:{by_ip.port}",
                    bundle_file(repo, tmp_path, 1), code=0).stdout
        assert "installed bundle v1" in out
        check = json.loads(agent("check", f"127.0.0.1:{by_ip.port}", "--state", state, "--json",
                                 code=0).stdout)
        assert check["verdict"] == "accept" and check["servername"] == "127.0.0.1"
        agent("check", f"127.0.0.1:{server.port}", "--state", state, code=1)
        # A context made for one address connects to that address only.
        device = LocalDevice(state)
        ctx = tls.context_for(device, host="127.0.0.1")
        assert tls.probe(ctx, "127.0.0.1", by_ip.port, 5).accepted()
        with pytest.raises(ValueError, match="this context is for 127.0.0.1, not ::1"):
            tls.probe(ctx, "127.0.0.1", by_ip.port, 5, "[::1]")
        with pytest.raises(ValueError, match="this context is for ::1, not ::2"):
            tls.probe(tls.context_for(device, host="::1"), "127.0.0.1", by_ip.port, 5, "::2")


def test_clear_bad_lets_the_version_install_again(repo, server, rogue, tmp_path):
    state = init_state(repo, tmp_path)
    v1 = bundle_file(repo, tmp_path, 1)
    # The health endpoint serves a chain the bundle does not anchor (a misconfigured server):
    proc = agent("install", "--state", state, "--endpoint", f"localhost:{rogue.port}", v1, code=1)
    assert "health check failed" in proc.stderr
    assert status(state)["bad"] == [1]
    proc = agent("install", "--state", state, "--endpoint", f"localhost:{server.port}", v1, code=1)
    assert "reverted as bad" in proc.stderr
    # The operator fixed the server, and clears the mark.
    out = agent("clear-bad", "1", "--state", state, "--json", code=0).stdout
    answer = json.loads(out)
    assert answer["cleared"] == 1 and answer["bad"] == []
    proc = agent("clear-bad", "1", "--state", state, code=2)
    assert proc.stderr.strip().count("\n") == 0 and "v1 is not marked bad" in proc.stderr
    assert "not a bundle version" in agent("clear-bad", "x", "--state", state, code=2).stderr
    out = agent("install", "--state", state, "--endpoint", f"localhost:{server.port}", v1,
                code=0).stdout
    assert "installed bundle v1" in out
    assert (status(state)["version"], status(state)["bad"]) == (1, [])


# --------------------------------------------------------------------------- the board

BOARD_CHECK = """
import json, sys
from trustfleet_device import policy
from trustfleet_device.transports import board

with open(sys.argv[-1]) as f:
    spec = json.loads(f.read())
with open(spec["root"], "rb") as f:
    root = policy.load_trusted_root(f.read(), fleet=spec["fleet"])
with open(spec["bundle"], "rb") as f:
    b = policy.verify_bundle(root, f.read(), now=spec["now"])
out = []
for eps in spec["cases"]:
    ok, detail = board.check_endpoints([(h, p) for h, p in eps], b, spec["now"])
    out.append([ok, detail])
print(spec["mark"] + json.dumps(out))
"""


def test_board_health_check_tells_an_unreachable_server_from_a_refused_one(repo, server, rogue,
                                                                           tmp_path, silent):
    port = mpunix.require()
    (tmp_path / "root.cose").write_bytes(repo.root_raw)
    (tmp_path / "bundle.cose").write_bytes(
        repo.bundle(1, anchors=[anchor(PKI.root, "compact")], pinsets=[]))
    closed, hang_up = closed_port(), silent(hang=False)
    cases = [[["localhost", closed]],                          # refused
             [["no-such-host.invalid", 443]],                  # DNS
             [["localhost", hang_up.port]],                    # reset before a certificate
             [["localhost", closed], ["localhost", rogue.port]],  # one down, one refused
             [["localhost", server.port]]]
    spec = {"root": str(tmp_path / "root.cose"), "bundle": str(tmp_path / "bundle.cose"),
            "fleet": repo.fleet, "now": T0, "cases": cases, "mark": mpunix.RESULT_MARK}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    shims = mpunix.write_shims(tmp_path / "shims")
    answers = port.run_json(BOARD_CHECK, path=[shims, mpunix.DEVICE_DIR],
                            args=[str(tmp_path / "spec.json")], cwd=tmp_path)
    assert [a[0] for a in answers] == [None, None, None, False, True], answers
    assert f"localhost:{closed} unreachable" in answers[0][1]
    assert "chain-invalid" in answers[3][1] or "not correctly signed" in answers[3][1], answers[3]
