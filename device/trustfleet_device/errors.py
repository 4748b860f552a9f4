"""Typed errors for the device core.

Two branches under one root: "the document is bad" (BundleError and its
children) and "this device failed" (DeviceError and its children). Caller
mistakes stay ValueError/TypeError. Messages explain themselves, because
MicroPython drops exception causes, and they never carry key material.
"""


class TrustfleetError(Exception):
    """Root of every error trustfleet raises on purpose."""


class BundleError(TrustfleetError):
    """The document (root, bundle or timestamp) is not acceptable."""


class DecodeError(BundleError):
    """Bytes are not well-formed, deterministic CBOR/COSE of our schema."""


class LimitError(DecodeError):
    """An input exceeds a hard cap (size, depth, count, length)."""


class SignatureError(BundleError):
    """Signatures are missing, invalid, below threshold or of an unknown algorithm."""


class RollbackError(BundleError):
    """The document's version is not newer than the one already trusted."""


class OlderError(RollbackError):
    """A validly signed document OLDER than the one installed: a stale copy (a retained
    message on another topic during a rollout), refused but not reported."""


class ExpiredError(BundleError):
    """The document has expired at the trusted time."""


class PolicyError(BundleError):
    """The document is well-formed and signed but breaks a trust rule."""


class DeviceError(TrustfleetError):
    """The device itself failed (storage, transport), not the document."""


class StorageError(DeviceError):
    """Reading or writing persistent state failed."""


class TransportError(DeviceError):
    """Talking to the broker or a mirror failed."""
