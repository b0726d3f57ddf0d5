"""Store work the member app waits for: the billing clock's offset (``clock advance``) is read
once per HTTP request, in the request's worker threads too, and the next request sees a change;
the contact details are read and written without the member's facts; and a cycle that finds
nothing due takes no write transaction (on SQLite, the one write lock)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import event

from gated.billing_sync.context import advance_clock, db_clock, one_offset_per_request
from gated.billing_sync.errors import NotFound
from gated.billing_sync.store import open_store
from tests.billing.helpers import make_billing


def test_a_request_reads_the_offset_once_and_the_next_sees_a_change(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'billing.db'}")
    reads: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda _c, _cur, sql, *_a: reads.append(sql) if "meta" in sql else None,
    )
    clock = db_clock(engine)

    async def request() -> list[int]:
        with one_offset_per_request():
            first = clock()
            # The service runs in worker threads: they share the request's reading.
            in_threads = await asyncio.gather(*(asyncio.to_thread(clock) for _ in range(3)))
            return [first, *in_threads]

    seen = asyncio.run(request())
    assert len(reads) == 1
    assert max(seen) - min(seen) <= 1
    advance_clock(engine, 86_400)
    reads.clear()
    later = asyncio.run(request())
    assert len(reads) == 1
    assert min(later) - max(seen) >= 86_400
    clock(), clock()  # outside a request: every reading asks the store
    assert len(reads) == 3
    engine.dispose()


def test_contact_details_of_an_unknown_member_are_refused(tmp_path: Path) -> None:
    b, _clock = make_billing(tmp_path)
    b.add_member("m1", "Ann", plan_id="monthly", email="ann@example.org")
    b.update_contact("m1", "+49 30 1234567", "Kim +49 170 1")
    assert b.contact("m1") == {
        "name": "Ann",
        "email": "ann@example.org",
        "phone": "+49 30 1234567",
        "emergency_contact": "Kim +49 170 1",
    }
    with pytest.raises(NotFound):
        b.contact("nobody")
    with pytest.raises(NotFound):
        b.update_contact("nobody", "+49 30 1234567", "Kim")


def test_a_cycle_with_nothing_due_takes_no_write_lock(tmp_path: Path) -> None:
    """serve's cycle process looks every ``cycle_interval_s``: a look that finds nothing due
    (no renewal, no reminder) must not hold SQLite's one write lock the member app waits for."""
    b, clock = make_billing(tmp_path, notices={"upcoming_charge_days": 7, "card_expiry_days": 30})
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    clock.advance(25)  # the renewal a week away: the reminder is due once
    b.run_cycle()
    writes: list[str] = []

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE"):
            writes.append(sql)

    # On the driver's connection: the store takes the write lock there, polling for it.
    event.listen(b.engine, "checkout", lambda dbapi_conn, *_a: dbapi_conn.set_trace_callback(trace))
    b.run_cycle()  # reminded already, nothing to renew
    assert writes == []
    clock.advance(7)  # the renewal is due: now the cycle writes
    assert b.run_cycle().renewals == 1 and writes
