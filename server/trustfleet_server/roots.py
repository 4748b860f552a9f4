"""Root payloads: the keys and thresholds of each role, as `trustfleet root create|rotate` build them."""

from __future__ import annotations

from collections.abc import Sequence

from trustfleet_device import documents as device_docs
from trustfleet_server import documents, keys, spec
from trustfleet_server.errors import UsageError


def _split(item: str, what: str) -> tuple[str, str]:
    role, sep, value = item.partition("=")
    if not sep or role not in device_docs.ROLES:
        raise UsageError(f"{what} {item!r}: expected ROLE=VALUE with ROLE one of "
                           f"{', '.join(device_docs.ROLES)}")
    return role, value


def apply_changes(keymap: dict[bytes, bytes], roles: dict[str, dict], *, add: Sequence[str] = (),
                  remove: Sequence[str] = (), thresholds: Sequence[str] = ()) -> None:
    """Apply --remove-key, --key and --threshold items (ROLE=VALUE) to a root's keys and roles.

    keymap maps kid -> SPKI DER; roles maps role -> {"keys": [kid], "threshold": n}.
    Raises: UsageError naming the item.
    """
    for item in remove:
        role, prefix = _split(item, "--remove-key")
        if len(prefix) < 8:
            raise UsageError(f"--remove-key {item!r}: give at least 8 hex characters of the kid")
        matches = [k for k in roles[role]["keys"] if k.hex().startswith(prefix.lower())]
        if len(matches) != 1:
            raise UsageError(f"--remove-key {item!r}: matches {len(matches)} {role} keys")
        roles[role]["keys"].remove(matches[0])
    for item in add:
        role, path = _split(item, "--key")
        public = keys.load_public_key(path)
        kid = keys.kid_of(public)
        keymap[kid] = keys.spki_der(public)
        if kid in roles[role]["keys"]:
            raise UsageError(f"--key {item!r}: key {kid.hex()[:8]} is already a {role} key")
        roles[role]["keys"].append(kid)
    for item in thresholds:
        role, value = _split(item, "--threshold")
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"--threshold {item!r}: expected a positive integer")
        roles[role]["threshold"] = int(value)
    for role in device_docs.ROLES:
        r = roles[role]
        if not r["keys"]:
            raise UsageError(f"role {role!r} has no keys; add one with --key {role}=PUBKEY")
        if r["threshold"] > len(r["keys"]):
            raise UsageError(f"role {role!r}: threshold {r['threshold']} but only "
                               f"{len(r['keys'])} key(s); it could never be met")
    # Keep only keys some role still uses: a removed key must not linger.
    used = {k for r in roles.values() for k in r["keys"]}
    for kid in list(keymap):
        if kid not in used:
            del keymap[kid]


MIN_TIME_LEAD: int = device_docs.MIN_TIME_LEAD
MAX_TIME_LEAD: int = device_docs.MAX_TIME_LEAD


def parse_time_lead(text: str) -> int:
    """--max-time-lead: a duration from 1h to 400d, in seconds. Raises: UsageError."""
    seconds = spec.parse_duration(text, "--max-time-lead")
    if not MIN_TIME_LEAD <= seconds <= MAX_TIME_LEAD:
        raise UsageError(f"--max-time-lead: {text} is not between 1h and 400d")
    return seconds


def root_payload(fleet: str, version: int, expires: int, keymap: dict, roles: dict,
                 time_lead: int | None = None) -> bytes:
    """The unsigned root payload. Raises: UsageError for a version devices would refuse."""
    if not 1 <= version <= spec.MAX_VERSION:
        raise UsageError(f"root v{version}: versions run from 1 to {spec.MAX_VERSION}, the highest "
                         f"version devices accept; a root at the top can never be rotated")
    payload = {
        "type": "root", "spec": device_docs.SPEC, "fleet": fleet, "version": version,
        "expires": expires, "keys": sorted(keymap.values()),
        "roles": {name: {"keys": r["keys"], "threshold": r["threshold"]} for name, r in roles.items()},
    }
    if time_lead is not None:
        payload["policy"] = {"max_time_lead": time_lead}
    return documents.encode_payload(payload)
