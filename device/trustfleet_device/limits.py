"""Hard caps on every untrusted input, in one place.

Every decoder checks these before it allocates. A device picks smaller
numbers to fit its heap; the defaults fit a Raspberry Pi and the server.
"""


class Limits:
    """Caps applied while decoding and parsing documents.

    max_document: bytes in one signed document (the whole COSE object).
    max_depth: CBOR nesting depth.
    max_items: entries in any one array or map.
    max_total_items: data items in one decode, all levels together.
    max_string: bytes in one byte or text string inside a payload.
    max_signatures: signer entries in one COSE_Sign.
    max_anchors, max_pinsets, max_pins, max_distrust, max_keys: schema caps.
    max_root_steps: root versions walked in one update.
    """

    def __init__(self, max_document=512 * 1024, max_depth=16, max_items=4096,
                 max_total_items=65536, max_string=64 * 1024, max_signatures=16,
                 max_anchors=512, max_pinsets=512, max_pins=16, max_distrust=1024,
                 max_keys=64, max_root_steps=32):
        self.max_document = max_document
        self.max_depth = max_depth
        self.max_items = max_items
        self.max_total_items = max_total_items
        self.max_string = max_string
        self.max_signatures = max_signatures
        self.max_anchors = max_anchors
        self.max_pinsets = max_pinsets
        self.max_pins = max_pins
        self.max_distrust = max_distrust
        self.max_keys = max_keys
        self.max_root_steps = max_root_steps
        self._envelope = None

    def replace(self, **changes):
        """Return a copy with some caps changed."""
        new = Limits()
        for name in _NAMES:
            setattr(new, name, changes[name] if name in changes else getattr(self, name))
        return new

    def envelope(self):
        """Caps for the COSE envelope, whose payload string may be as big as the document."""
        env = self._envelope
        if env is None or env.max_document != self.max_document:
            env = self._envelope = self.replace(max_string=self.max_document)
        return env


_NAMES = ("max_document", "max_depth", "max_items", "max_total_items", "max_string",
          "max_signatures", "max_anchors", "max_pinsets", "max_pins", "max_distrust",
          "max_keys", "max_root_steps")


DEFAULT = Limits()

# An ESP32 without PSRAM has about 100 KB of free heap: keep every single
# allocation well under that. Large bundles stream from flash instead.
SMALL = Limits(max_document=160 * 1024, max_depth=12, max_items=1024,
               max_total_items=16384, max_string=8 * 1024, max_signatures=8,
               max_anchors=200, max_pinsets=128, max_pins=8, max_distrust=256,
               max_keys=16, max_root_steps=16)

