"""Running a reader: its reads go to ``emit``, and every change of its health (``ok`` ↔
``absent``/``error``) is reported once, as the gate's ``reader_ok``/``reader_fault`` events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gated.readers.base import Emit, Reader, ReaderState

HEALTH_POLL_S = 0.5

HealthChanged = Callable[[Reader, ReaderState], None]


async def run_reader(
    reader: Reader, emit: Emit, on_health: HealthChanged, poll_s: float = HEALTH_POLL_S
) -> None:
    """Run ``reader`` until cancelled, calling ``on_health(reader, state)`` when its health state
    changes (polled every ``poll_s``)."""
    watcher = asyncio.create_task(_watch(reader, on_health, poll_s))
    try:
        await reader.run(emit)
    finally:
        watcher.cancel()


async def _watch(reader: Reader, on_health: HealthChanged, poll_s: float) -> None:
    last = reader.health.state
    while True:
        await asyncio.sleep(poll_s)
        state = reader.health.state
        if state != last:
            on_health(reader, state)
            last = state
