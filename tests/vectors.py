"""Where the outside conformance data lives: ../shared/vectors, read in place.

Set TRUSTFLEET_VECTORS to point elsewhere. Tests never copy these files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def vectors_dir() -> Path:
    override = os.environ.get("TRUSTFLEET_VECTORS")
    return Path(override) if override else REPO.parent / "shared" / "vectors"


def require(path: Path) -> Path:
    """Return path if it exists. Otherwise skip the calling test module, or fail under CI."""
    if path.exists():
        return path
    reason = (f"conformance vectors not found at {path}: check out ../shared beside the project "
              "or set TRUSTFLEET_VECTORS")
    if os.environ.get("CI", "").lower() in ("true", "1"):
        raise FileNotFoundError(reason)
    pytest.skip(reason, allow_module_level=True)
    raise AssertionError("unreachable")


def load_json(*parts: str):
    with open(require(vectors_dir().joinpath(*parts)), encoding="utf-8") as f:
        return json.load(f)


def cose_examples(folder: str) -> list[tuple[str, dict]]:
    """(file name, parsed JSON) for every example in a cose-wg folder, sorted by name."""
    base = require(vectors_dir() / "cose-wg" / folder)
    return [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in sorted(base.glob("*.json"))]
