"""The JSON twins of the sign-up and self-service pages under ``/api/v1/``: join, pay the first
invoice, save a card, freeze, cancel, edit contact details and confirm a new e-mail address by
its mailed link. Each makes the same billing service call as its page, with the same checks (the
terms' SHA-256 and their acceptance, the sign-up rate limit, a submit key per payment, the
quotes' rules), and answers JSON ``{"error": ...}`` with the page's message where the page shows
one. Every POST takes a JSON object and the ``X-CSRF-Token`` of the browser's cookie; before
signing up, ``GET /api/v1/join`` gives a visitor that cookie and its token."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import ChargeResult, GatewayError
from gated.billing_sync.service import Applicant
from gated.web.api import error, member_json, membership_json
from gated.web.foundation import Visitor, Web, read_json
from gated.web.join import (
    FIELDS,
    SUBMIT_KEY,
    TEST_IBANS,
    TEST_METHODS,
    NoMethod,
    decline_text,
    pay_signup,
    signup_returned,
)
from gated.web.member import TOKEN, as_member
from gated.web.openapi import ApiRoute
from gated.web.security import csrf_token
from gated.web.self_service import freeze_months, save_card, save_contact
from gated.web.terms import load_terms

log = logging.getLogger("gated.web.api")

Body = dict[str, Any]
Action = Callable[[Request, Visitor, Body], Awaitable[Response]]

# The e-mail change page's words for a link that no longer works.
LINK_GONE = "This link was used already or has expired. Change the address again in the member app."
UNAVAILABLE = "The payment provider could not be reached. Nothing was charged. Try again shortly."
_TEXT = ("string", "")


def _text(body: Body, key: str) -> str:
    """A text field of a JSON body ("" when absent; a non-string is no text either)."""
    value = body.get(key, "")
    return value[:300] if isinstance(value, str) else ""


def routes(web: Web) -> list[BaseRoute]:
    """The JSON twins (mounted at ``/api/v1``, before the API's catch-all)."""
    billing = web.billing
    stripe = billing.config.gateway == "stripe"

    def action(handler: Action, *, member: bool = True) -> Callable[[Request], Awaitable[Response]]:
        """A state-changing call: this browser's CSRF token, a JSON object body, and (unless
        ``member`` is False) a member session."""

        async def endpoint(request: Request) -> Response:
            visitor = await web.visitor(request)
            if not web.csrf_valid(request, visitor, {}):
                log.warning("event=csrf_refused path=%s", request.url.path)
                return error(403, "missing or wrong X-CSRF-Token")
            body = await read_json(request)
            if body is None:
                return error(400, "send a JSON object (Content-Type: application/json)")
            if member and visitor.session is None:
                return error(401, "sign in first")
            return await handler(request, visitor, body)

        return endpoint

    def reading(
        handler: Callable[[Request, str], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A read of the session's own member (``member_json``), handed the member id."""
        return member_json(web, lambda request, session: handler(request, session.member_id))

    async def payment_options(member_id: str) -> dict[str, Any]:
        """How this gateway takes a card: Stripe.js with a fresh SetupIntent, or the
        simulator's test methods."""
        if not stripe:
            return {
                "gateway": "simulated",
                "methods": [m for m, _ in TEST_METHODS],
                "test_ibans": list(TEST_IBANS),
            }
        setup = await asyncio.to_thread(billing.card_setup, member_id)
        return {
            "gateway": "stripe",
            "publishable_key": billing.config.stripe.publishable_key
            if billing.config.stripe
            else None,
            "setup_id": setup.setup_id,
            "client_secret": setup.client_secret,
        }

    # --- joining ---------------------------------------------------------------------------

    async def offer(request: Request) -> Response:
        visitor = await web.visitor(request)
        body = await asyncio.to_thread(billing.signup_offer)
        terms = load_terms(billing.config.app.terms_file)
        body["terms"] = {"version": terms.version, "sha256": terms.sha256, "text": terms.text}
        body["csrf_token"] = visitor.csrf
        response = JSONResponse(body)
        if visitor.new_cookie:
            web.set_cookie(response, visitor.cookie)
        return response

    async def join(request: Request, visitor: Visitor, body: Body) -> Response:
        terms = load_terms(billing.config.app.terms_file)
        if body.get("accept") is not True:
            return error(400, "Read the membership terms and accept them.")
        if body.get("terms_sha256") != terms.sha256:
            return error(409, "The terms changed while you were reading: read them again.")
        if not web.signups_per_client.allow(web.client(request)):
            return error(429, "Too many sign-ups from here: try later.")
        values = {k: _text(body, k) for k in FIELDS}
        applicant = Applicant(
            values["site"],
            values["plan"],
            values["name"],
            values["email"],
            values["phone"],
            values["emergency_contact"],
        )
        user_agent = request.headers.get("user-agent", "")
        try:
            member_id = await asyncio.to_thread(
                billing.start_signup, applicant, terms, web.client(request), user_agent
            )
        except BillingError as exc:
            return error(400, str(exc))
        token = await asyncio.to_thread(web.access.open_session, member_id, user_agent)
        response = JSONResponse(
            {"member_id": member_id, "csrf_token": csrf_token(web.csrf_key, token)},
            status_code=201,
        )
        web.set_cookie(response, token)
        return response

    async def signup(request: Request, member_id: str) -> Response:
        found = await asyncio.to_thread(billing.signup_status, member_id)
        if found is None:
            return error(404, "no sign-up of yours waits for payment")
        if found["paid"]:
            return JSONResponse({"signup": found})
        try:
            options = await payment_options(member_id)
        except GatewayError as exc:
            log.warning("event=card_setup_failed error=%s", exc)
            return error(503, UNAVAILABLE)
        return JSONResponse({"signup": found, "payment": options})

    async def pay(request: Request, visitor: Visitor, body: Body) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        key = body.get("key")
        if not isinstance(key, str) or not SUBMIT_KEY.fullmatch(key):
            return error(400, "send a key of your own (16 to 64 letters, digits, - or _)")
        found = await asyncio.to_thread(billing.signup_status, member_id)
        if found is None:
            return error(404, "no sign-up of yours waits for payment")
        try:
            result = await pay_signup(web, member_id, found, body, key)
        except NoMethod as exc:
            return error(400, str(exc))
        except NotFound:
            return error(404, "no sign-up of yours waits for payment")
        except GatewayError as exc:
            log.warning("event=signup_pay_failed member=%s error=%s", member_id, exc)
            return error(503, UNAVAILABLE)
        except BillingError as exc:
            return error(400, str(exc))
        return charged(result)

    async def pay_return(request: Request, visitor: Visitor, body: Body) -> Response:
        assert visitor.session is not None
        found = await signup_returned(web, visitor.session.member_id)
        if found is None:
            return error(404, "no sign-up of yours waits for payment")
        return JSONResponse({"signup": found}, status_code=200 if found["paid"] else 402)

    # --- self-service ----------------------------------------------------------------------

    async def card_options(request: Request, member_id: str) -> Response:
        try:
            return JSONResponse(await payment_options(member_id))
        except GatewayError as exc:
            log.warning("event=card_setup_failed member=%s error=%s", member_id, exc)
            return error(503, UNAVAILABLE)

    async def card(request: Request, visitor: Visitor, body: Body) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        try:
            await save_card(web, request, member_id, body)
        except NoMethod as exc:
            return error(400, str(exc))
        except GatewayError as exc:
            log.warning("event=card_update_failed member=%s error=%s", member_id, exc)
            return error(503, UNAVAILABLE)
        except BillingError as exc:
            return error(400, str(exc))
        return JSONResponse(await membership_json(web, member_id))

    async def freeze_quote(request: Request, member_id: str) -> Response:
        months = freeze_months(request.query_params.get("months", ""))
        if months is None:
            return error(400, "Choose one, two or three months.")
        return JSONResponse(await asyncio.to_thread(billing.freeze_quote, member_id, months))

    async def freeze(request: Request, visitor: Visitor, body: Body) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        months = freeze_months(body.get("months"))
        if months is None:
            return error(400, "Choose one, two or three months.")
        quote = await asyncio.to_thread(billing.freeze_quote, member_id, months)
        if not quote["allowed"]:
            return JSONResponse({"error": quote["reason"], "quote": quote}, status_code=409)
        try:
            await as_member(
                web, request, member_id, "freeze", lambda: billing.freeze(member_id, months)
            )
        except GatewayError as exc:
            log.warning("event=freeze_failed member=%s error=%s", member_id, exc)
            return error(503, UNAVAILABLE)
        except BillingError as exc:
            return error(409, str(exc))
        return JSONResponse({"frozen": quote, "membership": await membership_json(web, member_id)})

    async def cancel_quote(request: Request, member_id: str) -> Response:
        return JSONResponse(await asyncio.to_thread(billing.cancel_quote, member_id))

    async def cancel(request: Request, visitor: Visitor, body: Body) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        quote = await asyncio.to_thread(billing.cancel_quote, member_id)
        if not quote["allowed"]:
            return JSONResponse({"error": quote["reason"], "quote": quote}, status_code=409)
        try:
            await as_member(web, request, member_id, "cancel", lambda: billing.cancel(member_id))
        except BillingError as exc:
            return error(409, str(exc))
        return JSONResponse(
            {"cancelled": quote, "membership": await membership_json(web, member_id)}
        )

    async def contact_read(request: Request, member_id: str) -> Response:
        return JSONResponse(await asyncio.to_thread(billing.contact, member_id))

    async def contact(request: Request, visitor: Visitor, body: Body) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        current = await asyncio.to_thread(billing.contact, member_id)
        phone = _text(body, "phone") if "phone" in body else current["phone"] or ""
        emergency = (
            _text(body, "emergency_contact")
            if "emergency_contact" in body
            else current["emergency_contact"] or ""
        )
        try:
            mailed = await save_contact(
                web, request, member_id, phone, emergency, _text(body, "email")
            )
        except BillingError as exc:
            return error(400, str(exc))
        saved = await asyncio.to_thread(billing.contact, member_id)
        # The address changes only once the link mailed to the new one is opened.
        return JSONResponse({"contact": saved, "email_confirmation_sent": mailed})

    async def email_link(request: Request) -> Response:
        # Like the page a mailed link opens: it changes nothing (mail scanners open links),
        # and gives a browser without a session the cookie and token the POST needs.
        visitor = await web.visitor(request)
        token = request.path_params["token"]
        usable = TOKEN.fullmatch(token) is not None and await asyncio.to_thread(
            billing.email_change_usable, token
        )
        response = (
            JSONResponse({"usable": True, "csrf_token": visitor.csrf})
            if usable
            else error(410, LINK_GONE)
        )
        if visitor.new_cookie:
            web.set_cookie(response, visitor.cookie)
        return response

    async def email_confirm(request: Request, visitor: Visitor, body: Body) -> Response:
        token = _text(body, "token")
        member_id = None
        if TOKEN.fullmatch(token):
            member_id = await asyncio.to_thread(billing.confirm_email_change, token)
        if member_id is None:
            return error(410, LINK_GONE)
        return JSONResponse(
            {"email": (await asyncio.to_thread(billing.contact, member_id))["email"]}
        )

    def charged(result: ChargeResult) -> Response:
        body: dict[str, Any] = {"state": result.state}
        if result.state == "succeeded":
            return JSONResponse(body)
        if result.state == "failed":
            return JSONResponse({**body, "error": decline_text(result)}, status_code=402)
        if result.state == "requires_action":
            # Stripe.js confirms with the secret (3-D Secure), then POST /join/pay/return.
            body.update(client_secret=result.client_secret, action_url=result.action_url)
        return JSONResponse(body, status_code=202)

    method_fields = {
        "method": ("string", "with the simulated gateway: one of the offered test methods"),
        "setup_id": ("string", "with Stripe: the SetupIntent the card was saved with"),
    }
    return [
        ApiRoute(
            "/join",
            offer,
            methods=["GET"],
            summary="The sites, plans and membership terms one can join with, and the CSRF "
            "token (and cookie) for POST /api/v1/join.",
            auth="none",
        ),
        ApiRoute(
            "/join",
            action(join, member=False),
            methods=["POST"],
            summary="Sign up: a member without a membership and a first invoice; signs the "
            "browser in. Nothing reaches the gates until it is paid.",
            body={
                **{k: _TEXT for k in FIELDS},
                "terms_sha256": ("string", "the SHA-256 of the terms read (from GET /join)"),
                "accept": ("boolean", "true: the terms are accepted"),
            },
            auth="none",
        ),
        ApiRoute(
            "/join/pay",
            reading(signup),
            methods=["GET"],
            summary="The sign-up waiting for payment (what is owed) and how to pay it.",
        ),
        ApiRoute(
            "/join/pay",
            action(pay),
            methods=["POST"],
            summary="Pay the first invoice; the same key is one payment however often sent. "
            "200 paid, 402 declined, 202 in progress or waiting for 3-D Secure.",
            body={
                "key": ("string", "16 to 64 characters, new for each payment"),
                **method_fields,
                "iban": ("string", "with the simulated gateway, on a plan with sepa: a test IBAN"),
                "sepa": ("boolean", "with Stripe: setup_id saved a bank account (SEPA)"),
                "mandate": ("boolean", "true: the SEPA Direct Debit mandate is accepted"),
            },
        ),
        ApiRoute(
            "/join/pay/return",
            action(pay_return),
            methods=["POST"],
            summary="After 3-D Secure in Stripe.js: what became of the payment (402 unpaid).",
        ),
        ApiRoute(
            "/me/card",
            reading(card_options),
            methods=["GET"],
            summary="How to give a new card: a SetupIntent for Stripe.js, or the test methods.",
        ),
        ApiRoute(
            "/me/card",
            action(card),
            methods=["POST"],
            summary="Save a new card; what is owed is charged to it at once.",
            body=method_fields,
        ),
        ApiRoute(
            "/me/freeze",
            reading(freeze_quote),
            methods=["GET"],
            summary="What a freeze of months would do: allowed or why not, dates, fee, new "
            "paid-through. Changes nothing.",
            query={"months": ("integer", "1 to 3")},
        ),
        ApiRoute(
            "/me/freeze",
            action(freeze),
            methods=["POST"],
            summary="Freeze the membership (409 with the reason where the rules refuse).",
            body={"months": ("integer", "1 to 3")},
        ),
        ApiRoute(
            "/me/cancel",
            reading(cancel_quote),
            methods=["GET"],
            summary="The day a cancellation now would take effect. Changes nothing.",
        ),
        ApiRoute(
            "/me/cancel",
            action(cancel),
            methods=["POST"],
            summary="Cancel the membership (409 with the reason where the rules refuse).",
        ),
        ApiRoute(
            "/me/contact",
            reading(contact_read),
            methods=["GET"],
            summary="The member's e-mail address, phone and emergency contact.",
        ),
        ApiRoute(
            "/me/contact",
            action(contact),
            methods=["POST"],
            summary="Change phone and emergency contact; a new e-mail address is confirmed by "
            "a link mailed to it.",
            body={
                "phone": _TEXT,
                "emergency_contact": _TEXT,
                "email": ("string", "a new address (confirmed by link)"),
            },
        ),
        ApiRoute(
            "/email/{token}",
            email_link,
            methods=["GET"],
            summary="Whether an e-mail change link still works (410 if not), and the CSRF token "
            "(and cookie) for POST /api/v1/email/confirm. Changes nothing.",
            auth="none",
        ),
        ApiRoute(
            "/email/confirm",
            action(email_confirm, member=False),
            methods=["POST"],
            summary="Use an e-mail change link: the member's address becomes the new one "
            "(410 for a used, expired or unknown link). Works without a session, as the link does.",
            body={"token": ("string", "the last part of the link mailed to the new address")},
            auth="none",
        ),
    ]
