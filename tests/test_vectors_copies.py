"""tests/vectors/ holds unmodified upstream files: each one's sha256 is the one its README lists.

A file changed by hand (or by an editor's end-of-line conversion), a missing
file or an unlisted one fails here. The tests read the copies through
tests/support/vectors.py, which looks nowhere else unless TRUSTFLEET_VECTORS says so.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from support import vectors

ROW = re.compile(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$")
NOT_VECTORS = {"README.md", ".gitattributes"}


def listed() -> dict[str, str]:
    text = (vectors.COPIES / "README.md").read_text(encoding="utf-8")
    rows = [m.groups() for m in map(ROW.match, text.splitlines()) if m]
    sums = dict(rows)
    assert len(sums) == len(rows), "a file is listed twice"
    return sums


def test_every_copy_has_the_sha256_its_readme_lists():
    sums = listed()
    on_disk = {p.relative_to(vectors.COPIES).as_posix() for p in vectors.COPIES.rglob("*")
               if p.is_file() and p.name not in NOT_VECTORS}
    assert sorted(on_disk - set(sums)) == [], "files in tests/vectors/ missing from its README"
    assert sorted(set(sums) - on_disk) == [], "files listed in tests/vectors/README.md are missing"
    changed = [name for name, want in sorted(sums.items())
               if hashlib.sha256((vectors.COPIES / name).read_bytes()).hexdigest() != want]
    assert changed == [], f"changed since they were copied from upstream: {changed}"


def test_each_source_keeps_its_licence_beside_it():
    sums = listed()
    assert {"wycheproof/LICENSE", "cose-wg/LICENSE"} <= set(sums)
    # cbor/test-vectors states no licence; the README says so instead of copying one.
    assert "states no licence" in (vectors.COPIES / "README.md").read_text(encoding="utf-8")


def test_tests_read_the_repository_copies_by_default(monkeypatch):
    monkeypatch.delenv("TRUSTFLEET_VECTORS", raising=False)
    assert vectors.vectors_dir() == vectors.COPIES
    assert len(vectors.load_json("cbor", "appendix_a.json")) == 82
    assert {name for name, _ in vectors.cose_examples("sign1-tests")} >= {"sign-pass-01.json"}
    monkeypatch.setenv("TRUSTFLEET_VECTORS", "/nonexistent/vectors")
    with pytest.raises(FileNotFoundError, match="/nonexistent/vectors"):  # an error, not a skip
        vectors.load_json("cbor", "appendix_a.json")
