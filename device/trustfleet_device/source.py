"""Byte sources: a document in RAM or in a file, read by offset.

The stream decoder, COSE verification and lazy anchors read documents
through `read_at(offset, n)`, so a 150-root bundle can be checked and used
from flash without ever being in RAM whole.
"""


class BytesSource:
    """A document already in memory."""

    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def read_at(self, offset, n):
        return self.data[offset:offset + n]

    def close(self):
        pass


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
