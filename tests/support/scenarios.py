"""MicroPython scenario scripts, kept as real files in tests/scenarios/ so that ruff lints them.

Each one is plain MicroPython-safe Python that a test runs as text: exec'd on
CPython, run in the WebAssembly VM or on the unix port, or written there as a
module. Parameters reach it the way they always did (the test's own calls).
"""

from __future__ import annotations

from pathlib import Path

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def scenario(name: str) -> str:
    """The text of tests/scenarios/<name>."""
    return (SCENARIOS / name).read_text(encoding="utf-8")
