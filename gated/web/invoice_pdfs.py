"""Invoice PDFs on the web: ``/app/invoices/<id>.pdf`` for the signed-in member (their own
invoices and those of members they pay for) and ``/desk/invoices/<id>.pdf`` for staff (invoices
issued by one of their sites; ``desk.guard`` has checked the session and the role). Any other
invoice is a 404 that looks exactly like one that does not exist."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gated.web.foundation import Visitor, Web
from gated.web.member import INVOICE_ID, no_such_invoice, signed_in_page

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor


def pdf_response(name: str, pdf: bytes) -> Response:
    """A PDF to save, never kept by a shared cache (it names a member)."""
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "content-disposition": f'attachment; filename="{name}"',
            "cache-control": "private, no-store",
        },
    )


def member_routes(web: Web) -> list[BaseRoute]:
    """The member app's PDF download (mounted at ``/app``, before the invoice page)."""

    async def download(request: Request, visitor: Visitor) -> Response:
        assert visitor.session is not None
        raw = request.path_params["invoice_id"]
        found = None
        if INVOICE_ID.fullmatch(raw):
            found = await asyncio.to_thread(
                web.billing.member_invoice_pdf, visitor.session.member_id, int(raw)
            )
        if found is None:
            return no_such_invoice(web, visitor)
        return pdf_response(*found)

    return [Route("/invoices/{invoice_id}.pdf", signed_in_page(web, download), methods=["GET"])]


def desk_handlers(desk: Desk) -> dict[str, object]:
    """The console's PDF download, for ``desk.RULES`` (``invoice_pdf``)."""

    async def invoice_pdf(
        request: Request, visitor: StaffVisitor, form: dict[str, str]
    ) -> Response:
        assert visitor.session is not None
        raw = request.path_params["invoice_id"]
        found = None
        if INVOICE_ID.fullmatch(raw):
            found = await asyncio.to_thread(
                desk.web.billing.staff_invoice_pdf, int(raw), visitor.session.staff.sites
            )
        if found is None:
            return desk.message(
                visitor, 404, "No such invoice", "No invoice with that number here."
            )
        return pdf_response(*found)

    return {"invoice_pdf": invoice_pdf}
