"""The member app's "change plan" page: the plans a member may move to, what a change costs
shown before they confirm (an upgrade now, prorated and charged to the card on file; any change
from the next renewal), and the change made by the same call as ``members change-plan``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gated.billing_sync.errors import BillingError
from gated.billing_sync.gateway import GatewayError
from gated.web.foundation import Visitor, Web
from gated.web.member import posted_form, signed_in_page

log = logging.getLogger("gated.web.plan_change")


def routes(web: Web) -> list[BaseRoute]:
    """``/plan`` (mounted at ``/app``): the form, the quote and the change."""
    billing = web.billing

    async def page(
        visitor: Visitor, plan_id: str | None, at_renewal: bool, code: int = 200
    ) -> Response:
        assert visitor.session is not None
        member_id = visitor.session.member_id
        info = await asyncio.to_thread(billing.member, member_id)
        current = info["plan"]
        choices = [
            p for p in await asyncio.to_thread(billing.plans) if p.auto_renew and p.id != current
        ]
        quote: dict[str, Any] | None = None
        refused = None
        if plan_id is not None:
            try:
                change = await asyncio.to_thread(
                    billing.plan_change_quote, member_id, plan_id, at_renewal
                )
                quote = change.as_dict()
            except BillingError as exc:
                refused = str(exc).replace("(use --at-renewal)", "(choose “from my renewal”)")
        return web.page(
            visitor,
            "plan.html",
            code if refused is None else max(code, 409),
            title="Change your plan",
            current=current,
            choices=choices,
            quote=quote,
            refused=refused,
            chosen=plan_id,
            at_renewal=at_renewal,
        )

    async def form(request: Request, visitor: Visitor) -> Response:
        plan_id = request.query_params.get("plan") or None
        at_renewal = request.query_params.get("when") == "renewal"
        return await page(visitor, plan_id, at_renewal)

    async def change(request: Request, visitor: Visitor, posted: dict[str, str]) -> Response:
        if visitor.session is None:
            return RedirectResponse("/app/signin", status_code=303)
        member_id = visitor.session.member_id
        plan_id = posted.get("plan", "")[:64]
        at_renewal = posted.get("when") == "renewal"
        try:
            made, report = await asyncio.to_thread(
                billing.change_plan, member_id, plan_id, at_renewal
            )
        except GatewayError as exc:
            log.warning("event=plan_change_failed member=%s error=%s", member_id, exc)
            return web.page(
                visitor,
                "message.html",
                503,
                title="Try again",
                text="Our payment provider could not be reached. Try again shortly.",
            )
        except BillingError:
            return await page(visitor, plan_id, at_renewal, 409)
        if made.when == "renewal":
            text = f"Your plan changes to {made.new_plan} on {made.as_dict()['effective']}."
        elif report.failed:
            text = (
                f"Your plan is now {made.new_plan}, but the card on file was declined: pay what"
                " is owed from your membership page or at the front desk."
            )
        else:
            text = f"Your plan is now {made.new_plan}."
        return web.page(visitor, "message.html", title="Plan changed", text=text)

    return [
        Route("/plan", signed_in_page(web, form), methods=["GET"]),
        Route("/plan", posted_form(web, change), methods=["POST"]),
    ]
