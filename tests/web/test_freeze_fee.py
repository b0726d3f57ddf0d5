"""A plan that keeps its freeze fee says so on the member app's freeze page, before the member
confirms; a plan that gives back the unused part says nothing of the kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gated.billing_sync.service import Billing, PlanSpec
from tests.billing.helpers import Clock, make_billing
from tests.web.test_member_app import sign_in


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    b.add_plan(PlanSpec("kept", "Kept", 4990, "EUR", freeze_fee=500, freeze_fee_kept=True))
    b.add_member("ann", "Ann", plan_id="kept", email="ann@example.com", payment_method="pm_sim_ok")
    b.add_member(
        "bob", "Bob", plan_id="monthly", email="bob@example.com", payment_method="pm_sim_ok"
    )
    return b, clock


def test_the_freeze_page_says_a_kept_fee_is_not_refunded(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    note = "This fee is not refunded if you unfreeze early."
    sign_in(client, b, "ann@example.com")
    page = client.get("/app/freeze?months=1").text
    assert 'id="freeze-fee">5.00 EUR<' in page and note in page
    client.cookies.clear()
    sign_in(client, b, "bob@example.com")
    page = client.get("/app/freeze?months=1").text
    assert 'id="freeze-fee">5.95 EUR<' in page and note not in page
