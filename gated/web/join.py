"""Online sign-up under ``/app/join``: choose a site and a plan (every number shown before
signing), give name and contact details, read and accept the membership terms, then pay the
first invoice: with Stripe.js (a card saved by a SetupIntent, 3-D Secure in the page) or, with
the simulated gateway, one of its test payment methods. The new member is signed in at once;
``/app/contract`` gives back the signed terms. Each step is one call of the billing service."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import ChargeResult, GatewayError
from gated.billing_sync.service import Applicant
from gated.web.foundation import Visitor, Web
from gated.web.member import posted_form, signed_in_page
from gated.web.security import STRIPE_PAGE
from gated.web.terms import load_terms

log = logging.getLogger("gated.web.join")

SUBMIT_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")
SETUP_ID = re.compile(r"seti_[A-Za-z0-9_]{1,200}")
# The simulator's payment methods a demo visitor can pick (see SimulatedGateway).
TEST_METHODS = [
    ("pm_sim_ok", "Test card that pays"),
    ("pm_sim_decline_insufficient_funds", "Test card declined: insufficient funds"),
    ("pm_sim_decline_lost_card", "Test card declined: reported lost"),
    ("pm_sim_decline_authentication_required", "Test card that asks for 3-D Secure"),
]
FIELDS = ("site", "plan", "name", "email", "phone", "emergency_contact")
# Stripe's test IBANs, which the simulator takes for its SEPA debits (settled three clock days
# after submission): the first pays, the second fails with insufficient funds.
TEST_IBANS = {
    "DE89370400440532013000": "pm_sim_sepa",
    "DE62370400440532013001": "pm_sim_sepa_fail",
}
IBAN = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")


def iban_valid(raw: str) -> str | None:
    """An IBAN without spaces, upper case, when its form and ISO 7064 check digits hold."""
    iban = re.sub(r"\s", "", raw).upper()
    if not IBAN.fullmatch(iban):
        return None
    digits = "".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])
    return iban if int(digits) % 97 == 1 else None


def test_method(value: str) -> str | None:
    """One of the simulator's offered test methods, or None."""
    return value if value in dict(TEST_METHODS) else None


def stripe_page(response: Response) -> Response:
    """Mark a page that loads Stripe.js: it gets the CSP that allows Stripe (security.py)."""
    response.headers[STRIPE_PAGE] = "1"
    return response


def decline_text(result: ChargeResult) -> str:
    """A declined payment in words, for the page the member is on."""
    reason = (result.decline_code or "declined").replace("_", " ")
    return f"Your bank declined the payment ({reason}). Nothing was charged. Try another card."


class NoMethod(Exception):
    """A pay form or JSON call that named no usable payment method (the message says what)."""


async def chosen_method(
    web: Web, member_id: str, values: Mapping[str, object], *, sepa: bool = False
) -> str:
    """The payment method a pay form or its JSON twin names: with Stripe, the card (or, where
    ``sepa`` allows it, the bank account) the member's browser saved through a SetupIntent
    (``setup_id``); with the simulator, one of its offered test methods (``method``) or, where
    ``sepa`` allows it, a test IBAN (``iban``). A direct debit needs its mandate accepted
    (``mandate``). NoMethod when there is none; GatewayError, BillingError as
    ``card_from_setup`` raises them."""
    billing = web.billing
    debit = bool(values.get("iban") or values.get("sepa"))
    if debit and not sepa:
        raise NoMethod("This plan is paid by card.")
    if debit and values.get("mandate") not in ("yes", True):
        raise NoMethod("Accept the direct debit mandate to pay by direct debit.")
    if billing.config.gateway != "stripe" and values.get("iban"):
        iban = values["iban"]
        valid = iban_valid(iban) if isinstance(iban, str) else None
        if valid is None:
            raise NoMethod("That IBAN is not valid: check it.")
        if valid not in TEST_IBANS:
            raise NoMethod(
                "The demo's simulated gateway takes its test IBANs only: DE89 3704 0044 0532 "
                "0130 00 (pays) or DE62 3704 0044 0532 0130 01 (fails after three days)."
            )
        return TEST_IBANS[valid]
    if billing.config.gateway == "stripe":
        setup_id = values.get("setup_id")
        if not isinstance(setup_id, str) or not SETUP_ID.fullmatch(setup_id):
            raise NoMethod("Enter your card details.")
        return await asyncio.to_thread(billing.card_from_setup, member_id, setup_id)
    method = values.get("method")
    chosen = test_method(method) if isinstance(method, str) else None
    if chosen is None:
        raise NoMethod("Choose a payment method.")
    return chosen


