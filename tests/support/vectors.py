"""Where the outside conformance data lives: tests/vectors/, unmodified copies kept in the repo.

tests/vectors/README.md names each file's source, licence and sha256
(tests/test_vectors_copies.py holds the copies to those sums). Set
TRUSTFLEET_VECTORS to read a directory of the same layout instead. The data
is always there, so nothing here skips: a missing file is an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

COPIES = Path(__file__).resolve().parents[1] / "vectors"


def vectors_dir() -> Path:
    override = os.environ.get("TRUSTFLEET_VECTORS")
    return Path(override) if override else COPIES


def require(path: Path) -> Path:
    """Return path; raise FileNotFoundError naming it if it is not there."""
    if not path.exists():
        raise FileNotFoundError(f"conformance vectors not found at {path} (see tests/vectors/"
                                "README.md; TRUSTFLEET_VECTORS, if set, must have the same layout)")
    return path


def load_json(*parts: str):
    with open(require(vectors_dir().joinpath(*parts)), encoding="utf-8") as f:
        return json.load(f)


def cose_examples(folder: str) -> list[tuple[str, dict]]:
    """(file name, parsed JSON) for every example in a cose-wg folder, sorted by name."""
    base = require(vectors_dir() / "cose-wg" / folder)
    found = [(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in sorted(base.glob("*.json"))]
    if not found:
        raise FileNotFoundError(f"no COSE examples in {base}")
    return found
