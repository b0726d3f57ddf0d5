"""The outbox's ceiling: an alarm long before the SD card fills, and never a silent drop.

Events wait in the outbox until the broker acknowledges them. A gate cut off from head office for
months would otherwise grow it until the card is full and the cache can no longer commit, which
stops lockdown, counters and member updates along with it. So the gate keeps a running estimate of
the depth: the exact count measured off the hot path every few seconds plus the events queued
since. Past ``warn`` it raises an alarm; at ``max`` it stops queueing event rows (decisions and
their counters go on), counts every event it did not keep, logs it, and ``gatectl doctor`` fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

OutboxState = Literal["ok", "warn", "full"]


class OutboxGuard:
    """Decides on the event loop, per event, whether a row may still go into the outbox.

    ``admit()`` is on the decision path: two comparisons and an increment. State changes are
    reported through ``on_change(state, depth)`` so the daemon can log and raise the alarm once
    per crossing, not once per badge.
    """

    def __init__(
        self,
        warn: int,
        ceiling: int,
        depth: int,
        dropped: int = 0,
        on_change: Callable[[OutboxState, int], None] | None = None,
    ) -> None:
        self.warn = warn
        self.ceiling = ceiling
        self.dropped = dropped
        self._measured = depth
        self._queued_since = 0
        self._on_change = on_change
        self.state: OutboxState = self._state_for(depth)

    @property
    def depth(self) -> int:
        """Events waiting for the broker (an upper bound between two measurements)."""
        return self._measured + self._queued_since

    def admit(self) -> bool:
        """True if one more event row may be queued; False (and counted) at the ceiling."""
        if self._measured + self._queued_since >= self.ceiling:
            self.dropped += 1
            self._set(self.depth)
            return False
        self._queued_since += 1
        if self.state == "ok" and self.depth >= self.warn:
            self._set(self.depth)
        return True

    def measured(self, depth: int, queued_before: int) -> None:
        """Take an exact count; ``queued_before`` is what :meth:`mark` returned when the count
        was asked for, so events queued while it ran are not lost from the estimate."""
        self._measured = depth
        self._queued_since -= queued_before
        self._set(self.depth)

    def mark(self) -> int:
        """Note the events queued so far, before asking the store for an exact count."""
        return self._queued_since

    def _state_for(self, depth: int) -> OutboxState:
        if depth >= self.ceiling:
            return "full"
        return "warn" if depth >= self.warn else "ok"

    def _set(self, depth: int) -> None:
        state = self._state_for(depth)
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state, depth)
