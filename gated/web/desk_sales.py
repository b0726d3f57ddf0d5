"""Selling at the front desk (permission ``sell``): the catalogue with its stock, a sale to a
member (charged to the card on file, or paid now in cash or on the card terminal) or to a
walk-in (paid now), and for a day or guest pass a loaner card the desk lends for the pass's
period (its UID typed or read by the keyboard-wedge reader). The sale is one call of the point
of sale, the same as ``gated-billing sell``, audited with the staff account; the answer is a
redirect to its receipt (Post/Redirect/Get) and the form's submit key makes a form sent twice
sell once. The receipt offers "open the gate once" for a walk-in without a card."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync.audit import Actor
from gated.billing_sync.engine import tax_of
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.gateway import GatewayError
from gated.billing_sync.notices import format_amount, format_day
from gated.billing_sync.products import Sale
from gated.billing_sync.submit_keys import AlreadySent, Once
from gated.web.desk_members import MEMBER_ID

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

PRODUCT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The form's ways to pay → the point of sale's method (None: charged to the card on file).
METHODS: dict[str, str | None] = {
    "account": None,
    "cash": "cash",
    "card_terminal": "card",
    "next_invoice": "next_invoice",
}


def _in_sites(site: str | None, staff_sites: tuple[str, ...] | list[str]) -> bool:
    """A product for every site, or one of the account's (an account without sites has all)."""
    return site is None or not staff_sites or site in staff_sites


