"""Online sign-up and self-service through the billing service: nothing reaches the gates until
the first invoice is paid, a decline sends no dunning mail, a double submit charges once, paying
by any path starts the membership, unpaid sign-ups go after a day, and the quotes a member sees
before a freeze or a cancellation are what the operations then do."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from gated.billing_sync import schema
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import FaultyGateway
from gated.billing_sync.service import Applicant, Billing, PlanSpec, Terms
from gated.billing_sync.simulator import SimulatedGateway
from tests.billing.helpers import Clock, make_billing, notices, published

TERMS = Terms("2026-12", "ab" * 32, "Version: 2026-12\n\nBe kind to the equipment.\n")


def applicant(email: str = "zoe@example.com", **kw: str) -> Applicant:
    fields = {
        "site": "downtown",
        "plan_id": "monthly",
        "name": "Zoë Ærø-Łukasz",
        "email": email,
        "phone": "+49 30 1234567",
        "emergency_contact": "Max, +49 30 7654321",
    }
    fields.update(kw)
    return Applicant(**fields)


def states(b: Billing, member_id: str) -> int:
    with b.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(schema.status_outbox.c.member_id == member_id)
            ).scalar_one()
        )


def test_an_unpaid_signup_publishes_nothing_and_paying_makes_it_active(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    m = b.start_signup(applicant(), TERMS, "203.0.113.9", "Firefox")
    assert states(b, m) == 0
    b.run_cycle()  # the cycle neither bills nor publishes a sign-up
    assert states(b, m) == 0
    st = b.signup_status(m)
    assert st is not None and st["owed"] == 5938 and not st["paid"]
    result = b.pay_signup(m, "pm_sim_decline_insufficient_funds", "k" * 20, "http://x/")
    assert result.state == "failed"
    assert states(b, m) == 0 and notices(b, m) == []  # a decline is shown, not dunned
    ok = b.pay_signup(m, "pm_sim_ok", "j" * 20, "http://x/")
    assert ok.state == "succeeded"
    assert published(b, m)["status"] == "active"
    assert b.member(m)["status"] == "active" and b.member(m)["owed"] == 0
    # The receipt, and one welcome with the pass link.
    assert notices(b, m) == ["receipt", "welcome"]
    assert f"{b.config.http.public_url.rstrip('/')}/app/pass" in welcome_body(b, m)
    c = b.contract(m)
    assert c is not None and c["terms_sha256"] == TERMS.sha256 and c["terms_text"] == TERMS.text
    assert c["client_address"] == "203.0.113.9" and c["user_agent"] == "Firefox"


def test_a_double_submit_charges_once(tmp_path: Path) -> None:
    clock = Clock()
    gw = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    m = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    first = b.pay_signup(m, "pm_sim_ok", "same-key-0123456789", "http://x/")
    again = b.pay_signup(m, "pm_sim_ok", "same-key-0123456789", "http://x/")
    other = b.pay_signup(m, "pm_sim_ok", "other-key-0123456789", "http://x/")
    assert first.state == again.state == other.state == "succeeded"
    assert gw.charged_total() == 5938


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_double_submit_finished_by_the_other_submit_stays_succeeded(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A double-clicked pay button: the second submit saves the card again, and saving a card
    finishes the member's open attempts (``cycle.resume``), so it can charge and book the first
    submit's attempt while that one is between creating its intent and committing the intent's
    id. The first must then not put the attempt back to ``created``: it stayed there for good,
    paid and booked but never succeeded, and booking it again broke the payment's unique
    reference, so the first submit failed (the browser showed the second's welcome page)."""
    clock = Clock()
    sim = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    second: list[str] = []

    def fault(step: str) -> None:
        if step == "after_create_intent" and not second:
            second.append("")  # the second submit's own calls pass straight through
            second[0] = b.pay_signup(m, "pm_sim_ok", "same-key-0123456789", "http://x/").state

    extra = {}
    if store == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres_store_url")
    b, _ = make_billing(tmp_path, gateway=FaultyGateway(sim, fault), clock=clock, **extra)
    m = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    first = b.pay_signup(m, "pm_sim_ok", "same-key-0123456789", "http://x/")
    assert first.state == second[0] == "succeeded"
    a = schema.payment_attempts
    with b.engine.connect() as conn:
        assert conn.execute(select(a.c.state).where(a.c.member_id == m)).scalars().all() == [
            "succeeded"
        ]
        booked = select(schema.payments.c.amount).where(schema.payments.c.member_id == m)
        assert conn.execute(booked).scalars().all() == [5938]
    assert sim.charged_total() == 5938
    assert b.member(m)["status"] == "active" and b.member(m)["owed"] == 0
    b.engine.dispose()


