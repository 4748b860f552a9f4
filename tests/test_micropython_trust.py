"""Trust decisions inside the real MicroPython VM equal the CPython ones.

Certificates (EC P-256 and RSA-2048 with SHA-256: what the pure path
checks) are made on the host by the PKI helpers of tests/support/pki.py, written
into the VM's filesystem with `mpy.write`, and evaluated there by the same
device code, which on MicroPython uses the pure-Python signature paths.
The same DECIDE code (tests/scenarios/trust_decide.py) runs on CPython (where signatures go through
`cryptography`), and both runtimes must give the same decision: verdict,
result code, reason text, anchor, pin-set and the whole report.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import statistics

import pytest
from cryptography import x509 as cx509

from support.pki import DAY, NOW, Pki, der, make_cert, pin, pki
from support.scenarios import scenario
from support.truststores import HOST, LATER, compact, full
from trustfleet_device import trust

# Runs unchanged on both runtimes: no f-strings with `=`, no typing, nothing CPython-only.
DECIDE = scenario("trust_decide.py")

@pytest.fixture(scope="module")
def cpython():
    ns: dict = {}
    exec(DECIDE, ns)
    return ns


@pytest.fixture
def vm(mpy):
    """The session VM with DECIDE defined (again: another test may have reset it)."""
    mpy.run(DECIDE)
    return mpy


def _anchor_spec(a) -> dict:
    if a.der is not None:
        return {"der": a.der.hex()}
    return {"name": a.name.hex(), "spki": a.spki.hex(), "not_after": a.not_after,
            "label": a.label}


def spec(chain, anchors, pinsets=(), distrust=(), *, host=HOST, now=NOW, user_anchors=(),
         allow=False, managed=False) -> dict:
    return {
        "host": host, "now": now, "chain": [c.hex() for c in chain],
        "anchors": [_anchor_spec(a) for a in anchors],
        "pinsets": [{"domain": d, "subdomains": sub, "pins": [x.hex() for x in pins],
                     "expires": exp, "mode": mode, "report_to": ["https://reports.example/"]}
                    for d, sub, pins, exp, mode in pinsets],
        "distrust": [x.hex() for x in distrust], "user_anchors": [u.hex() for u in user_anchors],
        "allow": allow, "managed": managed,
    }


def _put(vm, data: dict) -> str:
    raw = json.dumps(data, sort_keys=True).encode()
    path = f"/trust/{hashlib.sha256(raw).hexdigest()[:16]}.json"
    vm.write(path, raw)
    return path


def both(vm, cpython, case: dict) -> dict:
    """Decide on CPython and in the VM; require identical answers; return the VM's."""
    expected = cpython["decide"](json.loads(json.dumps(case)))
    got = vm.run_json(f"print(json.dumps(decide_file({_put(vm, case)!r})))")
    assert got == json.loads(json.dumps(expected))
    return got


def _cases(p: Pki) -> dict:
    good = p.chain()
    wrong_key = p.chain(p.leaf(issuer_key=p.backup_key))
    pins = [pin(p.inter), pin(p.backup_key)]
    other = [pin(p.backup_key), pin(p.backup_root)]
    corp = Pki(p.kind, tag="Corp", keys=10)
    nca = make_cert("NotCA", p.inter_key, p.root, p.root_key)
    return {
        "pin match": (spec(good, [full(p.root)], [(HOST, False, pins, LATER, "enforce")]),
                      ("accept", "pin-match")),
        "wrong pin": (spec(good, [full(p.root)], [(HOST, False, other, LATER, "enforce")]),
                      ("reject", "pin-mismatch")),
        "fail-open after pin expiry": (
            spec(good, [full(p.root)], [(HOST, False, other, NOW, "enforce")]),
            ("accept-fail-open", "expired-pins-fail-open")),
        "invalid chain after pin expiry": (
            spec(wrong_key, [full(p.root)], [(HOST, False, pins, NOW, "enforce")]),
            ("reject", "chain-invalid")),
        "distrusted pinned key": (
            spec(good, [full(p.root)], [(HOST, False, pins, LATER, "enforce")], [pin(p.inter)]),
            ("reject", "distrusted")),
        "compact anchor": (
            spec(good, [compact(p.root, "compact root")], [("example.com", True, pins, LATER,
                                                              "enforce")]),
            ("accept", "pin-match")),
        "report-only": (spec(good, [full(p.root)], [(HOST, False, other, LATER, "report")]),
                        ("accept", "report-only-mismatch")),
        "wildcard": (spec(p.chain(p.leaf(sans=("*.example.com",))), [full(p.root)],
                          host="Wild.Example.com"),
                     ("accept", "ok")),
        "wildcard two labels": (spec(p.chain(p.leaf(sans=("*.example.com",))), [full(p.root)],
                                     host="a.b.example.com"),
                                ("reject", "hostname-mismatch")),
        "expired leaf": (spec(p.chain(p.leaf(not_after=NOW - 1)), [full(p.root)]),
                         ("reject", "chain-invalid")),
        "intermediate not a CA": (
            spec(p.chain(p.leaf(issuer=nca), nca), [full(p.root)]),
            ("reject", "chain-invalid")),
        "enterprise anchor, managed": (
            spec(corp.chain(), [full(p.root)], [(HOST, False, pins, LATER, "enforce")],
                 user_anchors=[der(corp.root)], allow=True, managed=True),
            ("accept", "enterprise-override")),
        "enterprise anchor, unmanaged": (
            spec(corp.chain(), [full(p.root)], [(HOST, False, pins, LATER, "enforce")],
                 user_anchors=[der(corp.root)], allow=True, managed=False),
            ("reject", "chain-invalid")),
    }


