"""Transactions on the SQLite store isolate what they read from other writers.

Left to itself, Python's sqlite3 driver begins a transaction only at the first INSERT, UPDATE or
DELETE: the reads before it ran outside, so another connection could commit in between and be
overwritten. The store begins every transaction itself (IMMEDIATE, or DEFERRED for readers).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import Engine, func, select

from gated.billing_sync import schema
from gated.billing_sync.store import open_store, reading

from .helpers import make_billing, published, report_one_charge_at_once


def _counter(tmp_path: Path) -> Engine:
    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counter (k INTEGER PRIMARY KEY, v INTEGER)")
        conn.exec_driver_sql("INSERT INTO counter VALUES (1, 0)")
    return engine


def _value(engine: Engine) -> int:
    with reading(engine).connect() as conn:
        return int(conn.exec_driver_sql("SELECT v FROM counter").scalar_one())


def test_a_write_waits_for_a_transaction_that_has_read(tmp_path: Path) -> None:
    """Read, then write what follows from it: a writer in between waits instead of being
    overwritten (the lost update the driver's own transactions allowed)."""
    engine = _counter(tmp_path)
    started, done = threading.Event(), threading.Event()

    def add_100() -> None:
        started.set()
        _add(engine, 100)
        done.set()

    with engine.begin() as conn:
        v = int(conn.exec_driver_sql("SELECT v FROM counter").scalar_one())
        writer = threading.Thread(target=add_100)
        writer.start()
        started.wait(5)
        time.sleep(0.2)
        assert not done.is_set(), "another transaction wrote between this one's read and write"
        conn.exec_driver_sql("UPDATE counter SET v = ?", (v + 1,))
    writer.join(10)
    assert done.is_set()
    assert _value(engine) == 101
    engine.dispose()


def test_a_reader_sees_one_snapshot_and_holds_no_writer_back(tmp_path: Path) -> None:
    engine = _counter(tmp_path)
    with reading(engine).connect() as conn:
        before = conn.exec_driver_sql("SELECT v FROM counter").scalar_one()
        writer = threading.Thread(target=lambda: _add(engine, 5))
        t = time.monotonic()
        writer.start()
        writer.join(5)
        assert not writer.is_alive() and time.monotonic() - t < 2, "a reader blocked a writer"
        # The snapshot the reader began with holds for the rest of its transaction.
        assert conn.exec_driver_sql("SELECT v FROM counter").scalar_one() == before == 0
    assert _value(engine) == 5
    engine.dispose()


def _add(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE counter SET v = v + ?", (n,))


def test_the_same_payment_reported_four_times_at_once_is_booked_once(tmp_path: Path) -> None:
    """The cycle and a webhook (or a webhook delivered twice) recording the same charge at the
    same moment: one books it, the others wait and then find the attempt final."""
    b, _ = make_billing(tmp_path)
    applied = report_one_charge_at_once(b)
    assert applied.count(True) == 1
    with b.reader.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.payments)).scalar_one() == 1
        paid = conn.execute(select(schema.invoices.c.amount_paid)).scalar_one()
    assert paid == 5938  # 49.90 + 19% tax, once
    assert published(b, "m1")["status"] == "active"
    b.engine.dispose()
