"""The console's forms that act once, kept in the store: a submit key claimed by racing threads
(two serve processes, or one form sent twice at once) acts once, on SQLite and on PostgreSQL;
a sale claims its key in its own transaction, so a refused sale leaves the key free and two
racing sales of one form sell once; keys expire a day after use."""

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
from gated.billing_sync.products import ProductSpec, Sale
from gated.billing_sync.service import Billing
from gated.billing_sync.submit_keys import KEY_S, RUNNING_S, AlreadySent, Once
from tests.billing.helpers import Clock, make_billing

DESK = Actor("staff", "dana", "front_desk", "127.0.0.1")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Billing, Clock]:
    """The service over SQLite, or over PostgreSQL (a database of its own)."""
    if request.param == "sqlite":
        return make_billing(tmp_path)
    return make_billing(tmp_path, database_url=request.getfixturevalue("postgres_url"))


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
