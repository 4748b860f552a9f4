"""Storage adapters: the only device code that touches the filesystem.

Each adapter offers the same calls: read, write (atomic replace), remove,
exists, names, plus open_write (the same atomic replace, fed in chunks) and
source (a document read by offset: FileSource here, source.BytesSource in
memory). `write` is the single durability primitive the A/B store builds
on: after a power cut a file holds either its old content or its new
content, never a mix.

- DirStorage: a directory, through `os`. On Linux it writes a temp file,
  fsyncs it, renames it over the target and fsyncs the directory. On a
  MicroPython board (littlefs) rename over an existing file is atomic and
  there is no fsync; closing the file commits it.
- MemStorage: a dictionary, for tests and the simulator. It can "cut power"
  after a chosen number of primitive operations, leaving torn temp files
  behind as a real cut would.

Knows nothing about crypto or documents.
"""

import os

from trustfleet_device.errors import StorageError
from trustfleet_device.source import BytesSource

_TMP = ".tmp"


class FileSource:
    """A document in a file, opened on first read and kept open until close()."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.f = None

    def read_at(self, offset, n):
        if self.f is None:
            self.f = open(self.path, "rb")
        self.f.seek(offset)
        return self.f.read(n)

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


class PowerCut(Exception):
    """Raised by MemStorage when its simulated power fails (tests only)."""


class DirStorage:
    """Files in one directory on a real filesystem."""

    def __init__(self, root):
        self.root = root
        try:
            os.stat(root)
        except OSError:
            raise StorageError("state directory %s does not exist" % root)
        self._sweep_temp()

    def _path(self, name):
        return self.root + "/" + name

    def _sweep_temp(self):
        # A cut during write leaves name.tmp behind: it was never renamed,
        # so it never counted. Remove it at start-up.
        for name in os.listdir(self.root):
            if name.endswith(_TMP):
                try:
                    os.remove(self._path(name))
                except OSError:
                    pass

    def read(self, name):
        """Return the file's bytes, or None when it does not exist. Raises: StorageError."""
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except OSError as exc:
            if _missing(exc, self._path(name)):
                return None
            raise StorageError("cannot read %s: %s" % (name, exc))

    def write(self, name, data):
        """Atomically replace `name` with `data`. Raises: StorageError."""
        tmp = self._path(name + _TMP)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                _fsync(f)
            os.rename(tmp, self._path(name))
            _fsync_dir(self.root)
        except OSError as exc:
            raise StorageError("cannot write %s: %s" % (name, exc))

    def remove(self, name):
        """Delete `name` if it exists. Raises: StorageError."""
        try:
            os.remove(self._path(name))
        except OSError as exc:
            if not _missing(exc, self._path(name)):
                raise StorageError("cannot remove %s: %s" % (name, exc))

    def exists(self, name):
        try:
            os.stat(self._path(name))
            return True
        except OSError:
            return False

    def names(self):
        return sorted(n for n in os.listdir(self.root) if not n.endswith(_TMP))

    def open_write(self, name):
        """A chunked atomic write: the file appears complete at close(), or not at all."""
        return _DirWriter(self, name)

    def source(self, name):
        """A FileSource over `name`, or None when it does not exist."""
        try:
            size = os.stat(self._path(name))[6]
        except OSError:
            return None
        return FileSource(self._path(name), size)


class _DirWriter:
    def __init__(self, storage, name):
        self.storage = storage
        self.name = name
        self.tmp = storage._path(name + _TMP)
        try:
            self.f = open(self.tmp, "wb")
        except OSError as exc:
            raise StorageError("cannot write %s: %s" % (name, exc))

    def write(self, data):
        try:
            self.f.write(data)
        except OSError as exc:
            self.abort()
            raise StorageError("cannot write %s: %s" % (self.name, exc))

    def close(self):
        try:
            self.f.flush()
            _fsync(self.f)
            self.f.close()
            os.rename(self.tmp, self.storage._path(self.name))
            _fsync_dir(self.storage.root)
        except OSError as exc:
            raise StorageError("cannot write %s: %s" % (self.name, exc))

    def abort(self):
        try:
            self.f.close()
            os.remove(self.tmp)
        except OSError:
            pass


def _missing(exc, path):
    # Errno numbers differ between ports (Emscripten's ENOENT is 44): decide by behaviour.
    try:
        os.stat(path)
        return False
    except OSError:
        return True


def _fsync(f):
    fsync = getattr(os, "fsync", None)
    if fsync is not None:
        fsync(f.fileno())


def _fsync_dir(path):
    fsync = getattr(os, "fsync", None)
    if fsync is None or not hasattr(os, "O_RDONLY"):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class MemStorage:
    """In-memory storage with simulated power cuts.

    Each write is two primitive operations (write the temp file, rename it),
    a remove is one. With `cut_after=k` the k+1-th operation fails with
    PowerCut; a cut while writing the temp file leaves it half written.
    `reboot()` returns what survives: the committed files only.
    """

    def __init__(self, files=None, cut_after=None):
        self.files = dict(files) if files else {}
        self.cut_after = cut_after
        self.ops = 0

    def _tick(self):
        if self.cut_after is not None and self.ops >= self.cut_after:
            raise PowerCut("power cut after %d operations" % self.ops)
        self.ops += 1

    def read(self, name):
        data = self.files.get(name)
        return None if data is None else bytes(data)

    def write(self, name, data):
        data = bytes(data)
        try:
            self._tick()
        except PowerCut:
            self.files[name + _TMP] = data[:len(data) // 2]
            raise
        self.files[name + _TMP] = data
        self._tick()
        self.files[name] = self.files.pop(name + _TMP)

    def remove(self, name):
        self._tick()
        self.files.pop(name, None)

    def exists(self, name):
        return name in self.files

    def names(self):
        return sorted(n for n in self.files if not n.endswith(_TMP))

    def open_write(self, name):
        return _MemWriter(self, name)

    def source(self, name):
        data = self.files.get(name)
        return None if data is None else BytesSource(bytes(data))

    def reboot(self):
        """A fresh storage over what a real board would find after the cut."""
        survivors = {}
        for name, data in self.files.items():
            if not name.endswith(_TMP):
                survivors[name] = data
        return MemStorage(survivors)


class _MemWriter:
    """Chunks go to name.tmp; close() is the rename (two operations, like write)."""

    def __init__(self, storage, name):
        self.storage = storage
        self.name = name
        self.parts = []

    def write(self, data):
        self.parts.append(bytes(data))

    def close(self):
        self.storage.write(self.name, b"".join(self.parts))

    def abort(self):
        self.parts = []