CASE_NAMES = sorted([
    "pin match", "wrong pin", "fail-open after pin expiry", "invalid chain after pin expiry",
    "distrusted pinned key", "compact anchor", "report-only", "wildcard", "wildcard two labels",
    "expired leaf", "intermediate not a CA", "enterprise anchor, managed",
    "enterprise anchor, unmanaged"])


@pytest.fixture(scope="module")
def cases():
    return {kind: _cases(pki(kind)) for kind in ("ec", "rsa")}


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize("case", CASE_NAMES)
def test_vm_decides_like_cpython(vm, cpython, cases, kind, case):
    data, (verdict, result) = cases[kind][case]
    got = both(vm, cpython, data)
    assert (got["verdict"], got["result"]) == (verdict, result), got["reason"]
    if result in ("pin-mismatch", "expired-pins-fail-open", "report-only-mismatch",
                  "distrusted"):
        assert got["report"]["validation-result"] == result
        assert got["report"]["hostname"] == HOST


def test_vm_names_the_algorithm_it_cannot_check(vm, cpython):
    p384 = Pki("p384")
    case = spec(p384.chain(), [full(p384.root)])
    got = vm.run_json(f"print(json.dumps(decide_file({_put(vm, case)!r})))")
    assert (got["verdict"], got["result"]) == ("reject", "unsupported-algorithm")
    assert "unsupported signature algorithm ecdsa-with-SHA384 on this runtime" in got["reason"]
    # CPython checks the same chain through cryptography.
    assert cpython["decide"](case)["verdict"] == "accept"


