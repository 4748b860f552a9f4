"""Carry out the agent's actions: the loop shared by every runtime.

The agent decides; this loop applies persistence actions to the store,
runs health checks through a caller-supplied function and collects
reports and refusals. It is MicroPython-safe, so the board's main.py, the
Raspberry Pi agent and the tests all drive the core the same way.

    agent action                        -> what run() does
    slots.WRITE_SLOT ... slots.SAVE     -> Store.apply
    HEALTH_CHECK (bundle, trusted_time, deadline)
                                        -> health_check(bundle, trusted_time)
                                           returns (ok, detail), fed to agent.health():
                                           ok True, False (refused: marks the
                                           version bad) or None (unreachable:
                                           asked again from tick())
    REFUSED (kind, reason)              -> Result.refused
    REPORT (dict)                       -> Result.reports (and .reverted)

Everything a caller needs to read about the device (root version, active
bundle, bad versions, busy, trusted time) is a Device method, so nothing
outside reaches into `device.agent`.
"""

import hashlib

from trustfleet_device import agent as core
from trustfleet_device import policy, slots
from trustfleet_device.errors import StorageError


def no_endpoints(bundle, trusted_time):
    """Health check used when no endpoints are configured: nothing to lose touch with."""
    return True, "no endpoints configured"


class Result:
    """What one step did."""

    def __init__(self):
        self.refused = []     # (kind, reason)
        self.stale = []       # (kind, reason): signed but older than installed; not reported
        self.reports = []     # report dicts, in order
        self.committed = None
        self.reverted = None

    def reason(self):
        if self.refused:
            return self.refused[0][1]
        if self.stale:
            return self.stale[0][1]
        for r in self.reports:
            if r["event"] == "reverted":
                return r["detail"]
        return None


def initialise(storage, root_raw, config):
    """Write the factory state: a verified root and a fresh state file. Raises: BundleError."""
    policy.load_trusted_root(root_raw, config.limits, config.fleet)
    s = slots.Store(storage)
    s.apply((slots.WRITE_ROOT, root_raw))
    s.apply((slots.SAVE, slots.fresh_state()))


class Device:
    """One device: agent core + store + health check + clock."""

    agent_class = core.Agent  # a subclass may check documents elsewhere (Agent.policy)

    def __init__(self, storage, config, health_check=no_endpoints, clock=None):
        self.store = slots.Store(storage)
        self.config = config
        self.health_check = health_check
        self.clock = clock
        self.agent = self.agent_class(config)
        root = self.store.read_root()
        if root is None:
            raise StorageError("not initialised: no root.cose")
        # Slots are read through sources: a large bundle is verified and used from flash.
        actions = self.agent.boot(root, self.store.load_state(), self.store.slot_sources(), self.now())
        self.boot_result = self.run(actions)

    def now(self):
        return int(self.clock())

    def trusted_time(self, clock=None):
        """The agent's trusted time at a clock reading (default: this device's clock now)."""
        return self.agent.trusted_time(self.now() if clock is None else clock)

    def root_version(self):
        """The version of the trusted root."""
        return self.agent.root.version

    def active_bundle(self):
        """The committed, verified Bundle in use, or None."""
        return self.agent.bundle

    def bad_versions(self):
        """Bundle versions reverted as bad on this device (a copy)."""
        return list(self.agent.state["bad"])

    def busy(self):
        """True while an install waits for its health check."""
        return self.agent.busy()

    def offer(self, kind, raw):
        """Offer a root, bundle or timestamp document. Returns a Result."""
        if kind == "bundle":
            actions = self.agent.offer_bundle(raw, self.now())
        elif kind == "root":
            actions = self.agent.offer_root(raw, self.now())
        elif kind == "timestamp":
            actions = self.agent.offer_timestamp(raw, self.now())
        else:
            raise ValueError("unknown document kind %r" % (kind,))
        return self.run(actions)

    def receive_bundle(self, chunks, seen=None):
        """Stream a bundle into the inactive slot, hashing as it is written, then verify it from there.

        `chunks` is any iterable of byte strings (an MQTT payload read piece by
        piece, a file). At most one chunk and the decoder's window are in RAM.
        `seen`: digests of documents already handled; a repeat is not verified
        again (the same retained bundle arrives on several topics). The digest
        of this document is added to it. Returns a Result.
        """
        agent = self.agent
        slot, refusal = agent.begin_stream()
        if refusal:
            return self.run(refusal)
        name = slots.slot_file(slot)
        limit = self.config.limits.max_document
        h = hashlib.sha256()
        size = 0
        writer = self.store.storage.open_write(name)
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    writer.abort()
                    return self.run(agent.stream_too_large(limit))
                h.update(chunk)
                writer.write(chunk)
        except BaseException:
            # The stream broke (connection lost, power): leave no half file behind.
            writer.abort()
            raise
        writer.close()
        digest = h.digest()
        if seen is not None:
            if digest in seen:
                return Result()
            seen.append(digest)
        source = self.store.storage.source(name)
        return self.run(agent.offer_bundle(source, self.now(), slot, digest))

    def tick(self):
        """Time passes: health-check retries and deadlines, clock bookkeeping. Returns a Result."""
        return self.run(self.agent.tick(self.now()))

    def next_health_retry(self):
        """Seconds until an inconclusive health check is asked again (call tick() then), or None."""
        return self.agent.next_health_retry(self.now())

    def clear_bad(self, version):
        """An operator clears a bad mark so `version` may be installed again. Returns a Result.
        Raises: ValueError when it is not marked bad."""
        return self.run(self.agent.clear_bad(version))

    def state_name(self):
        """The status's state alone (cheap): ok, trial, no-store, behind or stale."""
        return self.agent.state_name(self.now())[0]

    def status(self):
        return self.agent.status(self.now())

    def run(self, actions):
        """Carry out actions in order (health checks may add more). Returns a Result."""
        result = Result()
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            kind = action[0]
            if self.store.apply(action):
                if kind == slots.COMMIT:
                    result.committed = action[1]["version"]
                continue
            if kind == core.HEALTH_CHECK:
                ok, detail = self.health_check(action[1], action[2])
                pending = self.agent.health(ok, detail, self.now()) + pending
            elif kind == core.REFUSED:
                result.refused.append((action[1], action[2]))
            elif kind == core.STALE:
                result.stale.append((action[1], action[2]))
            elif kind == core.REPORT:
                result.reports.append(action[1])
                if action[1]["event"] == "reverted":
                    result.reverted = action[1].get("version")
        return result
