"""What `trustfleet serve` takes from one device (issue 10 finding 8), apart from the
serve loop so that the command line can show the defaults without loading paho."""

from __future__ import annotations

import dataclasses

FENCE_WINDOW = 10.0  # seconds over which a device's dropped messages are counted


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-device limits on what serve takes from one device.

    status_rate/status_burst, report_rate/report_burst: token buckets
    (messages per second, messages at once). Retained statuses read at
    connect are not counted.
    fence_after: a device with this many messages dropped (over its rate
    or oversize) within FENCE_WINDOW seconds is disabled at the broker
    through the dynamic security plugin, for fence_for seconds (0: never
    fence). The broker then stops taking its messages at all, so it cannot
    fill serve's queue at the broker, where every device's status waits.
    """

    status_rate: float = 2.0
    status_burst: float = 20.0
    report_rate: float = 1.0
    report_burst: float = 30.0
    fence_after: int = 100
    fence_for: float = 600.0

    def bucket(self, kind: str) -> tuple[float, float]:
        return (self.status_rate, self.status_burst) if kind == "status" else \
            (self.report_rate, self.report_burst)
