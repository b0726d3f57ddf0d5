"""The console's point of sale, money-back actions, plan changes, erasure requests and the
plain photo form in headless Chromium against a real ``gated-billing serve``, mosquitto and
two real gates (the console's module stack): a walk-in's day pass with a loaner card typed by
the reader, let in at the gate for the day and refused after it, or without a card let in once
from the receipt (the gate's relay pulses); a reload and a double submit
selling once; an owner's refund (its credit note's PDF linked from the member's page), plan
change and erasure refusal; a photo uploaded with
JavaScript off. axe-core on each page at 1024 px and on a tablet."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from gated.billing_sync.products import ProductSpec
from gated.billing_sync.service import Billing, PlanSpec
from tests.billing.crashing import billing_for
from tests.sync.helpers import wait_until
from tests.web.test_desk_browser import PASSWORD, Desk, DeskStack, desk, desk_stack

pytestmark = pytest.mark.slow
__all__ = ["desk", "desk_stack"]  # the console's module fixtures, used here as they are there

LOANER = "04C0FFEE000001"
DAY = 86_400


@pytest.fixture(scope="module")
def catalogue(desk_stack: DeskStack) -> None:
    """A day pass and towels on sale, a plan to change to; serve reads them from the store."""
    with store(desk_stack) as b:
        pos = b.point_of_sale()
        pos.add(ProductSpec("towel", "Towel", 300, tax_rate_bp=1900, stock=5))
        pos.add(ProductSpec("day", "Day pass", 1200, kind="pass", period_days=1))
        b.add_plan(PlanSpec("premium", "Premium", 9990, "EUR", tax_rate_bp=1900))


class store:
    """The stack's billing store, opened beside the running serve (SQLite in WAL mode)."""

    def __init__(self, stack: DeskStack) -> None:
        self.b = billing_for(stack.config)

    def __enter__(self) -> Billing:
        return self.b

    def __exit__(self, *exc: object) -> None:
        self.b.engine.dispose()


def sales(stack: DeskStack) -> int:
    with store(stack) as b:
        return len(b.point_of_sale().sales())


def flash(page: Any) -> str:
    return str(page.locator("p.flash").first.inner_text())


def test_a_reload_and_a_double_submit_sell_once(
    desk: Desk, desk_stack: DeskStack, catalogue: None
) -> None:
    page = desk.page
    desk.signin("desk", PASSWORD)
    page.get_by_role("link", name="Sell", exact=True).click()
    assert page.locator("#catalogue").inner_text().count("Towel") == 1
    desk.check("sell")
    desk.check_tablet()
    before = sales(desk_stack)
    page.select_option("#product", "towel")
    page.check("input[name=buyer][value=walk_in]")
    page.fill("#walk_in", "Tom Towel")
    page.select_option("#method", "card_terminal")
    page.click("#sell-button")
    page.wait_for_url("**/desk/sales/*")
    assert flash(page) == "Sold."
    assert "on the card terminal: paid" in page.locator("#receipt-paid").inner_text()
    desk.check("receipt")
    page.reload()  # the receipt again, nothing sold again
    assert page.locator("p.flash").count() == 0
    assert sales(desk_stack) == before + 1
    # One form sent twice at once (a double click that got through): one sale.
    page.goto("/desk/sell")
    page.select_option("#product", "towel")
    page.check("input[name=buyer][value=walk_in]")
    page.fill("#walk_in", "Dee Double")
    statuses = page.evaluate(
        """async () => {
            const body = new URLSearchParams(new FormData(document.getElementById("sell-form")));
            const send = () => fetch("/desk/sell", {method: "POST", body, redirect: "manual"});
            return (await Promise.all([send(), send()])).map((r) => r.type);
        }"""
    )
    assert statuses == ["opaqueredirect", "opaqueredirect"]
    assert sales(desk_stack) == before + 2
    page.goto("/desk/sell")
    assert "(3 left)" in page.locator("#product").inner_text()


