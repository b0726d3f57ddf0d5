"""What a gate says about itself: the GateStatus it publishes (retained, and as its last will)
and what ``gatectl status`` shows a technician on top of it.

Built from a small Protocol of what the status reads, so the daemon only wires it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from gated import __version__
from gated.cache.index import MemberIndex
from gated.cache.store import CacheWriter
from gated.clock import TrustedClock
from gated.config import GateConfig
from gated.contract import format_time
from gated.door import Door
from gated.outbox_guard import OutboxGuard
from gated.placement import Placement
from gated.policy.decide import GateContext
from gated.readers.base import Reader


class Urls(Protocol):
    @property
    def url(self) -> str | None: ...


class StatusGate(Protocol):
    """What a status reads of the gate (plain attribute reads on the loop)."""

    @property
    def config(self) -> GateConfig: ...
    @property
    def started_at(self) -> float: ...
    @property
    def index(self) -> MemberIndex: ...
    @property
    def last_head_office_at(self) -> float | None: ...
    @property
    def context(self) -> GateContext: ...
    @property
    def readers(self) -> Sequence[Reader]: ...
    @property
    def outbox(self) -> OutboxGuard: ...
    @property
    def writer(self) -> CacheWriter: ...
    @property
    def metrics(self) -> Urls: ...
    @property
    def stale(self) -> bool: ...
    @property
    def clock_synchronized(self) -> bool | None: ...
    @property
    def clock(self) -> TrustedClock: ...
    @property
    def scheduling(self) -> str: ...
    @property
    def placement(self) -> Placement: ...
    @property
    def decisions(self) -> Counter[str]: ...
    @property
    def rejected(self) -> Counter[str]: ...
    @property
    def door(self) -> Door: ...


def published_status(gate: StatusGate, state: str, outbox_depth: int | None) -> dict[str, Any]:
    """The GateStatus a gate publishes: a plain dict with exactly the model's fields (the gate
    does not import the pydantic models; a test holds this to :class:`gated.payloads.GateStatus`)."""
    last = gate.last_head_office_at
    index = gate.index
    return {
        "state": "online" if state == "online" else "offline",
        "site": gate.config.site,
        "gate": gate.config.gate,
        "software_version": __version__,
        "started_at": format_time(gate.started_at),
        "members": index.count,
        "max_version": index.max_version,
        "digest": index.digest,
        "last_head_office_at": format_time(last) if last else None,
        "outbox_depth": outbox_depth,
        "lockdown": gate.context.lockdown,
        "readers": [
            {
                "id": r.id,
                "kind": r.kind,
                "state": "ok" if r.health.state == "ok" else "fault",
                # Head office tells "people inside" from "entries today" by exit readers.
                "direction": r.direction,
            }
            for r in gate.readers
        ],
    }


def technician_status(gate: StatusGate, outbox_depth: int) -> dict[str, Any]:
    """What ``gatectl status`` shows (without the sync's part): the published status and what
    only a technician needs."""
    writer, door, clock = gate.writer, gate.door, gate.clock
    return {
        **published_status(gate, "online", outbox_depth),
        "outbox_dropped": gate.outbox.dropped,
        "events_lost": writer.events_lost,
        "events_held": writer.events_held,
        "cache_writes_refused": writer.refusing,
        "metrics_url": gate.metrics.url,
        "fire": gate.context.fire,
        "stale_cache": gate.stale,
        "clock_synchronized": gate.clock_synchronized,
        "clock": clock.stats(),
        "scheduling": gate.scheduling,
        "decision_cpu": gate.placement.detail,
        "now": format_time(clock.now()),
        "decisions": dict(gate.decisions),
        "rejected": dict(gate.rejected),
        "door": {
            "pin_factory": door.pin_factory_name,
            "contact_open": door.contact_open,
            "relay_energized": door.relay_energized,
            "fire_active": door.fire_active,
        },
    }
