"""Members' requests for erasure in the console (owners: ``erase_members``): the requests
still open at the account's sites, oldest first, each carried out with the billing service's
erasure (``gated-billing members erase``: personal data, cards and photo gone, the gates sent
the signed tombstone) or refused with a reason the member reads in their data. Both are rows
of the audit log; each answer is a redirect back to the list with what was done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError, NotFound
from gated.web.desk_members import MEMBER_ID

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

PAGE = "/desk/erasure"


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The erasure handlers by name, for ``desk.RULES``."""
    billing = desk.web.billing
    data = billing.member_data()

    def waiting(sites: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
        """The open requests of members at ``sites``, each with the member's name and status."""
        out = []
        for request in data.erasure_requests():
            try:
                m = billing.desk_member(request["member_id"], sites)
            except NotFound:
                continue
            out.append(
                {
                    **request,
                    "name": m["name"],
                    "status": m["status"],
                    "owed": m["owed"],
                    "currency": m["currency"],
                }
            )
        return out

    async def page(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        rows = await asyncio.to_thread(waiting, visitor.session.staff.sites)
        return desk.page(visitor, "desk_erasure.html", title="Erasure requests", rows=rows)

    async def api_list(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        rows = await asyncio.to_thread(waiting, visitor.session.staff.sites)
        return JSONResponse({"requests": rows})

    def act(kind: str, api: bool = False) -> Callable[..., Awaitable[Response]]:
        async def endpoint(
            request: Request, visitor: StaffVisitor, form: dict[str, str]
        ) -> Response:
            assert visitor.session is not None
            staff = visitor.session.staff
            member_id = request.path_params["member_id"]
            rows = await asyncio.to_thread(waiting, staff.sites)
            if not MEMBER_ID.fullmatch(member_id) or member_id not in {
                r["member_id"] for r in rows
            }:
                if api:
                    return JSONResponse({"error": "no open request for erasure"}, 404)
                return desk.redirect(
                    visitor, PAGE, "No open request for erasure of that member here.", True
                )
            actor = Actor("staff", staff.id, staff.role, desk.web.client(request))

            def erase() -> str:
                if form.get("confirm") != "yes":
                    raise BillingError("tick the box to confirm the erasure")
                with billing.audited(actor, "erase", member_id):
                    billing.erase(member_id)
                return f"Member {member_id} erased."

            def refuse() -> str:
                data.refuse_erasure(member_id, actor, form.get("reason", ""))
                return f"The request of member {member_id} is refused; they see the reason."

            try:
                told = await asyncio.to_thread(erase if kind == "erase" else refuse)
            except BillingError as exc:
                if api:
                    return JSONResponse({"error": str(exc)}, 400)
                return desk.redirect(visitor, PAGE, f"Not done: {exc}", error=True)
            if api:
                return JSONResponse({"ok": True, "member_id": member_id})
            return desk.redirect(visitor, PAGE, told)

        return endpoint

    return {
        "erasure": page,
        "erasure_erase": act("erase"),
        "erasure_refuse": act("refuse"),
        "api_erasure": api_list,
        "api_erasure_erase": act("erase", api=True),
        "api_erasure_refuse": act("refuse", api=True),
    }
