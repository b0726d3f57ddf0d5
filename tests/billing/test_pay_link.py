"""The pay page a pay link opens (``GET/POST /pay/{invoice}.{token}``): the itemized invoice, an
on-session charge through the payment gateway recorded like any payment, unguessable links,
closed invoices, and a double submit that charges once."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

with warnings.catch_warnings():  # starlette nudges towards httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from gated.billing_sync.simulator import SimulatedGateway
from gated.billing_sync.stripe_gateway import StripeGateway
from tests.billing.helpers import Clock, make_billing, notices, published
from tests.services import LocalStripe

PUBLIC = "https://pay.gym.example"


def open_invoice(b: Billing, member_id: str) -> int:
    with b.engine.connect() as conn:
        return int(
            conn.execute(
                select(schema.invoices.c.id).where(
                    schema.invoices.c.member_id == member_id, schema.invoices.c.status == "open"
                )
            ).scalar_one()
        )


def sent_link(b: Billing, member_id: str) -> str:
    """The pay link in the member's newest pay_link notice."""
    n = schema.notifications
    with b.engine.connect() as conn:
        body = (
            conn.execute(
                select(n.c.body)
                .where(n.c.member_id == member_id, n.c.kind == "pay_link")
                .order_by(n.c.id.desc())
            )
            .scalars()
            .first()
        )
    assert body is not None
    found = re.search(re.escape(PUBLIC) + r"(/pay/\S+)", body)
    assert found is not None
    return found.group(1)


def form_key(page: str) -> str:
    found = re.search(r'name="key" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def payments(b: Billing) -> int:
    with b.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.payments)).scalar_one())


@pytest.fixture
def declined(tmp_path: Path) -> Iterator[tuple[Billing, SimulatedGateway, TestClient]]:
    """A member whose first charge needed authentication: pending, owing, a pay link sent."""
    clock = Clock()
    gw = SimulatedGateway(tmp_path / "sim.db", clock=clock)
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock, http={"public_url": PUBLIC})
    b.add_member(
        "m1",
        "Ann <Lee>",
        plan_id="monthly",
        email="ann@example.org",
        payment_method="pm_sim_decline_authentication_required",
    )
    with TestClient(create_app(b, None)) as client:
        yield b, gw, client


def test_the_page_shows_the_itemized_invoice_and_paying_makes_the_member_active(
    declined: tuple[Billing, SimulatedGateway, TestClient],
) -> None:
    b, gw, client = declined
    invoice = open_invoice(b, "m1")
    path = sent_link(b, "m1")
    assert path != f"/pay/{invoice}" and len(path) > len(f"/pay/{invoice}.") + 20
    assert published(b, "m1")["status"] == "pending"

    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    text = page.text
    assert "Ann &lt;Lee&gt;" in text  # escaped
    assert "Monthly 2026-12-01 to 2027-01-01" in text and "Tax 19 %" in text
    assert "<th class=n id=owed>59.38 EUR</th>" in text

    paid = client.post(path, data={"key": form_key(text)})
    assert paid.status_code == 200 and "Thank you" in paid.text
    assert published(b, "m1")["status"] == "active"
    assert b.member("m1")["owed"] == 0
    assert gw.charged_total() == 5938
    with b.engine.connect() as conn:
        outbox = (
            conn.execute(
                select(schema.status_outbox.c.payload).order_by(
                    schema.status_outbox.c.version.desc()
                )
            )
            .scalars()
            .first()
        )
    assert outbox is not None and '"status":"active"' in outbox  # published at once
    assert notices(b, "m1")[-1] == "receipt"

    again = client.get(path)
    assert again.status_code == 410 and "Already paid" in again.text
    assert client.post(path, data={"key": form_key(text) + "x"}).status_code == 410


def test_a_double_submit_charges_once(
    declined: tuple[Billing, SimulatedGateway, TestClient],
) -> None:
    b, gw, client = declined
    path = sent_link(b, "m1")
    key = form_key(client.get(path).text)
    first = client.post(path, data={"key": key})
    second = client.post(path, data={"key": key})
    assert first.status_code == second.status_code == 200
    assert gw.charged_total() == 5938 and payments(b) == 1
    with b.engine.connect() as conn:
        keys = conn.execute(
            select(func.count()).where(schema.payment_attempts.c.idempotency_key.like("pay%"))
        ).scalar_one()
    assert keys == 1


