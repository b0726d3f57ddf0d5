"""The gate's once-a-minute duties: save the last good time, forget spent QR nonces past their
window, and raise ``clock_unsynced`` and ``stale_cache`` when they start."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Protocol

from gated.cache.events import EventLog
from gated.cache.store import CacheStore, CacheWriter
from gated.clock import TrustedClock
from gated.config import GateConfig
from gated.policy.qr import QrVerifier

INTERVAL_S = 60.0


class KeptGate(Protocol):
    """What housekeeping reads and sets on the gate."""

    config: GateConfig
    clock: TrustedClock
    qr: QrVerifier
    events: EventLog
    writer: CacheWriter
    started_at: float
    last_head_office_at: float | None
    clock_synchronized: bool | None
    stale: bool


async def keep_house(gate: KeptGate, interval_s: float = INTERVAL_S) -> None:
    """Run the duties every ``interval_s`` until cancelled."""
    max_offline = gate.config.policy.max_offline
    while True:
        now = gate.clock.now()
        gate.qr.prune(now)
        synced = gate.clock.refresh()
        if synced is False and gate.clock_synchronized is not False:
            gate.events.record("clock_unsynced", reason="system clock not synchronized")
        gate.clock_synchronized = synced
        good = gate.clock.good_time()
        if good is not None:
            gate.writer.post(partial(CacheStore.set, key="last_good_time", value=good))
        if gate.config.mqtt is not None:
            last = gate.last_head_office_at or gate.started_at
            stale = time.time() - last > max_offline
            if stale and not gate.stale:
                gate.events.record(
                    "stale_cache", reason=f"no head-office contact for over {max_offline:.0f}s"
                )
            gate.stale = stale
        await asyncio.sleep(interval_s)
