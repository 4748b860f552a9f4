"""Shared pytest configuration for trustfleet."""

from __future__ import annotations

import os

import pytest

from mpyvm import MicroPythonVM, available

_MPY_FIXTURES = ("mpy", "mpy_fresh")


def _require_vm() -> None:
    """Skip when the VM cannot run here; under CI=true fail instead (no skips in CI)."""
    ok, why = available()
    if ok:
        return
    reason = f"node or npm package missing: run `make test`, which runs npm ci ({why})"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the VM carry the `micropython` marker (declared in pyproject).
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in _MPY_FIXTURES):
            item.add_marker(pytest.mark.micropython)


@pytest.fixture(scope="session")
def mpy():
    """A started MicroPythonVM shared by the session (state persists between tests)."""
    _require_vm()
    with MicroPythonVM() as vm:
        yield vm


@pytest.fixture
def mpy_fresh(mpy):
    """The session VM, reset to a fresh interpreter before the test."""
    mpy.reset()
    return mpy
