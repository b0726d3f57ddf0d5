"""API tokens in the console and on the staff JSON API. Owners issue a token (a name, a role,
sites) at ``/desk/tokens``, see it once, and revoke it there. An integrator sends it as
``Authorization: Bearer gat_…`` on the staff API's GET routes (``/api/v1/staff/…``): ``bearer``
turns it into the visitor ``desk.guard`` then checks like any staff session, so the role's
permission table and the sites scope apply unchanged. A token never changes anything: any other
method with a token is refused."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.permissions import ROLES
from gated.billing_sync.staff import ALL_SITES, StaffSession
from gated.web.desk_core import Desk, StaffVisitor

log = logging.getLogger("gated.web.api_tokens")


async def bearer(desk: Desk, request: Request, method: str) -> StaffVisitor | Response:
    """The visitor an ``Authorization: Bearer`` token stands for, or the response refusing it
    (401 for a missing, unknown or revoked token, 403 on a route that changes something)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if method != "GET":
        return JSONResponse({"error": "API tokens only read; this route changes data"}, 403)
    account = None
    if scheme.lower() == "bearer" and token.strip():
        account = await asyncio.to_thread(desk.web.billing.api_token_account, token.strip())
    if account is None:
        log.warning("event=api_token_refused client=%s", desk.web.client(request))
        return JSONResponse(
            {"error": "unknown or revoked API token"},
            401,
            headers={"www-authenticate": 'Bearer realm="gated"'},
        )
    return StaffVisitor("", False, StaffSession(account, False, 0), "")


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The token pages by name, for ``desk.RULES``."""
    billing = desk.web.billing
    access = desk.access

    def reachable(visitor: StaffVisitor) -> list[dict[str, Any]]:
        assert visitor.session is not None
        me = visitor.session.staff
        return [t for t in billing.list_api_tokens() if access.covers_all(me, t["sites"])]

    async def page(visitor: StaffVisitor, status: int = 200, **extra: Any) -> Response:
        rows = await asyncio.to_thread(reachable, visitor)
        return desk.page(
            visitor,
            "desk_tokens.html",
            status,
            title="API tokens",
            tokens=rows,
            roles=ROLES,
            sites=billing.config.sites,
            **extra,
        )

    def actor(request: Request, visitor: StaffVisitor) -> Actor:
        assert visitor.session is not None
        staff = visitor.session.staff
        return Actor("staff", staff.id, staff.role, desk.web.client(request))

    async def tokens(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        return await page(visitor)

    async def api_tokens(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        return JSONResponse({"tokens": await asyncio.to_thread(reachable, visitor)})

    async def create(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        me = visitor.session.staff
        sites = [x for x in form.get("sites", "").replace(",", " ").split() if x][:50]
        role = form.get("role", "")

        def run() -> tuple[int, str]:
            if not access.covers_all(me, sites or [ALL_SITES]):
                raise BillingError("you may only grant the sites you act on")
            with billing.audited(actor(request, visitor), "api_token_create", None) as entry:
                made = billing.create_api_token(form.get("name", ""), role, sites, me.id)
                entry.detail.update(token_id=made[0], role=role, sites=sites or [ALL_SITES])
            return made

        try:
            token_id, token = await asyncio.to_thread(run)
        except BillingError as exc:
            return desk.redirect(visitor, "/desk/tokens", str(exc)[:300] + ".", error=True)
        # Shown on this answer only (no-store, as every console page): the store keeps a digest.
        return await page(visitor, made=(token_id, token))

    async def revoke(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        raw = request.path_params["token_id"]

        def run() -> None:
            if not raw.isdigit() or len(raw) > 12:
                raise NotFound("no such token")
            token_id = int(raw)
            if not any(t["id"] == token_id for t in reachable(visitor)):
                raise NotFound("no such token")
            with billing.audited(actor(request, visitor), "api_token_revoke", None) as entry:
                billing.revoke_api_token(token_id)
                entry.detail.update(token_id=token_id)

        try:
            await asyncio.to_thread(run)
        except NotFound:
            return await page(visitor, 404, error="No such live token.")
        return desk.redirect(visitor, "/desk/tokens", "Token revoked.")

    return {
        "tokens": tokens,
        "api_tokens": api_tokens,
        "token_create": create,
        "token_revoke": revoke,
    }
