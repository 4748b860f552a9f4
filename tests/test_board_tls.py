"""The board's TLS health check on the real MicroPython unix port, against real TLS servers.

device/board/main.py runs here on the native unix port (`.venv/bin/micropython`,
see tests/support/mpunix.py) with its real `socket`, `ssl` and `tls` modules
(mbedTLS 3.6); only `machine`, `network` and `ntptime` are stand-ins. The
servers are trustfleet_server.demo.tlsserver.LoopbackTLSServer threads on
127.0.0.1 in this process, serving the chains of tests/support/tlsagent.py
(valid around today, since mbedTLS reads the real clock). Bundles are real
signed documents (fleetkit.Repo) that the port verifies and streams from a
file, as a board does.

Three kinds of port, all with the real mbedTLS doing the TLS:
- "native": this port as it is; `tls.SSLContext` has verify_callback, and
  its sockets have no getpeercert (built without
  MBEDTLS_SSL_KEEP_PEER_CERTIFICATE).
- "ssl-wrapper": the `tls` module hidden, so main.py takes the `ssl`
  wrapper: no verify_callback and no getpeercert.
- "leaf-only": an `ssl` stand-in (LEAF_ONLY_SSL) over the real `tls` that
  hides verify_callback and shows the leaf through getpeercert: a port
  that keeps the peer certificate but does not show the chain.

What is pinned:
- load_full_anchors gives mbedTLS each full anchor as DER, one per call,
  in bundle order (this port's mbedTLS has no PEM parser and takes one DER
  certificate per call); it leaves out what mbedTLS cannot parse
  (Ed25519) and counts what it took.
- native: evaluate decides on the collected chain: right anchor accepted;
  unrelated anchor, rogue CA, distrusted key, wrong host name or wrong pins
  refused. Where evaluate cannot (a P-384 chain), mbedTLS validates with
  CERT_REQUIRED against the full anchors and judge_mbedtls checks distrust
  and the pins on the complete chain (match, mismatch, report-only, none);
  an unrelated full anchor is refused by mbedTLS; only compact anchors (or
  none mbedTLS can load) fail closed.
- leaf-only: mbedTLS alone validates the path and host name: the server's
  CA accepted wherever it stands among the full anchors; an unrelated CA,
  a rogue CA with the same names or a wrong host name refused; a
  distrusted leaf key refused; only compact anchors fail closed.
- ssl-wrapper: nothing of the server can be seen, so it fails closed even
  with the right anchor.
- The whole board: build_device and process_inbox commit a bundle from
  the inbox only when the real health check passes, else revert it and
  mark it bad.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from support import fleetkit as fk
from support import mpunix
from support.pki import der, key, make_cert, pin
from support.scenarios import scenario
from support.tlsagent import DAY, HOST, OTHER, PKI, ROGUE, T0, Hierarchy, pinsets, tls_server

PORT_HOST = "localhost"  # in the test leaves' names, and resolves to 127.0.0.1 on the port
FULL, COMPACT = "full", "compact"
NATIVE, SSL_WRAPPER, LEAF_ONLY = "native", "ssl-wrapper", "leaf-only"

# An `ssl` for the unix port as on a port whose SSLContext has no
# verify_callback but whose sockets show the leaf (getpeercert). All the
# TLS and every check is the real mbedTLS underneath; the callback only
# keeps the leaf and returns 0, which leaves mbedTLS's verdict as it is.
LEAF_ONLY_SSL = scenario("board_leaf_only_ssl.py")

# Runs on the unix port. argv[-1] is a JSON spec: the root, the bundles,
# trusted time, the kind of port, and the steps to run; prints one marked
# JSON line with each step's answer.
DRIVER = scenario("board_driver.py")


# --------------------------------------------------------------------------- PKI and servers


def _p384_hierarchy() -> SimpleNamespace:
    """PKI's shape (root -> issuing CA -> leaf for HOST and localhost) in P-384 keys,
    which TrustStore.evaluate cannot check on MicroPython and mbedTLS can."""
    root_key, inter_key, leaf_key, spare_key = (key("p384", 200 + i) for i in range(4))
    root = make_cert("P384 Root CA", root_key, ca=True,
                     not_before=T0 - 365 * DAY, not_after=T0 + 3650 * DAY)
    inter = make_cert("P384 Issuing CA", inter_key, root, root_key, ca=True, path_len=0,
                      not_before=T0 - 30 * DAY, not_after=T0 + 1825 * DAY)
    leaf = make_cert(HOST, leaf_key, inter, inter_key, sans=[HOST, PORT_HOST],
                     not_before=T0 - DAY, not_after=T0 + 365 * DAY)
    return SimpleNamespace(root=root, inter=inter, leaf=leaf, leaf_key=leaf_key,
                           spare_key=spare_key, served=[leaf, inter])


def _named_only_api(h: Hierarchy) -> SimpleNamespace:
    """`h`'s chain with a leaf for HOST alone: connecting as localhost is a wrong host name."""
    leaf = make_cert(HOST, h.leaf_key, h.inter, h.inter_key, sans=[HOST],
                     not_before=T0 - DAY, not_after=T0 + 365 * DAY)
    return SimpleNamespace(leaf=leaf, leaf_key=h.leaf_key, served=[leaf, h.inter])


