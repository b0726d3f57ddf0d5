"""The JSON twins of the sign-up and self-service pages, in process (starlette's TestClient over
the real app, a real SQLite store, the simulated gateway): join, pay (a decline, then one charge
for a repeated key), freeze, cancel, a card and contact details, each with the page's rules
and messages; every POST of the member API refused without the CSRF token; and
``/api/v1/openapi.json`` describing every ``/api/v1`` route, so a route added without a
summary fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from gated.billing_sync import schema
from gated.billing_sync.service import Billing, PlanSpec
from gated.web.openapi import document
from tests.billing.helpers import Clock, make_billing, published
from tests.web.test_member_app import sign_in

PERSON = {
    "site": "downtown",
    "plan": "year",
    "name": "Zoë Ærø",
    "email": "zoe@example.com",
    "phone": "+49 30 1234567",
    "emergency_contact": "Max +49 30 7654321",
}


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    b.add_plan(
        PlanSpec(
            "year", "Yearly", 3000, "EUR", tax_rate_bp=1900, freeze_fee=500, min_term_months=12
        )
    )
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.com", payment_method="pm_sim_ok"
    )
    return b, clock


def api_mounts(app: Any) -> list[tuple[str, list[Any]]]:
    return [
        (m.path, list(m.routes))
        for m in app.routes
        if isinstance(m, Mount) and m.path.startswith("/api/v1")
    ]


def test_openapi_describes_every_api_route(client: TestClient, app: Any) -> None:
    doc = client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    declared = {
        (prefix + route.path, method.lower())
        for prefix, routes in api_mounts(app)
        for route in routes
        if isinstance(route, Route) and route.include_in_schema
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert declared == described and len(declared) > 30
    missing = [
        (p, m) for p, ops in doc["paths"].items() for m, op in ops.items() if not op["summary"]
    ]
    assert not missing, f"API routes without a summary (use ApiRoute): {missing}"
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    join = doc["paths"]["/api/v1/join"]["post"]
    assert join["security"] == [] and "terms_sha256" in str(join["requestBody"])
    assert doc["paths"]["/api/v1/me/freeze"]["post"]["security"] == [{"member": [], "csrf": []}]
    staff_read = doc["paths"]["/api/v1/staff/members"]["get"]["security"]
    assert staff_read == [{"staff": []}, {"token": []}]
    assert doc["paths"]["/api/v1/staff/tokens"]["get"]["summary"].startswith("The API tokens")

    # The check above catches a route added without its description.
    async def bare(request: Any) -> Any: ...

    plain = document([("/api/v1", [Route("/new", bare, methods=["GET"])])])
    assert plain["paths"]["/api/v1/new"]["get"]["summary"] is None


def test_every_member_api_post_needs_the_csrf_token(
    client: TestClient, billing: tuple[Billing, Clock], app: Any
) -> None:
    b, _ = billing
    sign_in(client, b, "ann@example.com")
    posts = [
        prefix + route.path
        for prefix, routes in api_mounts(app)
        if prefix == "/api/v1"
        for route in routes
        if isinstance(route, Route) and "POST" in (route.methods or ())
    ]
    assert len(posts) >= 12
    for path in posts:
        r = client.post(path, json={})
        assert r.status_code == 403, (path, r.status_code)
    assert client.get("/api/v1/me").status_code == 200  # still signed in: nothing happened


def test_join_and_pay_through_the_api(client: TestClient, billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    offer = client.get("/api/v1/join").json()
    assert {p["id"] for p in offer["plans"]} == {"monthly", "year"}
    csrf, sha = offer["csrf_token"], offer["terms"]["sha256"]
    h = {"X-CSRF-Token": csrf}
    body = {**PERSON, "terms_sha256": sha, "accept": True}
    assert client.post("/api/v1/join", json=body).status_code == 403
    r = client.post("/api/v1/join", json={**body, "accept": "yes"}, headers=h)
    assert r.status_code == 400 and "accept" in r.json()["error"]
    r = client.post("/api/v1/join", json={**body, "terms_sha256": "0" * 64}, headers=h)
    assert r.status_code == 409 and "terms changed" in r.json()["error"]
    r = client.post("/api/v1/join", json={**body, "name": "x" * 101}, headers=h)
    assert r.status_code == 400 and "too long" in r.json()["error"]
    r = client.post("/api/v1/join", json={**body, "plan": "gone"}, headers=h)
    assert r.status_code == 400 and "no longer offered" in r.json()["error"]
    r = client.post("/api/v1/join", json=body, headers=h)
    assert r.status_code == 201, r.text
    member_id, h = r.json()["member_id"], {"X-CSRF-Token": r.json()["csrf_token"]}
    waiting = client.get("/api/v1/join/pay").json()
    assert waiting["signup"]["owed"] == 3570 and "pm_sim_ok" in waiting["payment"]["methods"]

    r = client.post("/api/v1/join/pay", json={"key": "k" * 20, "method": "pm_sim_x"}, headers=h)
    assert r.status_code == 400 and r.json()["error"] == "Choose a payment method."
    declined = {"key": "d" * 20, "method": "pm_sim_decline_insufficient_funds"}
    r = client.post("/api/v1/join/pay", json=declined, headers=h)
    assert r.status_code == 402 and "insufficient funds" in r.json()["error"]
    ok = {"key": "k" * 20, "method": "pm_sim_ok"}
    assert client.post("/api/v1/join/pay", json=ok, headers=h).json() == {"state": "succeeded"}
    # The same key again (a retried request) is the same payment, not a second one.
    assert client.post("/api/v1/join/pay", json=ok, headers=h).json() == {"state": "succeeded"}
    a = schema.payment_attempts
    with b.engine.connect() as conn:
        charges = conn.execute(
            select(func.count()).where(a.c.member_id == member_id, a.c.state == "succeeded")
        ).scalar_one()
    assert charges == 1
    assert published(b, member_id)["status"] == "active"
    assert client.get("/api/v1/me").json()["status_words"]["gates_let_in"] is True


def test_self_service_through_the_api(client: TestClient, billing: tuple[Billing, Clock]) -> None:
    b, _ = billing
    sign_in(client, b, "ann@example.com")
    h = {"X-CSRF-Token": client.get("/api/v1/session").json()["csrf_token"]}
    assert client.get("/api/v1/me/freeze").status_code == 400
    quote = client.get("/api/v1/me/freeze?months=2").json()
    assert quote["allowed"] and quote["fee"] == 1190
    assert b.member("ann")["freeze"] is None  # quoted, not done
    assert client.post("/api/v1/me/freeze", json={"months": "x"}, headers=h).status_code == 400
    r = client.post("/api/v1/me/freeze", json={"months": 9}, headers=h)  # the plan's rules
    assert r.status_code == 409 and r.json()["quote"]["allowed"] is False
    r = client.post("/api/v1/me/freeze", json={"months": 2}, headers=h)
    assert r.status_code == 200 and r.json()["frozen"]["end"] == quote["end"]
    assert published(b, "ann")["status"] == "frozen"
    again = client.post("/api/v1/me/freeze", json={"months": 1}, headers=h)
    assert again.status_code == 409 and again.json()["error"]
    ends = client.get("/api/v1/me/cancel").json()
    r = client.post("/api/v1/me/cancel", json={}, headers=h)
    assert r.status_code == 200 and r.json()["cancelled"]["ends_at"] == ends["ends_at"]
    assert b.member("ann")["cancel_at"] == ends["ends_at"]

    options = client.get("/api/v1/me/card").json()
    assert options["gateway"] == "simulated"
    r = client.post("/api/v1/me/card", json={"method": "pm_sim_ok"}, headers=h)
    assert r.status_code == 200 and r.json()["member_id"] == "ann"
    new = {"phone": "+44 20 7946 0000", "emergency_contact": "Max", "email": "new@example.com"}
    r = client.post("/api/v1/me/contact", json=new, headers=h)
    assert r.status_code == 200 and r.json()["email_confirmation_sent"] is True
    assert r.json()["contact"]["phone"] == "+44 20 7946 0000"
    assert b.contact("ann")["email"] == "ann@example.com"  # until the link is opened
    bad = client.post("/api/v1/me/contact", json={"phone": "call me"}, headers=h)
    assert bad.status_code == 400 and "phone" in bad.json()["error"]
    assert client.post("/api/v1/me/contact", content=b"[1]", headers=h).status_code == 400
    # Each change is in the audit log as the member's own, and in their data download.
    mine = [e for e in b.audit_entries(member_id="ann") if e["actor_kind"] == "member"]
    assert [e["action"] for e in mine] == ["contact", "payment_method", "cancel", "freeze"]
    assert mine[-1]["changes"]["status"] == ["active", "frozen"]
    audit = client.get("/api/v1/me/data").json()["audit"]
    assert {a["action"]: a["by"] for a in audit}["freeze"] == "you"


def test_an_email_change_confirmed_through_the_api(
    client: TestClient, billing: tuple[Billing, Clock], app: Any
) -> None:
    b, _ = billing
    sign_in(client, b, "ann@example.com")
    h = {"X-CSRF-Token": client.get("/api/v1/session").json()["csrf_token"]}
    new = {"email": "ann.new@example.com", "phone": "+49 30 1234567", "emergency_contact": "Max"}
    r = client.post("/api/v1/me/contact", json=new, headers=h)
    assert r.json().get("email_confirmation_sent") is True, r.text
    with b.engine.connect() as conn:
        n = schema.notifications
        body = conn.execute(select(n.c.body).where(n.c.kind == "email_change")).scalar_one()
    found = re.search(r"/app/email/([A-Za-z0-9_-]+)", body)
    assert found
    token = found[1]

    # The link is opened in another browser, with no session: looking changes nothing.
    with TestClient(app) as other:
        looked = other.get(f"/api/v1/email/{token}")
        assert looked.status_code == 200 and looked.json()["usable"] is True
        assert b.contact("ann")["email"] == "ann@example.com"
        csrf = {"X-CSRF-Token": looked.json()["csrf_token"]}
        assert other.post("/api/v1/email/confirm", json={"token": token}).status_code == 403
        r = other.post("/api/v1/email/confirm", json={"token": token}, headers=csrf)
        assert r.status_code == 200 and r.json() == {"email": "ann.new@example.com"}
        assert b.contact("ann")["email"] == "ann.new@example.com"
        # Used once: the link is gone, for the page and the API alike.
        again = other.post("/api/v1/email/confirm", json={"token": token}, headers=csrf)
        assert again.status_code == 410 and "used already" in again.json()["error"]
        assert other.get(f"/api/v1/email/{token}").status_code == 410
        assert other.get(f"/app/email/{token}").status_code == 410
        for bad in ("x" * 500, "not a token!"):
            assert other.get(f"/api/v1/email/{bad}").status_code == 410
            r = other.post("/api/v1/email/confirm", json={"token": bad}, headers=csrf)
            assert r.status_code == 410
        assert (
            other.post("/api/v1/email/confirm", json={"token": 5}, headers=csrf).status_code == 410
        )
