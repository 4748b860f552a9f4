"""benchmarks/bench_board.py's case scripts work: each runs once on the firmware stand-in.

Not timed and not a memory check: every case script runs at a generous
heap (512 KiB) on the real stand-in binary, over documents and installed
states that the benchmark itself builds, and must do what the benchmark
claims it measures (boot the installed bundle, commit the new one, accept
the chain by its pin, verify every signature on every P-256 path).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from support import mpfirmware
from support.mpunix import REPO_ROOT, MicroPythonUnixError

GENEROUS_HEAP = 512 * 1024


def load_bench() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "bench_board.py"
    spec = importlib.util.spec_from_file_location("bench_board", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_board"] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    mp = mpfirmware.require()
    folder = tmp_path_factory.mktemp("bench-board")
    fx = bench.build_fixtures(folder / "fx")
    work = folder / "work"
    work.mkdir()
    rt = bench.Runtime("standin", mp.binary, [], "smoke")
    return rt, fx, work


def run(setup, case: str) -> dict:
    rt, fx, work = setup
    out = bench.run_case(rt, fx, case, GENEROUS_HEAP, work)
    assert isinstance(out, dict), f"{case} failed on the stand-in: {out}"
    assert out["case"] == case
    return out


def test_boot_verifies_the_installed_typical_bundle(setup) -> None:
    out = run(setup, "boot")
    assert out["active"] == 1


@pytest.mark.parametrize("case", ["typical", "full-cert", "anchors150"])
def test_streamed_install_commits_over_the_installed_bundle(setup, case: str) -> None:
    out = run(setup, case)
    assert out["active"] == 1
    assert out["committed"] == 2
    assert out["step_ms"] == out["write_ms"] + out["verify_ms"]


def test_chain_is_accepted_by_its_pin_against_the_150_anchor_store(setup) -> None:
    out = run(setup, "chain150")
    assert out["active"] == 2
    assert out["result"] == "pin-match"


def test_installs_really_read_their_document(setup, tmp_path: Path) -> None:
    # A bundle with one flipped payload byte must be refused: the script's
    # exit status is what the bisection relies on.
    rt, fx, work = setup
    bad = tmp_path / "bad.cose"
    raw = bytearray(fx.docs["typical"].read_bytes())
    raw[-100] ^= 0x01
    bad.write_bytes(bytes(raw))
    broken = bench.Fixtures(fx.folder, {**fx.docs, "typical": bad}, fx.states, fx.chain_dir,
                            fx.sizes, fx.signatures)
    out = bench.run_case(rt, broken, "typical", GENEROUS_HEAP, work)
    assert isinstance(out, str)
    assert "refused" in out or "Error" in out


def test_p256_peers_all_verify_the_bundle_signatures(setup) -> None:
    rt, fx, _ = setup
    mp = mpfirmware.require(heapsize=GENEROUS_HEAP)
    times = mp.run_json(bench.P256_SCRIPT, args=[str(fx.signatures), "1"])
    assert sorted(times) == ["first-use", "key-cold", "textbook", "warm"]
    assert all(len(v) == 2 for v in times.values())


def test_textbook_verifier_rejects_a_wrong_digest(setup, tmp_path: Path) -> None:
    # The peer must be a real verifier: with a changed digest it says no.
    rt, fx, _ = setup
    sigs = json.loads(fx.signatures.read_text())
    sigs[0][1] = "00" + sigs[0][1][2:]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(sigs))
    mp = mpfirmware.require(heapsize=GENEROUS_HEAP)
    with pytest.raises(MicroPythonUnixError) as failed:
        mp.run_json(bench.P256_SCRIPT, args=[str(wrong), "1"])
    assert "verify failed" in failed.value.stdout
    assert "'textbook'" in failed.value.stdout
