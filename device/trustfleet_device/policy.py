"""Acceptance rules: who must sign, which versions and times are acceptable.

Trusts only a Root it already holds (or one the operator hands over as the
first trust, e.g. in the factory image). Order, after TUF's client workflow:

1. Parse the envelope (cose.parse): shape only, payload untouched.
2. Count valid signatures from keys of the role in the trusted root. A key
   counts once however often it signs; signatures by keys outside the role,
   by unsupported algorithms or that do not verify are skipped and noted,
   not fatal, as long as the threshold is met. Unknown keys cost no ECDSA.
3. Only then decode the payload and check it (documents.parse_*).
4. Check version and time rules.

A new root must be signed by a threshold of the old root's root keys and by
a threshold of its own root keys, and its version must be exactly one more.
"""

from trustfleet_device import cose, documents, p256
from trustfleet_device.errors import (
    ExpiredError,
    OlderError,
    PolicyError,
    RollbackError,
    SignatureError,
)
from trustfleet_device.limits import DEFAULT


def count_signatures(msg, root, role_name):
    """Return (number of distinct role keys with a valid signature, list of notes on the rest)."""
    role = root.roles[role_name]
    counted = []
    notes = []
    for signer in msg.signers:
        kid = signer.kid
        if signer.problem is not None:
            notes.append("%s: %s" % (documents.kid_text(kid), signer.problem))
        elif kid is None or kid not in role.kids:
            notes.append("%s: not a %s key" % (documents.kid_text(kid), role_name))
        elif kid in counted:
            notes.append("%s: same key again, counted once" % documents.kid_text(kid))
        elif cose.verify_signer(msg, signer, root.keys[kid]):
            counted.append(kid)
        else:
            notes.append("%s: signature does not verify" % documents.kid_text(kid))
    return len(counted), notes


def check_threshold(msg, root, role_name, what):
    """Raise SignatureError unless a threshold of role keys signed msg."""
    need = root.roles[role_name].threshold
    got, notes = count_signatures(msg, root, role_name)
    if got < need:
        detail = ("; " + "; ".join(notes)) if notes else ""
        raise SignatureError("%s has %d valid %s signature(s), needs %d%s"
                             % (what, got, role_name, need, detail))
    return got


def check_version_newer(version, installed, what):
    """Raise RollbackError unless version > installed (OlderError when it is lower)."""
    if installed is not None and version <= installed:
        error = OlderError if version < installed else RollbackError
        raise error("%s version %d is not newer than installed version %d"
                    % (what, version, installed))


def check_not_expired(expires, now, what):
    """Raise ExpiredError when `now` (trusted time, seconds) is at or past `expires`."""
    if now is not None and now >= expires:
        raise ExpiredError("%s expired at %d, trusted time is %d" % (what, expires, now))


def load_trusted_root(raw, limits=DEFAULT, fleet=None):
    """Accept a root given as the first trust (factory image, operator's file).

    It must still be consistent: signed by a threshold of its own root keys.
    Raises: BundleError.
    """
    msg = cose.parse(raw, limits)
    root = documents.parse_root(msg.unverified_payload, limits, fleet)
    check_threshold(msg, root, "root", "root v%d" % root.version)
    _prepare_bundle_keys(root)
    return root


def _prepare_bundle_keys(root):
    """Keep the P-256 tables of the keys that sign bundles (pure path only): a bundle's
    signatures then verify warm, also on the first install after boot."""
    if p256.BACKEND == "pure":
        role = root.roles.get("bundle")
        if role is not None:
            p256.prepare([root.keys[k] for k in role.kids])


def verify_root_update(trusted, raw, limits=DEFAULT):
    """Verify the next root against the trusted one. Returns the new Root. Raises: BundleError."""
    msg = cose.parse(raw, limits)
    check_threshold(msg, trusted, "root", "new root (checked with root v%d keys)" % trusted.version)
    new = documents.parse_root(msg.unverified_payload, limits, trusted.fleet)
    if new.version <= trusted.version:
        raise RollbackError("root version %d is not newer than trusted version %d"
                            % (new.version, trusted.version))
    if new.version != trusted.version + 1:
        raise PolicyError("root version %d skips versions: expected %d"
                          % (new.version, trusted.version + 1))
    check_threshold(msg, new, "root", "new root v%d (checked with its own keys)" % new.version)
    _prepare_bundle_keys(new)
    return new


def walk_root_chain(trusted, raws, limits=DEFAULT):
    """Apply root updates one version at a time, at most limits.max_root_steps. Returns the last Root."""
    if len(raws) > limits.max_root_steps:
        raise PolicyError("%d root updates at once, limit is %d" % (len(raws), limits.max_root_steps))
    root = trusted
    for raw in raws:
        root = verify_root_update(root, raw, limits)
    return root


def verify_bundle(root, doc, limits=DEFAULT, installed_version=None, now=None):
    """Verify a signed bundle: bytes in memory, or a source (flash). Returns the Bundle. Raises: BundleError.

    From a source the bundle is never held whole: the payload streams
    through SHA-256 for each signature, then is parsed item by item, and
    the anchors and pin-sets stay in the source (documents.StoredItems).
    """
    msg = cose.parse(doc, limits)
    check_threshold(msg, root, "bundle", "bundle")
    payload = msg.unverified_payload
    if payload is None:
        payload = msg.source
    b = documents.parse_bundle(payload, limits, root.fleet, msg.payload_offset, msg.payload_length)
    check_version_newer(b.version, installed_version, "bundle")
    check_not_expired(b.expires_at, now, "bundle v%d" % b.version)
    return b


def verify_timestamp(root, raw, limits=DEFAULT, last_time=None):
    """Verify a signed timestamp. Refuses one older than the last accepted. Raises: BundleError."""
    msg = cose.parse(raw, limits)
    check_threshold(msg, root, "timestamp", "timestamp")
    ts = documents.parse_timestamp(msg.unverified_payload, limits, root.fleet)
    if last_time is not None and ts.time < last_time:
        raise RollbackError("timestamp time %d is older than the last accepted %d" % (ts.time, last_time))
    return ts
