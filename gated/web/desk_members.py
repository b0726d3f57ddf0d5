"""The front desk's member pages: search (a keyboard-wedge reader types a card's UID into the
box), one member's page, and the actions on it, each through the billing facade and recorded in
the audit log. ``desk.guard`` has already checked the session, the role and the CSRF token; here
each member is checked against the account's sites (outside them: 404, like no member)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gated.billing_sync.audit import Actor, Entry
from gated.billing_sync.engine import FreezeRefused
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import GatewayError
from gated.contract import ContractError
from gated.web import desk_money
from gated.web.desk_money import Action, amount

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

MEMBER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _take_payment(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str | None:
    reference = form.get("reference", "").strip()[:128] or None
    paid = billing.record_payment(
        member_id, amount(form.get("amount", "")), "front_desk", reference
    )
    entry.detail.update(amount=paid, method="front_desk")
    return None


def _freeze(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str | None:
    months = form.get("months", "1")
    if months not in ("1", "2", "3"):
        raise BillingError("a freeze is 1, 2 or 3 months")
    billing.freeze(member_id, int(months))
    entry.detail.update(months=int(months))
    return None


def _unfreeze(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str | None:
    billing.unfreeze(member_id)
    return None


def _cancel(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str | None:
    entry.detail.update(cancel_at=billing.cancel(member_id))
    return None


def _assign_card(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str | None:
    billing.assign_card(member_id, form.get("uid", "")[:64])
    return None


def _revoke_card(billing: Any, member_id: str, form: dict[str, str], entry: Entry) -> str | None:
    card = form.get("card", "")
    if not card.isdigit() or len(card) > 12:
        raise NotFound("no such card")
    billing.revoke_card_by_id(member_id, int(card))
    entry.detail.update(card=int(card))
    return None


# path segment → (permission, audit action, what it does, what the desk is told after)
ACTIONS: dict[str, tuple[str, str, Action, str]] = {
    "payment": ("take_payment", "take_payment", _take_payment, "Payment recorded."),
    "freeze": ("freeze", "freeze", _freeze, "Membership frozen."),
    "unfreeze": ("freeze", "unfreeze", _unfreeze, "Freeze ended."),
    "cancel": ("cancel", "cancel", _cancel, "Membership cancelled."),
    "cards": ("assign_card", "assign_card", _assign_card, "Card assigned."),
    "cards/revoke": ("revoke_card", "revoke_card", _revoke_card, "Card revoked."),
    **desk_money.ACTIONS,
}
# Actions whose form carries a submit key: sent twice (a double click, a resent form), they act once.
ONCE = frozenset({"payment", "refund", "credit", "write-off", "plan", "payment-plan"})


def _after(request: Request) -> str | None:
    """The ``after`` of a search's next page: the last member id of the page before."""
    after = request.query_params.get("after", "")
    return after if MEMBER_ID.fullmatch(after) else None


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The member handlers by name, for ``desk.RULES``."""
    billing = desk.web.billing

    async def home(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        staff = visitor.session.staff
        query = request.query_params.get("q", "").strip()[:200]
        after = _after(request)
        found = await asyncio.to_thread(billing.search_members, query, staff.sites, after)
        if len(found.members) == 1 and query and not found.more and after is None:
            # One hit (a card held to the reader, typically): straight to the member.
            return RedirectResponse(f"/desk/members/{found.members[0]['id']}", status_code=303)
        return desk.page(
            visitor,
            "desk_home.html",
            title="Front desk",
            q=query,
            found=found.members,
            more=found.more,
            paged=after is not None,
        )

    async def member(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        staff = visitor.session.staff
        m = await _member(request, visitor)
        if m is None:
            return desk.message(visitor, 404, "No such member", "No member with that id here.")
        gates = await asyncio.to_thread(billing.known_gates, staff.sites)
        money = await asyncio.to_thread(
            desk_money.page_part, billing, staff, m, dict(request.query_params)
        )
        waiting = await asyncio.to_thread(billing.point_of_sale().waiting, m["member_id"])
        return desk.page(
            visitor,
            "desk_member.html",
            title="Member",
            m=m,
            gates=gates,
            submit_key=desk.submit_keys.new(),
            next_invoice=waiting,
            **money,
        )

    async def _member(request: Request, visitor: StaffVisitor) -> dict[str, Any] | None:
        assert visitor.session is not None
        member_id = request.path_params["member_id"]
        if not MEMBER_ID.fullmatch(member_id):
            return None
        try:
            return dict(
                await asyncio.to_thread(billing.desk_member, member_id, visitor.session.staff.sites)
            )
        except NotFound:
            return None

    def act(segment: str, api: bool) -> Callable[..., Awaitable[Response]]:
        _, audit_action, action, said = ACTIONS[segment]
        once = segment in ONCE and not api

        async def endpoint(
            request: Request, visitor: StaffVisitor, form: dict[str, str]
        ) -> Response:
            assert visitor.session is not None
            staff = visitor.session.staff
            m = await _member(request, visitor)
            if m is None:
                if api:
                    return JSONResponse({"error": "no such member"}, 404)
                return desk.message(visitor, 404, "No such member", "No member with that id here.")
            page = f"/desk/members/{m['member_id']}"
            key = form.get("submit_key", "")[:64]
            if once and (again := await desk.resent(visitor, key, page)) is not None:
                return again
            actor = Actor("staff", staff.id, staff.role, desk.web.client(request))

            def run() -> str | None:
                with billing.audited(actor, audit_action, m["member_id"]) as entry:
                    return action(billing, m["member_id"], form, entry)

            try:
                told = await asyncio.to_thread(run)
            except (BillingError, FreezeRefused, ContractError, GatewayError) as exc:
                if once:
                    await desk.form_failed(key)
                text = str(exc)[:300] or "The payment provider could not be reached."
                if api:
                    return JSONResponse({"error": text}, 400)
                return desk.redirect(visitor, page, f"Not done: {text}", error=True)
            if once:
                await desk.form_done(key, page, told or said)
            if api:
                return JSONResponse({"ok": True, "member": await _member(request, visitor)})
            return desk.redirect(visitor, page, told or said)

        return endpoint

    async def api_search(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        query = request.query_params.get("q", "")
        found = await asyncio.to_thread(
            billing.search_members, query, visitor.session.staff.sites, _after(request)
        )
        last = found.members[-1]["id"] if found.more else None
        return JSONResponse({"members": found.members, "more": found.more, "next_after": last})

    async def api_member(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        m = await _member(request, visitor)
        if m is None:
            return JSONResponse({"error": "no such member"}, 404)
        waiting = await asyncio.to_thread(billing.point_of_sale().waiting, m["member_id"])
        return JSONResponse({**m, "next_invoice": waiting})

    named: dict[str, Callable[..., Awaitable[Response]]] = {
        "home": home,
        "member": member,
        "api_search": api_search,
        "api_member": api_member,
    }
    for segment in ACTIONS:
        key = segment.replace("/", "_")
        named[f"act_{key}"] = act(segment, api=False)
        named[f"api_act_{key}"] = act(segment, api=True)
    return named
