"""The notices a gym sends besides dunning: the upcoming charge some days before a renewal (once
per renewal, to whoever pays), a cancellation confirmed with its end date, collections with
what is owed, and a price change announced through the hook a plan change calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from gated.billing_sync import schema
from gated.billing_sync.config import NoticesConfig
from gated.billing_sync.notices import format_amount
from gated.billing_sync.reminders import queue_price_change
from gated.billing_sync.service import Billing, PlanSpec
from tests.billing.helpers import DAY, T0, make_billing, notices, step


def bodies(b: Billing, kind: str) -> list[tuple[str, str, str]]:
    """(to, subject, body) of every notice of a kind, oldest first."""
    n = schema.notifications
    with b.engine.connect() as conn:
        rows = conn.execute(
            select(n.c.to_addr, n.c.subject, n.c.body).where(n.c.kind == kind).order_by(n.c.id)
        )
        return [(r.to_addr, r.subject, r.body) for r in rows]


def test_an_upcoming_charge_is_announced_once_per_renewal_to_whoever_pays(
    tmp_path: Path,
) -> None:
    assert NoticesConfig().upcoming_charge_days == 7  # the default, as here
    b, clock = make_billing(tmp_path, notices={"upcoming_charge_days": 7})
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    b.add_member("kid", "Kid", plan_id="monthly", email="kid@example.org", payer_id="ann")
    b.add_member("cy", "Cy", plan_id="monthly", email="cy@example.org", payment_method="pm_sim_ok")
    b.cancel("cy")  # no renewal coming: nothing to announce
    step(b, clock, 23)  # 24 December: the renewal of 1 January is 8 days away
    assert bodies(b, "upcoming_charge") == []
    step(b, clock, 1)  # 25 December: 7 days (the default)
    sent = bodies(b, "upcoming_charge")
    assert [(to, subject) for to, subject, _ in sent] == [
        ("ann@example.org", "Your next payment: 59.38 EUR on 2027-01-01"),
        ("ann@example.org", "Your next payment: 59.38 EUR on 2027-01-01"),
    ]
    assert "your Monthly renews on 2027-01-01" in sent[0][2]
    assert "membership of Kid (kid)" in sent[1][2]  # the payer's, about the dependant
    step(b, clock, 3)
    b.run_cycle()
    assert len(bodies(b, "upcoming_charge")) == 2  # once per renewal, however many cycles
    step(b, clock, 28)  # renewed on 1 January; 25 January announces 1 February
    assert [s for _, s, _ in bodies(b, "upcoming_charge")[2:]] == [
        "Your next payment: 59.38 EUR on 2027-02-01"
    ] * 2


def upcoming(b: Billing, member_id: str) -> list[str]:
    """The subjects of a member's upcoming-charge notices, oldest first."""
    n = schema.notifications
    with b.engine.connect() as conn:
        q = select(n.c.subject).where(n.c.kind == "upcoming_charge", n.c.member_id == member_id)
        return list(conn.execute(q.order_by(n.c.id)).scalars())


def renewal_totals(b: Billing, member_id: str) -> list[tuple[str, int]]:
    """(currency, total) of a member's renewal invoices, oldest first."""
    i = schema.invoices
    with b.engine.connect() as conn:
        q = select(i.c.currency, i.c.total).where(i.c.member_id == member_id, i.c.kind == "renewal")
        return [(r.currency, int(r.total)) for r in conn.execute(q.order_by(i.c.id))]