P384 = _p384_hierarchy()
API_ONLY = _named_only_api(PKI)
# A root mbedTLS cannot parse (it has no Ed25519); the device's bundle parser takes it.
ED25519_ROOT = make_cert("Ed25519 Root CA", key("ed25519", 210), ca=True,
                         not_before=T0 - 365 * DAY, not_after=T0 + 3650 * DAY)


@pytest.fixture(scope="module")
def servers():
    """One loopback server per chain, for the module: name -> port."""
    started = {}
    try:
        for name, h in (("pki", PKI), ("rogue", ROGUE), ("p384", P384), ("api-only", API_ONLY)):
            started[name] = tls_server(h).start()
        yield {name: s.port for name, s in started.items()}
    finally:
        for s in started.values():
            s.stop()


@pytest.fixture(scope="module")
def port():
    return mpunix.require()


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    return fk.Repo(now=T0)


class Board:
    """Writes signed bundles and runs DRIVER steps on the unix port."""

    def __init__(self, port: mpunix.MicroPythonUnix, repo: fk.Repo, folder) -> None:
        self.port = port
        self.repo = repo
        self.folder = folder
        self.shims = mpunix.write_shims(folder / "shims",
                                        {**mpunix.BOARD_SHIMS, "leafonly_ssl.py": LEAF_ONLY_SSL})
        (folder / "root.cose").write_bytes(repo.root_raw)
        self.bundles: dict[str, str] = {}

    def bundle(self, name: str, anchors: list, pins: list[bytes] | None = None,
               distrust=(), mode: str = "enforce", version: int = 1, folder=None) -> str:
        """Sign a bundle (pin-sets for HOST and localhost, unless pins is None) into a file."""
        sets = [] if pins is None else pinsets(pins)
        for s in sets:
            s["mode"] = mode
        raw = self.repo.bundle(version, anchors=anchors, pinsets=sets, distrust=list(distrust))
        path = (folder or self.folder) / f"{name}.cose"
        path.write_bytes(raw)
        self.bundles[name] = str(path)
        return name

    def run(self, steps: list[dict], *, port: str = NATIVE, stream: bool = True) -> list:
        spec = {"root": str(self.folder / "root.cose"), "fleet": self.repo.fleet,
                "bundles": self.bundles, "now": T0, "port": port, "stream": stream,
                "steps": steps, "mark": mpunix.RESULT_MARK}
        spec_path = self.folder / "spec.json"
        spec_path.write_text(json.dumps(spec))
        return self.port.run_json(DRIVER, path=[self.shims, mpunix.DEVICE_DIR, mpunix.BOARD_DIR],
                                  args=[str(spec_path)], cwd=self.folder)

    def check(self, name: str, server_port: int, port: str = NATIVE) -> tuple[bool, str, list]:
        """check_endpoints on localhost:server_port with the named bundle: (ok, detail, log)."""
        [answer] = self.run([{"op": "check", "bundle": name, "host": PORT_HOST,
                              "port": server_port}], port=port)
        return tuple(answer)


@pytest.fixture
def board(port, repo, tmp_path):
    return Board(port, repo, tmp_path)


def anchor(cert, form: str):
    return fk.full_anchor(cert) if form == FULL else fk.compact_anchor(cert, "test anchor")


def failed(server_port: int, why: str) -> str:
    """check_endpoints' detail when check_endpoint raised."""
    return f"TLS to {PORT_HOST}:{server_port} failed: {why}"


