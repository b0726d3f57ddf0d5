"""An invoice's amounts changed at the moment a payment is booked on it, on SQLite and
PostgreSQL, each side on its own connection and thread: a credit note, a line credit or a
write-off runs while a desk payment or a provider's late success (a webhook) has read the
invoice and is about to book on it. The interleaving is driven by events, not sleeps: the
payment stops just as it begins to book (reading what the invoice holds now); the change runs
until it is done or is seen waiting for the payment (PostgreSQL: ``pg_blocking_pids``; SQLite:
its transaction asking for the write lock the payment holds); then the payment goes on.

Whatever the order, the books hold: an invoice's ``amount_paid`` is the sum of what was booked
on it (money is conserved: total = received - refunded + credited + written off + open), its
status says whether that covers it, the desk never takes money an invoice no longer owes, and
money the provider did take is booked, never lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

from gated.billing_sync import schema as s
from gated.billing_sync.errors import BillingError
from gated.billing_sync.gateway import ChargeResult
from gated.billing_sync.service import Billing
from tests.billing.helpers import DAY, T0, Clock, make_billing

DECLINE = "pm_sim_decline_insufficient_funds"


@pytest.fixture(params=["sqlite", "postgresql"])
def billing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Billing, Clock]]:
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_store_url")
    extra = {"database_url": url} if url else {}
    b, clock = make_billing(tmp_path, clock=Clock(T0 - 40 * DAY), **extra)
    # Declined at sign-up: Dan owes his first month on an open invoice.
    b.add_member("dan", "Dan", plan_id="monthly", payment_method=DECLINE)
    yield b, clock
    b.engine.dispose()


# Where booking a payment begins: reading what its invoices hold now (PostgreSQL), or else its
# first write (the payment's row, whose key locks its invoice's row, then the invoice). A
# caller that read the invoice without locking it first has read it by then, stale or not.
_BOOKING = (
    "SELECT INVOICES.ID, INVOICES.AMOUNT_PAID, INVOICES.PAID_AT",
    "INSERT INTO PAYMENTS",
    "UPDATE INVOICES",
)


class Interleave:
    """Stops the thread named ``who`` just before it books a payment (it has read what it acts
    on by then), until ``go`` is set."""

    def __init__(self, engine: Engine, who: str) -> None:
        self.engine, self.who = engine, who
        self.reached, self.go = threading.Event(), threading.Event()
        self.pid: int | None = None
        # Threads other than ``who`` that have asked for a transaction (SQLite's BEGIN IMMEDIATE
        # waits there for the write lock the stopped one holds). Heard before the store's own
        # ``begin`` listener, which polls for the lock on the driver's connection.
        self.begun: set[str] = set()
        event.listen(engine, "begin", self._begin, insert=True)
        event.listen(engine, "before_cursor_execute", self._hook)

    def _begin(self, conn: Any) -> None:
        name = threading.current_thread().name
        if name != self.who:
            self.begun.add(name)

    def _hook(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        name = threading.current_thread().name
        if name != self.who:
            return
        if self.reached.is_set() or not statement.lstrip().upper().startswith(_BOOKING):
            return
        if conn.dialect.name == "postgresql":
            self.pid = int(cursor.connection.info.backend_pid)
        self.reached.set()
        assert self.go.wait(60), "never released"

    def waits_for_stopped(self, other: str) -> bool:
        """Whether thread ``other`` is waiting for the stopped transaction."""
        if self.engine.dialect.name == "sqlite":
            return other in self.begun
        with self.engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE :pid = ANY(pg_blocking_pids(pid))"
                    ),
                    {"pid": self.pid},
                ).scalar()
            )

    def close(self) -> None:
        """Stop listening (once no thread is inside the hook)."""
        event.remove(self.engine, "before_cursor_execute", self._hook)
        event.remove(self.engine, "begin", self._begin)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def race(b: Billing, payment: Callable[[], Any], change: Callable[[], Any]) -> dict[str, Any]:
    """Run ``payment`` until it is about to write an invoice, ``change`` until it is done or
    waits for the payment, then let the payment finish. Returns each one's result or error."""
    out: dict[str, Any] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        try:
            out[name] = call()
        except BillingError as exc:  # a refusal is an answer; anything else fails the test
            out[name] = exc

    gate = Interleave(b.engine, "payment")
    changer: threading.Thread | None = None
    try:
        payer = threading.Thread(target=run, args=("payment", payment), name="payment")
        payer.start()
        _wait_for(lambda: gate.reached.is_set() or not payer.is_alive(), "payment never wrote")
        assert gate.reached.is_set(), out
        changer = threading.Thread(target=run, args=("change", change), name="change")
        changer.start()
        _wait_for(
            lambda: not changer.is_alive() or gate.waits_for_stopped("change"),
            "the change neither finished nor waited",
        )
    finally:
        gate.go.set()
        payer.join(60)
        if changer is not None:
            changer.join(60)
        gate.close()
    assert changer is not None and not payer.is_alive() and not changer.is_alive()
    assert set(out) == {"payment", "change"}, out
    return out


