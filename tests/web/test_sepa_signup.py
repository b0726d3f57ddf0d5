"""SEPA Direct Debit at sign-up, in process (starlette's TestClient, real SQLite store, the
simulated gateway and its test IBANs): only on a plan with ``sepa``, only with the mandate
accepted and a valid IBAN; the membership is active and published once the debit is submitted
(the invoice still open), settles three days later, and a failed debit is dunned. The same
through Chromium in test_browser_join.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.service import Billing, PlanSpec
from gated.web.join import iban_valid
from tests.billing.helpers import Clock, make_billing, notices, published
from tests.web.helpers import hidden
from tests.web.test_join import join, member_id

PAYS, FAILS = "DE89 3704 0044 0532 0130 00", "DE62 3704 0044 0532 0130 01"


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    b.add_plan(PlanSpec("year", "Yearly", 3000, "EUR", tax_rate_bp=1900, sepa=True))
    return b, clock


def debit(client: TestClient, iban: str, mandate: str = "yes") -> Any:
    page = client.get("/app/join/pay").text
    data = {"csrf": hidden(page, "csrf"), "key": hidden(page, "key"), "iban": iban}
    if mandate:
        data["mandate"] = mandate
    return client.post("/app/join/pay", data=data, follow_redirects=False)


def test_iban_check_digits() -> None:
    assert iban_valid(PAYS) == "DE89370400440532013000"
    assert iban_valid("gb82 west 1234 5698 7654 32") == "GB82WEST12345698765432"
    assert iban_valid("DE89370400440532013001") is None  # one digit off
    assert iban_valid("DE89") is None and iban_valid("not an iban at all") is None


def test_a_debit_only_on_a_sepa_plan_with_the_mandate_and_a_test_iban(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, _ = billing
    page = client.get("/app/join").text
    assert "Pay by card or SEPA Direct Debit." in page and "Pay by card." in page
    join(client, plan="monthly")  # cards only
    assert "SEPA" not in client.get("/app/join/pay").text
    r = debit(client, PAYS)
    assert r.status_code == 400 and "paid by card" in r.text
    join(client, plan="year")  # the unpaid sign-up is replaced
    page = client.get("/app/join/pay").text
    assert "Or pay by SEPA Direct Debit" in page and "8 weeks" in page
    for iban, mandate, message in [
        (PAYS, "", "Accept the direct debit mandate"),
        ("DE89370400440532013001", "yes", "IBAN is not valid"),
        ("GB82WEST12345698765432", "yes", "test IBANs only"),
    ]:
        r = debit(client, iban, mandate)
        assert r.status_code == 400 and message in r.text, message
    with b.engine.connect() as conn:
        assert conn.execute(select(schema.payment_attempts)).first() is None  # nothing tried


def test_active_at_once_settled_three_days_later(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, clock = billing
    join(client, plan="year")
    m = member_id(b)
    r = debit(client, PAYS)
    assert r.status_code == 303 and r.headers["location"] == "/app/join/welcome"
    # Active and at the gates while the bank has the debit; the invoice is still open.
    assert published(b, m)["status"] == "active"
    assert b.member(m)["owed"] == 3570 and notices(b, m) == ["welcome"]
    with b.engine.connect() as conn:
        assert conn.execute(select(schema.payment_attempts.c.state)).scalars().all() == [
            "processing"
        ]
    clock.advance(3)
    b.run_cycle()
    assert b.member(m)["owed"] == 0 and published(b, m)["status"] == "active"
    assert notices(b, m) == ["welcome", "receipt"]


def test_a_failed_first_debit_is_dunned(billing: tuple[Billing, Clock], client: TestClient) -> None:
    b, clock = billing
    join(client, plan="year")
    m = member_id(b)
    assert debit(client, FAILS).status_code == 303
    assert published(b, m)["status"] == "active"
    clock.advance(3)
    b.run_cycle()
    # The bank refused it: the member is in grace with the invoice open, and told so.
    assert (b.member(m)["status"], b.member(m)["owed"]) == ("grace", 3570)
    assert published(b, m)["status"] == "grace" and notices(b, m) == ["welcome", "signup_failed"]


def test_the_json_twin_takes_the_same_debit(
    billing: tuple[Billing, Clock], client: TestClient
) -> None:
    b, _ = billing
    offer = client.get("/api/v1/join").json()
    assert {p["id"]: p["sepa"] for p in offer["plans"]} == {"monthly": False, "year": True}
    person = {
        "site": "downtown",
        "plan": "year",
        "name": "Jo",
        "email": "jo@example.com",
        "phone": "+49 30 1234567",
        "emergency_contact": "Max",
        "terms_sha256": offer["terms"]["sha256"],
        "accept": True,
    }
    r = client.post("/api/v1/join", json=person, headers={"X-CSRF-Token": offer["csrf_token"]})
    h = {"X-CSRF-Token": r.json()["csrf_token"]}
    assert client.get("/api/v1/join/pay").json()["payment"]["test_ibans"]
    body = {"key": "k" * 20, "iban": PAYS}
    r = client.post("/api/v1/join/pay", json=body, headers=h)
    assert r.status_code == 400 and "mandate" in r.json()["error"]
    r = client.post("/api/v1/join/pay", json={**body, "mandate": True}, headers=h)
    assert r.status_code == 202 and r.json()["state"] == "processing"
    assert published(b, member_id(b))["status"] == "active"