async def pay_signup(
    web: Web, member_id: str, found: Mapping[str, Any], values: Mapping[str, object], key: str
) -> ChargeResult:
    """Pay the sign-up ``found`` with the method ``values`` name (``chosen_method``; a plan
    with ``sepa`` takes a direct debit too) under the submit ``key``: the page and its JSON
    twin alike. NoMethod, NotFound, GatewayError, BillingError as they come."""
    sepa = bool(found["plan"] and found["plan"]["sepa"])
    method = await chosen_method(web, member_id, values, sepa=sepa)
    return await asyncio.to_thread(
        web.billing.pay_signup, member_id, method, key, f"{web.public_url}/app/join/pay"
    )


async def signup_returned(web: Web, member_id: str) -> dict[str, Any] | None:
    """After 3-D Secure in Stripe.js: ask the provider what became of the sign-up's payment
    (a provider that cannot be reached leaves it to the webhook) and give the sign-up as it
    stands now, or None when there is none."""
    found = await asyncio.to_thread(web.billing.signup_status, member_id)
    if found is None:
        return None
    try:
        await asyncio.to_thread(web.billing.pay_returned, found["invoice_id"])
    except GatewayError as exc:
        log.warning("event=signup_return_failed member=%s error=%s", member_id, exc)
    return await asyncio.to_thread(web.billing.signup_status, member_id)


