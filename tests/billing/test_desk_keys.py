"""The console's forms that act once, kept in the store: a submit key claimed by racing threads
(two serve processes, or one form sent twice at once) acts once, on SQLite and on PostgreSQL;
a sale claims its key in its own transaction, so a refused sale leaves the key free and two
racing sales of one form sell once; keys expire a day after use. Two desks lending one loaner
card at the same instant: one lends it, the other is told, on both stores."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gated.billing_sync import schema as s
from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError
from gated.billing_sync.members import CARD_TAKEN, card_holder
from gated.billing_sync.products import ProductSpec, Sale, lend_card
from gated.billing_sync.service import Billing
from gated.billing_sync.submit_keys import KEY_S, RUNNING_S, AlreadySent, Once
from tests.billing.helpers import Clock, make_billing
from tests.sync.helpers import wait_until

DESK = Actor("staff", "dana", "front_desk", "127.0.0.1")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Billing, Clock]:
    """The service over SQLite, or over PostgreSQL (a database of its own)."""
    if request.param == "sqlite":
        return make_billing(tmp_path)
    return make_billing(tmp_path, database_url=request.getfixturevalue("postgres_store_url"))


def race(n: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` in ``n`` threads released at once; their results or exceptions."""
    gate = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = work()
        except Exception as exc:  # the losers' answers are the point
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def count(b: Billing, table: Any) -> int:
    with b.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_key_claimed_by_racing_posts_acts_once(store: tuple[Billing, Clock]) -> None:
    b, clock = store
    keys = b.form_keys()
    claims = race(6, lambda: keys.claim("k1"))
    assert [c.new for c in claims].count(True) == 1, claims
    # The others find it at work; once it is done they are sent to its result with its words.
    assert all(c.running for c in claims if not c.new)
    keys.done("k1", "/desk/members/ann", "Payment recorded.")
    again = keys.claim("k1")
    assert (again.new, again.result, again.told) == (
        False,
        "/desk/members/ann",
        "Payment recorded.",
    )
    # A claim that never finished (serve stopped at work) is not "running" for ever, and is
    # never claimed again: whether it acted is for the desk to check.
    keys.claim("k2")
    clock.now += RUNNING_S + 1
    cut = keys.claim("k2")
    assert not cut.new and not cut.running and cut.result is None
    # A refused action frees its key: the corrected form acts.
    assert keys.claim("k3").new
    keys.free("k3")
    assert keys.claim("k3").new
    # A day after use a key's row goes (the web refuses a key that old before it gets here).
    clock.now += KEY_S + 1
    assert keys.claim("k4").new
    assert count(b, s.submit_keys) == 1


def _outcome(sale: Sale) -> tuple[str, str]:
    return f"/desk/sales/{sale.invoice_id}", "Sold."


def test_one_form_of_a_sale_sent_from_two_processes_sells_once(
    store: tuple[Billing, Clock],
) -> None:
    b, _ = store
    pos = b.point_of_sale()
    pos.add(ProductSpec("towel", "Towel", 300, tax_rate_bp=1900, stock=5))
    once = Once("sale-key", _outcome)

    def sell() -> Sale:
        return pos.sell(DESK, "towel", walk_in="Tom", method="cash", once=once)

    invoices = count(b, s.invoices)
    results = race(4, sell)
    sold = [r for r in results if isinstance(r, Sale)]
    sent = [r for r in results if isinstance(r, AlreadySent)]
    assert len(sold) == 1 and len(sent) == 3, results
    # Each resend is sent to the one sale's receipt, told what the first was told.
    assert {(a.claimed.result, a.claimed.told) for a in sent} == {_outcome(sold[0])}
    assert count(b, s.sales) == 1 and count(b, s.invoices) == invoices + 1
    assert [p.stock for p in pos.catalogue()] == [4]
    assert [e["action"] for e in b.audit_entries()].count("sell") == 1


