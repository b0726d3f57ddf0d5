"""One household invoice: a payer and the dependants renewing in the same cycle run get one
invoice (the payer's, one line per member with their plan, price, tax and period) and one
charge on the payer's card; its dunning, suspension and payment are the whole household's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gated.billing_sync import reports
from gated.billing_sync import schema as s
from gated.billing_sync.errors import BillingError
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.contract import parse_time
from tests.billing import report_recount
from tests.billing.helpers import DAY, Clock, make_billing, published, step
from tests.billing.test_stripe_gateway import gateway as stripe_gateway
from tests.services import LocalStripe

HOUSEHOLD = ("pat", "kim", "lou")
# Monthly: 49.90 net and 19 % tax, 59.38 per member.
GROSS = 5938


@pytest.fixture
def household(tmp_path: Path) -> tuple[Billing, Clock, SimulatedGateway]:
    clock = Clock()
    gateway = SimulatedGateway(clock=clock)
    b, _ = make_billing(tmp_path, gateway=gateway, clock=clock)
    b.add_member("pat", "Pat", plan_id="monthly", email="pat@x", payment_method="pm_sim_ok")
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    b.add_member("lou", "Lou", plan_id="monthly", payer_id="pat")
    return b, clock, gateway


def rows(b: Billing, table: Any, *where: Any) -> list[Any]:
    with b.engine.connect() as conn:
        return list(conn.execute(select(table).where(*where).order_by(table.c.id)))


def paid_through(b: Billing, member: str) -> int:
    sub = s.subscriptions
    with b.engine.connect() as conn:
        return int(
            conn.execute(select(sub.c.paid_through).where(sub.c.member_id == member)).scalar_one()
        )


def renewals(b: Billing) -> list[Any]:
    """The renewal invoices after each member's first period (billed as they joined)."""
    inv, sub = s.invoices, s.subscriptions
    with b.engine.connect() as conn:
        return list(
            conn.execute(
                select(inv)
                .join(sub, sub.c.member_id == inv.c.member_id)
                .where(inv.c.kind == "renewal", inv.c.period_start != sub.c.started_at)
                .order_by(inv.c.id)
            )
        )


def to_renewal(b: Billing, clock: Clock) -> None:
    """The clock at the household's renewal, and the cycle that bills it."""
    clock.now = paid_through(b, "pat")
    b.run_cycle()


