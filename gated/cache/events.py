"""The gate's events: built as GateEvents, kept in the outbox (under its ceiling) for the broker
link, and handed to whoever follows them (``gatectl events tail -f``).

An event is a plain dict with exactly the fields of :class:`gated.contract.GateEvent` (a pydantic
model per decision would cost the hot path; ``tests/test_daemon_reader_path.py`` validates what
is recorded against the model).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from gated.cache.store import CacheStore, CacheWriter
from gated.clock import TrustedClock
from gated.contract import format_time, new_ulid
from gated.outbox_guard import OutboxGuard, OutboxState

log = logging.getLogger("gated.daemon")

# How often the outbox is counted exactly (off the hot path) to correct the ceiling's estimate.
OUTBOX_MEASURE_INTERVAL_S = 10.0
# A follower that stops reading is not fed without bound.
TAIL_MAX = 1000


class EventLog:
    """Builds, records and publishes one gate's events."""

    def __init__(
        self,
        site: str,
        gate: str,
        clock: TrustedClock,
        writer: CacheWriter,
        *,
        warn: int,
        ceiling: int,
        depth: int,
        dropped: int,
    ) -> None:
        self.site = site
        self.gate = gate
        self.clock = clock
        self.writer = writer
        self.outbox = OutboxGuard(warn, ceiling, depth, dropped, self._alarm)
        self.tails: set[asyncio.Queue[dict[str, Any]]] = set()
        # Called after each event is queued (the broker link's wake-up), once it exists.
        self.on_recorded: Callable[[], None] | None = None

    def build(
        self,
        kind: str,
        *,
        member_id: str | None = None,
        credential_kind: str | None = None,
        reader_id: str | None = None,
        direction: str | None = None,
        reason: str | None = None,
        latency_us: int | None = None,
        source: str = "reader",
        operator: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """A GateEvent as a dict (not yet recorded)."""
        return {
            "event_id": new_ulid(),
            "site": self.site,
            "gate": self.gate,
            "at": format_time(self.clock.now() if now is None else now),
            "kind": kind,
            "member_id": member_id,
            "credential_kind": credential_kind,
            "reader_id": reader_id,
            "direction": direction,
            "reason": reason,
            "latency_us": latency_us,
            "source": source,
            "operator": operator,
        }

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Build an event, queue it in the outbox (unless at the ceiling) and publish it."""
        event = self.build(kind, **fields)
        if self.outbox.admit():
            self.writer.post(lambda s: s.add_event(event))
        self.publish(event)
        return event

    def publish(self, event: dict[str, Any]) -> None:
        """Hand a queued event to its followers and wake the broker link."""
        if event["kind"] not in ("entry", "deny", "exit"):
            log.info(
                "event=%s reason=%s source=%s operator=%s",
                event["kind"],
                event["reason"],
                event["source"],
                event["operator"],
            )
        for q in self.tails:
            if q.qsize() < TAIL_MAX:
                q.put_nowait(event)
        if self.on_recorded is not None:
            self.on_recorded()

    async def depth(self) -> int:
        """Events waiting for the broker, counted on the writer thread."""
        return int(await asyncio.wrap_future(self.writer.submit(lambda s: s.outbox_depth())))

    def _alarm(self, state: OutboxState, depth: int) -> None:
        """Once per crossing: the journal, and `gatectl events tail -f` (the alarm is not queued:
        the outbox is what is full; head office sees outbox_depth in the gate's status)."""
        level = {"ok": logging.INFO, "warn": logging.WARNING, "full": logging.ERROR}[state]
        outbox = self.outbox
        log.log(
            level,
            "event=outbox_%s depth=%d warn=%d max=%d dropped=%d",
            state, depth, outbox.warn, outbox.ceiling, outbox.dropped,
        )  # fmt: skip
        alarm = self.build(f"outbox_{state}", reason=f"depth {depth}")
        for q in self.tails:
            if q.qsize() < TAIL_MAX:
                q.put_nowait(alarm)

    async def watch_outbox(self, keep: int | None) -> None:
        """Count the outbox exactly every few seconds (the broker link deletes rows we never see)
        and keep the number of dropped events on disk, so doctor still fails after a restart.
        ``keep``: without a broker nobody collects events, and the outbox is a local journal
        trimmed to the newest ``keep``."""
        outbox = self.outbox
        saved = outbox.dropped
        while True:
            if keep is not None:
                trimmed = await asyncio.wrap_future(
                    self.writer.submit(partial(CacheStore.trim_outbox, keep=keep))
                )
                if trimmed:
                    log.info(
                        "event=outbox_trimmed removed=%d kept=%d reason=no_broker", trimmed, keep
                    )
            mark = outbox.mark()
            outbox.measured(await self.depth(), mark)
            dropped = outbox.dropped
            if dropped != saved:
                log.error(
                    "event=outbox_dropping dropped=%d since_last=%d", dropped, dropped - saved
                )
                self.writer.post(partial(CacheStore.set, key="outbox_dropped", value=dropped))
                saved = dropped
            await asyncio.sleep(OUTBOX_MEASURE_INTERVAL_S)
