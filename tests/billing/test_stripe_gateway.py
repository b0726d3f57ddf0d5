"""StripeGateway with the real stripe library against localstripe: charges, declines (which
localstripe reports without a decline_code), lookups by id, and 429s retried with backoff through
a loopback proxy that answers "Too Many Requests" first."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import stripe
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gated.billing_sync import schema
from gated.billing_sync.errors import BillingError
from gated.billing_sync.gateway import GatewayUnavailable
from gated.billing_sync.service import PlanSpec
from gated.billing_sync.stripe_gateway import StripeGateway, method_of
from tests.billing.helpers import make_billing, notices, published, step
from tests.billing.test_notice_kinds import bodies
from tests.billing.test_signup import TERMS, applicant
from tests.billing.test_webhooks import ThreadServer
from tests.services import LocalStripe
from tests.sync.helpers import wait_until


def gateway(url: str, **kw: object) -> StripeGateway:
    return StripeGateway(
        "sk_test_local",
        api_base=url,
        off_session=False,
        max_requests_per_s=100,
        sleep=lambda s: None,
        **kw,
    )  # type: ignore[arg-type]


def test_charge_decline_and_retrieve(localstripe: LocalStripe) -> None:
    gw = gateway(localstripe.url)
    customer = gw.create_customer("m1", "ann@example.org", "Ann")
    ok_pm = gw.attach_payment_method(customer, "pm_card_visa")
    intent = gw.create_intent(
        customer_ref=customer,
        payment_method=ok_pm,
        amount=5938,
        currency="EUR",
        idempotency_key="inv1-a1",
        metadata={"m": "1"},
    )
    assert gw.retrieve_intent(intent).state == "requires_confirmation"  # nothing charged yet
    assert gw.confirm_intent(intent, "inv1-a1").state == "succeeded"
    assert gw.retrieve_intent(intent).state == "succeeded"

    bad_pm = gw.attach_payment_method(customer, "pm_card_chargeCustomerFail")
    intent = gw.create_intent(
        customer_ref=customer,
        payment_method=bad_pm,
        amount=5938,
        currency="EUR",
        idempotency_key="inv2-a1",
        metadata={},
    )
    result = gw.confirm_intent(intent, "inv2-a1")
    assert (result.state, result.decline_code) == ("failed", "card_declined")
    assert gw.retrieve_intent(intent).state == "failed"


def test_billing_with_stripe_renews_and_dunns(tmp_path: Path, localstripe: LocalStripe) -> None:
    b, clock = make_billing(tmp_path, gateway=gateway(localstripe.url))
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_card_visa")
    assert published(b, "m1")["status"] == "active"
    b.set_payment_method("m1", "pm_card_chargeCustomerFail")
    step(b, clock, 31)
    assert published(b, "m1")["status"] == "grace"
    info = b.member("m1")
    assert info["owed"] == 5938 and info["next_retry_at"] is not None  # no decline_code: soft
    b.set_payment_method("m1", "pm_card_visa")
    assert published(b, "m1")["status"] == "active"


def test_a_cycle_charges_several_members_at_once_through_stripe(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    """Four calls in flight from the cycle's threads, each on a client of its own: every member is
    renewed once, and a declining card fails only its own charge."""
    gw = gateway(localstripe.url, concurrency=4)
    b, clock = make_billing(tmp_path, gateway=gw)
    members = [f"m{i}" for i in range(8)]
    for m in members:
        b.add_member(m, m, plan_id="monthly", payment_method="pm_card_visa")
    b.set_payment_method("m5", "pm_card_chargeCustomerFail")
    step(b, clock, 31)
    assert {m: published(b, m)["status"] for m in members} == {
        m: "grace" if m == "m5" else "active" for m in members
    }
    assert [b.member(m)["owed"] for m in members] == [5938 if m == "m5" else 0 for m in members]
    assert gw._clients.qsize() > 1  # the calls overlapped, each on its own client


def test_a_signups_failed_first_debit_says_so_not_that_a_retry_failed(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    """An online sign-up paid by SEPA debit is active while the bank has the debit; when the
    bank refuses it (localstripe's failing test IBAN), the member is told their first payment
    did not go through, not that a renewal's retry failed."""
    api = stripe.StripeClient("sk_test_local", base_addresses={"api": localstripe.url})
    refused = api.v1.payment_methods.create(
        params={"type": "sepa_debit", "sepa_debit": {"iban": "DE62370400440532013001"}}
    ).id
    b, clock = make_billing(tmp_path, gateway=gateway(localstripe.url))
    b.add_plan(PlanSpec("year", "Yearly", 3000, "EUR", tax_rate_bp=1900, sepa=True))
    m = b.start_signup(applicant(plan_id="year"), TERMS, "203.0.113.9", "Firefox")
    paying = b.pay_signup(m, refused, "k" * 20, "http://x/")
    assert paying.state == "processing"
    assert published(b, m)["status"] == "active"
    wait_until(
        lambda: api.v1.payment_intents.retrieve(paying.intent_id).status != "processing",
        what="the bank refusing the debit",
    )
    clock.advance(1)  # a debit still processing is looked up at most hourly (no webhook here)
    b.run_cycle()
    assert (b.member(m)["status"], b.member(m)["owed"]) == ("grace", 3570)
    assert notices(b, m) == ["welcome", "signup_failed"]
    (failed,) = bodies(b, "signup_failed")
    assert failed[1] == "Your first payment did not go through"
    assert "the first payment of the membership you joined online, 35.70 EUR" in failed[2]
    step(b, clock, 3)  # the retry, refused too: that one is a retry

    def retried() -> bool:
        clock.advance(0.05)  # past the hourly look-up of a debit in flight
        b.run_cycle()
        return "retry" in notices(b, m)

    wait_until(retried, what="the retry refused")
    assert notices(b, m).count("signup_failed") == 1


def test_a_sepa_debit_names_its_type_and_is_booked_as_sepa_debit(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    """A debit from a bank account saved with its mandate: the PaymentIntent names
    ``sepa_debit`` (Stripe refuses a method the intent does not allow), it is ``processing``
    until the bank settles it, and the settled payment is booked as ``sepa_debit``, a card's
    as ``card``."""
    gw = gateway(localstripe.url)
    api = stripe.StripeClient("sk_test_local", base_addresses={"api": localstripe.url})
    sepa = api.v1.payment_methods.create(
        params={"type": "sepa_debit", "sepa_debit": {"iban": "DE89370400440532013000"}}
    ).id
    b, clock = make_billing(tmp_path, gateway=gw)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method=sepa)
    b.add_member("m2", "Bob", plan_id="monthly", email="b@x", payment_method="pm_card_visa")
    p = schema.payments

    def methods() -> dict[str, list[str]]:
        with b.engine.connect() as conn:
            rows = conn.execute(select(schema.invoices.c.member_id, p.c.method).join(p)).all()
        out: dict[str, list[str]] = {}
        for member_id, method in rows:
            out.setdefault(member_id, []).append(method)
        return out

    # The first invoice's debit settles half a second after it was submitted.
    wait_until(lambda: (b.run_cycle(), "m1" in methods())[1], timeout=20, what="the debit settled")
    assert methods() == {"m1": ["sepa_debit"], "m2": ["card"]}
    step(b, clock, 31)
    wait_until(
        lambda: (b.run_cycle(), len(methods()["m1"]) == 2)[1], timeout=20, what="the renewal"
    )
    assert methods() == {"m1": ["sepa_debit"] * 2, "m2": ["card"] * 2}
    intents = api.v1.payment_intents.list().data
    assert {i.metadata["payment_method_type"] for i in intents} == {"sepa_debit", "card"}
    assert gw.method_type(sepa) == "sepa_debit" and gw.method_type("pm_card_visa") == "card"
    # A webhook's intent names its one type; a fake's says it in the metadata.
    assert method_of({"payment_method_types": ["sepa_debit"]}) == "sepa_debit"
    assert method_of({"payment_method_types": [], "metadata": {}}) == "card"


@pytest.fixture
def throttling_proxy(localstripe: LocalStripe) -> object:
    """Answers the first ``budget`` requests with 429, then forwards to localstripe."""
    state = {"budget": 0, "seen": 0}

    async def forward(request: Request) -> Response:
        state["seen"] += 1
        if state["budget"] > 0:
            state["budget"] -= 1
            return Response(
                '{"error": {"type": "rate_limit_error", "message": "slow down"}}',
                status_code=429,
                media_type="application/json",
            )
        async with httpx.AsyncClient() as client:
            upstream = await client.request(
                request.method,
                f"{localstripe.url}{request.url.path}",
                params=request.query_params,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            )
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])
    with ThreadServer(app) as srv:
        yield state, f"http://127.0.0.1:{srv.port}"


