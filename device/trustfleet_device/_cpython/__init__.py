"""CPython-only code: the cbor2 fast path and host file helpers (never shipped to a board)."""
