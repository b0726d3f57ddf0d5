"""The console's point of sale, money-back actions, plan changes, erasure requests and the
plain photo form, in process (starlette's TestClient over the real app, a real SQLite store and
the simulated gateway): every POST answers 303 with a message shown once, a form sent twice acts
once, roles are checked on the server, and each action is in the audit log with before/after."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from gated.billing_sync.audit import Actor
from gated.billing_sync.products import ProductSpec
from gated.billing_sync.service import Billing, PlanSpec
from gated.web.desk_core import Desk
from gated.web.security import csrf_token
from tests.billing.helpers import Clock, make_billing
from tests.web.helpers import hidden
from tests.web.test_desk import app_web

PASSWORD = "a long staff password"


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    b.add_plan(PlanSpec("premium", "Premium", 9990, "EUR", tax_rate_bp=1900))
    b.add_member(
        "ann", "Ann", plan_id="monthly", email="ann@example.com", payment_method="pm_sim_ok"
    )
    b.add_member("upt", "Una", plan_id="monthly", sites=["uptown"], payment_method="pm_sim_ok")
    pos = b.point_of_sale()
    pos.add(ProductSpec("towel", "Towel", 300, tax_rate_bp=1900, stock=2))
    pos.add(ProductSpec("day", "Day pass", 1200, kind="pass", period_days=1, site="downtown"))
    pos.add(ProductSpec("up-day", "Uptown day", 1000, kind="pass", period_days=1, site="uptown"))
    access = b.staff_access()
    for role in ("front_desk", "manager", "owner"):
        access.add(role, role.title(), role, ["downtown"], PASSWORD)
    return b, clock


def _as(client: TestClient, b: Billing, role: str) -> str:
    """Sign ``client`` in as ``role``; returns its CSRF token."""
    token = b.staff_access().open_session(role, "test", "127.0.0.1")
    client.cookies.set("gated-staff", token)
    return csrf_token(Desk(app_web(client.app)).csrf_key, token)


def _sell_form(client: TestClient, query: str = "") -> dict[str, str]:
    page = client.get(f"/desk/sell{query}")
    assert page.status_code == 200
    return {"csrf": hidden(page.text, "csrf"), "submit_key": hidden(page.text, "submit_key")}


def test_a_walk_in_buys_a_day_pass_with_a_loaner_card_once(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, clock = billing
    _as(client, b, "front_desk")
    page = client.get("/desk/sell")
    # The catalogue with prices with tax and stock; another site's pass is not on sale here.
    assert "Towel" in page.text and "3.57" in page.text and "Uptown day" not in page.text
    form = {
        **_sell_form(client),
        "product": "day",
        "buyer": "walk_in",
        "walk_in": "Gia Guest",
        "method": "cash",
        "loaner_uid": "04:aa:bb:cc",
    }
    r = client.post("/desk/sell", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/desk/sales/")
    receipt = client.get(r.headers["location"])
    assert "Sold." in receipt.text and "Gia Guest" in receipt.text and "in cash" in receipt.text
    assert "lent: it opens the gates" in receipt.text
    # A reload of the receipt is a GET: nothing more is sold, and the message is gone.
    again = client.get(r.headers["location"])
    assert again.status_code == 200 and "Sold." not in again.text
    # The same form sent again (a double click): the first receipt, no second sale.
    r2 = client.post("/desk/sell", data=form, follow_redirects=False)
    assert r2.headers["location"] == r.headers["location"]
    assert "already sent" in client.get(r2.headers["location"]).text
    sales = b.point_of_sale().sales()
    assert len(sales) == 1
    holder = sales[0].member_id
    assert b.member(holder)["status"] == "active" and b.member(holder)["cards"] == 1
    [row] = [e for e in b.audit_entries() if e["action"] == "sell"]
    assert (row["actor"], row["role"], row["member_id"]) == ("front_desk", "front_desk", holder)
    assert row["changes"]["cards"][1] == 1 and row["changes"]["status"][1] == "active"
    assert row["detail"]["loaner_card"] is True and row["detail"]["method"] == "cash"

    # The card is still lent for the day: nobody else gets it.
    form2 = {**form, **_sell_form(client), "walk_in": "Hal"}
    r = client.post("/desk/sell", data=form2)
    assert "Not sold: this card is held by" in r.text and len(b.point_of_sale().sales()) == 1
    # The day over, the card came back: the next walk-in gets it, and it leaves the first.
    clock.advance(1.1)
    b.run_cycle()
    _as(client, b, "front_desk")  # a new shift: the session of yesterday has ended
    r = client.post("/desk/sell", data={**form2, **_sell_form(client)})
    assert "Sold." in r.text, r.text
    assert b.member(holder)["cards"] == 0 and b.member(holder)["status"] == "expired"


def test_sales_to_members_on_account_and_refusals(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    _as(client, b, "front_desk")
    base = {"product": "towel", "buyer": "member", "member": "ann", "method": "account"}
    page = client.get("/desk/sell?member=ann")
    assert 'value="ann"' in page.text
    r = client.post("/desk/sell", data={**base, **_sell_form(client), "quantity": "2"})
    assert "Sold on account" in r.text and "paid" in r.text
    r = client.post("/desk/sell", data={**base, **_sell_form(client)})
    assert "Not sold: Towel: only 0 left, not 1" in r.text
    # Another site's member, a made-up product, a walk-in on account: refused, nothing sold.
    for bad, said in (
        ({"member": "upt"}, "no member upt here"),
        ({"product": "up-day"}, "choose a product"),
        ({"buyer": "walk_in", "walk_in": "X"}, "a walk-in pays now"),
        ({"quantity": "x"}, "the quantity is a number"),
    ):
        r = client.post("/desk/sell", data={**base, **_sell_form(client), **bad})
        assert r.history[0].status_code == 303 and said in r.text, (bad, r.text)
    # Without the form's key: nothing sold.
    r = client.post("/desk/sell", data={**base, **_sell_form(client), "submit_key": "x"})
    assert "had expired" in r.text
    assert len(b.point_of_sale().sales()) == 1


def test_refund_credit_write_off_and_plan_change_are_for_managers(
    client: TestClient, app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    pos = b.point_of_sale()
    desk = Actor("staff", "front_desk", "front_desk", "127.0.0.1")
    cash = pos.sell(desk, "towel", member_id="ann", method="cash")
    b.add_member("bo", "Bo", plan_id="monthly", payment_method="pm_sim_decline_lost_card")
    [debt] = [i for i in b.member_access().invoices("bo") if i["status"] == "open"]
    # The front desk sees none of it and is refused on the server.
    csrf = _as(client, b, "front_desk")
    page = client.get("/desk/members/ann")
    assert "refund-form" not in page.text and "plan-form" not in page.text
    for path in ("refund", "credit", "write-off", "plan"):
        r = client.post(
            f"/desk/members/ann/{path}",
            data={"csrf": csrf, "invoice": str(cash.invoice_id)},
            follow_redirects=False,
        )
        assert r.status_code == 403, path
    with TestClient(app) as m:
        _as(m, b, "manager")
        page = m.get("/desk/members/ann")
        key = hidden(page.text, "submit_key")
        csrf = hidden(page.text, "csrf")
        assert "refund-form" in page.text and "write-off-form" not in page.text  # nothing open
        assert "write-off-form" in m.get("/desk/members/bo").text
        # Amounts are checked on the server: a bad one, more than was paid, another's invoice.
        for bad, said in (
            ({"amount": "-1"}, "amount like 49.90"),
            ({"amount": "1.234"}, "amount like 49.90"),
            ({"amount": "99.00"}, "Not done"),
            ({"invoice": str(debt["id"])}, "choose an invoice of this member"),
        ):
            data = {"csrf": csrf, "submit_key": key, "invoice": str(cash.invoice_id), **bad}
            r = m.post("/desk/members/ann/refund", data=data)
            assert said in r.text, (bad, r.text)
        data = {"csrf": csrf, "submit_key": key, "invoice": str(cash.invoice_id), "amount": "1"}
        r = m.post("/desk/members/ann/refund", data=data)
        assert "Refund booked: invoice" in r.text and "1.00 EUR refunded" in r.text
        assert "already sent" in m.post("/desk/members/ann/refund", data=data).text
        key = hidden(r.text, "submit_key")
        r = m.post(
            "/desk/members/bo/credit",
            data={"csrf": csrf, "submit_key": key, "invoice": str(debt["id"]), "amount": "5"},
        )
        assert "Credit note booked" in r.text
        r = m.post(
            "/desk/members/bo/write-off",
            data={
                "csrf": csrf,
                "submit_key": hidden(r.text, "submit_key"),
                "invoice": str(debt["id"]),
            },
        )
        assert "Written off: 54.38" in r.text, r.text
        assert b.member("bo")["owed"] == 0
        # A plan change: the quote first (nothing changes), then the confirmed change.
        quote = m.get("/desk/members/ann?plan=premium&when=now")
        assert "plan-quote" in quote.text and "Charged now to the card on file" in quote.text
        assert b.member("ann")["plan"] == "monthly"
        r = m.post(
            "/desk/members/ann/plan",
            data={
                "csrf": csrf,
                "submit_key": hidden(quote.text, "submit_key"),
                "plan": "premium",
                "when": "now",
            },
        )
        assert "The plan is now premium." in r.text
        assert b.member("ann")["plan"] == "premium"
        refused = m.get("/desk/members/ann?plan=monthly&when=now")
        assert "plan-refused" in refused.text
    rows = {e["action"]: e for e in b.audit_entries() if e["actor"] == "manager"}
    assert set(rows) == {"refund", "credit", "write_off", "change_plan"}
    assert rows["refund"]["detail"]["refunded"] == 100
    assert rows["credit"]["changes"]["owed"] == [5938, 5438]
    assert rows["write_off"]["changes"]["owed"] == [5438, 0]
    assert rows["change_plan"]["changes"]["plan"] == ["monthly", "premium"]


def test_a_manager_starts_and_changes_a_payment_plan(
    client: TestClient, app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    b.add_member("bo", "Bo", plan_id="monthly", payment_method="pm_sim_decline_lost_card")
    assert b.member("bo")["owed"] == 5938
    _as(client, b, "front_desk")
    assert "payment-plan-form" not in client.get("/desk/members/bo").text
    with TestClient(app) as m:
        _as(m, b, "manager")
        page = m.get("/desk/members/bo")
        assert "Start a payment plan" in page.text
        data = {"csrf": hidden(page.text, "csrf"), "submit_key": hidden(page.text, "submit_key")}
        r = m.post("/desk/members/bo/payment-plan", data={**data, "instalments": "13"})
        assert "Not done: a payment plan has 2 to 12 instalments" in r.text
        r = m.post(
            "/desk/members/bo/payment-plan",
            data={**data, "submit_key": hidden(r.text, "submit_key"), "instalments": "3"},
        )
        assert "Payment plan started: 59.38 EUR in 3 instalments, the first (19.80 EUR)" in r.text
        # Nothing is paid on a card declined for good; the form now changes the plan.
        assert b.member("bo")["owed"] == 5938 and "Change the payment plan" in r.text
        r = m.post(
            "/desk/members/bo/payment-plan",
            data={**data, "submit_key": hidden(r.text, "submit_key"), "instalments": "2"},
        )
        assert "Payment plan changed: 59.38 EUR in 2 instalments, the first (29.69 EUR)" in r.text
        assert b.member("bo")["owed"] == 5938
    rows = b.audit_entries(limit=2)
    assert [(e["action"], e["detail"]["change"]) for e in rows] == [
        ("payment_plan", True),
        ("payment_plan", False),
    ]


def test_owners_carry_out_or_refuse_erasure_requests(
    client: TestClient, app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    data = b.member_data()
    b.add_member("cy", "Cy", plan_id="monthly", payment_method="pm_sim_ok")
    data.request_erasure("ann", "10.0.0.1")
    data.request_erasure("cy", "10.0.0.2")
    data.request_erasure("upt", "10.0.0.3")  # another site's: not this owner's
    csrf = _as(client, b, "manager")
    assert client.get("/desk/erasure", follow_redirects=False).status_code == 403
    with TestClient(app) as o:
        csrf = _as(o, b, "owner")
        page = o.get("/desk/erasure")
        assert "erasure-ann" in page.text and "erasure-cy" in page.text
        assert "erasure-upt" not in page.text
        r = o.post("/desk/erasure/ann/erase", data={"csrf": csrf})
        assert "tick the box" in r.text and b.member("ann")["name"] != ""
        r = o.post("/desk/erasure/ann/erase", data={"csrf": csrf, "confirm": "yes"})
        assert "Member ann erased." in r.text and "erasure-ann" not in r.text
        r = o.post("/desk/erasure/cy/refuse", data={"csrf": csrf, "reason": " "})
        assert "say why" in r.text
        r = o.post("/desk/erasure/cy/refuse", data={"csrf": csrf, "reason": "open dispute"})
        assert "is refused" in r.text and "erasure-cy" not in r.text
        r = o.post("/desk/erasure/upt/erase", data={"csrf": csrf, "confirm": "yes"})
        assert "No open request" in r.text
    assert [r["member_id"] for r in data.erasure_requests()] == ["upt"]
    assert data.erasure_requested_at("cy") is None  # refused: the member may ask again
    assert data.request_erasure("cy", "10.0.0.2") is True
    refused = [e for e in b.audit_entries(member_id="cy") if e["action"] == "erasure_refused"]
    assert refused[0]["detail"] == {"reason": "open dispute"} and refused[0]["actor"] == "owner"
    assert next(e["action"] for e in b.audit_entries(member_id="ann")) == "erase"


def test_the_plain_photo_form_uploads_without_javascript(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    _as(client, b, "front_desk")
    page = client.get("/desk/members/ann")
    csrf = hidden(page.text, "csrf")
    assert 'enctype="multipart/form-data"' in page.text
    picture = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(picture, "PNG")
    files = {"photo": ("me.png", picture.getvalue(), "image/png")}
    r = client.post("/desk/members/ann/photo", data={"csrf": "nope"}, files=files)
    assert r.status_code == 403
    r = client.post("/desk/members/ann/photo", data={"csrf": csrf}, files=files)
    assert r.history[0].status_code == 303 and "Photo saved." in r.text
    assert client.get("/desk/members/ann/photo").headers["content-type"] == "image/jpeg"
    text = {"photo": ("x.txt", b"hello", "text/plain")}
    r = client.post("/desk/members/ann/photo", data={"csrf": csrf}, files=text)
    assert "choose a JPEG, PNG or WebP" in r.text
    assert [e["action"] for e in b.audit_entries(member_id="ann")] == ["member_photo"]


def test_the_staff_api_sells_and_answers_erasure_requests(
    client: TestClient, app: Any, billing: tuple[Billing, Clock]
) -> None:
    b, _ = billing
    csrf = _as(client, b, "front_desk")
    products = client.get("/api/v1/staff/products").json()["products"]
    assert [p["id"] for p in products] == ["towel", "day"]
    assert products[0]["gross"] == 357 and products[0]["stock"] == 2
    sold = client.post(
        "/api/v1/staff/sales",
        headers={"x-csrf-token": csrf},
        data={"product": "towel", "buyer": "member", "member": "ann", "method": "cash"},
    )
    assert sold.status_code == 200 and sold.json()["paid"] is True, sold.text
    refused = client.post(
        "/api/v1/staff/sales",
        headers={"x-csrf-token": csrf},
        data={"product": "towel", "buyer": "member", "member": "upt", "method": "cash"},
    )
    assert refused.status_code == 400 and refused.json() == {"error": "no member upt here"}
    assert client.get("/api/v1/staff/erasure-requests").status_code == 403
    b.member_data().request_erasure("ann", "10.0.0.1")
    with TestClient(app) as o:
        csrf = _as(o, b, "owner")
        assert [
            r["member_id"] for r in o.get("/api/v1/staff/erasure-requests").json()["requests"]
        ] == ["ann"]
        r = o.post(
            "/api/v1/staff/erasure/ann/refuse",
            headers={"x-csrf-token": csrf},
            data={"reason": "open debt"},
        )
        assert r.json() == {"ok": True, "member_id": "ann"}
        r = o.post("/api/v1/staff/erasure/ann/erase", headers={"x-csrf-token": csrf})
        assert r.status_code == 404


def test_a_renewal_receipt_shows_every_line_sold_on_it(
    client: TestClient, billing: tuple[Billing, Clock]
) -> None:
    from sqlalchemy import select

    from gated.billing_sync import schema as s
    from tests.billing.helpers import step

    b, clock = billing
    pos = b.point_of_sale()
    pos.add(ProductSpec("water", "Water", 150, tax_rate_bp=700))
    desk = Actor("staff", "front_desk", "front_desk", "127.0.0.1")
    pos.sell(desk, "towel", member_id="ann", method="next_invoice", quantity=2)
    pos.sell(desk, "water", member_id="ann", method="next_invoice", quantity=3)
    step(b, clock, 32)  # the renewal takes both lines
    inv = s.invoices
    with b.engine.connect() as conn:
        renewal = conn.execute(
            select(inv)
            .where(inv.c.member_id == "ann", inv.c.kind == "renewal")
            .order_by(inv.c.id.desc())
        ).first()
    assert renewal is not None and renewal.status == "paid"
    _as(client, b, "front_desk")
    page = client.get(f"/desk/sales/{renewal.id}")
    assert page.status_code == 200, page.text
    # Both sales, each with its total with tax, and the invoice they went on.
    assert "2 sales on one invoice" in page.text
    assert "2 × Towel" in page.text and "7.14" in page.text
    assert "3 × Water" in page.text and "4.82" in page.text
    assert "11.96 EUR with tax, on the renewal invoice of" in page.text
    # The member sees the same lines on the invoice in the app.
    with TestClient(client.app) as app_client:
        app_client.cookies.set("gated-member", b.member_access().open_session("ann", "test"))
        mine = app_client.get(f"/app/invoices/{renewal.id}")
        assert mine.status_code == 200 and "Towel" in mine.text and "Water" in mine.text
