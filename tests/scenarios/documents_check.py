import binascii
import json  # noqa: F401 (the calls the tests send print json.dumps)

from trustfleet_device import policy


def _hex(b):
    return binascii.hexlify(b).decode()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def summary(b):
    return {
        "version": b.version, "fleet": b.fleet, "issued_at": b.issued_at,
        "expires_at": b.expires_at, "anchors": len(b.anchors),
        "full_anchors": [_hex(a.der[:16]) for a in b.anchors if a.der is not None],
        "compact_anchors": [[_hex(a.spki), a.not_after, a.label] for a in b.anchors if a.der is None],
        "domains": [p.domain for p in b.pinsets], "pins": [[_hex(x) for x in p.pins] for p in b.pinsets],
        "single_pin": [p.allow_single_pin for p in b.pinsets],
        "distrust": [_hex(d) for d in b.distrust],
        "policy": [b.policy.user_anchors, b.policy.max_timestamp_age],
    }


def check(kind, root_raw, raw, chain, installed=None, now=None, last_time=None):
    try:
        root = policy.walk_root_chain(policy.load_trusted_root(root_raw), chain)
        if kind == "bundle":
            value = summary(policy.verify_bundle(root, raw, installed_version=installed, now=now))
        elif kind == "timestamp":
            ts = policy.verify_timestamp(root, raw, last_time=last_time)
            value = {"time": ts.time, "bundle_version": ts.bundle_version,
                     "bundle_sha256": _hex(ts.bundle_sha256)}
        else:
            value = {"version": root.version, "fleet": root.fleet,
                     "roles": [[n, sorted([_hex(k) for k in root.roles[n].kids]), root.roles[n].threshold]
                               for n in ("root", "bundle", "timestamp")]}
    except Exception as e:  # any class: a non-BundleError here shows up by name in the comparison
        return {"ok": False, "error": type(e).__name__, "message": str(e)}
    return {"ok": True, "value": value}
