"""Online sign-up and self-service in headless Chromium against a real ``gated-billing serve``
with the simulated gateway: join and pay with a test method (the member active and published),
a double-clicked pay button charging once, bad input answered clearly, freeze and cancel shown
with their fee and end date before they are confirmed, contact details and an e-mail change by
link. Every new page passes axe-core and fits a 375 px screen. The Stripe.js flows (a card, a
3-D Secure card, a suspended member's new card) run against localstripe in
test_browser_stripe.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from gated.billing_sync import schema
from gated.billing_sync.service import Billing, PlanSpec
from tests.billing.crashing import billing_for
from tests.billing.helpers import published
from tests.sync.helpers import wait_until
from tests.web.conftest import Stack
from tests.web.test_browser import Tab, tab_opener
from tests.web.test_pass import CODE, gatectl_badge, shown_and_decoded

pytestmark = pytest.mark.slow

PERSON = {
    "#name": "Zoë Ærø-Łukasz 李小龍",
    "#phone": "+49 30 1234567",
    "#emergency_contact": "Max Mustermann, +49 30 7654321",
}


@pytest.fixture(scope="module")
def billing(stack: Stack) -> Iterator[Billing]:
    """The service over the stack's store (read what the serve did, add a plan)."""
    b = billing_for(stack.config)
    b.add_plan(
        PlanSpec(
            "flex12", "Flex 12", 3990, "EUR", tax_rate_bp=1900, freeze_fee=500, min_term_months=12
        )
    )
    b.add_plan(PlanSpec("sepa", "Direct debit", 2990, "EUR", tax_rate_bp=1900, sepa=True))
    yield b
    b.engine.dispose()


@pytest.fixture
def tabs(browser: Any, stack: Stack, axe_source: str) -> Iterator[Any]:
    yield from tab_opener(browser, stack, axe_source)


def fill_join(tab: Tab, email: str, plan: str = "flex12") -> None:
    page = tab.page
    page.goto("/app/join")
    page.check(f"input[name=plan][value={plan}]")
    for selector, value in PERSON.items():
        page.fill(selector, value)
    page.fill("#email", email)
    page.check("input[name=accept]")


def join(tab: Tab, email: str, plan: str = "flex12") -> None:
    fill_join(tab, email, plan)
    tab.page.get_by_role("button", name="Continue to payment").click()
    tab.page.wait_for_url("**/app/join/pay")


def member_of(b: Billing, email: str) -> str:
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.members.c.id).where(schema.members.c.email == email)
            ).scalar_one()
        )


def attempts(b: Billing, member_id: str) -> int:
    a = schema.payment_attempts
    with b.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).where(a.c.member_id == member_id)).scalar_one()
        )


def test_join_pay_with_the_simulator_and_walk_in(tabs: Any, billing: Billing) -> None:
    tab = tabs()
    page = tab.page
    page.goto("/app/join")
    assert "Minimum term 12 months" in page.inner_text("main")
    assert "5.95 EUR a month" in page.inner_text("main")  # the freeze fee, tax included
    tab.check("join")
    join(tab, "zoe@example.com")
    member_id = member_of(billing, "zoe@example.com")
    # Unpaid: the gates have heard nothing of this member.
    with billing.engine.connect() as conn:
        states = select(func.count()).where(schema.member_states.c.member_id == member_id)
        assert conn.execute(states).scalar_one() == 0
    assert "47.48 EUR" in page.inner_text("main")
    tab.check("join-pay")
    page.check("input[value=pm_sim_ok]")
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    page.wait_for_url("**/app/join/welcome")
    tab.check("join-welcome")
    assert published(billing, member_id)["status"] == "active"
    page.goto("/app/")  # signed in as the new member
    assert page.inner_text("#status-h") == "Your membership is active."
    assert page.inner_text("#member-name") == PERSON["#name"]
    with page.expect_download() as download:
        page.get_by_role("link", name="Signed contract").click()
    assert "Terms version" in download.value.path().read_text()


