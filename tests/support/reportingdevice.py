"""A device core that publishes the reports its own decisions make, for the console's tests.

The simulator's devices judge their health check's chain but keep no report queue. This is
one device as the board builds it (transports/board.py): runner.Device on in-memory flash,
initialised from the fleet's root, a health check that judges a server chain with the trial
store (trust.TrustStore.evaluate) and queues the decision's TrustKit report in the device's
one ReportQueue, and a session.Session sharing that queue. What the session says to publish
on the report topic is what goes out; its status messages do not (the id may be one of the
simulator's devices, whose own statuses the store follows).

    dev = ReportingDevice(FLEET, "dev-00001", root_raw, chain)
    out = dev.receive(topics.bundle(FLEET), bad_bundle)   # pin mismatch: health check fails
    dev.reports_in(out)                                   # [(topic, payload, retain, qos)]
    dev = dev.restarted()                                 # a reboot: same flash, new session
    dev.receive(topics.bundle(FLEET), bad_bundle)         # refused (marked bad): document-refused
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trustfleet_device import agent as core
from trustfleet_device import session, topics, trust
from trustfleet_device.reports import ReportQueue
from trustfleet_device.transports import runner
from trustfleet_device.transports.storage import MemStorage

FIRMWARE_AGE = 86_400  # the firmware's build time, this long before now


class ReportingDevice:
    """One device core with its report queue and MQTT session (no I/O of its own)."""

    def __init__(self, fleet: str, device_id: str, root_raw: bytes, chain: tuple[bytes, ...],
                 host: str, group: str | None = None, clock: Callable[[], float] = time.time,
                 storage: MemStorage | None = None) -> None:
        self.fleet, self.device_id, self.group = fleet, device_id, group
        self.root_raw, self.chain, self.host, self.clock = root_raw, chain, host, clock
        self.config = core.Config(fleet=fleet, device_id=device_id,
                                  firmware_time=int(clock()) - FIRMWARE_AGE)
        if storage is None:
            storage = MemStorage()
            runner.initialise(storage, root_raw, self.config)
        self.storage = storage
        self.queue = ReportQueue()
        self.decisions: list[trust.Decision] = []
        self.device = runner.Device(storage, self.config, self._health, clock)
        self.session = session.Session(self.device, fleet, device_id, group, reports=self.queue)

    def _health(self, bundle, trusted_time: int) -> tuple[bool, str]:
        """The trial store judges the chain for the host; a report goes to the shared queue."""
        decision = trust.TrustStore(bundle, None, self.config.managed).evaluate(
            self.host, list(self.chain), trusted_time)
        self.decisions.append(decision)
        if decision.report is not None:
            self.queue.add(decision.report, self.device.now())
        if decision.accepted():
            return True, f"{self.host}: {decision.result}"
        return False, f"TLS to {self.host}:443 refused: {decision.reason}"

    def receive(self, topic: str, payload: bytes) -> list[tuple]:
        """One message as the device's transport hands it over; what the session publishes."""
        return self.session.on_message(topic, payload)

    def restarted(self) -> ReportingDevice:
        """The same device after a reboot: its flash kept, a new session (nothing seen yet)."""
        return ReportingDevice(self.fleet, self.device_id, self.root_raw, self.chain, self.host,
                               self.group, self.clock, self.storage)

    def reports_in(self, out: list[tuple]) -> list[tuple]:
        """The report messages (topic, payload, retain, qos) among what the session publishes."""
        mine = topics.report(self.fleet, self.device_id)
        return [m for m in out if m[0] == mine]