def test_an_owner_refunds_changes_a_plan_and_refuses_an_erasure(
    desk: Desk, desk_stack: DeskStack, catalogue: None
) -> None:
    with store(desk_stack) as b:
        b.member_data().request_erasure("dan", "192.0.2.7")
    page = desk.page
    desk.signin("olga", PASSWORD, desk_stack.recovery[0])
    page.goto("/desk/sell?member=ann")
    page.select_option("#product", "towel")
    page.select_option("#method", "cash")
    page.click("#sell-button")
    page.wait_for_url("**/desk/sales/*")
    page.click("#receipt-holder")
    page.wait_for_url("**/desk/members/ann")
    desk.check()
    desk.check_tablet()
    # A refund: an amount the server refuses, then a right one.
    page.fill("#refund-amount", "1,234")
    page.locator("#refund-form button").click()
    page.wait_for_selector("p.flash.error")
    assert "amount like 49.90" in flash(page)
    page.fill("#refund-amount", "1.00")
    page.locator("#refund-form button").click()
    page.wait_for_selector("p.flash.note")
    assert "1.00 EUR refunded" in flash(page)
    # The refund's credit note is on the member's page, its link the PDF.
    link = page.locator("#member-credit-notes a").first
    number = link.inner_text().removesuffix(" (PDF)")
    got = page.request.get(str(link.get_attribute("href")))  # the page's own session
    assert got.status == 200 and got.body().startswith(b"%PDF")
    assert f'filename="credit-note-{number}.pdf"' in got.headers["content-disposition"]
    assert "1.00 EUR" in page.locator("#member-credit-notes").inner_text()
    # A plan change: the quote first, then the change.
    page.select_option("#plan-choice", "premium")
    page.select_option("#plan-when", "now")
    page.get_by_role("button", name="Show what it costs").click()
    page.wait_for_selector("#plan-quote")
    desk.check("member-plan-quote")
    page.click("#plan-confirm")
    page.wait_for_selector("p.flash.note")
    assert flash(page) == "The plan is now premium."
    # Dan's request for erasure, refused with a reason.
    page.get_by_role("link", name="Erasure requests").click()
    page.wait_for_selector("#erasure-dan")
    desk.check("erasure")
    desk.check_tablet()
    page.fill("#reason-dan", "open debt")
    page.locator("#erasure-dan").get_by_role("button", name="Refuse").click()
    page.wait_for_selector("#erasure-none")
    assert "is refused" in flash(page)
    with store(desk_stack) as b:
        rows = b.audit_entries(limit=6)
    by = {(r["action"], r["member_id"]): r for r in rows}
    assert by[("refund", "ann")]["actor"] == "olga" and by[("refund", "ann")]["role"] == "owner"
    assert by[("change_plan", "ann")]["changes"]["plan"] == ["monthly", "premium"]
    assert by[("erasure_refused", "dan")]["detail"] == {"reason": "open debt"}


def test_a_photo_uploads_with_javascript_off(browser: Any, desk_stack: DeskStack) -> None:
    context = browser.new_context(
        base_url=desk_stack.url, viewport={"width": 1024, "height": 768}, java_script_enabled=False
    )
    try:
        page = context.new_page()
        page.goto("/desk/signin")
        page.fill("#staff_id", "desk")
        page.fill("#password", PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto("/desk/members/dan")
        picture = io.BytesIO()
        Image.new("RGB", (64, 48), "blue").save(picture, "JPEG")
        page.set_input_files(
            "#photo-file",
            {"name": "dan.jpg", "mimeType": "image/jpeg", "buffer": picture.getvalue()},
        )
        page.click("#photo-upload")
        page.wait_for_selector("p.flash")
        assert flash(page) == "Photo saved."
        assert page.locator("#member-photo").count() == 1
    finally:
        context.close()


def test_a_walk_in_without_a_card_is_let_in_once_from_the_receipt(
    desk: Desk, desk_stack: DeskStack, catalogue: None
) -> None:
    page = desk.page
    desk.signin("desk", PASSWORD)
    page.goto("/desk/sell")
    page.select_option("#product", "day")
    page.check("input[name=buyer][value=walk_in]")
    page.fill("#walk_in", "Ivo Once")
    page.click("#sell-button")
    page.wait_for_url("**/desk/sales/*")
    assert page.locator("#receipt-card").inner_text() == "none"
    desk.check()
    gate = desk_stack.gate
    wait_until(lambda: not gate.request("status")["door"]["relay_energized"], what="door shut")
    page.select_option("#letin-gate", "downtown/t1")
    page.get_by_role("button", name="Open the gate once").click()
    page.wait_for_selector("p.flash:text-is('Gate opened.')")
    assert page.locator("#member-name").inner_text() == "Ivo Once"
    wait_until(lambda: gate.request("status")["door"]["relay_energized"], what="relay pulsed")
    with store(desk_stack) as b:
        [audited] = b.audit_entries(limit=1)
    assert (audited["action"], audited["actor"]) == ("let_in_once", "desk")
    assert audited["member_id"].startswith("walkin-")


def test_a_walk_ins_loaner_card_opens_the_gate_for_the_day_only(
    desk: Desk, desk_stack: DeskStack, catalogue: None
) -> None:
    page = desk.page
    desk.signin("desk", PASSWORD)
    page.goto("/desk/sell")
    page.select_option("#product", "day")
    page.check("input[name=buyer][value=walk_in]")
    page.fill("#walk_in", "Gia Guest")
    page.select_option("#method", "cash")
    # The keyboard-wedge reader types the UID and presses Enter: that sends the form.
    page.fill("#loaner_uid", "04:c0:ff:ee:00:00:01")
    page.press("#loaner_uid", "Enter")
    page.wait_for_url("**/desk/sales/*")
    assert flash(page) == "Sold."
    assert "lent" in page.locator("#receipt-card").inner_text()
    gate = desk_stack.gate

    def badge() -> dict[str, Any]:
        return dict(gate.request("badge", {"card": LOANER}))

    wait_until(lambda: badge()["allow"], what="the loaner card let in")
    with store(desk_stack) as b:
        b.advance_clock(DAY + 60)  # the day is over
        b.run_cycle()  # (serve's own cycle runs every minute; the publisher sends the change)
    wait_until(lambda: not badge()["allow"], what="the loaner card refused after the day")
    assert badge()["reason"] == "expired"