def open_invoice(b: Billing, member_id: str = "dan") -> Any:
    inv = s.invoices
    with b.engine.connect() as conn:
        return conn.execute(
            select(inv).where(inv.c.member_id == member_id, inv.c.status == "open")
        ).one()


def assert_books_hold(b: Billing) -> None:
    """Every invoice's paid amount is what was booked on it, and its status agrees."""
    inv, pay = s.invoices, s.payments
    booked = (
        select(pay.c.invoice_id, func.sum(pay.c.amount).label("sum"))
        .group_by(pay.c.invoice_id)
        .subquery()
    )
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(inv.c.id, inv.c.status, inv.c.total, inv.c.amount_paid, booked.c.sum).join(
                booked, booked.c.invoice_id == inv.c.id, isouter=True
            )
        ).all()
    for r in rows:
        assert int(r.amount_paid) == int(r.sum or 0), r
        if r.status in ("open", "paid"):
            assert (r.status == "paid") == (int(r.amount_paid) >= int(r.total)), r


def booked(b: Billing, invoice_id: int) -> list[tuple[str, int]]:
    pay = s.payments
    with b.engine.connect() as conn:
        return [
            (r.method, int(r.amount))
            for r in conn.execute(
                select(pay.c.method, pay.c.amount)
                .where(pay.c.invoice_id == invoice_id)
                .order_by(pay.c.id)
            )
        ]


@pytest.mark.parametrize("change", ["credit", "line_credit", "write_off"])
def test_a_desk_payment_and_a_change_of_the_invoice_at_once(
    billing: tuple[Billing, Clock], change: str
) -> None:
    b, _ = billing
    inv = open_invoice(b)
    [line] = [r for r in b.invoice_money(int(inv.id))["lines"] if r["kind"] == "membership"]
    changes: dict[str, Callable[[], Any]] = {
        "credit": lambda: b.credit(int(inv.id), reason="goodwill"),
        "line_credit": lambda: b.credit(int(inv.id), line_id=int(line["id"]), reason="goodwill"),
        "write_off": lambda: b.write_off(int(inv.id), reason="bad debt"),
    }
    out = race(b, lambda: b.record_payment("dan", method="front_desk"), changes[change])
    assert_books_hold(b)
    methods = [m for m, _ in booked(b, int(inv.id))]
    # One of them settled the invoice; the other was refused, so nobody paid it twice.
    assert isinstance(out["payment"], BillingError) != isinstance(out["change"], BillingError), out
    if isinstance(out["change"], BillingError):
        assert methods == ["front_desk"]
    else:
        assert "front_desk" not in methods
    after = b.invoice_money(int(inv.id))
    assert after["status"] in ("paid", "written_off") and after["open"] == 0, after
    assert after["settled"] == after["total"], after


@pytest.mark.parametrize("change", ["credit", "write_off"])
def test_a_late_provider_success_and_a_change_of_the_invoice_at_once(
    billing: tuple[Billing, Clock], change: str
) -> None:
    """The member paid the declined charge after all (a webhook's late success): the money the
    provider took is booked whatever the desk did to the invoice meanwhile."""
    b, _ = billing
    inv = open_invoice(b)
    a = s.payment_attempts
    with b.engine.connect() as conn:
        ref = conn.execute(
            select(a.c.gateway_ref).where(a.c.invoice_id == inv.id, a.c.state == "failed")
        ).scalar_one()
    late = ChargeResult(str(ref), "succeeded")
    changes: dict[str, Callable[[], Any]] = {
        "credit": lambda: b.credit(int(inv.id), reason="goodwill"),
        "write_off": lambda: b.write_off(int(inv.id), reason="bad debt"),
    }
    out = race(b, lambda: b.intent_update(str(ref), late), changes[change])
    assert out["payment"] is True, out
    assert_books_hold(b)
    money = [amount for method, amount in booked(b, int(inv.id)) if method == "card"]
    assert money == [int(inv.total)]
    after = b.invoice_money(int(inv.id))
    assert after["open"] == 0 and after["settled"] >= after["total"], after