def test_a_household_renews_on_one_invoice_with_a_line_per_member_and_one_charge(
    household: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gateway = household
    start = paid_through(b, "pat")
    charged = gateway.charged_total()
    attempts = len(rows(b, s.payment_attempts))
    to_renewal(b, clock)
    [inv] = renewals(b)
    assert (inv.member_id, inv.household, inv.status) == ("pat", True, "paid")
    assert inv.total == 3 * GROSS and inv.number is not None and inv.site == "downtown"
    lines = rows(b, s.invoice_lines, s.invoice_lines.c.invoice_id == inv.id)
    members = [ln.member_id for ln in lines if ln.kind == "membership"]
    assert members == list(HOUSEHOLD)
    for ln in lines:
        assert (ln.period_start, ln.period_end) == (inv.period_start, inv.period_end)
        if ln.kind == "membership":
            who = ln.member_id.title()
            assert ln.description.startswith(f"{who}: Monthly") and ln.amount == 4990
    assert sorted(ln.amount for ln in lines if ln.kind == "tax") == [948] * 3
    # One charge, on the payer's card, for the whole household.
    [attempt] = rows(b, s.payment_attempts)[attempts:]
    assert (attempt.member_id, attempt.amount, attempt.state) == ("pat", 3 * GROSS, "succeeded")
    assert gateway.charged_total() - charged == 3 * GROSS
    for member in HOUSEHOLD:
        assert paid_through(b, member) == inv.period_end > start
        state = published(b, member)
        assert state["status"] == "active"
        assert parse_time(state["valid_until"]).timestamp() == inv.period_end + 3 * DAY
    # The next cycles bill nothing more for that period.
    step(b, clock, 2)
    assert len(renewals(b)) == 1


def test_a_declined_household_charge_suspends_everyone_on_it_and_a_desk_payment_restores_them(
    household: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gateway = household
    b.set_payment_method("pat", "pm_sim_decline_insufficient_funds")
    charged = gateway.charged_total()
    to_renewal(b, clock)
    [inv] = renewals(b)
    assert inv.status == "open" and inv.total == 3 * GROSS
    [attempt] = rows(b, s.payment_attempts, s.payment_attempts.c.invoice_id == inv.id)
    assert attempt.state == "failed"
    for member in HOUSEHOLD:
        assert published(b, member)["status"] == "grace", member
    step(b, clock, 4)
    # One invoice, retried as one: never a charge per member.
    assert {a.invoice_id for a in rows(b, s.payment_attempts)[-2:]} <= {inv.id}
    assert len(renewals(b)) == 1
    for member in HOUSEHOLD:
        assert published(b, member)["status"] == "suspended", member
    assert gateway.charged_total() == charged
    # A dependant's share is paid with the payer's invoice, not apart.
    with pytest.raises(BillingError, match="household invoice of their payer pat"):
        b.record_payment("kim")
    # The payer pays at the desk: everyone on the invoice is in again, and the gates are told.
    assert b.record_payment("pat") == 3 * GROSS
    for member in HOUSEHOLD:
        state = published(b, member)
        assert state["status"] == "active", member
        assert parse_time(state["valid_until"]).timestamp() > clock.now
        assert paid_through(b, member) == inv.period_end


def test_a_dependant_renewing_on_another_day_gets_an_invoice_of_their_own(
    tmp_path: Path,
) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member("pat", "Pat", plan_id="monthly", email="pat@x", payment_method="pm_sim_ok")
    clock.advance(10)
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    step(b, clock, 31)
    by_member = {inv.member_id: inv for inv in renewals(b)}
    assert by_member.keys() == {"pat", "kim"}
    assert not by_member["pat"].household and not by_member["kim"].household
    assert by_member["kim"].total == GROSS and by_member["kim"].status == "paid"
    assert published(b, "kim")["status"] == "active"


def test_a_household_is_one_payment_intent_at_stripe_and_dunned_as_one(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    b, clock = make_billing(tmp_path, gateway=stripe_gateway(localstripe.url))
    b.add_member("pat", "Pat", plan_id="monthly", email="pat@x", payment_method="pm_card_visa")
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    b.add_member("lou", "Lou", plan_id="monthly", payer_id="pat")
    to_renewal(b, clock)
    [inv] = renewals(b)
    [attempt] = rows(b, s.payment_attempts, s.payment_attempts.c.invoice_id == inv.id)
    # The provider holds one PaymentIntent for the household, for all three members.
    intent = httpx.get(
        f"{localstripe.url}/v1/payment_intents/{attempt.gateway_ref}", auth=("sk_test_local", "")
    ).json()
    assert (intent["amount"], intent["status"]) == (3 * GROSS, "succeeded")
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(HOUSEHOLD, "active")
    # The next renewal is declined (localstripe gives no decline code: a soft decline).
    b.set_payment_method("pat", "pm_card_chargeCustomerFail")
    to_renewal(b, clock)
    second = renewals(b)[-1]
    assert second.household and second.status == "open" and second.total == 3 * GROSS
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(HOUSEHOLD, "grace")
    clock.advance(3.5)
    b.run_cycle()
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(
        HOUSEHOLD, "suspended"
    )
    # A new card pays the household's invoice with one charge: everyone is in again.
    b.set_payment_method("pat", "pm_card_visa")
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(HOUSEHOLD, "active")
    paid = rows(b, s.payments, s.payments.c.invoice_id == second.id)
    assert [(p.member_id, p.amount, p.method) for p in paid] == [("pat", 3 * GROSS, "card")]
    for member in HOUSEHOLD:
        assert paid_through(b, member) == second.period_end


def test_one_dependants_line_is_credited_or_refunded_with_its_tax(
    household: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    b, clock, gateway = household
    b.set_payment_method("pat", "pm_sim_decline_insufficient_funds")
    to_renewal(b, clock)
    [inv] = renewals(b)
    lines = rows(b, s.invoice_lines, s.invoice_lines.c.invoice_id == inv.id)
    kim, lou = (
        next(ln.id for ln in lines if ln.member_id == m and ln.kind == "membership")
        for m in ("kim", "lou")
    )
    # Kim's line credited while the invoice is open: the household owes the other two.
    assert b.credit(inv.id, line_id=kim).credited == GROSS
    b.run_cycle()
    assert b.member("kim")["owed"] == 0 and b.member("lou")["owed"] == GROSS
    # Her period is settled by the credit note, as a credited renewal is: nothing re-billed.
    assert paid_through(b, "kim") == inv.period_end
    b.set_payment_method("pat", "pm_sim_ok")
    [inv] = renewals(b)
    assert inv.status == "paid" and gateway.charged_total() >= 2 * GROSS
    paid = rows(b, s.payments, s.payments.c.invoice_id == inv.id, s.payments.c.method == "card")
    assert [p.amount for p in paid] == [2 * GROSS]
    # Lou's line refunded once paid: money back through the provider, for that line only.
    refunded = gateway.refunded_total()
    assert b.refund(inv.id, line_id=lou).refunded == GROSS
    assert gateway.refunded_total() - refunded == GROSS
    for member in HOUSEHOLD:
        assert published(b, member)["status"] == "active", member


def test_a_household_is_billed_dunned_and_paid_as_one_on_postgresql(
    tmp_path: Path, postgres_store_url: str
) -> None:
    b, clock = make_billing(tmp_path, database_url=postgres_store_url)
    b.add_member("pat", "Pat", plan_id="monthly", email="pat@x", payment_method="pm_sim_ok")
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    b.add_member("lou", "Lou", plan_id="monthly", payer_id="pat")
    b.set_payment_method("pat", "pm_sim_decline_insufficient_funds")
    to_renewal(b, clock)
    [inv] = renewals(b)
    assert inv.household and inv.total == 3 * GROSS
    assert {m: b.member(m)["owed"] for m in HOUSEHOLD} == {
        "pat": 3 * GROSS,
        "kim": GROSS,
        "lou": GROSS,
    }
    step(b, clock, 4)
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(
        HOUSEHOLD, "suspended"
    )
    b.set_payment_method("pat", "pm_sim_ok")
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(HOUSEHOLD, "active")
    assert {paid_through(b, m) for m in HOUSEHOLD} == {inv.period_end}
    # The MRR rollup's household triggers on PostgreSQL: a renewal a member, at their sites.
    b.edit_member("kim", sites=["uptown"])
    b.edit_member("pat", sites=["downtown"])  # lou stays at both
    for sites, members in ((None, 3), (("downtown",), 2), (("uptown",), 2)):
        scope = reports.Scope(sites=sites)
        found = reports.REPORTS["mrr"](b.engine, clock(), scope)
        assert found == report_recount.mrr(b.engine, clock(), scope)
        assert found[1][-1][3] == members, sites


def test_the_payer_paying_the_household_invoice_on_its_page_settles_it_for_all(
    tmp_path: Path,
) -> None:
    clock = Clock()
    # The three joins, then the household's renewal declined, then the page's charge.
    script = {"pm_pat": ["ok", "ok", "ok", "insufficient_funds", "ok"]}
    gateway = SimulatedGateway(clock=clock, script=script)
    b, _ = make_billing(tmp_path, gateway=gateway, clock=clock)
    b.add_member("pat", "Pat", plan_id="monthly", email="pat@x", payment_method="pm_pat")
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    b.add_member("lou", "Lou", plan_id="monthly", payer_id="pat")
    to_renewal(b, clock)
    [inv] = renewals(b)
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(HOUSEHOLD, "grace")
    result = b.pay_invoice(inv.id, "form-1", "http://127.0.0.1/pay/done")
    assert result.state == "succeeded"
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(HOUSEHOLD, "active")
    assert {paid_through(b, m) for m in HOUSEHOLD} == {inv.period_end}


def test_a_dependants_debt_on_the_payers_new_card_is_judged_by_the_payer_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The money machine's sequence (shrunk by hand) that ended in ``charged while locked
    out``: the payer's new card, given while the payer is in grace, charges the dependant's
    open extra at once; the machine then skipped a month to the payer's renewal, where the
    payer is in collections, and judged that charge by the payer's standing a month later.
    Replayed rule by rule with every invariant after each, as Hypothesis runs it; then what
    the store shows: the dependant charged with the payer in grace, never while out, and not
    reviewed again until the payer is back (her retry, due, is not hers to make meanwhile: the
    cycle met her again at once and logged ``cycle_stuck``)."""
    from tests.billing.test_money_machine import MoneyMachine

    m = MoneyMachine()
    try:
        start = m.clock.now
        steps: list[tuple[str, dict[str, Any]]] = [
            ("migrate", {"card": "pm_sim_decline_insufficient_funds", "days_ago": 203}),
            ("household_renews", {"card": "pm_sim_decline_insufficient_funds"}),
            ("sell_towels", {"member": "pat", "method": None, "quantity": 2}),
            ("settle_open", {"how": "credit"}),
            ("settle_open", {"how": "credit"}),
            ("extra", {"member": "kim"}),
            ("settle_open", {"how": "write_off"}),
            ("household_renews", {"card": "pm_sim_decline_insufficient_funds"}),
        ]
        for name, kwargs in steps:
            getattr(m, name)(**kwargs)
            m.after_each_step()
            m.nothing_charged_below_the_minimum()
            m.stock_and_passes_hold()
        b = m.billing
        # The household invoice written off, the payer owes the towels, the dependant her extra.
        [hh] = rows(b, s.invoices, s.invoices.c.household.is_(True))
        assert hh.status == "written_off"
        kims = rows(b, s.payment_attempts, s.payment_attempts.c.member_id == "kim")
        # Her extra failed as billed, and again on the payer's new card: both on day 31, the
        # payer in grace; nothing on day 62, with the payer in collections.
        assert [(a.idempotency_key[-3:], (a.created_at - start) // DAY) for a in kims[-2:]] == [
            ("-a1", 31),
            ("-a2", 31),
        ]
        assert (m.clock.now - start) // DAY == 62
        with b.engine.connect() as conn:
            sub = s.subscriptions
            payer = conn.execute(select(sub.c.status).where(sub.c.member_id == "pat"))
            assert payer.scalar_one() == "collections"
        assert published(b, "kim")["status"] not in ("active", "grace", "pending_cancel")
        with b.engine.connect() as conn:
            review = conn.execute(select(sub.c.review_at).where(sub.c.member_id == "kim"))
            assert (review.scalar_one() or m.clock.now + 1) > m.clock.now
        assert "cycle_stuck" not in caplog.text
    finally:
        m.teardown()


def test_a_household_invoices_lines_count_at_each_members_site(tmp_path: Path) -> None:
    """A payer downtown and a dependant uptown on a cheaper plan: the household invoice's
    money counts at each member's site, by the lines that name them."""
    clock = Clock()
    b, _ = make_billing(tmp_path, gateway=SimulatedGateway(clock=clock), clock=clock)
    b.add_plan(PlanSpec("basic", "Basic", 2990, "EUR", tax_rate_bp=1900))
    b.add_member("pat", "Pat", plan_id="monthly", sites=["downtown"], payment_method="pm_sim_ok")
    b.add_member("kim", "Kim", plan_id="basic", sites=["uptown"], payer_id="pat")
    to_renewal(b, clock)
    [inv] = renewals(b)
    assert inv.household and inv.status == "paid" and inv.subtotal == 4990 + 2990

    def report(name: str, *sites: str) -> list[tuple[Any, ...]]:
        scope = reports.Scope(sites=sites or None)
        return reports.REPORTS[name](b.engine, clock(), scope)[1]

    # Deferred now: the renewal's period starts now, so each member's net counts whole, at
    # their own site; the invoice once in each.
    def deferred(*sites: str) -> list[tuple[int, int]]:
        month = reports.month_of(clock())
        return [(r[3], r[4]) for r in report("deferred", *sites) if r[0] == month]

    assert deferred("downtown") == [(4990, 1)]
    assert deferred("uptown") == [(2990, 1)]
    assert deferred() == [(4990 + 2990, 1)]

    # MRR (from its rollup), today and from tomorrow on (the rollup's days): each member's
    # net a month at their own site, one renewal each; equal to a recount from the rows.
    def mrr(*sites: str) -> list[tuple[int, int]]:
        month = reports.month_of(clock())
        found = report("mrr", *sites)
        scope = reports.Scope(sites=sites or None)
        assert found == report_recount.mrr(b.engine, clock(), scope)[1]
        return [(r[2], r[3]) for r in found if r[0] == month]

    for _ in range(2):
        assert mrr("downtown") == [(4990, 1)]
        assert mrr("uptown") == [(2990, 1)]
        assert mrr() == [(4990 + 2990, 2)]
        clock.advance(1)
    # A member's sites changing moves their line's MRR with them (and the payer's, theirs).
    b.edit_member("kim", sites=["downtown"])
    assert mrr("downtown") == [(4990 + 2990, 2)] and mrr("uptown") == []
    b.edit_member("pat", sites=["uptown"])
    assert mrr("downtown") == [(2990, 1)] and mrr("uptown") == [(4990, 1)]


@pytest.mark.parametrize("how", ["write_off", "void", "credit"])
def test_settling_a_household_invoice_without_money_restores_the_dependants_at_once(
    household: tuple[Billing, Clock, SimulatedGateway], how: str
) -> None:
    """Written off, voided or credited in full, the household invoice no longer holds the
    dependants in grace: they are published active at once, even though the payer, who owes
    an extra besides, stays in grace (so no change of the payer's refreshes them)."""
    b, clock, _ = household
    b.set_payment_method("pat", "pm_sim_decline_insufficient_funds")
    to_renewal(b, clock)
    b.charge_extra("pat", "personal_training", "PT session", 3000)
    [inv] = renewals(b)
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == dict.fromkeys(HOUSEHOLD, "grace")
    getattr(b, how)(inv.id)
    assert {m: published(b, m)["status"] for m in HOUSEHOLD} == {
        "pat": "grace",
        "kim": "active",
        "lou": "active",
    }


def test_a_dependants_sale_on_the_next_invoice_goes_on_the_household_invoice(
    household: tuple[Billing, Clock, SimulatedGateway],
) -> None:
    """Water sold to a dependant on their next invoice waits for their renewal, which is on
    the payer's household invoice: it is billed there, as the dependant's line at its own
    rate, and charged with the household."""
    from gated.billing_sync.audit import Actor
    from gated.billing_sync.products import ProductSpec

    b, clock, _ = household
    pos = b.point_of_sale()
    pos.add(ProductSpec("water", "Water", 150, tax_rate_bp=700))
    desk = Actor("staff", "desk", "front_desk", "127.0.0.1")
    pos.sell(desk, "water", member_id="kim", method="next_invoice", quantity=2)
    to_renewal(b, clock)
    [inv] = renewals(b)
    assert inv.household and inv.status == "paid"
    water = (2 * 150) + (2 * 150 * 700 + 5000) // 10000
    assert inv.total == 3 * GROSS + water
    lines = rows(b, s.invoice_lines, s.invoice_lines.c.invoice_id == inv.id)
    kims = [(ln.kind, ln.amount, ln.tax_rate_bp) for ln in lines if ln.member_id == "kim"]
    assert sorted(kims) == sorted(
        [("membership", 4990, 1900), ("tax", 948, 1900), ("item", 300, 700), ("tax", 21, 700)]
    )
    [pending] = rows(b, s.pending_lines)
    assert pending.invoice_id == inv.id
    # MRR counts her once, her net (membership and water) a month, as the recount does
    # (from the rollup: the day after).
    clock.advance(1)
    found = reports.REPORTS["mrr"](b.engine, clock(), reports.EVERYTHING)
    assert found == report_recount.mrr(b.engine, clock())
    assert found[1][-1][2:] == (3 * 4990 + 300, 3)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_mrr_migration_moves_household_invoices_already_paid_to_their_lines(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    """Household invoices paid before migration 0025 were counted whole under the payer's
    sites: its upgrade moves each to its members' lines, and its downgrade counts them whole
    again. Two households at one site, so that one statement sums several invoices into one
    rollup row (PostgreSQL refuses an upsert that touches a row twice)."""
    from alembic import command

    from gated.billing_sync.store import alembic_config

    where = (
        {"database_url": request.getfixturevalue("postgres_store_url")}
        if database != "sqlite"
        else {}
    )
    clock = Clock()
    b, _ = make_billing(tmp_path, gateway=SimulatedGateway(clock=clock), clock=clock, **where)
    b.add_plan(PlanSpec("basic", "Basic", 2990, "EUR", tax_rate_bp=1900))
    for payer, dependant in (("pat", "kim"), ("sam", "tom")):
        b.add_member(
            payer, payer, plan_id="monthly", sites=["downtown"], payment_method="pm_sim_ok"
        )
        b.add_member(dependant, dependant, plan_id="basic", sites=["uptown"], payer_id=payer)
    to_renewal(b, clock)
    assert [inv.household and inv.status for inv in renewals(b)] == ["paid", "paid"]
    clock.advance(1)

    def mrr(*sites: str) -> tuple[int, int]:
        """This month's MRR and renewals at ``sites`` (everywhere without)."""
        found = reports.REPORTS["mrr"](b.engine, clock(), reports.Scope(sites=sites or None))
        month = reports.month_of(clock())
        return next((r[2], r[3]) for r in [*found[1], (month, "EUR", 0, 0)] if r[0] == month)

    split = {"downtown": (2 * 4990, 2), "uptown": (2 * 2990, 2)}
    assert {site: mrr(site) for site in split} == split
    config = alembic_config()
    for target, expected in (
        ("0024_household_invoices", {"downtown": (2 * (4990 + 2990), 2), "uptown": (0, 0)}),
        ("head", split),
    ):
        with b.engine.begin() as conn:
            config.attributes["connection"] = conn
            move = command.downgrade if target != "head" else command.upgrade
            move(config, target)
        assert {site: mrr(site) for site in expected} == expected, target
    assert mrr() == (2 * (4990 + 2990), 4)
    assert reports.REPORTS["mrr"](b.engine, clock()) == report_recount.mrr(b.engine, clock())
    b.engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_household_payment_is_revenue_at_each_members_sites(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    """Each payment of a household invoice (a part paid at the desk, the rest by card, a
    line refunded) is revenue at each member's sites, in proportion to their lines, in whole
    cents adding up to the payment; the payment counts once, at the payer's. The rollup
    (migration 0029's triggers) equals the recount after each write and each site move, and
    the migration's downgrade counts it all at the payer's again, its upgrade splits it."""
    from alembic import command

    from gated.billing_sync.store import alembic_config

    where = (
        {"database_url": request.getfixturevalue("postgres_url")} if database != "sqlite" else {}
    )
    clock = Clock()
    b, _ = make_billing(tmp_path, gateway=SimulatedGateway(clock=clock), clock=clock, **where)
    b.add_plan(PlanSpec("basic", "Basic", 2990, "EUR", tax_rate_bp=1900))
    b.add_member("pat", "Pat", plan_id="monthly", sites=["downtown"], payment_method="pm_sim_ok")
    b.add_member("kim", "Kim", plan_id="basic", sites=["uptown"], payer_id="pat")
    b.add_member("lou", "Lou", plan_id="monthly", sites=["downtown", "uptown"], payer_id="pat")
    b.set_payment_method("pat", "pm_sim_decline_insufficient_funds")
    to_renewal(b, clock)
    [inv] = renewals(b)
    assert inv.household and inv.total == 3558 + 2 * GROSS

    def revenue(*sites: str) -> list[tuple[Any, ...]]:
        scope = reports.Scope(sites=sites or None)
        found = reports.REPORTS["revenue"](b.engine, clock(), scope)
        assert found == report_recount.revenue(b.engine, clock(), scope), sites
        return found[1]

    def at_desk(*sites: str) -> tuple[int, int]:
        """This month's front-desk gross and payments at ``sites``."""
        month = reports.month_of(clock())
        rows = [(r[3], r[6]) for r in revenue(*sites) if r[0] == month and r[2] == "front_desk"]
        return rows[0] if rows else (0, 0)

    b.record_payment("pat", 1001)
    # Kim 3558, Lou 5938, Pat 5938 of 15434, in id order: 1001 * 3558 // 15434 = 230 to Kim,
    # 1001 * 9496 // 15434 - 230 = 385 to Lou, the rest (386) to Pat.
    assert at_desk("uptown") == (230 + 385, 0)
    assert at_desk("downtown") == (385 + 386, 1)
    assert at_desk() == (1001, 1)
    b.set_payment_method("pat", "pm_sim_ok")  # the rest, by card
    assert renewals(b)[0].status == "paid"
    kims = [ln.id for ln in rows(b, s.invoice_lines, s.invoice_lines.c.invoice_id == inv.id)]
    b.refund(inv.id, line_id=next(i for i in kims if i is not None and _member_of(b, i) == "kim"))
    revenue("downtown")
    revenue("uptown")
    everywhere = revenue()
    b.edit_member("kim", sites=["downtown"])
    revenue("downtown")
    assert at_desk("uptown") == (385, 0)
    b.edit_member("pat", sites=["uptown"])
    split = {site: revenue(site) for site in ("downtown", "uptown")}
    assert at_desk("uptown") == (385 + 386, 1)
    assert revenue() == everywhere
    config = alembic_config()
    for target, desk in (
        ("0028_rollup_trigger_cost", {"downtown": (0, 0), "uptown": (1001, 1)}),
        ("head", {"downtown": (230 + 385, 0), "uptown": (385 + 386, 1)}),
    ):
        with b.engine.begin() as conn:
            config.attributes["connection"] = conn
            (command.downgrade if target != "head" else command.upgrade)(config, target)
        if target == "head":
            assert {site: revenue(site) for site in split} == split
        month = reports.month_of(clock())
        for site, expected in desk.items():
            found = reports.REPORTS["revenue"](b.engine, clock(), reports.Scope(sites=(site,)))
            rows_ = [(r[3], r[6]) for r in found[1] if r[0] == month and r[2] == "front_desk"]
            assert (rows_[0] if rows_ else (0, 0)) == expected, (target, site)
    b.engine.dispose()


def _member_of(b: Billing, line_id: int) -> str | None:
    ln = s.invoice_lines
    with b.engine.connect() as conn:
        return conn.execute(select(ln.c.member_id).where(ln.c.id == line_id)).scalar_one()
