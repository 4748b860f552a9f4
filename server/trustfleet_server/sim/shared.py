"""What the simulated devices of one worker share: work whose result depends only on exact bytes.

Ten thousand real devices that receive the same signed bundle each spend the
same CPU on it: parse the envelope, check the signatures against the same
root, decode the same payload, parse the same server chain. The simulator
does that work once per distinct input and hands every device the result,
and leaves alone what makes each device real:

- `SharedChecks` stands in for the `policy` module inside each device's
  agent (`Agent.policy`). A root, bundle, timestamp or root update is
  verified for real the first time its exact bytes are seen under a given
  trusted root (the key is the SHA-256 of the bytes, the root object and
  the limits); a document whose bytes differ by one bit has another digest
  and is verified on its own, so a forged or corrupted copy handed to one
  device is refused even when every other device got the genuine one. A
  document that fails is not remembered (each copy fails for itself). The
  per-device rules still run on every call: the anti-rollback floor and
  the expiry against the device's own trusted time (and the agent itself
  applies bad versions, the timestamp's digest, the trial, the health check).
- `HealthChecks` judges the trial store the way `trust.TrustStore(bundle)
  .evaluate(host, chain, now)` does, and remembers the decision for those
  exact inputs: the same verified bundle object, host, chain and the
  device's trusted time to the second. evaluate() is a pure function of
  them, so a device gets what its own evaluation would say; a device whose
  clock is skewed or stuck asks at its own time. A device in the
  health-fail subset never asks (the worker fails it first).

Every table is bounded (oldest entries go first).
"""

from __future__ import annotations

import hashlib

from trustfleet_device import policy, trust
from trustfleet_device.errors import RollbackError
from trustfleet_device.limits import DEFAULT

MAX_ENTRIES = 64        # documents per table
MAX_DECISIONS = 512     # health decisions (one per bundle and trusted second)


def whole(doc) -> bytes:
    """A document given as bytes or as a source (read_at: a MemStorage slot, in RAM), as bytes."""
    if not hasattr(doc, "read_at"):
        return doc
    pieces = []
    at = 0
    while True:
        piece = doc.read_at(at, 65536)
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        at += len(piece)


def digest_of(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def _put(table: dict, key, value, limit: int) -> None:
    if len(table) >= limit:
        table.pop(next(iter(table)))
    table[key] = value


class SharedChecks:
    """The `policy` functions an agent calls, each document verified once per exact bytes."""

    def __init__(self) -> None:
        # key -> (objects the key names by id, kept alive so the id stays theirs; result)
        self._roots: dict = {}
        self._bundles: dict = {}
        self._timestamps: dict = {}
        self._updates: dict = {}
        self.verified = 0   # documents verified for real
        self.reused = 0     # documents answered from a table

    def _get(self, table: dict, key):
        hit = table.get(key)
        if hit is None:
            return None
        self.reused += 1
        return hit[1]

    def _keep(self, table: dict, key, anchors: tuple, value) -> None:
        self.verified += 1
        _put(table, key, (anchors, value), MAX_ENTRIES)

    def load_trusted_root(self, raw, limits=DEFAULT, fleet=None):
        key = (digest_of(raw), id(limits), fleet)
        root = self._get(self._roots, key)
        if root is None:
            root = policy.load_trusted_root(raw, limits, fleet)
            self._keep(self._roots, key, (limits,), root)
        return root

    def verify_root_update(self, trusted, raw, limits=DEFAULT):
        key = (id(trusted), digest_of(raw), id(limits))
        root = self._get(self._updates, key)
        if root is None:
            root = policy.verify_root_update(trusted, raw, limits)
            self._keep(self._updates, key, (trusted, limits), root)
        return root

    def verify_bundle(self, root, doc, limits=DEFAULT, installed_version=None, now=None):
        raw = whole(doc)   # verified from RAM: its anchors and pin-sets are then plain lists
        key = (id(root), digest_of(raw), id(limits))
        b = self._get(self._bundles, key)
        if b is None:
            b = policy.verify_bundle(root, raw, limits)
            self._keep(self._bundles, key, (root, limits), b)
        # This device's own rules, as policy.verify_bundle applies them after the parse.
        policy.check_version_newer(b.version, installed_version, "bundle")
        policy.check_not_expired(b.expires_at, now, f"bundle v{b.version}")
        return b

    def verify_timestamp(self, root, raw, limits=DEFAULT, last_time=None):
        key = (id(root), digest_of(raw), id(limits))
        ts = self._get(self._timestamps, key)
        if ts is None:
            ts = policy.verify_timestamp(root, raw, limits)
            self._keep(self._timestamps, key, (root, limits), ts)
        if last_time is not None and ts.time < last_time:
            raise RollbackError(f"timestamp time {ts.time} is older than the last accepted {last_time}")
        return ts


class HealthChecks:
    """trust.TrustStore(bundle).evaluate(host, chain, now), remembered for those exact inputs."""

    def __init__(self, host: str, chain: list[bytes]) -> None:
        self.host = host
        self.chain = list(chain)
        self._stores: dict = {}       # id(bundle) -> (bundle, TrustStore)
        self._decisions: dict = {}    # (id(bundle), now) -> (bundle, Decision)
        self.evaluated = 0
        self.reused = 0

    def decide(self, bundle, now: int) -> trust.Decision:
        key = (id(bundle), now)
        hit = self._decisions.get(key)   # (bundle, decision): the entry keeps its bundle alive
        if hit is not None:
            self.reused += 1
            return hit[1]
        store = self._stores.get(id(bundle))
        if store is None:
            store = self._stores[id(bundle)] = (bundle, trust.TrustStore(bundle))
            if len(self._stores) > MAX_ENTRIES:
                self._stores.pop(next(iter(self._stores)))
        decision = store[1].evaluate(self.host, self.chain, now)
        self.evaluated += 1
        _put(self._decisions, key, (bundle, decision), MAX_DECISIONS)
        return decision
