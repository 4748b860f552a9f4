"""Attacks on time, freshness and trials (issue 12), each named after the attack.

Every scenario (tests/scenarios/time_attacks.py) runs unchanged on CPython and
inside the MicroPython VM over the same signed documents, and both runtimes
must give the same answer; the assertions then say what the answer must be.
The rules under test are docs/format.md "Trusted time" and the rows of
docs/threat-model.md that name these tests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from support import fleetkit as fk
from support.pki import pin, pki
from support.scenarios import scenario
from support.truststores import HOST
from trustfleet_device import documents

DAY = fk.DAY
NOW = fk.NOW
YEAR = 365 * DAY
FIRMWARE_TIME = NOW - 30 * DAY
PIN_EXPIRY = NOW + 30 * DAY
LEAD = documents.DEFAULT_TIME_LEAD
MAX_AGE = 2 * DAY  # every fleetkit bundle's max_timestamp_age

SCRIPT = scenario("time_attacks.py")


@pytest.fixture(scope="module")
def docs() -> dict[str, bytes]:
    repo = fk.Repo()  # the root leaves max_time_lead out: the 30-day default applies
    ec, rsa = pki("ec"), pki("rsa")
    pinned = repo.bundle(
        version=1, anchors=[fk.compact_anchor(ec.root, "EC Root"), fk.full_anchor(rsa.root)],
        pinsets=[fk.pinset(HOST, [pin(ec.backup_key), pin(rsa.backup_key)], expires=PIN_EXPIRY,
                           subdomains=False)])
    b2 = repo.bundle(version=2)
    out = {
        "root": repo.root_raw, "pinned": pinned, "b2": b2,
        "b2_other": repo.bundle(version=2, distrust=[hashlib.sha256(b"another CA").digest()]),
        "ts_small": repo.timestamp(pinned, time=NOW + 45 * DAY),
        "ts_large": repo.timestamp(pinned, time=NOW + 20 * YEAR),
        "ts_near": repo.timestamp(pinned, time=NOW + 20 * DAY),
        "ts_v2": repo.timestamp(b2, time=NOW + DAY),
        "future": repo.bundle(version=5, issued_at=NOW + 10 * YEAR,
                              expires_at=NOW + 10 * YEAR + 90 * DAY),
        "after_future": repo.bundle(version=6),
        "v_max": repo.bundle(version=documents.MAX_VERSION),
        "v_max_plus_1": repo.bundle(version=documents.MAX_VERSION + 1, check=False),
        "v_2_63": repo.bundle(version=2**63 - 1, check=False),
        "v_2_64": repo.bundle(version=2**64 - 1, check=False),
    }
    # Last: the root that rotates the timestamp key out, and a timestamp by the new key.
    out["root2"] = repo.rotate("timestamp", new_keys=1, remove=1)
    out["ts_new_key"] = repo.timestamp(pinned, time=NOW + 3600)
    return out


class Both:
    """The scenario script loaded on CPython and in the MicroPython VM."""

    def __init__(self, vm, tmp: Path, docs: dict[str, bytes]) -> None:
        self.vm = vm
        self.cpy: dict = {}
        exec(SCRIPT, self.cpy)
        chain = [x.hex() for x in pki("ec").chain()]
        host_paths, vm_paths = {}, {}
        (tmp / "docs").mkdir()
        for name, raw in docs.items():
            (tmp / "docs" / name).write_bytes(raw)
            host_paths[name] = str(tmp / "docs" / name)
            vm_paths[name] = f"/attacks/{name}"
            vm.write(vm_paths[name], raw)

        def spec(paths):
            return {"fleet": "acme-sensors", "now": NOW, "firmware_time": FIRMWARE_TIME, "host": HOST,
                    "chain": chain, "docs": paths, "ts_v2_time": NOW + DAY, "max_age": MAX_AGE}

        (tmp / "spec.json").write_text(json.dumps(spec(host_paths)))
        vm.write("/attacks/spec.json", json.dumps(spec(vm_paths)).encode())
        vm.run(SCRIPT)
        vm.run("load_spec('/attacks/spec.json')")
        self.cpy["load_spec"](str(tmp / "spec.json"))

    def run(self, call: str):
        expected = json.loads(json.dumps(eval(call, self.cpy)))
        got = self.vm.run_json(f"print(json.dumps({call}))")
        assert got == expected, "MicroPython and CPython disagree"
        return got


@pytest.fixture
def both(mpy_fresh, tmp_path, docs) -> Both:
    return Both(mpy_fresh, tmp_path, docs)


PIN_MISMATCH = ["reject", "pin-mismatch"]


def test_timestamp_key_thief_small_jump_cannot_switch_pinning_off(both):
    # 45 days ahead, pins expire in 30: before, this made `check` say accept-fail-open.
    got = both.run("scenario_timestamp_thief('ts_small')")
    assert got["install"]["committed"] == 1 and got["before"] == PIN_MISMATCH
    assert got["offer"]["refused"] == [["timestamp", f"dated {NOW + 45 * DAY}, more than {LEAD} s past "
                                        f"{NOW}, the newest time the offline keys vouch for"]]
    assert got["after"] == PIN_MISMATCH and got["trusted"] == NOW
    assert got["after_reboot"] == PIN_MISMATCH and got["trusted_after_reboot"] == NOW


def test_timestamp_key_thief_large_jump_cannot_freeze_the_device(both):
    # 20 years ahead: before, every later bundle was refused as expired, also after a reboot.
    got = both.run("scenario_timestamp_thief('ts_large')")
    assert got["offer"]["refused"][0][0] == "timestamp" and "offline keys vouch for" in got["offer"]["reason"]
    assert got["trusted"] == NOW and got["trusted_after_reboot"] == NOW
    assert got["after_reboot"] == PIN_MISMATCH
    assert got["next_bundle"]["committed"] == 2 and got["next_bundle"]["refused"] == []


def test_time_taught_by_a_rotated_out_timestamp_key_is_forgotten(both):
    got = both.run("scenario_rotation_forgets_taught_time()")
    # Within the bound the online key may teach time (the pins, 30 days out, still hold) ...
    assert got["near"]["refused"] == [] and got["taught"] == NOW + 20 * DAY
    # ... and a root that rotates that key out takes it back, for good.
    assert got["root"]["refused"] == [] and got["after_rotation"] == NOW
    assert got["after_reboot"] == NOW
    assert got["status"]["last_timestamp"] == 0 and got["status"]["root_version"] == 2
    assert got["new_key"]["refused"] == []


def test_future_dated_bundle_moves_time_at_most_the_lead(both):
    # issued_at 10 years ahead, fully signed (an operator's mistake): before, trusted
    # time became 2036 and the next normal bundle was refused as expired.
    got = both.run("scenario_future_dated_bundle()")
    assert got["future"]["committed"] == 5
    assert got["trusted"] == NOW + LEAD and got["trusted_after_reboot"] == NOW + LEAD
    assert got["next"]["committed"] == 6 and got["next"]["refused"] == []


def test_mix_and_match_is_refused_after_a_restart(both):
    got = both.run("scenario_mix_and_match_after_restart()")
    assert got["ts"]["refused"] == []
    assert got["other"]["refused"] == [["bundle", "bundle v2 does not match the digest in the latest timestamp"]]
    assert got["named"]["committed"] == 2


def test_device_behind_the_latest_timestamp_says_so_then_goes_stale(both):
    got = both.run("scenario_behind()")
    assert got["before"] == "ok"
    assert got["behind"] == ["behind", ["the latest timestamp names v2, this device holds v1"]]
    assert got["after_reboot"] == "behind"
    assert got["later"] == ["stale", [f"no timestamp newer than {MAX_AGE} s",
                                      "the latest timestamp names v2, this device holds v1",
                                      f"behind for more than {MAX_AGE} s"]]


def test_unreachable_health_endpoint_never_marks_the_bundle_bad(both):
    got = both.run("scenario_unreachable('revert')")
    assert got["v2"]["committed"] is None and got["v2"]["reverted"] is None and got["busy"]
    assert got["retry_in"] == 5
    # Asked again with backoff until the 60 s deadline, then reverted without a bad mark.
    assert got["asked"][:3] == [1, 2, 2] and len(got["asked"]) < 2 + 12
    reverted = [i for i, (busy, rev) in enumerate(got["steps"]) if rev == 2]
    assert len(reverted) == 1 and not any(busy for busy, _ in got["steps"][reverted[0]:])
    assert got["bad"] == []
    assert got["status"][0] == "ok" and got["status"][1] == 1
    assert got["status"][2].startswith("endpoints unreachable, not marked bad: api.acme.example:443")
    assert got["again"]["committed"] == 2


def test_unreachable_health_endpoint_with_keep_policy_stays_on_trial(both):
    got = both.run("scenario_unreachable('keep')")
    assert all(busy for busy, _ in got["steps"]) and got["bad"] == []
    assert got["status"][0] == "trial"


def test_tls_refusal_at_health_check_still_marks_bad_and_an_operator_can_clear_it(both):
    got = both.run("scenario_refused_by_trust_store()")
    assert got["v2"]["reverted"] == 2 and got["bad"] == [2]
    assert got["again"]["refused"] == [["bundle", "bundle version 2 was reverted as bad on this device"]]
    assert got["cleared"] == ["bad-cleared"] and got["bad_after_clear"] == []
    assert got["bad_after_reboot"] == [] and got["after_clear"]["committed"] == 2
    assert got["clear_unknown"] == "version 9 is not marked bad on this device (bad: none)"


def test_versions_above_the_maximum_are_refused_so_a_successor_always_fits(both):
    got = both.run("scenario_versions()")
    assert got["v_max"]["committed"] == documents.MAX_VERSION
    for name, v in (("v_max_plus_1", documents.MAX_VERSION + 1), ("v_2_63", 2**63 - 1),
                    ("v_2_64", 2**64 - 1)):
        assert got[name]["refused"] == [["bundle", f"bundle.version: {v} is not in 1..{documents.MAX_VERSION}"]]


def test_first_install_reports_trial_not_no_store(both):
    got = both.run("scenario_first_install_is_trial()")
    assert got["before"] == "no-store" and got["during"] == ["trial"] and got["after"] == "ok"


def test_boot_fallback_never_commits_a_bundle_that_was_not_health_checked(both):
    # Before: the fallback committed v2 (reverted once by a reboot) with no health check.
    got = both.run("scenario_fallback_is_a_trial()")
    assert got["reboot"]["reverted"] == 2 and got["retried"] == [2]
    assert got["fallback"]["committed"] is None and got["fallback"]["reverted"] == 2
    assert got["asked"] == [2] and got["bad"] == [2] and got["state"] == "no-store"
