"""A stand-in for the venv tools/install-pi.sh makes: /opt/trustfleet under an install root, with
this test run's Python and the checkout's packages, for tests that skip the real pip install."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stand_in_venv(install_root: Path) -> None:
    """/opt/trustfleet/bin/{python,trustfleet-agent} in `install_root`."""
    bindir = install_root / "opt" / "trustfleet" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python").symlink_to(sys.executable)
    agent = bindir / "trustfleet-agent"
    path = os.pathsep.join(str(REPO / d) for d in ("device", "server"))
    agent.write_text(f'#!/bin/sh\nPYTHONPATH="{path}" exec "{sys.executable}" '
                     '-m trustfleet_pi.cli "$@"\n')
    agent.chmod(0o755)
