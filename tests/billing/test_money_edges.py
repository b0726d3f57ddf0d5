"""The edges of the money a finance manager meets: charges below the processor's minimum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from gated.billing_sync import schema
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.helpers import Clock, make_billing, published, step

# The monthly plan: 49.90 + 19 % = 59.38 a month.
RENEWAL = 5938


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    clock = Clock()
    b, _ = make_billing(tmp_path, gateway=SimulatedGateway(clock=clock), clock=clock)
    return b, clock


def rows(b: Billing, table: Any, **where: Any) -> list[Any]:
    q = select(table)
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    with b.engine.connect() as conn:
        return list(conn.execute(q.order_by(table.c.id)))


def set_card(b: Billing, member_id: str, pm: str) -> None:
    with b.engine.begin() as conn:
        conn.execute(
            update(schema.members).where(schema.members.c.id == member_id).values(payment_method=pm)
        )


# --- charges below the processor's minimum ------------------------------------------------------


def test_a_rest_below_the_minimum_is_written_off_not_charged_every_retry(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    set_card(b, "m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)  # the renewal is declined: dunning
    renewal = [i for i in rows(b, schema.invoices, member_id="m1") if i.kind == "renewal"][-1]
    assert renewal.status == "open" and published(b, "m1")["status"] == "grace"
    # The desk credits all but 0.20 of it: a rest Stripe would refuse to charge.
    b.credit(renewal.id, RENEWAL - 20)
    attempts_before = len(rows(b, schema.payment_attempts, invoice_id=renewal.id))
    step(b, clock, 8)  # past every retry of the schedule
    attempts = rows(b, schema.payment_attempts, invoice_id=renewal.id)
    assert len(attempts) == attempts_before
    assert all(a.amount >= 50 for a in attempts)
    (inv,) = rows(b, schema.invoices, id=renewal.id)
    assert inv.status == "written_off" and inv.amount_paid == inv.total
    assert [(p.method, p.amount) for p in rows(b, schema.payments, invoice_id=inv.id)][-1] == (
        "write_off",
        20,
    )
    assert published(b, "m1")["status"] == "active"


def test_a_rest_below_the_minimum_waits_for_the_desk_without_a_card(
    billing: tuple[Billing, Clock],
) -> None:
    b, clock = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    set_card(b, "m1", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31)
    renewal = [i for i in rows(b, schema.invoices, member_id="m1") if i.kind == "renewal"][-1]
    b.credit(renewal.id, RENEWAL - 20)
    set_card(b, "m1", None)  # type: ignore[arg-type]
    step(b, clock, 1)
    (inv,) = rows(b, schema.invoices, id=renewal.id)
    assert inv.status == "open" and inv.total - inv.amount_paid == 20


def test_the_minimum_is_per_currency_and_configurable(tmp_path: Path) -> None:
    clock = Clock()
    b, _ = make_billing(
        tmp_path,
        gateway=SimulatedGateway(clock=clock),
        clock=clock,
        dunning={"minimum_charge": {"EUR": 100}},
    )
    assert b.config.dunning.minimum_for("EUR") == 100
    assert b.config.dunning.minimum_for("GBP") == 30
    assert b.config.dunning.minimum_for("XYZ") == 50
