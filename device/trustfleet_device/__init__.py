"""trustfleet device core: MicroPython-safe, sans-I/O.

Everything in this package runs unchanged on MicroPython (ESP32) and
CPython (Raspberry Pi). It takes bytes, the time and stored state and
decides; adapters elsewhere do the I/O.
"""

VERSION = "0.1.0"
