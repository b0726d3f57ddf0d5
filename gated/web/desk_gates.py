"""The gates page: every gate at the account's sites with its health from the retained status
topics (online, or offline by its last will), members and digest against the site's manifest,
outbox depth, lockdown and readers; and, for owners, lockdown on or off for a whole site, sent
as ``lockdown_on``/``lockdown_off`` GateCommands signed with the desk key to each of its gates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from itertools import groupby
from typing import TYPE_CHECKING, Any

import aiomqtt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gated.billing_sync.audit import Actor
from gated.billing_sync.errors import BillingError
from gated.billing_sync.front_desk import in_scope
from gated.web.desk_members import MEMBER_ID

if TYPE_CHECKING:
    from gated.web.desk_core import Desk, StaffVisitor

log = logging.getLogger("gated.web.gates")


def _sites(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gates grouped by site, with whether any of them is locked down."""
    out = []
    for site, gates in groupby(rows, key=lambda r: r["site"]):
        listed = list(gates)
        out.append(
            {
                "site": site,
                "gates": listed,
                "online": sum(1 for g in listed if g["state"] == "online"),
                "lockdown": any(g["lockdown"] for g in listed),
            }
        )
    return out


def handlers(desk: Desk) -> dict[str, Callable[..., Awaitable[Response]]]:
    """The gates page, its JSON twin and the lockdown switch, for ``desk.RULES``."""
    billing = desk.web.billing

    async def page(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        staff = visitor.session.staff
        rows = await asyncio.to_thread(billing.gate_overview, staff.sites)
        return desk.page(
            visitor,
            "desk_gates.html",
            title="Gates",
            sites=_sites(rows),
            may_lock=staff.may("lockdown"),
        )

    async def api(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        assert visitor.session is not None
        rows = await asyncio.to_thread(billing.gate_overview, visitor.session.staff.sites)
        return JSONResponse({"gates": rows})

    async def lockdown(request: Request, visitor: StaffVisitor, form: dict[str, str]) -> Response:
        """Lock a site down or lift it: every gate of the site gets the signed command."""
        assert visitor.session is not None
        staff = visitor.session.staff
        site = form.get("site", "")
        on = form.get("state") == "on"
        api = request.url.path.startswith("/api/")
        if not MEMBER_ID.fullmatch(site) or not in_scope([site], staff.sites):
            if api:
                return JSONResponse({"error": "not one of your sites"}, 400)
            return desk.redirect(visitor, "/desk/gates", "Choose one of your sites.", error=True)
        actor = Actor("staff", staff.id, staff.role, desk.web.client(request))
        loop = asyncio.get_running_loop()
        action = "lockdown_on" if on else "lockdown_off"

        def run() -> list[dict[str, object]]:
            with billing.audited(actor, action, None) as entry:
                commands = billing.lockdown_commands(site, on, staff.id, staff.sites)
                asyncio.run_coroutine_threadsafe(billing.send_commands(commands), loop).result(
                    timeout=10
                )
                entry.detail.update(
                    site=site,
                    gates=[c["gate"] for c in commands],
                    commands=[c["id"] for c in commands],
                )
                return commands

        try:
            commands = await asyncio.to_thread(run)
        except (BillingError, aiomqtt.MqttError, TimeoutError) as exc:
            log.error("event=lockdown_failed site=%s on=%s error=%s", site, on, exc)
            if api:
                return JSONResponse({"error": f"{exc}"[:300] or "no broker answered"}, 503)
            said = f"{exc}"[:300] or "No broker answered."
            return desk.redirect(visitor, "/desk/gates", f"Nothing was sent: {said}", error=True)
        log.info(
            "event=lockdown site=%s on=%s staff=%s gates=%d", site, on, staff.id, len(commands)
        )
        if api:
            return JSONResponse(
                {"site": site, "lockdown": on, "gates": [c["gate"] for c in commands]}
            )
        return desk.redirect(visitor, "/desk/gates", "Lockdown sent." if on else "Lockdown lifted.")

    return {"gates": page, "api_gates": api, "lockdown": lockdown, "api_lockdown": lockdown}