NO_ANCHOR = f"cannot check {PORT_HOST}: no full-certificate anchor for mbedTLS"
DISTRUSTED = "a key in the chain is distrusted by the bundle"
NOT_SIGNED = "The certificate is not correctly signed by the trusted CA"


# --------------------------------------------------------------------------- load_full_anchors


@pytest.mark.parametrize("port_kind", [NATIVE, SSL_WRAPPER, LEAF_ONLY])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "in-memory"])
def test_every_full_anchor_goes_to_mbedtls_as_der_one_per_call(board, stream, port_kind):
    board.bundle("mixed", [anchor(OTHER.root, FULL), anchor(PKI.inter, COMPACT),
                           anchor(PKI.root, FULL), anchor(P384.root, FULL)])
    board.bundle("compact", [anchor(PKI.root, COMPACT), anchor(OTHER.root, COMPACT)])
    board.bundle("ed25519", [anchor(ED25519_ROOT, FULL), anchor(PKI.root, FULL)])
    steps = [{"op": "anchors", "bundle": n} for n in ("mixed", "compact", "ed25519")]
    mixed, compact, ed = board.run(steps, stream=stream, port=port_kind)
    # Only the full anchors, all of them, in the bundle's order; a real mbedTLS took each.
    assert mixed == [3, [[der(c).hex(), "taken"] for c in (OTHER.root, PKI.root, P384.root)]]
    assert compact == [0, []]
    # mbedTLS cannot parse an Ed25519 certificate: left out, the rest still loads.
    assert ed == [1, [[der(ED25519_ROOT).hex(), "ValueError: invalid cert"],
                      [der(PKI.root).hex(), "taken"]]]


def test_this_port_shows_the_chain_only_through_native_tls(board):
    assert board.run([{"op": "can_see_chain"}]) == [True]
    for kind in (SSL_WRAPPER, LEAF_ONLY):
        assert board.run([{"op": "can_see_chain"}], port=kind) == [False]


# --------------------------------------------------------------------------- native: evaluate decides


@pytest.mark.parametrize("form", [COMPACT, FULL])
def test_native_right_anchor_and_pins_accepted(board, servers, form):
    board.bundle("b", [anchor(PKI.root, form)], pins=PKI.pins())
    ok, detail, log = board.check("b", servers["pki"])
    assert (ok, detail) == (True, "1 endpoint(s) passed with the new store")
    assert len(log) == 1 and log[0].startswith(f"{PORT_HOST}:{servers['pki']} pin-match: "), log


@pytest.mark.parametrize(("case", "server", "result"), [
    ("unrelated anchor", "pki", "chain-invalid"),
    ("rogue CA, same names", "rogue", "chain-invalid"),
    ("leaf key distrusted", "pki", "distrusted"),
    ("issuing CA distrusted", "pki", "distrusted"),
    ("wrong host name", "api-only", "hostname-mismatch"),
    ("wrong pins", "pki", "pin-mismatch"),
])
def test_native_evaluate_refuses(board, servers, case, server, result):
    anchors, pins, distrust = [anchor(PKI.root, FULL)], PKI.pins(), []
    if case == "unrelated anchor":
        anchors = [anchor(OTHER.root, FULL), anchor(OTHER.root, COMPACT)]
    elif case == "leaf key distrusted":
        distrust = [pin(PKI.leaf)]
    elif case == "issuing CA distrusted":
        distrust = [pin(PKI.inter)]
    elif case == "wrong pins":
        pins = OTHER.pins()
    board.bundle("b", anchors, pins=pins, distrust=distrust)
    ok, detail, _ = board.check("b", servers[server])
    assert not ok
    assert detail.startswith(f"{PORT_HOST}:{servers[server]} {result}: "), detail


# --------------------------------------------------------------------------- native, evaluate cannot: mbedTLS


def test_native_p384_chain_goes_to_mbedtls_and_the_pins_match(board, servers):
    board.bundle("b", [anchor(ED25519_ROOT, FULL), anchor(P384.root, FULL)],
                 pins=[pin(P384.inter), pin(P384.spare_key)])
    server = servers["p384"]
    ok, detail, log = board.check("b", server)
    assert (ok, detail) == (True, "1 endpoint(s) passed with the new store")
    assert log[0].startswith(f"{PORT_HOST}:{server} signature on ") and \
        log[0].endswith("; asking mbedTLS"), log
    assert log[1] == f"{PORT_HOST}:{server} chain: path checked by mbedTLS, pins match"


