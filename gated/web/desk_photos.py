"""Member photos at the desk: taken with the browser's camera (``desk-photo.js``, where the
browser allows it) or picked as a file, posted as the image's bytes with the CSRF token in a
header, re-encoded by the billing service without metadata, and served back only to a staff
session of the member's sites, never cached (``no-store``, as every console response).
``desk.guard`` has already checked the session, the role and the CSRF header."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError, NotFound
from gated.http_limits import PHOTO_BYTES
from gated.web.desk_members import MEMBER_ID

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

TYPES = ("image/jpeg", "image/png", "image/webp")


class _TooLarge(Exception):
    pass


async def _body(request: Request) -> bytes:
    """The request body, refused as soon as it passes the photo limit (chunked ones too)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > PHOTO_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The photo handlers by name, for ``desk.RULES``."""
    billing = desk.web.billing

    async def in_scope(request: Request, visitor: StaffVisitor) -> str | None:
        """The path's member id, when it names a member of this account's sites."""
        assert visitor.session is not None
        member_id = request.path_params["member_id"]
        if not MEMBER_ID.fullmatch(member_id):
            return None
        try:
            await asyncio.to_thread(billing.desk_member, member_id, visitor.session.staff.sites)
        except NotFound:
            return None
        return str(member_id)

    async def photo(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        member_id = await in_scope(request, visitor)
        jpeg = await asyncio.to_thread(billing.member_photo, member_id) if member_id else None
        if jpeg is None:
            return Response("no photo", 404, media_type="text/plain")
        return Response(jpeg, media_type="image/jpeg")

    async def photo_set(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        member_id = await in_scope(request, visitor)
        if member_id is None:
            return JSONResponse({"error": "no such member"}, 404)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in TYPES:
            return JSONResponse({"error": "send a JPEG, PNG or WebP image"}, 415)
        try:
            data = await _body(request)
        except _TooLarge:
            return JSONResponse({"error": f"a photo is at most {PHOTO_BYTES >> 20} MiB"}, 413)
        staff = visitor.session.staff
        actor = Actor("staff", staff.id, staff.role, desk.web.client(request))

        def run() -> tuple[int, int]:
            with billing.audited(actor, "member_photo", member_id) as entry:
                size = billing.set_member_photo(member_id, data, staff.id)
                entry.detail.update(width=size[0], height=size[1])
            return size

        try:
            width, height = await asyncio.to_thread(run)
        except NotFound:
            return JSONResponse({"error": "no such member"}, 404)
        except BillingError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"ok": True, "width": width, "height": height})

    return {"photo": photo, "photo_set": photo_set}
