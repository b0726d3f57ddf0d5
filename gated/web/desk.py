"""The staff console under ``/desk/`` and its JSON twin under ``/api/v1/staff/``: staff sign-in
(password, then TOTP for managers and owners), first-time setup, and every page behind one guard
that checks the session, the role (``gated.billing_sync.permissions``) and the CSRF token on the
server. Staff sessions have their own cookie; a member's session opens nothing here."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import segno
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gated.billing_sync import totp
from gated.billing_sync.errors import BillingError
from gated.web import (
    api_tokens,
    desk_dashboard,
    desk_erasure,
    desk_feed,
    desk_gates,
    desk_members,
    desk_photos,
    desk_sales,
    desk_staff,
    invoice_pdfs,
)
from gated.web.desk_core import Desk, StaffVisitor
from gated.web.foundation import STATIC, BodyTooLarge, Web, read_form
from gated.web.openapi import ApiRoute
from gated.web.security import csrf_token

log = logging.getLogger("gated.web.desk")

_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{32,64}")
STAFF_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
AUDIT_PAGE = 100
AUDIT_EXPORT = 100_000
AUDIT_COLUMNS = (
    "id",
    "at",
    "actor_kind",
    "actor",
    "role",
    "action",
    "member_id",
    "address",
    "changes",
    "detail",
)


class Rule(NamedTuple):
    """One guarded route: the permission it needs (None: any signed-in staff member). A ``raw``
    POST's body is not a form (a photo): the guard checks its CSRF header and leaves the body
    to the handler."""

    method: str
    path: str
    action: str | None
    handler: str
    raw: bool = False


# Every guarded console page and staff API call with the action it needs: the guard enforces
# it, and the tests try each one with every role, without a session and with a member's.
def _member_actions(prefix: str, handler: str) -> list[Rule]:
    return [
        Rule("POST", f"{prefix}/members/{{member_id}}/{segment}", a[0], f"{handler}{key}")
        for segment, a in desk_members.ACTIONS.items()
        for key in [segment.replace("/", "_")]
    ]


def _staff_rules(prefix: str, handler: str) -> list[Rule]:
    return [
        Rule("GET", prefix, "manage_staff", f"{handler}staff"),
        Rule("POST", prefix, "manage_staff", f"{handler}staff_add"),
        *(
            Rule("POST", f"{prefix}/{{staff_id}}/{kind}", "manage_staff", f"{handler}staff_{kind}")
            for kind in ("role", "disable", "reset")
        ),
    ]


RULES: list[Rule] = [
    Rule("GET", "/desk/", "view_members", "home"),
    Rule("GET", "/desk/members/{member_id}", "view_members", "member"),
    Rule("GET", "/desk/invoices/{invoice_id}.pdf", "view_members", "invoice_pdf"),
    Rule("GET", "/desk/credit-notes/{note_id}.pdf", "view_members", "credit_note_pdf"),
    *_member_actions("/desk", "act_"),
    Rule("GET", "/desk/members/{member_id}/photo", "view_members", "photo"),
    Rule("POST", "/desk/members/{member_id}/photo", "take_photo", "photo_set", raw=True),
    Rule("GET", "/desk/sell", "sell", "sell_form"),
    Rule("POST", "/desk/sell", "sell", "sell"),
    Rule("GET", "/desk/sales/{invoice_id}", "sell", "receipt"),
    Rule("GET", "/desk/feed", "view_members", "feed"),
    Rule("GET", "/desk/feed/events", "view_members", "feed_events"),
    Rule("POST", "/desk/gates/let-in", "let_in_once", "let_in"),
    Rule("GET", "/desk/gates", "view_members", "gates"),
    Rule("POST", "/desk/gates/lockdown", "lockdown", "lockdown"),
    Rule("GET", "/desk/occupancy", "view_members", "occupancy"),
    Rule("GET", "/desk/dashboard", "view_revenue", "dashboard"),
    Rule("GET", "/desk/dashboard/{report}.csv", "view_revenue", "dashboard_csv"),
    Rule("POST", "/desk/signout", None, "signout"),
    Rule("GET", "/desk/erasure", "erase_members", "erasure"),
    Rule("POST", "/desk/erasure/{member_id}/erase", "erase_members", "erasure_erase"),
    Rule("POST", "/desk/erasure/{member_id}/refuse", "erase_members", "erasure_refuse"),
    Rule("GET", "/desk/audit", "view_audit", "audit"),
    Rule("GET", "/desk/audit.csv", "view_audit", "audit_csv"),
    *_staff_rules("/desk/staff", ""),
    *_staff_rules("/api/v1/staff/accounts", "api_"),
    Rule("GET", "/desk/tokens", "manage_api_tokens", "tokens"),
    Rule("POST", "/desk/tokens", "manage_api_tokens", "token_create"),
    Rule("POST", "/desk/tokens/{token_id}/revoke", "manage_api_tokens", "token_revoke"),
    Rule("GET", "/api/v1/staff/tokens", "manage_api_tokens", "api_tokens"),
    Rule("GET", "/api/v1/staff/session", None, "api_session"),
    Rule("GET", "/api/v1/staff/members", "view_members", "api_search"),
    Rule("GET", "/api/v1/staff/members/{member_id}", "view_members", "api_member"),
    *_member_actions("/api/v1/staff", "api_act_"),
    Rule("GET", "/api/v1/staff/audit", "view_audit", "api_audit"),
    Rule("GET", "/api/v1/staff/products", "sell", "api_products"),
    Rule("POST", "/api/v1/staff/sales", "sell", "api_sell"),
    Rule("GET", "/api/v1/staff/erasure-requests", "erase_members", "api_erasure"),
    Rule("POST", "/api/v1/staff/erasure/{member_id}/erase", "erase_members", "api_erasure_erase"),
    Rule("POST", "/api/v1/staff/erasure/{member_id}/refuse", "erase_members", "api_erasure_refuse"),
    Rule("GET", "/api/v1/staff/gates", "view_members", "api_gates"),
    Rule("POST", "/api/v1/staff/gates/lockdown", "lockdown", "api_lockdown"),
    Rule("GET", "/api/v1/staff/occupancy", "view_members", "api_occupancy"),
    Rule("GET", "/api/v1/staff/dashboard", "view_revenue", "api_dashboard"),
]


# What openapi.json says of each staff API route (a member action's comes from its rule).
STAFF_API = {
    "api_tokens": "The API tokens on the sites this staff member acts on (never their secrets).",
    "api_staff": "The staff accounts this owner reaches.",
    "api_staff_add": "Add a staff account with a role and sites; answers its one-time password.",
    "api_staff_role": "Change a staff account's role and sites.",
    "api_staff_disable": "Disable a staff account.",
    "api_staff_reset": "Reset a staff account: a new one-time password, the second factor again.",
    "api_session": "The session: staff id, name, role, sites, expiry and the CSRF token.",
    "api_search": "Members matching q (a card UID, a member id, part of a name, e-mail or phone), 25 by name at a time: `after` = the last id of the page before.",
    "api_member": "One member as the front desk sees it.",
    "api_audit": "The audit log, newest first (member=ID, before=ROW for older pages).",
    "api_products": "The products on sale at this staff member's sites, with stock and price.",
    "api_sell": "Sell a product or a pass (form fields as the sale form's; no submit key).",
    "api_erasure": "Members' open requests for erasure at this staff member's sites.",
    "api_erasure_erase": "Carry out a member's open request for erasure (confirm=yes).",
    "api_erasure_refuse": "Refuse a member's open request for erasure with a reason.",
    "api_gates": "Every gate's health: its retained status beside its site's manifest.",
    "api_lockdown": "Lock a site down (site, state=on) or lift it (state=off), form fields.",
    "api_occupancy": "People inside (or entries) today per site.",
    "api_dashboard": "Every dashboard report as JSON (from=YYYY-MM, to=YYYY-MM).",
}


def _action_summary(rule: Rule) -> str:
    """A member action's summary: what it does and the permission it needs ("" for any other
    route, which needs its own entry in STAFF_API: openapi.json shows it without one)."""
    if "{member_id}/" not in rule.path:
        return ""
    segment = rule.path.rsplit("{member_id}/", 1)[-1]
    return f"Member action {segment!r} (needs {rule.action})."


Handler = Callable[[Request, StaffVisitor, dict[str, str]], Awaitable[Response]]


def guard(desk: Desk, rule: Rule, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The one check every console route goes through: a full staff session (else the sign-in
    page, or 401 for the API), the role's permission for the rule's action (else 403), and for
    a POST the body limit and this browser's CSRF token (else 413 or 403)."""
    api = rule.path.startswith("/api/")

    async def endpoint(request: Request) -> Response:
        visitor = await desk.visitor(request)
        if api and "authorization" in request.headers:
            # An integrator's API token: read routes only, checked below like a session.
            by_token = await api_tokens.bearer(desk, request, rule.method)
            if isinstance(by_token, Response):
                return by_token
            visitor = by_token
        session = visitor.session
        if session is None or session.setup_only:
            if api:
                return JSONResponse({"error": "sign in first"}, 401)
            return RedirectResponse("/desk/setup" if session else "/desk/signin", status_code=303)
        if rule.action is not None and not session.staff.may(rule.action):
            log.warning(
                "event=desk_forbidden staff=%s role=%s action=%s",
                session.staff.id,
                session.staff.role,
                rule.action,
            )
            if api:
                return JSONResponse({"error": "your role may not do this"}, 403)
            return desk.message(visitor, 403, "Not allowed", "Your role may not do this.")
        form: dict[str, str] = {}
        if rule.raw:
            # The page's plain upload form carries its token as a field; a script's raw body
            # in the header.
            try:
                request.state.upload = await desk_photos.read_upload(request)
            except BodyTooLarge:
                return desk.message(visitor, 413, "Too much data", "That picture was too large.")
            if request.state.upload is not None:
                form = request.state.upload.fields
            if not desk.csrf_valid(request, visitor, form):
                log.warning("event=csrf_refused path=%s", request.url.path)
                return JSONResponse({"error": "missing or wrong CSRF token"}, 403)
        elif rule.method == "POST":
            posted = await _posted(desk, request, visitor, api)
            if isinstance(posted, Response):
                return posted
            form = posted
        return await handler(request, visitor, form)

    return endpoint