def routes(web: Web) -> list[BaseRoute]:
    """The sign-up's routes (mounted at ``/app``)."""
    billing = web.billing
    stripe = billing.config.gateway == "stripe"
    per_client = web.signups_per_client

    def stripe_key() -> str | None:
        return billing.config.stripe.publishable_key if billing.config.stripe else None

    async def join_form(request: Request) -> Response:
        visitor = await web.visitor(request)
        return await _form(visitor, {}, None, 200)

    async def _form(
        visitor: Visitor, values: dict[str, str], error: str | None, code: int
    ) -> Response:
        offer = await asyncio.to_thread(billing.signup_offer)
        terms = load_terms(billing.config.app.terms_file)
        return web.page(
            visitor,
            "join.html",
            code,
            title="Join the club",
            offer=offer,
            terms=terms,
            v=values,
            error=error,
        )

    async def join(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        values = {k: form.get(k, "")[:300] for k in FIELDS}
        terms = load_terms(billing.config.app.terms_file)
        if form.get("accept") != "yes":
            return await _form(visitor, values, "Read the membership terms and accept them.", 400)
        if form.get("terms_sha256") != terms.sha256:
            return await _form(
                visitor, values, "The terms changed while you were reading: read them again.", 409
            )
        if not per_client.allow(web.client(request)):
            return await _form(visitor, values, "Too many sign-ups from here: try later.", 429)
        applicant = Applicant(
            values["site"],
            values["plan"],
            form.get("name", ""),
            form.get("email", ""),
            form.get("phone", ""),
            form.get("emergency_contact", ""),
        )
        try:
            member_id = await asyncio.to_thread(
                billing.start_signup,
                applicant,
                terms,
                web.client(request),
                request.headers.get("user-agent", ""),
            )
        except BillingError as exc:
            return await _form(visitor, values, str(exc), 400)
        # Signed in at once: the payment page and the membership are the new member's own.
        token = await asyncio.to_thread(
            web.access.open_session, member_id, request.headers.get("user-agent", "")
        )
        response = RedirectResponse("/app/join/pay", status_code=303)
        web.set_cookie(response, token)
        return response

    async def pay_page(
        visitor: Visitor, found: dict[str, Any], error: str | None = None, code: int = 200
    ) -> Response:
        assert visitor.session is not None
        context: dict[str, Any] = {
            "s": found,
            "error": error,
            "key": secrets.token_urlsafe(16),
            "stripe": stripe,
        }
        if not stripe:
            return web.page(
                visitor,
                "join_pay.html",
                code,
                title="Pay and start",
                methods=TEST_METHODS,
                **context,
            )
        if stripe_key() is None:
            return web.page(
                visitor,
                "message.html",
                503,
                title="Online payment is not set up",
                text="Pay at the front desk to start your membership.",
            )
        member_id = visitor.session.member_id
        try:
            setup = await asyncio.to_thread(billing.card_setup, member_id)
            if found["plan"] and found["plan"]["sepa"]:
                # A second SetupIntent, for a bank account: Stripe.js confirms it with the IBAN
                # the member types, which never reaches us.
                context["sepa_setup"] = await asyncio.to_thread(
                    billing.card_setup, member_id, "sepa_debit"
                )
                context["holder"] = await asyncio.to_thread(web.access.membership, member_id)
        except GatewayError as exc:
            log.warning("event=card_setup_failed error=%s", exc)
            return _unavailable(visitor)
        return stripe_page(
            web.page(
                visitor,
                "join_pay.html",
                code,
                title="Pay and start",
                setup=setup,
                stripe_key=stripe_key(),
                stripe_js=billing.config.stripe.js_url if billing.config.stripe else "",
                **context,
            )
        )

    def _unavailable(visitor: Visitor) -> Response:
        return web.page(
            visitor,
            "message.html",
            503,
            title="Try again",
            text="The payment could not be made just now. Nothing was charged. Try again shortly.",
        )

    async def pay_form(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        found = await asyncio.to_thread(billing.signup_status, visitor.session.member_id)
        if found is None:
            return RedirectResponse("/app/", status_code=303)
        if found["paid"]:
            return RedirectResponse("/app/join/welcome", status_code=303)
        return await pay_page(visitor, found)

    async def pay(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        member_id = visitor.session.member_id
        found = await asyncio.to_thread(billing.signup_status, member_id)
        if found is None:
            return RedirectResponse("/app/", status_code=303)
        key = form.get("key", "")
        if not SUBMIT_KEY.fullmatch(key):
            return await pay_page(visitor, found, "Open the page again and pay from there.", 400)
        try:
            result = await pay_signup(web, member_id, found, form, key)
        except NoMethod as exc:
            return await pay_page(visitor, found, str(exc), 400)
        except NotFound:
            return RedirectResponse("/app/", status_code=303)
        except GatewayError as exc:
            log.warning("event=signup_pay_failed member=%s error=%s", member_id, exc)
            return _unavailable(visitor)
        except BillingError as exc:
            return await pay_page(visitor, found, str(exc), 400)
        return await after_payment(visitor, found, result)

    async def after_payment(
        visitor: Visitor, found: dict[str, Any], result: ChargeResult
    ) -> Response:
        if result.state == "succeeded":
            return RedirectResponse("/app/join/welcome", status_code=303)
        if result.state == "failed":
            return await pay_page(visitor, found, decline_text(result), 402)
        if result.state == "requires_action" and result.client_secret and stripe_key():
            return stripe_page(
                web.page(
                    visitor,
                    "join_confirm.html",
                    title="Confirm with your bank",
                    secret=result.client_secret,
                    stripe_key=stripe_key(),
                    stripe_js=billing.config.stripe.js_url if billing.config.stripe else "",
                    action="/app/join/pay/return",
                )
            )
        if result.action_url:
            return RedirectResponse(result.action_url, status_code=303)
        if result.state == "processing" and visitor.session is not None:
            # A direct debit on its way: the membership started with the mandate.
            now = await asyncio.to_thread(billing.signup_status, visitor.session.member_id)
            if now is not None and now["paid"]:
                return RedirectResponse("/app/join/welcome", status_code=303)
        return web.page(
            visitor,
            "message.html",
            202,
            title="Payment in progress",
            text="Your payment is being processed. Your membership starts as soon as it is through.",
        )

    async def pay_return(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        found = await signup_returned(web, visitor.session.member_id)
        if found is None:
            return RedirectResponse("/app/", status_code=303)
        if found["paid"]:
            return RedirectResponse("/app/join/welcome", status_code=303)
        return await pay_page(
            visitor, found, "The payment was not confirmed. Nothing was charged. Try again.", 402
        )

    async def welcome(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        found = await asyncio.to_thread(billing.signup_status, visitor.session.member_id)
        if found is None or not found["paid"]:
            return RedirectResponse("/app/", status_code=303)
        return web.page(visitor, "join_welcome.html", title="Welcome", s=found)

    async def contract(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        c = await asyncio.to_thread(billing.contract, visitor.session.member_id)
        if c is None:
            return web.page(
                visitor,
                "message.html",
                404,
                title="No signed contract",
                text="You did not sign a contract online. Ask the front desk for a copy.",
            )
        head = (
            f"Membership contract of {c['name']} (member {c['member_id']}, plan {c['plan_id']})\n"
            f"Accepted {c['accepted_at']} from {c['client_address']}\n"
            f"Terms version {c['terms_version']}, SHA-256 {c['terms_sha256']}\n"
            f"{'-' * 72}\n"
        )
        return PlainTextResponse(
            head + c["terms_text"],
            headers={"Content-Disposition": 'attachment; filename="membership-contract.txt"'},
        )

    return [
        Route("/join", join_form, methods=["GET"]),
        Route("/join", posted_form(web, join), methods=["POST"]),
        Route("/join/pay", signed_in_page(web, pay_form), methods=["GET"]),
        Route("/join/pay", posted_form(web, pay), methods=["POST"]),
        Route("/join/pay/return", posted_form(web, pay_return), methods=["POST"]),
        Route("/join/welcome", signed_in_page(web, welcome), methods=["GET"]),
        Route("/contract", signed_in_page(web, contract), methods=["GET"]),
    ]
