"""Taking money back, as a finance manager does it: the unused part of a freeze fee returned,
refunds (full, partial, of one line) through the simulated gateway, credit notes on what is
open, void and write-off, the refusals, the audit log, and the money that must add up after each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gated.billing_sync import engine as eng
from gated.billing_sync import schema
from gated.billing_sync.cli import app
from gated.billing_sync.errors import BillingError
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.helpers import DAY, Clock, cli_ok, make_billing, notices, published

# The monthly plan: 49.90 + 19 % = 59.38 a month; freeze fee 5.00 a month, 5.95 with tax.
RENEWAL, FREEZE_MONTH = 5938, 595


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock, SimulatedGateway]:
    clock = Clock()
    gw = SimulatedGateway(clock=clock)
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    return b, clock, gw


def rows(b: Billing, table: Any, **where: Any) -> list[Any]:
    q = select(table)
    for k, v in where.items():
        q = q.where(table.c[k] == v)
    with b.engine.connect() as conn:
        return list(conn.execute(q.order_by(table.c[next(iter(table.c.keys()))])))


def invoices_of(b: Billing, member_id: str, kind: str | None = None) -> list[Any]:
    found = rows(b, schema.invoices, member_id=member_id)
    return [i for i in found if kind is None or i.kind == kind]


def assert_books_balance(b: Billing, gw: SimulatedGateway) -> None:
    """Per invoice: total = money received - refunded + credited + written off + open, each
    invoice's rows add up to what it shows as settled, credit notes match their rows, and the
    provider's money is the card money booked."""
    pays = rows(b, schema.payments)
    notes = rows(b, schema.credit_notes)
    for inv in rows(b, schema.invoices):
        mine = [p for p in pays if p.invoice_id == inv.id]
        assert sum(p.amount for p in mine) == inv.amount_paid, inv
        open_ = inv.total - inv.amount_paid if inv.status == "open" else 0
        assert open_ >= 0
        if inv.status != "open":
            assert inv.amount_paid >= inv.total, inv
        credited = sum(p.amount for p in mine if p.method == "credit_note")
        assert credited == sum(n.amount for n in notes if n.invoice_id == inv.id)
    card = sum(p.amount for p in pays if p.method == "card")
    back = -sum(p.amount for p in pays if p.method == "refund" and p.reference.startswith("re_"))
    assert card == gw.charged_total()
    assert back == gw.refunded_total()


# --- fault 14: unfreeze gives back the unused part of the fee -----------------------------------


