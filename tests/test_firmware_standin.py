"""The firmware stand-in (tools/firmware.py) is what it claims: 32-bit, frozen, an ESP32-like heap.

The binary checks run the real stand-in (built once per session if the
cache lacks it). The cache-key checks call the key functions directly, on
a copy of the device package, so they never rebuild.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from support import mpfirmware
from support.mpunix import DEVICE_DIR, RESULT_MARK

ESP32_HEAP = mpfirmware.ESP32_HEAP
FIRST_AREA = 56 * 1024


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trustfleet_firmware_tool",
                                                  mpfirmware.FIRMWARE_TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fw = load_tool()


def gc_totals(out: str) -> list[int]:
    """The `GC: total: N` figures micropython.mem_info() printed, in order."""
    return [int(n) for n in re.findall(r"GC: total: (\d+)", out)]


# --- the built binary ----------------------------------------------------------

def test_standin_is_a_32_bit_micropython_1_27() -> None:
    mp = mpfirmware.require()
    out = mp.run_json(
        "import sys, struct, json\n"
        f"print({RESULT_MARK!r} + json.dumps([sys.implementation.name, "
        "list(sys.implementation.version[:2]), sys.maxsize, struct.calcsize('P')]))\n")
    assert out == ["micropython", [1, 27], 2**31 - 1, 4]


def test_device_package_imports_frozen_with_nothing_on_the_path(tmp_path: Path) -> None:
    mp = mpfirmware.require(heapsize=ESP32_HEAP)
    # Without ".frozen" on sys.path the package is not found at all; with it,
    # every module imports, none from a file, and their code stays out of the
    # GC heap (from .mpy files the same imports keep about 99 KB live).
    script = (
        "import sys, os, gc, json\n"
        "sys.path.remove('.frozen')\n"
        "try:\n"
        "    import trustfleet_device\n"
        "    hidden = False\n"
        "except ImportError:\n"
        "    hidden = True\n"
        "sys.path.append('.frozen')\n"
        "gc.collect()\n"
        "before = gc.mem_alloc()\n"
        "import trustfleet_device\n"
        "from trustfleet_device import agent, cbor, cose, p256, policy, session, slots, trust, x509\n"
        "from trustfleet_device.transports import mqtt, runner, storage\n"
        "gc.collect()\n"
        "live = gc.mem_alloc() - before\n"
        "files = [m.__file__ for m in (trustfleet_device, agent, cose, storage)]\n"
        "on_disk = []\n"
        "for f in files:\n"
        "    try:\n"
        "        os.stat(f)\n"
        "        on_disk.append(f)\n"
        "    except OSError:\n"
        "        pass\n"
        f"print({RESULT_MARK!r} + json.dumps([hidden, files, on_disk, live]))\n"
    )
    hidden, files, on_disk, live = mp.run_json(script, cwd=tmp_path)
    assert hidden, "trustfleet_device was found without .frozen on the path"
    assert files[0] == "trustfleet_device/__init__.py"
    assert on_disk == []
    assert live < 40_000, f"importing the frozen package kept {live} bytes live"


def test_heap_starts_at_56k_and_grows_once_to_the_esp32_total() -> None:
    mp = mpfirmware.require(heapsize=ESP32_HEAP)
    out = mp.run(
        "import gc, micropython\n"
        "gc.collect()\n"
        "micropython.mem_info()\n"
        "keep = []\n"
        "try:\n"
        "    while True:\n"
        "        keep.append(bytearray(1000))\n"
        "except MemoryError:\n"
        "    print('filled', len(keep))\n"
        "micropython.mem_info()\n"
        "print('sum', gc.mem_free() + gc.mem_alloc())\n"
        "keep = None\n"
        "gc.collect()\n"
        "try:\n"
        "    bytearray(120000)\n"
        "    print('big allocated')\n"
        "except MemoryError:\n"
        "    print('big refused')\n")
    first, grown = gc_totals(out)
    # One area of 56 KiB less its allocation table, then a second area that
    # takes the rest of the 111,936 bytes (less its own table).
    assert 0.95 * FIRST_AREA <= first <= FIRST_AREA, out
    assert 0.95 * ESP32_HEAP <= grown <= ESP32_HEAP, out
    filled = int(re.search(r"filled (\d+)", out).group(1))
    assert 90 <= filled <= 112, out
    assert int(re.search(r"sum (\d+)", out).group(1)) == grown
    assert "big refused" in out


def test_heapsize_caps_the_total_not_the_first_area() -> None:
    mp = mpfirmware.require(heapsize=80_000)
    out = mp.run(
        "import micropython\n"
        "keep = []\n"
        "try:\n"
        "    while True:\n"
        "        keep.append(bytearray(500))\n"
        "except MemoryError:\n"
        "    pass\n"
        "micropython.mem_info()\n")
    (total,) = gc_totals(out)
    assert 0.95 * 80_000 <= total <= 80_000, out


def test_path_command_prints_the_built_binary() -> None:
    mp = mpfirmware.require()
    proc = subprocess.run([sys.executable, str(mpfirmware.FIRMWARE_TOOL), "path"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == mp.binary


def test_path_command_fails_when_nothing_is_built(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(mpfirmware.FIRMWARE_TOOL), "path",
                           "--cache", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "not built" in proc.stderr


# --- what the cache key covers -------------------------------------------------

@pytest.fixture
def device_copy(tmp_path: Path) -> Path:
    """A copy of device/manifest.py and every file it freezes; returns the copied manifest."""
    for name in fw.frozen_files(DEVICE_DIR / "manifest.py"):
        target = tmp_path / "device" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(DEVICE_DIR / name, target)
    return tmp_path / "device" / "manifest.py"


def test_frozen_files_are_the_manifest_and_its_package() -> None:
    frozen = fw.frozen_files(DEVICE_DIR / "manifest.py")
    assert "manifest.py" in frozen
    assert "trustfleet_device/cose.py" in frozen
    assert "trustfleet_device/transports/mqtt.py" in frozen
    assert not any("_cpython" in name or name.startswith("board/") for name in frozen)
    assert frozen["trustfleet_device/agent.py"] == (DEVICE_DIR / "trustfleet_device" /
                                                     "agent.py").read_bytes()


def test_cache_key_changes_with_a_frozen_file_only(device_copy: Path) -> None:
    identity = "tarball:" + "0" * 64
    key = fw.cache_key(identity, fw.frozen_files(device_copy))
    assert key == fw.cache_key(identity, fw.frozen_files(device_copy))

    # A file the manifest does not freeze: same firmware, same key.
    extra = device_copy.parent / "trustfleet_device" / "_cpython" / "host.py"
    extra.parent.mkdir(parents=True, exist_ok=True)
    extra.write_text("HOST = 1\n")
    assert fw.cache_key(identity, fw.frozen_files(device_copy)) == key

    cose = device_copy.parent / "trustfleet_device" / "cose.py"
    cose.write_bytes(cose.read_bytes() + b"\n")
    changed = fw.cache_key(identity, fw.frozen_files(device_copy))
    assert changed != key

    # Another source gives another key for the same frozen files.
    assert fw.cache_key("tarball:" + "1" * 64, fw.frozen_files(device_copy)) != changed


def test_manifest_calls_the_tool_cannot_follow_are_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.py"
    manifest.write_text('require("umqtt.simple")\n')
    with pytest.raises(fw.FirmwareError, match="require"):
        fw.frozen_files(manifest)


def test_known_tarball_with_other_bytes_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "micropython-1.27.0.tar.gz"
    with tarfile.open(fake, "w:gz") as tar:
        info = tarfile.TarInfo("micropython-1.27.0/py/gc.c")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x;\n"))
    with pytest.raises(fw.FirmwareError, match="sha256"):
        fw.source_identity(fake)


def test_source_tree_identity_follows_its_files(tmp_path: Path) -> None:
    tree = tmp_path / "micropython"
    (tree / "py").mkdir(parents=True)
    gc_c = tree / "py" / "gc.c"
    gc_c.write_text("int gc;\n")
    (tree / "py" / "build-x").mkdir()  # build output is not part of the source
    before = fw.source_identity(tree)
    (tree / "py" / "build-x" / "gc.o").write_bytes(b"\0")
    assert fw.source_identity(tree) == before
    gc_c.write_text("int gc_changed;\n")
    assert fw.source_identity(tree) != before
