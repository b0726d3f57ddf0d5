"""Invoice and credit-note PDFs on the web: ``/app/invoices/<id>.pdf`` and
``/app/credit-notes/<id>.pdf`` for the signed-in member (their own documents and those of
members they pay for), ``/desk/invoices/<id>.pdf`` and ``/desk/credit-notes/<id>.pdf`` for staff
(documents issued by one of their sites; ``desk.guard`` has checked the session and the role).
Any other document is a 404 that looks exactly like one that does not exist."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gated.web.foundation import Visitor, Web
from gated.web.member import INVOICE_ID, no_such_invoice, signed_in_page

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

Pdf = tuple[str, bytes]


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
    """The member app's PDF downloads (mounted at ``/app``, before the invoice page)."""

    def download(
        fetch: Callable[[str, int], Pdf | None],
    ) -> Callable[[Request, Visitor], Awaitable[Response]]:
        async def handler(request: Request, visitor: Visitor) -> Response:
            assert visitor.session is not None
            raw = request.path_params["doc_id"]
            found = None
            if INVOICE_ID.fullmatch(raw):
                found = await asyncio.to_thread(fetch, visitor.session.member_id, int(raw))
            if found is None:
                return no_such_invoice(web, visitor)
            return pdf_response(*found)

        return handler

    billing = web.billing
    return [
        Route(
            "/invoices/{doc_id}.pdf",
            signed_in_page(web, download(billing.member_invoice_pdf)),
            methods=["GET"],
        ),
        Route(
            "/credit-notes/{doc_id}.pdf",
            signed_in_page(web, download(billing.member_credit_note_pdf)),
            methods=["GET"],
        ),
    ]


def desk_handlers(desk: Desk) -> dict[str, object]:
    """The console's PDF downloads, for ``desk.RULES`` (``invoice_pdf``, ``credit_note_pdf``)."""

    def download(
        fetch: Callable[[int, Sequence[str]], Pdf | None], param: str, what: str
    ) -> Callable[[Request, StaffVisitor, dict[str, str]], Awaitable[Response]]:
        async def handler(
            request: Request, visitor: StaffVisitor, form: dict[str, str]
        ) -> Response:
            assert visitor.session is not None
            raw = request.path_params[param]
            found = None
            if INVOICE_ID.fullmatch(raw):
                found = await asyncio.to_thread(fetch, int(raw), visitor.session.staff.sites)
            if found is None:
                return desk.message(
                    visitor, 404, f"No such {what}", f"No {what} with that number here."
                )
            return pdf_response(*found)

        return handler

    billing = desk.web.billing
    return {
        "invoice_pdf": download(billing.staff_invoice_pdf, "invoice_id", "invoice"),
        "credit_note_pdf": download(billing.staff_credit_note_pdf, "note_id", "credit note"),
    }
