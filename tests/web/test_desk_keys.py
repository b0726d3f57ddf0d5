"""The console's submit keys and messages across a restart, in process: two apps over one store
stand for serve before and after a restart (or two serve processes). A payment form sent before
the restart and again after it records one payment, and the second answer says what the first
did; a message not shown before the restart is shown after it, and a message made by one of two
processes is shown once by the other; a form whose first POST was cut short is never acted on
again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from gated.billing_sync import schema as s
from gated.billing_sync.server import create_app
from gated.billing_sync.service import Billing
from gated.billing_sync.store import open_store
from gated.billing_sync.submit_keys import RUNNING_S
from gated.web.app import web_routes
from gated.web.desk_flow import FLASH_S, SUBMIT_KEY_S, SubmitKeys
from tests.billing.helpers import Clock, make_billing
from tests.web.helpers import hidden

PASSWORD = "a long staff password"


@pytest.fixture
def billing(tmp_path: Path) -> tuple[Billing, Clock]:
    b, clock = make_billing(tmp_path)
    # Declined at sign-up: she owes the first month (59.38 with tax) at the desk.
    b.add_member("dan", "Dan", plan_id="monthly", payment_method="pm_sim_decline_card_declined")
    b.staff_access().add("desk", "Dana", "front_desk", ["downtown"], PASSWORD)
    return b, clock


def restarted(b: Billing) -> Billing:
    """The service as a new serve process opens it: a new engine over the same store."""
    return Billing(open_store(b.config.database_url), b.config, b.gateway, b.keys, b.clock)


def serve(b: Billing, cookie: str) -> TestClient:
    client = TestClient(create_app(b, None, web_routes(b)))
    client.cookies.set("gated-staff", cookie)
    return client


def payments(b: Billing) -> int:
    with b.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.payments)).scalar_one())


def flash(html: str) -> list[str]:
    """The messages shown once at the top of a console page."""
    import re
    from html import unescape as html_unescape

    return [html_unescape(m) for m in re.findall(r'<p class="[^"]* flash"[^>]*>([^<]*)</p>', html)]


def test_a_payment_form_sent_across_a_restart_pays_once_and_says_what_was_done(
    billing: tuple[Billing, Clock],
) -> None:
    b, _ = billing
    cookie = b.staff_access().open_session("desk", "test", "127.0.0.1")
    with serve(b, cookie) as before:
        page = before.get("/desk/members/dan")
        form = {
            "csrf": hidden(page.text, "csrf"),
            "submit_key": hidden(page.text, "submit_key"),
            "amount": "",
        }
        r = before.post("/desk/members/dan/payment", data=form)
        assert flash(r.text) == ["Payment recorded."]
        paid = payments(b)
        # A refused form's message, sent just before the restart and not shown yet.
        r = before.post(
            "/desk/members/dan/freeze",
            data={"csrf": form["csrf"], "months": "9"},
            follow_redirects=False,
        )
        assert r.status_code == 303
        browser = before.cookies.jar
    again = restarted(b)
    with serve(again, cookie) as after:
        after.cookies = browser  # the same browser's cookies
        # The message waited for the next page, across the restart; then it is gone.
        shown = flash(after.get("/desk/members/dan").text)
        assert len(shown) == 1 and shown[0].startswith("Not done:"), shown
        assert flash(after.get("/desk/members/dan").text) == []
        # The payment form sent again: sent to the first one's page, told what it did.
        r = after.post("/desk/members/dan/payment", data=form, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/desk/members/dan")
        assert flash(after.get(r.headers["location"]).text) == [
            "That form was already sent: done once, not again. Payment recorded."
        ]
    assert payments(again) == paid
    assert [e["action"] for e in again.audit_entries()].count("take_payment") == 1


def test_a_form_cut_short_is_not_acted_on_again(billing: tuple[Billing, Clock]) -> None:
    b, clock = billing
    cookie = b.staff_access().open_session("desk", "test", "127.0.0.1")
    with serve(b, cookie) as desk:
        page = desk.get("/desk/members/dan")
        form = {
            "csrf": hidden(page.text, "csrf"),
            "submit_key": hidden(page.text, "submit_key"),
            "amount": "",
        }
        # The first POST claimed the key and serve stopped before it recorded its result.
        assert b.form_keys().claim(form["submit_key"]).new
        paid = payments(b)
        r = desk.post("/desk/members/dan/payment", data=form)
        assert flash(r.text) == [
            "That form was sent twice: the first is being handled, the second did nothing."
        ]
        clock.now += RUNNING_S + 1
        r = desk.post("/desk/members/dan/payment", data=form)
        [said] = flash(r.text)
        assert "was interrupted: nothing more was done" in said
        assert payments(b) == paid
        # A key the server never made (or one whose time was changed) does nothing either.
        for key in ("made-up", f"1.{form['submit_key'].split('.', 1)[1]}"):
            r = desk.post("/desk/members/dan/payment", data={**form, "submit_key": key})
            assert flash(r.text) == [
                "That form had expired: nothing was done. Check it and send it again."
            ]
        assert payments(b) == paid


def test_two_serve_processes_share_the_forms(billing: tuple[Billing, Clock]) -> Any:
    """A form shown by one process and sent to both acts once (the store decides, not memory)."""
    b, _ = billing
    cookie = b.staff_access().open_session("desk", "test", "127.0.0.1")
    other = restarted(b)
    with serve(b, cookie) as one, serve(other, cookie) as two:
        page = one.get("/desk/members/dan")
        form = {
            "csrf": hidden(page.text, "csrf"),
            "submit_key": hidden(page.text, "submit_key"),
            "amount": "",
        }
        assert flash(two.post("/desk/members/dan/payment", data=form).text) == ["Payment recorded."]
        r = one.post("/desk/members/dan/payment", data=form)
        assert "already sent" in flash(r.text)[0]
    assert [e["action"] for e in b.audit_entries()].count("take_payment") == 1


def test_a_message_made_by_one_serve_is_shown_once_by_the_other(
    billing: tuple[Billing, Clock],
) -> None:
    """One browser behind one address whose requests two serve processes answer in turn."""
    b, clock = billing
    cookie = b.staff_access().open_session("desk", "test", "127.0.0.1")
    other = restarted(b)
    with serve(b, cookie) as one, serve(other, cookie) as two:
        two.cookies = one.cookies.jar  # one browser's cookies
        csrf = hidden(one.get("/desk/members/dan").text, "csrf")
        for months in ("9", "8"):
            r = one.post(
                "/desk/members/dan/freeze",
                data={"csrf": csrf, "months": months},
                follow_redirects=False,
            )
            assert r.status_code == 303
        # Two messages not shown yet: the other process shows both, oldest first, once.
        shown = flash(two.get("/desk/members/dan").text)
        assert len(shown) == 2 and all(s.startswith("Not done:") for s in shown), shown
        assert flash(one.get("/desk/members/dan").text) == []
        assert flash(two.get("/desk/members/dan").text) == []
        # A message is bound to its browser's staff session and lasts five minutes.
        one.post(
            "/desk/members/dan/freeze", data={"csrf": csrf, "months": "9"}, follow_redirects=False
        )
        sent = one.cookies.get("gated-flash")
        assert sent
        with serve(b, b.staff_access().open_session("desk", "t", "127.0.0.1")) as elsewhere:
            elsewhere.cookies.set("gated-flash", sent)
            assert flash(elsewhere.get("/desk/").text) == []
        clock.now += FLASH_S + 1
        assert flash(two.get("/desk/members/dan").text) == []


def test_a_submit_key_is_good_for_a_day() -> None:
    clock = Clock()
    keys = SubmitKeys(b"k" * 32, clock)
    key = keys.new()
    assert keys.valid(key) and not SubmitKeys(b"x" * 32, clock).valid(key)
    clock.now += SUBMIT_KEY_S
    assert keys.valid(key)
    clock.now += 1
    assert not keys.valid(key)


def test_the_console_sells_on_the_next_invoice_and_its_json_twin_too(
    billing: tuple[Billing, Clock],
) -> None:
    from gated.billing_sync.products import ProductSpec
    from gated.web.desk_core import Desk
    from gated.web.security import csrf_token
    from tests.web.test_desk import app_web

    b, _ = billing
    b.add_member("ann", "Ann", plan_id="monthly", payment_method="pm_sim_ok")
    b.point_of_sale().add(ProductSpec("towel", "Towel", 300, tax_rate_bp=1900, stock=5))
    cookie = b.staff_access().open_session("desk", "test", "127.0.0.1")
    with serve(b, cookie) as desk:
        page = desk.get("/desk/sell?member=ann")
        assert 'value="next_invoice"' in page.text
        form = {
            "csrf": hidden(page.text, "csrf"),
            "submit_key": hidden(page.text, "submit_key"),
            "product": "towel",
            "quantity": "2",
            "buyer": "member",
            "member": "ann",
            "method": "next_invoice",
        }
        r = desk.post("/desk/sell", data=form)
        assert r.url.path == "/desk/members/ann"
        assert flash(r.text) == [
            "Sold on the next invoice: 7.14 EUR with tax, billed with the renewal"
            " (or alone on 2027-01-05 if none has come by then)."
        ]
        assert 'id="next-invoice"' in r.text and "2 × Towel" in r.text
        # Sent again: sold once, and told so.
        r = desk.post("/desk/sell", data=form)
        assert flash(r.text)[0].startswith("That form was already sent: done once, not again.")
        # A walk-in cannot wait for a renewal.
        page = desk.get("/desk/sell")
        walk_in = {
            **form,
            "submit_key": hidden(page.text, "submit_key"),
            "buyer": "walk_in",
            "walk_in": "Gia",
        }
        r = desk.post("/desk/sell", data=walk_in)
        assert flash(r.text) == ["Not sold: a walk-in pays now: cash or the card terminal"]
        # The JSON twin: the same sale, and the member's lines waiting.
        csrf = csrf_token(Desk(app_web(desk.app)).csrf_key, cookie)
        api = {k: v for k, v in form.items() if k not in ("csrf", "submit_key")}
        r = desk.post("/api/v1/staff/sales", data=api, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        sold = r.json()
        assert (sold["next_invoice"], sold["invoice_id"], sold["total"]) == (True, None, 714)
        waiting = desk.get("/api/v1/staff/members/ann").json()["next_invoice"]
        assert [(w["description"], w["quantity"], w["total"]) for w in waiting] == [
            ("Towel", 2, 714),
            ("Towel", 2, 714),
        ]
    assert b.member("ann")["owed"] == 0
