"""Byte sources: a document read by offset.

The stream decoder, COSE verification and lazy anchors read documents
through `read_at(offset, n)` (and know their `size`), so a 150-root bundle
can be checked and used from flash without ever being in RAM whole. The
core only reads sources; the one over a file (FileSource) opens it, so it
lives with the storage adapters in transports/storage.py.
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