def test_unfreeze_after_a_day_returns_the_unused_part_of_a_paid_fee(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.freeze("m1", 3)
    (fee,) = invoices_of(b, "m1", "freeze")
    assert fee.status == "paid" and fee.total == 3 * FREEZE_MONTH
    with b.engine.connect() as conn:
        freeze = conn.execute(select(schema.freezes)).one()
    clock.advance(1.5)
    back = b.unfreeze("m1")
    assert back is not None
    # 3 months from 1 December: 90 days; ended in its second day: 88 whole days unused.
    days = (freeze.ends_at - freeze.starts_at) // DAY
    expected = fee.total * 88 // days
    assert back.refunded == expected and back.credited == expected
    assert eng.unused_freeze_fee(fee.total, freeze.starts_at, freeze.ends_at, clock.now) == expected
    (note,) = rows(b, schema.credit_notes)
    assert (note.kind, note.amount, note.invoice_id) == ("freeze", expected, fee.id)
    assert note.number == "downtown-CN-2026-000001"
    (refund,) = rows(b, schema.refunds)
    assert (refund.state, refund.amount) == ("succeeded", expected)
    assert gw.refunded_total() == expected
    after = invoices_of(b, "m1", "freeze")[0]
    assert after.status == "paid"  # settled: part paid and kept, part credited and refunded
    assert published(b, "m1")["status"] == "active"
    assert notices(b, "m1")[-1] == "refund"
    assert_books_balance(b, gw)


def test_unfreeze_of_an_unpaid_fee_credits_it_and_a_booked_freeze_dropped_returns_all(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_decline_insufficient_funds")
    b.freeze("m1", 2)  # the fee's charge is declined: it stays open
    (fee,) = invoices_of(b, "m1", "freeze")
    assert fee.status == "open" and fee.amount_paid == 0
    clock.advance(10)
    back = b.unfreeze("m1")
    assert back is not None and back.refunded == 0 and 0 < back.credited < fee.total
    after = invoices_of(b, "m1", "freeze")[0]
    # What the member still owes is the used part only.
    assert after.total - after.amount_paid == fee.total - back.credited
    assert gw.refunded_total() == 0

    b.add_member("m2", "Bo", plan_id="monthly", email="b@x", payment_method="pm_sim_ok")
    b.freeze("m2", 1, start_at=clock.now + 5 * DAY)
    dropped = b.unfreeze("m2")
    assert dropped is not None and dropped.refunded == FREEZE_MONTH
    assert_books_balance(b, gw)


def test_unfreeze_leaves_a_disputed_fee_payment_to_its_bank(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.freeze("m1", 1)
    (fee,) = invoices_of(b, "m1", "freeze")
    (pay,) = rows(b, schema.payments, invoice_id=fee.id)
    b.dispute_opened("dp_1", pay.reference)
    clock.advance(3)
    back = b.unfreeze("m1")  # the freeze ends; nothing is refunded while the bank decides
    assert back is not None and (back.refunded, back.credited) == (0, 0)
    with pytest.raises(BillingError, match="disputed by the member's bank"):
        b.refund(fee.id)
    assert gw.refunded_total() == 0


def test_unfreeze_waits_for_the_fee_debit_in_flight_instead_of_crediting_it(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    """Crediting a fee whose SEPA debit is still processing left it paid twice once the debit
    settled; the freeze is kept until the debit has settled, then its fee is refunded."""
    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_sepa")
    b.freeze("m1", 1, start_at=clock.now + 10 * DAY)  # the fee is debited: processing
    (fee,) = invoices_of(b, "m1", "freeze")
    (debit,) = rows(b, schema.payment_attempts, invoice_id=fee.id)
    assert (fee.status, debit.state) == ("open", "processing")
    with pytest.raises(BillingError, match="charge in flight"):
        b.unfreeze("m1")
    assert len(rows(b, schema.freezes, member_id="m1")) == 1  # nothing of it was changed
    assert rows(b, schema.credit_notes) == []
    clock.advance(3)
    b.run_cycle()  # the debit settles: the fee is paid once
    after = invoices_of(b, "m1", "freeze")[0]
    assert (after.status, after.amount_paid) == ("paid", fee.total)
    back = b.unfreeze("m1")  # the booked freeze dropped: all of its fee goes back
    assert back is not None and (back.refunded, back.credited) == (fee.total, fee.total)
    final = invoices_of(b, "m1", "freeze")[0]
    # Settled by the debit once, then credited and refunded: never beyond its total.
    assert final.amount_paid == fee.total and gw.refunded_total() == fee.total
    assert rows(b, schema.freezes, member_id="m1") == []


# --- refunds, credit notes, void, write-off ------------------------------------------------------


def test_partial_then_full_refund_of_a_renewal_through_the_gateway(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    (inv,) = invoices_of(b, "m1")
    clock.advance(2)
    part = b.refund(inv.id, 1000, reason="broken locker")
    assert (part.refunded, part.credited) == (1000, 1000)
    rest = b.refund(inv.id)
    assert rest.refunded == RENEWAL - 1000
    with pytest.raises(BillingError, match=r"0\.00 EUR to refund"):
        b.refund(inv.id, 1)
    after = invoices_of(b, "m1")[0]
    assert after.status == "paid" and after.amount_paid == after.total
    assert after.paid_at == inv.paid_at  # still paid on the day it was paid
    assert gw.refunded_total() == RENEWAL
    assert [n.amount for n in rows(b, schema.credit_notes)] == [1000, RENEWAL - 1000]
    # A refund changes no status: the member keeps the period (a refund is not a cancellation).
    assert published(b, "m1")["status"] == "active"
    assert_books_balance(b, gw)


def test_refund_of_one_line_with_its_tax(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, _, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.charge_extra("m1", "personal_training", "PT session", 3000)
    (extra,) = invoices_of(b, "m1", "extra")
    shown = b.invoice_money(extra.id)
    (line,) = [ln for ln in shown["lines"] if ln["kind"] == "extra"]
    out = b.refund(extra.id, line_id=line["id"])
    assert out.refunded == 3570  # 30.00 + 19 %
    (note,) = rows(b, schema.credit_notes)
    assert (note.line_id, note.tax) == (line["id"], 570)
    with pytest.raises(BillingError, match="credited before"):
        b.refund(extra.id, line_id=line["id"])
    assert_books_balance(b, gw)


def test_credit_void_and_write_off_of_open_invoices(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_decline_lost_card")  # hard: never retried
    for _ in range(3):
        b.charge_extra("m1", "personal_training", "PT session", 3000)
    a, v, w = invoices_of(b, "m1", "extra")
    assert {a.status, v.status, w.status} == {"open"}
    out = b.credit(a.id, 570, reason="goodwill")
    assert out.credited == 570 and invoices_of(b, "m1", "extra")[0].amount_paid == 570
    b.void(v.id, reason="issued in error")
    written = b.write_off(w.id)
    assert written == 3570
    a2, v2, w2 = invoices_of(b, "m1", "extra")
    assert (a2.status, v2.status, w2.status) == ("open", "void", "written_off")
    assert sum(r[3] for r in _outstanding(b)) == 3000  # only what is left of the first
    b.credit(a.id)  # the rest of it
    assert published(b, "m1")["status"] == "active"
    with pytest.raises(BillingError, match="void: nothing was paid"):
        b.refund(v.id)
    with pytest.raises(BillingError, match="only an open invoice"):
        b.write_off(w.id)
    assert_books_balance(b, gw)
    clock.advance(1)
    b.run_cycle()
    assert gw.charged_total() == RENEWAL  # nothing voided or written off was charged after


def _outstanding(b: Billing) -> list[Any]:
    from gated.billing_sync import reports

    return list(reports.outstanding(b.engine, b.clock())[1])


def test_void_of_a_paid_invoice_and_refund_beyond_what_was_paid_are_refused(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, _, _ = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    (inv,) = invoices_of(b, "m1")
    with pytest.raises(BillingError, match="refund it"):
        b.void(inv.id)
    with pytest.raises(BillingError, match=r"59\.38 EUR to refund"):
        b.refund(inv.id, RENEWAL + 1)
    with pytest.raises(BillingError, match="no invoice 999"):
        b.refund(999)


def test_a_desk_payment_is_given_back_at_the_desk(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, _, gw = billing
    b.add_member(
        "m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_decline_lost_card"
    )
    b.record_payment("m1")
    (inv,) = invoices_of(b, "m1")
    out = b.refund(inv.id, 500)
    assert out.refunded == 500
    (refund,) = rows(b, schema.refunds)
    assert refund.gateway_ref is None and refund.state == "succeeded"
    assert gw.refunded_total() == 0
    assert_books_balance(b, gw)


def test_the_cli_refunds_voids_and_writes_off_with_the_operator_in_the_audit_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.billing.helpers import write_cli_config

    monkeypatch.chdir(tmp_path)
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    assert "invoice 1: 10.00 EUR refunded" in cli_ok(
        cfg, "invoice", "refund", "1", "--amount", "1000"
    )
    shown = cli_ok(cfg, "invoice", "show", "1")
    assert "CN-" in shown and "refund" in shown
    runner = CliRunner()
    too_much = runner.invoke(app, ["invoice", "refund", "1", "--amount", "999999", "-c", str(cfg)])
    assert too_much.exit_code == 2
    assert "to refund" in too_much.output and "Traceback" not in too_much.output
    void_paid = runner.invoke(app, ["invoice", "void", "1", "-c", str(cfg)])
    assert void_paid.exit_code == 2 and "refund it" in void_paid.output
    cli_ok(cfg, "members", "set-card", "m1", "pm_sim_decline_lost_card")
    cli_ok(cfg, "charge-extra", "m1", "--amount", "3000")
    assert "written off" in cli_ok(cfg, "invoice", "write-off", "2")
    help_text = runner.invoke(app, ["invoice", "--help"]).stdout
    assert "credit note" in help_text and "write-off" in help_text
    import json

    assert json.loads(cli_ok(cfg, "members", "show", "m1", "--json"))["owed"] == 0
    from gated.billing_sync.store import open_store

    engine = open_store(f"sqlite:///{tmp_path}/billing.db")
    with engine.connect() as conn:
        actions = [
            (r.action, r.actor_kind)
            for r in conn.execute(select(schema.audit_log).order_by(schema.audit_log.c.id))
        ]
    engine.dispose()
    assert ("refund", "cli") in actions and ("write_off", "cli") in actions


# --- dispute evidence ------------------------------------------------------------------------------


def test_dispute_evidence_assembles_invoices_receipts_and_visits_and_is_submitted(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    from gated.contract import format_time

    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    (pay,) = rows(b, schema.payments)
    visits = [clock.now + d * DAY + 3600 for d in (1, 2, 5)]
    b.record_gate_events(
        [
            {
                "event_id": f"e{n}",
                "site": "downtown",
                "gate": "t1",
                "at": format_time(at),
                "kind": "entry",
                "member_id": "m1",
                "reason": "ok",
            }
            for n, at in enumerate(visits)
        ]
        + [
            {
                "event_id": "e9",
                "site": "downtown",
                "gate": "t1",
                "at": format_time(visits[0]),
                "kind": "deny",
                "member_id": "m1",
                "reason": "outside_schedule",
            }
        ]
    )
    clock.advance(10)
    b.dispute_opened("dp_1", pay.reference)
    doc = b.dispute_evidence("dp_1")
    assert doc["invoice"]["id"] == pay.invoice_id and doc["member"]["email"] == "a@x"
    assert doc["visits"]["count"] == 3  # entries only, within the period paid for
    (number,) = [i.number for i in rows(b, schema.invoices, id=pay.invoice_id)]
    assert [r["subject"] for r in doc["receipts"]] == [f"Receipt for invoice {number}"]
    assert doc["contract"] is None  # enrolled at the desk: no online contract
    sent = b.submit_dispute_evidence("dp_1")
    assert gw.evidence["dp_1"] == sent
    assert "3 entries" in sent["access_activity_log"] and sent["customer_name"] == "Ann"
    b.dispute_closed("dp_1", pay.reference, "won")
    with pytest.raises(BillingError, match="too late"):
        b.submit_dispute_evidence("dp_1")
    with pytest.raises(BillingError, match="no dispute"):
        b.dispute_evidence("dp_2")


def test_disputes_evidence_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from tests.billing.crashing import billing_for
    from tests.billing.helpers import write_cli_config

    monkeypatch.chdir(tmp_path)
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    b = billing_for(cfg)
    (pay,) = rows(b, schema.payments)
    b.dispute_opened("dp_1", pay.reference)
    doc = json.loads(cli_ok(cfg, "disputes", "evidence", "dp_1"))
    assert doc["dispute"]["payment"] == pay.reference and doc["member"]["name"] == "Ann"
    assert json.loads(cli_ok(cfg, "disputes", "evidence", "dp_1", "--submit")) == doc
    assert b.audit_entries(member_id="m1")[0]["action"] == "dispute_evidence"
    unknown = CliRunner().invoke(app, ["disputes", "evidence", "dp_9", "-c", str(cfg)])
    assert unknown.exit_code == 2 and "no dispute 'dp_9'" in unknown.stderr
    b.engine.dispose()


def test_refunds_reconcile_with_the_providers_books(
    billing: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    from gated.billing_sync import reconcile

    b, clock, gw = billing
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    (pay,) = rows(b, schema.payments)
    clock.advance(1)
    b.refund(pay.invoice_id, 1000)
    gw.refund(pay.reference, 500, "dashboard-1")  # not yet reported to us
    clock.advance(1)
    reconcile.fetch(b.engine, gw, clock.now, None)
    _, found = reconcile.mismatches(b.engine)
    assert [(m[0], m[1], m[5], m[6]) for m in found] == [("amount_differs", "refund", -1000, -1500)]
    b.refunds_reported(pay.reference)
    assert reconcile.mismatches(b.engine)[1] == []