def _outcome(sale: Sale) -> tuple[str, str]:
    """Where a sale's answer goes (its receipt; for a sale on the next invoice, the member's
    page, which lists what waits for it) and what the desk is told."""
    if sale.pending_line is not None:
        total = format_amount(sale.total, sale.currency)
        by = format_day(sale.bill_by) if sale.bill_by is not None else "-"
        told = (
            f"Sold on the next invoice: {total} with tax, billed with the renewal"
            f" (or alone on {by} if none has come by then)."
        )
        return f"/desk/members/{sale.member_id}", told
    told = "Sold." if sale.paid else "Sold on account: charged to the card on file."
    return f"/desk/sales/{sale.invoice_id}", told


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The sale handlers by name, for ``desk.RULES``."""
    billing = desk.web.billing
    pos = billing.point_of_sale()

    async def catalogue(visitor: StaffVisitor) -> list[dict[str, Any]]:
        """The products on sale at the account's sites, each with its price with tax."""
        assert visitor.session is not None
        sites = visitor.session.staff.sites
        return [
            {**p._asdict(), "gross": p.price + tax_of(p.price, p.tax_rate_bp)}
            for p in await asyncio.to_thread(pos.catalogue)
            if _in_sites(p.site, sites)
        ]

    async def sell_form(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        member: dict[str, Any] | None = None
        wanted = request.query_params.get("member", "")
        if wanted and MEMBER_ID.fullmatch(wanted):
            try:
                member = await asyncio.to_thread(
                    billing.desk_member, wanted, visitor.session.staff.sites
                )
            except NotFound:
                member = None
        return desk.page(
            visitor,
            "desk_sell.html",
            title="Sell",
            products=await catalogue(visitor),
            member=member,
            submit_key=desk.submit_keys.new(),
        )

    async def sell(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        key = form.get("submit_key", "")[:64]
        if not desk.submit_keys.valid(key):
            return desk.expired(visitor, "/desk/sell")
        # The key is claimed in the sale's transaction: sent twice (a double click, a form
        # resent after a restart, two serve processes), it sells once and the second is sent
        # to the first one's receipt; a refused sale leaves it free.
        once = Once(key, _outcome)
        try:
            sale = await _sell(request, visitor, form, once)
        except AlreadySent as sent:
            return desk.answer_resent(visitor, sent.claimed, "/desk/sell")
        except (BillingError, GatewayError) as exc:
            back = "/desk/sell"
            if MEMBER_ID.fullmatch(form.get("member", "")):
                back += f"?member={form['member']}"
            text = str(exc)[:300] or "The payment provider could not be reached."
            return desk.redirect(visitor, back, f"Not sold: {text}", error=True)
        return desk.redirect(visitor, *_outcome(sale))

    async def _sell(
        request: Request, visitor: StaffVisitor, form: dict[str, str], once: Once | None = None
    ) -> Any:
        """The sale the form asks for, refused (BillingError) before anything is sold where it
        names a product or member outside the account's sites."""
        assert visitor.session is not None
        staff = visitor.session.staff
        product_id = form.get("product", "")
        known = {p["id"] for p in await catalogue(visitor)}
        if not PRODUCT_ID.fullmatch(product_id) or product_id not in known:
            raise BillingError("choose a product from the list")
        quantity = form.get("quantity", "1").strip() or "1"
        if not quantity.isdigit() or len(quantity) > 3:
            raise BillingError("the quantity is a number, 1 to 100")
        if form.get("method", "") not in METHODS:
            raise BillingError("choose how it is paid")
        method = METHODS[form["method"]]
        member_id: str | None = None
        walk_in: str | None = None
        if form.get("buyer") == "walk_in":
            walk_in = form.get("walk_in", "")[:200]
            if method in (None, "next_invoice"):
                raise BillingError("a walk-in pays now: cash or the card terminal")
        else:
            member_id = form.get("member", "").strip()
            if not MEMBER_ID.fullmatch(member_id):
                raise BillingError("give the member's id (or sell to a walk-in)")
            try:
                await asyncio.to_thread(billing.desk_member, member_id, staff.sites)
            except NotFound:
                raise BillingError(f"no member {member_id} here") from None
        loaner = form.get("loaner_uid", "").strip()[:64] or None
        actor = Actor("staff", staff.id, staff.role, desk.web.client(request))
        return await asyncio.to_thread(
            pos.sell,
            actor,
            product_id,
            member_id=member_id,
            walk_in=walk_in,
            method=method,
            quantity=int(quantity),
            loaner_uid=loaner,
            once=once,
        )

    async def receipt(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        staff = visitor.session.staff
        text = request.path_params["invoice_id"]
        found = text.isdigit() and len(text) < 12
        # A renewal that took lines sold on the next invoice carries a sale for each.
        sold = await asyncio.to_thread(pos.sales_on, int(text)) if found else []
        holder = None
        if sold:
            try:
                holder = await asyncio.to_thread(
                    billing.desk_member, sold[0].member_id, staff.sites
                )
            except NotFound:
                holder = None
        if not sold or holder is None:
            return desk.message(visitor, 404, "No such sale", "No sale with that receipt here.")
        sale = sold[0]
        invoice = await asyncio.to_thread(
            billing.member_access().invoice, sale.member_id, int(sale.invoice_id)
        )
        gates = await asyncio.to_thread(billing.known_gates, staff.sites)
        return desk.page(
            visitor,
            "desk_receipt.html",
            title="Receipt",
            sale=sale,
            sold=sold,
            sold_total=sum(int(x.total) for x in sold),
            invoice=invoice,
            m=holder,
            gates=gates if sale.kind == "pass" else [],
        )

    async def api_products(
        request: Request, visitor: StaffVisitor, form: dict[str, str]
    ) -> Response:
        return JSONResponse({"products": await catalogue(visitor)})

    async def api_sell(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        try:
            sale = await _sell(request, visitor, form)
        except (BillingError, GatewayError) as exc:
            return JSONResponse({"error": str(exc)[:300] or "payment provider unreachable"}, 400)
        return JSONResponse(
            {
                "member_id": sale.member_id,
                "invoice_id": sale.invoice_id,
                "total": sale.total,
                "paid": sale.paid,
                "pass_until": sale.pass_until,
                "loaner_card": sale.loaner,
                "next_invoice": sale.pending_line is not None,
                "pending_line": sale.pending_line,
                "bill_by": sale.bill_by,
            }
        )

    return {
        "sell_form": sell_form,
        "sell": sell,
        "receipt": receipt,
        "api_products": api_products,
        "api_sell": api_sell,
    }
