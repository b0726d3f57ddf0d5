"""Selling on the next invoice: the lines wait (nothing owed, the stock taken), the renewal
invoice takes them in the transaction that issues it with one tax line per rate and charges
them with the membership, each becomes a sale on that invoice; a cancellation bills what
waits on an invoice of its own at once; a sale with no renewal to wait for is refused; the CLI
and the facade say the same."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gated.billing_sync import schema as s
from gated.billing_sync.audit import Actor
from gated.billing_sync.cli import app
from gated.billing_sync.errors import BillingError
from gated.billing_sync.notices import format_day
from gated.billing_sync.products import ProductSpec
from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock, cli_ok, make_billing, step, write_cli_config

DESK = Actor("staff", "desk-anna", "front_desk", "127.0.0.1")


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    b.add_member("ann", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    pos = b.point_of_sale()
    pos.add(ProductSpec("towel", "Towel", 300, tax_rate_bp=1900, stock=5))
    pos.add(ProductSpec("water", "Water", 150, tax_rate_bp=700))
    pos.add(ProductSpec("day", "Day pass", 1200, kind="pass", period_days=1))
    return b, clock


def rows(b: Billing, table: Any, **where: object) -> list[Any]:
    q = select(table)
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    with b.engine.connect() as conn:
        return list(conn.execute(q.order_by(table.c.id)).all())


def test_lines_wait_for_the_renewal_and_are_charged_with_it(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    pos = b.point_of_sale()
    invoices = len(rows(b, s.invoices))
    towels = pos.sell(DESK, "towel", member_id="ann", method="next_invoice", quantity=2)
    water = pos.sell(DESK, "water", member_id="ann", method="next_invoice", quantity=3)
    # Nothing is invoiced or owed yet; the stock is taken at the sale.
    assert (towels.invoice_id, towels.paid, towels.total) == (None, False, 714)
    assert water.total == 450 + 32
    assert len(rows(b, s.invoices)) == invoices and b.member("ann")["owed"] == 0
    assert [p.stock for p in pos.catalogue() if p.id == "towel"] == [3]
    assert [(w["description"], w["quantity"]) for w in pos.waiting("ann")] == [
        ("Towel", 2),
        ("Water", 3),
    ]
    [audited, _] = [e for e in b.audit_entries() if e["action"] == "sell"]
    assert audited["detail"]["method"] == "next_invoice" and audited["detail"]["pending_line"]

    first = rows(b, s.invoices, member_id="ann", kind="renewal")
    step(b, clock, 32)  # the renewal
    [renewal] = rows(b, s.invoices, member_id="ann", kind="renewal")[len(first) :]
    lines = rows(b, s.invoice_lines, invoice_id=renewal.id)
    assert [(ln.kind, ln.amount, ln.tax_rate_bp) for ln in lines] == [
        ("membership", 4990, 1900),
        ("item", 600, 1900),
        ("item", 450, 700),
        # One tax line per rate, each on that rate's net: 19 % of 55.90, 7 % of 4.50.
        ("tax", 1062, 1900),
        ("tax", 32, 700),
    ]
    assert (renewal.subtotal, renewal.tax, renewal.total) == (6040, 1094, 7134)
    # Charged with the membership, in full; the lines are taken, each now a sale on it.
    assert renewal.status == "paid" and renewal.amount_paid == renewal.total
    assert pos.waiting("ann") == []
    sold = rows(b, s.sales, member_id="ann")
    assert [(x.invoice_id, x.method, x.total) for x in sold] == [
        (renewal.id, "next_invoice", 714),
        (renewal.id, "next_invoice", 482),
    ]
    # The next renewal has nothing more on it.
    step(b, clock, 31)
    later = rows(b, s.invoices, member_id="ann", kind="renewal")[-1]
    assert later.id != renewal.id and later.total == 5938


def test_cancelling_bills_what_waits_at_once(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    pos = b.point_of_sale()
    pos.sell(DESK, "towel", member_id="ann", method="next_invoice")
    b.cancel("ann")
    [alone] = rows(b, s.invoices, member_id="ann", kind="sale")
    assert alone.total == 357 and pos.waiting("ann") == []
    b.run_cycle()  # the review the cancellation asked for charges it
    [alone] = rows(b, s.invoices, member_id="ann", kind="sale")
    assert alone.status == "paid"
    assert [x.invoice_id for x in rows(b, s.sales, member_id="ann")] == [alone.id]
    # With the cancellation booked there is no next invoice to add to.
    with pytest.raises(BillingError, match="cancellation booked"):
        pos.sell(DESK, "towel", member_id="ann", method="next_invoice")


def test_a_line_whose_renewal_is_held_back_is_billed_alone_at_its_deadline(
    billing: tuple[Billing, Clock],
) -> None:
    """A freeze holds the renewal back past ``next_invoice_max_days``: the line does not wait for
    it; the cycle bills it on an invoice of its own that day and charges it."""
    b, clock = billing
    pos = b.point_of_sale()
    sold_at = clock.now
    sale = pos.sell(DESK, "towel", member_id="ann", method="next_invoice", quantity=2)
    deadline = sold_at + 35 * 86_400  # the default
    assert sale.bill_by == deadline
    assert [w["bill_by"] for w in pos.waiting("ann")] == [deadline]
    b.freeze("ann", 3)  # frozen from now: no renewal for three months
    step(b, clock, 34)
    assert rows(b, s.invoices, member_id="ann", kind="sale") == []
    assert len(pos.waiting("ann")) == 1
    step(b, clock, 1)  # the deadline: billed alone and charged, the freeze kept
    [alone] = rows(b, s.invoices, member_id="ann", kind="sale")
    assert (alone.total, alone.status) == (714, "paid")
    assert pos.waiting("ann") == [] and b.member("ann")["status"] == "frozen"
    assert [x.invoice_id for x in rows(b, s.sales, member_id="ann")] == [alone.id]
    # The renewal after the freeze bills the membership alone.
    step(b, clock, 100)
    renewal = rows(b, s.invoices, member_id="ann", kind="renewal")[-1]
    assert renewal.created_at > alone.created_at and renewal.total == 5938


def test_the_deadline_is_configured(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path, next_invoice_max_days=3)
    b.add_member("ann", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    pos = b.point_of_sale()
    pos.add(ProductSpec("water", "Water", 150, tax_rate_bp=700))
    assert pos.sell(DESK, "water", member_id="ann", method="next_invoice").bill_by == (
        clock.now + 3 * 86_400
    )
    step(b, clock, 3)
    [alone] = rows(b, s.invoices, member_id="ann", kind="sale")
    assert alone.total == 161 and pos.waiting("ann") == []


def test_a_sale_with_no_renewal_to_wait_for_is_refused(billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    pos = b.point_of_sale()
    for kwargs, said in (
        ({"walk_in": "Gia"}, "a walk-in pays at once"),
        ({"member_id": "ann", "product_id": "day"}, "a pass is paid at once"),
        ({"member_id": "nobody"}, "no member"),
    ):
        product = str(kwargs.pop("product_id", "towel"))
        with pytest.raises(BillingError, match=said):
            pos.sell(DESK, product, method="next_invoice", **kwargs)  # type: ignore[arg-type]
    # A walk-in's record (no membership) has no renewal either.
    guest = pos.sell(DESK, "towel", walk_in="Gia", method="cash").member_id
    with pytest.raises(BillingError, match="no membership that renews"):
        pos.sell(DESK, "towel", member_id=guest, method="next_invoice")
    assert pos.waiting("ann") == [] and [p.stock for p in pos.catalogue() if p.id == "towel"] == [4]


def test_selling_on_the_next_invoice_at_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(
        cfg,
        "members",
        "add",
        "ann",
        "--name",
        "Ann",
        "--plan",
        "monthly",
        "--card",
        "pm_sim_ok",
    )
    cli_ok(cfg, "products", "add", "towel", "--name", "Towel", "--price", "300")
    said = cli_ok(cfg, "sell", "towel", "--member", "ann", "--method", "next-invoice")
    # The command line runs on the real clock: the deadline is 35 days after now.
    day = format_day(int(time.time()) + 35 * 86_400)
    assert " ".join(said.split()) in (
        f"ann: on the next invoice (line 1), 300 with tax, billed alone on {d} if no renewal"
        " has taken it"
        for d in (day, format_day(int(time.time()) + 34 * 86_400))
    )
    refused = CliRunner().invoke(
        app, ["sell", "towel", "--walk-in", "Gia", "--method", "next-invoice", "-c", str(cfg)]
    )
    assert refused.exit_code == 2 and "a walk-in pays at once" in refused.output
    assert "Traceback" not in refused.output
