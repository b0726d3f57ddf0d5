"""The JSON twin of the member app under ``/api/v1/``: the same session cookie, the same data
as the pages, and the CSRF token in an ``X-CSRF-Token`` header on every state-changing call.
A member's routes take no member id: ``me`` is always the session's own member."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gated.billing_sync.member_access import MemberSession
from gated.contract import format_time
from gated.web.foundation import Visitor, Web
from gated.web.openapi import ApiRoute
from gated.web.words import status_words

T = TypeVar("T")


def error(status: int, message: str) -> JSONResponse:
    """An API refusal: ``{"error": message}`` with ``status``."""
    return JSONResponse({"error": message}, status_code=status)


async def membership_json(web: Web, member_id: str) -> dict[str, Any]:
    """The membership as ``GET /api/v1/me`` gives it: the data of ``/app/`` with its status in
    words (``status_words``)."""
    return await asyncio.to_thread(membership_view, web, member_id)


def membership_view(web: Web, member_id: str) -> dict[str, Any]:
    """``membership_json``'s answer, read in the calling thread."""
    m = web.access.membership(member_id)
    words = status_words(m)
    m["status_words"] = {
        "headline": words.headline,
        "detail": words.detail,
        "action": words.action,
        "gates_let_in": words.allowed,
    }
    return m


MemberHandler = Callable[[Request, MemberSession], Awaitable[Response]]
ChangingHandler = Callable[[Request, Visitor], Awaitable[Response]]


def member_json(web: Web, handler: MemberHandler) -> Callable[[Request], Awaitable[Response]]:
    """A JSON read of the session's own member; 401 without a session."""

    async def endpoint(request: Request) -> Response:
        visitor = await web.visitor(request)
        if visitor.session is None:
            return error(401, "sign in first")
        return await handler(request, visitor.session)

    return endpoint


def member_read(
    web: Web, read: Callable[[str], T], answer: Callable[[T], Response]
) -> Callable[[Request], Awaitable[Response]]:
    """A JSON read of the session's own member: ``read(member_id)`` runs in the session
    lookup's worker-thread trip and on its connection (``Web.visitor_reading``), ``answer``
    makes the response of what it read; 401 without a session."""

    async def endpoint(request: Request) -> Response:
        visitor, found = await web.visitor_reading(request, read)
        if visitor.session is None:
            return error(401, "sign in first")
        return answer(cast(T, found))

    return endpoint


def changing_json(web: Web, handler: ChangingHandler) -> Callable[[Request], Awaitable[Response]]:
    """A state-changing JSON call: 413 over the body limit, 403 without the X-CSRF-Token of
    this session's cookie, 401 without a session."""

    async def endpoint(request: Request) -> Response:
        visitor, _, refused = await web.submission(request)
        if refused == 413:
            return error(413, "request body too large")
        if refused:
            return error(403, "missing or wrong X-CSRF-Token")
        if visitor.session is None:
            return error(401, "sign in first")
        return await handler(request, visitor)

    return endpoint


def routes(web: Web) -> list[BaseRoute]:
    """The API's routes (mounted at ``/api/v1``)."""

    def member(handler: MemberHandler) -> Callable[[Request], Awaitable[Response]]:
        return member_json(web, handler)

    def changing(handler: ChangingHandler) -> Callable[[Request], Awaitable[Response]]:
        return changing_json(web, handler)

    async def session(request: Request) -> Response:
        visitor = await web.visitor(request)
        if visitor.session is None:
            return error(401, "sign in first")
        s = visitor.session
        body: dict[str, Any] = {
            "member_id": s.member_id,
            "signed_in_at": format_time(s.signed_in_at),
            "expires_at": format_time(s.expires_at),
            "csrf_token": visitor.csrf,
        }
        return JSONResponse(body)

    async def signout(request: Request, visitor: Visitor) -> Response:
        await asyncio.to_thread(web.access.end_session, visitor.cookie)
        return JSONResponse({"signed_out": 1})

    async def signout_everywhere(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        n = await asyncio.to_thread(web.access.end_all_sessions, visitor.session.member_id)
        return JSONResponse({"signed_out": n})

    def me(member_id: str) -> dict[str, Any]:
        return membership_view(web, member_id)

    def invoices_json(rows: list[dict[str, Any]]) -> Response:
        return JSONResponse({"invoices": rows})

    async def invoice(request: Request, s: MemberSession) -> Response:
        raw = request.path_params["invoice_id"]
        found = None
        if re.fullmatch(r"[0-9]{1,12}", raw):
            found = await asyncio.to_thread(web.access.invoice, s.member_id, int(raw))
        if found is None:
            return error(404, "no such invoice")
        return JSONResponse(found)

    async def not_found(request: Request) -> Response:
        return error(404, "no such route")

    return [
        ApiRoute(
            "/session",
            session,
            methods=["GET"],
            summary="The session: member id, when signed in, expiry, and the CSRF token for "
            "POST calls.",
        ),
        ApiRoute(
            "/session/signout",
            changing(signout),
            methods=["POST"],
            summary="End this session.",
        ),
        ApiRoute(
            "/session/signout-everywhere",
            changing(signout_everywhere),
            methods=["POST"],
            summary="End every session of the member (and revoke the pass key).",
        ),
        ApiRoute(
            "/me",
            member_read(web, me, JSONResponse),
            methods=["GET"],
            summary="The membership: status (with status_words), plan, paid-through, next "
            "charge, what is owed and the open invoices.",
        ),
        ApiRoute(
            "/me/invoices",
            member_read(web, web.access.invoices, invoices_json),
            methods=["GET"],
            summary="The member's invoices, newest first, itemized.",
        ),
        ApiRoute(
            "/me/invoices/{invoice_id}",
            member(invoice),
            methods=["GET"],
            summary="One of the member's invoices, itemized (404 for any other).",
        ),
        Route("/{rest:path}", not_found, include_in_schema=False),
    ]
