"""The member app's pages under ``/app/``: sign-in by e-mailed code or link, sign-out (here or
everywhere) and "my membership" with its invoices. Every page works without JavaScript."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gated.billing_sync.audit import Actor
from gated.web.foundation import STATIC, Visitor, Web
from gated.web.words import status_words

# Loose on purpose: the address only has to be one we could have stored; the mail proves it.
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}")
CODE = re.compile(r"[0-9]{6}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{32,64}")
# An invoice id in a URL (the page and its PDF read it alike).
INVOICE_ID = re.compile(r"[0-9]{1,12}")

T = TypeVar("T")
Handler = Callable[[Request, Visitor], Awaitable[Response]]
FormHandler = Callable[[Request, Visitor, dict[str, str]], Awaitable[Response]]


async def as_member(
    web: Web,
    request: Request,
    member_id: str,
    action: str,
    call: Callable[[], T],
    *,
    account: bool = True,
) -> T:
    """Run a member's change to their own account (``call``, one billing service call) in the
    audit log, as the member from this request's address, like a staff or shell action; the
    member's data download shows these rows. An action that raises is not recorded.
    ``account=False``: ``call`` cannot change the audited fields (``Billing.audited``)."""
    actor = Actor("member", member_id, "member", web.client(request))

    def run() -> T:
        with web.billing.audited(actor, action, member_id, account=account):
            return call()

    return await asyncio.to_thread(run)


def signed_in_page(web: Web, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in member; anyone else is sent to sign in."""

    async def endpoint(request: Request) -> Response:
        visitor = await web.visitor(request)
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        return await handler(request, visitor)

    return endpoint


