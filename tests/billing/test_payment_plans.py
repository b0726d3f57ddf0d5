"""Payment plans for arrears, through the real facade and store: the debt moves onto instalments
due a month apart, the member is in good standing while they are paid on their days, a missed one
is dunned to suspension, and the books still add up (the transfer is not revenue)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from gated.billing_sync import reports, schema
from gated.billing_sync.errors import BillingError
from gated.billing_sync.payment_plans import split
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.helpers import (
    DAY,
    T0,
    Clock,
    cli_ok,
    make_billing,
    published,
    step,
    write_cli_config,
)


def in_arrears(tmp_path: Path, outcomes: list[str]) -> tuple[Billing, Clock]:
    """Ann, whose first month was paid and whose renewal was declined (soft): she owes 59.38."""
    clock = Clock()
    gw = SimulatedGateway(tmp_path / "sim.db", clock=clock, script={"pm_x": ["ok", *outcomes]})
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_x")
    clock.now = T0 + 31 * DAY
    b.run_cycle()
    assert b.member("m1")["status"] == "grace" and b.member("m1")["owed"] == 5938
    return b, clock


def books(b: Billing) -> tuple[int, int, int]:
    """(invoiced, paid, open) over every invoice: invoiced = paid + open, always."""
    inv = schema.invoices
    with b.engine.connect() as conn:
        rows = conn.execute(select(inv.c.total, inv.c.amount_paid, inv.c.status)).all()
        paid = conn.execute(select(schema.payments.c.amount)).scalars().all()
    invoiced = sum(r.total for r in rows)
    open_ = sum(r.total - r.amount_paid for r in rows if r.status == "open")
    return invoiced, sum(paid), open_


def test_split_is_as_equal_as_minor_units_allow() -> None:
    assert split(5938, 3) == [1980, 1979, 1979]
    assert split(948, 3) == [316, 316, 316]
    assert split(10, 4) == [3, 3, 2, 2]
    assert sum(split(99_999, 7)) == 99_999


def test_instalments_paid_on_time_keep_the_member_in_and_the_books_add_up(
    tmp_path: Path,
) -> None:
    b, clock = in_arrears(tmp_path, ["insufficient_funds", "ok"])
    quote = b.payment_plan_quote("m1", 3)
    assert [(i.total, i.tax) for i in quote.instalments] == [(1980, 316), (1979, 316), (1979, 316)]
    plan, report = b.start_payment_plan("m1", 3)
    assert plan == quote and report.succeeded == 1  # the first is due today
    info = b.member("m1")
    assert info["status"] == "active" and info["owed"] == 1979 * 2
    assert info["next_retry_at"] is None  # the old schedule is over
    state = published(b, "m1")
    assert state["status"] == "active"
    invoiced, paid, open_ = books(b)
    assert invoiced == paid + open_
    # The transfer is not money: revenue shows the first month and the first instalment.
    rows = reports.revenue(b.engine, clock.now)[1]
    assert sorted((r[2], r[3]) for r in rows) == [("card", 1980), ("card", 5938)]
    # The renewals go on as before, beside the instalments.
    step(b, clock, 31)
    assert b.member("m1")["owed"] == 1979 and b.member("m1")["status"] == "active"
    step(b, clock, 30)
    info = b.member("m1")
    assert info["owed"] == 0 and info["status"] == "active"
    with b.engine.connect() as conn:
        kinds = conn.execute(
            select(schema.invoices.c.kind, schema.invoices.c.status).order_by(schema.invoices.c.id)
        ).all()
    assert [tuple(k) for k in kinds].count(("instalment", "paid")) == 3
    with b.engine.connect() as conn:
        numbers = conn.execute(
            select(schema.invoices.c.number).where(schema.invoices.c.kind == "instalment")
        ).scalars()
        assert all(n is not None for n in numbers)  # issued with legal numbers
    invoiced, paid, open_ = books(b)
    assert invoiced == paid + open_


def test_a_missed_instalment_is_dunned_to_suspension(tmp_path: Path) -> None:
    b, clock = in_arrears(tmp_path, ["insufficient_funds"])
    b.start_payment_plan("m1", 2, first_at=clock.now + 5 * DAY)
    assert b.member("m1")["status"] == "active"  # nothing is due before the first day
    step(b, clock, 4)
    assert b.member("m1")["status"] == "active"
    step(b, clock, 1)  # the first instalment is declined: grace, then suspended
    assert b.member("m1")["status"] == "grace"
    step(b, clock, 4)
    assert b.member("m1")["status"] == "suspended"
    assert published(b, "m1")["status"] == "suspended"


def test_a_payment_plan_is_refused_where_it_makes_no_sense(tmp_path: Path) -> None:
    b, clock = in_arrears(tmp_path, ["insufficient_funds"])
    with pytest.raises(BillingError, match="2 to 12"):
        b.payment_plan_quote("m1", 1)
    with pytest.raises(BillingError, match="within a month"):
        b.payment_plan_quote("m1", 2, first_at=clock.now + 40 * DAY)
    b.start_payment_plan("m1", 2, first_at=clock.now + DAY)
    with pytest.raises(BillingError, match="on a payment plan already"):
        b.start_payment_plan("m1", 2)
    b.add_member("m2", "Bo", plan_id="monthly", payment_method="pm_sim_ok")
    with pytest.raises(BillingError, match="owes 0"):
        b.payment_plan_quote("m2", 2)


def test_the_command_shows_the_instalments_before_yes(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(
        cfg,
        "members",
        "add",
        "m1",
        "--name",
        "Ann",
        "--plan",
        "monthly",
        "--card",
        "pm_sim_decline_insufficient_funds",
    )
    shown = cli_ok(cfg, "payment-plan", "m1", "--instalments", "2")
    assert "49.90 EUR owed on invoice(s) 1, in 2 instalments:" in shown
    assert "24.95 EUR" in shown and "run again with --yes" in shown
    doc = json.loads(cli_ok(cfg, "payment-plan", "m1", "--instalments", "2", "--yes", "--json"))
    assert doc["done"] and doc["total"] == 4990
    assert [i["total"] for i in doc["instalments"]] == [2495, 2495]


def instalments(b: Billing) -> list[tuple[int, int, str, int]]:
    """(total, paid, status, due day) of each instalment invoice, oldest first."""
    inv = schema.invoices
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(inv.c.total, inv.c.amount_paid, inv.c.status, inv.c.due_at)
            .where(inv.c.kind == "instalment")
            .order_by(inv.c.id)
        ).all()
    return [(r.total, r.amount_paid, r.status, (r.due_at - T0) // DAY) for r in rows]


def test_a_change_splits_what_is_still_owed_and_leaves_the_paid_instalments(
    tmp_path: Path,
) -> None:
    b, clock = in_arrears(tmp_path, ["insufficient_funds", "ok"])
    b.start_payment_plan("m1", 3)  # the first (19.80) is paid today
    b.record_payment("m1", 500)  # 5.00 of the second at the desk
    owed = b.member("m1")["owed"]
    assert owed == 1979 * 2 - 500
    quote = b.payment_plan_change_quote("m1", 4, first_at=clock.now + 10 * DAY)
    assert [i.total for i in quote.instalments] == [865, 865, 864, 864]
    assert (
        sum(i.tax for i in quote.instalments) == (2 * (1979 - 500) * 316 + 1979) // (2 * 1979) + 316
    )
    plan, _ = b.change_payment_plan("m1", 4, first_at=clock.now + 10 * DAY)
    assert plan == quote and plan.total == owed
    # Money is conserved: what was owed is owed still, on the new instalments only.
    assert b.member("m1")["owed"] == owed and b.member("m1")["status"] == "active"
    rows = instalments(b)
    assert rows[0] == (1980, 1980, "paid", 31)  # paid: untouched
    assert rows[1][:3] == (1979, 1979, "paid")  # settled: 5.00 at the desk, the rest moved
    assert rows[2][:3] == (1979, 1979, "paid")
    assert [(r[0], r[1], r[2]) for r in rows[3:]] == [(p, 0, "open") for p in (865, 865, 864, 864)]
    assert [r[3] for r in rows[3:]] == [41, 72, 100, 131]  # a month apart from the 10th day
    invoiced, paid, open_ = books(b)
    assert invoiced == paid + open_
    # The transfer is not money: revenue still counts the first month, 19.80 and the 5.00 only.
    rows_ = reports.revenue(b.engine, clock.now)[1]
    assert sorted(r[3] for r in rows_) == [500, 1980, 5938]
    # Nothing is due before the new first day; then it is charged as any instalment.
    step(b, clock, 9)
    assert b.member("m1")["owed"] == owed and b.member("m1")["status"] == "active"
    step(b, clock, 1)
    assert b.member("m1")["owed"] == owed - 865


def test_a_change_is_refused_without_a_plan_or_with_too_little_left(tmp_path: Path) -> None:
    b, clock = in_arrears(tmp_path, ["insufficient_funds"])
    with pytest.raises(BillingError, match="owes nothing on a payment plan"):
        b.payment_plan_change_quote("m1", 2)  # arrears, but no plan yet
    b.start_payment_plan("m1", 2, first_at=clock.now + DAY)
    with pytest.raises(BillingError, match="2 to 12"):
        b.change_payment_plan("m1", 13)
    b.record_payment("m1", 5938 - 90)
    # Instalments below the processor's smallest charge would only be written off.
    with pytest.raises(BillingError, match="2 instalments would each be below the smallest"):
        b.change_payment_plan("m1", 2)
    b.record_payment("m1", 87)
    with pytest.raises(BillingError, match="owes 3: nothing to split into 4"):
        b.change_payment_plan("m1", 4)
    assert b.member("m1")["owed"] == 3


def test_the_change_command_shows_the_new_instalments_before_yes(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(
        cfg,
        "members",
        "add",
        "m1",
        "--name",
        "Ann",
        "--plan",
        "monthly",
        "--card",
        "pm_sim_decline_insufficient_funds",
    )
    cli_ok(cfg, "payment-plan", "start", "m1", "--instalments", "2", "--yes")
    shown = cli_ok(cfg, "payment-plan", "change", "m1", "--instalments", "3")
    assert "m1: 49.90 EUR still owed on invoice(s) 2, 3, in 3 instalments:" in shown
    assert "16.64 EUR" in shown and "run again with --yes to change it" in shown
    doc = json.loads(
        cli_ok(cfg, "payment-plan", "change", "m1", "--instalments", "3", "--yes", "--json")
    )
    assert doc["done"] and doc["total"] == 4990 and doc["invoices"] == [2, 3]
    assert [i["total"] for i in doc["instalments"]] == [1664, 1663, 1663]
    assert json.loads(cli_ok(cfg, "members", "show", "m1", "--json"))["owed"] == 4990