def _mutants(seeds: list[bytes], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[pos] ^= 1 << rng.randrange(8)
            else:
                del data[pos:pos + rng.randint(1, 4)]
        out.append(bytes(data))
    return out


def test_vm_parses_certificates_and_mutants_like_cpython(vm, cpython):
    seeds = [der(c) for k in ("ec", "rsa") for c in (pki(k).root, pki(k).inter, pki(k).leaf_cert)]
    far = make_cert("far", pki("ec").leaf_key, not_before=-10 * 365 * DAY, not_after=2_556_143_999)
    certs = seeds + [der(far)] + _mutants(seeds, 150, seed=99)
    hexes = [c.hex() for c in certs]
    expected = [cpython["parse_summary"](h) for h in hexes]
    got = vm.run_json(f"print(json.dumps(parse_file({_put(vm, hexes)!r})))")
    assert got == json.loads(json.dumps(expected))
    assert all("error" not in g for g in got[:len(seeds) + 1])
    assert sum("error" in g for g in got) > 50


def test_vm_report_queue_deduplicates_regardless_of_dict_order(vm, cpython):
    r1 = {"hostname": HOST, "port": 443, "noted-hostname": HOST, "validation-result": "pin-mismatch",
          "known-pins": ["sha256/AA"], "date-time": "2026-01-01T00:00:00Z"}
    r2 = dict(reversed(list(r1.items())), **{"date-time": "2026-01-01T01:00:00Z"})
    r3 = dict(r1, port=8883)
    r4 = dict(r1, hostname="other.example.com")
    reports = [r1, r2, r3, r4]
    expected = cpython["queue_check"](reports, NOW)
    got = vm.run_json(f"print(json.dumps(queue_check({json.dumps(reports)}, {NOW})))")
    assert got == expected
    assert got["added"] == [True, False, False, True]
    assert (got["duplicates"], got["rate_limited"]) == (1, 1)


def test_time_one_evaluate_in_the_vm(vm, cpython, cases, capsys):
    lines = []
    for kind in ("ec", "rsa"):
        data, _ = cases[kind]["pin match"]
        path = _put(vm, data)
        got = vm.run_json(f"print(json.dumps(time_file({path!r}, 5)))")
        assert got["verdict"] == "accept"
        ms = got["ms"]
        lines.append(f"evaluate() {kind} chain in the MicroPython VM: first {ms[0]} ms, "
                     f"then median {statistics.median(ms[1:])} ms")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# --------------------------------------------------------------------------- IP endpoints (issue 12)


def _ip_chain(p: Pki, *entries: str, cn: str = "ip leaf") -> list[bytes]:
    """p's chain with a leaf whose subjectAltName is `entries` ("dns:name", else an IP)."""
    names = [cx509.DNSName(e[4:]) if e.startswith("dns:") else
             cx509.IPAddress(ipaddress.ip_address(e)) for e in entries]
    return p.chain(p.leaf(sans=(), cn=cn, extra=[(cx509.SubjectAlternativeName(names), False)]))


IP_CASES = {
    "ipv4 in the ip sans": ("192.0.2.10", ("dns:a.example", "192.0.2.10"), ("accept", "ok")),
    "ipv6 in another form": ("2001:DB8:0::0:10", ("2001:db8::10",), ("accept", "ok")),
    "mapped ipv6 is not the ipv4": ("::ffff:192.0.2.10", ("192.0.2.10",),
                                    ("reject", "hostname-mismatch")),
    "ip host, dns name spelling it": ("127.0.0.1", ("dns:127.0.0.1",),
                                      ("reject", "hostname-mismatch")),
    "dns host, ip san": ("localhost", ("127.0.0.1",), ("reject", "hostname-mismatch")),
    "leading zero": ("127.0.0.01", ("dns:127.0.0.01", "127.0.0.1"),
                     ("reject", "hostname-mismatch")),
    "bad ipv6": ("::1::", ("::1",), ("reject", "hostname-mismatch")),
    "ip host never pinned": ("127.0.0.1", ("127.0.0.1",), ("accept", "ok")),
}


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize("case", sorted(IP_CASES))
def test_vm_decides_ip_endpoints_like_cpython(vm, cpython, kind, case):
    p = pki(kind)
    host, entries, want = IP_CASES[case]
    wrong = [pin(p.backup_key), pin(p.backup_root)]
    data = spec(_ip_chain(p, *entries), [full(p.root)],
                [(host.lower(), False, wrong, LATER, "enforce")], host=host)
    got = both(vm, cpython, data)
    assert (got["verdict"], got["result"]) == want, got["reason"]
    # Only a DNS name reaches its pin-set (and gets a report for its mismatch).
    assert got["pinset"] == ("localhost" if host == "localhost" else None)
    assert (got["report"] is not None) is (host == "localhost")


IP_TEXTS = ["0.0.0.0", "255.255.255.255", "256.0.0.1", "01.2.3.4", "1.2.3", "::", "::1",
            "1::", "2001:DB8::10", "1:0:0:2:0:0:3:4", "0:0:1:0:0:0:2:3", "::ffff:1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4", "1::2::3", "::1%lo", "[::1]", "12345::", "::g",
            "abcd:ef01:2345:6789:ABCD:EF01:2345:6789", "1:2:3:4:5:6:7:8:9"]


def test_vm_reads_ip_literals_like_cpython(vm):
    code = ("def _ip(t):\n"
            "    b = trust.ip_bytes(t)\n"
            "    return None if b is None else [_hex(b), trust.ip_text(b)]\n"
            f"print(json.dumps([_ip(t) for t in {IP_TEXTS!r}]))")
    got = vm.run_json(code)
    want = []
    for t in IP_TEXTS:
        b = trust.ip_bytes(t)
        want.append(None if b is None else [b.hex(), trust.ip_text(b)])
    assert got == want
    assert [g is None for g in got].count(True) == 9
