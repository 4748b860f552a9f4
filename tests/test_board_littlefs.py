"""Power cuts at every block write of an install, a revert and a root update, on real littlefs.

The board's own code runs on the native MicroPython unix port with its real
`os.VfsLfs2` (tests/scenarios/littlefs_cuts.py): device/board/boot.py mounts
the "trustfleet" data partition, a RAM block device handed over by a
stand-in `esp32` module, at /trustfleet, and device/board/main.py boots over
it (build_device over DirStorage, the runner and the A/B store) and runs
its loop (process_inbox, tick). Each phase starts from a
provisioned board with bundle v1 committed and one document in its inbox:

- install: bundle v2 (typical size, 5.4 KB), the health check passes (no endpoints configured);
- revert: bundle v2, the health check fails (the only endpoint, a loopback
  TLS server, sends a chain v2 does not anchor: a refusal, not the network,
  which would only be inconclusive), so v2 goes on trial and is reverted and
  marked bad;
- root: root v2 (root keys rotated), signed by old and new root keys;
- trial: bundle v2 already on trial, the power lost during its health
  check: the boot reverts it, the loop takes it again from the inbox.

For every block write k of the phase (each prog and each erase), a power
cut there leaves the blocks as they were before write k. That image is
mounted and booted as the board boots, and must give:

- a board that mounts and boots (nothing bricked);
- a verified store: the active slot holds exactly a document we signed
  (v1 or v2), the agent verified it at boot, no temp file survives, no
  boot finds a store it cannot verify;
- consistent state: the version reported = the version in state.json =
  the version of the bundle in the active slot = the floor, nothing left
  on trial, and the root version in use is that of root.cose;
- and after one more pass of the loop (the inbox document may still be
  there) and a reboot, the state the uncut phase ends in.

The replayed images are checked against live cuts (the flash refusing
write k while the phase runs) at a few k: the same writes in the same
places, and the same boot. Run with -s to see the counts.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from support import fleetkit as fk
from support import mpunix
from support.scenarios import scenario
from support.tlsagent import PKI, tls_server

SCRIPT = scenario("littlefs_cuts.py")

# An ESP32's flash erases 4 KiB sectors; a small data partition of 32 of them.
BLOCK_SIZE = 4096
BLOCKS = 32
REFUSED = "localhost:{port}"  # a TLS server whose chain no bundle here anchors
LIVE_CUTS = [0, 1, 5, 17, 40, 90]  # cut points also run live (those below the phase's writes)
TIMEOUT = 600.0
HEAP = 16 * 1024 * 1024  # room for the flash images of a phase; memory is not what is tested here

# boot.py looks for a data partition labelled "trustfleet" through `esp32`; here the
# partition is the scenario's RAM flash, set before each power-on.
ESP32_SHIM = '''
"""Stand-in for the board's esp32 module: one data partition, the flash of the test."""


class Partition:
    TYPE_DATA = 1
    flash = None

    @staticmethod
    def find(kind, label=None):
        if kind == Partition.TYPE_DATA and label == "trustfleet" and Partition.flash is not None:
            return [Partition.flash]
        return []
