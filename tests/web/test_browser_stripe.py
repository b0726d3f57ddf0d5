"""Paying with Stripe.js in headless Chromium: ``gated-billing serve`` with ``gateway = "stripe"``
against localstripe, whose fake Stripe.js (served at ``/js.stripe.com/v3/`` on its port) puts
its card inputs in the page and plays 3-D Secure as a dialog in it. A card joins; a card that
always wants 3-D Secure joins after the member confirms twice (saving the card, then the
payment); a suspended member saves a new card and is let in again at once. The pages' CSP
allows the fake's origin and nothing else, and nothing breaks it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from gated.billing_sync import schema
from gated.billing_sync.service import Billing, PlanSpec
from tests.billing.crashing import billing_for
from tests.billing.helpers import published
from tests.services import ensure_localstripe, free_port, run_localstripe
from tests.sync.helpers import wait_until
from tests.web.conftest import Inbox, Stack, running_serve
from tests.web.test_browser import Tab, tab_opener

pytestmark = pytest.mark.slow

CARD_OK = "4242424242424242"
CARD_3DS = "4000002760003184"  # authentication required on every use
CARD_CONTAINER = "#card-element"  # localstripe's inputs, in the page: not ours to check
SEPA_FAILS = "DE62370400440532013001"  # localstripe: the debit fails after it was submitted


@pytest.fixture(scope="module")
def stripe_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Billing]]:
    python = ensure_localstripe()
    if python is None:
        pytest.skip("localstripe could not be installed into .venv-localstripe (no registry?)")
    root = tmp_path_factory.mktemp("web-stripe")
    inbox = Inbox()
    smtp_port, http_port = free_port(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    url = f"http://127.0.0.1:{http_port}"
    (root / "stripe.key").write_text("sk_test_local\n")
    (root / "webhook.secret").write_text("whsec_local\n")
    with run_localstripe(python) as ls:
        config = root / "billing.toml"
        config.write_text(
            'database_url = "sqlite:///billing.db"\nstate_dir = "state"\nsites = ["downtown"]\n'
            'gateway = "stripe"\ncycle_interval_s = 3600\n'
            '[keys]\nhead_office_private_key_file = "keys/head-office.key"\n'
            'credential_key_file = "keys/credential.key"\n'
            'card_encryption_key_file = "keys/cards.key"\n'
            '[stripe]\napi_key_file = "stripe.key"\nwebhook_secret_file = "webhook.secret"\n'
            f'api_base = "{ls.url}"\noff_session = false\nmax_requests_per_s = 100\n'
            f'publishable_key = "pk_test_local"\njs_url = "{ls.url}/js.stripe.com/v3/"\n'
            f'[http]\nhost = "127.0.0.1"\nport = {http_port}\npublic_url = "{url}"\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        )
        b = billing_for(config)
        b.add_plan(PlanSpec("monthly", "Monthly", 4990, "EUR", tax_rate_bp=1900))
        httpx.post(
            f"{ls.url}/_config/webhooks/gated",
            data={"url": f"{url}/v1/stripe/webhook", "secret": "whsec_local"},
        ).raise_for_status()
        try:
            with running_serve(config) as log:
                yield Stack(url, inbox, {}, log, config), b
        finally:
            b.engine.dispose()
            controller.stop()


@pytest.fixture
def tabs(browser: Any, stripe_stack: tuple[Stack, Billing], axe_source: str) -> Iterator[Any]:
    yield from tab_opener(browser, stripe_stack[0], axe_source)


def enter_card(page: Any, number: str) -> None:
    """Type a card into localstripe's fake Elements."""
    box = page.locator(CARD_CONTAINER)
    box.locator("input[placeholder=number]").fill(number)
    box.locator("input[placeholder=exp_month]").fill("12")
    box.locator("input[placeholder=exp_year]").fill("34")
    box.locator("input[placeholder=cvc]").fill("123")
    box.locator("input[placeholder=postal_code]").fill("10115")


def join(tab: Tab, email: str, plan: str = "monthly") -> None:
    page = tab.page
    page.goto("/app/join")
    page.fill("#name", "Ada Lovelace")
    page.fill("#email", email)
    page.fill("#phone", "+44 20 7946 0000")
    page.fill("#emergency_contact", "Charles, +44 20 7946 0001")
    page.check(f"input[name=plan][value={plan}]")
    page.check("input[name=accept]")
    page.get_by_role("button", name="Continue to payment").click()
    page.wait_for_url("**/app/join/pay")
    page.wait_for_selector(f"{CARD_CONTAINER} input")


def member_of(b: Billing, email: str) -> str:
    with b.engine.connect() as conn:
        return str(
            conn.execute(
                select(schema.members.c.id).where(schema.members.c.email == email)
            ).scalar_one()
        )


