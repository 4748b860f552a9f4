"""The device agent, its storage adapters and trust decisions inside the real MicroPython VM.

Documents (roots, bundles) are built and signed on CPython by fleetkit.Repo,
written into the VM's filesystem, and installed there by the same runner,
agent, store and storage code a board runs: DirStorage over a directory of
the VM's filesystem and MemStorage (with its simulated power cuts). The
scenario code (SCENARIOS, tests/scenarios/agent_scenarios.py) runs unchanged
on both runtimes, and each scenario's JSON summary must be identical on
CPython and MicroPython.

Also here: the memory and time an install and a boot take in the VM
(a proxy, not a limit: this port's heap grows on demand; benchmarks/bench_board.py
measures on a capped heap), the board
entry points (device/board/*.py) compiled and driven with fake board
modules, and the manifest/package.json lists checked against the package.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from pathlib import Path

import pytest

import trustfleet_device
from support import fleetkit as fk
from support.devices import cut_points
from support.mpunix import BOARD_SHIMS
from support.pki import pin, pki
from support.scenarios import scenario
from support.truststores import HOST
from trustfleet_device import documents as device_docs
from trustfleet_server import keys, x509util

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"
BOARD_DIR = DEVICE_DIR / "board"
PACKAGE_DIR = DEVICE_DIR / "trustfleet_device"
CPYTHON_ONLY = "_cpython"

FIRMWARE_TIME = fk.NOW - 30 * fk.DAY
Y2K = 946_684_800  # 2000-01-01: what a board's RTC reads after losing power
PIN_EXPIRY = fk.NOW + 30 * fk.DAY
GOOD_HOST = "good.example.com"

# Runs unchanged on both runtimes: no f-strings with `=`, no typing, nothing CPython-only.
SCENARIOS = scenario("agent_scenarios.py")


# --------------------------------------------------------------------------- fixtures


def _generated_cas(n: int, tag: str) -> list:
    """n self-signed P-256 CA certificates."""
    return [fk.make_cert(f"{tag} Root CA {i:03d}", keys.generate_key()) for i in range(n)]


def _pinsets(n: int, tag: str) -> list[dict]:
    return [fk.pinset(f"svc{i}.{tag}.example",
                      [hashlib.sha256(f"{tag}-{i}-{j}".encode()).digest() for j in range(2)])
            for i in range(n)]


def _certifi_anchor(cert) -> list:
    fields = x509util.compact_anchor_fields(cert)
    return device_docs.compact_anchor(fields.subject_der, fields.spki_der, fields.not_after,
                                        fields.label)


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    return fk.Repo()


@pytest.fixture(scope="module")
def bundles(repo) -> dict[int, bytes]:
    return {v: repo.bundle(version=v) for v in (1, 2, 3)}


@pytest.fixture(scope="module")
def pinned(repo) -> bytes:
    """Anchors and pins that match the test PKI of test_x509 (EC compact root, RSA full root)."""
    ec, rsa = pki("ec"), pki("rsa")
    return repo.bundle(
        version=7,
        anchors=[fk.compact_anchor(ec.root, "EC Root (compact)"), fk.full_anchor(rsa.root)],
        pinsets=[fk.pinset(HOST, [pin(ec.backup_key), pin(rsa.backup_key)], expires=PIN_EXPIRY,
                           subdomains=False),
                 fk.pinset("example.com", [pin(ec.inter), pin(rsa.inter)], expires=PIN_EXPIRY)])


@pytest.fixture(scope="module")
def big_bundles(repo) -> dict[str, bytes]:
    """'typical': 10 compact anchors, 25 pin-sets of 2 pins; 'certifi150': 150 compact anchors."""
    certs = x509util.certifi_certificates()[:150]
    certs += _generated_cas(150 - len(certs), "Topup")
    return {
        "typical": repo.bundle(version=10, anchors=[fk.compact_anchor(c) for c in
                                                    _generated_cas(10, "Typical")],
                               pinsets=_pinsets(25, "typical")),
        "certifi150": repo.bundle(version=11, anchors=[_certifi_anchor(c) for c in certs],
                                  pinsets=_pinsets(25, "certifi")),
    }


def _docs(repo, bundles, pinned) -> dict[str, bytes]:
    return {"root": repo.root_raw, "b1": bundles[1], "b2": bundles[2], "b3": bundles[3],
            "pinned": pinned}


def _spec(repo, docs: dict[str, str], state_dir: str) -> dict:
    return {"fleet": repo.fleet, "now": fk.NOW, "firmware_time": FIRMWARE_TIME,
            "docs": docs, "state_dir": state_dir}


class Runtimes:
    """The SCENARIOS code loaded on CPython and in the VM, over the same documents."""

    def __init__(self, vm, tmp: Path, repo, docs: dict[str, bytes]) -> None:
        self.vm = vm
        self.cpy: dict = {}
        exec(SCENARIOS, self.cpy)
        (tmp / "docs").mkdir(exist_ok=True)
        (tmp / "state").mkdir(exist_ok=True)
        host_paths, vm_paths = {}, {}
        for name, raw in docs.items():
            (tmp / "docs" / f"{name}.cose").write_bytes(raw)
            host_paths[name] = str(tmp / "docs" / f"{name}.cose")
            vm_paths[name] = f"/agent/docs/{name}.cose"
            vm.write(vm_paths[name], raw)
        spec_host = tmp / "spec.json"
        spec_host.write_text(json.dumps(_spec(repo, host_paths, str(tmp / "state"))))
        vm.write("/agent/spec.json", json.dumps(_spec(repo, vm_paths, "/agent/state")).encode())
        vm.run(SCENARIOS)
        vm.run("import os\ntry:\n    os.mkdir('/agent/state')\nexcept OSError:\n    pass\n"
               "load_spec('/agent/spec.json')")
        self.cpy["load_spec"](str(spec_host))

    def both(self, call: str) -> tuple:
        """Run `call` (an expression over SCENARIOS) on both runtimes; return (cpython, vm)."""
        expected = json.loads(json.dumps(eval(call, self.cpy)))
        got = self.vm.run_json(f"print(json.dumps({call}))")
        return expected, got

    def same(self, call: str):
        expected, got = self.both(call)
        assert got == expected
        return got


@pytest.fixture
def rt(mpy, tmp_path, repo, bundles, pinned) -> Runtimes:
    return Runtimes(mpy, tmp_path, repo, _docs(repo, bundles, pinned))


# --------------------------------------------------------------------------- install, revert


@pytest.mark.parametrize("kind", ["dir", "mem"])
def test_vm_installs_bundle_like_cpython(rt, bundles, kind):
    got = rt.same(f"scenario_install({kind!r})")
    assert got["boot"]["reports"] == []
    assert got["v1"]["committed"] == 1 and got["v2"]["committed"] == 2
    assert got["same"]["refused"] == [] and got["same"]["reports"] == [], "the installed bundle again: ignored"
    assert (got["status"]["state"], got["status"]["version"], got["status"]["floor"]) == ("ok", 2, 2)
    assert got["asked"] == [1, 2]
    assert got["files"] == ["root.cose", "slot-a.cose", "slot-b.cose", "state.json"]
    assert got["slots"] == [hashlib.sha256(bundles[1]).hexdigest(),
                            hashlib.sha256(bundles[2]).hexdigest()]
    assert got["tmp"] == []
    assert got["reboot_status"]["version"] == 2 and got["reboot"]["reports"] == []
    assert "bundle version 1 is not newer than installed version 2" in \
        got["older_after_reboot"]["reason"]


@pytest.mark.parametrize("kind", ["dir", "mem"])
def test_vm_reverts_on_failed_health_check_and_never_retries(rt, bundles, kind):
    got = rt.same(f"scenario_revert({kind!r})")
    assert got["v1"]["committed"] == 1
    assert got["v2"]["committed"] is None and got["v2"]["reverted"] == 2
    status = got["status"]
    assert (status["version"], status["bad"], status["state"]) == (1, [2], "ok")
    assert "health check failed: TLS to api.acme.example failed" in status["last_revert"]
    # The failed v2 stays in slot b, unused; v1 is still in slot a.
    assert got["slots"][0] == hashlib.sha256(bundles[1]).hexdigest()
    assert got["reboot"]["reports"] == []
    assert "reverted as bad" in got["retry"]["reason"]
    assert got["v3"]["committed"] == 3
    assert got["asked"] == [1, 2] and got["asked_after_reboot"] == [3]
    assert got["final"]["bad"] == [2] and got["final"]["version"] == 3


# --------------------------------------------------------------------------- power cuts


def _check_invariants(outcomes: list[dict]) -> None:
    """After any cut: a verified store (v1 or v2), a consistent state, nothing on trial."""
    for o in outcomes:
        assert o["state"] == "ok", o
        assert o["version"] in (1, 2) and o["bundle"] == o["version"], o
        assert o["floor"] == o["version"] and not o["trial"], o


@pytest.mark.parametrize("case,answers", [("install", [True]), ("revert", [False])])
def test_vm_power_cut_at_every_point_leaves_a_verified_store(rt, repo, bundles, case, answers,
                                                             record_property, capsys):
    got = rt.same(f"cut_points({answers!r})")
    _check_invariants(got)
    versions = [o["version"] for o in got]
    # The same outcomes as the CPython test of the agent (tests/test_agent.py).
    assert [(o["k"], o["version"]) for o in got] == cut_points(repo, bundles, tuple(answers))
    assert got[-1]["cut"] is False and all(o["cut"] for o in got[:-1])
    assert len(got) >= 6
    if case == "install":
        assert versions[0] == 1 and versions[-1] == 2
    else:
        assert set(versions) == {1}
        assert got[-1]["bad"] == [2]
    record_property(f"{case}_cut_points", len(got))
    with capsys.disabled():
        print(f"\n  MicroPython VM, {case}: {len(got)} cut points tried, outcomes {versions}")


# --------------------------------------------------------------------------- trust decisions


def _pin_cases() -> list[dict]:
    ec, rsa = pki("ec"), pki("rsa")
    before, after = fk.NOW + fk.DAY, PIN_EXPIRY + fk.DAY
    cases = []
    for p in (ec, rsa):
        k = p.kind
        good = p.chain()
        bad_sig = p.chain(p.leaf(issuer_key=p.backup_key))
        other_host = p.chain(p.leaf(sans=(GOOD_HOST,)))
        cases += [
            {"name": f"{k} wrong pin before expiry", "host": HOST, "chain": good, "clock": before},
            {"name": f"{k} fail-open after expiry", "host": HOST, "chain": good, "clock": after},
            {"name": f"{k} invalid chain after expiry", "host": HOST, "chain": bad_sig,
             "clock": after},
            {"name": f"{k} pin match", "host": GOOD_HOST, "chain": other_host, "clock": before},
            {"name": f"{k} clock at 2000 keeps pins", "host": HOST, "chain": good, "clock": Y2K},
        ]
    for c in cases:
        c["chain"] = [x.hex() for x in c["chain"]]
    return cases


PIN_EXPECTED = {
    "wrong pin before expiry": ("reject", "pin-mismatch"),
    "fail-open after expiry": ("accept-fail-open", "expired-pins-fail-open"),
    "invalid chain after expiry": ("reject", "chain-invalid"),
    "pin match": ("accept", "pin-match"),
    # Trusted time is the installed bundle's issued_at, not 2000: the pins still hold.
    "clock at 2000 keeps pins": ("reject", "pin-mismatch"),
}


def test_vm_fails_open_after_pin_expiry_but_still_validates_the_chain(rt, capsys):
    got = rt.same(f"scenario_pins({json.dumps(_pin_cases())})")
    assert got["install"]["committed"] == 7 and got["skipped"] == []
    for kind in ("ec", "rsa"):
        for case, expected in PIN_EXPECTED.items():
            d = got[f"{kind} {case}"]
            assert (d["verdict"], d["result"]) == expected, (kind, case, d["reason"])
    assert got["ec fail-open after expiry"]["now"] > PIN_EXPIRY
    assert got["ec clock at 2000 keeps pins"]["now"] == fk.NOW
    assert got["ec fail-open after expiry"]["anchor"] == "EC Root (compact)"
    assert got["rsa fail-open after expiry"]["report"]["validation-result"] == \
        "expired-pins-fail-open"
    assert got["ec pin match"]["report"] is None


# --------------------------------------------------------------------------- time


def test_vm_board_booting_at_2000_uses_firmware_then_authenticated_time(rt):
    got = rt.same(f"scenario_y2k({Y2K})")
    assert got["trusted_before"] == FIRMWARE_TIME
    assert got["install"]["committed"] == 1
    assert got["trusted_after"] >= fk.NOW, "issued_at of the verified bundle is remembered"
    assert got["status"]["version"] == 1 and got["status"]["state"] == "ok"


# --------------------------------------------------------------------------- memory and time


@pytest.fixture
def big(mpy, tmp_path, repo, bundles, pinned, big_bundles) -> Runtimes:
    return Runtimes(mpy, tmp_path, repo, {**_docs(repo, bundles, pinned), **big_bundles})


def test_vm_memory_and_time_of_boot_and_install(big, big_bundles, record_property, capsys):
    vm = big.vm
    figures = {}
    for name in ("typical", "certifi150"):
        boot = vm.mem_alloc_between(f"_st = prepare_boot({name!r})",
                                    "_m = device(DirStorage(_st.root))")
        assert vm.run_json("print(json.dumps(_m.status()['version']))") is not None
        install = vm.mem_alloc_between(f"_d, _raw = prepare_install({name!r})",
                                       "_r = _d.offer('bundle', _raw)")
        assert vm.run_json("print(json.dumps(_r.committed))") is not None
        vm.run("_m = _d = _raw = _r = _st = None")
        timed = vm.run_json(f"print(json.dumps(time_install({name!r}, 3)))")
        on_cpython = big.cpy["time_install"](name, 5)
        assert all(c is not None for c in timed["committed"] + on_cpython["committed"])
        figures[name] = {
            "bytes": len(big_bundles[name]),
            "boot": {k: boot[k] for k in ("allocated", "retained", "heap_total_peak")},
            "install": {k: install[k] for k in ("allocated", "retained", "heap_total_peak")},
            "vm_install_ms": timed["ms"],
            "cpython_install_ms": on_cpython["ms"],
        }
        for what in ("boot", "install"):
            assert figures[name][what]["allocated"] > 0
        record_property(f"mem_{name}", json.dumps(figures[name]))
    with capsys.disabled():
        print("\nMicroPython VM, a PROXY (its heap grows on demand; the real figures on a capped"
              " heap: benchmarks/bench_board.py). Bytes allocated during the call, garbage"
              " included; retained = live after gc:")
        for name, f in figures.items():
            vm_ms, cp_ms = f["vm_install_ms"], f["cpython_install_ms"]
            print(f"  {name:<10} {f['bytes']:6d} B bundle | boot: alloc {f['boot']['allocated']:8d}"
                  f" retained {f['boot']['retained']:7d} | install: alloc "
                  f"{f['install']['allocated']:8d} retained {f['install']['retained']:7d} | "
                  f"install VM first {vm_ms[0]} ms median {statistics.median(vm_ms[1:])} ms, "
                  f"CPython median {statistics.median(cp_ms[1:]):.1f} ms")


# --------------------------------------------------------------------------- board entry points


def test_board_files_compile_under_micropython(mpy):
    for name in ("boot.py", "main.py"):
        src = (BOARD_DIR / name).read_text()
        out = mpy.run(f"c = compile({src!r}, {name!r}, 'exec')\nprint(type(c).__name__)")
        assert out.strip() == "code", name


# Fake board modules for driving main.py's functions in the VM: the shims of tests/support/mpunix.py
# for machine, network and ntptime, plus fake socket and tls. The tls fake plays mbedTLS: it hands the server's
# chain to verify_callback (top first, as mbedTLS does) and returns the leaf.
FAKES = {
    **{name: BOARD_SHIMS[name] for name in ("machine.py", "network.py", "ntptime.py")},
    "socket.py": '''
SOCK_STREAM = 1


def getaddrinfo(host, port, af=0, type=0):
    return [(2, 1, 0, "", (host, port))]


class socket:
    def settimeout(self, t):
        pass

    def connect(self, addr):
        self.addr = addr

    def close(self):
        pass
''',
    "tls.py": '''
PROTOCOL_TLS_CLIENT = 0
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
SERVERS = {}       # host -> [DER], leaf first: what the server presents
CALLBACK = True    # False: a port whose SSLContext has no verify_callback
LOADED = []        # cadata given to load_verify_locations
MODES = []         # verify_mode of each handshake


class _Socket:
    def __init__(self, leaf):
        self.leaf = leaf

    def getpeercert(self, binary_form=False):
        return self.leaf

    def close(self):
        pass


class SSLContext:
    def __init__(self, protocol):
        self.verify_mode = CERT_NONE
        if CALLBACK:
            self.verify_callback = None

    def load_verify_locations(self, cadata):
        LOADED.append(cadata)

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        chain = SERVERS[server_hostname]
        MODES.append(self.verify_mode)
        cb = getattr(self, "verify_callback", None)
        if cb is not None:
            for depth in range(len(chain) - 1, -1, -1):
                if cb(memoryview(chain[depth]), depth) != 0:
                    raise ValueError("verify callback failed")
        return _Socket(chain[0])
''',
}

BOARD_DRIVE = scenario("agent_board_drive.py")


def _fresh_board_state(vm, root_raw: bytes, config: dict) -> None:
    vm.run("import os\n"
           "def _rm(p):\n"
           "    try:\n"
           "        for n in os.listdir(p):\n"
           "            _rm(p + '/' + n)\n"
           "        os.rmdir(p)\n"
           "    except OSError:\n"
           "        try:\n"
           "            os.remove(p)\n"
           "        except OSError:\n"
           "            pass\n"
           "_rm('/trustfleet')\nos.mkdir('/trustfleet')\nos.mkdir('/trustfleet/inbox')")
    vm.write("/trustfleet/factory-root.cose", root_raw)
    vm.write("/trustfleet/config.json", json.dumps(config).encode())


def test_board_main_health_check_evaluates_the_chain_in_the_vm(mpy, repo):
    """main.py's boot, inbox and health check in the VM, with fake board modules."""
    ec, p384 = pki("ec"), pki("p384")

    def pins(*objs):
        return [fk.pinset(HOST, [pin(o) for o in objs], subdomains=False)]

    docs = {
        "bundle-1.cose": repo.bundle(version=1, anchors=[fk.full_anchor(ec.root)],
                                     pinsets=pins(ec.inter, ec.backup_key)),
        "bundle-2.cose": repo.bundle(version=2, anchors=[fk.full_anchor(ec.root)],
                                     pinsets=pins(ec.backup_key, pki("rsa").backup_key)),
        "bundle-3.cose": repo.bundle(version=3, anchors=[fk.compact_anchor(ec.root)],
                                     pinsets=pins(ec.inter, ec.backup_key)),
        "bundle-4.cose": repo.bundle(version=4, anchors=[fk.compact_anchor(ec.root)],
                                     pinsets=pins(ec.inter, ec.backup_key)),
        "bundle-5.cose": repo.bundle(version=5, anchors=[fk.full_anchor(ec.root)],
                                     pinsets=pins(ec.inter, ec.backup_key)),
        "bundle-6.cose": repo.bundle(version=6, anchors=[fk.full_anchor(p384.root)],
                                     pinsets=pins(p384.inter, p384.backup_key)),
    }
    config = {"device_id": "esp-1", "fleet": repo.fleet, "endpoints": [f"{HOST}:8883"],
              "wifi": {"ssid": "lab", "password": "x"}}
    optional, required = 1, 2  # the fake tls module's CERT_OPTIONAL, CERT_REQUIRED
    try:
        for name, src in FAKES.items():
            mpy.write(f"/boardfakes/{name}", src.encode())
        mpy.write("/board/main.py", (BOARD_DIR / "main.py").read_bytes())
        for name, raw in docs.items():
            mpy.write(f"/boarddocs/{name}", raw)
        _fresh_board_state(mpy, repo.root_raw, config)
        mpy.run(BOARD_DRIVE)

        def drive(name, chain, callback=True):
            """Boot main.py's device over /trustfleet, drop `name` in the inbox, process it."""
            spec = {"servers": {HOST: [c.hex() for c in chain]}, "callback": callback,
                    "now": fk.NOW, "inbox": [name], "docs": {n: f"/boarddocs/{n}" for n in docs}}
            got = mpy.run_json(f"print(json.dumps(drive({json.dumps(spec)!r})))")
            [(seen, committed, reverted, reason)] = got["inbox"]
            assert seen == name and got["left"] == []
            return committed, reverted, reason, got

        # With verify_callback, evaluate alone validates what the server presents.
        committed, _, _, got = drive("bundle-1.cose", ec.chain())
        assert committed == 1 and got["modes"] == [optional], got
        assert "pin-match" in got["log"][-2], got["log"]
        # v2 pins keys the server does not use: reverted and marked bad, also after reboot.
        committed, reverted, reason, got = drive("bundle-2.cose", ec.chain())
        assert (committed, reverted) == (None, 2) and "pin-mismatch" in reason
        assert got["status"]["bad"] == [2] and got["status"]["version"] == 1
        # A compact anchor is enough for evaluate.
        committed, _, _, got = drive("bundle-3.cose", ec.chain())
        assert committed == 3 and got["modes"] == [optional]
        # No verify_callback: only the leaf is seen, and mbedTLS cannot use a compact
        # anchor, so nothing could check the chain: fail closed.
        committed, reverted, reason, got = drive("bundle-4.cose", ec.chain(), callback=False)
        assert (committed, reverted) == (None, 4) and "no full-certificate anchor" in reason
        assert got["modes"] == []
        # No verify_callback but a full anchor: mbedTLS checks the path, evaluate the leaf.
        committed, _, _, got = drive("bundle-5.cose", ec.chain(), callback=False)
        assert committed == 5 and got["modes"] == [required]
        assert "leaf only: path checked by mbedTLS" in got["log"][-2], got["log"]
        # P-384 is beyond the pure path: evaluate says so, mbedTLS validates, pins are
        # still checked on the chain the callback showed.
        committed, _, _, got = drive("bundle-6.cose", p384.chain())
        assert committed == 6 and got["modes"] == [optional, required], got
        assert "chain: path checked by mbedTLS, pins match" in got["log"][-2], got["log"]
        assert got["status"]["bad"] == [2, 4]
    finally:
        mpy.reset()