@pytest.mark.parametrize(("pins", "mode", "verdict", "said"), [
    ("p384", "enforce", True, "chain: path checked by mbedTLS, pins match"),
    ("other", "enforce", False, "pin-mismatch: no key in the chain matches the pins for localhost"),
    ("other", "report", True, "chain: no key matches the pins (report-only)"),
    (None, "enforce", True, "chain: path checked by mbedTLS; not pinned or pins expired"),
])
def test_judge_mbedtls_checks_the_pins_on_the_complete_chain(board, servers, pins, mode, verdict,
                                                              said):
    chosen = {"p384": [pin(P384.root), pin(P384.spare_key)], "other": OTHER.pins(), None: None}
    board.bundle("b", [anchor(P384.root, FULL)], pins=chosen[pins], mode=mode)
    server = servers["p384"]
    [(ok, detail, complete, chain)] = board.run(
        [{"op": "judge", "bundle": "b", "host": PORT_HOST, "port": server}])
    # verify_callback showed the whole path, the anchor mbedTLS found included.
    assert complete is True
    assert [bytes.fromhex(c) for c in chain] == [der(P384.leaf), der(P384.inter), der(P384.root)]
    assert (ok, detail) == (verdict, f"{PORT_HOST}:{server} {said}")
    ok, detail, _ = board.check("b", server)
    assert ok is verdict, detail


@pytest.mark.parametrize("who", ["leaf", "inter", "root"])
def test_native_p384_chain_with_a_distrusted_key_is_refused(board, servers, who):
    board.bundle("b", [anchor(P384.root, FULL)], pins=[pin(P384.root), pin(P384.spare_key)],
                 distrust=[pin(getattr(P384, who))])
    ok, detail, _ = board.check("b", servers["p384"])
    if who == "root":
        # The distrusted root is never handed to mbedTLS, so no path can be built.
        assert (ok, detail) == (False, failed(servers["p384"], NO_ANCHOR))
    else:
        assert (ok, detail) == (False, f"{PORT_HOST}:{servers['p384']} {DISTRUSTED}")


def test_native_p384_chain_with_an_unrelated_full_anchor_is_refused_by_mbedtls(board, servers):
    # evaluate reaches the compact P-384 root, cannot check its signature, asks mbedTLS,
    # which holds only the unrelated full anchor.
    board.bundle("b", [anchor(P384.root, COMPACT), anchor(OTHER.root, FULL)])
    ok, detail, _ = board.check("b", servers["p384"])
    assert not ok
    assert detail.startswith(failed(servers["p384"], "")) and NOT_SIGNED in detail, detail


@pytest.mark.parametrize("full", [[], [ED25519_ROOT]], ids=["compact-only", "unloadable-full"])
def test_native_p384_chain_without_an_anchor_for_mbedtls_fails_closed(board, servers, full):
    board.bundle("b", [anchor(P384.root, COMPACT)] + [anchor(c, FULL) for c in full],
                 pins=[pin(P384.root), pin(P384.spare_key)])
    ok, detail, _ = board.check("b", servers["p384"])
    assert (ok, detail) == (False, failed(servers["p384"], NO_ANCHOR))


# --------------------------------------------------------------------------- no verify_callback


@pytest.mark.parametrize("order", ["first", "last"])
def test_leaf_only_server_ca_among_the_full_anchors_accepted(board, servers, order):
    anchors = [anchor(PKI.root, FULL), anchor(ED25519_ROOT, FULL), anchor(OTHER.root, FULL)]
    board.bundle("b", anchors if order == "first" else anchors[::-1], pins=PKI.pins())
    ok, detail, log = board.check("b", servers["pki"], port=LEAF_ONLY)
    assert (ok, detail) == (True, "1 endpoint(s) passed with the new store")
    assert log[0] == f"{PORT_HOST}:{servers['pki']} leaf only: path checked by mbedTLS, pins not checked"


@pytest.mark.parametrize(("case", "server", "said"), [
    ("unrelated CA", "pki", NOT_SIGNED),
    ("rogue CA, same names", "rogue", NOT_SIGNED),
    ("wrong host name", "api-only", "The certificate Common Name (CN) does not match"),
])
def test_leaf_only_mbedtls_refuses(board, servers, case, server, said):
    anchors = [anchor(OTHER.root, FULL)] if case == "unrelated CA" else [anchor(PKI.root, FULL)]
    board.bundle("b", anchors, pins=PKI.pins())
    ok, detail, _ = board.check("b", servers[server], port=LEAF_ONLY)
    assert not ok
    assert detail.startswith(failed(servers[server], "")) and said in detail, detail


