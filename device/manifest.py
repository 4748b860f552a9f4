# ruff: noqa: F821 -- metadata() and package() are provided by MicroPython's manifest tool.
# The trustfleet device core, for freezing into firmware (FROZEN_MANIFEST) or
# `mpremote mip install`. The board's application is transports/board.py, frozen
# with the rest; the entry points board/boot.py and board/main.py (a few lines that
# start it) are copied to the filesystem: see board/README.md.
# _cpython/ is left out on purpose: it is CPython-only (the cbor2 path, host files).
# The core files come first; transports/ (storage, runner, MQTT) are the I/O around it.
# tests/test_micropython_agent.py checks this list against the package.

metadata(
    description="trustfleet device agent: keeps the TLS trust store of a fleet current "
    "(signed bundles, A/B slots, pins with fail-open expiry).",
    version="0.1.0",
)

package(
    "trustfleet_device",
    files=(
        "__init__.py",
        "agent.py",
        "backoff.py",
        "cbor.py",
        "cose.py",
        "ct.py",
        "documents.py",
        "errors.py",
        "limits.py",
        "p256.py",
        "policy.py",
        "reports.py",
        "session.py",
        "sigcheck.py",
        "slots.py",
        "source.py",
        "status.py",
        "topics.py",
        "trust.py",
        "x509.py",
        "transports/__init__.py",
        "transports/board.py",
        "transports/mqtt.py",
        "transports/runner.py",
        "transports/storage.py",
    ),
    base_path=".",
)
