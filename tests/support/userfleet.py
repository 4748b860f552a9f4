"""docs/testing.md's fleet tests as a user's test file, run by a pytest of its own.

    path = write_user_tests(tmp_path)            # test_user_fleet.py, outside the repository
    run = run_user_pytest(sys.executable, tmp_path)
    assert passed(run) == 3

The examples are the ```python blocks of the "Your first fleet tests" section,
unmodified, joined into one module (their imports deduplicated at the top).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "testing.md"
SECTION = "## Your first fleet tests"
TIMEOUT = 600


def docs_examples() -> list[str]:
    """The python blocks of docs/testing.md's first-tests section, in order."""
    text = DOCS.read_text(encoding="utf-8")
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def user_module(examples: list[str] | None = None) -> str:
    """One test module: every example's imports first (once each), then the examples."""
    imports: list[str] = []
    bodies = []
    for block in examples if examples is not None else docs_examples():
        lines = block.splitlines()
        for line in lines:
            if line.startswith(("import ", "from ")) and line not in imports:
                imports.append(line)
        bodies.append("\n".join(ln for ln in lines if not ln.startswith(("import ", "from "))).strip())
    return "\n".join(imports) + "\n\n\n" + "\n\n\n".join(bodies) + "\n"


def write_user_tests(folder: Path, examples: list[str] | None = None,
                     name: str = "test_user_fleet.py") -> Path:
    path = folder / name
    path.write_text(user_module(examples), encoding="utf-8")
    return path


def run_user_pytest(python: str | Path, folder: Path, *args: str,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m pytest` in `folder` (its own rootdir: none of our conftest or settings)."""
    full = {**os.environ, **(env or {})}
    full.pop("PYTHONPATH", None)
    return subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "--rootdir", str(folder), *args, str(folder)],
                          cwd=folder, env=full, capture_output=True, text=True, timeout=TIMEOUT)


def outcome_count(run: subprocess.CompletedProcess, word: str) -> int:
    """How many tests the summary line says `word` (passed, failed, error)."""
    found = re.findall(rf"(\d+) {word}", run.stdout.splitlines()[-1] if run.stdout else "")
    return int(found[0]) if found else 0