def test_a_payment_booked_elsewhere_starts_the_membership(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    m = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    b.record_payment(m)  # the front desk takes the first payment
    assert published(b, m)["status"] == "active"
    assert notices(b, m) == ["receipt", "welcome"]


def test_only_the_first_payment_of_an_online_signup_sends_a_welcome(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    m = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    b.pay_signup(m, "pm_sim_ok", "k" * 20, "http://x/")
    clock.advance(31)
    b.run_cycle()  # the first renewal: a receipt, no second welcome
    assert b.member(m)["paid_through"] > "2027-01"
    assert notices(b, m) == ["receipt", "welcome", "receipt"]
    # A member enrolled at the desk is welcomed there, not by mail.
    b.add_member(
        "desk", "Desk", plan_id="monthly", email="desk@example.com", payment_method="pm_sim_ok"
    )
    assert "welcome" not in notices(b, "desk")


def welcome_body(b: Billing, member_id: str) -> str:
    n = schema.notifications
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(n.c.body).where(n.c.member_id == member_id, n.c.kind == "welcome")
            ).scalar_one()
        )


def test_bad_input_and_a_plan_that_is_gone_get_a_clear_message(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    with pytest.raises(NotFound, match="no longer offered"):
        b.start_signup(applicant(plan_id="gone"), TERMS, "127.0.0.1", "")
    with pytest.raises(BillingError, match="too long"):
        b.start_signup(applicant(name="x" * 101), TERMS, "127.0.0.1", "")
    with pytest.raises(BillingError, match="cannot store"):
        b.start_signup(applicant(name="a\x00b"), TERMS, "127.0.0.1", "")
    with pytest.raises(BillingError, match="e-mail"):
        b.start_signup(applicant(email="nobody"), TERMS, "127.0.0.1", "")
    with pytest.raises(BillingError, match="phone"):
        b.start_signup(applicant(phone="call me"), TERMS, "127.0.0.1", "")
    with pytest.raises(BillingError, match="site"):
        b.start_signup(applicant(site="moon"), TERMS, "127.0.0.1", "")


def test_an_address_with_a_paid_membership_is_refused_an_unpaid_one_replaced(
    tmp_path: Path,
) -> None:
    b, _ = make_billing(tmp_path)
    first = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    second = b.start_signup(applicant(email="ZOE@example.com"), TERMS, "127.0.0.1", "")
    assert b.signup_status(first) is None  # the abandoned one was replaced
    b.pay_signup(second, "pm_sim_ok", "k" * 20, "http://x/")
    with pytest.raises(BillingError, match="sign in instead"):
        b.start_signup(applicant(), TERMS, "127.0.0.1", "")


def test_unpaid_signups_are_deleted_after_a_day(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    unpaid = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    b.pay_signup(unpaid, "pm_sim_decline_generic_decline", "k" * 20, "http://x/")
    paid = b.start_signup(applicant(email="amy@example.com"), TERMS, "127.0.0.1", "")
    b.pay_signup(paid, "pm_sim_ok", "k" * 20, "http://x/")
    clock.advance(0.9)
    assert b.purge_unpaid_signups() == 0
    clock.advance(0.2)
    assert b.purge_unpaid_signups() == 1
    with pytest.raises(NotFound):
        b.member(unpaid)
    assert b.member(paid)["status"] == "active"


def test_quotes_match_what_freeze_and_cancel_then_do(tmp_path: Path) -> None:
    b, _ = make_billing(tmp_path)
    b.add_plan(
        PlanSpec(
            "year", "Yearly", 3000, "EUR", tax_rate_bp=1900, freeze_fee=500, min_term_months=12
        )
    )
    m = b.start_signup(applicant(plan_id="year"), TERMS, "127.0.0.1", "")
    assert b.freeze_quote(m, 1)["allowed"] is False  # not paid yet
    b.pay_signup(m, "pm_sim_ok", "k" * 20, "http://x/")
    assert b.freeze_quote(m, 4) == {
        "allowed": False,
        "reason": "A freeze lasts one to three months.",
    }
    quote = b.cancel_quote(m)
    assert quote["allowed"] and quote["ends_at"] == quote["min_term_end"]
    assert b.cancel(m) == _ts(quote["ends_at"])
    assert b.cancel_quote(m)["allowed"] is False
    fq = b.freeze_quote(m, 2)
    assert fq["allowed"] and fq["fee"] == 2 * 595
    b.freeze(m, 2)
    assert b.member(m)["status"] == "frozen"
    assert b.member(m)["paid_through"] == fq["paid_through"]
    assert b.freeze_quote(m, 1)["allowed"] is False


def test_contact_details_and_an_email_change_confirmed_by_link(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path)
    m = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    b.update_contact(m, "+44 20 7946 0000", "Ann (sister)")
    assert b.contact(m)["phone"] == "+44 20 7946 0000"
    with pytest.raises(BillingError, match="phone"):
        b.update_contact(m, "", "Ann")
    b.request_email_change(m, "new@example.com", "http://x/app/email/")
    with b.engine.connect() as conn:
        n = schema.notifications
        to, body = conn.execute(
            select(n.c.to_addr, n.c.body).where(n.c.kind == "email_change")
        ).one()
    assert to == "new@example.com"
    token = body.split("http://x/app/email/")[1].split()[0]
    assert b.contact(m)["email"] == "zoe@example.com"  # nothing changes before the link
    assert b.email_change_usable(token)
    assert b.confirm_email_change(token) == m
    assert b.contact(m)["email"] == "new@example.com"
    assert b.confirm_email_change(token) is None  # single use
    b.request_email_change(m, "late@example.com", "http://x/app/email/")
    clock.advance(1.01)
    with b.engine.connect() as conn:
        body = conn.execute(select(n.c.body).where(n.c.to_addr == "late@example.com")).scalar_one()
    assert b.confirm_email_change(body.split("http://x/app/email/")[1].split()[0]) is None


def _ts(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def test_the_providers_webhook_completes_a_signup_whose_browser_is_gone(tmp_path: Path) -> None:
    from gated.billing_sync.gateway import ChargeResult, FaultyGateway, GatewayUnavailable

    def lost(step: str) -> None:
        # The intent exists and its id is committed; the answer of the confirmation never
        # reaches the page (the browser is gone, the provider took the money).
        if step == "before_confirm_intent":
            raise GatewayUnavailable("connection reset")

    clock = Clock()
    gw = FaultyGateway(SimulatedGateway(tmp_path / "sim.db", clock=clock), lost)
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    m = b.start_signup(applicant(), TERMS, "127.0.0.1", "")
    with pytest.raises(BillingError):
        b.pay_signup(m, "pm_sim_ok", "k" * 20, "http://x/")
    assert states(b, m) == 0
    with b.engine.connect() as conn:
        ref = conn.execute(select(schema.payment_attempts.c.gateway_ref)).scalar_one()
    assert b.intent_update(ref, ChargeResult(ref, "succeeded"))  # payment_intent.succeeded
    assert published(b, m)["status"] == "active"
