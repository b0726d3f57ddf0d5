"""Stripe webhooks: signature checks, storage by event id, replays and reordering, and delivery
by a real localstripe to our real HTTP server after a crash."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
import uvicorn
from sqlalchemy import func, select

with warnings.catch_warnings():  # starlette nudges towards httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from tests.billing.crashing import billing_for
from tests.billing.helpers import Clock, make_billing, published, step
from tests.billing.test_crash import assert_charged_once, cli, killed_at, write_config
from tests.services import LocalStripe, free_port

SECRET = "whsec_test_secret"


def signed(
    event: dict[str, Any], secret: str = SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(event).encode()
    ts = int(time.time()) if at is None else at
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, {"Stripe-Signature": f"t={ts},v1={sig}", "Content-Type": "application/json"}


def event(event_id: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": kind,
        "data": {"object": obj},
        "api_version": "2024-06-20",
        "created": int(time.time()),
    }


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Billing, Clock, TestClient]]:
    b, clock = make_billing(tmp_path)
    with TestClient(create_app(b, SECRET)) as client:
        yield b, clock, client


def stored_events(b: Billing) -> int:
    with b.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(schema.webhook_events)).scalar_one()
        )


def intent_of(b: Billing, member_id: str) -> str:
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.payment_attempts.c.gateway_ref)
                .where(schema.payment_attempts.c.member_id == member_id)
                .order_by(schema.payment_attempts.c.id.desc())
            )
            .scalars()
            .first()
        )


def test_bad_signature_is_400_and_nothing_is_applied(
    setup: tuple[Billing, Clock, TestClient],
) -> None:
    b, _, client = setup
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    ev = event(
        "evt_1", "charge.dispute.created", {"id": "dp_1", "payment_intent": intent_of(b, "m1")}
    )
    payload, headers = signed(ev, secret="whsec_wrong")
    assert client.post("/v1/stripe/webhook", content=payload, headers=headers).status_code == 400
    payload, headers = signed(ev, at=int(time.time()) - 3600)  # outside Stripe's tolerance
    assert client.post("/v1/stripe/webhook", content=payload, headers=headers).status_code == 400
    payload, headers = signed(ev)
    tampered = payload.replace(b"dp_1", b"dp_2")
    assert client.post("/v1/stripe/webhook", content=tampered, headers=headers).status_code == 400
    assert stored_events(b) == 0
    assert published(b, "m1")["status"] == "active"


def test_replayed_event_is_applied_once(setup: tuple[Billing, Clock, TestClient]) -> None:
    b, _, client = setup
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    ev = event(
        "evt_1", "charge.dispute.created", {"id": "dp_1", "payment_intent": intent_of(b, "m1")}
    )
    payload, headers = signed(ev)
    first = client.post("/v1/stripe/webhook", content=payload, headers=headers)
    assert first.json() == {"received": True, "applied": True}
    assert published(b, "m1")["status"] == "suspended"
    closed = event(
        "evt_2",
        "charge.dispute.closed",
        {"id": "dp_1", "payment_intent": intent_of(b, "m1"), "status": "won"},
    )
    p2, h2 = signed(closed)
    client.post("/v1/stripe/webhook", content=p2, headers=h2)
    assert published(b, "m1")["status"] == "active"
    again = client.post("/v1/stripe/webhook", content=payload, headers=headers)
    assert again.status_code == 200 and again.json()["applied"] is False
    assert published(b, "m1")["status"] == "active"  # the replayed "created" did not re-suspend
    assert stored_events(b) == 2


def test_reordered_dispute_events_end_in_the_same_state(
    setup: tuple[Billing, Clock, TestClient],
) -> None:
    b, _, client = setup
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    pi = intent_of(b, "m1")
    for ev in (
        event(
            "evt_b", "charge.dispute.closed", {"id": "dp_9", "payment_intent": pi, "status": "won"}
        ),
        event("evt_a", "charge.dispute.created", {"id": "dp_9", "payment_intent": pi}),
    ):
        payload, headers = signed(ev)
        assert (
            client.post("/v1/stripe/webhook", content=payload, headers=headers).status_code == 200
        )
    assert published(b, "m1")["status"] == "active"


def test_payment_failed_webhook_settles_a_processing_debit(
    setup: tuple[Billing, Clock, TestClient],
) -> None:
    b, clock, client = setup
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_sepa")
    step(b, clock, 31)
    pi = intent_of(b, "m1")
    failed = event(
        "evt_f",
        "payment_intent.payment_failed",
        {
            "id": pi,
            "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds"},
        },
    )
    payload, headers = signed(failed)
    client.post("/v1/stripe/webhook", content=payload, headers=headers)
    assert b.member("m1")["owed"] == 5938
    assert published(b, "m1")["status"] == "grace"
    # A success is final at the provider: one reported after a failure was money taken (the
    # intent confirmed again), and is booked; a failure reported after it flips nothing.
    late_failure = {**failed, "id": "evt_f2"}
    for ev in (event("evt_s", "payment_intent.succeeded", {"id": pi}), late_failure):
        payload, headers = signed(ev)
        client.post("/v1/stripe/webhook", content=payload, headers=headers)
    assert b.member("m1")["owed"] == 0
    assert published(b, "m1")["status"] == "active"


def test_payment_method_attached_retries_with_the_new_card(
    setup: tuple[Billing, Clock, TestClient],
) -> None:
    b, clock, client = setup
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.set_payment_method("m1", "pm_sim_decline_lost_card")
    step(b, clock, 35)
    assert published(b, "m1")["status"] == "suspended"
    ev = event("evt_pm", "payment_method.attached", {"id": "pm_sim_ok", "customer": "cus_sim_m1"})
    payload, headers = signed(ev)
    client.post("/v1/stripe/webhook", content=payload, headers=headers)
    assert published(b, "m1")["status"] == "active"


class ThreadServer:
    """Our starlette app under a real uvicorn on a loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_webhook_from_localstripe_completes_a_payment_after_a_crash(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    """Killed right after confirming: localstripe's signed payment_intent.succeeded reaches our
    server and books the payment before any restart; the restart then charges nothing again."""
    config_path = write_config(tmp_path, localstripe.url)
    b = billing_for(config_path)
    from gated.billing_sync.service import PlanSpec

    b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
    b.add_member("m1", "Ann", plan_id="monthly", payment_method="pm_card_visa")
    b.advance_clock(31 * 86_400)
    with ThreadServer(create_app(b, SECRET)) as srv:
        httpx.post(
            f"{localstripe.url}/_config/webhooks/gated",
            data={"url": f"http://127.0.0.1:{srv.port}/v1/stripe/webhook", "secret": SECRET},
        )
        assert killed_at(config_path, "after_confirm_intent").returncode == -9
        deadline = time.monotonic() + 10
        while b.member("m1")["owed"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b.member("m1")["owed"] == 0 and published(b, "m1")["status"] == "active"
    assert cli(config_path, "run").returncode == 0
    assert_charged_once(b)


def test_a_payment_authenticated_after_we_stopped_waiting_is_booked(
    tmp_path: Path, localstripe: LocalStripe
) -> None:
    """The first charge needed 3-D Secure and no member was there: the attempt is stored as a
    final ``requires_action`` (a pay link goes out). The member then authenticates that very
    intent with their bank and Stripe takes the money: its signed
    ``payment_intent.succeeded`` books the payment all the same."""
    from gated.billing_sync.stripe_gateway import StripeGateway

    gw = StripeGateway(
        "sk_test_local", api_base=localstripe.url, off_session=False, sleep=lambda s: None
    )
    b, _ = make_billing(tmp_path, gateway=gw)
    api = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": localstripe.url}, max_network_retries=0
    )
    card = {"number": "4000002500003155", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    pm = api.v1.payment_methods.create(params={"type": "card", "card": card})
    b.add_member("m1", "Ann", plan_id="monthly", email="ann@example.org", payment_method=pm.id)
    assert b.member("m1")["status"] == "pending"
    intent_id = intent_of(b, "m1")
    with b.engine.connect() as conn:
        state = conn.execute(
            select(schema.payment_attempts.c.state).where(
                schema.payment_attempts.c.gateway_ref == intent_id
            )
        ).scalar_one()
    assert state == "requires_action"
    with ThreadServer(create_app(b, SECRET)) as srv:
        httpx.post(
            f"{localstripe.url}/_config/webhooks/gated",
            data={"url": f"http://127.0.0.1:{srv.port}/v1/stripe/webhook", "secret": SECRET},
        )
        secret = api.v1.payment_intents.retrieve(intent_id).client_secret
        done = httpx.post(
            f"{localstripe.url}/v1/payment_intents/{intent_id}/_authenticate",
            data={"client_secret": secret, "success": "true", "key": "pk_test_local"},
        )
        assert done.status_code == 200, done.text
        deadline = time.monotonic() + 10
        while b.member("m1")["owed"] and time.monotonic() < deadline:
            time.sleep(0.1)
    assert b.member("m1")["owed"] == 0
    assert published(b, "m1")["status"] == "active"
    with b.engine.connect() as conn:
        paid = conn.execute(
            select(schema.payments.c.amount).where(schema.payments.c.reference == intent_id)
        ).scalar_one()
    assert paid == 5938


def test_a_refund_made_on_the_providers_side_is_booked_once_with_its_credit_note(
    tmp_path: Path,
) -> None:
    from gated.billing_sync.simulator import SimulatedGateway

    clock = Clock()
    gw = SimulatedGateway(clock=clock)
    b, _ = make_billing(tmp_path, gateway=gw, clock=clock)
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    pi = intent_of(b, "m1")
    ours = b.refund(1, 1000)  # made by us: its charge.refunded books nothing more
    gw.refund(pi, 2500, "dashboard-1")  # made in the provider's dashboard
    with TestClient(create_app(b, SECRET)) as client:
        for n in (1, 2):  # the second delivery of the same news (a new event id) books nothing
            payload, headers = signed(event(f"evt_r{n}", "charge.refunded", {"payment_intent": pi}))
            answer = client.post("/v1/stripe/webhook", content=payload, headers=headers)
            assert answer.json()["applied"] is (n == 1)
    with b.engine.connect() as conn:
        refunds = conn.execute(
            select(schema.refunds.c.amount, schema.refunds.c.state).order_by(schema.refunds.c.id)
        ).all()
        notes = conn.execute(select(schema.credit_notes.c.amount)).scalars().all()
        inv = conn.execute(select(schema.invoices)).one()
    assert ours.refunded == 1000
    assert [tuple(r) for r in refunds] == [(1000, "succeeded"), (2500, "succeeded")]
    assert notes == [1000, 2500]
    assert inv.status == "paid" and inv.amount_paid == inv.total
    assert gw.refunded_total() == 3500
    assert published(b, "m1")["status"] == "active"


def test_dispute_fee_is_booked_and_a_lost_dispute_leaves_the_amount_open(
    setup: tuple[Billing, Clock, TestClient],
) -> None:
    b, clock, client = setup
    b.add_member("m1", "Ann", plan_id="monthly", email="a@x", payment_method="pm_sim_ok")
    pi = intent_of(b, "m1")
    dispute = {
        "id": "dp_7",
        "payment_intent": pi,
        "amount": 5938,
        "currency": "eur",
        "balance_transactions": [{"amount": -5938, "fee": 1500}],
    }
    for n, (kind, extra) in enumerate(
        [("charge.dispute.created", {}), ("charge.dispute.closed", {"status": "lost"})]
    ):
        payload, headers = signed(event(f"evt_d{n}", kind, {**dispute, **extra}))
        assert (
            client.post("/v1/stripe/webhook", content=payload, headers=headers).status_code == 200
        )
    with b.engine.connect() as conn:
        row = conn.execute(select(schema.disputes)).one()
    assert (row.status, row.amount, row.currency, row.fee) == ("lost", 5938, "EUR", 1500)
    assert b.member("m1")["owed"] == 5938  # the fee is the gym's cost, not the member's debt
    step(b, clock, 4)
    assert published(b, "m1")["status"] in ("suspended", "collections")