@pytest.mark.parametrize(
    "path",
    [
        "/pay/1",  # the bare invoice id is not a link
        "/pay/1.AAAAAAAAAAAAAAAAAAAAAA",
        "/pay/abc.def",
        "/pay/99999.xyz",
    ],
)
def test_links_we_did_not_issue_are_not_found(
    declined: tuple[Billing, SimulatedGateway, TestClient], path: str
) -> None:
    _, _, client = declined
    page = client.get(path)
    assert page.status_code == 404 and "not valid" in page.text
    assert client.post(path, data={"key": "k" * 20}).status_code == 404


def test_another_invoices_token_does_not_open_this_one(
    declined: tuple[Billing, SimulatedGateway, TestClient],
) -> None:
    b, _, client = declined
    invoice = open_invoice(b, "m1")
    other = b.pay_link(invoice + 1).rsplit(".", 1)[1]
    assert client.get(f"/pay/{invoice}.{other}").status_code == 404


def test_a_declined_card_on_the_page_charges_nothing(
    declined: tuple[Billing, SimulatedGateway, TestClient],
) -> None:
    b, gw, client = declined
    with b.engine.begin() as conn:
        conn.execute(
            update(schema.members)
            .where(schema.members.c.id == "m1")
            .values(payment_method="pm_sim_decline_lost_card")
        )
    path = sent_link(b, "m1")
    page = client.post(path, data={"key": form_key(client.get(path).text)})
    assert page.status_code == 402 and "lost card" in page.text
    assert gw.charged_total() == 0 and b.member("m1")["owed"] == 5938
    assert client.get(path).status_code == 200  # still open: another card may pay it


def test_links_survive_a_restart_and_paid_elsewhere_is_gone(tmp_path: Path) -> None:
    b, clock = make_billing(tmp_path, http={"public_url": PUBLIC})
    b.add_member(
        "m1", "Ann", plan_id="monthly", payment_method="pm_sim_decline_authentication_required"
    )
    link = b.pay_link(open_invoice(b, "m1"))
    b.engine.dispose()
    again, _ = make_billing(tmp_path, clock=clock, http={"public_url": PUBLIC})
    assert again.pay_link(open_invoice(again, "m1")) == link
    again.record_payment("m1")  # paid at the front desk
    with TestClient(create_app(again, None)) as client:
        page = client.get(link.removeprefix(PUBLIC))
    assert page.status_code == 410


def test_the_page_pays_through_stripe_on_session(tmp_path: Path, localstripe: LocalStripe) -> None:
    gw = StripeGateway(
        "sk_test_local",
        api_base=localstripe.url,
        off_session=False,
        max_requests_per_s=100,
        sleep=lambda s: None,
    )
    b, _ = make_billing(tmp_path, gateway=gw, http={"public_url": PUBLIC})
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_card_chargeCustomerFail")
    path = b.pay_link(open_invoice(b, "m1")).removeprefix(PUBLIC)
    with TestClient(create_app(b, None)) as client:
        declined = client.post(path, data={"key": form_key(client.get(path).text)})
        assert declined.status_code == 402  # the same card, now on-session: still declined
        # A working card saved on Stripe's side (its webhook not yet here).
        with b.engine.connect() as conn:
            customer = conn.execute(select(schema.members.c.customer_ref)).scalar_one()
        pm = gw.attach_payment_method(customer, "pm_card_visa")
        with b.engine.begin() as conn:
            conn.execute(update(schema.members).values(payment_method=pm))
        paid = client.post(path, data={"key": form_key(client.get(path).text)})
        assert paid.status_code == 200, paid.text
    assert published(b, "m1")["status"] == "active"
    with b.engine.connect() as conn:
        ref = conn.execute(
            select(schema.payments.c.reference).where(schema.payments.c.method == "card")
        ).scalar_one()
    assert gw.retrieve_intent(ref).state == "succeeded"
