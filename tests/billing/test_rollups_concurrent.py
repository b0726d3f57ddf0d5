"""The report rollups under concurrent writers on PostgreSQL (READ COMMITTED, its default): a
writer whose trigger must update the rollup row another open transaction has just written waits
for it and then adds to what it committed (no lost update); many writers at once, each on its
own connection, paying at the desk, joining and badging at the same site on the same day, all
finish without a deadlock or any other error reaching them; and afterwards every rollup equals
its recount from the raw rows. Holds for whichever rollup triggers the migrations' head has."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from gated.billing_sync import schema as s
from gated.billing_sync.service import Billing
from gated.contract import format_time, new_ulid
from tests.billing.helpers import DAY, T0, Clock, make_billing
from tests.billing.test_rollups import ZONES, assert_rollups_recount

DECLINE = "pm_sim_decline_insufficient_funds"


def _owing(b: Billing, n: int, prefix: str) -> list[str]:
    """``n`` members at downtown, each with an open renewal (their card declined)."""
    for i in range(n):
        b.add_member(f"{prefix}{i}", f"Owing {i}", plan_id="monthly", sites=["downtown"],
                     payment_method=DECLINE)  # fmt: skip
    return [f"{prefix}{i}" for i in range(n)]


def _open_invoice(b: Billing, member_id: str) -> Any:
    inv = s.invoices
    with b.engine.connect() as conn:
        return conn.execute(
            select(inv).where(inv.c.member_id == member_id, inv.c.status == "open")
        ).first()


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_writer_waits_for_the_rollup_row_another_has_written_then_adds_to_it(
    tmp_path: Path, postgres_store_url: str
) -> None:
    b, clock = make_billing(tmp_path, clock=Clock(T0 - 40 * DAY), sites=ZONES,
                            database_url=postgres_store_url)  # fmt: skip
    first, second = _owing(b, 2, "o")
    inv = _open_invoice(b, first)
    # One transaction pays the first member's invoice at the desk and stays open: its trigger
    # has written today's rollup row of downtown's desk payments.
    held = b.engine.connect()
    held_pid = held.execute(text("SELECT pg_backend_pid()")).scalar()  # its transaction begins
    held.execute(
        s.payments.insert().values(
            invoice_id=inv.id,
            member_id=first,
            amount=int(inv.total),
            method="front_desk",
            at=clock.now,
        )
    )
    errors: list[BaseException] = []

    def pay() -> None:
        try:
            b.record_payment(second, method="front_desk")
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    payer = threading.Thread(target=pay)
    payer.start()

    def blocked_by_held() -> bool:
        with b.engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
                    ),
                    {"pid": held_pid},
                ).scalar()
            )

    # The second payment's trigger waits on the row the first wrote: a real overlap.
    _wait_for(blocked_by_held, "the desk payment never waited for the open transaction")
    held.commit()
    held.close()
    payer.join(30)
    assert not payer.is_alive() and errors == []
    with b.engine.connect() as conn:
        rolled = conn.execute(
            text("SELECT payments, gross FROM rollup_payments WHERE method = 'front_desk'")
        ).all()
    assert [(r.payments, r.gross) for r in rolled] == [(2, 2 * int(inv.total))]
    assert_rollups_recount(b, clock.now)
    b.engine.dispose()


def test_many_writers_at_one_site_on_one_day_lose_nothing_and_see_no_error(
    tmp_path: Path, postgres_store_url: str
) -> None:
    b, clock = make_billing(tmp_path, clock=Clock(T0 - 40 * DAY), sites=ZONES,
                            database_url=postgres_store_url)  # fmt: skip
    writers, rounds = 4, 4
    owing = _owing(b, writers * rounds, "o")
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            start.wait(30)
            for r in range(rounds):
                b.record_payment(owing[w * rounds + r], method="front_desk")
                b.record_gate_events(
                    [{"event_id": new_ulid(), "site": "downtown", "gate": f"t{w}",
                      "at": format_time(clock.now - 60), "kind": "entry",
                      "member_id": owing[w * rounds + r], "reason": "ok"}]
                )  # fmt: skip
                b.add_member(f"j{w}_{r}", f"Joiner {w} {r}", plan_id="monthly",
                             sites=["downtown"], payment_method="pm_sim_ok")  # fmt: skip
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors
    with b.engine.connect() as conn:
        desk = conn.execute(
            text("SELECT sum(payments) FROM rollup_payments WHERE method = 'front_desk'")
        ).scalar()
        entries = conn.execute(text("SELECT sum(entries) FROM rollup_entries")).scalar()
    assert (desk, entries) == (writers * rounds, writers * rounds)
    assert_rollups_recount(b, clock.now)
    b.engine.dispose()
