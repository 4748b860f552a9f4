"""The MicroPython VM harness itself, against the real VM (tests/support/mpyvm)."""

from __future__ import annotations

import json

import pytest

from support.mpyvm import REPO_ROOT, MicroPythonError, MicroPythonTimeout, MicroPythonVM


def test_print_comes_back(mpy):
    assert mpy.run("print('hello'); print(1 + 2)") == "hello\n3\n"
    assert mpy.run("print('no newline', end='')") == "no newline"
    assert mpy.run("x = 1") == ""


def test_exception_carries_traceback(mpy):
    with pytest.raises(MicroPythonError) as info:
        mpy.run("print('before')\nraise ValueError('bad input 42')")
    exc = info.value
    assert exc.type == "ValueError"
    assert "Traceback (most recent call last)" in exc.traceback
    assert "ValueError: bad input 42" in str(exc)
    assert exc.stdout == "before\n"
    # The VM is still usable afterwards.
    assert mpy.run("print('after')") == "after\n"


def test_runs_micropython_not_cpython(mpy):
    assert mpy.run("import sys; print(sys.implementation.name)") == "micropython\n"


def test_device_package_importable(mpy):
    expected = {}
    exec((REPO_ROOT / "device/trustfleet_device/__init__.py").read_text(), expected)
    out = mpy.run("import trustfleet_device; print(trustfleet_device.VERSION)")
    assert out == expected["VERSION"] + "\n"
    assert mpy.run("print(trustfleet_device.__file__)").startswith("/lib/trustfleet_device/")


def test_run_json(mpy):
    value = mpy.run_json("import json\nprint('noise')\nprint(json.dumps({'a': [1, 2], 'b': None}))")
    assert value == {"a": [1, 2], "b": None}


def test_write_read_roundtrip_all_bytes(mpy):
    data = bytes(range(256)) * 3
    mpy.write("/tmp/mpyvm-test/sub/all.bin", data)  # parent dirs created
    assert mpy.read("/tmp/mpyvm-test/sub/all.bin") == data
    got = mpy.run_json(
        "import json\n"
        "with open('/tmp/mpyvm-test/sub/all.bin', 'rb') as f:\n"
        "    b = f.read()\n"
        "print(json.dumps([len(b), b[0], b[255], b[-1]]))"
    )
    assert got == [768, 0, 255, 255]
    # A file written inside the VM reads back on the host side.
    mpy.run("open('/tmp/mpyvm-test/out.bin', 'wb').write(bytes([0, 200, 255]))")
    assert mpy.read("/tmp/mpyvm-test/out.bin") == b"\x00\xc8\xff"


def test_read_missing_file(mpy):
    with pytest.raises(FileNotFoundError):
        mpy.read("/does/not/exist")


def test_load_host(mpy, tmp_path):
    src = tmp_path / "vector.json"
    src.write_text(json.dumps({"name": "vector", "bytes": list(range(10))}))
    assert mpy.load_host(src, "/vectors/v.json") == src.stat().st_size
    got = mpy.run_json("import json\nprint(json.dumps(json.load(open('/vectors/v.json'))))")
    assert got == {"name": "vector", "bytes": list(range(10))}
    # A real repo file, byte for byte.
    pyproject = REPO_ROOT / "pyproject.toml"
    mpy.load_host(pyproject, "/host/pyproject.toml")
    assert mpy.read("/host/pyproject.toml") == pyproject.read_bytes()


def test_mem_alloc_between(mpy_fresh):
    setup = "def work(n):\n    return [bytearray(100) for _ in range(n)]\n"
    small = mpy_fresh.mem_alloc_between(setup, "r = work(10)\nprint(len(r))")
    big = mpy_fresh.mem_alloc_between(setup, "r = work(1000)\nprint(len(r))")
    assert small["stdout"] == "10\n" and big["stdout"] == "1000\n"
    for fig in (small, big):
        assert fig["before"] > 0
        assert fig["compile"] > 0
        assert fig["allocated"] > 0
        assert fig["heap_total_before"] >= 200 * 1024
    # 1000 bytearrays of 100 bytes: at least 100 kB, and far more than 10 of them.
    assert 100_000 <= big["allocated"] < 2_000_000
    assert big["allocated"] > 20 * small["allocated"]
    # `r` stays alive in globals after the call.
    assert big["retained"] >= 100_000
    # Garbage is not collected inside one call: 3 MB of churn grows the heap.
    churn = mpy_fresh.mem_alloc_between("", "for i in range(3000):\n    b = bytearray(1000)")
    assert churn["allocated"] >= 3_000_000
    assert churn["heap_total_peak"] >= churn["allocated"] > churn["heap_total_before"]
    assert churn["retained"] < 10_000


def test_reset_gives_fresh_interpreter(mpy):
    mpy.run("marker_global = 1234\nimport sys\nsys.modules['tf_marker'] = sys")
    mpy.write("/tmp/reset-marker", b"x")
    assert mpy.run("print(marker_global)") == "1234\n"
    mpy.reset()
    with pytest.raises(MicroPythonError, match="NameError"):
        mpy.run("print(marker_global)")
    assert mpy.run("import sys; print('tf_marker' in sys.modules)") == "False\n"
    with pytest.raises(FileNotFoundError):
        mpy.read("/tmp/reset-marker")
    # The package is copied again.
    assert mpy.run("import trustfleet_device; print('ok')") == "ok\n"


def test_timeout_kills_and_next_request_restarts(mpy):
    # `mpy` only gates on availability (skip/fail rule); this test uses its own VM.
    with MicroPythonVM(timeout=1.0) as vm:
        vm.run("stale = 1")
        with pytest.raises(MicroPythonTimeout):
            vm.run("while True:\n    pass")
        assert vm.run("print('alive')") == "alive\n"
        assert vm.restarts == 1
        with pytest.raises(MicroPythonError, match="NameError"):
            vm.run("stale")
