"""trustfleet device core: MicroPython-safe, sans-I/O.

Everything in this package runs unchanged on MicroPython (ESP32) and
CPython (Raspberry Pi). It takes bytes, the time and stored state and
decides; transports/ beside it do the I/O (docs/architecture.md).
"""

VERSION = "0.1.0"

try:
    # CPython with cbor2: cbor.decode gives the same answers several times faster.
    import trustfleet_device._cpython.cbor  # noqa: F401
except ImportError:
    pass
