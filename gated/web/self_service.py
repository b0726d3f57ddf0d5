"""Self-service pages of the member app: a new card (Stripe.js SetupIntent, or a test method
with the simulator; what is owed is retried at once), a freeze and a cancellation each shown
with its fee or end date before the member confirms, contact details, and an e-mail change
confirmed by a link to the new address. Each action is one call of the billing service, the
one the command line makes, so the rules live in one place."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gated.billing_sync.errors import BillingError
from gated.billing_sync.gateway import GatewayError
from gated.web.foundation import Visitor, Web
from gated.web.join import TEST_METHODS, NoMethod, chosen_method, stripe_page
from gated.web.member import TOKEN, as_member, posted_form, signed_in_page
from gated.web.words import day, status_words

log = logging.getLogger("gated.web.self_service")


def freeze_months(raw: object) -> int | None:
    """A freeze's length as a form or JSON call gives it (the engine checks the plan's range)."""
    return int(raw) if isinstance(raw, str | int) and re.fullmatch(r"[1-9]", str(raw)) else None


async def save_card(
    web: Web, request: Request, member_id: str, values: Mapping[str, object]
) -> None:
    """Save the card (or test method) a form or its JSON twin names and charge what is owed to
    it at once (published within the second), as the member in the audit log. NoMethod,
    GatewayError, BillingError as they come."""
    method = await chosen_method(web, member_id, values)
    await as_member(
        web,
        request,
        member_id,
        "payment_method",
        lambda: web.billing.set_payment_method(member_id, method),
    )


async def save_contact(
    web: Web, request: Request, member_id: str, phone: str, emergency: str, email: str
) -> bool:
    """Save phone and emergency contact (as the member in the audit log) and, when ``email``
    is another address than the member's ("" keeps it), mail it the link that changes it.
    Returns whether that link went out; BillingError names a bad field."""
    billing = web.billing
    current = await asyncio.to_thread(billing.contact, member_id)
    email = email.strip()
    await as_member(
        web,
        request,
        member_id,
        "contact",
        lambda: billing.update_contact(member_id, phone, emergency),
        account=False,  # phone and emergency contact only
    )
    if not email or email.lower() == (current["email"] or "").lower():
        return False
    await asyncio.to_thread(
        billing.request_email_change, member_id, email, f"{web.public_url}/app/email/"
    )
    web.wake_mail()
    return True


def routes(web: Web) -> list[BaseRoute]:
    """The self-service routes (mounted at ``/app``)."""
    billing = web.billing
    stripe = billing.config.gateway == "stripe"

    def done(visitor: Visitor, title: str, text: str, code: int = 200) -> Response:
        return web.page(visitor, "message.html", code, title=title, text=text)

    def unavailable(visitor: Visitor) -> Response:
        return done(
            visitor,
            "Try again",
            "Our payment provider could not be reached. Nothing changed. Try again shortly.",
            503,
        )

    # --- a new card ------------------------------------------------------------------------

    async def card_page(visitor: Visitor, error: str | None = None, code: int = 200) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        m = await asyncio.to_thread(web.access.membership, member_id)
        context = {"m": m, "words": status_words(m), "error": error, "stripe": stripe}
        if not stripe:
            return web.page(
                visitor, "card.html", code, title="Your card", methods=TEST_METHODS, **context
            )
        key = billing.config.stripe.publishable_key if billing.config.stripe else None
        if key is None:
            return done(visitor, "Not available", "Give the front desk your new card.", 503)
        try:
            setup = await asyncio.to_thread(billing.card_setup, member_id)
        except BillingError as exc:
            return done(visitor, "Your card", str(exc), 400)
        except GatewayError as exc:
            log.warning("event=card_setup_failed member=%s error=%s", member_id, exc)
            return unavailable(visitor)
        return stripe_page(
            web.page(
                visitor,
                "card.html",
                code,
                title="Your card",
                setup=setup,
                stripe_key=key,
                stripe_js=billing.config.stripe.js_url if billing.config.stripe else "",
                **context,
            )
        )

    async def card_form(request: Request, visitor: Visitor) -> Response:
        return await card_page(visitor)

    async def card(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        member_id = visitor.session.member_id
        try:
            await save_card(web, request, member_id, form)
        except NoMethod as exc:
            return await card_page(visitor, str(exc), 400)
        except GatewayError as exc:
            log.warning("event=card_update_failed member=%s error=%s", member_id, exc)
            return unavailable(visitor)
        except BillingError as exc:
            return await card_page(visitor, str(exc), 400)
        m = await asyncio.to_thread(web.access.membership, member_id)
        words = status_words(m)
        return web.page(visitor, "card_saved.html", title="Card saved", m=m, words=words)

    # --- freeze ----------------------------------------------------------------------------

    async def freeze_form(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        months = freeze_months(request.query_params.get("months", ""))
        quote = None
        if months is not None:
            quote = await asyncio.to_thread(billing.freeze_quote, visitor.session.member_id, months)
        return web.page(visitor, "freeze.html", title="Freeze your membership", quote=quote)

    async def freeze(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        member_id = visitor.session.member_id
        months = freeze_months(form.get("months", ""))
        if months is None:
            return done(visitor, "Freeze", "Choose one, two or three months.", 400)
        quote = await asyncio.to_thread(billing.freeze_quote, member_id, months)
        if not quote["allowed"]:
            return web.page(
                visitor, "freeze.html", 409, title="Freeze your membership", quote=quote
            )
        try:
            await as_member(
                web, request, member_id, "freeze", lambda: billing.freeze(member_id, months)
            )
        except GatewayError as exc:
            log.warning("event=freeze_failed member=%s error=%s", member_id, exc)
            return unavailable(visitor)
        except BillingError as exc:
            return done(visitor, "Freeze", str(exc), 409)
        return done(
            visitor,
            "Membership frozen",
            f"Your membership is frozen from {day(quote['start'])} until {day(quote['end'])}. "
            f"Your contract runs that much longer.",
        )

    # --- cancel ----------------------------------------------------------------------------

    async def cancel_form(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        quote = await asyncio.to_thread(billing.cancel_quote, visitor.session.member_id)
        return web.page(visitor, "cancel.html", title="Cancel your membership", quote=quote)

    async def cancel(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        member_id = visitor.session.member_id
        quote = await asyncio.to_thread(billing.cancel_quote, member_id)
        if not quote["allowed"]:
            return web.page(
                visitor, "cancel.html", 409, title="Cancel your membership", quote=quote
            )
        try:
            await as_member(web, request, member_id, "cancel", lambda: billing.cancel(member_id))
        except BillingError as exc:
            return done(visitor, "Cancel", str(exc), 409)
        return done(
            visitor,
            "Membership cancelled",
            f"Your membership ends on {day(quote['ends_at'])}. The gates let you in until then.",
        )

    # --- contact details and e-mail --------------------------------------------------------

    async def contact_page(
        visitor: Visitor, values: dict[str, str] | None, error: str | None, code: int
    ) -> Response:
        assert visitor.session is not None
        current = await asyncio.to_thread(billing.contact, visitor.session.member_id)
        return web.page(
            visitor,
            "contact.html",
            code,
            title="Your contact details",
            v=values or {k: current[k] or "" for k in ("email", "phone", "emergency_contact")},
            error=error,
        )

    async def contact_form(request: Request, visitor: Visitor) -> Response:
        return await contact_page(visitor, None, None, 200)

    async def contact(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        member_id = visitor.session.member_id
        values = {k: form.get(k, "")[:300] for k in ("email", "phone", "emergency_contact")}
        try:
            mailed = await save_contact(
                web,
                request,
                member_id,
                values["phone"],
                values["emergency_contact"],
                values["email"],
            )
            if mailed:
                return done(
                    visitor,
                    "Check your new address",
                    "Your details are saved. We sent a link to the new e-mail address: your "
                    "address changes when you open it and confirm.",
                )
        except BillingError as exc:
            return await contact_page(visitor, values, str(exc), 400)
        return done(visitor, "Details saved", "Your contact details are saved.")

    async def email_link(request: Request) -> Response:
        visitor = await web.visitor(request)
        token = request.path_params["token"]
        usable = TOKEN.fullmatch(token) is not None and await asyncio.to_thread(
            billing.email_change_usable, token
        )
        if not usable:
            return web.page(visitor, "email_confirm.html", 410, title="Link expired", token=None)
        # Mail scanners open links: only the button's POST changes the address.
        return web.page(visitor, "email_confirm.html", title="Confirm your address", token=token)

    async def email_confirm(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        token = form.get("token", "")
        member_id = None
        if TOKEN.fullmatch(token):
            member_id = await asyncio.to_thread(billing.confirm_email_change, token)
        if member_id is None:
            return web.page(visitor, "email_confirm.html", 410, title="Link expired", token=None)
        return done(visitor, "Address changed", "Your new e-mail address is saved.")

    return [
        Route("/card", signed_in_page(web, card_form), methods=["GET"]),
        Route("/card", posted_form(web, card), methods=["POST"]),
        Route("/freeze", signed_in_page(web, freeze_form), methods=["GET"]),
        Route("/freeze", posted_form(web, freeze), methods=["POST"]),
        Route("/cancel", signed_in_page(web, cancel_form), methods=["GET"]),
        Route("/cancel", posted_form(web, cancel), methods=["POST"]),
        Route("/contact", signed_in_page(web, contact_form), methods=["GET"]),
        Route("/contact", posted_form(web, contact), methods=["POST"]),
        Route("/email/{token}", email_link, methods=["GET"]),
        Route("/email/confirm", posted_form(web, email_confirm), methods=["POST"]),
    ]
