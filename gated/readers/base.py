"""The reader seam: every credential source yields :class:`Credential` objects.

A reader runs as one asyncio task (``await reader.run(emit)``) and calls ``emit(credential)`` from
the event loop for every read; blocking driver work belongs in a thread the reader owns, handing
results back with ``loop.call_soon_threadsafe``. Hardware readers debounce with
:class:`Debouncer`; the simulated reader (``gatectl badge``) never does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from gated.policy.credential import Credential, Direction

ReaderState = Literal["ok", "absent", "error"]


Emit = Callable[[Credential], None]


@dataclass(slots=True)
class ReaderHealth:
    """What ``gatectl readers`` shows for one reader."""

    state: ReaderState = "absent"
    detail: str = ""
    last_read_at: float | None = None  # wall clock, for humans
    reads: int = 0
    errors: int = 0
    rejected: int = 0


class Reader(Protocol):
    id: str
    kind: str
    direction: Direction
    health: ReaderHealth

    async def run(self, emit: Emit) -> None:
        """Read until cancelled, calling ``emit`` for each credential; never raise for a device
        fault: set ``health`` and retry."""
        ...


class Debouncer:
    """Drops a value seen again on the same reader within ``window_ms`` of its previous sighting.

    The window restarts on every sighting, so a card held on the reader is one read however long
    it stays there.
    """

    __slots__ = ("_last", "_window_ns")

    def __init__(self, window_ms: int) -> None:
        self._window_ns = window_ms * 1_000_000
        self._last: dict[str, int] = {}

    def accept(self, value: str, at_ns: int) -> bool:
        """True if this sighting is a new read."""
        previous = self._last.get(value)
        self._last[value] = at_ns
        if len(self._last) > 256:  # bound memory: forget sightings older than the window
            cutoff = at_ns - self._window_ns
            self._last = {v: t for v, t in self._last.items() if t >= cutoff}
        return previous is None or at_ns - previous > self._window_ns
