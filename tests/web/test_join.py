"""Online sign-up and self-service in process (starlette's TestClient, real SQLite store,
simulated gateway): join, pay with a test method, the new member active, published and signed
in; CSRF and clear messages for bad input; freeze and cancel quoted before they are confirmed;
the contact form and an e-mail change by link; the Stripe pages' Content-Security-Policy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing, PlanSpec
from gated.web.security import CSP, stripe_csp
from gated.web.terms import DEFAULT, load_terms
from tests.billing.helpers import Clock, make_billing, published
from tests.web.helpers import hidden

FORM = {
    "site": "downtown",
    "plan": "monthly",
    "name": "Zoë Ærø",
    "email": "zoe@example.com",
    "phone": "+49 30 1234567",
    "emergency_contact": "Max +49 30 7654321",
    "accept": "yes",
}


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    # Sessions outlive the month a suspension takes to come about.
    b, clock = make_billing(tmp_path, app={"session_days": 90})
    b.add_plan(
        PlanSpec(
            "year", "Yearly", 3000, "EUR", tax_rate_bp=1900, freeze_fee=500, min_term_months=12
        )
    )
    return b, clock


@pytest.fixture
def client(billing: tuple[Billing, Clock]) -> Iterator[TestClient]:
    from gated.web.app import web_routes

    b, _ = billing
    with TestClient(create_app(b, None, web_routes(b))) as c:
        yield c


def join(client: TestClient, **changes: str) -> Any:
    page = client.get("/app/join").text
    data = {**FORM, "csrf": hidden(page, "csrf"), "terms_sha256": hidden(page, "terms_sha256")}
    data.update(changes)
    return client.post("/app/join", data=data, follow_redirects=False)


def pay(client: TestClient, method: str = "pm_sim_ok", key: str | None = None) -> Any:
    page = client.get("/app/join/pay").text
    data = {"csrf": hidden(page, "csrf"), "key": key or hidden(page, "key"), "method": method}
    return client.post("/app/join/pay", data=data, follow_redirects=False)


def member_id(b: Billing) -> str:
    with b.engine.connect() as conn:
        return str(conn.execute(select(schema.signups.c.member_id)).scalar_one())


def test_the_join_page_shows_every_number_and_the_terms(client: TestClient) -> None:
    page = client.get("/app/join").text
    assert "59.38 EUR a month" in page and "9.48 EUR, 19 %" in page  # gross and its tax
    assert "Minimum term 12 months" in page and "No minimum term" in page
    assert "5.95 EUR a month" in page  # the freeze fee, tax included
    assert (
        load_terms(None).version in page and hidden(page, "terms_sha256") == load_terms(None).sha256
    )
    assert client.get("/app/join").headers["content-security-policy"] == CSP


def test_join_and_pay_with_a_test_method(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, _ = billing
    r = join(client)
    assert r.status_code == 303 and r.headers["location"] == "/app/join/pay"
    m = member_id(b)
    assert client.get("/app/", follow_redirects=False).headers["location"] == "/app/join/pay"
    declined = pay(client, "pm_sim_decline_insufficient_funds")
    assert declined.status_code == 402 and "insufficient funds" in declined.text
    assert "Nothing was charged" in declined.text
    r = pay(client)
    assert r.status_code == 303 and r.headers["location"] == "/app/join/welcome"
    assert published(b, m)["status"] == "active"
    assert "Your membership is active." in client.get("/app/").text  # signed in
    contract = client.get("/app/contract")
    assert contract.headers["content-disposition"].startswith("attachment")
    assert load_terms(None).sha256 in contract.text and "Zoë Ærø" in contract.text
    assert contract.text.endswith(DEFAULT.read_text())


def test_a_resubmitted_pay_form_charges_once(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, _ = billing
    join(client)
    page = client.get("/app/join/pay").text
    data = {"csrf": hidden(page, "csrf"), "key": hidden(page, "key"), "method": "pm_sim_ok"}
    first = client.post("/app/join/pay", data=data, follow_redirects=False)
    again = client.post("/app/join/pay", data=data, follow_redirects=False)
    assert first.status_code == again.status_code == 303
    with b.engine.connect() as conn:
        attempts = conn.execute(select(schema.payment_attempts.c.state)).scalars().all()
    assert attempts == ["succeeded"]


def test_bad_input_gets_a_clear_message(billing: tuple[Billing, Clock], client: TestClient) -> None:
    r = join(client, name="x" * 101)
    assert r.status_code == 400 and "too long" in r.text and 'value="zoe@example.com"' in r.text
    assert join(client, plan="gone").status_code == 400
    assert "no longer offered" in join(client, plan="gone").text
    assert "accept them" in join(client, accept="").text
    assert "changed while you were reading" in join(client, terms_sha256="0" * 64).text
    assert "emergency contact" in join(client, emergency_contact=" ").text
    no_csrf = client.post("/app/join", data=FORM)
    assert no_csrf.status_code == 403 and "Traceback" not in no_csrf.text
    assert join(client, name="İ" * 100).status_code == 303  # unicode at the limit is fine


def test_freeze_and_cancel_are_quoted_before_they_are_confirmed(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, _ = billing
    join(client, plan="year")
    pay(client)
    m = member_id(b)
    page = client.get("/app/cancel").text
    end = re.search(r'id="cancel-end">([0-9-]+)<', page)
    assert end and b.member(m)["cancel_at"] is None  # shown, not done
    page = client.get("/app/freeze?months=2").text
    assert 'id="freeze-fee">11.90 EUR<' in page and b.member(m)["freeze"] is None
    r = client.post("/app/freeze", data={"csrf": hidden(page, "csrf"), "months": "2"})
    assert "frozen from" in r.text and b.member(m)["status"] == "frozen"
    assert 'id="freeze-refused"' in client.get("/app/freeze?months=1").text
    page = client.get("/app/cancel").text
    r = client.post("/app/cancel", data={"csrf": hidden(page, "csrf")})
    assert r.status_code == 200 and "ends on" in r.text
    assert b.member(m)["cancel_at"] is not None
    assert client.post("/app/cancel", data={}).status_code == 403


def test_contact_details_and_email_change(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, _ = billing
    join(client)
    pay(client)
    m = member_id(b)
    page = client.get("/app/contact").text
    csrf = hidden(page, "csrf")
    bad = client.post(
        "/app/contact",
        data={"csrf": csrf, "email": "zoe@example.com", "phone": "x", "emergency_contact": "A"},
    )
    assert bad.status_code == 400 and "phone number" in bad.text
    r = client.post(
        "/app/contact",
        data={
            "csrf": csrf,
            "email": "zoe.new@example.com",
            "phone": "+44 20 7946 0000",
            "emergency_contact": "Ann",
        },
    )
    assert "Check your new address" in r.text
    assert b.contact(m)["phone"] == "+44 20 7946 0000"
    assert b.contact(m)["email"] == "zoe@example.com"
    with b.engine.connect() as conn:
        n = schema.notifications
        body = conn.execute(select(n.c.body).where(n.c.kind == "email_change")).scalar_one()
    link = re.search(r"https?://\S+(/app/email/[A-Za-z0-9_-]+)", body)
    assert link
    page = client.get(link[1]).text  # a mail scanner opening the link changes nothing
    assert b.contact(m)["email"] == "zoe@example.com"
    r = client.post(
        "/app/email/confirm", data={"csrf": hidden(page, "csrf"), "token": hidden(page, "token")}
    )
    assert "new e-mail address is saved" in r.text
    assert b.contact(m)["email"] == "zoe.new@example.com"
    assert client.get(link[1]).status_code == 410


def test_a_suspended_member_saves_a_test_card_and_is_active(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, clock = billing
    join(client)
    pay(client)
    m = member_id(b)
    b.set_payment_method(m, "pm_sim_decline_insufficient_funds")
    for _ in range(40):
        clock.advance(1)
        b.run_cycle()
    assert published(b, m)["status"] == "suspended"
    page = client.get("/app/card").text
    assert "is suspended" in page
    r = client.post("/app/card", data={"csrf": hidden(page, "csrf"), "method": "pm_sim_ok"})
    assert "Your membership is active." in r.text
    assert published(b, m)["status"] == "active"


def test_the_stripe_csp_allows_stripe_and_nothing_more() -> None:
    live = stripe_csp("https://js.stripe.com/v3/")
    assert "script-src 'self' https://js.stripe.com https://*.js.stripe.com;" in live
    assert "connect-src 'self' https://api.stripe.com;" in live
    assert (
        "frame-src https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com;" in live
    )
    fake = stripe_csp("http://127.0.0.1:8420/js.stripe.com/v3/")
    assert "script-src 'self' http://127.0.0.1:8420;" in fake
    assert "unsafe" not in live + fake and "frame-ancestors 'none'" in fake
