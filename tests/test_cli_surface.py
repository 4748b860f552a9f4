"""The command surface both commands share: --version (issue 13)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trustfleet_device

REPO = Path(__file__).resolve().parents[1]


def expected_version() -> str:
    try:
        return importlib.metadata.version("trustfleet")
    except importlib.metadata.PackageNotFoundError:
        return trustfleet_device.VERSION


@pytest.mark.parametrize("module, prog", [
    ("trustfleet_server.cli", "trustfleet"),
    ("trustfleet_pi.cli", "trustfleet-agent"),
])
def test_version_prints_the_package_version_and_exits_0(module, prog):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "device"), str(REPO / "server"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                          text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, f"{prog} {expected_version()}\n", "")


def test_the_installed_console_scripts_answer_version_too():
    bindir = Path(sys.executable).parent
    for prog in ("trustfleet", "trustfleet-agent"):
        exe = bindir / prog
        if not exe.exists():
            pytest.skip(f"{prog} is not installed beside {sys.executable}")
        proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert (proc.returncode, proc.stdout) == (0, f"{prog} {expected_version()}\n")
