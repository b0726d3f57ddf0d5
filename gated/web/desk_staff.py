"""Owners manage staff in the console: the accounts they reach, a new account with a role and
sites, a changed role, a disabled account, and a reset (a new one-time password and the second
factor enrolled again). Each is recorded in the audit log; the last enabled owner is never
removed (``StaffAccess``). ``desk.guard`` has already checked the session, the ``manage_staff``
permission and the CSRF token; here an owner scoped to some sites acts only on accounts, and
grants only sites, within them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError, NotFound
from gated.billing_sync.permissions import ROLES
from gated.billing_sync.staff import ALL_SITES, StaffMember
from gated.contract import MEMBER_ID_RE

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

DONE = {
    "role": "Role changed.",
    "disable": "Account disabled.",
}


def _account(a: StaffMember) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "role": a.role,
        "sites": list(a.sites),
        "totp_enrolled": a.totp_enrolled,
        "state": "disabled" if a.disabled else ("setup" if a.needs_setup else "active"),
        "created_at": a.created_at,
    }


def _sites(form: dict[str, str]) -> list[str]:
    """The sites a form names (space or comma separated; empty: all)."""
    return [s for s in form.get("sites", "").replace(",", " ").split() if s][:50]


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The staff-management handlers by name, for ``desk.RULES``."""
    billing = desk.web.billing
    access = desk.access

    def me(visitor: StaffVisitor) -> StaffMember:
        assert visitor.session is not None
        return visitor.session.staff

    def reachable(visitor: StaffVisitor) -> list[StaffMember]:
        return [a for a in access.accounts() if access.covers_all(me(visitor), a.sites)]

    async def page(
        visitor: StaffVisitor, status: int = 200, error: str = "", **extra: Any
    ) -> Response:
        accounts = await asyncio.to_thread(reachable, visitor)
        return desk.page(
            visitor,
            "desk_staff.html",
            status,
            title="Staff",
            accounts=[_account(a) for a in accounts],
            roles=ROLES,
            sites=billing.config.sites,
            error=error,
            **extra,
        )

    async def staff_list(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        return await page(visitor)

    async def api_staff_list(
        request: Request, visitor: StaffVisitor, form: dict[str, str]
    ) -> Response:
        accounts = await asyncio.to_thread(reachable, visitor)
        return JSONResponse({"accounts": [_account(a) for a in accounts]})

    def run(
        request: Request, visitor: StaffVisitor, action: str, work: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """``work`` inside an audit entry naming this owner; returns what ``work`` returned."""
        who = me(visitor)
        actor = Actor("staff", who.id, who.role, desk.web.client(request))
        with billing.audited(actor, action, None) as entry:
            result = work()
            entry.detail.update(result.get("audit", {}))
        return result

    def target(visitor: StaffVisitor, staff_id: str) -> StaffMember:
        """An account this owner may act on; NotFound otherwise (like no account)."""
        if not MEMBER_ID_RE.match(staff_id):
            raise NotFound("no such staff account")
        account = access.get(staff_id)
        if not access.covers_all(me(visitor), account.sites):
            raise NotFound("no such staff account")
        return account

    def granted(visitor: StaffVisitor, form: dict[str, str]) -> list[str]:
        sites = _sites(form) or [ALL_SITES]
        if not access.covers_all(me(visitor), sites):
            raise BillingError("you may only grant the sites you act on")
        return sites

    def act(kind: str, api: bool) -> Callable[..., Awaitable[Response]]:
        async def endpoint(
            request: Request, visitor: StaffVisitor, form: dict[str, str]
        ) -> Response:
            staff_id = request.path_params.get("staff_id", form.get("staff_id", "").strip())

            def work() -> dict[str, Any]:
                if kind == "add":
                    role = form.get("role", "")
                    sites = granted(visitor, form)
                    name = form.get("name", "").strip()[:100]
                    password = access.add(staff_id, name, role, sites, None)
                    return {
                        "password": password,
                        "audit": {"staff": staff_id, "role": role, "sites": sites},
                    }
                account = target(visitor, staff_id)
                if kind == "role":
                    role = form.get("role", "")
                    sites = granted(visitor, form)
                    old_role, old_sites = access.set_role(staff_id, role, sites)
                    return {
                        "audit": {
                            "staff": account.id,
                            "role": [old_role, role],
                            "sites": [old_sites, sites],
                        }
                    }
                if kind == "disable":
                    access.disable(account.id)
                    return {"audit": {"staff": account.id}}
                password = access.reset(account.id, None)
                return {"password": password, "audit": {"staff": account.id}}

            try:
                result = await asyncio.to_thread(run, request, visitor, f"staff_{kind}", work)
            except (BillingError, NotFound) as exc:
                status = 404 if isinstance(exc, NotFound) else 400
                if api:
                    return JSONResponse({"error": str(exc)}, status)
                if isinstance(exc, NotFound):
                    return await page(visitor, status, error=str(exc)[:300] + ".")
                return desk.redirect(visitor, "/desk/staff", str(exc)[:300] + ".", error=True)
            password = result.get("password")
            if api:
                body: dict[str, Any] = {"ok": True, "staff_id": staff_id}
                if password:
                    body["one_time_password"] = password
                return JSONResponse(body)
            if password:
                # Shown once, on this response only; it must be changed at the first sign-in.
                response = await page(visitor, handed=(staff_id, password))
                response.headers["cache-control"] = "no-store"
                return response
            return desk.redirect(visitor, "/desk/staff", DONE[kind])

        return endpoint

    named: dict[str, Callable[..., Awaitable[Response]]] = {
        "staff": staff_list,
        "api_staff": api_staff_list,
    }
    for kind in ("add", "role", "disable", "reset"):
        named[f"staff_{kind}"] = act(kind, api=False)
        named[f"api_staff_{kind}"] = act(kind, api=True)
    return named
