"""`pip install 'trustfleet[testing]'` from a built wheel, as a user would, then the docs' tests.

Issue 17: a fresh virtualenv (no system or repository site-packages) gets the wheel built
from this checkout plus the `testing` extra, its dependencies coming from the package
index like anyone's. The three examples of docs/testing.md's "Your first fleet tests" then
run as a user's own test file in a folder outside the repository, with that venv's pytest:
the pytest11 entry point alone must bring the fixtures in.

The wheel is built from a copy of the working tree's files (tracked and untracked, minus
what .gitignore excludes): setuptools writes build/ and *.egg-info beside pyproject.toml,
which must not land in the checkout, and a fresh `git archive` would miss uncommitted work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support.environment import require_tool
from support.userfleet import REPO, outcome_count, run_user_pytest, write_user_tests

PLUGIN = "trustfleet = trustfleet_server.testing.plugin"

# What the venv's own Python says about where trustfleet comes from.
PROBE = """
import importlib.metadata as md, json, sysconfig
import trustfleet_server, trustfleet_server.testing.plugin as plugin
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "package": trustfleet_server.__file__,
    "plugin": plugin.__file__,
    "pytest11": [[ep.name, ep.value, ep.dist.name] for ep in md.entry_points(group="pytest11")],
}))
"""


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run `argv` without PYTHONPATH; fail the test with everything it printed if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    return proc


def copy_working_tree(dest: Path) -> Path:
    """The checkout's files as `git ls-files` sees them now (uncommitted edits included)."""
    git = require_tool("git", "apt-get install git")
    names = run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                REPO, 60).stdout.split("\0")
    for name in filter(None, names):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not shipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A wheel of this checkout, and a fresh venv with `<wheel>[testing]` installed."""
    base = tmp_path_factory.mktemp("wheel")
    source = copy_working_tree(base / "src")
    dist = base / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(source)],
        base, 300)
    (wheel,) = dist.glob("trustfleet-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], base, 120)
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", f"{wheel}[testing]"], base, 600)
    return {"wheel": wheel, "python": python, "venv": venv, "base": base}


@pytest.mark.timeout(900)
def test_the_wheel_installs_the_package_and_its_pytest11_plugin_into_a_fresh_venv(installed):
    with zipfile.ZipFile(installed["wheel"]) as whl:
        (entry_points,) = [n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt")]
        declared = whl.read(entry_points).decode()
    assert f"[pytest11]\n{PLUGIN}\n" in declared

    probe = json.loads(run([str(installed["python"]), "-c", PROBE], installed["base"], 60).stdout)
    purelib = Path(probe["purelib"]).resolve()
    assert purelib.is_relative_to(installed["venv"].resolve())
    for module in ("package", "plugin"):
        path = Path(probe[module]).resolve()
        assert path.is_relative_to(purelib) and not path.is_relative_to(REPO), probe
    name, value = PLUGIN.split(" = ")
    assert [name, value, "trustfleet"] in probe["pytest11"], probe


@pytest.mark.timeout(900)
def test_the_docs_examples_pass_as_a_users_tests_with_the_venvs_pytest(installed, tmp_path):
    assert not tmp_path.resolve().is_relative_to(REPO)
    write_user_tests(tmp_path)
    done = run_user_pytest(installed["python"], tmp_path, "-ra")
    said = done.stdout + done.stderr
    assert (outcome_count(done, "passed"), outcome_count(done, "failed"),
            outcome_count(done, "error")) == (3, 0, 0), said
    assert "skipped" not in said.lower() and "SKIP" not in said, said
    assert done.returncode == 0, said
