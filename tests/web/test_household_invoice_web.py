"""A household's renewal invoice in the payer's member app: listed on ``/app/``, its page and
its PDF show a line for each member it bills, with their name and period."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gated.billing_sync.service import Billing
from tests.billing.helpers import Clock, make_billing
from tests.billing.test_documents import SITES, text_of
from tests.billing.test_household_invoice import renewals, to_renewal
from tests.web.test_member_app import sign_in


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path, sites=SITES)
    b.add_member(
        "pat", "Pat", plan_id="monthly", email="pat@example.com", payment_method="pm_sim_ok"
    )
    b.add_member("kim", "Kim", plan_id="monthly", payer_id="pat")
    b.add_member("lou", "Lou", plan_id="monthly", payer_id="pat")
    to_renewal(b, clock)
    return b, clock


def test_the_payer_sees_the_household_invoice_and_its_pdf_shows_every_members_line(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    [inv] = renewals(b)
    sign_in(client, b, "pat@example.com")
    assert f'href="/app/invoices/{inv.id}.pdf"' in client.get("/app/").text
    page = client.get(f"/app/invoices/{inv.id}").text
    for who in ("Pat", "Kim", "Lou"):
        assert f"{who}: Monthly" in page, who
    assert "178.14" in page
    r = client.get(f"/app/invoices/{inv.id}.pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    text = text_of(r.content)
    assert inv.number in text and "178.14" in text
    for who in ("Pat", "Kim", "Lou"):
        assert f"{who}: Monthly" in text, who
    assert text.count("Tax 19 %") == 3
