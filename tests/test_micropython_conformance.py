"""The decoder and signature conformance suites again, inside the real MicroPython VM.

On a device there is no cbor2 and no OpenSSL: `cbor.decode` is the pure decoder
and `p256.verify_digest` the pure verifier. These tests run them in the
WebAssembly MicroPython VM (tests/support/mpyvm) on data read from the published vector
files at test time, and compare with CPython:

- Wycheproof P-256 P1363 vectors through `p256.verify_digest_pure`;
- the COSE WG sign/sign1/ecdsa examples through `cose.parse` + `verify_signer`;
- RFC 7049 appendix A through `cbor.decode` / `cbor.decode_pure`;
- a fixed-seed fuzz corpus generated here, whose results must equal CPython's
  `decode_pure` results input for input.

PROBE (tests/scenarios/conformance_probe.py) is the code that runs in the VM. It is plain MicroPython-safe Python,
and the same source is executed on CPython for the comparisons.
"""

from __future__ import annotations

import base64
import json
import random
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from support.scenarios import scenario  # noqa: E402
from support.vectors import cose_examples, load_json, require, vectors_dir  # noqa: E402
from trustfleet_device import cbor  # noqa: E402
from trustfleet_device.errors import DecodeError  # noqa: E402

PROBE = scenario("conformance_probe.py")


def in_vm(mpy, call: str):
    """Run PROBE plus `call` in the VM; the result comes back through a VM file."""
    mpy.run(
        PROBE
        + "\nwith open('/conformance_result.json', 'w') as _f:\n    _f.write(json.dumps("
        + call
        + "))\n"
    )
    return json.loads(mpy.read("/conformance_result.json"))


def on_cpython(name: str, *args):
    """Run the same PROBE function on CPython (fast paths available), JSON round-tripped."""
    namespace: dict = {}
    exec(compile(PROBE, "<probe>", "exec"), namespace)
    return json.loads(json.dumps(namespace[name](*args)))


# ------------------------------------------------------------ Wycheproof


def test_wycheproof_p1363_vectors_verify_as_expected_in_the_vm(mpy):
    host = require(vectors_dir() / "wycheproof" / "ecdsa_secp256r1_sha256_p1363_test.json")
    mpy.load_host(host, "/vectors/p1363.json")
    summary = in_vm(mpy, "run_wycheproof('/vectors/p1363.json')")
    declared = json.loads(host.read_text())["numberOfTests"]
    per_verify = summary["ms"] / summary["count"]
    per_valid = summary["ms_valid"] / summary["counts"]["valid"]
    print(
        f"\nWycheproof P1363 in MicroPython: {summary['count']} vectors {summary['counts']}, "
        f"{per_verify:.1f} ms per verify ({per_valid:.1f} ms per valid signature), "
        f"acceptable: {summary['acceptable']}"
    )
    assert summary["mismatches"] == []
    assert summary["count"] == summary["declared"] == declared
    assert summary["counts"]["valid"] > 0 and summary["counts"]["invalid"] > 0
    assert per_verify < 250, f"{per_verify:.1f} ms per verify"


# ------------------------------------------------------------ COSE WG


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cose_cases() -> list[dict]:
    """Each example as the VM needs it: bytes, structure, and per-signer key and AAD."""
    cases = []
    for folder in ("sign1-tests", "sign-tests", "ecdsa-examples"):
        for name, data in cose_examples(folder):
            inp = data["input"]
            specs = [inp["sign0"]] if "sign0" in inp else inp["sign"]["signers"]
            algs = [
                next(
                    w["alg"]
                    for w in (s.get("protected", {}), s.get("unprotected", {}), s)
                    if "alg" in w
                )
                for s in specs
            ]
            cases.append({
                "id": f"{folder}/{name}",
                "cbor": data["output"]["cbor"],
                "untagged": 18 if "sign0" in inp else 98,
                "fail": bool(data.get("fail")),
                "algs": algs,
                "signers": [
                    {
                        "point": (b"\x04" + b64url(s["key"]["x"]) + b64url(s["key"]["y"])).hex(),
                        "aad": s.get("external", ""),
                    }
                    for s in specs
                ],
            })  # fmt: skip
    return cases


