"""Writing and reading files safely on CPython (the Pi agent and the operator's machine).

Writes are atomic: a temp file in the same directory, fsync, rename, fsync
of the directory, so a crash leaves the old file or the new one, never half.
Missing parent folders are made first, and errors name the caller's path.
Reads are capped so a wrong path (a disk image, /dev/zero) fails fast.
The server imports this module too: imports point from server to device.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from trustfleet_device.errors import LimitError


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *,
                 folder_mode: int = 0o777) -> None:
    """Replace `path` with `data` atomically, with permission bits `mode`.

    Missing parent folders are created (with `folder_mode`, narrowed by the
    umask). Every OSError names `path` itself, never the temp file: a path
    that is a folder, or under a file, is refused before anything is written.
    """
    named = os.fspath(path)
    path = Path(path)
    if path.is_dir() or named.endswith(("/", os.sep)):
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", named)
    make_parents(path, folder_mode)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        write_fd(fd, data, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise
    fsync_directory(path.parent)


def make_parents(path: str | os.PathLike[str], folder_mode: int = 0o777) -> None:
    """Create the missing folders above `path`, each with `folder_mode` (narrowed by the umask).

    Raises:
        OSError naming `path`: an ancestor is a file, or a folder cannot be made.
    """
    path = Path(path)
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # dangling: do not create its target
            raise FileNotFoundError(errno.ENOENT, f"{parent} is a broken link", str(path))
        missing.append(parent)
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot create it: {parent} is a file, not a folder", str(path))
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=folder_mode)
        except FileExistsError:
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"cannot create it: {folder} is a file, not a folder",
                                         str(path)) from None
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the folder {folder}: {exc.strerror or exc}",
                          str(path)) from None


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error, naming the user's `path` rather than a temp file."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


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
