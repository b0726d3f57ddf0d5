"""Member photos at the desk: taken with the browser's camera (``desk-photo.js``, where the
browser allows it) or picked as a file, posted as the image's bytes with the CSRF token in a
header, re-encoded by the billing service without metadata, and served back only to a staff
session of the member's sites, never cached (``no-store``, as every console response).
``desk.guard`` has already checked the session, the role and the CSRF header."""

from __future__ import annotations

import asyncio
import email.policy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.parser import BytesParser
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError, NotFound
from gated.http_limits import PHOTO_BYTES
from gated.web.desk_members import MEMBER_ID
from gated.web.foundation import BodyTooLarge, read_body

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

TYPES = ("image/jpeg", "image/png", "image/webp")


@dataclass(frozen=True)
class Upload:
    """A picture sent by the page's plain form (no JavaScript): its text fields (the CSRF
    token), and the file's declared type and bytes."""

    fields: dict[str, str]
    kind: str
    data: bytes


async def read_upload(request: Request) -> Upload | None:
    """The plain form's ``multipart/form-data`` body, read while streaming up to the photo
    limit (BodyTooLarge beyond) and split by the standard library's MIME parser; None for any
    other body (the camera script's raw image)."""
    kind = request.headers.get("content-type", "")
    if not kind.lower().startswith("multipart/form-data"):
        return None
    body = await read_body(request, PHOTO_BYTES)
    head = f"Content-Type: {kind}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    file_kind, data = "", b""
    parts = message.iter_parts() if message.is_multipart() else iter(())
    for part in list(parts)[:10]:
        name = str(part.get_param("name", "", header="content-disposition"))
        payload = part.get_payload(decode=True)
        payload = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is not None:
            file_kind, data = part.get_content_type(), payload
        elif name:
            fields[name] = payload[:1024].decode("utf-8", "replace")
    return Upload(fields, file_kind, data)


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
        upload: Upload | None = getattr(request.state, "upload", None)
        if upload is not None:
            return await photo_form(request, visitor, upload)
        member_id = await in_scope(request, visitor)
        if member_id is None:
            return JSONResponse({"error": "no such member"}, 404)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in TYPES:
            return JSONResponse({"error": "send a JPEG, PNG or WebP image"}, 415)
        try:
            data = await read_body(request, PHOTO_BYTES)
        except BodyTooLarge:
            return JSONResponse({"error": f"a photo is at most {PHOTO_BYTES >> 20} MiB"}, 413)
        try:
            width, height = await save(request, visitor, member_id, data)
        except NotFound:
            return JSONResponse({"error": "no such member"}, 404)
        except BillingError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"ok": True, "width": width, "height": height})

    async def photo_form(request: Request, visitor: StaffVisitor, upload: Upload) -> Response:
        """The plain form's picture: saved like the script's, then back to the member's page
        (Post/Redirect/Get) with what happened."""
        member_id = await in_scope(request, visitor)
        if member_id is None:
            return desk.message(visitor, 404, "No such member", "No member with that id here.")
        page = f"/desk/members/{member_id}"
        if not upload.data:
            return desk.redirect(visitor, page, "Not saved: choose a picture first.", error=True)
        if upload.kind.lower() not in TYPES:
            return desk.redirect(
                visitor, page, "Not saved: choose a JPEG, PNG or WebP picture.", error=True
            )
        try:
            await save(request, visitor, member_id, upload.data)
        except BillingError as exc:
            return desk.redirect(visitor, page, f"Not saved: {exc}", error=True)
        return desk.redirect(visitor, page, "Photo saved.")

    async def save(
        request: Request, visitor: StaffVisitor, member_id: str, data: bytes
    ) -> tuple[int, int]:
        """Store the photo as the staff member, in the audit log: its size, never the image."""
        assert visitor.session is not None
        staff = visitor.session.staff
        actor = Actor("staff", staff.id, staff.role, desk.web.client(request))

        def run() -> tuple[int, int]:
            with billing.audited(actor, "member_photo", member_id) as entry:
                size = billing.set_member_photo(member_id, data, staff.id)
                entry.detail.update(width=size[0], height=size[1])
            return size

        return await asyncio.to_thread(run)

    return {"photo": photo, "photo_set": photo_set}