def test_cose_examples_give_the_same_results_in_the_vm_as_on_cpython(mpy, tmp_path):
    # On CPython verify_signer uses OpenSSL; in the VM the pure verifier.
    data = json.dumps(cose_cases()).encode()
    mpy.write("/vectors/cose.json", data)
    (tmp_path / "cose.json").write_bytes(data)
    got = in_vm(mpy, "run_cose('/vectors/cose.json')")
    assert got == on_cpython("run_cose", str(tmp_path / "cose.json"))


def test_cose_examples_meet_their_expectations_in_the_vm(mpy):
    cases = cose_cases()
    mpy.write("/vectors/cose.json", json.dumps(cases).encode())
    got = in_vm(mpy, "run_cose('/vectors/cose.json')")
    assert len(got) == len(cases) == 27
    verified, refused = set(), set()
    for case in cases:
        entry = got[case["id"]]
        assert "BUG" not in json.dumps(entry), entry
        if entry["parse"] != "ok":
            assert case["fail"], (case["id"], entry["parse"])
            refused.add(case["id"])
            continue
        for alg, signer in zip(case["algs"], entry["signers"], strict=True):
            if alg != "ES256":
                assert f"unsupported algorithm {signer['alg']}" in signer["problem"]
                assert signer["alg"] in (-35, -36)
        if all(s["ok"] is True for s in entry["signers"]):
            verified.add(case["id"])
        else:
            refused.add(case["id"])
    expected = {
        c["id"]
        for c in cases
        if not c["fail"] and c["algs"] == ["ES256"] * len(c["algs"])
    }
    assert verified == expected
    assert len(verified) == 9
    assert verified | refused == {c["id"] for c in cases}
    # Trustfleet's profile: alg only in the unprotected bucket, and untagged messages.
    assert got["sign1-tests/sign-pass-01.json"]["profile"] == ["no protected alg header"]
    for case_id in ("sign1-tests/sign-pass-03.json", "sign-tests/sign-pass-03.json"):
        assert got[case_id]["profile"].startswith("DecodeError: not a tagged COSE_Sign")


# ------------------------------------------------------------ appendix A


def test_appendix_a_gives_the_same_values_and_refusals_in_the_vm(mpy):
    host = require(vectors_dir() / "cbor" / "appendix_a.json")
    mpy.load_host(host, "/vectors/appendix_a.json")
    got = in_vm(mpy, "run_appendix('/vectors/appendix_a.json')")
    expected = on_cpython("run_appendix", str(host))
    assert got["backend"] == "pure"
    assert expected["backend"] == cbor.BACKEND
    assert got["results"] == expected["results"]
    accepted = [hexa for hexa, fast, pure in got["results"] if pure[0] == "ok"]
    assert len(accepted) == 37
    assert len(got["results"]) == len(load_json("cbor", "appendix_a.json")) == 82


# ------------------------------------------------------------ fuzz

VM_FUZZ_SEED = 1234
VM_FUZZ_INPUTS = 2000
COSE_TAGS = (18, 98)


def fuzz_corpus() -> list[bytes]:
    """Mutations of valid documents (appendix A, COSE examples, a bundle-like map)."""
    rng = random.Random(VM_FUZZ_SEED)
    seeds = []
    for entry in load_json("cbor", "appendix_a.json"):
        data = bytes.fromhex(entry["hex"])
        try:
            cbor.decode_pure(data)
        except DecodeError:  # only valid documents are seeds
            continue
        seeds.append(data)
    seeds += [bytes.fromhex(c["cbor"]) for c in cose_cases()[:6]]
    seeds.append(
        cbor.encode({
            "type": "bundle", "fleet": "f", "version": 3, -1: [b"\x30" * 8, "\u00fc\U00010151"],
            "pins": [bytes(32)], "policy": {"a": True, "b": None}, 24: [[[[[1]]]]],
        })
    )  # fmt: skip
    corpus = []
    for _ in range(VM_FUZZ_INPUTS):
        out = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            pos = rng.randint(0, len(out))
            if op == 0 and out:
                out[pos % len(out)] ^= 1 << rng.randrange(8)
            elif op == 1 and out:
                out[pos % len(out)] = rng.choice(
                    (0x00, 0x18, 0x1B, 0x1F, 0x80, 0xC0, 0xED, 0xFF, rng.randrange(256))
                )
            elif op == 2:
                out.insert(pos, rng.randrange(256))
            elif op == 3 and out:
                del out[pos % len(out)]
            elif op == 4:
                out[pos:pos] = bytes((rng.choice((0x81, 0xA1, 0xD2)),)) * rng.randint(1, 30)
            else:
                del out[pos:]
        corpus.append(bytes(out))
    return corpus