def test_join_with_a_card_through_stripe_js(tabs: Any, stripe_stack: tuple[Stack, Billing]) -> None:
    _, b = stripe_stack
    tab = tabs()
    page = tab.page
    with page.expect_response("**/app/join/pay") as answer:
        join(tab, "card@example.com")
    csp = answer.value.headers["content-security-policy"]
    origin = re.match(r"https?://[^/]+", b.config.stripe.js_url if b.config.stripe else "")
    assert origin and f"script-src 'self' {origin[0]};" in csp
    tab.check("join-pay-stripe", exclude=[CARD_CONTAINER])
    enter_card(page, CARD_OK)
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    page.wait_for_url("**/app/join/welcome")
    member_id = member_of(b, "card@example.com")
    assert published(b, member_id)["status"] == "active"
    assert tab.errors == []  # no CSP violation, no failed request


def test_join_with_a_3ds_card(tabs: Any, stripe_stack: tuple[Stack, Billing]) -> None:
    _, b = stripe_stack
    tab = tabs()
    page = tab.page
    join(tab, "secure@example.com")
    enter_card(page, CARD_3DS)
    page.get_by_role("button", name=re.compile("^Pay ")).click()
    # Saving the card: the bank's challenge, in the page.
    page.get_by_role("button", name="Complete authentication").click()
    # Paying with it: the bank asks again, and Stripe.js on the next page shows it.
    page.wait_for_url("**/app/join/pay")
    page.get_by_role("button", name="Complete authentication").click()
    page.wait_for_url("**/app/join/welcome")
    member_id = member_of(b, "secure@example.com")
    assert published(b, member_id)["status"] == "active"
    assert tab.errors == []


def test_join_by_sepa_direct_debit_through_stripe_js(
    tabs: Any, stripe_stack: tuple[Stack, Billing]
) -> None:
    """localstripe's fake Stripe.js confirms a SetupIntent of type sepa_debit with the IBAN
    (``confirmSepaDebitSetup``); the debit is ``processing`` when the member leaves the page,
    settles half a second later, and its webhook books it. Its failing test IBAN fails the same
    way, and the member is dunned."""
    _, b = stripe_stack
    b.add_plan(PlanSpec("sepa", "Direct debit", 2990, "EUR", tax_rate_bp=1900, sepa=True))
    outcomes = {}
    for iban, email in (
        ("DE89370400440532013000", "iban@example.com"),
        (SEPA_FAILS, "nsf@example.com"),
    ):
        tab = tabs()
        page = tab.page
        join(tab, email, plan="sepa")
        if email.startswith("iban"):
            tab.check("join-pay-stripe-sepa", exclude=[CARD_CONTAINER])
        requests: list[str] = []
        page.on("request", lambda r, seen=requests: seen.append(r.post_data or ""))
        page.fill("#iban", iban)
        page.get_by_label("I accept this direct debit mandate").check()
        page.get_by_role("button", name=re.compile("^Accept the mandate and pay")).click()
        page.wait_for_url("**/app/join/welcome")
        # The IBAN went to Stripe, never to us.
        ours = [r for r in requests if "setup_id=seti_" in r]
        assert ours and all(iban not in r for r in ours)
        member_id = member_of(b, email)
        assert published(b, member_id)["status"] == "active"
        outcomes[email] = member_id
        assert tab.errors == []
    paid, failed = outcomes["iban@example.com"], outcomes["nsf@example.com"]
    wait_until(lambda: b.member(paid)["owed"] == 0, timeout=10, what="the debit booked")
    wait_until(
        lambda: b.member(failed)["status"] == "grace", timeout=10, what="the failed debit dunned"
    )
    assert published(b, paid)["status"] == "active" and b.member(failed)["owed"] == 3558


def test_a_suspended_member_saves_a_new_card_and_is_let_in(
    tabs: Any, stripe_stack: tuple[Stack, Billing]
) -> None:
    stack, b = stripe_stack
    b.add_member(
        "sus", "Sue", plan_id="monthly", email="sue@example.com", payment_method="pm_card_visa"
    )
    b.set_payment_method("sus", "pm_card_chargeCustomerFail")
    # The renewal fails, and so does the retry past grace (the serve's clock moves too; this
    # test runs last in the module).
    b.advance_clock(31 * 86_400)
    b.run_cycle()
    b.advance_clock(4 * 86_400)
    b.run_cycle()
    assert published(b, "sus")["status"] == "suspended"
    token = b.member_access().open_session("sus", "test")
    tab = tabs()
    tab.context.add_cookies([{"name": "gated-member", "value": token, "url": stack.url}])
    page = tab.page
    page.goto("/app/card")
    page.wait_for_selector(f"{CARD_CONTAINER} input")
    assert "suspended" in page.inner_text("#status-h")
    tab.check("card-stripe", exclude=[CARD_CONTAINER])
    enter_card(page, CARD_OK)
    page.get_by_role("button", name="Save the card").click()
    started = time.monotonic()
    wait_until(
        lambda: published(b, "sus")["status"] == "active", timeout=2, what="sue active again"
    )
    assert time.monotonic() - started < 2
    page.wait_for_selector("text=Your new card is saved.")
    assert page.inner_text("#status-h") == "Your membership is active."
    tab.check()