def test_join_pay_and_the_new_pass_is_let_in_at_the_gate(
    tabs: Any, billing: Billing, stack: Stack
) -> None:
    """The whole way of a new member, in one sequence: join, pay with the simulator's test
    card, make this browser the pass, and the QR a scanner reads off the screen is let in by
    the real gate (``gatectl badge --qr``), once; the welcome mail links to the pass."""
    tab = tabs()
    page = tab.page
    join(tab, "walk@example.com", plan="monthly")
    member_id = member_of(billing, "walk@example.com")
    page.check("input[value=pm_sim_ok]")
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    page.wait_for_url("**/app/join/welcome")
    # Joining signed the browser in just now: recent enough to register a pass key.
    page.goto("/app/pass")
    page.get_by_role("button", name="Use this device as my pass").click()
    page.wait_for_selector(CODE, timeout=15_000)
    code, decoded = shown_and_decoded(page)
    assert decoded == code and code.startswith(f"GQ1.{member_id}.")
    qr_key = published(billing, member_id)["qr_key"]
    assert gate_has(stack, member_id, "qr_key", qr_key)
    assert gatectl_badge(stack, decoded) | {"latency_us": 0} == {
        "allow": True,
        "reason": "ok",
        "member_id": member_id,
        "latency_us": 0,
    }
    assert gatectl_badge(stack, decoded)["reason"] == "qr_replayed"
    tab.check()
    # The first payment also mailed a welcome with the pass's address.
    inbox = stack.inbox
    with inbox.arrived:
        assert inbox.arrived.wait_for(lambda: welcome(inbox, "walk@example.com"), 15)
    assert f"{stack.url}/app/pass" in welcome(inbox, "walk@example.com")


def welcome(inbox: Any, to: str) -> str:
    """The body of the welcome mail to ``to``, or "" while there is none."""
    for m in inbox.messages:
        if m["To"] == to and m["Subject"].startswith("Welcome"):
            return str(m.get_content())
    return ""


def gate_has(stack: Stack, member_id: str, field: str, value: Any) -> bool:
    """Wait until the stack's gate holds ``field == value`` in the member's cached state."""
    gate = stack.gate
    assert gate is not None and value is not None

    def arrived() -> bool:
        found = gate.request("cache_lookup", {"member": member_id})
        return bool(found.get("found")) and found["member"].get(field) == value

    wait_until(arrived, timeout=10, what=f"the gate has {member_id}'s {field}")
    return True


def test_a_declined_test_card_then_a_double_clicked_pay_button(tabs: Any, billing: Billing) -> None:
    tab = tabs()
    page = tab.page
    join(tab, "dbl@example.com", plan="monthly")
    member_id = member_of(billing, "dbl@example.com")
    page.check("input[value=pm_sim_decline_insufficient_funds]")
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    page.wait_for_selector("#pay-error")
    assert "insufficient funds" in page.inner_text("#pay-error")
    tab.errors.clear()  # the 402 page itself
    tab.check()
    page.check("input[value=pm_sim_ok]")
    page.dblclick("#pay-button")
    page.wait_for_url("**/app/join/welcome")
    assert attempts(billing, member_id) == 2  # the declined one and one charge
    a = schema.payment_attempts

    def succeeded() -> int:
        with billing.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(a.c.member_id == member_id, a.c.state == "succeeded")
                ).scalar_one()
            )

    # The welcome page is shown once the charge is booked, and its attempt is recorded as
    # succeeded in the same transaction, whichever submit charged it (the second one's card save
    # may finish the first one's attempt: test_signup.py runs that order on purpose).
    assert succeeded() == 1
    assert attempts(billing, member_id) == 2
    assert published(billing, member_id)["status"] == "active"


