"""Failed sign-ins slow down, per account and per client, instead of locking anything.

After a few free failures each further one doubles the wait before the next try is even checked
(a try inside the wait is answered 429 without looking at the password). The per-account wait is
capped low (``ACCOUNT_CAP_S``): an attacker who fails on purpose can slow an account down but never
keep its owner out. The per-client wait goes much higher: that is where guessing comes from.
In memory, like the other rate limits: one ``serve`` answers every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

ACCOUNT_FREE, ACCOUNT_CAP_S = 3, 30.0
CLIENT_FREE, CLIENT_CAP_S = 5, 300.0
# Failures older than this (since the last one) are forgotten.
FORGET_S = 900.0


@dataclass
class _Failures:
    count: int
    last: float


class Slowdown:
    """Increasing waits after failures for one kind of key (account names, or client addresses)."""

    MAX_KEYS = 100_000

    def __init__(
        self, free: int, cap_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.free = free
        self.cap_s = cap_s
        self.clock = clock
        self.failures: dict[str, _Failures] = {}

    def delay(self, count: int) -> float:
        """The wait after ``count`` failures in a row."""
        if count < self.free:
            return 0.0
        return float(min(self.cap_s, 2 ** (count - self.free)))

    def wait(self, key: str) -> float:
        """Seconds before a try for ``key`` is checked again (0: now)."""
        f = self.failures.get(key)
        if f is None:
            return 0.0
        now = self.clock()
        if now - f.last > FORGET_S:
            del self.failures[key]
            return 0.0
        return max(0.0, f.last + self.delay(f.count) - now)

    def failed(self, key: str) -> None:
        """Count a failure for ``key``."""
        now = self.clock()
        if len(self.failures) > self.MAX_KEYS:
            self.failures = {k: f for k, f in self.failures.items() if now - f.last <= FORGET_S}
        f = self.failures.get(key)
        if f is None or now - f.last > FORGET_S:
            self.failures[key] = _Failures(1, now)
        else:
            f.count += 1
            f.last = now

    def succeeded(self, key: str) -> None:
        """A success forgets the key's failures."""
        self.failures.pop(key, None)
