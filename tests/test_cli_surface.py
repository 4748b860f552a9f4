"""The command surface both commands share: --version (issue 13)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
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


# --------------------------------------------------------------------------- make targets


def make_plan(target: str) -> str:
    """What `make TARGET` would run were package.json and pyproject.toml just edited."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    proc = subprocess.run([make, "-n", "-C", str(REPO), "-W", "package.json",
                           "-W", "pyproject.toml", target], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["demo", "firmware", "fuzz"])
def test_make_targets_that_use_no_node_do_not_run_npm(target):
    plan = make_plan(target)
    assert "pip install" in plan  # the Python setup still runs
    assert "npm" not in plan, plan


def test_make_test_still_installs_the_node_packages_the_micropython_vm_tests_need():
    plan = make_plan("test")
    assert "npm ci" in plan and "pip install" in plan and "pytest" in plan