def test_leaf_only_distrusted_leaf_key_refused(board, servers):
    board.bundle("b", [anchor(PKI.root, FULL)], pins=PKI.pins(), distrust=[pin(PKI.leaf)])
    ok, detail, _ = board.check("b", servers["pki"], port=LEAF_ONLY)
    assert (ok, detail) == (False, f"{PORT_HOST}:{servers['pki']} {DISTRUSTED}")


def test_leaf_only_distrusted_root_is_never_loaded_so_mbedtls_refuses(board, servers):
    # Only the leaf is visible here, so the root's distrust must stop it reaching mbedTLS.
    board.bundle("b", [anchor(PKI.root, FULL)], pins=PKI.pins(), distrust=[pin(PKI.root)])
    assert board.run([{"op": "anchors", "bundle": "b"}]) == [[0, []]]
    ok, detail, _ = board.check("b", servers["pki"], port=LEAF_ONLY)
    assert (ok, detail) == (False, failed(servers["pki"], NO_ANCHOR))


@pytest.mark.parametrize("port_kind", [LEAF_ONLY, SSL_WRAPPER])
def test_no_callback_compact_anchors_only_fail_closed(board, servers, port_kind):
    board.bundle("b", [anchor(PKI.root, COMPACT)], pins=PKI.pins())
    ok, detail, _ = board.check("b", servers["pki"], port=port_kind)
    assert (ok, detail) == (False, failed(servers["pki"], NO_ANCHOR))


def test_ssl_wrapper_shows_nothing_so_fails_closed_even_with_the_right_anchor(board, servers):
    board.bundle("b", [anchor(PKI.root, FULL)], pins=PKI.pins())
    ok, detail, _ = board.check("b", servers["pki"], port=SSL_WRAPPER)
    why = f"cannot check {PORT_HOST}: this port shows none of its certificates"
    assert (ok, detail) == (False, failed(servers["pki"], why))
    # mbedTLS still refuses an unrelated CA before that.
    board.bundle("other", [anchor(OTHER.root, FULL)], pins=PKI.pins())
    ok, detail, _ = board.check("other", servers["pki"], port=SSL_WRAPPER)
    assert not ok and NOT_SIGNED in detail, detail


# --------------------------------------------------------------------------- the whole board


def test_board_boot_installs_a_bundle_only_when_its_health_check_passes(board, servers, repo):
    """build_device and process_inbox with the real TLS health check: each bundle put in the
    inbox is committed when the loopback server passes with it, else reverted and marked bad."""
    state = board.folder / "trustfleet"
    inbox = state / "inbox"
    inbox.mkdir(parents=True)
    (state / "factory-root.cose").write_bytes(repo.root_raw)
    (state / "config.json").write_text(json.dumps({
        "device_id": "esp-1", "fleet": repo.fleet, "endpoints": [f"{PORT_HOST}:{servers['pki']}"]}))
    plan = [
        ("bundle-1.cose", [anchor(PKI.root, FULL)], PKI.pins(), 1, None, None),
        ("bundle-2.cose", [anchor(OTHER.root, FULL)], PKI.pins(), None, 2, "chain-invalid"),
        ("bundle-3.cose", [anchor(PKI.root, COMPACT)], OTHER.pins(), None, 3, "pin-mismatch"),
        ("bundle-4.cose", [anchor(PKI.root, COMPACT)], PKI.pins(), 4, None, None),
    ]
    for version, (name, anchors, pins, committed, reverted, why) in enumerate(plan, start=1):
        board.bundle(name[:-5], anchors, pins=pins, version=version, folder=inbox)
        [got] = board.run([{"op": "boot", "state": str(state)}])
        [(seen, done, undone, reason)] = got["inbox"]
        assert (seen, done, undone) == (name, committed, reverted), got
        if why is not None:
            assert reason.startswith(f"bundle v{version}: health check failed: {PORT_HOST}:"
                                     f"{servers['pki']} {why}: "), reason
        else:
            assert got["log"][-1] == f"{name}: installed bundle v{version} committed", got["log"]
        assert not any(inbox.iterdir())
    assert got["status"]["version"] == 4 and got["status"]["bad"] == [2, 3], got["status"]
