"""Reconnect delays: capped exponential backoff with equal jitter.

One rule for every client that reconnects to the broker: the board and the
Pi agent (through transports.mqtt) and the operator's `trustfleet serve`.
Pure: no I/O, MicroPython-safe.
"""


class Backoff:
    """Capped exponential backoff with jitter; only reset() brings it back to the start.

    The n-th delay in a row is drawn from [c/2, c] with c = min(cap, first * 2^n)
    ("equal jitter": devices that lost the broker together spread out, and
    no delay collapses to zero).
    """

    def __init__(self, first_ms=1000, cap_ms=120000, rand=None):
        if first_ms <= 0 or cap_ms < first_ms:
            raise ValueError("backoff needs 0 < first_ms <= cap_ms")
        self.first_ms = first_ms
        self.cap_ms = cap_ms
        self.rand = rand if rand is not None else _rand
        self.failures = 0

    def ceiling_ms(self):
        c = self.first_ms
        for _ in range(self.failures):
            c *= 2
            if c >= self.cap_ms:
                return self.cap_ms
        return c

    def next_ms(self):
        """The delay before the next attempt; each call counts one more failure."""
        c = self.ceiling_ms()
        if self.failures < 32:
            self.failures += 1
        half = c // 2
        return half + int(self.rand() * (c - half))

    def reset(self):
        self.failures = 0


def _rand():
    import random
    return random.getrandbits(16) / 65536