def test_429_is_retried_with_backoff(throttling_proxy: object) -> None:
    state, url = throttling_proxy  # type: ignore[misc]
    sleeps: list[float] = []
    gw = StripeGateway("sk_test_local", api_base=url, max_retries=4, sleep=sleeps.append)
    state["budget"] = 3
    assert gw.create_customer("m1", None, "Ann").startswith("cus_")
    assert state["seen"] == 4
    backoff = [s for s in sleeps if s >= 0.5]  # the rest is pacing (25 requests/s)
    assert backoff == [0.5, 1.0, 2.0]  # exponential backoff between the tries
    state["budget"] = 10
    with pytest.raises(GatewayUnavailable):
        StripeGateway(
            "sk_test_local", api_base=url, max_retries=2, sleep=lambda s: None
        ).create_customer("m2", None, "Bob")


def test_requests_are_paced(localstripe: LocalStripe) -> None:
    import time

    gw = StripeGateway("sk_test_local", api_base=localstripe.url, max_requests_per_s=20)
    started = time.monotonic()
    for i in range(11):
        gw.create_customer(f"m{i}", None, "X")
    assert time.monotonic() - started >= 0.5  # 11 requests at 20/s: 10 gaps of 50 ms


def test_a_card_declined_at_enrolment_is_one_line_and_leaves_no_customer(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    from tests.billing.test_crash import cli, write_config

    config_path = write_config(tmp_path, localstripe.url)
    assert cli(config_path, "keys", "init").returncode == 0
    plan = ("plans", "add", "monthly", "--name", "Monthly", "--price", "4990")
    assert cli(config_path, *plan).returncode == 0
    add = ("members", "add", "m1", "--name", "Ann", "--plan", "monthly")
    refused = cli(config_path, *add, "--card", "pm_card_visa_chargeDeclined")
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "declined" in refused.stderr
    api = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    assert api.v1.customers.list().data == []  # no orphan customer at the provider
    assert "no member 'm1'" in cli(config_path, "members", "show", "m1").stderr
    # The same member with a working card enrols as usual.
    assert "m1: active" in cli(config_path, *add, "--card", "pm_card_visa").stdout
    assert len(api.v1.customers.list().data) == 1


def test_a_cards_expiry_is_read_from_its_payment_method(localstripe: LocalStripe) -> None:
    gw = gateway(localstripe.url)
    customer = gw.create_customer("m1", "ann@example.org", "Ann")
    pm = gw.attach_payment_method(customer, "pm_card_visa")
    expires = gw.card_expiry(pm)
    assert expires is not None
    after = datetime.fromtimestamp(expires, UTC)
    assert after.day == 1 and after.hour == 0 and after > datetime.now(UTC)


def test_refunds_through_stripe_ours_and_the_dashboards_each_booked_once(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    from sqlalchemy import select

    from gated.billing_sync import schema

    b, _ = make_billing(tmp_path, gateway=gateway(localstripe.url))
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_card_visa")
    with b.engine.connect() as conn:
        pi = conn.execute(select(schema.payment_attempts.c.gateway_ref)).scalar_one()
    assert b.refund(1, 1000).refunded == 1000
    client = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    client.v1.refunds.create(params={"payment_intent": pi, "amount": 500})  # the dashboard
    assert b.refunds_reported(pi) is True
    assert b.refunds_reported(pi) is False  # told again: nothing more
    with pytest.raises(BillingError, match="to refund"):
        b.refund(1, 5938)  # more than is left: refused before Stripe is asked
    with b.engine.connect() as conn:
        amounts = (
            conn.execute(select(schema.refunds.c.amount).order_by(schema.refunds.c.id))
            .scalars()
            .all()
        )
    assert amounts == [1000, 500]
    assert sorted(r.amount for r in client.v1.refunds.list(params={"limit": 10}).data) == [
        500,
        1000,
    ]


def test_dispute_evidence_is_sent_as_stripes_dispute_update_and_submitted() -> None:
    """localstripe has no disputes: a loopback server records the request the stripe library
    makes and answers as Stripe's ``POST /v1/disputes/{id}`` does."""
    from urllib.parse import parse_qsl

    seen: list[tuple[str, str, dict[str, str], str | None]] = []

    async def dispute(request: Request) -> Response:
        body = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        seen.append((request.method, request.url.path, body, request.headers.get("authorization")))
        payload = {"id": request.path_params["dp"], "object": "dispute", "status": "under_review"}
        return Response(json.dumps(payload), media_type="application/json")

    app = Starlette(routes=[Route("/v1/disputes/{dp}", dispute, methods=["POST"])])
    with ThreadServer(app) as srv:
        gw = gateway(f"http://127.0.0.1:{srv.port}")
        fields = {
            "customer_name": "Ann",
            "service_date": "2026-12-01",
            "access_activity_log": "2026-12-02T08:00:00Z entry downtown/t1",
        }
        gw.submit_dispute_evidence("dp_1", fields)
    ((method, path, body, auth),) = seen
    assert (method, path, auth) == ("POST", "/v1/disputes/dp_1", "Bearer sk_test_local")
    assert body == {
        "evidence[customer_name]": "Ann",
        "evidence[service_date]": "2026-12-01",
        "evidence[access_activity_log]": "2026-12-02T08:00:00Z entry downtown/t1",
        "submit": "true",
    }
