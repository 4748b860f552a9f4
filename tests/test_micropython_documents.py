"""The device core in the real MicroPython VM verifies documents signed on CPython.

Roots, bundles and timestamps are built and signed by tests/support/fleetkit.py
(CPython, `cryptography`), written into the VM's filesystem, and verified
there by the same device code, which on MicroPython uses the pure-Python
P-256 and CBOR paths. The same `check` function (CHECK, tests/scenarios/documents_check.py) also runs on
CPython, and the two runtimes must agree exactly: the same parsed summary
for accepted documents, the same error class and message for refused ones.
"""

from __future__ import annotations

import hashlib
import json
import statistics

import pytest

from support import fleetkit as fk
from support.scenarios import scenario

# Runs unchanged on both runtimes: no f-strings with `=`, no typing, nothing CPython-only.
CHECK = scenario("documents_check.py")

TIMING = r'''
import time


def time_bundle(root_path, path, runs):
    t0 = time.ticks_ms()
    root = policy.load_trusted_root(_read(root_path))
    root_ms = time.ticks_diff(time.ticks_ms(), t0)
    raw = _read(path)
    times = []
    for _ in range(runs):
        t0 = time.ticks_ms()
        policy.verify_bundle(root, raw)
        times.append(time.ticks_diff(time.ticks_ms(), t0))
    return {"root_ms": root_ms, "bundle_ms": times, "bytes": len(raw)}
'''


@pytest.fixture(scope="module")
def cpython_check():
    ns: dict = {}
    exec(CHECK, ns)
    return ns["check"]


@pytest.fixture
def vm(mpy):
    """The session VM with CHECK defined (again: another test may have reset it)."""
    mpy.run(CHECK)
    return mpy


@pytest.fixture(scope="module")
def repo() -> fk.Repo:
    return fk.Repo()


def _put(vm, raw: bytes) -> str:
    path = f"/docs/{hashlib.sha256(raw).hexdigest()[:16]}.cbor"
    vm.write(path, raw)
    return path


def both(vm, cpython_check, kind: str, root_raw: bytes, raw: bytes, chain=(), **opts) -> dict:
    """Run check() on CPython and in the VM; require identical answers; return it."""
    expected = cpython_check(kind, root_raw, raw, list(chain), **opts)
    chain_expr = ", ".join(f"_read({_put(vm, c)!r})" for c in chain)
    opts_expr = ", ".join(f"{k}={v!r}" for k, v in opts.items())
    got = vm.run_json(f"print(json.dumps(check({kind!r}, _read({_put(vm, root_raw)!r}), "
                      f"_read({_put(vm, raw)!r}), [{chain_expr}], {opts_expr})))")
    assert got == expected
    return got


def test_valid_bundle_is_accepted_with_the_same_fields(vm, cpython_check, repo):
    got = both(vm, cpython_check, "bundle", repo.root_raw, repo.bundle(version=3),
               installed=2, now=fk.NOW)
    assert got["ok"], got
    value = got["value"]
    acme = fk.chain("acme")
    assert (value["version"], value["fleet"], value["anchors"]) == (3, repo.fleet, 2)
    assert value["domains"] == [acme.domain]
    assert value["pins"] == [[p.hex() for p in acme.pins]]
    assert value["compact_anchors"][0][0] == fk.spki(acme.ca).hex()


def test_single_pin_override_reads_the_same(vm, cpython_check, repo):
    acme = fk.chain("acme")
    raw = repo.bundle(pinsets=[fk.pinset(acme.domain, acme.pins[:1], allow_single_pin=True)],
                      distrust=[fk.pin(fk.chain("evil").ca)])
    got = both(vm, cpython_check, "bundle", repo.root_raw, raw)
    assert got["ok"] and got["value"]["single_pin"] == [True]


def _refusals(repo: fk.Repo) -> dict:
    acme = fk.chain("acme")
    valid = repo.bundle(version=5)
    unknown = repo.bundle_map(version=5)
    unknown["pinsets"][0]["include_subdomain"] = True
    return {
        "below threshold": (repo.bundle(version=5, signers=repo.keys["bundle"][:1]), {}),
        "same key twice": (repo.bundle(version=5, signers=repo.keys["bundle"][:1] * 2), {}),
        "root key signs bundle": (repo.bundle(version=5, signers=repo.keys["root"]), {}),
        "tampered": (fk.flip_payload_byte(valid, -1), {}),
        "wrong fleet": (repo.bundle(version=5, fleet="other-fleet"), {}),
        "rollback": (valid, {"installed": 5}),
        "expired": (valid, {"now": fk.NOW + 90 * fk.DAY}),
        "unknown field": (repo.sign(fk.encode(unknown, check=False), repo.signers("bundle")), {}),
        "one pin": (repo.bundle(version=5, check=False,
                                pinsets=[fk.pinset(acme.domain, acme.pins[:1])]), {}),
        "spec 2": (repo.bundle(version=5, check=False, spec=2), {}),
        "timestamp as bundle": (repo.sign(fk.encode(repo.timestamp_map()), repo.signers("bundle")), {}),
        "unsigned": (fk.encode(repo.bundle_map()), {}),
    }


