"""Rate limits for the web, kept in memory: one ``serve`` process answers every web request, a
restart forgets them (at worst a fresh allowance), and counting costs no store write."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateLimit:
    """At most ``limit`` hits per key within any ``window_s`` seconds (a sliding window)."""

    # Above this many keys, keys with no hit inside the window are dropped.
    MAX_KEYS = 100_000

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.hits: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Count a hit for ``key``; False (and not counted) when the key is over its limit."""
        now = self.clock()
        if len(self.hits) > self.MAX_KEYS:
            self._prune(now)
        q = self.hits.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= self.limit:
            return False
        q.append(now)
        return True

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again (0 when it may now)."""
        q = self.hits.get(key)
        if not q or len(q) < self.limit:
            return 0
        return max(1, int(q[0] + self.window_s - self.clock()) + 1)

    def _prune(self, now: float) -> None:
        for key in [k for k, q in self.hits.items() if not q or q[-1] <= now - self.window_s]:
            del self.hits[key]
