"""The demos: the offline walk-through and the fleet demo.

Both write into one output folder (`--out`) and never touch a folder that
is not theirs. A folder is the demos' own when it holds the MARKER file,
which they write into every folder they start in (a new one, created with
its parents, or an empty one). A re-run clears from such a folder only the
names the demos write (OUTPUTS); anything else in it is left alone. A
non-empty folder without the marker (a user's folder, `.`, home) is refused
before anything is written or started.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

from trustfleet_server.errors import UsageError

MARKER = ".trustfleet-demo"
MARKER_TEXT = ("This folder was made by `trustfleet demo`. A re-run replaces what the demo wrote here\n"
               "(keys, certs, bundles, the fleet database, device and broker state); other files\n"
               "are left alone.\n")

# Every top-level name either demo writes into its folder (both share the default `demo-out`).
OUTPUTS = ("keys", "certs", "root.cose", "bundle-v*.toml", "bundle-v*.cose", "device-state",
           "fleet.db", "fleet.db-*", "broker", "esp-board-1", "esp-board-1.json", "esp-board-1.log")


def is_output(name: str) -> bool:
    """Whether `name` (a top-level entry of the folder) is something a demo writes."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OUTPUTS)


def prepare_out(out: Path) -> None:
    """Make `out` ready for a demo run, or refuse it without touching anything.

    Raises:
        UsageError: `out` is not a folder, or is a non-empty folder without MARKER.
    """
    if not out.exists() and not out.is_symlink():
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"{out}: cannot create the demo's folder: {exc.strerror or exc}") from None
    elif not out.is_dir():
        raise UsageError(f"{out}: not a folder; give --out a new or empty folder for the demo's files")
    else:
        entries = sorted(os.listdir(out))
        if entries and MARKER not in entries:
            raise UsageError(f"{out}: not empty and not made by the demo (no {MARKER}); nothing touched: "
                             f"give --out a new or empty folder (an older demo's folder: delete it yourself)")
        for name in entries:
            if is_output(name):
                _remove(out / name)
    (out / MARKER).write_text(MARKER_TEXT)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
