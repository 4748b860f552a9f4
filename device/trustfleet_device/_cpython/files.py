"""Writing and reading files safely on CPython (the Pi agent and the operator's machine).

Writes are atomic: a temp file in the same directory, fsync, rename, fsync
of the directory, so a crash leaves the old file or the new one, never half.
Reads are capped so a wrong path (a disk image, /dev/zero) fails fast.
The server imports this module too: imports point from server to device.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from trustfleet_device.errors import LimitError


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically, with permission bits `mode`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        write_fd(fd, data, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def write_fd(fd: int, data: bytes, mode: int) -> None:
    """Write data to a new file's descriptor with exactly `mode`, fsync and close it."""
    with os.fdopen(fd, "wb") as f:
        # Set the exact mode: umask may have narrowed it, and mkstemp's 0600
        # or O_EXCL's mode can never have been wider.
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a directory's new entries durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_capped(path: str | os.PathLike[str], limit: int) -> bytes:
    """Read a whole file, refusing one larger than `limit` bytes. Raises: LimitError, OSError."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LimitError(f"{path}: larger than the {limit}-byte document limit")
    return data
