"""What every part of the billing service shares: the store, the configuration, the payment
gateway, the head-office keys and the clock, in one small object (``Context``) that the facade
(``service.Billing``) builds once and hands to each module's functions.

Also the clock of a deployment: system time plus an offset that ``gated-billing clock advance``
moves forward (demos and tests; 0 in production).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine

from gated.billing_sync import engine as eng
from gated.billing_sync.config import BillingConfig
from gated.billing_sync.errors import BillingError
from gated.billing_sync.gate_board import GateBoard
from gated.billing_sync.gateway import PaymentGateway
from gated.billing_sync.keys import Keys
from gated.billing_sync.store import (
    get_meta,
    read_connection,
    reading,
    set_meta,
    with_site_zones,
)


@dataclass(eq=False, slots=True)
class Context:
    """The billing service's shared state. ``clock`` returns Unix seconds (injected: tests and
    demos move it); ``reader`` is ``engine`` for read-only work (see ``store.reading``)."""

    engine: Engine
    config: BillingConfig
    gateway: PaymentGateway
    keys: Keys
    clock: Callable[[], int]
    reader: Engine = field(init=False)
    rules: eng.Rules = field(init=False)
    # Called after a change was published, so the MQTT publisher drains the outbox at once.
    published_hook: Callable[[], None] | None = None
    # Called (in the intake's thread) with each batch of gate events just stored: the console's
    # live check-in feed.
    gate_events_hook: Callable[[list[dict[str, Any]]], None] | None = None
    # Set when the service is stopping: a running cycle makes no new gateway call and ends
    # after its batch; attempts it leaves open are finished by the next cycle's resume().
    stopping: threading.Event = field(default_factory=threading.Event)
    # The fraction of its wall time a cycle may be busy (``run --share``; serve's cycle process
    # gets ``[serve] cycle_share``): after each batch it rests in proportion (cycle.Pace).
    cycle_share: float = 1.0
    # Each gate's latest status from the retained status topics (the console's gates page).
    gate_board: GateBoard = field(default_factory=GateBoard)

    def __post_init__(self) -> None:
        cfg = self.config
        self.engine = with_site_zones(self.engine, {s: cfg.site(s).timezone for s in cfg.sites})
        self.reader = reading(self.engine)
        self.rules = eng.Rules.from_config(self.config.dunning)

    def notify_published(self) -> None:
        """Tell the publisher (if one is listening) that the status outbox has new rows."""
        if self.published_hook is not None:
            self.published_hook()

    @contextmanager
    def transaction(self, conn: Connection | None) -> Iterator[Connection]:
        """A transaction on ``conn``, or on a connection of its own."""
        if conn is None:
            with self.engine.begin() as own:
                yield own
        else:
            with conn.begin():
                yield conn


# The clock's offset as one HTTP request read it: [offset, when (monotonic)], or [] before the
# request's first reading; None outside a request. A member's page read it from the store 3-6
# times (each its own transaction, ~10% of the request's CPU).
_REQUEST_OFFSET: ContextVar[list[float] | None] = ContextVar("clock_offset", default=None)
# A request that runs longer (a live feed) reads it again after this long.
OFFSET_KEPT_S = 1.0


@contextmanager
def one_offset_per_request() -> Iterator[None]:
    """Inside this, ``db_clock`` reads the offset from the store once (then again at most every
    ``OFFSET_KEPT_S``): for the code of one HTTP request, and its worker threads, which
    ``asyncio.to_thread`` runs in a copy of its context."""
    token = _REQUEST_OFFSET.set([])
    try:
        yield
    finally:
        _REQUEST_OFFSET.reset(token)


def db_clock(engine: Engine) -> Callable[[], int]:
    """The injected clock of a deployment: system time plus the offset that ``gated-billing clock
    advance`` stores (0 in production), read on every call (once per request inside
    ``one_offset_per_request``) so a running ``serve`` follows it."""

    reader = reading(engine)

    def now() -> int:
        kept = _REQUEST_OFFSET.get()
        if kept and time.monotonic() - kept[1] < OFFSET_KEPT_S:
            offset = int(kept[0])
        else:
            with read_connection(reader) as conn:
                offset = int(get_meta(conn, "clock_offset_s", 0))
            if kept is not None:
                kept[:] = [offset, time.monotonic()]
        return int(datetime.now(UTC).timestamp()) + offset

    return now


def advance_clock(engine: Engine, seconds: float) -> int:
    """Move the clock of ``db_clock`` forward; returns the new offset in seconds."""
    if seconds < 0:
        raise BillingError("the clock only moves forward")
    with engine.begin() as conn:
        offset = int(get_meta(conn, "clock_offset_s", 0)) + int(seconds)
        set_meta(conn, "clock_offset_s", offset)
    return offset
