"""The no-skip rule (tests/support/environment.py, tests/conftest.py) on a throwaway suite.

A small suite with every way of skipping runs in a child pytest that loads
this directory's conftest as a plugin: without CI each case skips with its
reason; under CI=true each one fails with that reason, and so does a test
module that collects nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = '''
import pytest
from support.environment import require, require_tool, skip_or_fail


@pytest.fixture
def needs_root_here():
    require(False, "reason-fixture")


def test_plain_skip():
    pytest.skip("reason-plain")


@pytest.mark.skipif(True, reason="reason-skipif")
def test_skipif_mark():
    pass


@pytest.mark.skip(reason="reason-skip-mark")
def test_skip_mark():
    pass


def test_helper():
    skip_or_fail("reason-helper")


def test_missing_tool():
    require_tool("no-such-tool-for-trustfleet", "reason-tool")


def test_in_a_fixture(needs_root_here):
    pass


def test_runs():
    assert True
'''

MODULE_SKIP = '''
import pytest

pytest.importorskip("no_such_module_for_trustfleet", reason="reason-importorskip")


def test_never_runs():
    pass
'''

EMPTY = '''
"""Nothing to collect here."""
'''

SKIPPED = ["reason-fixture", "reason-plain", "reason-skipif", "reason-skip-mark",
           "reason-helper", "reason-tool", "reason-importorskip"]


def run_suite(tmp_path: Path, ci: bool) -> tuple[dict[str, int], str]:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_cases.py").write_text(CASES)
    (suite / "test_module_skip.py").write_text(MODULE_SKIP)
    (suite / "test_empty.py").write_text(EMPTY)
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA",
         "--continue-on-collection-errors", f"--junitxml={report}", "--rootdir", str(suite),
         "-c", os.devnull, str(suite)],
        capture_output=True, text=True, timeout=120, cwd=suite, env=env)
    suite_node = ET.parse(report).getroot().find("testsuite")
    counts = {k: int(suite_node.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    return counts, proc.stdout + proc.stderr


def test_without_ci_each_case_skips_with_its_reason(tmp_path):
    counts, out = run_suite(tmp_path, ci=False)
    assert (counts["failures"], counts["errors"], counts["skipped"]) == (0, 0, len(SKIPPED)), out
    for reason in SKIPPED:
        assert reason in out, (reason, out)
    assert "1 passed" in out


def test_under_ci_each_case_fails_with_its_reason(tmp_path):
    counts, out = run_suite(tmp_path, ci=True)
    assert counts["skipped"] == 0, out
    # The empty module and the module-level skip are collection errors; the rest fail or error
    # (a failing fixture is an error in setup).
    assert counts["failures"] + counts["errors"] == len(SKIPPED) + 1, (counts, out)
    for reason in SKIPPED:
        assert reason in out, (reason, out)
    assert "no tests collected (CI=true)" in out
    assert "1 passed" in out
