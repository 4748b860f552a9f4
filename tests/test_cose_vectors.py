"""COSE WG examples (sign1-tests, sign-tests, ecdsa-examples) against cose.parse/verify_signer.

Read from the repository's copies in tests/vectors/. The examples are parsed leniently
(untagged allowed, alg may sit in the unprotected bucket), as RFC 9052 permits, and
every signer is verified with the JWK given in the example:

- pass cases with ES256 verify; fail cases are refused at parse or fail to verify;
- ES384/ES512 cases are refused as unsupported algorithms (listed below);
- the Sig_structure we hash equals the published ToBeSign, built from the
  protected bytes exactly as received;
- trustfleet's own profile (tag required, alg protected) is stricter still.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for _sub in ("device", "server"):
    if str(REPO / _sub) not in sys.path:
        sys.path.insert(0, str(REPO / _sub))

from support.vectors import cose_examples  # noqa: E402
from trustfleet_device import cose  # noqa: E402
from trustfleet_device.errors import DecodeError  # noqa: E402

FOLDERS = ("sign1-tests", "sign-tests", "ecdsa-examples")
COSE_ALGS = {"ES256": -7, "ES384": -35, "ES512": -36}

# Every case whose signer uses something other than ES256, with its COSE alg number.
NOT_ES256 = {
    "ecdsa-examples/ecdsa-02.json": -35,  # ES384, P-384 key
    "ecdsa-examples/ecdsa-03.json": -36,  # ES512, P-521 key
    "ecdsa-examples/ecdsa-04.json": -36,  # ES512 (SHA-512) with a P-256 key
    "ecdsa-examples/ecdsa-sig-02.json": -35,
    "ecdsa-examples/ecdsa-sig-03.json": -36,
    "ecdsa-examples/ecdsa-sig-04.json": -36,
}

# How each failing example fails here (same names in sign1-tests and sign-tests).
FAILURE_MODE = {
    "sign-fail-01.json": "parse",  # tag 998 instead of 98/18
    "sign-fail-02.json": "signature",  # signature (or payload) changed
    "sign-fail-03.json": "algorithm",  # alg changed to -999
    "sign-fail-04.json": "algorithm",  # alg changed to "unknown"
    "sign-fail-06.json": "signature",  # protected attribute added after signing
    "sign-fail-07.json": "signature",  # protected attribute removed after signing
}

# "Redo protected": after signing, the empty protected bucket h'' was replaced by
# h'A0' (an encoded empty map); the signature was made over h''. RFC 9052
# section 4.4 says a bucket with no attributes enters the Sig_structure as a
# zero-length string, so these verify (cose._sig_bucket), as the WG marks them.
REDO_PROTECTED = {"sign1-tests/sign-pass-01.json", "sign-tests/sign-pass-01.json"}


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Case:
    """One example file, with what we need from its JSON."""

    def __init__(self, folder: str, name: str, data: dict):
        self.id = f"{folder}/{name}"
        self.name = name
        self.data = data
        self.raw = bytes.fromhex(data["output"]["cbor"])
        self.fail = bool(data.get("fail"))
        inp = data["input"]
        if "sign0" in inp:
            self.untagged = cose.TAG_SIGN1
            self.signers = [inp["sign0"]]
            self.intermediates = [data.get("intermediates", {})]
        else:
            self.untagged = cose.TAG_SIGN
            self.signers = inp["sign"]["signers"]
            self.intermediates = data.get("intermediates", {}).get("signers", [])

    def point(self, i: int) -> bytes:
        key = self.signers[i]["key"]
        return b"\x04" + b64url(key["x"]) + b64url(key["y"])

    def external_aad(self, i: int) -> bytes:
        return bytes.fromhex(self.signers[i].get("external", ""))

    def alg_name(self, i: int) -> str:
        spec = self.signers[i]
        for where in (spec.get("protected", {}), spec.get("unprotected", {}), spec):
            if "alg" in where:
                return where["alg"]
        raise AssertionError(f"{self.id}: no alg in the example input")

    def to_be_signed(self, i: int) -> bytes | None:
        if i >= len(self.intermediates) or "ToBeSign_hex" not in self.intermediates[i]:
            return None
        return bytes.fromhex(self.intermediates[i]["ToBeSign_hex"])

    @property
    def es256(self) -> bool:
        return all(self.alg_name(i) == "ES256" for i in range(len(self.signers)))

    def parse(self, **kw):
        return cose.parse(self.raw, untagged=self.untagged, require_protected_alg=False, **kw)


CASES = [Case(folder, name, data) for folder in FOLDERS for name, data in cose_examples(folder)]
BY_ID = {c.id: c for c in CASES}


def cases(predicate):
    return [pytest.param(c, id=c.id) for c in CASES if predicate(c)]


def verify_all(case: Case, msg) -> list[bool]:
    assert len(msg.signers) == len(case.signers)
    return [
        cose.verify_signer(msg, s, case.point(i), case.external_aad(i))
        for i, s in enumerate(msg.signers)
    ]


def test_all_example_folders_are_present():
    assert {c.id.split("/")[0] for c in CASES} == set(FOLDERS)
    assert len(CASES) == 27
    assert sum(c.fail for c in CASES) == 12


def test_non_es256_list_matches_the_examples():
    found = {c.id: COSE_ALGS[c.alg_name(0)] for c in CASES if not c.es256}
    assert found == NOT_ES256


@pytest.mark.parametrize(
    "case", cases(lambda c: not c.fail and c.es256)
)
def test_es256_pass_examples_verify(case):
    msg = case.parse()
    assert msg.tag == case.untagged
    for signer in msg.signers:
        assert signer.problem is None
        assert signer.alg == cose.ALG_ES256
    assert verify_all(case, msg) == [True] * len(case.signers)
    # The kid from the JWK is what the message carries.
    assert [s.kid for s in msg.signers] == [spec["key"]["kid"].encode() for spec in case.signers]


@pytest.mark.parametrize(
    "case", cases(lambda c: not c.fail and c.es256)
)
def test_es256_pass_examples_fail_with_the_wrong_aad_or_payload(case):
    msg = case.parse()
    for i, signer in enumerate(msg.signers):
        assert not cose.verify_signer(msg, signer, case.point(i), case.external_aad(i) + b"\x00")
    msg.unverified_payload = msg.unverified_payload + b"."
    assert verify_all(case, msg) == [False] * len(case.signers)


@pytest.mark.parametrize("case", cases(lambda c: c.fail))
def test_fail_examples_are_refused(case):
    mode = FAILURE_MODE[case.name]
    if mode == "parse":
        with pytest.raises(DecodeError, match="unsupported tag 998"):
            case.parse()
        return
    msg = case.parse()
    problems = [s.problem for s in msg.signers]
    if mode == "algorithm":
        assert all(p and "unsupported algorithm" in p for p in problems), problems
    else:
        assert problems == [None] * len(problems)
    assert verify_all(case, msg) == [False] * len(case.signers)


@pytest.mark.parametrize("case", cases(lambda c: not c.es256))
def test_non_es256_examples_are_refused_as_unsupported_algorithm(case):
    msg = case.parse()
    alg = NOT_ES256[case.id]
    for i, signer in enumerate(msg.signers):
        assert signer.alg == alg
        assert signer.problem == f"unsupported algorithm {alg} (only ES256, -7)"
        # Refused before the key is looked at: P-384/P-521 points are not even 65 bytes.
        assert cose.verify_signer(msg, signer, case.point(i), case.external_aad(i)) is False


@pytest.mark.parametrize("case", cases(lambda c: not c.fail))
def test_sig_structure_matches_published_to_be_signed(case):
    msg = case.parse()
    checked = 0
    for i, signer in enumerate(msg.signers):
        expected = case.to_be_signed(i)
        if expected is None:
            continue
        prefix = cose.tbs_prefix(msg, signer, case.external_aad(i))
        assert prefix + msg.unverified_payload == expected
        assert (
            cose.tbs_digest(msg, signer, case.external_aad(i)) == hashlib.sha256(expected).digest()
        )
        checked += 1
    assert checked == len(case.signers)


@pytest.mark.parametrize("case_id", sorted(REDO_PROTECTED))
def test_empty_protected_map_enters_sig_structure_as_empty_string(case_id):
    case = BY_ID[case_id]
    msg = case.parse()
    assert msg.protected_raw == b"\xa0" and msg.protected == {}
    signer = msg.signers[0]
    # The published ToBeSign (what was signed) carries h'', as RFC 9052 4.4 asks.
    assert cose.tbs_prefix(msg, signer) + msg.unverified_payload == case.to_be_signed(0)
    assert verify_all(case, msg) == [True]


# --------------------------------------------------------- trustfleet profile


def test_profile_refuses_alg_only_in_the_unprotected_bucket():
    case = BY_ID["sign1-tests/sign-pass-01.json"]
    msg = cose.parse(case.raw)
    assert msg.signers[0].problem == "no protected alg header"
    assert cose.verify_signer(msg, msg.signers[0], case.point(0)) is False


@pytest.mark.parametrize(
    "case_id", ["sign1-tests/sign-pass-03.json", "sign-tests/sign-pass-03.json"]
)
def test_profile_refuses_untagged_messages(case_id):
    with pytest.raises(DecodeError, match="not a tagged COSE_Sign"):
        cose.parse(BY_ID[case_id].raw)


@pytest.mark.parametrize(
    "case_id",
    [
        "sign1-tests/sign-pass-02.json",
        "sign-tests/sign-pass-02.json",
        "sign-tests/ecdsa-01.json",
        "ecdsa-examples/ecdsa-01.json",
        "ecdsa-examples/ecdsa-sig-01.json",
    ],
)
def test_profile_still_verifies_tagged_examples_with_protected_es256(case_id):
    case = BY_ID[case_id]
    msg = cose.parse(case.raw)
    assert verify_all(case, msg) == [True] * len(case.signers)
