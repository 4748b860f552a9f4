# ruff: noqa: F821 -- metadata() and package() are provided by MicroPython's manifest tool.
# The trustfleet device core, for freezing into firmware (FROZEN_MANIFEST) or
# `mpremote mip install`. Board entry points (board/boot.py, board/main.py)
# are copied to the filesystem, not frozen: see board/README.md.
# _cbor_fast.py is left out on purpose: it is the CPython-only cbor2 path.
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
        "bundle.py",
        "cbor.py",
        "cose.py",
        "ct.py",
        "errors.py",
        "limits.py",
        "mqtt.py",
        "p256.py",
        "policy.py",
        "reports.py",
        "runner.py",
        "session.py",
        "sigcheck.py",
        "source.py",
        "storage.py",
        "store.py",
        "topics.py",
        "trust.py",
        "x509.py",
    ),
    base_path=".",
)