REFUSALS = {
    "below threshold": ("SignatureError", "has 1 valid bundle signature(s), needs 2"),
    "same key twice": ("SignatureError", "same key again, counted once"),
    "root key signs bundle": ("SignatureError", "not a bundle key"),
    "tampered": ("SignatureError", "signature does not verify"),
    "wrong fleet": ("PolicyError", "fleet is 'other-fleet'"),
    "rollback": ("RollbackError", "bundle version 5 is not newer than installed version 5"),
    "expired": ("ExpiredError", "bundle v5 expired at"),
    "unknown field": ("DecodeError", "unknown field 'include_subdomain'"),
    "one pin": ("DecodeError", "1 pin(s); at least 2 are required"),
    "spec 2": ("DecodeError", "format version 2 is not supported"),
    "timestamp as bundle": ("DecodeError", "document type is 'timestamp', expected 'bundle'"),
    "unsigned": ("DecodeError", "not signed"),
}


@pytest.fixture(scope="module")
def refusal_docs(repo):
    return _refusals(repo)


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_match_cpython(vm, cpython_check, repo, refusal_docs, case):
    raw, opts = refusal_docs[case]
    got = both(vm, cpython_check, "bundle", repo.root_raw, raw, **opts)
    error, text = REFUSALS[case]
    assert not got["ok"] and got["error"] == error and text in got["message"], got


def test_timestamps_match_cpython(vm, cpython_check, repo):
    b = repo.bundle(version=4)
    ts = repo.timestamp(b, time=fk.NOW + 600)
    got = both(vm, cpython_check, "timestamp", repo.root_raw, ts, last_time=fk.NOW)
    assert got["value"] == {"time": fk.NOW + 600, "bundle_version": 4,
                            "bundle_sha256": hashlib.sha256(b).hexdigest()}
    got = both(vm, cpython_check, "timestamp", repo.root_raw, ts, last_time=fk.NOW + 601)
    assert got["error"] == "RollbackError"


def test_root_rotation_walk(vm, cpython_check):
    r = fk.Repo()
    chain = [r.rotate("root", new_keys=1, remove=1), r.rotate("bundle", new_keys=2, remove=3, threshold=1),
             r.rotate("root", new_keys=1, remove=1)]
    got = both(vm, cpython_check, "root", r.root_raw, r.root_raw, chain)
    assert got["ok"] and got["value"]["version"] == 4
    assert got["value"]["roles"][1][2] == 1  # bundle threshold now 1
    got = both(vm, cpython_check, "bundle", r.root_raw, r.bundle(version=2), chain)
    assert got["ok"] and got["value"]["version"] == 2
    # A step missing: v3 is not signed by v1's root keys.
    got = both(vm, cpython_check, "root", r.root_raw, r.root_raw, chain[1:])
    assert got["error"] == "SignatureError" and "checked with root v1 keys" in got["message"]


def test_time_per_bundle_verification(vm, repo, record_property, capsys):
    vm.run(TIMING)
    many = repo.bundle(version=6, anchors=[fk.compact_anchor(fk.chain(f"ca{i}").ca) for i in range(40)]
                       + [fk.full_anchor(fk.chain("acme").ca)] * 10)
    report = {}
    for name, raw in (("bundle 2 anchors", repo.bundle(version=6)), ("bundle 50 anchors", many)):
        root_path, path = _put(vm, repo.root_raw), _put(vm, raw)
        runs = vm.run_json(f"print(json.dumps(time_bundle({root_path!r}, {path!r}, 5)))")
        later = runs["bundle_ms"][1:]
        report[name] = {"bytes": runs["bytes"], "root_load_ms": runs["root_ms"],
                        "first_ms": runs["bundle_ms"][0], "median_ms": statistics.median(later)}
        record_property(name.replace(" ", "_") + "_ms", json.dumps(report[name]))
        # ticks_ms has 1 ms resolution under wasm; anything near a second would be a regression.
        assert 0 <= report[name]["median_ms"] < 2000
    with capsys.disabled():
        print("\nMicroPython VM, verify_bundle (2 of 3 bundle signatures, ES256 pure Python):")
        for name, r in report.items():
            print(f"  {name:<18} {r['bytes']:6d} bytes  root load {r['root_load_ms']:4d} ms  "
                  f"first {r['first_ms']:4d} ms  then median {r['median_ms']:5.1f} ms")