def test_a_refused_sale_leaves_its_key_free(store: tuple[Billing, Clock]) -> None:
    b, _ = store
    pos = b.point_of_sale()
    pos.add(ProductSpec("towel", "Towel", 300, stock=0))
    once = Once("refused", _outcome)
    with pytest.raises(BillingError, match="only 0 left"):
        pos.sell(DESK, "towel", walk_in="Tom", method="cash", once=once)
    assert count(b, s.submit_keys) == 0
    pos.edit("towel", add_stock=1)
    sale = pos.sell(DESK, "towel", walk_in="Tom", method="cash", once=once)
    with pytest.raises(AlreadySent) as sent:
        pos.sell(DESK, "towel", walk_in="Tom", method="cash", once=once)
    assert sent.value.claimed.result == f"/desk/sales/{sale.invoice_id}"


LOANER = "04C0FFEE000001"


def _walk_ins(b: Billing, *names: str) -> list[str]:
    """Day-pass holders without a card (each a member record of their own)."""
    pos = b.point_of_sale()
    pos.add(ProductSpec("day", "Day pass", 1200, kind="pass", period_days=1))
    return [pos.sell(DESK, "day", walk_in=n, method="cash").member_id for n in names]


def test_two_desks_lending_one_card_at_the_same_instant_lend_it_once(
    store: tuple[Billing, Clock],
) -> None:
    b, clock = store
    ctx = b.ctx
    gia, hal = _walk_ins(b, "Gia", "Hal")
    refused: list[str] = []
    # Desk one has lent the card and not committed yet when desk two lends it.
    with ctx.engine.connect() as one:
        first = one.begin()
        lend_card(ctx, one, gia, LOANER, clock())

        def desk_two() -> None:
            try:
                with ctx.engine.begin() as two:
                    lend_card(ctx, two, hal, LOANER, clock())
            except BillingError as exc:
                refused.append(str(exc))

        second = threading.Thread(target=desk_two)
        second.start()
        if ctx.engine.dialect.name == "postgresql":
            # Desk two found the card free (desk one's row is not committed) and now waits on
            # the unique index for desk one's transaction to end.
            def waiting() -> bool:
                with ctx.engine.connect() as conn:
                    q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    return bool(conn.exec_driver_sql(q).scalar())

            wait_until(waiting, what="desk two waiting for desk one")
        # (On SQLite desk two waits at BEGIN IMMEDIATE, and then finds the card held.)
        first.commit()
        second.join(30)
    assert len(refused) == 1, refused
    assert refused[0] == CARD_TAKEN or refused[0].startswith(f"this card is held by {gia}")
    with ctx.engine.connect() as conn:
        assert card_holder(ctx, conn, LOANER) == gia
        held = select(func.count()).select_from(s.cards).where(s.cards.c.revoked_at.is_(None))
        assert conn.execute(held).scalar_one() == 1


def test_two_desks_selling_passes_with_one_loaner_card_sell_one(
    store: tuple[Billing, Clock],
) -> None:
    b, _ = store
    pos = b.point_of_sale()
    pos.add(ProductSpec("day", "Day pass", 1200, kind="pass", period_days=1, stock=10))
    invoices = count(b, s.invoices)

    def sell(n: int) -> Callable[[], Sale]:
        return lambda: pos.sell(DESK, "day", walk_in=f"W{n}", method="cash", loaner_uid=LOANER)

    names = iter(range(4))
    results = race(4, lambda: sell(next(names))())
    sold = [r for r in results if isinstance(r, Sale)]
    refused = [r for r in results if isinstance(r, BillingError)]
    assert len(sold) == 1 and len(refused) == 3, results
    # The refused sales left nothing behind: no invoice, no stock taken, no card.
    assert count(b, s.invoices) == invoices + 1 and count(b, s.sales) == 1
    assert [p.stock for p in pos.catalogue()] == [9]
    assert b.member(sold[0].member_id)["cards"] == 1