async def _posted(
    desk: Desk, request: Request, visitor: StaffVisitor, api: bool = False
) -> dict[str, str] | Response:
    """A POST's form, or the response refusing it: 413 for a body over the form limit, 403
    without this browser's CSRF token (the staff API's in JSON)."""
    try:
        form = await read_form(request)
    except BodyTooLarge:
        return desk.message(visitor, 413, "Too much data", "That form was too large.")
    if not desk.csrf_valid(request, visitor, form):
        log.warning("event=csrf_refused path=%s", request.url.path)
        if api:
            return JSONResponse({"error": "missing or wrong CSRF token"}, 403)
        return desk.message(
            visitor,
            403,
            "Please try again",
            "This form had expired. Open the page again and resend it.",
        )
    return form


def roots(web: Web) -> list[tuple[str, list[BaseRoute]]]:
    """The console (``/desk``) and the staff API (``/api/v1/staff``), for ``web_routes``."""
    desk = Desk(web)
    handlers = _handlers(desk)
    pages: list[BaseRoute] = [
        Route("/signin", handlers["signin_form"], methods=["GET"]),
        Route("/signin", handlers["signin"], methods=["POST"]),
        Route("/setup", handlers["setup_form"], methods=["GET"]),
        Route("/setup", handlers["setup"], methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    api: list[BaseRoute] = []
    for rule in RULES:
        endpoint = guard(desk, rule, handlers[rule.handler])
        if rule.path.startswith("/desk/"):
            pages.append(Route(rule.path[len("/desk") :], endpoint, methods=[rule.method]))
        else:
            path = rule.path[len("/api/v1/staff") :]
            summary = STAFF_API.get(rule.handler) or _action_summary(rule)
            api.append(
                ApiRoute(path, endpoint, methods=[rule.method], summary=summary, auth="staff")
            )
    return [("/desk", pages), ("/api/v1/staff", api)]


def _handlers(desk: Desk) -> dict[str, Any]:
    web = desk.web
    access = desk.access

    async def signin_form(request: Request) -> Response:
        visitor = await desk.visitor(request)
        if visitor.session is not None and not visitor.session.setup_only:
            return RedirectResponse("/desk/", status_code=303)
        return desk.page(visitor, "desk_signin.html", title="Staff sign-in")

    async def signin(request: Request) -> Response:
        visitor = await desk.visitor(request)
        posted = await _posted(desk, request, visitor)
        if isinstance(posted, Response):
            return posted
        form = posted
        staff_id = form.get("staff_id", "").strip()
        password = form.get("password", "")
        code = form.get("code", "")
        client = web.client(request)
        wait = max(desk.per_account.wait(staff_id.lower()), desk.per_client.wait(client))
        if wait > 0:
            response = desk.page(
                visitor,
                "desk_signin.html",
                429,
                title="Staff sign-in",
                staff_id=staff_id[:64],
                error=f"Too many failed sign-ins. Wait {int(wait) + 1} seconds and try again.",
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        staff = None
        if STAFF_ID.fullmatch(staff_id) and 0 < len(password) <= 1024:
            staff = await asyncio.to_thread(access.check_password, staff_id, password)
        if (
            staff is not None
            and staff.totp_enrolled
            and not await asyncio.to_thread(access.check_second_factor, staff.id, code[:32])
        ):
            staff = None
        if staff is None:
            desk.per_account.failed(staff_id.lower())
            desk.per_client.failed(client)
            log.warning("event=staff_signin_failed client=%s", client)
            return desk.page(
                visitor,
                "desk_signin.html",
                400,
                title="Staff sign-in",
                staff_id=staff_id[:64],
                error="The name, password or code is wrong.",
            )
        desk.per_account.succeeded(staff_id.lower())
        desk.per_client.succeeded(client)
        token = await asyncio.to_thread(
            access.open_session,
            staff.id,
            request.headers.get("user-agent", ""),
            client,
            setup_only=staff.needs_setup,
        )
        # A new token replaces whatever cookie the browser had (no session fixation).
        opened = RedirectResponse("/desk/setup" if staff.needs_setup else "/desk/", status_code=303)
        desk.set_cookie(opened, token)
        return opened

    async def setup_form(request: Request) -> Response:
        visitor = await desk.visitor(request)
        if visitor.session is None:
            return RedirectResponse("/desk/signin", status_code=303)
        if not visitor.session.setup_only:
            return RedirectResponse("/desk/", status_code=303)
        return await _setup_page(visitor, 200)

    async def _setup_page(visitor: StaffVisitor, status: int, error: str = "") -> Response:
        assert visitor.session is not None
        staff = visitor.session.staff
        qr = key = None
        if staff.needs_totp and not staff.totp_enrolled:
            seed = await asyncio.to_thread(access.totp_pending, staff.id)
            uri = totp.provisioning_uri(seed, staff.id, "gated")
            qr = segno.make(uri, error="m").svg_data_uri(scale=4, dark="#000", light="#fff")
            key = " ".join(re.findall(".{1,4}", totp.b32(seed)))
        return desk.page(
            visitor,
            "desk_setup.html",
            status,
            title="Set up your account",
            who=staff,
            qr=qr,
            key=key,
            error=error,
        )

    async def setup(request: Request) -> Response:
        visitor = await desk.visitor(request)
        session = visitor.session
        if session is None:
            return RedirectResponse("/desk/signin", status_code=303)
        if not session.setup_only:
            return RedirectResponse("/desk/", status_code=303)
        posted = await _posted(desk, request, visitor)
        if isinstance(posted, Response):
            return posted
        form = posted
        staff = session.staff
        if staff.must_change_password:
            new = form.get("password", "")
            if new != form.get("password2", ""):
                return await _setup_page(visitor, 400, "The two passwords differ.")
            try:
                await asyncio.to_thread(access.set_password, staff.id, new)
            except BillingError as exc:
                return await _setup_page(visitor, 400, str(exc) + ".")
        recovery: list[str] | None = None
        if staff.needs_totp and not staff.totp_enrolled:
            recovery = await asyncio.to_thread(
                access.totp_confirm, staff.id, form.get("code", "")[:32]
            )
            if recovery is None:
                return await _setup_page(
                    visitor, 400, "That code is wrong. Type the code your app shows now."
                )
        # Setup done: the setup session ends and a full one replaces it.
        await asyncio.to_thread(access.end_session, visitor.cookie)
        token = await asyncio.to_thread(
            access.open_session,
            staff.id,
            request.headers.get("user-agent", ""),
            web.client(request),
        )
        if recovery:
            full = StaffVisitor(token, False, None, csrf_token(desk.csrf_key, token))
            response: Response = desk.page(
                full, "desk_recovery.html", title="Your recovery codes", codes=recovery
            )
        else:
            response = RedirectResponse("/desk/", status_code=303)
        desk.set_cookie(response, token)
        return response

    async def signout(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        await asyncio.to_thread(access.end_session, visitor.cookie)
        response = RedirectResponse("/desk/signin", status_code=303)
        response.delete_cookie(desk.cookie, path="/", secure=web.https, httponly=True)
        return response

    async def api_session(
        request: Request, visitor: StaffVisitor, form: dict[str, str]
    ) -> Response:
        assert visitor.session is not None
        staff = visitor.session.staff
        return JSONResponse(
            {
                "staff_id": staff.id,
                "name": staff.name,
                "role": staff.role,
                "sites": list(staff.sites),
                "expires_at": visitor.session.expires_at,
                "csrf": visitor.csrf,
            }
        )

    def _audit_query(request: Request) -> tuple[str | None, int | None]:
        member = request.query_params.get("member") or None
        before = request.query_params.get("before", "")
        if member is not None and not STAFF_ID.fullmatch(member):
            member = "-"  # matches nothing
        return member, int(before) if before.isdigit() and len(before) < 12 else None

    async def audit(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        member, before = _audit_query(request)
        rows = await asyncio.to_thread(
            web.billing.audit_entries, member_id=member, limit=AUDIT_PAGE, before_id=before
        )
        older = rows[-1]["id"] if len(rows) == AUDIT_PAGE else None
        return desk.page(
            visitor, "desk_audit.html", title="Audit log", rows=rows, member=member, older=older
        )

    async def audit_csv(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        member, _ = _audit_query(request)
        rows = await asyncio.to_thread(
            web.billing.audit_entries, member_id=member, limit=AUDIT_EXPORT
        )
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(AUDIT_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    *(row[c] for c in AUDIT_COLUMNS[:-2]),
                    json.dumps(row["changes"], sort_keys=True),
                    json.dumps(row["detail"], sort_keys=True),
                ]
            )
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="audit.csv"'},
        )

    async def api_audit(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        member, before = _audit_query(request)
        rows = await asyncio.to_thread(
            web.billing.audit_entries, member_id=member, limit=AUDIT_PAGE, before_id=before
        )
        return JSONResponse({"entries": rows})

    return {
        "audit": audit,
        "audit_csv": audit_csv,
        "api_audit": api_audit,
        "signin_form": signin_form,
        "signin": signin,
        "setup_form": setup_form,
        "setup": setup,
        "signout": signout,
        **desk_members.handlers(desk),
        **desk_feed.handlers(desk),
        **desk_gates.handlers(desk),
        **desk_dashboard.handlers(desk),
        **invoice_pdfs.desk_handlers(desk),
        **desk_staff.handlers(desk),
        **desk_photos.handlers(desk),
        **desk_sales.handlers(desk),
        **desk_erasure.handlers(desk),
        **api_tokens.handlers(desk),
        "api_session": api_session,
    }
