"""The member's own data in the member app: ``/app/data`` offers the download (everything head
office holds about them, one JSON file) and the request for erasure, saying first what erasure
keeps for the law. The request is recorded for staff, who erase (``gated-billing members
erase``); the page confirms it. Each is one call of ``Billing.member_data()``."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gated.billing_sync.errors import BillingError
from gated.billing_sync.member_access import MemberSession
from gated.billing_sync.member_data import RETAINED
from gated.web.api import changing_json, error, member_json
from gated.web.foundation import Visitor, Web
from gated.web.member import posted_form, signed_in_page
from gated.web.openapi import ApiRoute

ERASED = "Your data has been erased already."


def download(body: dict[str, object]) -> Response:
    """The member's data as a JSON file to save (never cached on the way)."""
    return Response(
        json.dumps(body, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={
            "Content-Disposition": 'attachment; filename="my-membership-data.json"',
            "Cache-Control": "no-store",
        },
    )


def routes(web: Web) -> list[BaseRoute]:
    """The data routes (mounted at ``/app``)."""
    data = web.billing.member_data()

    async def render(visitor: Visitor, code: int = 200, **more: object) -> Response:
        """The data page: the download, what erasure keeps, and whether it was asked for."""
        assert visitor.session is not None
        asked = await asyncio.to_thread(data.erasure_requested_at, visitor.session.member_id)
        return web.page(
            visitor, "my_data.html", code, title="Your data", retained=RETAINED, asked=asked, **more
        )

    async def page(request: Request, visitor: Visitor) -> Response:
        return await render(visitor)

    async def export(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        return download(await asyncio.to_thread(data.export, visitor.session.member_id))

    async def erasure(request: Request, visitor: Visitor, form: dict[str, str]) -> Response:
        if visitor.session is None:
            return web.page(visitor, "message.html", 401, title="Sign in", text="Sign in first.")
        if form.get("confirm") != "yes":
            return await render(
                visitor, 400, error="Tick the box to confirm that you want your data erased."
            )
        member_id = visitor.session.member_id
        try:
            await asyncio.to_thread(data.request_erasure, member_id, web.client(request))
        except BillingError:
            return web.page(visitor, "message.html", 409, title="Erased", text=ERASED)
        return await render(visitor, confirmed=True)

    return [
        Route("/data", signed_in_page(web, page), methods=["GET"]),
        Route("/data/download", signed_in_page(web, export), methods=["GET"]),
        Route("/data/erasure", posted_form(web, erasure), methods=["POST"]),
    ]


def api_routes(web: Web) -> list[BaseRoute]:
    """The same under ``/api/v1``: visits per month, the download, the erasure request."""
    data = web.billing.member_data()

    async def visits(request: Request, session: MemberSession) -> Response:
        rows = await asyncio.to_thread(data.visits_by_month, session.member_id)
        return JSONResponse({"visits_by_month": rows})

    async def export(request: Request, session: MemberSession) -> Response:
        return download(await asyncio.to_thread(data.export, session.member_id))

    async def erasure(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        try:
            new = await asyncio.to_thread(data.request_erasure, member_id, web.client(request))
        except BillingError:
            return error(409, ERASED)
        asked = await asyncio.to_thread(data.erasure_requested_at, member_id)
        return JSONResponse(
            {"requested_at": asked, "retained": RETAINED}, status_code=201 if new else 200
        )

    return [
        ApiRoute(
            "/me/visits",
            member_json(web, visits),
            methods=["GET"],
            summary="Visits (granted entries) per month, newest first, the last 12 months.",
        ),
        ApiRoute(
            "/me/data",
            member_json(web, export),
            methods=["GET"],
            summary="Everything head office holds about the member, as one JSON document.",
        ),
        ApiRoute(
            "/me/erasure",
            changing_json(web, erasure),
            methods=["POST"],
            summary="Ask for erasure (recorded once for staff); says what erasure keeps.",
        ),
    ]