def test_bad_input_is_answered_clearly(tabs: Any, billing: Billing) -> None:
    tab = tabs()
    page = tab.page
    fill_join(tab, "bad@example.com")
    page.evaluate("document.getElementById('name').removeAttribute('maxlength')")
    page.fill("#name", "x" * 101)
    page.get_by_role("button", name="Continue to payment").click()
    page.wait_for_selector("#join-error")
    assert "too long" in page.inner_text("#join-error")
    assert page.input_value("#email") == "bad@example.com"  # what was typed is kept
    tab.errors.clear()
    tab.check("join-error")
    # The plan was withdrawn while the page was open.
    fill_join(tab, "bad@example.com")
    page.evaluate("document.querySelector('input[name=plan]:checked').value = 'gone'")
    page.get_by_role("button", name="Continue to payment").click()
    page.wait_for_selector("#join-error")
    assert "no longer offered" in page.inner_text("#join-error")
    assert "Traceback" not in page.content()


def test_freeze_and_cancel_show_fee_and_end_before_confirming(tabs: Any, billing: Billing) -> None:
    tab = tabs()
    page = tab.page
    join(tab, "ice@example.com")
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    page.wait_for_url("**/app/join/welcome")
    member_id = member_of(billing, "ice@example.com")
    page.goto("/app/cancel")
    page.wait_for_selector("#cancel-end")
    assert billing.member(member_id)["cancel_at"] is None  # shown, not done
    tab.check("cancel")
    page.goto("/app/freeze")
    page.select_option("#months", "2")
    page.get_by_role("button", name="Show the fee and dates").click()
    page.wait_for_selector("#freeze-fee")
    assert page.inner_text("#freeze-fee") == "11.90 EUR"
    assert billing.member(member_id)["freeze"] is None
    tab.check("freeze")
    page.get_by_role("button", name=re.compile("^Confirm the freeze")).click()
    page.wait_for_selector("text=Your membership is frozen from")
    assert published(billing, member_id)["status"] == "frozen"
    page.goto("/app/cancel")
    later = page.inner_text("#cancel-end")
    page.get_by_role("button", name=re.compile("^Cancel my membership")).click()
    page.wait_for_selector(f"text=ends on {later}")
    assert billing.member(member_id)["cancel_at"].startswith(later)
    tab.check()


def test_contact_details_card_and_an_email_change(
    tabs: Any, billing: Billing, stack: Stack
) -> None:
    tab = tabs()
    page = tab.page
    join(tab, "old@example.com", plan="monthly")
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    page.wait_for_url("**/app/join/welcome")
    member_id = member_of(billing, "old@example.com")
    page.goto("/app/card")
    tab.check("card")
    page.goto("/app/contact")
    tab.check("contact")
    page.fill("#phone", "+44 20 7946 0000")
    page.fill("#email", "new@example.com")
    page.get_by_role("button", name="Save").click()
    page.wait_for_selector("text=We sent a link to the new e-mail address")
    assert billing.contact(member_id)["phone"] == "+44 20 7946 0000"
    with stack.inbox.arrived:
        assert stack.inbox.arrived.wait_for(lambda: stack.inbox.count("new@example.com"), 10)
    body = next(m for m in stack.inbox.messages if m["To"] == "new@example.com").get_content()
    link = re.search(r"https?://\S+/app/email/[A-Za-z0-9_-]+", body)
    assert link and billing.contact(member_id)["email"] == "old@example.com"
    page.goto(link[0])
    tab.check("email-confirm")
    page.get_by_role("button", name="Use this address").click()
    page.wait_for_selector("text=Your new e-mail address is saved.")
    assert billing.contact(member_id)["email"] == "new@example.com"


