"""A signal at the door's relay edge, for tests that must act the instant the door opens (a kill
right after the door, a wait for the pulse to end without a fixed sleep).

gpiozero lets a MockFactory make its pins from a class of our choosing; :class:`EdgeMockPin` is
gpiozero's MockPin that also calls ``on_edge(active)`` whenever it is driven to a new state. It
is called synchronously, on the thread that drives the pin: for the relay that is the event
loop, inside the decision, before ``on_credential`` returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin


class EdgeMockPin(MockPin):  # type: ignore[misc]
    """MockPin with a hook on every change of its state."""

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self.on_edge: Callable[[bool], None] | None = None

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed and self.on_edge is not None:
            self.on_edge(bool(value))
        return changed


def edge_factory() -> MockFactory:
    """A MockFactory whose pins signal their edges."""
    return MockFactory(pin_class=EdgeMockPin)


class RelayEdges:
    """The relay pin's edges as awaitable events: ``await edges.opened()`` returns once the relay
    has gone active (``closed()``: inactive) since the last call. ``on_open`` runs at the very
    edge, inside the decision (e.g. to kill the gate right after the door)."""

    def __init__(
        self,
        factory: MockFactory,
        pin: int = 17,
        active_high: bool = True,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self._active_high = active_high
        self._on_open = on_open
        self._opened = asyncio.Event()
        self._closed = asyncio.Event()
        self.edges: list[bool] = []  # True: the relay went active
        factory.pin(pin).on_edge = self._edge

    def _edge(self, level: bool) -> None:
        active = level == self._active_high
        self.edges.append(active)
        if active:
            if self._on_open is not None:
                self._on_open()
            self._opened.set()
        else:
            self._closed.set()

    async def opened(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._opened.wait()
        self._opened.clear()

    async def closed(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._closed.wait()
        self._closed.clear()