'''

BUNDLE_VERSION = {"b1": 1, "b2": 2}
ROOT_VERSION = {"root1": 1, "root2": 2}

PHASES = [
    {"name": "install", "config": {}, "inbox": {"bundle-2.cose": "b2"}},
    {"name": "revert", "config": {"endpoints": [REFUSED]}, "inbox": {"bundle-2.cose": "b2"}},
    {"name": "root", "config": {}, "inbox": {"root-2.cose": "root2"}},
    {"name": "trial", "config": {}, "inbox": {"bundle-2.cose": "b2"},
     "lost_in_health_check": True},
]
# (bundle version, root version, bad versions) after one more loop: where the uncut phase ends.
END = {"install": (2, 1, []), "revert": (1, 1, [2]), "root": (1, 2, []), "trial": (2, 1, [])}
# In "trial" v2 has already lost one health check to the power; a cut during its second
# trial is its second failure, and the agent allows one retry only (agent.boot): the boot
# after that cut marks it bad, and the board stays on v1.
SECOND_FAILURE = (1, 1, [2])


def typical_bundle(repo: fk.Repo, version: int) -> bytes:
    """A bundle of the size the issue calls typical (10 compact anchors, 25 pin-sets of 2 pins):
    about 5.4 KB, so its slot file spans two 4 KiB blocks."""
    pinsets = [fk.pinset(f"svc{i}.typical.example",
                         [hashlib.sha256(f"pin-{i}-{j}".encode()).digest() for j in range(2)])
               for i in range(25)]
    return repo.bundle(version, anchors=fk.many_anchors(10), pinsets=pinsets)


@pytest.fixture(scope="module")
def cuts(tmp_path_factory) -> dict:
    """Run every phase on the unix port; return what each cut point left."""
    port = mpunix.require(HEAP)
    folder = tmp_path_factory.mktemp("littlefs")
    repo = fk.Repo()
    docs = {"root1": repo.root_raw, "b1": repo.bundle(version=1), "b2": typical_bundle(repo, 2)}
    docs["root2"] = repo.rotate("root", new_keys=1, remove=1)
    paths = {}
    for name, raw in docs.items():
        (folder / f"{name}.cose").write_bytes(raw)
        paths[name] = str(folder / f"{name}.cose")
    config = {"device_id": "esp-lfs", "fleet": repo.fleet, "endpoints": []}
    with tls_server(PKI) as server:
        phases = []
        for p in PHASES:
            eps = [e.format(port=server.port) for e in p["config"].get("endpoints", [])]
            phases.append({**p, "config": {**p["config"], "endpoints": eps}, "live": LIVE_CUTS})
        spec = {"docs": paths, "fleet": repo.fleet, "now": fk.NOW, "config": config,
                "boot_py": str(mpunix.BOARD_DIR / "boot.py"), "block_size": BLOCK_SIZE,
                "blocks": BLOCKS, "mark": mpunix.RESULT_MARK, "phases": phases}
        spec_path = folder / "spec.json"
        spec_path.write_text(json.dumps(spec))
        shims = mpunix.write_shims(folder / "shims", {**mpunix.BOARD_SHIMS, "esp32.py": ESP32_SHIM})
        return port.run_json(SCRIPT, path=[shims, mpunix.DEVICE_DIR, mpunix.BOARD_DIR],
                             args=[str(spec_path)], cwd=folder, timeout=TIMEOUT)


def problems_of(facts: dict) -> list[str]:
    """What is wrong with one booted board's facts: an empty list when store and state hold."""
    found = []
    state, version, floor = facts["status"]
    active, saved_version, trial, saved_floor, _, _ = facts["state"]
    if state != "ok":
        found.append(f"status is {state!r}")
    if facts["slot_doc"] not in BUNDLE_VERSION:
        found.append(f"active slot {active!r} holds {facts['slot_doc']!r}, not a signed bundle")
    else:
        installed = BUNDLE_VERSION[facts["slot_doc"]]
        if not version == saved_version == facts["bundle"] == installed:
            found.append(f"version reported {version}, in state.json {saved_version}, verified"
                         f" {facts['bundle']}, in slot {active} {installed}")
    if not floor == saved_floor == version:
        found.append(f"floor {floor} (state.json {saved_floor}) is not the version {version}")
    if trial:
        found.append("a bundle is still on trial after boot")
    if facts["root_doc"] not in ROOT_VERSION or ROOT_VERSION[facts["root_doc"]] != facts["root"]:
        found.append(f"root in use v{facts['root']}, root.cose holds {facts['root_doc']!r}")
    temps = [n for n in facts["files"] if n.endswith(".tmp")]
    if temps:
        found.append(f"temp files survive the boot: {temps}")
    return found


def problems(outcome: dict, phase: str) -> list[str]:
    """Everything wrong at one cut point: bricked, inconsistent, or not ending where it should."""
    if "error" in outcome:
        return [f"bricked at {outcome['error']}"]
    found = []
    for stage in ("boot", "loop", "reboot"):
        found += [f"{stage}: {p}" for p in problems_of(outcome[stage])]
    events = outcome["boot_events"] + outcome["reboot_events"]
    if "store-invalid" in events:
        found.append(f"a boot found a store it could not verify: {events}")
    end = END[phase]
    if phase == "trial" and 2 in outcome["boot"]["state"][4]:
        end = SECOND_FAILURE
    for stage in ("loop", "reboot"):
        f = outcome[stage]
        got = (f["bundle"], f["root"], f["state"][4])
        if got != end:
            found.append(f"{stage}: (bundle, root, bad) {got}, expected {end}")
        if f["inbox"]:
            found.append(f"{stage}: inbox still holds {f['inbox']}")
    return found


def label(outcome: dict, phase: str) -> str:
    """What the board booted into after the cut, in words."""
    boot = outcome["boot"]
    reverted = "reverted" in outcome["boot_events"]
    if phase == "root":
        return f"root v{boot['root']}"
    if phase in ("install", "trial"):
        what = "new bundle" if boot["bundle"] == 2 else "old bundle"
        if 2 in boot["state"][4]:
            what += ", v2 marked bad"
        return what + (", trial reverted at boot" if reverted else "")
    if 2 in boot["state"][4]:
        return "v1, v2 marked bad"
    return "v1, v2 trial reverted at boot" if reverted else "v1, v2 not yet on trial"


def summary(name: str, phase: dict) -> str:
    outcomes = phase["outcomes"]
    bad = [o for o in outcomes if problems(o, name)]
    kinds = Counter(label(o, name) for o in outcomes if "error" not in o)
    detail = ", ".join(f"{n} {what}" for what, n in sorted(kinds.items()))
    return (f"{name}: {phase['writes']} block writes, {len(outcomes)} cut points (k = 0.."
            f"{phase['writes']}, the last uncut): {len(outcomes) - len(bad)} ok ({detail}),"
            f" {len(bad)} bad")


@pytest.mark.parametrize("phase", [p["name"] for p in PHASES])
def test_power_cut_at_every_block_write_boots_a_verified_consistent_store(cuts, phase, capsys):
    got = cuts[phase]
    line = summary(phase, got)
    with capsys.disabled():
        print(f"\nlittlefs power cuts, {BLOCKS} x {BLOCK_SIZE} B blocks: {line}")
    failures = {o["k"]: problems(o, phase) for o in got["outcomes"]}
    failures = {k: p for k, p in failures.items() if p}
    assert got["writes"] > 10, line  # a phase that writes nothing proves nothing
    assert not failures, f"{line}\n" + "\n".join(f"k={k}: {p}" for k, p in failures.items())
    # The uncut run (the last point) ended where it should and took no detour.
    assert not problems(got["outcomes"][-1], phase)
    # Every cut point really was a different image: k ran over every write.
    assert [o["k"] for o in got["outcomes"]] == list(range(got["writes"] + 1)), line


@pytest.mark.parametrize("phase", [p["name"] for p in PHASES])
def test_replayed_cut_images_boot_like_live_cuts(cuts, phase):
    """The flash refusing write k while the phase runs leaves what the replay of writes 0..k-1 does."""
    got = cuts[phase]
    assert [c["k"] for c in got["live"]] == [k for k in LIVE_CUTS if k < got["writes"]]
    for c in got["live"]:
        k = c["k"]
        assert not c["finished"], k
        assert c["same_places"], k
        assert c["outcome"] == got["outcomes"][k], k