def test_an_upcoming_charge_announces_what_the_renewal_will_bill(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path, notices={"upcoming_charge_days": 7})
    b.add_plan(PlanSpec("legacy", "Legacy", 3990, "EUR", tax_rate_bp=1900, grandfather=True))
    b.add_plan(PlanSpec("basic", "Basic", 2990, "EUR", tax_rate_bp=700))
    for mid, plan in [("gus", "legacy"), ("dee", "monthly"), ("pia", "monthly")]:
        b.add_member(mid, mid, plan_id=plan, email=f"{mid}@x.org", payment_method="pm_sim_ok")
    b.change_plan("dee", "basic", at_renewal=True)  # a downgrade booked for 1 January
    jan1 = T0 + 31 * DAY
    # Each applies at the renewal of 1 January (the cycle applies it before it bills)...
    b.schedule_price_change("legacy", 4490, jan1)  # ...except to gus: grandfathered
    b.schedule_price_change("basic", 3490, jan1)  # dee's plan from then on
    b.schedule_price_change("monthly", 5490, jan1)
    # ...and this one only from the renewal of 1 February.
    b.schedule_price_change("monthly", 6990, jan1 + 14 * DAY)
    step(b, clock, 24)  # 25 December: the renewal of 1 January is announced
    announced = {m: upcoming(b, m) for m in ("gus", "dee", "pia")}
    step(b, clock, 7)  # 1 January: billed
    for mid, subjects in announced.items():
        ((currency, total),) = renewal_totals(b, mid)[1:]
        assert subjects == [f"Your next payment: {format_amount(total, currency)} on 2027-01-01"]
    # The amounts themselves: gus kept 39.90, dee's Basic at its new price, pia's new price.
    assert [renewal_totals(b, m)[1][1] for m in ("gus", "dee", "pia")] == [4748, 3734, 6533]
    n = schema.notifications
    with b.engine.connect() as conn:
        body = conn.execute(
            select(n.c.body).where(n.c.kind == "upcoming_charge", n.c.member_id == "dee")
        ).scalar_one()
    assert "your Basic renews on 2027-01-01" in body  # the plan it renews on
    step(b, clock, 24)  # 25 January: gus's kept price, pia's second change, announced
    step(b, clock, 7)  # 1 February: billed
    for mid in ("gus", "pia"):
        currency, total = renewal_totals(b, mid)[2]
        assert upcoming(b, mid)[1:] == [
            f"Your next payment: {format_amount(total, currency)} on 2027-02-01"
        ]
    assert [renewal_totals(b, m)[2][1] for m in ("gus", "pia")] == [4748, 8318]


def test_upcoming_charges_can_be_turned_off(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path, notices={"upcoming_charge_days": 0})
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    step(b, clock, 30)
    assert "upcoming_charge" not in notices(b)


def test_a_cancellation_is_confirmed_with_its_end_date(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    b.cancel("ann")
    ((to, subject, body),) = bodies(b, "cancellation")
    assert (to, subject) == ("ann@example.org", "Your cancellation is confirmed")
    assert "Your membership runs until 2027-01-01" in body


def test_collections_tells_what_is_owed_and_since_when(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    b.set_payment_method("ann", "pm_sim_decline_insufficient_funds")
    step(b, clock, 31 + 29)  # the renewal of 1 January failed; 30 days later, collections
    assert "collections" not in notices(b, "ann")
    step(b, clock, 2)
    assert b.member("ann")["status"] == "collections"
    ((_, subject, body),) = bodies(b, "collections")
    assert subject == "Your unpaid balance has gone to collections"
    assert "59.38 EUR has been unpaid since 2027-01-01" in body


def test_a_price_change_is_announced_through_its_hook(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.org", payment_method="pm_sim_ok"
    )
    b.add_member("kid", "Kid", plan_id="monthly", payer_id="ann")
    with b.engine.begin() as conn:
        queue_price_change(b.ctx, conn, ["ann", "kid"], 5938, 6545, 1_801_440_000)
    sent: list[Any] = bodies(b, "price_change")
    assert [to for to, _, _ in sent] == ["ann@example.org", "ann@example.org"]
    assert sent[0][1] == "The price of your Monthly changes"
    assert "from 2027-02-01, your Monthly costs 65.45 EUR instead of 59.38 EUR" in sent[0][2]


def test_a_card_about_to_expire_is_announced_once_to_its_owner(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path, notices={"card_expiry_days": 30})
    b.add_member(
        "ann",
        "Ann",
        plan_id="monthly",
        email="ann@example.org",
        payment_method="pm_sim_ok_exp202612",
    )
    b.add_member("kid", "Kid", plan_id="monthly", email="kid@example.org", payer_id="ann")
    b.add_member("bo", "Bo", plan_id="monthly", email="bo@example.org", payment_method="pm_sim_ok")
    b.run_cycle()
    assert bodies(b, "card_expiring") == []  # 1 December: it works for 31 more days
    step(b, clock, 1)
    ((to, subject, body),) = bodies(b, "card_expiring")
    assert (to, subject) == ("ann@example.org", "Your card expires soon")
    assert "expires at the end of 2026-12" in body and "next payment on 2027-01-01" in body
    step(b, clock, 2)
    assert len(bodies(b, "card_expiring")) == 1  # once per card
    b.set_payment_method("ann", "pm_sim_ok_exp202701")  # a new card that expires in January
    step(b, clock, 28)
    assert len(bodies(b, "card_expiring")) == 1  # 1 January: it works for 31 more days
    step(b, clock, 1)
    assert len(bodies(b, "card_expiring")) == 2
    assert "expires at the end of 2027-01" in bodies(b, "card_expiring")[1][2]
    b.set_payment_method("ann", "pm_sim_ok_exp203001")
    step(b, clock, 40)
    assert len(bodies(b, "card_expiring")) == 2  # a card good for years: nothing