def posted_form(web: Web, handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """A state-changing form: refused (403) without the CSRF token of this browser, 413 over
    the form limit."""

    async def endpoint(request: Request) -> Response:
        visitor, form, refused = await web.submission(request)
        if refused == 413:
            return web.page(
                visitor, "message.html", 413, title="Too much data", text="That form was too large."
            )
        if refused:
            return web.page(
                visitor,
                "message.html",
                403,
                title="Please try again",
                text="This form had expired. Open the page again and resend it.",
            )
        return await handler(request, visitor, form)

    return endpoint


def no_such_invoice(web: Web, visitor: Visitor) -> Response:
    """The member's answer for an invoice that is not theirs or does not exist (the same 404
    for both, so ids cannot be probed)."""
    return web.page(
        visitor,
        "message.html",
        404,
        title="No such invoice",
        text="You have no invoice with that number.",
    )


def routes(web: Web) -> list[BaseRoute]:
    """The member app's routes (mounted at ``/app``)."""

    def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return signed_in_page(web, handler)

    def posted(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        return posted_form(web, handler)

    async def signin_form(request: Request) -> Response:
        visitor = await web.visitor(request)
        if visitor.session is not None:
            return RedirectResponse("/app/", status_code=303)
        return web.page(visitor, "signin.html", title="Sign in")

    async def signin_start(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        email = form.get("email", "").strip()
        if not EMAIL.fullmatch(email):
            return web.page(
                visitor,
                "signin.html",
                400,
                title="Sign in",
                email=email[:254],
                error="Enter your e-mail address, like name@example.com.",
            )
        client = web.client(request)
        if not web.signin_per_client.allow(client) or not web.signin_per_address.allow(
            email.lower()
        ):
            return _too_many(web, visitor)
        flow = secrets.token_urlsafe(32)

        async def send_mail() -> None:
            if await asyncio.to_thread(
                web.access.start_signin, email, flow, f"{web.public_url}/app/signin/link/"
            ):
                web.wake_mail()

        # Apart from this request (not even a background task of its response, which would hold
        # the connection the page's stylesheet comes through): the answer is the same, and as
        # fast, whether or not the address belongs to a member.
        web.spawn(send_mail())
        return web.page(visitor, "signin_sent.html", title="Check your e-mail", flow=flow)

    async def signin_code(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        flow, code = form.get("flow", ""), form.get("code", "").strip().replace(" ", "")
        if not TOKEN.fullmatch(flow):
            return RedirectResponse("/app/signin", status_code=303)
        if not web.redeem_per_client.allow(web.client(request)):
            return _too_many(web, visitor)
        member_id = None
        if CODE.fullmatch(code):
            member_id = await asyncio.to_thread(web.access.redeem_code, flow, code)
        if member_id is None:
            return web.page(
                visitor,
                "signin_sent.html",
                400,
                title="Check your e-mail",
                flow=flow,
                error="That code is wrong, used or expired. Check it, or ask for a new one.",
            )
        return await _signed_in(web, request, visitor, member_id)

    async def signin_link_page(request: Request) -> Response:
        visitor = await web.visitor(request)
        token = request.path_params["token"]
        usable = TOKEN.fullmatch(token) is not None and await asyncio.to_thread(
            web.access.link_usable, token
        )
        if not usable:
            return web.page(visitor, "signin_link.html", 410, title="Link expired", token=None)
        # Mail scanners open links: only the button's POST signs in.
        return web.page(visitor, "signin_link.html", title="Sign in", token=token)

    async def signin_link(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        token = form.get("token", "")
        if not web.redeem_per_client.allow(web.client(request)):
            return _too_many(web, visitor)
        member_id = None
        if TOKEN.fullmatch(token):
            member_id = await asyncio.to_thread(web.access.redeem_link, token)
        if member_id is None:
            return web.page(visitor, "signin_link.html", 410, title="Link expired", token=None)
        return await _signed_in(web, request, visitor, member_id)

    async def signout(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is not None:
            await asyncio.to_thread(web.access.end_session, visitor.cookie)
        response = RedirectResponse("/app/signin", status_code=303)
        response.delete_cookie(web.cookie, path="/", secure=web.https, httponly=True)
        return response

    async def signout_everywhere(
        request: Request, visitor: Visitor, form: dict[str, str]
    ) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        await asyncio.to_thread(web.access.end_all_sessions, visitor.session.member_id)
        response = RedirectResponse("/app/signin", status_code=303)
        response.delete_cookie(web.cookie, path="/", secure=web.https, httponly=True)
        return response

    def membership_reads(
        member_id: str,
    ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        m, member = web.access.membership_and_member(member_id)
        if m["status"] is None:
            return m, [], []
        return (
            m,
            web.access.invoices(member_id, 24),
            web.billing.member_data().visits_by_month(member_id, member=member),
        )

    async def membership(request: Request) -> Response:
        # The session and the page's reads in one worker-thread trip and on one connection.
        visitor, found = await web.visitor_reading(request, membership_reads)
        if found is None:
            return RedirectResponse("/app/signin", status_code=303)
        m, invoices, visits = found
        if m["status"] is None:
            # Joined online and not paid yet: the membership starts with the first payment.
            return RedirectResponse("/app/join/pay", status_code=303)
        return web.page(
            visitor,
            "membership.html",
            title="Your membership",
            m=m,
            words=status_words(m),
            invoices=invoices,
            visits=visits,
        )

    async def invoice(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        raw = request.path_params["invoice_id"]
        found = None
        if INVOICE_ID.fullmatch(raw):
            found = await asyncio.to_thread(web.access.invoice, visitor.session.member_id, int(raw))
        if found is None:
            return no_such_invoice(web, visitor)
        pay_url = web.billing.pay_link(found["id"]) if found["owed"] > 0 else None
        return web.page(
            visitor, "invoice.html", title=f"Invoice {found['id']}", inv=found, pay_url=pay_url
        )

    return [
        Route("/", membership, methods=["GET"]),
        Route("/invoices/{invoice_id}", signed_in(invoice), methods=["GET"]),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", posted(signin_start), methods=["POST"]),
        Route("/signin/code", posted(signin_code), methods=["POST"]),
        Route("/signin/link/{token}", signin_link_page, methods=["GET"]),
        Route("/signin/link", posted(signin_link), methods=["POST"]),
        Route("/signout", posted(signout), methods=["POST"]),
        Route("/signout-everywhere", posted(signout_everywhere), methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]


async def _signed_in(web: Web, request: Request, visitor: Visitor, member_id: str) -> Response:
    """Open a session: a new token replaces whatever cookie the browser had (no fixation)."""
    token = await asyncio.to_thread(
        web.access.open_session, member_id, request.headers.get("user-agent", "")
    )
    response = RedirectResponse("/app/", status_code=303)
    web.set_cookie(response, token)
    return response


def _too_many(web: Web, visitor: Visitor) -> HTMLResponse:
    response = web.page(
        visitor,
        "message.html",
        429,
        title="Too many tries",
        text="Too many sign-in attempts from here or for this address. Wait a few minutes and try again.",
    )
    response.headers["Retry-After"] = "300"
    return response