def test_a_plan_change_shows_its_cost_before_it_is_made(tabs: Any, billing: Billing) -> None:
    billing.add_plan(PlanSpec("flex24", "Flex 24", 5990, "EUR", tax_rate_bp=1900))
    billing.add_plan(PlanSpec("lite", "Lite", 1990, "EUR", tax_rate_bp=1900))
    tab = tabs()
    page = tab.page
    join(tab, "plan@example.com")
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    page.wait_for_url("**/app/join/welcome")
    member_id = member_of(billing, "plan@example.com")
    page.goto("/app/")
    page.get_by_role("link", name="Change plan").click()
    page.check("input[name=plan][value=flex24]")
    page.get_by_role("button", name="Show what it costs").click()
    page.wait_for_selector("#plan-total")
    quote = billing.plan_change_quote(member_id, "flex24")
    assert page.inner_text("#plan-total") == f"{quote.total / 100:.2f} EUR"
    assert quote.total > 0 and billing.member(member_id)["plan"] == "flex12"  # shown, not done
    tab.check("plan")
    # A cheaper plan now is refused in words, with what to do instead.
    page.goto("/app/plan?plan=lite&when=now")
    assert "from my renewal" in page.inner_text("#plan-refused")
    tab.errors.clear()  # the 409 of that page
    page.goto("/app/plan?plan=flex24&when=now")
    page.get_by_role("button", name=re.compile("^Change to flex24 and pay ")).click()
    page.wait_for_selector("text=Your plan is now flex24.")
    assert billing.member(member_id)["plan"] == "flex24"
    assert published(billing, member_id)["plan"] == "flex24"
    with billing.engine.connect() as conn:
        paid = conn.execute(
            select(schema.invoices.c.total).where(
                schema.invoices.c.member_id == member_id,
                schema.invoices.c.kind == "plan_change",
                schema.invoices.c.status == "paid",
            )
        ).scalar_one()
    assert paid == quote.total


JSON_JOIN = """async (email) => {
  const json = (csrf, body) => ({method: "POST", body: JSON.stringify(body),
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}});
  const offer = await (await fetch("/api/v1/join")).json();
  const person = {site: "downtown", plan: "monthly", name: "Jay Son", email,
    phone: "+49 30 1234567", emergency_contact: "Max, +49 30 7654321",
    terms_sha256: offer.terms.sha256, accept: true};
  const forged = await fetch("/api/v1/join", json("forged", person));
  const joined = await fetch("/api/v1/join", json(offer.csrf_token, person));
  const {csrf_token} = await joined.clone().json();
  const paid = await fetch("/api/v1/join/pay",
    json(csrf_token, {key: "browser-key-0123456789", method: "pm_sim_ok"}));
  return [forged.status, joined.status, paid.status, await paid.json()];
}"""


def test_join_and_pay_through_the_json_api_in_the_browser(tabs: Any, billing: Billing) -> None:
    tab = tabs()
    page = tab.page
    page.goto("/app/join")
    forged, joined, paid, body = page.evaluate(JSON_JOIN, "jay@example.com")
    assert (forged, joined, paid, body) == (403, 201, 200, {"state": "succeeded"})
    tab.errors.clear()  # the forged call's 403, on purpose
    member_id = member_of(billing, "jay@example.com")
    assert published(billing, member_id)["status"] == "active"
    page.goto("/app/")  # the API's sign-up signed this browser in
    assert page.inner_text("#member-name") == "Jay Son"
    tab.check()


def test_join_and_pay_by_sepa_direct_debit(tabs: Any, billing: Billing) -> None:
    tab = tabs()
    page = tab.page
    join(tab, "iban@example.com", plan="sepa")
    member_id = member_of(billing, "iban@example.com")
    assert "8 weeks" in page.inner_text("#mandate-text")
    tab.check("join-pay-sepa")
    page.fill("#iban", "DE89 3704 0044 0532 0130 00")
    page.get_by_label("I accept this direct debit mandate").check()
    page.get_by_role("button", name=re.compile("^Accept the mandate and pay")).click()
    page.wait_for_url("**/app/join/welcome")
    # Active at the gates while the bank has the debit; the invoice stays open until it settles.
    assert published(billing, member_id)["status"] == "active"
    assert billing.member(member_id)["owed"] == 3558
    tab.check()
