"""Plan changes (an upgrade now, prorated; any change at the renewal), price changes announced
ahead with grandfathering, withdrawing a cancellation, and editing a member's payer and sites,
through the real facade and store (the site move through a real mosquitto)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from gated.billing_sync import engine as eng
from gated.billing_sync import schema
from gated.billing_sync.cli import app
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import FaultyGateway, GatewayUnavailable
from gated.billing_sync.plan_changes import PlanChangeRefused
from gated.billing_sync.service import Billing, PlanSpec
from gated.billing_sync.simulator import SimulatedGateway
from gated.contract import Verifier
from tests.billing.helpers import (
    DAY,
    T0,
    Clock,
    cli_ok,
    make_billing,
    notices,
    published,
    write_cli_config,
)
from tests.billing.test_publisher import publisher_for, retained, wait_drained
from tests.services import Mosquitto


def ts(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


def with_plans(b: Billing) -> Billing:
    b.add_plan(PlanSpec("premium", "Premium", 7990, "EUR", tax_rate_bp=1900, zones=["spa"]))
    b.add_plan(PlanSpec("basic", "Basic", 2990, "EUR", tax_rate_bp=1900))
    b.add_plan(PlanSpec("annual", "Annual", 49900, "EUR", period_months=12, tax_rate_bp=1900))
    return b


def invoices(b: Billing, member_id: str) -> list[tuple[str, int, str]]:
    inv = schema.invoices
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(inv.c.kind, inv.c.total, inv.c.status)
            .where(inv.c.member_id == member_id)
            .order_by(inv.c.id)
        ).all()
    return [(r.kind, r.total, r.status) for r in rows]


# --- the pure proration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "days_left", "period_days"),
    [
        # A whole February after a join on the 31st (anchored: 31 Jan -> 28 Feb): 28 days.
        (("2027-01-31", "2027-02-28"), "2027-01-31", 28, 28),
        (("2027-01-31", "2027-02-28"), "2027-02-14", 14, 28),
        # The last day of a period is a whole day of the new plan.
        (("2027-03-31", "2027-04-30"), "2027-04-29T23:59:59", 1, 30),
        # Leap years: 31 Jan -> 29 Feb 2028 is 29 days; 29 Feb -> 29 Mar is 29 days.
        (("2028-01-31", "2028-02-29"), "2028-02-28", 1, 29),
        (("2028-02-29", "2028-03-29"), "2028-02-29", 29, 29),
        # December: 31 days; a change at 15:00 counts that day whole.
        (("2026-12-01", "2027-01-01"), "2026-12-16T15:00:00", 16, 31),
        # Periods that start at a time of day (an enrolment at 10:30): whole days from then.
        (("2026-12-01T10:30:00", "2027-01-01T10:30:00"), "2026-12-31T11:00:00", 1, 31),
    ],
)
def test_proration_counts_whole_days_of_the_paid_period(
    period: tuple[str, str], now: str, days_left: int, period_days: int
) -> None:
    p = eng.proration(4990, 7990, (ts(period[0]), ts(period[1])), ts(now))
    assert (p.days_left, p.period_days) == (days_left, period_days)
    assert p.credit == eng.prorate(4990, days_left, period_days)
    assert p.charge == eng.prorate(7990, days_left, period_days)
    if days_left == period_days:  # a whole period left costs exactly the difference
        assert (p.credit, p.charge) == (4990, 7990)


@pytest.mark.parametrize(
    ("amount", "days", "period", "expected"),
    [
        (4990, 1, 3, 1663),  # 1663.33 down
        (4990, 2, 3, 3327),  # 3326.67 up
        (4991, 1, 2, 2496),  # 2495.5: half up
        (4990, 16, 31, 2575),  # 2575.48
        (7990, 16, 31, 4124),  # 4123.87
        (4990, 0, 31, 0),
        (4990, 29, 29, 4990),
    ],
)
def test_prorate_rounds_half_up_to_a_minor_unit(
    amount: int, days: int, period: int, expected: int
) -> None:
    assert eng.prorate(amount, days, period) == expected


# --- upgrades now, changes at the renewal -----------------------------------------------------


def test_an_upgrade_now_bills_the_days_left_less_the_old_price_and_charges_at_once(
    tmp_path: Path,
) -> None:
    b, clock = make_billing(tmp_path)
    with_plans(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    clock.now = ts("2026-12-16T15:00:00")  # 16 of December's 31 days left
    quote = b.plan_change_quote("m1", "premium")
    assert (quote.when, quote.days_left, quote.period_days) == ("now", 16, 31)
    assert (quote.credit, quote.charge, quote.net, quote.tax, quote.total) == (
        2575,
        4124,
        1549,
        294,
        1843,
    )
    assert b.member("m1")["plan"] == "monthly"  # a quote changes nothing
    change, report = b.change_plan("m1", "premium")
    assert change == quote and report.succeeded == 1
    assert invoices(b, "m1") == [("renewal", 5938, "paid"), ("plan_change", 1843, "paid")]
    with b.engine.connect() as conn:
        lines = conn.execute(
            select(schema.invoice_lines.c.kind, schema.invoice_lines.c.amount)
            .join(schema.invoices)
            .where(schema.invoices.c.kind == "plan_change")
            .order_by(schema.invoice_lines.c.id)
        ).all()
    assert [tuple(r) for r in lines] == [("proration", -2575), ("proration", 4124), ("tax", 294)]
    state = published(b, "m1")
    assert state["plan"] == "premium" and state["zones"] == ["spa"]
    assert state["status"] == "active"
    # The renewal bills the new plan whole, on the same day as before.
    clock.now = T0 + 31 * DAY
    b.run_cycle()
    assert invoices(b, "m1")[-1] == ("renewal", 9508, "paid")
    assert b.member("m1")["paid_through"] == "2027-02-01T08:00:00Z"


def test_a_cheaper_plan_or_another_period_waits_for_the_renewal(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    with_plans(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    clock.advance(10)
    with pytest.raises(PlanChangeRefused, match="cheaper plan starts at the renewal"):
        b.change_plan("m1", "basic")
    with pytest.raises(PlanChangeRefused, match="another period"):
        b.change_plan("m1", "annual")
    change, _ = b.change_plan("m1", "basic", at_renewal=True)
    assert change.when == "renewal" and change.total == 0
    assert b.member("m1")["next_plan"] == "basic"
    assert published(b, "m1")["plan"] == "monthly"  # until the renewal
    assert invoices(b, "m1") == [("renewal", 5938, "paid")]
    clock.now = T0 + 31 * DAY
    b.run_cycle()
    assert invoices(b, "m1")[-1] == ("renewal", 3558, "paid")
    info = b.member("m1")
    assert info["plan"] == "basic" and info["next_plan"] is None
    assert published(b, "m1")["plan"] == "basic"
    # A booked change can be dropped before it happens.
    b.change_plan("m1", "annual", at_renewal=True)
    b.cancel_plan_change("m1")
    assert b.member("m1")["next_plan"] is None
    with pytest.raises(NotFound):
        b.cancel_plan_change("m1")


def test_a_member_who_owes_or_has_cancelled_is_refused_a_change_now(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    with_plans(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_decline_insufficient_funds")
    with pytest.raises(PlanChangeRefused, match="only a member who is current"):
        b.change_plan("m1", "premium")
    b.add_member("m2", "Bo", plan_id="monthly", payment_method="pm_sim_ok")
    b.cancel("m2")
    with pytest.raises(PlanChangeRefused, match="uncancel"):
        b.change_plan("m2", "premium")
    with pytest.raises(PlanChangeRefused, match="already"):
        b.change_plan("m2", "monthly")
    with pytest.raises(NotFound):
        b.change_plan("m2", "nosuch")


def test_a_declined_upgrade_is_dunned_like_any_charge(tmp_path: Path) -> None:
    clock = Clock()
    gw = SimulatedGateway(
        tmp_path / "sim.db", clock=clock, script={"pm_x": ["ok", "insufficient_funds"]}
    )
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    with_plans(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_x")
    clock.advance(15)
    _, report = b.change_plan("m1", "premium")
    assert report.failed == 1
    info = b.member("m1")
    assert info["plan"] == "premium" and info["status"] == "grace" and info["owed"] > 0


@pytest.mark.parametrize(
    "point", ["after_create_intent", "before_confirm_intent", "after_confirm_intent"]
)
def test_an_upgrade_interrupted_at_each_step_is_charged_once(tmp_path: Path, point: str) -> None:
    clock = Clock()
    simulated = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    armed: set[str] = set()

    def fault(step: str) -> None:
        if step in armed:
            armed.discard(step)
            raise GatewayUnavailable(f"injected at {step}")

    b, _ = make_billing(tmp_path, gateway=FaultyGateway(simulated, fault), clock=clock)
    with_plans(b)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    clock.advance(15)
    armed.add(point)
    change, report = b.change_plan("m1", "premium")
    assert not armed and report.errors == 1
    assert b.member("m1")["plan"] == "premium"  # the change and its invoice are one commit
    assert b.run_cycle().resumed == 1
    assert invoices(b, "m1") == [("renewal", 5938, "paid"), ("plan_change", change.total, "paid")]
    assert simulated.charged_total() == 5938 + change.total


# --- price changes ----------------------------------------------------------------------------


def test_a_price_change_applies_at_each_members_renewal_and_grandfathering_keeps_the_old(
    tmp_path: Path,
) -> None:
    b, clock = make_billing(tmp_path)
    b.add_plan(PlanSpec("legacy", "Legacy", 3990, "EUR", grandfather=True))
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok", email="a@x.org")
    b.add_member("g1", "Gus", plan_id="legacy", payment_method="pm_sim_ok", email="g@x.org")
    clock.advance(10)
    with pytest.raises(BillingError, match="30 days ahead"):
        b.schedule_price_change("monthly", 5490, clock.now + 29 * DAY)
    on = T0 + 45 * DAY  # 15 January: after m1's renewal on 1 January, before 1 February's
    b.schedule_price_change("monthly", 5490, on)
    b.schedule_price_change("legacy", 4490, on)
    # Told now, those it will apply to: not the grandfathered.
    assert notices(b, "m1").count("price_change") == 1
    assert "price_change" not in notices(b, "g1")
    assert [c.applied_at for c in b.price_changes()] == [None, None]
    clock.now = T0 + 31 * DAY
    b.run_cycle()
    assert invoices(b, "m1")[-1] == ("renewal", 5938, "paid")  # before the day: old price
    clock.now = on
    b.add_member("n1", "Nia", plan_id="legacy", payment_method="pm_sim_ok")
    assert invoices(b, "n1") == [("renewal", 4490, "paid")]  # joined on the day: new price
    assert all(c.applied_at == on for c in b.price_changes())
    clock.now = T0 + 62 * DAY
    b.run_cycle()
    assert invoices(b, "m1")[-1] == ("renewal", 6533, "paid")  # 5490 + 19 %
    assert invoices(b, "g1")[-1] == ("renewal", 3990, "paid")  # grandfathered
    assert b.member("g1")["price"] == 3990 and b.member("n1")["price"] == 4490


# --- un-cancel --------------------------------------------------------------------------------


def test_a_cancellation_is_withdrawn_before_the_end_and_not_after(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.cancel("m1")
    assert published(b, "m1")["status"] == "pending_cancel"
    b.uncancel("m1")
    info = b.member("m1")
    assert info["status"] == "active" and info["cancel_at"] is None
    assert published(b, "m1")["status"] == "active"
    with pytest.raises(BillingError, match="has not cancelled"):
        b.uncancel("m1")
    clock.now = T0 + 31 * DAY
    b.run_cycle()
    assert invoices(b, "m1")[-1] == ("renewal", 5938, "paid")  # renews as before
    b.cancel("m1")
    clock.now = T0 + 63 * DAY
    b.run_cycle()
    assert b.member("m1")["status"] == "cancelled"
    with pytest.raises(BillingError, match="ended on"):
        b.uncancel("m1")


# --- members edit: phone, payer, sites --------------------------------------------------------


def test_edit_moves_a_member_between_households(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member("p1", "Pat", plan_id="monthly", payment_method="pm_sim_ok")
    b.add_member("p2", "Pia", plan_id="monthly", payment_method="pm_sim_decline_lost_card")
    b.add_member("k1", "Kim", plan_id="monthly", payer_id="p1")
    b.edit_member("k1", phone="+49 30 1234567")
    with pytest.raises(BillingError, match="own payer"):
        b.edit_member("k1", payer="k1")
    with pytest.raises(BillingError, match="a payer pays for themselves"):
        b.edit_member("p2", payer="k1")
    with pytest.raises(BillingError, match="pays for others"):
        b.edit_member("p1", payer="p2")
    with pytest.raises(BillingError, match="not a phone"):
        b.edit_member("k1", phone="<b>")
    b.edit_member("k1", payer="p2")  # p2's card is dead: p2 is out, and so is k1
    assert b.member("k1")["payer_id"] == "p2"
    assert published(b, "k1")["status"] == "payer_suspended"
    b.edit_member("k1", payer="")  # on their own now, without a card
    assert b.member("k1")["payer_id"] is None
    assert published(b, "k1")["status"] == "active"
    clock.now = T0 + 31 * DAY
    b.run_cycle()
    assert b.member("k1")["needs_new_card"]  # nothing to charge: a new card is asked for


async def test_a_site_move_publishes_a_tombstone_on_the_site_left(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    b, _ = make_billing(tmp_path)
    pub = publisher_for(b, mosquitto.url)
    task = asyncio.create_task(pub.run())
    try:
        await asyncio.to_thread(
            b.add_member,
            "m1",
            "Ann",
            plan_id="monthly",
            payment_method="pm_sim_ok",
            sites=["downtown"],
        )
        await wait_drained(b)
        assert (await retained(mosquitto.port, "downtown"))["m1"]["status"] == "active"
        with pytest.raises(BillingError, match="unknown site"):
            b.edit_member("m1", sites=["nowhere"])
        await asyncio.to_thread(b.edit_member, "m1", sites=["uptown"])
        await wait_drained(b)
        verifier = Verifier([b.keys.signer.public_key_raw])
        old = await retained(mosquitto.port, "downtown")
        new = await retained(mosquitto.port, "uptown")
        gone = verifier.verify(old.pop("m1"), "member_state")
        here = verifier.verify(new.pop("m1"), "member_state")
        assert gone["status"] == "erased" and gone["sites"] == ["downtown"]
        assert gone["credentials"] == [] and gone["version"] == here["version"]
        assert here["status"] == "active" and here["sites"] == ["uptown"]
        assert verifier.verify(old["manifest"], "manifest")["count"] == 0
        assert verifier.verify(new["manifest"], "manifest")["count"] == 1
        assert json.loads(json.dumps(b.member("m1")["sites"])) == ["uptown"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- the command line -------------------------------------------------------------------------


def test_the_commands_show_the_amounts_before_yes(tmp_path: Path) -> None:
    cfg = write_cli_config(tmp_path)
    cli_ok(cfg, "keys", "init")
    cli_ok(cfg, "plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    cli_ok(cfg, "plans", "add", "premium", "--name", "Premium", "--price", "7990", "--grandfather")
    cli_ok(cfg, "plans", "add", "basic", "--name", "Basic", "--price", "2990")
    cli_ok(cfg, "members", "add", "m1", "--name", "Ann", "--plan", "monthly", "--card", "pm_sim_ok")
    cli_ok(cfg, "clock", "advance", "15d")
    shown = cli_ok(cfg, "members", "change-plan", "m1", "premium")
    assert "credit for monthly  -" in shown and "charged now  " in shown
    assert "nothing changed: run again with --yes" in shown
    assert json.loads(cli_ok(cfg, "members", "show", "m1", "--json"))["plan"] == "monthly"
    quoted = json.loads(cli_ok(cfg, "members", "change-plan", "m1", "premium", "--json"))
    done = json.loads(cli_ok(cfg, "members", "change-plan", "m1", "premium", "--yes", "--json"))
    assert done["done"] and done["status"] == "active"
    assert done["total"] == quoted["total"] > 0 and done["days_left"] in (16, 17)
    refused = CliRunner().invoke(app, ["members", "change-plan", "m1", "basic", "-c", str(cfg)])
    assert refused.exit_code == 2
    assert "cheaper plan starts at the renewal (use --at-renewal)" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    booked = cli_ok(cfg, "members", "edit", "m1", "--plan", "basic", "--at-renewal", "--yes")
    assert "plan booked for the renewal" in booked
    cli_ok(cfg, "members", "keep-plan", "m1")
    cli_ok(cfg, "members", "edit", "m1", "--phone", "+49 30 1234567")
    cli_ok(cfg, "cancel", "m1")
    assert "m1: active" in cli_ok(cfg, "uncancel", "m1")
    too_soon = CliRunner().invoke(
        app,
        [
            "plans",
            "price-change",
            "premium",
            "--price",
            "8990",
            "--on",
            "2020-01-01",
            "-c",
            str(cfg),
        ],
    )
    assert too_soon.exit_code == 2 and "30 days ahead" in too_soon.output
    far = datetime.now(UTC).year + 2
    cli_ok(cfg, "plans", "price-change", "premium", "--price", "8990", "--on", f"{far}-01-01")
    listed = cli_ok(cfg, "plans", "price-changes")
    assert f"premium  89.90 EUR  from {far}-01-01" in listed
    assert "existing members keep their price" in listed