def test_fuzz_corpus_gives_the_same_results_in_the_vm_as_cpython_decode_pure(mpy, tmp_path):
    corpus = fuzz_corpus()
    blob = b"".join(struct.pack(">H", len(d)) + d for d in corpus)
    mpy.write("/vectors/fuzz.bin", blob)
    (tmp_path / "fuzz.bin").write_bytes(blob)
    got = in_vm(mpy, "run_fuzz('/vectors/fuzz.bin', (18, 98))")
    expected = on_cpython("run_fuzz", str(tmp_path / "fuzz.bin"), COSE_TAGS)
    results = got["results"]
    assert len(results) == len(expected["results"]) == VM_FUZZ_INPUTS
    bugs = [
        (d.hex(), r)
        for d, r in zip(corpus, results, strict=True)
        if r[0] not in ("ok", "DecodeError", "LimitError")
    ]
    assert bugs == []
    # Accept/refuse, the error class and the value must match; messages may
    # differ only in how each runtime spells repr() of a key.
    differ = [
        (d.hex(), r, e)
        for d, r, e in zip(corpus, results, expected["results"], strict=True)
        if r[0] != e[0] or (r[0] == "ok" and r[1] != e[1])
    ]
    assert differ == []
    accepted = sum(r[0] == "ok" for r in results)
    assert 0 < accepted < VM_FUZZ_INPUTS
    assert got["slowest_ms"] < 1000


# Inputs for the rules where the runtimes differ underneath: MicroPython's own
# UTF-8 check lets overlong forms and surrogates through, so cbor validates
# text itself there; big integers and deep nesting take other code paths too.
STRICTNESS_CASES = [
    "6180", "61ff", "61c3", "62c0af", "62c1bf", "63e08080", "64f0808080", "63eda080",
    "63edbfbf", "64f4908080", "65f888808080", "62e282", "63e228a1", "a163eda08000",
    "62c280", "63ed9fbf", "63ee8080", "63efbfbf", "64f0908080", "64f48fbfbf",
    "1801", "3817", "5801 61", "9801 00", "d812 80", "a2 0100 0100", "a2 0200 0100",
    "a2 1818 00 20 00", "a2 20 00 1818 00", "0000", "f90000", "f7", "f818", "c243616263",
    "1bffffffffffffffff", "3bffffffffffffffff", "5affffffff", "9affffffff",
    "81" * 16 + "00", "81" * 17 + "00", "a140 00", "a1f4 00", "5f ff", "ff", "1c",
]  # fmt: skip


def test_strictness_rules_give_the_same_results_in_the_vm(mpy, tmp_path):
    inputs = [bytes.fromhex(x.replace(" ", "")) for x in STRICTNESS_CASES]
    blob = b"".join(struct.pack(">H", len(d)) + d for d in inputs)
    mpy.write("/vectors/strict.bin", blob)
    (tmp_path / "strict.bin").write_bytes(blob)
    got = in_vm(mpy, "run_fuzz('/vectors/strict.bin', (18, 98))")["results"]
    expected = on_cpython("run_fuzz", str(tmp_path / "strict.bin"), COSE_TAGS)["results"]
    assert got == expected
    accepted = [x for x, r in zip(STRICTNESS_CASES, got, strict=True) if r[0] == "ok"]
    assert accepted == [
        "62c280", "63ed9fbf", "63ee8080", "63efbfbf", "64f0908080", "64f48fbfbf",
        "a2 1818 00 20 00", "1bffffffffffffffff", "3bffffffffffffffff", "81" * 16 + "00",
    ]  # fmt: skip
