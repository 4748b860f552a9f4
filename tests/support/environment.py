"""The one rule for tests that need something from the machine: skip here, fail under CI.

A test that needs a tool, a service or root asks through this module. On a
developer's machine a missing piece skips the test with a reason that says
how to get it (pytest's -ra prints it). Under CI=true the same call fails
the test: CI must run everything, so a missing tool is CI's fault to fix,
not a quiet pass.

tests/conftest.py enforces the rule for every other kind of skip too
(pytest.skip, skipif marks, importorskip, module-level skips): under
CI=true each one is reported as a failure with its reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when CI=true (or 1): no test may skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the running test with `reason`; under CI=true fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true allows no skips]", pytrace=False)
    # As pytest.skip(reason), but -ra names the test's file and line rather than this one
    # (the flag pytest itself sets for skip marks).
    raise pytest.skip.Exception(reason, _use_item_location=True)


def require(condition: object, reason: str) -> None:
    """Go on if `condition` holds, else skip_or_fail(reason)."""
    if not condition:
        skip_or_fail(reason)


def require_tool(name: str, how_to_get: str, also: Iterable[str | Path] = ()) -> str:
    """The path of executable `name`: from PATH, else the first executable of `also`.

    Missing: skip_or_fail, with `how_to_get` (e.g. "apt-get install systemd") in the reason.
    """
    found = shutil.which(name) or next(
        (str(p) for p in also if os.path.isfile(p) and os.access(p, os.X_OK)), None)
    if found is None:
        skip_or_fail(f"{name} is not installed here ({how_to_get})")
    return found