# --------------------------------------------------------------------------- packaging


def _package_files() -> set[str]:
    return {p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*.py")
            if p.relative_to(PACKAGE_DIR).parts[0] != CPYTHON_ONLY}


def _manifest() -> dict:
    """Run device/manifest.py with stand-ins for the manifest tool's functions."""
    seen: dict = {"packages": []}

    def metadata(**kw):
        seen["metadata"] = kw

    def package(name, files=None, base_path=".", opt=None):
        seen["packages"].append((name, list(files or ()), base_path))

    def require(name, **kw):
        seen.setdefault("require", []).append(name)

    ns = {"metadata": metadata, "package": package, "require": require}
    exec(compile((DEVICE_DIR / "manifest.py").read_text(), "manifest.py", "exec"), ns)
    return seen


def test_manifest_lists_every_device_module_except_cpython_only_ones():
    m = _manifest()
    assert m["metadata"]["version"] == trustfleet_device.VERSION
    assert m["metadata"]["description"]
    [(name, files, base_path)] = m["packages"]
    assert name == "trustfleet_device" and base_path == "."
    assert set(files) == _package_files()
    assert len(files) == len(set(files))


def test_mip_package_json_lists_every_device_module_except_cpython_only_ones():
    data = json.loads((DEVICE_DIR / "package.json").read_text())
    assert data["version"] == trustfleet_device.VERSION
    dests = [dest for dest, _ in data["urls"]]
    assert len(dests) == len(set(dests))
    assert {d.removeprefix("trustfleet_device/") for d in dests} == _package_files()
    for dest, url in data["urls"]:
        # Relative URLs: mip resolves them against the package.json location.
        assert url == dest and (DEVICE_DIR / url).is_file(), url
    assert data.get("deps", []) == []


def test_board_files_import_only_what_the_board_or_the_package_has():
    allowed = {"gc", "os", "json", "time", "hashlib", "machine", "network", "ntptime", "socket",
               "ssl", "tls", "vfs", "esp32", "trustfleet_device", "sys"}
    for name in ("boot.py", "main.py"):
        src = (BOARD_DIR / name).read_text()
        mods = set(re.findall(r"^\s*(?:from|import)\s+([a-z_0-9]+)", src, re.M))
        assert mods <= allowed, (name, mods - allowed)


